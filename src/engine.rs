//! The allocation-free inference engine (`no_std`): runs a batch of either model over a
//! caller-provided byte arena with weights borrowed from an inference weight file.
//!
//! ```ignore
//! use tinykd::{engine::Engine, plan, weights::{Aligned, WeightFile}, kernels::Isa, ModelConfig};
//! const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
//! static W: &Aligned<[u8]> = &Aligned(*include_bytes!("student.tkd"));
//! static mut ARENA: [u8; plan::arena_bytes(&CFG, 1)] = [0; plan::arena_bytes(&CFG, 1)];
//!
//! let file = WeightFile::parse(&W.0)?;
//! let engine = Engine::new(&CFG, 1, &file)?;           // checks every tensor's name and dims
//! let mut logits = [0.0f32; 10];
//! engine.run(Isa::detect(), &image, arena, &mut logits)?;
//! ```
//!
//! The file must be a [`FileKind::Inference`] file (batch norm folded; see `crate::fold`):
//! each conv has `<conv>_weights` (HWIO, or `[3][3][c]` depthwise) and `<conv>_bias`, the fc
//! `<fc>_weights` `[c_in][classes]` and `<fc>_offset`; f32 or f16 storage (widened in the
//! kernels, f32 accumulation). Steps follow [`Schedule`]: bias and ReLU in each conv's
//! epilogue, residual add + ReLU in place; buffers sit at the offsets of its [`Plan`].

use core::fmt;
use core::ops::Range;

use tinykd_kernels::act::{self, Act};
use tinykd_kernels::{conv, dwconv, f16, linear, pool, Elem, Isa, KernelError};

use crate::config::ModelConfig;
use crate::graph::{self, param_name, Name, ParamRole};
use crate::models::{self, ModelError};
use crate::plan::{Buf, Plan, Schedule, Step, StepKind, ALIGN, MAX_STEPS};
use crate::weights::{self, FileKind, TensorData, WeightFile};

