//! The inference schedule of a [`Program`] and its memory plan.
//!
//! [`Schedule::new`] lowers a program to inference steps: batch norm folds into the conv before
//! it (the conv gets a bias) and the ReLU after it runs in the conv's epilogue, and a residual
//! `add + ReLU` runs in place in its first operand's buffer. The input image and the logits
//! are the caller's slices; every other activation, and the im2col scratch of each KxK conv
//! (alive for its one step), is a buffer of the arena.
//!
//! [`Plan::new`] places buffers with TFLM's greedy planner: buffers sorted by size
//! (descending; ties by first use, then index), each placed at the lowest offset (a multiple
//! of [`ALIGN`]) at which it overlaps no already placed buffer whose lifetime intersects its
//! own. It reports the plan's [`peak`](Plan::peak) and the [`lower_bound`](Plan::lower_bound)
//! (the most bytes live at any one step), which no placement can beat.
//!
//! Everything here is `const fn`, so a `no_std` user sizes a static arena at compile time:
//!
//! ```
//! use tinykd::{plan, ModelConfig};
//! const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
//! static mut ARENA: [u8; plan::arena_bytes(&CFG, 1)] = [0; plan::arena_bytes(&CFG, 1)];
//! ```
//!
//! This works for ResNet50 as well. [`arena_bytes`] includes [`ALIGN`] bytes of slack so the arena may start at any
//! address; [`Plan::peak`] is the size of an arena that starts [`ALIGN`]-aligned.

use tinykd_kernels::shape::{prod, Conv2d, DwConv3x3, Linear, Pool};

use crate::config::ModelConfig;
use crate::graph::{Name, OpKind, Program, Shape, MAX_TENSORS};
use crate::models::{self, ModelError};

/// Every buffer offset is a multiple of this many bytes: a cache line on the host (a 16-byte
/// multiple put half the depthwise and pointwise vector loads across two lines: MobileNetV1
/// ×0.25 at batch 1 22.0–22.7 → 19.8–20.8 µs), a few bytes of padding per buffer on the MCU.
pub const ALIGN: usize = 64;
/// Most steps a schedule holds.
pub const MAX_STEPS: usize = 96;
/// Most buffers a plan holds.
pub const MAX_BUFFERS: usize = 128;

/// One buffer to place: its size and the steps (inclusive) during which it is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferReq {
    /// Size in bytes.
    pub bytes: usize,
    /// The step that first writes it.
    pub first: u16,
    /// The last step that reads it (`>= first`).
    pub last: u16,
}

impl BufferReq {
    const EMPTY: BufferReq = BufferReq { bytes: 0, first: 0, last: 0 };

    /// Whether the lifetimes of `self` and `other` intersect.
    pub const fn overlaps_in_time(&self, other: &BufferReq) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Size rounded up to [`ALIGN`].
    pub const fn aligned_bytes(&self) -> usize {
        self.bytes.div_ceil(ALIGN) * ALIGN
    }
}

/// Byte offsets of buffers in an arena, with the arena's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    offsets: [usize; MAX_BUFFERS],
    n: u16,
    /// Arena bytes the placement needs (end of the highest buffer).
    pub peak: usize,
    /// Most bytes live at any one step: a bound no placement can go below.
    pub lower_bound: usize,
}

impl Plan {
    /// Places `reqs` greedily by size (see the [module docs](self)).
    ///
    /// Errors: [`ModelError::Capacity`] if there are more than [`MAX_BUFFERS`] buffers.
    pub const fn new(reqs: &[BufferReq]) -> Result<Plan, ModelError> {
        let n = reqs.len();
        if n > MAX_BUFFERS {
            return Err(ModelError::Capacity { what: "plan buffers", cap: MAX_BUFFERS });
        }
        // Placement order: size descending, then first use, then index (insertion sort).
        let mut order = [0u16; MAX_BUFFERS];
        let mut i = 0;
        while i < n {
            let mut j = i;
            while j > 0 && goes_before(reqs, i, order[j - 1] as usize) {
                order[j] = order[j - 1];
                j -= 1;
            }
            order[j] = i as u16;
            i += 1;
        }
        let mut offsets = [0usize; MAX_BUFFERS];
        // Placed buffers, ascending by offset.
        let mut placed = [0u16; MAX_BUFFERS];
        let mut n_placed = 0;
        let mut peak = 0;
        let mut k = 0;
        while k < n {
            let b = order[k] as usize;
            let size = reqs[b].aligned_bytes();
            let mut at = 0;
            let mut p = 0;
            while p < n_placed {
                let o = placed[p] as usize;
                if reqs[o].overlaps_in_time(&reqs[b]) {
                    if at + size <= offsets[o] {
                        break;
                    }
                    let end = offsets[o] + reqs[o].aligned_bytes();
                    if end > at {
                        at = end;
                    }
                }
                p += 1;
            }
            offsets[b] = at;
            if at + size > peak {
                peak = at + size;
            }
            let mut q = n_placed;
            while q > 0 && offsets[placed[q - 1] as usize] > at {
                placed[q] = placed[q - 1];
                q -= 1;
            }
            placed[q] = b as u16;
            n_placed += 1;
            k += 1;
        }
        Ok(Plan { offsets, n: n as u16, peak, lower_bound: lower_bound(reqs) })
    }

