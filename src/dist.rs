//! Distillation with PaddleSlim's single-distiller semantics (`std`): [`merge`] a frozen teacher
//! into a student's name space, then train the student on any weighted sum of [`Loss`]es.
//!
//! # Merge
//!
//! [`merge`]`(teacher, student, data_name_map, "teacher_")`:
//! - every teacher tensor is addressable as `<prefix><name>`, aliases included
//!   (`teacher_bn5c_branch2b`, `teacher_bn5c_branch2b.output.1.tmp_3`, `teacher_fc`, ...),
//!   except the teacher inputs listed in `data_name_map`, which ARE the student's tensors they
//!   map to (the teacher reads the student's batch in place; no copy, no renamed name);
//! - the teacher's parameters are copied at merge time and frozen: the optimizer never sees
//!   them, the teacher runs in eval mode (batch norm with its running statistics, which never
//!   change) and never runs backward;
//! - student tensors keep their names (aliases such as `depthwise_conv2d_11` included); the
//!   prefix must not be empty, nor let a teacher name shadow a student one;
//! - a teacher parameter or statistic with a NaN or infinite value is refused, naming it.
//!
//! # Losses
//!
//! Formulas (the kernels in [`tinykd_kernels::loss`]); in every distillation loss the FIRST
//! (teacher-side) arguments are constant targets and only student tensors receive gradients
//! (the trained arguments — `s`, `s1`, `s2` below — must be student tensors, and a custom loss
//! must read at least one):
//! - `ce`: softmax cross-entropy of the student logits, mean over the batch;
//! - `l2(t, s)` = mean over all N·H·W·C elements of `(s − t)²` (no ½);
//! - `fsp(t1, t2, s1, s2)` = mean over N·C1·C2 of `(G(s1,s2) − G(t1,t2))²` with
//!   `G(x,y)[n,i,j] = (1/HW) Σ_hw x[n,hw,i]·y[n,hw,j]` (all four maps must share H·W; `t1`,
//!   `s1` share C1, `t2`, `s2` share C2);
//! - `soft_label(t, s, Tt, Ts)` = mean over the batch of `−Σ_k softmax(t/Tt)_k ·
//!   log softmax(s/Ts)_k` — **no `T²` factor** (Hinton et al. multiply by T²; PaddleSlim does
//!   not, and neither do we: scale with the loss weight if wanted);
//! - `custom(names, f)`: a user closure over named tensors returning the value and the
//!   gradients w.r.t. the student tensors.
//!
//! The total is `Σ weight·loss`. An unknown tensor name is an error listing the three closest
//! existing names; a shape mismatch names both tensors and their shapes with layout.
//!
//! # Loss specs
//!
//! [`parse_losses`] reads the command line's form: items separated by `;`, each
//! `kind[:args][*weight]` (or `@weight`), with kinds `ce`, `l2:T,S`, `fsp:T1,T2,S1,S2` and
//! `soft:T,S[,Tt=x][,Ts=x][,T=x]` (`T` sets both temperatures; default 1). Examples:
//! `ce`, `l2:teacher_bn5c_branch2b,depthwise_conv2d_11*0.5`, `soft:teacher_fc,fc7,T=4@2`,
//! `ce;l2:teacher_bn5c_branch2b,depthwise_conv2d_11`.

use std::fmt;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use tinykd_kernels::loss;
use tinykd_kernels::shape::{Fsp, Logits};
use tinykd_kernels::{Isa, KernelError};

use crate::graph::{Dims, Layout, OpKind, Program, Shape, TensorId};
use crate::params::ParamStore;
use crate::train::exec::Executor;

/// The tutorial's hint pair: teacher tensor (unprefixed) and student tensor.
pub const TUTORIAL_HINT: (&str, &str) = ("bn5c_branch2b", "depthwise_conv2d_11");

