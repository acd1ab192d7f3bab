//! Programs: a model as a fixed-capacity list of layers ([`Op`]) over named tensors, in forward
//! order. A [`Program`] is plain `Copy` data built by a `const fn` from a
//! [`ModelConfig`] (see [`crate::models::program`]), so it can live in
//! flash on a microcontroller and needs no allocator.
//!
//! Every op knows its inputs, its output, its trainable parameters and its statistics
//! ([`Program::params`]), so a trainer walks [`Program::ops`] forward and in reverse for the
//! backward pass.
//!
//! # Names
//!
//! Names are [`Name`]s: short ASCII strings held inline (no allocation), built identically every
//! time the program is built (no process-global counters, so they never drift).
//! - layers use PaddleSlim's names (`conv1`, `conv5_6_dw`, `fc7`, `res5c_branch2b`,
//!   `bn5c_branch2b`, ...);
//! - parameters are `<layer>` + a [`ParamRole`] suffix (`conv1_weights`, `conv1_bn_scale`,
//!   `bn_conv1_variance`, `fc7_offset`, and `<conv>_bias` for a folded batch norm);
//! - activations: the input is `image`; a conv's output (before its BN) is named by the conv;
//!   a BN's output (before its ReLU) by the BN; a ReLU's output is `<input>.relu`; a residual
//!   block's output (add, then ReLU) is `<block>.add.relu` (e.g. `res2a.add.relu`); pools are
//!   `pool1` (ResNet50 max pool) and `pool` (global average); the logits are named by the fc.
//! - aliases ([`Program::find`]): `depthwise_conv2d_<k>` (optionally with `.tmp_<j>`) is the
//!   raw output of the `k`-th depthwise conv (so `depthwise_conv2d_11` is `conv5_6_dw`), and
//!   `<bn>.output.<i>.tmp_<j>` is the output of batch norm `<bn>` (Paddle 2.x naming, e.g.
//!   `bn5c_branch2b.output.1.tmp_3`).

use core::fmt;

use tinykd_kernels::shape::{Conv2d, DwConv3x3, Linear, Pool};

use crate::config::ModelConfig;

/// Longest name in bytes (`conv5_6_sep_bn_variance` is 23).
pub const NAME_CAP: usize = 24;
/// Most ops a program holds (ResNet50 uses 158, MobileNetV1 83).
pub const MAX_OPS: usize = 160;
/// Most tensors a program holds (the input plus one output per op).
pub const MAX_TENSORS: usize = MAX_OPS + 1;
/// Batch-norm epsilon of both models.
pub const BN_EPS: f32 = 1e-5;

/// A short ASCII name held inline: `Copy`, compares with `&str` and formats without
/// allocating. Built with `const fn`s; exceeding [`NAME_CAP`] or pushing a non-ASCII byte is a
/// programming error and panics (at compile time in a `const`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    len: u8,
    bytes: [u8; NAME_CAP],
}

impl Name {
    /// The empty name.
    pub const EMPTY: Name = Name { len: 0, bytes: [0; NAME_CAP] };

    /// The name `s`.
    pub const fn new(s: &str) -> Name {
        Name::EMPTY.push_str(s)
    }

    /// This name followed by `s`.
    pub const fn push_str(self, s: &str) -> Name {
        let b = s.as_bytes();
        let mut out = self;
        let mut i = 0;
        while i < b.len() {
            out = out.push_byte(b[i]);
            i += 1;
        }
        out
    }

    /// This name followed by the ASCII byte `b`.
    pub const fn push_byte(mut self, b: u8) -> Name {
        assert!(b.is_ascii() && (self.len as usize) < NAME_CAP, "name too long or not ASCII");
        self.bytes[self.len as usize] = b;
        self.len += 1;
        self
    }

    /// This name followed by `v` in decimal.
    pub const fn push_num(self, v: usize) -> Name {
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut v = v;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let mut out = self;
        while n > 0 {
            n -= 1;
            out = out.push_byte(digits[n]);
        }
        out
    }