    /// The byte offset of each buffer, in the order of the requests.
    pub const fn offsets(&self) -> &[usize] {
        self.offsets.split_at(self.n as usize).0
    }
}

/// Whether buffer `a` is placed before buffer `b`.
const fn goes_before(reqs: &[BufferReq], a: usize, b: usize) -> bool {
    let (sa, sb) = (reqs[a].aligned_bytes(), reqs[b].aligned_bytes());
    sa > sb || (sa == sb && (reqs[a].first < reqs[b].first || (reqs[a].first == reqs[b].first && a < b)))
}

/// The most bytes live at any one step.
const fn lower_bound(reqs: &[BufferReq]) -> usize {
    let mut last_step = 0;
    let mut i = 0;
    while i < reqs.len() {
        if reqs[i].last > last_step {
            last_step = reqs[i].last;
        }
        i += 1;
    }
    let mut best = 0;
    let mut s = 0;
    while s <= last_step {
        let mut live = 0;
        let mut i = 0;
        while i < reqs.len() {
            if reqs[i].first <= s && s <= reqs[i].last {
                live += reqs[i].bytes;
            }
            i += 1;
        }
        if live > best {
            best = live;
        }
        s += 1;
    }
    best
}

/// Where a step's operand lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// No operand (e.g. a step without scratch).
    None,
    /// The caller's input image.
    Input,
    /// The caller's logits.
    Output,
    /// Arena buffer `i` (index into [`Schedule::buffers`]).
    Arena(u16),
}

/// What an inference step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// KxK conv with the folded BN's bias (`<layer>_weights`, `<layer>_bias`), ReLU fused
    /// if `relu`.
    Conv {
        /// Whether a ReLU follows.
        relu: bool,
    },
    /// Depthwise 3x3 conv with the folded BN's bias, ReLU fused if `relu`.
    DwConv {
        /// Whether a ReLU follows.
        relu: bool,
    },
    /// Max pool 3x3/s2/p1.
    MaxPool,
    /// `y = max(y + x2, 0)` in place (`x` and `y` are the same buffer).
    AddRelu,
    /// Global average pool.
    GlobalAvgPool,
    /// The fc (`<layer>_weights`, `<layer>_offset`) writing the logits.
    Fc,
}

/// One inference step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    /// What it runs.
    pub kind: StepKind,
    /// The program layer it comes from (the conv, depthwise conv or fc for weight names).
    pub layer: Name,
    /// Input operand.
    pub x: Buf,
    /// Second input ([`StepKind::AddRelu`]'s shortcut), else [`Buf::None`].
    pub x2: Buf,
    /// Output operand.
    pub y: Buf,
    /// im2col scratch ([`Buf::None`] if the kernel needs none).
    pub scratch: Buf,
    /// Per-sample input shape.
    pub x_shape: Shape,
    /// Per-sample output shape.
    pub y_shape: Shape,
    /// Conv kernel size, stride and padding (conv and depthwise steps).
    pub k: u8,
    /// Stride.
    pub stride: u8,
    /// Padding.
    pub pad: u8,
}

impl Step {
    const EMPTY: Step = Step {
        kind: StepKind::MaxPool,
        layer: Name::EMPTY,
        x: Buf::None,
        x2: Buf::None,
        y: Buf::None,
        scratch: Buf::None,
        x_shape: Shape::nc(0),
        y_shape: Shape::nc(0),
        k: 0,
        stride: 0,
        pad: 0,
    };