/// Why a merge, a loss or a loss spec was rejected.
#[derive(Clone, Debug, PartialEq)]
pub enum DistError {
    /// No tensor has this name.
    UnknownTensor {
        /// The name asked for.
        name: String,
        /// What it was asked for (e.g. `l2 loss`).
        context: String,
        /// The closest existing names, best first (see [`Merged::closest`]).
        suggestions: Vec<String>,
    },
    /// Two tensors a loss combines have incompatible shapes.
    ShapeMismatch {
        /// The loss and the rule broken.
        context: String,
        /// First tensor: name and shape (`[N, 1, 1, 512] NHWC`).
        a: (String, String),
        /// Second tensor: name and shape.
        b: (String, String),
    },
    /// A loss needs a teacher tensor but nothing was merged.
    NoTeacher {
        /// The name.
        name: String,
    },
    /// The teacher's parameter store was made for another model or holds a NaN or an infinity.
    TeacherParams {
        /// Why.
        why: String,
    },
    /// The teacher prefix is empty or lets a teacher name shadow a student name.
    Prefix {
        /// The prefix given.
        prefix: String,
        /// Why.
        why: String,
    },
    /// A loss would give the student no gradient: its trained side is a teacher tensor.
    NotTrained {
        /// The loss.
        loss: String,
        /// Why.
        why: String,
    },
    /// An invalid data-name map entry.
    DataMap {
        /// Why.
        why: String,
    },
    /// A loss spec string could not be parsed.
    Spec {
        /// The offending item.
        item: String,
        /// Why.
        why: String,
    },
    /// A custom loss returned something unusable.
    Custom {
        /// The loss's label.
        label: String,
        /// Why.
        why: String,
    },
    /// A loss kernel refused its arguments (labels out of range, bad temperatures, ...).
    Kernel {
        /// The loss.
        loss: String,
        /// The kernel's error.
        err: KernelError,
    },
}

impl fmt::Display for DistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistError::UnknownTensor { name, context, suggestions } => {
                write!(f, "{context}: no tensor named `{name}`")?;
                if !suggestions.is_empty() {
                    write!(
                        f,
                        "; closest names: {}",
                        suggestions.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                    )?;
                }
                Ok(())
            }
            DistError::ShapeMismatch { context, a, b } => {
                write!(f, "{context}: `{}` has shape {} but `{}` has shape {}", a.0, a.1, b.0, b.1)
            }
            DistError::NoTeacher { name } => write!(
                f,
                "`{name}` names a teacher tensor, but no teacher was merged: merge one (`merge`, or `tinykd \
                 distill --teacher`) or drop the losses that read the teacher"
            ),
            DistError::TeacherParams { why } => write!(f, "teacher parameters: {why}"),
            DistError::Prefix { prefix, why } => write!(f, "teacher prefix `{prefix}`: {why}"),
            DistError::NotTrained { loss, why } => write!(f, "{loss} loss: {why}"),
            DistError::DataMap { why } => write!(f, "data name map: {why}"),
            DistError::Spec { item, why } => write!(f, "loss spec `{item}`: {why}"),
            DistError::Custom { label, why } => write!(f, "custom loss `{label}`: {why}"),
            DistError::Kernel { loss, err } => write!(f, "{loss}: {err}"),
        }
    }
}

impl std::error::Error for DistError {}

/// Which network a tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The student (trained).
    Student,
    /// The merged teacher (frozen).
    Teacher,
}

/// A resolved tensor of a [`Merged`] name space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// The name it was asked for.
    pub name: String,
    /// Its network.
    pub side: Side,
    /// Its id in that network's program.
    pub id: TensorId,
    /// Its per-sample shape.
    pub shape: Shape,
}

impl TensorRef {
    /// Its dims for a batch of `n`.
    pub fn dims(&self, n: usize) -> Dims {
        self.shape.dims(n)
    }
}

/// `[N, h, w, c] NHWC` or `[N, c] NC`.
pub fn shape_str(s: Shape) -> String {
    match s.layout {
        Layout::Nhwc => format!("[N, {}, {}, {}] NHWC", s.h, s.w, s.c),
        Layout::Nc => format!("[N, {}] NC", s.c),
    }
}

/// The frozen teacher of a [`Merged`] name space.
#[derive(Clone, Debug)]
pub struct Teacher {
    /// Its program.
    pub program: Program,
    /// Its parameters, copied at merge time (never updated).
    pub params: ParamStore,
    /// The prefix of its tensor names (e.g. `teacher_`).
    pub prefix: String,
}

/// A student with (optionally) a frozen teacher merged into its name space (see the
/// [module docs](self)).
#[derive(Clone, Debug)]
pub struct Merged {
    student: Program,
    teacher: Option<Teacher>,
}