    /// The bytes of the name.
    pub const fn as_bytes(&self) -> &[u8] {
        self.bytes.split_at(self.len as usize).0
    }

    /// The name as a string slice.
    pub const fn as_str(&self) -> &str {
        // Only ASCII bytes are ever pushed (checked in `push_byte`), so this never fails.
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(_) => "",
        }
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the name is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the name equals `s`.
    pub const fn eq_str(&self, s: &str) -> bool {
        bytes_eq(self.as_bytes(), s.as_bytes())
    }
}

/// `a == b` for byte slices, usable in `const fn`.
const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.eq_str(other)
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.eq_str(other)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A shape of up to four dimensions (outermost first).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dims {
    rank: u8,
    d: [usize; 4],
}

impl Dims {
    /// The shape `d` (at most four dimensions; panics otherwise).
    pub const fn new(d: &[usize]) -> Dims {
        assert!(d.len() <= 4, "at most four dimensions");
        let mut out = Dims { rank: d.len() as u8, d: [0; 4] };
        let mut i = 0;
        while i < d.len() {
            out.d[i] = d[i];
            i += 1;
        }
        out
    }

    /// The dimensions.
    pub const fn as_slice(&self) -> &[usize] {
        self.d.split_at(self.rank as usize).0
    }

    /// Number of elements.
    pub const fn numel(&self) -> usize {
        let mut n = 1;
        let mut i = 0;
        while i < self.rank as usize {
            n *= self.d[i];
            i += 1;
        }
        n
    }

    /// Whether the dims equal `other` (dims as stored in a weight file).
    pub fn eq_u32(&self, other: &[u32]) -> bool {
        self.as_slice().len() == other.len() && self.as_slice().iter().zip(other).all(|(&a, &b)| a == b as usize)
    }
}

impl fmt::Display for Dims {
    /// Formats as `[3, 3, 3, 32]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a named variable is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VarKind {
    /// A tensor computed by the forward pass.
    Activation,
    /// A trainable parameter.
    Parameter,
    /// A batch-norm running statistic (not trained by gradient).
    Statistic,
}

impl VarKind {
    /// Lower-case name: `activation`, `parameter`, `statistic`.
    pub const fn as_str(self) -> &'static str {
        match self {
            VarKind::Activation => "activation",
            VarKind::Parameter => "parameter",
            VarKind::Statistic => "statistic",
        }
    }
}

/// Memory layout of an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[n][h][w][c]`.
    Nhwc,
    /// `[n][c]` (pooled features, logits).
    Nc,
}

impl Layout {
    /// `"NHWC"` or `"NC"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Layout::Nhwc => "NHWC",
            Layout::Nc => "NC",
        }
    }
}

/// The per-sample shape of an activation (`h = w = 1` for [`Layout::Nc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Height.
    pub h: u16,
    /// Width.
    pub w: u16,
    /// Channels.
    pub c: u16,
    /// Layout.
    pub layout: Layout,
}

impl Shape {
    /// An NHWC shape.
    pub const fn nhwc(h: usize, w: usize, c: usize) -> Shape {
        Shape { h: h as u16, w: w as u16, c: c as u16, layout: Layout::Nhwc }
    }
    /// An NC shape.
    pub const fn nc(c: usize) -> Shape {
        Shape { h: 1, w: 1, c: c as u16, layout: Layout::Nc }
    }
    /// Elements per sample.
    pub const fn numel(&self) -> usize {
        self.h as usize * self.w as usize * self.c as usize
    }
    /// Dimensions for a batch of `n`: `[n, h, w, c]` or `[n, c]`.
    pub const fn dims(&self, n: usize) -> Dims {
        match self.layout {
            Layout::Nhwc => Dims::new(&[n, self.h as usize, self.w as usize, self.c as usize]),
            Layout::Nc => Dims::new(&[n, self.c as usize]),
        }
    }
}

/// Index of a tensor in [`Program::tensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u16);