    /// Conv kernel shape for batch `n`.
    pub const fn conv2d(&self, n: usize) -> Conv2d {
        let (x, y) = (self.x_shape, self.y_shape);
        Conv2d::new(
            n,
            x.h as usize,
            x.w as usize,
            x.c as usize,
            y.c as usize,
            self.k as usize,
            self.stride as usize,
            self.pad as usize,
        )
    }
    /// Depthwise kernel shape for batch `n`.
    pub const fn dwconv(&self, n: usize) -> DwConv3x3 {
        let x = self.x_shape;
        DwConv3x3::new(n, x.h as usize, x.w as usize, x.c as usize, self.stride as usize)
    }
    /// Pooling shape (of the input) for batch `n`.
    pub const fn pool(&self, n: usize) -> Pool {
        let x = self.x_shape;
        Pool::new(n, x.h as usize, x.w as usize, x.c as usize)
    }
    /// fc shape for batch `n`.
    pub const fn linear(&self, n: usize) -> Linear {
        Linear::new(n, self.x_shape.c as usize, self.y_shape.c as usize)
    }
}

/// A program lowered to inference steps for a fixed batch, with its arena buffers.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// The model configuration.
    pub config: ModelConfig,
    /// The batch size every buffer is sized for.
    pub batch: usize,
    steps: [Step; MAX_STEPS],
    n_steps: u16,
    bufs: [BufferReq; MAX_BUFFERS],
    n_bufs: u16,
}

/// Bytes any one tensor of a plan may take: a [`MAX_BUFFERS`]-th of `isize::MAX`, so that the
/// offsets and lengths the plan, the engine and the fine-tuner add and multiply never overflow
/// (a batch of 2⁶² used to wrap them to a 64-byte arena that empty slices passed).
pub const MAX_BUFFER_BYTES: usize = isize::MAX as usize / MAX_BUFFERS;

/// Whether every tensor of `prog` (input and logits included), f32 at batch `batch`, fits
/// [`MAX_BUFFER_BYTES`].
const fn batch_fits(prog: &Program, batch: usize) -> bool {
    let tensors = prog.tensors();
    let mut i = 0;
    while i < tensors.len() {
        if prod(&[4, batch, tensors[i].shape.numel()]) > MAX_BUFFER_BYTES {
            return false;
        }
        i += 1;
    }
    true
}