/// Why the engine refused to be built or to run. Nothing is written to the logits on error
/// (the arena may have been written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The configuration (or batch) is invalid.
    Model(ModelError),
    /// The weight file holds raw parameters, not BN-folded inference weights.
    NotInference,
    /// The weight file was made for another model configuration.
    ConfigMismatch {
        /// The file's configuration.
        file: ModelConfig,
        /// The configuration the engine was asked to run.
        model: ModelConfig,
    },
    /// A tensor the model needs is not in the file.
    MissingTensor {
        /// Its name.
        name: Name,
    },
    /// A tensor has other dims than the model needs.
    TensorDims {
        /// Its name.
        name: Name,
        /// The dims the model needs.
        expected: graph::Dims,
        /// The dims in the file.
        got: weights::Dims,
    },
    /// A layer's weights and bias have different dtypes.
    MixedDTypes {
        /// The layer.
        layer: Name,
    },
    /// The arena is smaller than the plan (after aligning its start to [`ALIGN`]).
    ArenaTooSmall {
        /// Bytes needed at the arena's alignment.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The input is not `batch·h·w·c` values.
    InputLen {
        /// Values needed.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The logits slice is not `batch·classes` values.
    LogitsLen {
        /// Values needed.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A kernel refused its arguments (a bug: the engine sizes every argument).
    Kernel {
        /// The layer.
        layer: Name,
        /// The kernel's error.
        err: KernelError,
    },
    /// The plan put two operands of one step in overlapping memory (a bug).
    OverlappingOperands {
        /// The layer.
        layer: Name,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Model(e) => write!(f, "{e}"),
            EngineError::NotInference => {
                f.write_str("the weight file holds raw parameters; the engine needs an inference (BN-folded) file")
            }
            EngineError::ConfigMismatch { file, model } => {
                write!(f, "the weight file is for {file:?}, the engine runs {model:?}")
            }
            EngineError::MissingTensor { name } => write!(f, "tensor `{name}` is missing from the weight file"),
            EngineError::TensorDims { name, expected, got } => {
                write!(f, "tensor `{name}` has dims {got} in the weight file, the model needs {expected}")
            }
            EngineError::MixedDTypes { layer } => write!(f, "layer `{layer}`: weights and bias have different dtypes"),
            EngineError::ArenaTooSmall { needed, got } => {
                write!(f, "arena of {got} bytes is too small: the plan needs {needed} bytes at this alignment")
            }
            EngineError::InputLen { expected, got } => write!(f, "input has {got} values, the model needs {expected}"),
            EngineError::LogitsLen { expected, got } => {
                write!(f, "logits slice has {got} values, the model writes {expected}")
            }
            EngineError::Kernel { layer, err } => write!(f, "layer `{layer}`: {err}"),
            EngineError::OverlappingOperands { layer } => write!(f, "layer `{layer}`: the plan overlaps its operands"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EngineError {}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        EngineError::Model(e)
    }
}

/// The weights of one step, borrowed from the file.
#[derive(Clone, Copy, Debug)]
enum StepWeights<'w> {
    None,
    F32 { w: &'w [f32], b: &'w [f32] },
    F16 { w: &'w [f16], b: &'w [f16] },
}

/// A model ready to run: its schedule, memory plan and weights (borrowed from the file bytes).
#[derive(Clone, Debug)]
pub struct Engine<'w> {
    schedule: Schedule,
    plan: Plan,
    weights: [StepWeights<'w>; MAX_STEPS],
}

impl<'w> Engine<'w> {
    /// Prepares inference of `cfg` for batches of `batch` with the weights of `file`, checking
    /// the file's kind and config and every tensor's presence and dims.
    pub fn new(cfg: &ModelConfig, batch: usize, file: &WeightFile<'w>) -> Result<Engine<'w>, EngineError> {
        if file.kind() != FileKind::Inference {
            return Err(EngineError::NotInference);
        }
        let prog = models::program(cfg)?;
        if file.config() != *cfg {
            return Err(EngineError::ConfigMismatch { file: file.config(), model: *cfg });
        }
        let schedule = Schedule::new(&prog, batch)?;
        let plan = schedule.plan()?;
        let mut weights = [StepWeights::None; MAX_STEPS];
        for (slot, step) in weights.iter_mut().zip(schedule.steps()) {
            *slot = bind(file, step)?;
        }
        Ok(Engine { schedule, plan, weights })
    }

    /// The inference steps.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The memory plan of the arena.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of an arena that may start at any address ([`Plan::peak`] + [`ALIGN`]); the same
    /// as [`crate::plan::arena_bytes`].
    pub fn arena_bytes(&self) -> usize {
        self.plan.peak + ALIGN
    }

    /// Runs the forward pass: `input` is the NHWC batch (`batch·h·w·c` normalised values),
    /// `arena` working memory of at least [`Plan::peak`] bytes after its start is aligned to
    /// [`ALIGN`] ([`Self::arena_bytes`] always suffices), `logits` receives `batch·classes`
    /// values.
    pub fn run(&self, isa: Isa, input: &[f32], arena: &mut [u8], logits: &mut [f32]) -> Result<(), EngineError> {
        let cfg = &self.schedule.config;
        let n = self.schedule.batch;
        let want_in = n * cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize;
        if input.len() != want_in {
            return Err(EngineError::InputLen { expected: want_in, got: input.len() });
        }
        let want_out = n * cfg.classes as usize;
        if logits.len() != want_out {
            return Err(EngineError::LogitsLen { expected: want_out, got: logits.len() });
        }
        let skip = arena.as_ptr().align_offset(ALIGN);
        let needed = skip.saturating_add(self.plan.peak);
        if arena.len() < needed {
            return Err(EngineError::ArenaTooSmall { needed, got: arena.len() });
        }
        let bytes = &mut arena[skip..needed];
        // SAFETY: every bit pattern is a valid `f32` (and a valid `u8`), and `align_to_mut`
        // only reinterprets the correctly aligned middle part.
        let (pre, floats, post) = unsafe { bytes.align_to_mut::<f32>() };
        if !pre.is_empty() || !post.is_empty() {
            return Err(EngineError::ArenaTooSmall { needed: needed + ALIGN, got: arena.len() });
        }
        for (step, w) in self.schedule.steps().iter().zip(&self.weights) {
            self.run_step(isa, step, *w, input, floats, logits)?;
        }
        Ok(())
    }

    /// The f32 range of arena buffer `b` (None for a non-arena operand).
    fn region(&self, b: Buf) -> Option<Range<usize>> {
        match b {
            Buf::Arena(i) => {
                let start = self.plan.offsets()[i as usize] / 4;
                Some(start..start + self.schedule.buffers()[i as usize].bytes / 4)
            }
            Buf::None | Buf::Input | Buf::Output => None,
        }
    }

    fn run_step(
        &self,
        isa: Isa,
        step: &Step,
        w: StepWeights<'_>,
        input: &[f32],
        arena: &mut [f32],
        logits: &mut [f32],
    ) -> Result<(), EngineError> {
        let n = self.schedule.batch;
        let read = if step.kind == StepKind::AddRelu { step.x2 } else { step.x };
        let overlap = EngineError::OverlappingOperands { layer: step.layer };
        let (ro, rw, scratch) =
            split3(arena, self.region(read), self.region(step.y), self.region(step.scratch)).ok_or(overlap)?;
        let x: &[f32] = if read == Buf::Input { input } else { ro };
        let y: &mut [f32] = if step.y == Buf::Output { logits } else { rw };
        let kernel = |err| EngineError::Kernel { layer: step.layer, err };
        let act = |relu| if relu { Act::Relu } else { Act::None };
        match (step.kind, w) {
            (StepKind::Conv { relu }, StepWeights::F32 { w, b }) => {
                conv::conv2d_fwd(isa, &step.conv2d(n), x, w, Some(b), act(relu), y, scratch)
            }
            (StepKind::Conv { relu }, StepWeights::F16 { w, b }) => {
                conv::conv2d_fwd(isa, &step.conv2d(n), x, w, Some(b), act(relu), y, scratch)
            }
            (StepKind::DwConv { relu }, StepWeights::F32 { w, b }) => {
                dwconv::dwconv3x3_fwd(isa, &step.dwconv(n), x, w, Some(b), act(relu), y)
            }
            (StepKind::DwConv { relu }, StepWeights::F16 { w, b }) => {
                dwconv::dwconv3x3_fwd(isa, &step.dwconv(n), x, w, Some(b), act(relu), y)
            }
            (StepKind::Fc, StepWeights::F32 { w, b }) => fc(isa, step, n, x, w, b, y),
            (StepKind::Fc, StepWeights::F16 { w, b }) => fc(isa, step, n, x, w, b, y),
            (StepKind::MaxPool, _) => pool::maxpool3x3s2_fwd(isa, &step.pool(n), x, y),
            (StepKind::GlobalAvgPool, _) => pool::global_avg_fwd(isa, &step.pool(n), x, y),
            (StepKind::AddRelu, _) => act::add_relu_inplace(isa, y, x),
            // `bind` gives every conv and fc step its weights.
            (StepKind::Conv { .. } | StepKind::DwConv { .. } | StepKind::Fc, StepWeights::None) => {
                Err(KernelError::Shape("layer without weights"))
            }
        }
        .map_err(kernel)
    }
}

/// The fc into the logits.
fn fc<W: Elem>(isa: Isa, step: &Step, n: usize, x: &[f32], w: &[W], b: &[W], y: &mut [f32]) -> Result<(), KernelError> {
    linear::linear_fwd(isa, &step.linear(n), x, w, Some(b), Act::None, y)
}

/// Looks up and checks the weights of `step` in `file`.
fn bind<'w>(file: &WeightFile<'w>, step: &Step) -> Result<StepWeights<'w>, EngineError> {
    let (c_in, c_out, k) = (step.x_shape.c as usize, step.y_shape.c as usize, step.k as usize);
    let (wdims, bias_role) = match step.kind {
        StepKind::Conv { .. } => (graph::Dims::new(&[k, k, c_in, c_out]), ParamRole::Bias),
        StepKind::DwConv { .. } => (graph::Dims::new(&[3, 3, c_out]), ParamRole::Bias),
        StepKind::Fc => (graph::Dims::new(&[c_in, c_out]), ParamRole::Offset),
        StepKind::MaxPool | StepKind::AddRelu | StepKind::GlobalAvgPool => return Ok(StepWeights::None),
    };
    let w = tensor(file, param_name(step.layer, ParamRole::Weights), wdims)?;
    let b = tensor(file, param_name(step.layer, bias_role), graph::Dims::new(&[c_out]))?;
    match (w, b) {
        (TensorData::F32(w), TensorData::F32(b)) => Ok(StepWeights::F32 { w, b }),
        (TensorData::F16(w), TensorData::F16(b)) => Ok(StepWeights::F16 { w, b }),
        _ => Err(EngineError::MixedDTypes { layer: step.layer }),
    }
}

/// The data of tensor `name`, which must have dims `dims`.
fn tensor<'w>(file: &WeightFile<'w>, name: Name, dims: graph::Dims) -> Result<TensorData<'w>, EngineError> {
    let t = file.get(name.as_str()).ok_or(EngineError::MissingTensor { name })?;
    if !dims.eq_u32(t.dims.as_slice()) || t.data.len() != dims.numel() {
        return Err(EngineError::TensorDims { name, expected: dims, got: t.dims });
    }
    Ok(t.data)
}