impl TensorId {
    /// The index as `usize`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A named activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tensor {
    /// Its name.
    pub name: Name,
    /// Its per-sample shape.
    pub shape: Shape,
}

/// What an op computes. Channel counts and spatial sizes come from its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// KxK convolution, no bias, zero padding `pad`; weights HWIO `[k][k][c_in][c_out]`.
    Conv {
        /// Kernel size.
        k: u8,
        /// Stride.
        stride: u8,
        /// Padding (all sides).
        pad: u8,
    },
    /// Depthwise 3x3 convolution, padding 1, no bias; weights `[3][3][c]`.
    DwConv {
        /// Stride (1 or 2).
        stride: u8,
    },
    /// Batch norm (eps [`BN_EPS`]): parameters scale, offset; statistics mean, variance.
    BatchNorm,
    /// `max(x, 0)`.
    Relu,
    /// Max pool 3x3, stride 2, padding 1.
    MaxPool,
    /// Residual add then ReLU: `max(inputs[0] + inputs[1], 0)`.
    AddRelu,
    /// Global average pool NHWC → NC.
    GlobalAvgPool,
    /// Fully connected with bias: weights `[c_in][c_out]`, offset `[c_out]`.
    Fc,
}

/// One layer: a kind, a name, one or two input tensors and one output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    /// The layer name (parameters are named after it).
    pub name: Name,
    /// What it computes.
    pub kind: OpKind,
    inputs: [TensorId; 2],
    n_inputs: u8,
    /// The tensor it writes.
    pub output: TensorId,
}

impl Op {
    /// The tensors it reads (one, or two for [`OpKind::AddRelu`]).
    pub const fn inputs(&self) -> &[TensorId] {
        self.inputs.split_at(self.n_inputs as usize).0
    }
    /// Its first input.
    pub const fn input(&self) -> TensorId {
        self.inputs[0]
    }
}

/// Which parameter of a layer; the suffix appended to the layer name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamRole {
    /// Conv / fc weights: `_weights`.
    Weights,
    /// Bias of a conv with a folded batch norm (inference files only): `_bias`.
    Bias,
    /// BN γ: `_scale`.
    Scale,
    /// BN β, or the fc bias: `_offset`.
    Offset,
    /// BN running mean: `_mean`.
    Mean,
    /// BN running variance: `_variance`.
    Variance,
}

impl ParamRole {
    /// The name suffix.
    pub const fn suffix(self) -> &'static str {
        match self {
            ParamRole::Weights => "_weights",
            ParamRole::Bias => "_bias",
            ParamRole::Scale => "_scale",
            ParamRole::Offset => "_offset",
            ParamRole::Mean => "_mean",
            ParamRole::Variance => "_variance",
        }
    }
    /// Parameter or statistic.
    pub const fn kind(self) -> VarKind {
        match self {
            ParamRole::Mean | ParamRole::Variance => VarKind::Statistic,
            _ => VarKind::Parameter,
        }
    }
}

/// One parameter or statistic of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamSpec {
    /// The layer it belongs to.
    pub layer: Name,
    /// Which one.
    pub role: ParamRole,
    /// Its shape.
    pub dims: Dims,
}

impl ParamSpec {
    /// `<layer><suffix>`, e.g. `conv1_weights`.
    pub const fn name(&self) -> Name {
        param_name(self.layer, self.role)
    }
    /// Parameter or statistic.
    pub const fn kind(&self) -> VarKind {
        self.role.kind()
    }
}

/// `<layer><suffix>`, e.g. `conv1_bias`.
pub const fn param_name(layer: Name, role: ParamRole) -> Name {
    layer.push_str(role.suffix())
}

/// The parameters and statistics of one op (at most four).
#[derive(Clone, Copy, Debug)]
pub struct ParamList {
    items: [Option<ParamSpec>; 4],
}

impl ParamList {
    const NONE: ParamList = ParamList { items: [None; 4] };