impl Schedule {
    /// Lowers `prog` for batch `batch` (see the [module docs](self)).
    ///
    /// Errors: [`ModelError::Batch`] for batch 0; [`ModelError::BatchTooLarge`] if a tensor at
    /// this batch would exceed [`MAX_BUFFER_BYTES`]; [`ModelError::Capacity`] if the schedule
    /// does not fit. Panics if `prog` breaks the invariants of the model builders (every conv
    /// followed by its batch norm; a residual add's first operand used only by the add).
    pub const fn new(prog: &Program, batch: usize) -> Result<Schedule, ModelError> {
        if batch == 0 {
            return Err(ModelError::Batch);
        }
        if !batch_fits(prog, batch) {
            return Err(ModelError::BatchTooLarge { batch });
        }
        let mut sc = Schedule {
            config: prog.config,
            batch,
            steps: [Step::EMPTY; MAX_STEPS],
            n_steps: 0,
            bufs: [BufferReq::EMPTY; MAX_BUFFERS],
            n_bufs: 0,
        };
        let mut buf_of = [Buf::None; MAX_TENSORS];
        buf_of[prog.input().index()] = Buf::Input;
        let ops = prog.ops();
        let mut i = 0;
        while i < ops.len() {
            let op = ops[i];
            if sc.n_steps as usize == MAX_STEPS {
                return Err(ModelError::Capacity { what: "schedule steps", cap: MAX_STEPS });
            }
            let s = sc.n_steps;
            let mut step = Step::EMPTY;
            step.layer = op.name;
            step.x = buf_of[op.input().index()];
            step.x_shape = prog.tensor(op.input()).shape;
            let mut out = op.output;
            let mut consumed = 1;
            match op.kind {
                OpKind::Conv { .. } | OpKind::DwConv { .. } => {
                    assert!(
                        i + 1 < ops.len()
                            && matches!(ops[i + 1].kind, OpKind::BatchNorm)
                            && ops[i + 1].input().0 == op.output.0,
                        "every conv must be followed by its batch norm"
                    );
                    out = ops[i + 1].output;
                    consumed = 2;
                    let relu =
                        i + 2 < ops.len() && matches!(ops[i + 2].kind, OpKind::Relu) && ops[i + 2].input().0 == out.0;
                    if relu {
                        out = ops[i + 2].output;
                        consumed = 3;
                    }
                    match op.kind {
                        OpKind::Conv { k, stride, pad } => {
                            step.kind = StepKind::Conv { relu };
                            step.k = k;
                            step.stride = stride;
                            step.pad = pad;
                        }
                        _ => {
                            step.kind = StepKind::DwConv { relu };
                            step.k = 3;
                            step.stride = match op.kind {
                                OpKind::DwConv { stride } => stride,
                                _ => 1,
                            };
                            step.pad = 1;
                        }
                    }
                }
                OpKind::MaxPool => step.kind = StepKind::MaxPool,
                OpKind::GlobalAvgPool => step.kind = StepKind::GlobalAvgPool,
                OpKind::Fc => step.kind = StepKind::Fc,
                OpKind::AddRelu => {
                    step.kind = StepKind::AddRelu;
                    let a = op.input();
                    let mut j = i + 1;
                    while j < ops.len() {
                        let ins = ops[j].inputs();
                        let mut q = 0;
                        while q < ins.len() {
                            assert!(ins[q].0 != a.0, "a residual add's first operand must be used only by the add");
                            q += 1;
                        }
                        j += 1;
                    }
                    step.x2 = buf_of[op.inputs()[1].index()];
                }
                OpKind::BatchNorm | OpKind::Relu => panic!("batch norm or ReLU without a conv before it"),
            }
            step.y_shape = prog.tensor(out).shape;
            // Inputs are read at this step.
            sc = sc.touch(step.x, s).touch(step.x2, s);
            step.y = if matches!(step.kind, StepKind::AddRelu) {
                step.x
            } else if out.0 == prog.output().0 {
                Buf::Output
            } else {
                let bytes = 4 * batch * step.y_shape.numel();
                match sc.new_buf(bytes, s) {
                    Ok((next, b)) => {
                        sc = next;
                        b
                    }
                    Err(e) => return Err(e),
                }
            };
            if matches!(step.kind, StepKind::Conv { .. }) {
                let scratch = step.conv2d(batch).scratch_len();
                if scratch > 0 {
                    match sc.new_buf(4 * scratch, s) {
                        Ok((next, b)) => {
                            sc = next;
                            step.scratch = b;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            buf_of[out.index()] = step.y;
            sc.steps[s as usize] = step;
            sc.n_steps += 1;
            i += consumed;
        }
        Ok(sc)
    }

    /// Extends arena buffer `b`'s lifetime to step `s`.
    const fn touch(mut self, b: Buf, s: u16) -> Schedule {
        if let Buf::Arena(i) = b {
            if self.bufs[i as usize].last < s {
                self.bufs[i as usize].last = s;
            }
        }
        self
    }

    /// A new arena buffer of `bytes` first written at step `s`.
    const fn new_buf(mut self, bytes: usize, s: u16) -> Result<(Schedule, Buf), ModelError> {
        let i = self.n_bufs as usize;
        if i == MAX_BUFFERS {
            return Err(ModelError::Capacity { what: "plan buffers", cap: MAX_BUFFERS });
        }
        self.bufs[i] = BufferReq { bytes, first: s, last: s };
        self.n_bufs += 1;
        Ok((self, Buf::Arena(i as u16)))
    }

    /// The steps in order.
    pub const fn steps(&self) -> &[Step] {
        self.steps.split_at(self.n_steps as usize).0
    }

    /// The arena buffers ([`Buf::Arena`] indexes this).
    pub const fn buffers(&self) -> &[BufferReq] {
        self.bufs.split_at(self.n_bufs as usize).0
    }

    /// The memory plan of [`Self::buffers`].
    pub const fn plan(&self) -> Result<Plan, ModelError> {
        Plan::new(self.buffers())
    }
}

/// The schedule and plan of `cfg` at batch `batch`.
pub const fn plan_for(cfg: &ModelConfig, batch: usize) -> Result<(Schedule, Plan), ModelError> {
    let prog = match models::program(cfg) {
        Ok(p) => p,
        Err(e) => return Err(e),
    };
    let sc = match Schedule::new(&prog, batch) {
        Ok(s) => s,
        Err(e) => return Err(e),
    };
    match sc.plan() {
        Ok(p) => Ok((sc, p)),
        Err(e) => Err(e),
    }
}

/// Bytes of a `[u8]` arena (at any alignment) for inference of `cfg` at batch `batch`:
/// [`Plan::peak`] + [`ALIGN`]. Panics (a compile error in a `const`) if `cfg` or `batch` is
/// invalid; see [`plan_for`] for the fallible form.
pub const fn arena_bytes(cfg: &ModelConfig, batch: usize) -> usize {
    match plan_for(cfg, batch) {
        Ok((_, plan)) => plan.peak + ALIGN,
        Err(_) => panic!("invalid model configuration or batch"),
    }
}