/// Merges `teacher` (program and parameters, copied now) into `student`'s name space:
/// teacher tensors become `<prefix><name>`; each `(teacher_input, student_tensor)` of
/// `data_name_map` makes the teacher read the student's tensor (only the teacher's input
/// `image` can be mapped, to a student tensor of the same shape — normally `("image", "image")`).
/// Refuses parameters of another model or with a NaN or infinite value
/// ([`DistError::TeacherParams`] naming the tensor), and an empty prefix or one under which a
/// teacher name would shadow a student name ([`DistError::Prefix`] naming both).
pub fn merge(
    teacher: (&Program, &ParamStore),
    student: &Program,
    data_name_map: &[(&str, &str)],
    prefix: &str,
) -> Result<Merged, DistError> {
    let (tprog, tparams) = teacher;
    if *tparams.config() != tprog.config {
        return Err(DistError::TeacherParams {
            why: format!("the store is for {:?}, the teacher program is {:?}", tparams.config(), tprog.config),
        });
    }
    check_prefix(tprog, student, prefix)?;
    if data_name_map.is_empty() {
        return Err(DistError::DataMap {
            why: "the teacher's input `image` must be mapped to a student tensor".into(),
        });
    }
    for &(t, s) in data_name_map {
        if tprog.find(t) != Some(tprog.input()) {
            return Err(DistError::DataMap {
                why: format!("`{t}` is not the teacher's input (only `image` can be mapped)"),
            });
        }
        let sid =
            student.find(s).ok_or_else(|| DistError::DataMap { why: format!("the student has no tensor `{s}`") })?;
        let (ts, ss) = (tprog.tensor(tprog.input()).shape, student.tensor(sid).shape);
        if ts != ss || sid != student.input() {
            return Err(DistError::DataMap {
                why: format!(
                    "teacher `{t}` {} cannot read student `{s}` {} (it must be the student's input, same shape)",
                    shape_str(ts),
                    shape_str(ss)
                ),
            });
        }
    }
    if let Some((name, bad)) = tparams.first_non_finite() {
        return Err(DistError::TeacherParams {
            why: format!(
                "`{name}` {bad}; every teacher weight and statistic must be finite: load a finite parameter \
                 file or checkpoint"
            ),
        });
    }
    let teacher = Teacher { program: *tprog, params: tparams.clone(), prefix: prefix.to_string() };
    Ok(Merged { student: *student, teacher: Some(teacher) })
}

/// Refuses an empty `prefix`, and one under which a student name (tensor or depthwise alias)
/// would resolve to a teacher tensor instead ([`Merged::resolve`] tries the teacher first).
fn check_prefix(teacher: &Program, student: &Program, prefix: &str) -> Result<(), DistError> {
    let err = |why: String| Err(DistError::Prefix { prefix: prefix.to_string(), why });
    if prefix.is_empty() {
        return err("it must not be empty: teacher names would shadow the student's (`conv1` would be the \
                    teacher's); use e.g. `teacher_`"
            .into());
    }
    for name in names_of(student, "") {
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        if teacher.find(rest).is_some_and(|id| id != teacher.input()) {
            return err(format!(
                "the student's `{name}` would name the teacher's `{rest}` instead; choose a prefix no student \
                 tensor name starts with (e.g. `teacher_`)"
            ));
        }
    }
    Ok(())
}

impl Merged {
    /// A name space with the student alone (plain training, cross-entropy only).
    pub fn student_only(student: &Program) -> Merged {
        Merged { student: *student, teacher: None }
    }

    /// The student program.
    pub fn student(&self) -> &Program {
        &self.student
    }

    /// The teacher, if one was merged.
    pub fn teacher(&self) -> Option<&Teacher> {
        self.teacher.as_ref()
    }

    /// Resolves `name` (asked for in `context`, for the error message): `<prefix><teacher
    /// tensor or alias>` is the teacher's, anything else the student's.
    pub fn resolve(&self, name: &str, context: &str) -> Result<TensorRef, DistError> {
        if let Some(t) = &self.teacher {
            if let Some(rest) = name.strip_prefix(t.prefix.as_str()) {
                if let Some(id) = t.program.find(rest).filter(|&id| id != t.program.input()) {
                    let shape = t.program.tensor(id).shape;
                    return Ok(TensorRef { name: name.to_string(), side: Side::Teacher, id, shape });
                }
            }
        }
        if let Some(id) = self.student.find(name) {
            let shape = self.student.tensor(id).shape;
            return Ok(TensorRef { name: name.to_string(), side: Side::Student, id, shape });
        }
        Err(DistError::UnknownTensor {
            name: name.to_string(),
            context: context.to_string(),
            suggestions: self.closest(name, 3),
        })
    }