    /// Iterates over the entries in order.
    pub fn iter(self) -> impl Iterator<Item = ParamSpec> {
        self.items.into_iter().flatten()
    }
}

/// A model: ops in forward order over tensors; tensor 0 is the input `image`, the last op's
/// output is the logits.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    /// The configuration it was built from.
    pub config: ModelConfig,
    ops: [Op; MAX_OPS],
    n_ops: u16,
    tensors: [Tensor; MAX_TENSORS],
    n_tensors: u16,
}

impl Program {
    /// The ops in forward order.
    pub const fn ops(&self) -> &[Op] {
        self.ops.split_at(self.n_ops as usize).0
    }

    /// All tensors (index = [`TensorId`]).
    pub const fn tensors(&self) -> &[Tensor] {
        self.tensors.split_at(self.n_tensors as usize).0
    }

    /// Tensor `id`.
    pub const fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.index()]
    }

    /// The input tensor (`image`).
    pub const fn input(&self) -> TensorId {
        TensorId(0)
    }

    /// The output tensor (the logits).
    pub const fn output(&self) -> TensorId {
        self.ops[self.n_ops as usize - 1].output
    }

    /// The tensor called `name`, or reached by one of the aliases described in the
    /// [module docs](self): `depthwise_conv2d_<k>[.tmp_<j>]` and `<bn>.output.<i>.tmp_<j>`.
    pub fn find(&self, name: &str) -> Option<TensorId> {
        if let Some(i) = self.tensors().iter().position(|t| t.name == name) {
            return Some(TensorId(i as u16));
        }
        if let Some(rest) = name.strip_prefix("depthwise_conv2d_") {
            let k: usize = rest.split(".tmp_").next()?.parse().ok()?;
            return self.ops().iter().filter(|op| matches!(op.kind, OpKind::DwConv { .. })).nth(k).map(|op| op.output);
        }
        if let Some((bn, _)) = name.split_once(".output.") {
            return self.ops().iter().find(|op| op.kind == OpKind::BatchNorm && op.name == bn).map(|op| op.output);
        }
        None
    }

    /// The parameters and statistics of `op`, in the order weights, scale, offset, mean,
    /// variance (conv: weights; BN: scale, offset, mean, variance; fc: weights, offset).
    pub const fn params(&self, op: &Op) -> ParamList {
        let x = self.tensor(op.inputs[0]).shape;
        let y = self.tensor(op.output).shape;
        let (ci, co) = (x.c as usize, y.c as usize);
        let mut list = ParamList::NONE;
        const fn spec(op: &Op, role: ParamRole, dims: Dims) -> Option<ParamSpec> {
            Some(ParamSpec { layer: op.name, role, dims })
        }
        match op.kind {
            OpKind::Conv { k, .. } => {
                list.items[0] = spec(op, ParamRole::Weights, Dims::new(&[k as usize, k as usize, ci, co]));
            }
            OpKind::DwConv { .. } => list.items[0] = spec(op, ParamRole::Weights, Dims::new(&[3, 3, co])),
            OpKind::BatchNorm => {
                list.items[0] = spec(op, ParamRole::Scale, Dims::new(&[co]));
                list.items[1] = spec(op, ParamRole::Offset, Dims::new(&[co]));
                list.items[2] = spec(op, ParamRole::Mean, Dims::new(&[co]));
                list.items[3] = spec(op, ParamRole::Variance, Dims::new(&[co]));
            }
            OpKind::Fc => {
                list.items[0] = spec(op, ParamRole::Weights, Dims::new(&[ci, co]));
                list.items[1] = spec(op, ParamRole::Offset, Dims::new(&[co]));
            }
            OpKind::Relu | OpKind::MaxPool | OpKind::AddRelu | OpKind::GlobalAvgPool => {}
        }
        list
    }

    /// The kernel shape of a [`OpKind::Conv`] op for batch `n` (meaningless for other kinds).
    pub const fn conv2d(&self, op: &Op, n: usize) -> Conv2d {
        let x = self.tensor(op.inputs[0]).shape;
        let y = self.tensor(op.output).shape;
        let (k, stride, pad) = match op.kind {
            OpKind::Conv { k, stride, pad } => (k as usize, stride as usize, pad as usize),
            _ => (1, 1, 0),
        };
        Conv2d::new(n, x.h as usize, x.w as usize, x.c as usize, y.c as usize, k, stride, pad)
    }

    /// The kernel shape of a [`OpKind::DwConv`] op for batch `n`.
    pub const fn dwconv(&self, op: &Op, n: usize) -> DwConv3x3 {
        let x = self.tensor(op.inputs[0]).shape;
        let stride = match op.kind {
            OpKind::DwConv { stride } => stride as usize,
            _ => 1,
        };
        DwConv3x3::new(n, x.h as usize, x.w as usize, x.c as usize, stride)
    }

    /// The kernel shape of an [`OpKind::Fc`] op for batch `n`.
    pub const fn linear(&self, op: &Op, n: usize) -> Linear {
        Linear::new(n, self.tensor(op.inputs[0]).shape.c as usize, self.tensor(op.output).shape.c as usize)
    }

    /// The pooling shape of an op's input for batch `n`.
    pub const fn pool(&self, op: &Op, n: usize) -> Pool {
        let x = self.tensor(op.inputs[0]).shape;
        Pool::new(n, x.h as usize, x.w as usize, x.c as usize)
    }

    /// Multiply-accumulates of `op` for one sample (convs, depthwise convs and the fc; 0 for
    /// the rest).
    pub const fn macs(&self, op: &Op) -> usize {
        match op.kind {
            OpKind::Conv { .. } => self.conv2d(op, 1).macs(),
            OpKind::DwConv { .. } => self.dwconv(op, 1).macs(),
            OpKind::Fc => self.linear(op, 1).macs(),
            _ => 0,
        }
    }

    /// Total multiply-accumulates for one sample.
    pub const fn total_macs(&self) -> usize {
        let mut sum = 0;
        let mut i = 0;
        while i < self.n_ops as usize {
            sum += self.macs(&self.ops[i]);
            i += 1;
        }
        sum
    }

    /// Elements of all parameters of `kind` ([`VarKind::Parameter`] or
    /// [`VarKind::Statistic`]).
    pub fn count(&self, kind: VarKind) -> usize {
        self.ops()
            .iter()
            .flat_map(|op| self.params(op).iter())
            .filter(|p| p.kind() == kind)
            .map(|p| p.dims.numel())
            .sum()
    }
}