/// Splits `arena` into a read-only region `ro`, a writable region `rw` and a scratch region
/// `sc` (each empty when `None`); `None` if two non-empty regions overlap or one runs past the
/// end.
#[allow(clippy::type_complexity)]
fn split3(
    arena: &mut [f32],
    ro: Option<Range<usize>>,
    rw: Option<Range<usize>>,
    sc: Option<Range<usize>>,
) -> Option<(&[f32], &mut [f32], &mut [f32])> {
    let mut parts: [(usize, Range<usize>); 3] = [(0, 0..0), (1, 0..0), (2, 0..0)];
    for (slot, r) in parts.iter_mut().zip([ro, rw, sc]) {
        slot.1 = r.unwrap_or(0..0);
    }
    parts.sort_unstable_by_key(|(_, r)| (r.start, r.end));
    let mut out: [&mut [f32]; 3] = [&mut [], &mut [], &mut []];
    let mut rest = arena;
    let mut pos = 0;
    for (tag, r) in parts {
        if r.is_empty() {
            continue;
        }
        if r.start < pos || r.end - pos > rest.len() {
            return None;
        }
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(r.start - pos);
        let (mine, tail) = tail.split_at_mut(r.end - r.start);
        out[tag] = mine;
        rest = tail;
        pos = r.end;
    }
    let [ro, rw, sc] = out;
    Some((ro, rw, sc))
}