    /// Every addressable name: student tensors and `depthwise_conv2d_<k>` aliases, prefixed
    /// teacher tensors and aliases (the mapped input excluded).
    pub fn names(&self) -> Vec<String> {
        let mut out = names_of(&self.student, "");
        if let Some(t) = &self.teacher {
            out.extend(names_of(&t.program, &t.prefix).into_iter().filter(|n| n != &format!("{}image", t.prefix)));
        }
        out
    }

    /// The `k` names closest to `name`, best first: names that start with `name`, then names
    /// that contain it (each group shortest first, ties by name), then the rest by edit distance
    /// (ties by name). So `teacher_res5c` suggests the `teacher_res5c_*` tensors.
    pub fn closest(&self, name: &str, k: usize) -> Vec<String> {
        let rank = |n: &str| match (n.starts_with(name), n.contains(name)) {
            (true, _) => (0, n.len()),
            (false, true) => (1, n.len()),
            _ => (2, edit_distance(name, n)),
        };
        let mut scored: Vec<((usize, usize), String)> = self.names().into_iter().map(|n| (rank(&n), n)).collect();
        scored.sort();
        scored.into_iter().take(k).map(|(_, n)| n).collect()
    }
}

/// Tensor names of `prog` and its depthwise aliases, with `prefix`.
fn names_of(prog: &Program, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = prog.tensors().iter().map(|t| format!("{prefix}{}", t.name)).collect();
    let dws = prog.ops().iter().filter(|op| matches!(op.kind, OpKind::DwConv { .. })).count();
    out.extend((0..dws).map(|k| format!("{prefix}depthwise_conv2d_{k}")));
    out
}

/// Levenshtein distance over bytes.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// One tensor handed to a custom loss.
#[derive(Clone, Copy, Debug)]
pub struct TensorArg<'a> {
    /// The name it was asked for.
    pub name: &'a str,
    /// Its values for the batch (NHWC or NC).
    pub data: &'a [f32],
    /// Its dims for the batch.
    pub dims: Dims,
    /// Its layout.
    pub layout: Layout,
    /// Which network it belongs to (only student tensors take gradients).
    pub side: Side,
}

/// A custom loss: gets the named tensors in order and returns the loss value and one gradient
/// per tensor — empty for "no gradient" (always for teacher tensors), else exactly the
/// tensor's length. An `Err` aborts the step with its message.
pub type CustomFn = dyn Fn(&[TensorArg<'_>]) -> Result<(f32, Vec<Vec<f32>>), String> + Send + Sync;

/// What a loss computes (tensors by name, resolved by [`Losses::new`]).
#[derive(Clone)]
pub enum LossKind {
    /// Softmax cross-entropy of the student logits with the labels.
    Ce,
    /// `mean((s − t)²)`.
    L2 {
        /// Target (teacher side).
        teacher: String,
        /// Trained tensor.
        student: String,
    },
    /// FSP loss.
    Fsp {
        /// Teacher first map.
        t1: String,
        /// Teacher second map.
        t2: String,
        /// Student first map.
        s1: String,
        /// Student second map.
        s2: String,
    },
    /// Soft-label loss (no `T²` factor).
    SoftLabel {
        /// Teacher logits.
        teacher: String,
        /// Student logits.
        student: String,
        /// Teacher temperature.
        tt: f32,
        /// Student temperature.
        ts: f32,
    },
    /// A user closure over named tensors.
    Custom {
        /// Label used in reports and errors.
        label: String,
        /// The tensors it reads, in order.
        names: Vec<String>,
        /// The closure.
        f: Arc<CustomFn>,
    },
}

impl fmt::Debug for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossKind::Custom { label, names, .. } => {
                f.debug_struct("Custom").field("label", label).field("names", names).finish()
            }
            other => f.write_str(&other.label()),
        }
    }
}

impl LossKind {
    /// A short label: `ce`, `l2:t,s`, `fsp:t1,t2,s1,s2`, `soft:t,s,Tt=..,Ts=..`, or the custom
    /// label.
    pub fn label(&self) -> String {
        match self {
            LossKind::Ce => "ce".into(),
            LossKind::L2 { teacher, student } => format!("l2:{teacher},{student}"),
            LossKind::Fsp { t1, t2, s1, s2 } => format!("fsp:{t1},{t2},{s1},{s2}"),
            LossKind::SoftLabel { teacher, student, tt, ts } => format!("soft:{teacher},{student},Tt={tt},Ts={ts}"),
            LossKind::Custom { label, .. } => label.clone(),
        }
    }
}

/// A weighted loss term.
#[derive(Clone, Debug)]
pub struct Loss {
    /// What it computes.
    pub kind: LossKind,
    /// Its weight in the total.
    pub weight: f32,
}