/// Builds a [`Program`] op by op in `const fn`s (by value, so it works in `const` items).
/// Every method appends one op reading the given tensor (or the last output) and writing a new
/// tensor.
#[derive(Clone, Copy)]
pub(crate) struct Builder {
    p: Program,
}

impl Builder {
    /// An empty program whose tensor 0 is `image`.
    pub(crate) const fn new(cfg: &ModelConfig) -> Builder {
        let blank_tensor = Tensor { name: Name::EMPTY, shape: Shape::nc(0) };
        let blank_op =
            Op { name: Name::EMPTY, kind: OpKind::Relu, inputs: [TensorId(0); 2], n_inputs: 0, output: TensorId(0) };
        let mut p = Program {
            config: *cfg,
            ops: [blank_op; MAX_OPS],
            n_ops: 0,
            tensors: [blank_tensor; MAX_TENSORS],
            n_tensors: 1,
        };
        p.tensors[0] = Tensor {
            name: Name::new("image"),
            shape: Shape::nhwc(cfg.in_h as usize, cfg.in_w as usize, cfg.in_c as usize),
        };
        Builder { p }
    }

    /// The most recently written tensor.
    pub(crate) const fn last(&self) -> TensorId {
        TensorId(self.p.n_tensors - 1)
    }

    const fn shape(&self, t: TensorId) -> Shape {
        self.p.tensors[t.index()].shape
    }

    const fn push(mut self, name: Name, kind: OpKind, inputs: [TensorId; 2], n_inputs: u8, out: Tensor) -> Builder {
        let (no, nt) = (self.p.n_ops as usize, self.p.n_tensors as usize);
        assert!(no < MAX_OPS && nt < MAX_TENSORS, "program capacity exceeded");
        self.p.tensors[nt] = out;
        self.p.ops[no] = Op { name, kind, inputs, n_inputs, output: TensorId(nt as u16) };
        self.p.n_ops += 1;
        self.p.n_tensors += 1;
        self
    }

    /// KxK conv `name` over `x` (padding `(k−1)/2`), output named `name`.
    pub(crate) const fn conv(self, name: Name, x: TensorId, k: usize, stride: usize, c_out: usize) -> Builder {
        let s = self.shape(x);
        let pad = (k - 1) / 2;
        let oh = (s.h as usize + 2 * pad - k) / stride + 1;
        let ow = (s.w as usize + 2 * pad - k) / stride + 1;
        let kind = OpKind::Conv { k: k as u8, stride: stride as u8, pad: pad as u8 };
        self.push(name, kind, [x, x], 1, Tensor { name, shape: Shape::nhwc(oh, ow, c_out) })
    }

    /// Depthwise 3x3 conv `name` over the last tensor.
    pub(crate) const fn dwconv(self, name: Name, stride: usize) -> Builder {
        let x = self.last();
        let s = self.shape(x);
        let oh = (s.h as usize - 1) / stride + 1;
        let ow = (s.w as usize - 1) / stride + 1;
        let out = Tensor { name, shape: Shape::nhwc(oh, ow, s.c as usize) };
        self.push(name, OpKind::DwConv { stride: stride as u8 }, [x, x], 1, out)
    }

    /// Batch norm `name` over the last tensor, output named `name`.
    pub(crate) const fn bn(self, name: Name) -> Builder {
        let x = self.last();
        let out = Tensor { name, shape: self.shape(x) };
        self.push(name, OpKind::BatchNorm, [x, x], 1, out)
    }

    /// ReLU over the last tensor, output named `<input>.relu`.
    pub(crate) const fn relu(self) -> Builder {
        let x = self.last();
        let t = self.p.tensors[x.index()];
        let name = t.name.push_str(".relu");
        self.push(name, OpKind::Relu, [x, x], 1, Tensor { name, shape: t.shape })
    }

    /// Max pool 3x3/s2/p1 `name` over the last tensor.
    pub(crate) const fn max_pool(self, name: Name) -> Builder {
        let x = self.last();
        let s = self.shape(x);
        let out = Shape::nhwc((s.h as usize - 1) / 2 + 1, (s.w as usize - 1) / 2 + 1, s.c as usize);
        self.push(name, OpKind::MaxPool, [x, x], 1, Tensor { name, shape: out })
    }

    /// `max(a + b, 0)` for block `name`, output named `<name>.add.relu`.
    pub(crate) const fn add_relu(self, name: Name, a: TensorId, b: TensorId) -> Builder {
        let out = Tensor { name: name.push_str(".add.relu"), shape: self.shape(a) };
        self.push(name, OpKind::AddRelu, [a, b], 2, out)
    }

    /// Global average pool `name` over the last tensor.
    pub(crate) const fn global_avg_pool(self, name: Name) -> Builder {
        let x = self.last();
        let out = Tensor { name, shape: Shape::nc(self.shape(x).c as usize) };
        self.push(name, OpKind::GlobalAvgPool, [x, x], 1, out)
    }

    /// Fully connected `name` over the last tensor to `classes` outputs (the logits).
    pub(crate) const fn fc(self, name: Name, classes: usize) -> Builder {
        let x = self.last();
        self.push(name, OpKind::Fc, [x, x], 1, Tensor { name, shape: Shape::nc(classes) })
    }

    /// The finished program.
    pub(crate) const fn finish(self) -> Program {
        self.p
    }
}