impl Loss {
    /// Cross-entropy on the student logits, weight 1.
    pub fn ce() -> Loss {
        Loss { kind: LossKind::Ce, weight: 1.0 }
    }
    /// `l2(t, s)`, weight 1.
    pub fn l2(teacher: &str, student: &str) -> Loss {
        Loss { kind: LossKind::L2 { teacher: teacher.into(), student: student.into() }, weight: 1.0 }
    }
    /// `fsp(t1, t2, s1, s2)`, weight 1.
    pub fn fsp(t1: &str, t2: &str, s1: &str, s2: &str) -> Loss {
        Loss { kind: LossKind::Fsp { t1: t1.into(), t2: t2.into(), s1: s1.into(), s2: s2.into() }, weight: 1.0 }
    }
    /// `soft_label(t, s, Tt, Ts)`, weight 1.
    pub fn soft_label(teacher: &str, student: &str, tt: f32, ts: f32) -> Loss {
        Loss { kind: LossKind::SoftLabel { teacher: teacher.into(), student: student.into(), tt, ts }, weight: 1.0 }
    }
    /// A custom loss over `names`, weight 1.
    pub fn custom(label: &str, names: &[&str], f: Arc<CustomFn>) -> Loss {
        let names = names.iter().map(|s| s.to_string()).collect();
        Loss { kind: LossKind::Custom { label: label.into(), names, f }, weight: 1.0 }
    }
    /// The same loss with weight `w`.
    pub fn weighted(mut self, w: f32) -> Loss {
        self.weight = w;
        self
    }
}

/// Parses one loss item `kind[:args][*w|@w]` (see the [module docs](self)).
pub fn parse_loss(item: &str) -> Result<Loss, DistError> {
    let bad = |why: &str| DistError::Spec { item: item.to_string(), why: why.to_string() };
    let text = item.trim();
    let (body, weight) = match text.rfind(['*', '@']) {
        Some(i) => {
            let w: f32 = text[i + 1..].trim().parse().map_err(|_| bad("the weight after `*`/`@` is not a number"))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(bad("the weight must be finite and >= 0"));
            }
            (text[..i].trim(), w)
        }
        None => (text, 1.0),
    };
    let (kind, args) = match body.split_once(':') {
        Some((k, a)) => (k.trim(), a.split(',').map(str::trim).collect::<Vec<_>>()),
        None => (body, Vec::new()),
    };
    if args.iter().any(|a| a.is_empty()) {
        return Err(bad("empty argument"));
    }
    let want = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(bad(&format!("`{kind}` takes {n} tensor names, got {}", args.len())))
        }
    };
    let loss = match kind {
        "ce" => {
            want(0)?;
            Loss::ce()
        }
        "l2" => {
            want(2)?;
            Loss::l2(args[0], args[1])
        }
        "fsp" => {
            want(4)?;
            Loss::fsp(args[0], args[1], args[2], args[3])
        }
        "soft" => {
            if args.len() < 2 || args[..2].iter().any(|a| a.contains('=')) {
                return Err(bad("`soft` takes the teacher and student logits, then optional Tt=, Ts= or T="));
            }
            let (mut tt, mut ts) = (1.0f32, 1.0f32);
            let (mut tt_set, mut ts_set) = (false, false);
            for opt in &args[2..] {
                let (k, v) = opt.split_once('=').ok_or_else(|| bad(&format!("`{opt}` is not Tt=, Ts= or T=")))?;
                let v: f32 = v.trim().parse().map_err(|_| bad(&format!("`{opt}`: not a number")))?;
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad("temperatures must be positive"));
                }
                let k = k.trim();
                let (t, s) = match k {
                    "Tt" => (true, false),
                    "Ts" => (false, true),
                    "T" => (true, true),
                    other => return Err(bad(&format!("unknown option `{other}` (use Tt, Ts or T)"))),
                };
                if (t && tt_set) || (s && ts_set) {
                    return Err(bad(&format!("`{opt}` sets a temperature already set (T= sets both Tt and Ts)")));
                }
                if t {
                    (tt, tt_set) = (v, true);
                }
                if s {
                    (ts, ts_set) = (v, true);
                }
            }
            Loss::soft_label(args[0], args[1], tt, ts)
        }
        "custom" => return Err(bad("custom losses are closures: build them in code with Loss::custom")),
        other => return Err(bad(&format!("unknown loss kind `{other}` (use ce, l2, fsp or soft)"))),
    };
    Ok(loss.weighted(weight))
}

/// Parses `;`-separated loss items (empty items are ignored).
pub fn parse_losses(spec: &str) -> Result<Vec<Loss>, DistError> {
    spec.split(';').filter(|s| !s.trim().is_empty()).map(parse_loss).collect()
}

/// The default objective: cross-entropy plus the tutorial's hint
/// `l2(<prefix>bn5c_branch2b, depthwise_conv2d_11)` when both tensors exist with equal shapes,
/// else plus `soft_label(<prefix><teacher logits>, <student logits>)`; cross-entropy alone
/// without a teacher.
pub fn default_losses(merged: &Merged) -> Vec<Loss> {
    let Some(t) = merged.teacher() else { return vec![Loss::ce()] };
    let tname = format!("{}{}", t.prefix, TUTORIAL_HINT.0);
    let (a, b) = (merged.resolve(&tname, ""), merged.resolve(TUTORIAL_HINT.1, ""));
    if let (Ok(a), Ok(b)) = (a, b) {
        if a.side == Side::Teacher && b.side == Side::Student && a.shape == b.shape {
            return vec![Loss::ce(), Loss::l2(&tname, TUTORIAL_HINT.1)];
        }
    }
    let tl = format!("{}{}", t.prefix, t.program.tensor(t.program.output()).name);
    let sl = merged.student().tensor(merged.student().output()).name.to_string();
    vec![Loss::ce(), Loss::soft_label(&tl, &sl, 1.0, 1.0)]
}

/// A loss with its tensors resolved.
#[derive(Clone, Debug)]
struct Resolved {
    kind: LossKind,
    weight: f32,
    tensors: Vec<TensorRef>,
}

/// The values of one step's losses.
#[derive(Clone, Debug, PartialEq)]
pub struct LossValues {
    /// `Σ weight·value`.
    pub total: f32,
    /// Each loss's label, weight and unweighted value, in order.
    pub parts: Vec<(String, f32, f32)>,
}

/// Gradients to seed into the student's backward: per student tensor, `Σ weight·∂loss/∂t`.
pub type Seeds = Vec<(TensorId, Vec<f32>)>;

/// A checked list of weighted losses over a [`Merged`] name space.
#[derive(Clone, Debug)]
pub struct Losses {
    items: Vec<Resolved>,
}

impl Losses {
    /// Resolves every tensor name of `losses` in `merged` and checks shapes (see
    /// [`DistError`]), weights (finite and `>= 0`, as the spec parser requires:
    /// [`DistError::Spec`] naming the loss and the weight) and that each loss can train the
    /// student ([`DistError::NotTrained`] naming the tensor): the trained side — the second
    /// argument of `l2` and `soft_label`, the third and fourth of `fsp` — must be a student
    /// tensor (a frozen teacher tensor takes no gradient), and a custom loss must read at least
    /// one student tensor.
    pub fn new(merged: &Merged, losses: &[Loss]) -> Result<Losses, DistError> {
        let mut items = Vec::with_capacity(losses.len());
        for l in losses {
            if !(l.weight.is_finite() && l.weight >= 0.0) {
                return Err(DistError::Spec {
                    item: l.kind.label(),
                    why: format!("the weight is {}; it must be finite and >= 0", l.weight),
                });
            }
            let ctx = format!("{} loss", l.kind.label());
            // Without a teacher, a `teacher_` name is not a typo to suggest student names for.
            let get = |n: &str| -> Result<TensorRef, DistError> {
                merged.resolve(n, &ctx).map_err(|e| match e {
                    DistError::UnknownTensor { .. } if merged.teacher().is_none() && n.starts_with("teacher_") => {
                        DistError::NoTeacher { name: n.into() }
                    }
                    e => e,
                })
            };
            let trained = |r: TensorRef, which: &str| -> Result<TensorRef, DistError> {
                if r.side == Side::Student {
                    return Ok(r);
                }
                Err(DistError::NotTrained {
                    loss: l.kind.label(),
                    why: format!(
                        "`{}` is a teacher tensor (frozen, it takes no gradient), but the {which} must be a \
                         student tensor: the teacher side comes first, then the student (e.g. \
                         l2:teacher_<name>,<name>)",
                        r.name
                    ),
                })
            };
            let mismatch = |rule: &str, a: &TensorRef, b: &TensorRef| DistError::ShapeMismatch {
                context: format!("{ctx} ({rule})"),
                a: (a.name.clone(), shape_str(a.shape)),
                b: (b.name.clone(), shape_str(b.shape)),
            };
            let tensors = match &l.kind {
                LossKind::Ce => {
                    let s = merged.student();
                    let id = s.output();
                    vec![TensorRef {
                        name: s.tensor(id).name.to_string(),
                        side: Side::Student,
                        id,
                        shape: s.tensor(id).shape,
                    }]
                }
                LossKind::L2 { teacher, student } => {
                    let (t, s) = (get(teacher)?, trained(get(student)?, "second argument")?);
                    if t.shape != s.shape {
                        return Err(mismatch("both tensors must have the same shape", &t, &s));
                    }
                    vec![t, s]
                }
                LossKind::Fsp { t1, t2, s1, s2 } => {
                    let v = [
                        get(t1)?,
                        get(t2)?,
                        trained(get(s1)?, "third argument")?,
                        trained(get(s2)?, "fourth argument")?,
                    ];
                    for r in &v[1..] {
                        if r.shape.layout != Layout::Nhwc || (r.shape.h, r.shape.w) != (v[0].shape.h, v[0].shape.w) {
                            return Err(mismatch(
                                "all four maps must be NHWC with the same height and width",
                                &v[0],
                                r,
                            ));
                        }
                    }
                    if v[0].shape.c != v[2].shape.c {
                        return Err(mismatch("t1 and s1 must have the same channels", &v[0], &v[2]));
                    }
                    if v[1].shape.c != v[3].shape.c {
                        return Err(mismatch("t2 and s2 must have the same channels", &v[1], &v[3]));
                    }
                    v.to_vec()
                }
                LossKind::SoftLabel { teacher, student, tt, ts } => {
                    let (t, s) = (get(teacher)?, trained(get(student)?, "second argument")?);
                    if t.shape != s.shape || t.shape.layout != Layout::Nc {
                        return Err(mismatch("both must be NC logits with the same classes", &t, &s));
                    }
                    if !(*tt > 0.0 && *ts > 0.0 && tt.is_finite() && ts.is_finite()) {
                        return Err(DistError::Spec {
                            item: l.kind.label(),
                            why: "temperatures must be positive".into(),
                        });
                    }
                    vec![t, s]
                }
                LossKind::Custom { names, .. } => {
                    let v: Vec<TensorRef> = names.iter().map(|n| get(n)).collect::<Result<_, _>>()?;
                    if !v.iter().any(|r| r.side == Side::Student) {
                        return Err(DistError::NotTrained {
                            loss: l.kind.label(),
                            why: format!(
                                "it reads no student tensor ({}), so the student gets no gradient: add the \
                                 student tensors it trains to its names",
                                if names.is_empty() { "no names at all".to_string() } else { names.join(", ") }
                            ),
                        });
                    }
                    v
                }
            };
            items.push(Resolved { kind: l.kind.clone(), weight: l.weight, tensors });
        }
        Ok(Losses { items })
    }

    /// Whether any loss reads a teacher tensor (so the teacher must run forward).
    pub fn needs_teacher(&self) -> bool {
        self.items.iter().any(|l| l.tensors.iter().any(|t| t.side == Side::Teacher))
    }

    /// The teacher tensors the losses read.
    pub fn teacher_tensors(&self) -> Vec<TensorId> {
        self.items.iter().flat_map(|l| &l.tensors).filter(|t| t.side == Side::Teacher).map(|t| t.id).collect()
    }

    /// The student tensors the losses read (and seed gradients at).
    pub fn student_tensors(&self) -> Vec<TensorId> {
        self.items.iter().flat_map(|l| &l.tensors).filter(|t| t.side == Side::Student).map(|t| t.id).collect()
    }

    /// Whether any loss needs labels (cross-entropy).
    pub fn needs_labels(&self) -> bool {
        self.items.iter().any(|l| matches!(l.kind, LossKind::Ce))
    }

    /// Labels of the losses, in order.
    pub fn labels(&self) -> Vec<String> {
        self.items.iter().map(|l| l.kind.label()).collect()
    }

    /// Computes every loss on the last forward of `student` (and `teacher`, required when
    /// [`Losses::needs_teacher`]) with `labels` (one per sample), returning the values and the
    /// weighted gradients to seed into the student's backward.
    pub fn compute(
        &self,
        isa: Isa,
        student: &Executor,
        teacher: Option<&Executor>,
        labels: &[u32],
    ) -> Result<(LossValues, Seeds), DistError> {
        let n = student.batch();
        let data = |r: &TensorRef| -> Result<&[f32], DistError> {
            match r.side {
                Side::Student => Ok(student.tensor(r.id)),
                Side::Teacher => {
                    teacher.map(|t| t.tensor(r.id)).ok_or_else(|| DistError::NoTeacher { name: r.name.clone() })
                }
            }
        };
        let mut seeds: Seeds = Vec::new();
        let mut add_seed = |r: &TensorRef, w: f32, g: &[f32]| {
            if r.side != Side::Student || w == 0.0 {
                return;
            }
            match seeds.iter_mut().find(|(id, _)| *id == r.id) {
                Some((_, acc)) => acc.iter_mut().zip(g).for_each(|(a, &v)| *a += w * v),
                None => seeds.push((r.id, g.iter().map(|&v| w * v).collect())),
            }
        };
        let mut parts = Vec::with_capacity(self.items.len());
        let mut total = 0.0f32;
        for l in &self.items {
            let label = l.kind.label();
            let kernel = |err| DistError::Kernel { loss: label.clone(), err };
            let t = &l.tensors;
            let value = match &l.kind {
                LossKind::Ce => {
                    let z = data(&t[0])?;
                    let mut g = vec![0.0; z.len()];
                    let v = loss::softmax_ce(isa, &Logits::new(n, t[0].shape.c as usize), z, labels, Some(&mut g))
                        .map_err(kernel)?;
                    add_seed(&t[0], l.weight, &g);
                    v
                }
                LossKind::L2 { .. } => {
                    let s = data(&t[1])?;
                    let mut g = vec![0.0; s.len()];
                    let v = loss::l2_loss(isa, data(&t[0])?, s, Some(&mut g)).map_err(kernel)?;
                    add_seed(&t[1], l.weight, &g);
                    v
                }
                LossKind::Fsp { .. } => {
                    let sh = Fsp::new(
                        n,
                        t[0].shape.h as usize * t[0].shape.w as usize,
                        t[0].shape.c as usize,
                        t[1].shape.c as usize,
                    );
                    let (s1, s2) = (data(&t[2])?, data(&t[3])?);
                    let (mut g1, mut g2) = (vec![0.0; s1.len()], vec![0.0; s2.len()]);
                    let mut scratch = vec![0.0; sh.scratch_len()];
                    let v = loss::fsp_loss(
                        isa,
                        &sh,
                        data(&t[0])?,
                        data(&t[1])?,
                        s1,
                        s2,
                        Some(&mut g1),
                        Some(&mut g2),
                        &mut scratch,
                    )
                    .map_err(kernel)?;
                    add_seed(&t[2], l.weight, &g1);
                    add_seed(&t[3], l.weight, &g2);
                    v
                }
                LossKind::SoftLabel { tt, ts, .. } => {
                    let s = data(&t[1])?;
                    let mut g = vec![0.0; s.len()];
                    let sh = Logits::new(n, t[1].shape.c as usize);
                    let v = loss::soft_label_loss(isa, &sh, data(&t[0])?, s, *tt, *ts, Some(&mut g)).map_err(kernel)?;
                    add_seed(&t[1], l.weight, &g);
                    v
                }
                LossKind::Custom { label, f, .. } => {
                    let args = t
                        .iter()
                        .map(|r| {
                            Ok(TensorArg {
                                name: &r.name,
                                data: data(r)?,
                                dims: r.dims(n),
                                layout: r.shape.layout,
                                side: r.side,
                            })
                        })
                        .collect::<Result<Vec<_>, DistError>>()?;
                    let custom = |why: String| DistError::Custom { label: label.clone(), why };
                    let (v, grads) = f(&args).map_err(custom)?;
                    if grads.len() != t.len() {
                        return Err(custom(format!("returned {} gradients for {} tensors", grads.len(), t.len())));
                    }
                    for ((r, a), g) in t.iter().zip(&args).zip(&grads) {
                        if g.is_empty() {
                            continue;
                        }
                        if r.side == Side::Teacher {
                            return Err(custom(format!("returned a gradient for teacher tensor `{}`", r.name)));
                        }
                        if g.len() != a.data.len() {
                            return Err(custom(format!(
                                "gradient of `{}` has {} values, the tensor {}",
                                r.name,
                                g.len(),
                                a.data.len()
                            )));
                        }
                        add_seed(r, l.weight, g);
                    }
                    v
                }
            };
            total += l.weight * value;
            parts.push((label, l.weight, value));
        }
        Ok((LossValues { total, parts }, seeds))
    }
}
