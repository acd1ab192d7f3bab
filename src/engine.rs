//! The allocation-free inference engine (`no_std`): runs a batch of either model over a
//! caller-provided byte arena with weights borrowed from an inference weight file.
//!
//! On a host, [`Engine::new`] builds everything at run time:
//!
//! ```ignore
//! let file = WeightFile::parse(&bytes)?;
//! let mut engine = Engine::new(&cfg, batch, &file)?;    // checks every tensor's name and dims
//! let mut panels = vec![0u8; engine.panels_bytes()];    // optional, host speed-up:
//! engine.with_panels(&mut panels)?;                     // few-row layers' weights packed once
//! engine.run(Isa::detect(), &images, &mut arena, &mut logits)?;
//! ```
//!
//! On a microcontroller the model's program, [`Schedule`] and [`Plan`] are evaluated by the
//! compiler into a `static` [`EnginePlan`] (flash), and [`Engine::from_plan`] only finds the
//! weight tensors, so start-up needs neither tens of KB of stack nor the time to lower the
//! model; a weight file linked into the firmware may also skip its CRC pass
//! ([`WeightFile::parse_unchecked_crc`], see its docs for when that is safe):
//!
//! ```ignore
//! use tinykd::{engine::{Engine, EnginePlan, StaticEngine}, plan, weights::{Aligned, WeightFile}, kernels::Isa, ModelConfig};
//! const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
//! static ENGINE_PLAN: EnginePlan = EnginePlan::build(&CFG, 1);
//! static W: &Aligned<[u8]> = &Aligned(*include_bytes!("student.tkd"));
//! static mut ARENA: [u8; plan::arena_bytes(&CFG, 1)] = [0; plan::arena_bytes(&CFG, 1)];
//!
//! let file = WeightFile::parse(&W.0)?;
//! let engine: StaticEngine = Engine::from_plan(&ENGINE_PLAN, &file)?;  // ~0.8 KB, checks every tensor
//! let mut logits = [0.0f32; 10];
//! engine.run(Isa::detect(), &image, arena, &mut logits)?;
//! ```
//!
//! The file must be a [`FileKind::Inference`] file (batch norm folded; see `crate::fold`):
//! each conv has `<conv>_weights` (HWIO, or `[3][3][c]` depthwise) and `<conv>_bias`, the fc
//! `<fc>_weights` `[c_in][classes]` and `<fc>_offset`; f32 or f16 storage (widened in the
//! kernels, f32 accumulation). Steps follow [`Schedule`]: bias and ReLU in each conv's
//! epilogue, residual add + ReLU in place; buffers sit at the offsets of its [`Plan`].

use core::borrow::Borrow;
use core::fmt;
use core::ops::Range;

use tinykd_kernels::act::{self, Act};
#[cfg(feature = "panels")]
use tinykd_kernels::linear::panels::{pack_panels, panels_len, worth_packing};
use tinykd_kernels::{conv, dwconv, f16, linear, pool, DType, Elem, Isa, KernelError};

use crate::arena;
use crate::config::ModelConfig;
use crate::graph::{self, param_name, Name, ParamRole};
use crate::models::{self, ModelError};
use crate::plan::{self, Buf, Plan, Schedule, Step, StepKind, ALIGN, MAX_STEPS};
use crate::weights::{self, FileKind, TensorData, TensorRef, Tensors, WeightFile};

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
    /// An input value is NaN or infinite (a ReLU would silently turn NaN into 0 and the
    /// logits would look valid).
    NonFiniteInput {
        /// Index of the first such value in the input slice.
        index: usize,
        /// Values per image (`h·w·c`), to name the image.
        per_image: usize,
    },
    /// A weight or bias value in the file is NaN or infinite (a ReLU after it would turn NaN
    /// into 0 and the logits would look valid).
    NonFiniteWeight {
        /// The tensor.
        name: Name,
        /// Index of its first such value.
        index: usize,
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
    /// The buffer given to [`Engine::with_panels`] is shorter than [`Engine::panels_bytes`].
    PanelBufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Checks that `input` holds `batch` images of `cfg`'s input shape, every value finite.
pub(crate) fn check_input(cfg: &ModelConfig, batch: usize, input: &[f32]) -> Result<(), EngineError> {
    let per_image = cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize;
    if input.len() != batch * per_image {
        return Err(EngineError::InputLen { expected: batch * per_image, got: input.len() });
    }
    if all_finite(input) {
        return Ok(());
    }
    let index = input.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(EngineError::NonFiniteInput { index, per_image })
}

/// Whether every value of `x` is finite, by a sufficient test: a finite `Σ v` (8 independent
/// sums, so it vectorises on the host and costs a load and an add per value on a Cortex-M4F)
/// means no value is NaN or ±Inf; only a non-finite sum (such a value, or an overflow of huge
/// ones) looks at each value. Also the host executor's input check.
pub(crate) fn all_finite(x: &[f32]) -> bool {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    acc.iter().all(|a| a.is_finite()) || x.iter().all(|v| v.is_finite())
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
            EngineError::NonFiniteInput { index, per_image } => write!(
                f,
                "input value {index} (image {}, value {} of it) is NaN or infinite: the model needs finite inputs",
                index / (*per_image).max(1),
                index % (*per_image).max(1)
            ),
            EngineError::NonFiniteWeight { name, index } => write!(
                f,
                "tensor `{name}` of the weight file has a NaN or infinite value (the first at index {index}): \
                 the file cannot be run; export it again from finite parameters"
            ),
            EngineError::LogitsLen { expected, got } => {
                write!(f, "logits slice has {got} values, the model writes {expected}")
            }
            EngineError::Kernel { layer, err } => write!(f, "layer `{layer}`: {err}"),
            EngineError::OverlappingOperands { layer } => write!(f, "layer `{layer}`: the plan overlaps its operands"),
            EngineError::PanelBufferTooSmall { needed, got } => {
                write!(f, "panel buffer of {got} bytes is too small: the packed weights need {needed} bytes")
            }
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
pub(crate) enum StepWeights<'w> {
    None,
    F32 { w: &'w [f32], b: &'w [f32] },
    F16 { w: &'w [f16], b: &'w [f16] },
}

/// The compile-time part of an [`Engine`]: the model's inference [`Schedule`] and the arena
/// [`Plan`] for one batch size (the weight tensors' names come from the schedule's layers).
///
/// Its constructors are `const fn`s, so a `no_std` firmware keeps it in a `static` (in
/// flash, evaluated by the compiler) and builds a [`StaticEngine`] with
/// [`Engine::from_plan`], which builds nothing large at run time:
///
/// ```
/// use tinykd::engine::EnginePlan;
/// use tinykd::ModelConfig;
/// const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
/// static ENGINE_PLAN: EnginePlan = EnginePlan::build(&CFG, 1);
/// assert_eq!(ENGINE_PLAN.arena_bytes(), tinykd::plan::arena_bytes(&CFG, 1));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct EnginePlan {
    schedule: Schedule,
    plan: Plan,
}

impl EnginePlan {
    /// The schedule and plan of `cfg` at batch `batch` (see [`crate::plan::plan_for`]).
    pub const fn new(cfg: &ModelConfig, batch: usize) -> Result<EnginePlan, ModelError> {
        match plan::plan_for(cfg, batch) {
            Ok((schedule, plan)) => Ok(EnginePlan { schedule, plan }),
            Err(e) => Err(e),
        }
    }

    /// [`EnginePlan::new`] for a `const`/`static` item: panics (a compile error there) if
    /// `cfg` or `batch` is invalid.
    pub const fn build(cfg: &ModelConfig, batch: usize) -> EnginePlan {
        match EnginePlan::new(cfg, batch) {
            Ok(p) => p,
            Err(_) => panic!("invalid model configuration or batch"),
        }
    }

    /// The model configuration.
    pub const fn config(&self) -> ModelConfig {
        self.schedule.config
    }

    /// The batch size.
    pub const fn batch(&self) -> usize {
        self.schedule.batch
    }

    /// The inference steps.
    pub const fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The memory plan of the arena.
    pub const fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of an arena that may start at any address ([`Plan::peak`] + [`ALIGN`]).
    pub const fn arena_bytes(&self) -> usize {
        self.plan.peak + ALIGN
    }
}

/// An engine over a compile-time [`EnginePlan`] in a `static` (see [`Engine::from_plan`]).
pub type StaticEngine<'w> = Engine<'w, &'static EnginePlan>;

/// A model ready to run: its [`EnginePlan`] (owned, `P = EnginePlan`, as [`Engine::new`]
/// builds it; or borrowed, e.g. `&'static EnginePlan`) and the weight file, in which every
/// step's tensors have been found and checked (the engine keeps where their data starts).
#[derive(Clone, Debug)]
pub struct Engine<'w, P: Borrow<EnginePlan> = EnginePlan> {
    setup: P,
    file: WeightFile<'w>,
    /// Per step, the byte offsets in the file of its weights' and bias's data (0 for a step
    /// without weights); their lengths follow from the step's shapes.
    data: [[usize; 2]; MAX_STEPS],
    /// Weights packed into panels by [`Engine::with_panels`] (empty until then), the packed
    /// steps' in schedule order, each at the next multiple of [`ALIGN`] (see
    /// [`Engine::next_panel`]).
    #[cfg(feature = "panels")]
    panels: &'w [u8],
}

impl<'w> Engine<'w> {
    /// Prepares inference of `cfg` for batches of `batch` with the weights of `file`, checking
    /// the file's kind and config, every tensor's presence and dims, and that every weight is
    /// finite (one pass over the weights: a NaN weight would pass a ReLU as 0). Builds the model's
    /// program and schedule at run time (~99 KB of stack on a Cortex-M4); a microcontroller uses
    /// [`Engine::from_plan`] with a compile-time [`EnginePlan`] instead.
    pub fn new(cfg: &ModelConfig, batch: usize, file: &WeightFile<'w>) -> Result<Engine<'w>, EngineError> {
        if file.kind() != FileKind::Inference {
            return Err(EngineError::NotInference);
        }
        models::check(cfg)?;
        if file.config() != *cfg {
            return Err(EngineError::ConfigMismatch { file: file.config(), model: *cfg });
        }
        Engine::from_plan(EnginePlan::new(cfg, batch)?, file)
    }
}

impl<'w, P: Borrow<EnginePlan>> Engine<'w, P> {
    /// Prepares inference with a ready [`EnginePlan`] (its config and batch) and the weights of
    /// `file`, with the checks of [`Engine::new`]. With `setup: &'static EnginePlan` (a
    /// `static` built by [`EnginePlan::build`]) nothing large is built: the engine is the
    /// reference, the file view and a table of data offsets (~0.8 KB on a 32-bit target).
    pub fn from_plan(setup: P, file: &WeightFile<'w>) -> Result<Engine<'w, P>, EngineError> {
        if file.kind() != FileKind::Inference {
            return Err(EngineError::NotInference);
        }
        let ep = setup.borrow();
        if file.config() != ep.config() {
            return Err(EngineError::ConfigMismatch { file: file.config(), model: ep.config() });
        }
        let mut data = [[0usize; 2]; MAX_STEPS];
        let mut cursor = TableCursor::new(file);
        for (slot, step) in data.iter_mut().zip(ep.schedule.steps()) {
            *slot = bind(&mut cursor, step)?;
        }
        Ok(Engine {
            setup,
            file: *file,
            data,
            #[cfg(feature = "panels")]
            panels: &[],
        })
    }

    /// The schedule and plan.
    pub fn engine_plan(&self) -> &EnginePlan {
        self.setup.borrow()
    }

    /// The inference steps.
    pub fn schedule(&self) -> &Schedule {
        &self.setup.borrow().schedule
    }

    /// The memory plan of the arena.
    pub fn plan(&self) -> &Plan {
        &self.setup.borrow().plan
    }

    /// Bytes of an arena that may start at any address ([`Plan::peak`] + [`ALIGN`]); the same
    /// as [`crate::plan::arena_bytes`].
    pub fn arena_bytes(&self) -> usize {
        self.setup.borrow().arena_bytes()
    }

    /// Bytes of the buffer [`Engine::with_panels`] needs (its packed weights plus [`ALIGN`]
    /// for any start address); 0 when no step is worth packing.
    #[cfg(feature = "panels")]
    pub fn panels_bytes(&self) -> usize {
        let mut end = 0;
        for step in self.schedule().steps() {
            self.next_panel(step, &mut end);
        }
        if end == 0 {
            0
        } else {
            end + ALIGN
        }
    }

    /// Packs the weights of the conv and fc steps for which
    /// [`worth_packing`] holds — at batch 1
    /// every layer but the stem, and above all the late ones, whose cost is streaming their
    /// weights — into 16-column panels in `buf` (see [`tinykd_kernels::linear::panels`]) and runs those steps from
    /// there from now on: one sequential stream per layer, the outputs held in registers.
    /// Same results up to rounding order. This is a host-side speed-up (it copies those
    /// weights, [`Engine::panels_bytes`] bytes); the Cortex-M4F kernels do not use it.
    ///
    /// Errors: [`EngineError::PanelBufferTooSmall`] if `buf` is shorter than
    /// [`Engine::panels_bytes`]; the engine is unchanged then (it packs nothing before
    /// checking).
    #[cfg(feature = "panels")]
    pub fn with_panels(&mut self, buf: &'w mut [u8]) -> Result<(), EngineError> {
        let needed = self.panels_bytes();
        if needed == 0 {
            return Ok(());
        }
        if buf.len() < needed {
            return Err(EngineError::PanelBufferTooSmall { needed, got: buf.len() });
        }
        let skip = buf.as_ptr().align_offset(ALIGN);
        let region = &mut buf[skip..skip + needed - ALIGN];
        let mut end = 0;
        for (step, &at) in self.schedule().steps().iter().zip(&self.data) {
            let Some((off, (taps, k, n))) = self.next_panel(step, &mut end) else { continue };
            let dst = &mut region[off..end];
            let packed = match self.weights(step, at) {
                Some(StepWeights::F32 { w, .. }) => elems_mut::<f32>(dst).map(|d| pack_panels(taps, k, n, w, d)),
                Some(StepWeights::F16 { w, .. }) => elems_mut::<f16>(dst).map(|d| pack_panels(taps, k, n, w, d)),
                Some(StepWeights::None) | None => None,
            };
            match packed {
                Some(Ok(())) => {}
                Some(Err(err)) => return Err(EngineError::Kernel { layer: step.layer, err }),
                None => return Err(EngineError::MissingTensor { name: step.layer }),
            }
        }
        let buf: &'w [u8] = buf;
        self.panels = &buf[skip..skip + needed - ALIGN];
        Ok(())
    }

    /// If `step`'s weights are packed: advances `end` (the end of the packed steps before it,
    /// in bytes) past them and returns their byte offset and `(taps, c_in, c_out)`.
    #[cfg(feature = "panels")]
    fn next_panel(&self, step: &Step, end: &mut usize) -> Option<(usize, (usize, usize, usize))> {
        let dims @ (taps, k, n) = self.panel_dims(step)?;
        let off = end.next_multiple_of(ALIGN);
        *end = off + panels_len(taps, k, n) * self.file.dtype().size();
        Some((off, dims))
    }

    /// `(taps, c_in, c_out)` of `step`'s weights if the engine packs them into panels.
    #[cfg(feature = "panels")]
    fn panel_dims(&self, step: &Step) -> Option<(usize, usize, usize)> {
        let rows = self.out_rows(step);
        let (k, c_in, c_out) = (step.k as usize, step.x_shape.c as usize, step.y_shape.c as usize);
        let taps = match step.kind {
            StepKind::Conv { .. } => k * k,
            StepKind::Fc => 1,
            _ => return None,
        };
        worth_packing(rows, taps, c_in).then_some((taps, c_in, c_out))
    }

    /// Output rows of `step`'s product: batch × output pixels.
    #[cfg(feature = "panels")]
    fn out_rows(&self, step: &Step) -> usize {
        self.setup.borrow().schedule.batch * step.y_shape.h as usize * step.y_shape.w as usize
    }

    /// The packed weights at byte offset `off` of the panels, `(taps, c_in, c_out)`.
    #[cfg(feature = "panels")]
    fn panel_weights(&self, off: usize, (taps, k, n): (usize, usize, usize)) -> Option<PanelWeights<'w>> {
        let len = panels_len(taps, k, n);
        Some(match self.file.dtype() {
            DType::F32 => PanelWeights::F32(elems(self.panels, off, len)?),
            DType::F16 => PanelWeights::F16(elems(self.panels, off, len)?),
        })
    }

    /// Runs the forward pass: `input` is the NHWC batch (`batch·h·w·c` normalised values),
    /// `arena` working memory of at least [`Plan::peak`] bytes after its start is aligned to
    /// [`ALIGN`] ([`Self::arena_bytes`] always suffices), `logits` receives `batch·classes`
    /// values.
    pub fn run(&self, isa: Isa, input: &[f32], arena: &mut [u8], logits: &mut [f32]) -> Result<(), EngineError> {
        self.run_observed(isa, input, arena, logits, |_| ())
    }

    /// [`Self::run`], calling `after(i)` once step `i` of [`Self::schedule`] has run (per-layer
    /// timing: `tinykd bench infer --layers`).
    pub fn run_observed(
        &self,
        isa: Isa,
        input: &[f32],
        arena: &mut [u8],
        logits: &mut [f32],
        mut after: impl FnMut(usize),
    ) -> Result<(), EngineError> {
        let ep = self.setup.borrow();
        let cfg = &ep.schedule.config;
        let n = ep.schedule.batch;
        check_input(cfg, n, input)?;
        let want_out = n * cfg.classes as usize;
        if logits.len() != want_out {
            return Err(EngineError::LogitsLen { expected: want_out, got: logits.len() });
        }
        let skip = arena.as_ptr().align_offset(ALIGN);
        let needed = skip.saturating_add(ep.plan.peak);
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
        #[cfg(feature = "panels")]
        let mut end = 0;
        for (i, (step, &at)) in ep.schedule.steps().iter().zip(&self.data).enumerate() {
            let w = self.weights(step, at).ok_or(EngineError::MissingTensor { name: step.layer })?;
            #[cfg(feature = "panels")]
            let panels = if self.panels.is_empty() {
                None
            } else {
                self.next_panel(step, &mut end).and_then(|(off, dims)| self.panel_weights(off, dims))
            };
            #[cfg(not(feature = "panels"))]
            let panels = None;
            self.run_step(isa, step, w, panels, input, floats, logits)?;
            after(i);
        }
        Ok(())
    }

    /// The weights of `step`, whose data starts at byte offsets `at` in the file (`None` only
    /// if they were not where [`Engine::from_plan`] found them, which cannot happen).
    fn weights(&self, step: &Step, [w_at, b_at]: [usize; 2]) -> Option<StepWeights<'w>> {
        let Some((wdims, _)) = weight_dims(step) else { return Some(StepWeights::None) };
        let (wn, bn) = (wdims.numel(), step.y_shape.c as usize);
        let bytes = self.file.bytes();
        Some(match self.file.dtype() {
            DType::F32 => StepWeights::F32 { w: elems(bytes, w_at, wn)?, b: elems(bytes, b_at, bn)? },
            DType::F16 => StepWeights::F16 { w: elems(bytes, w_at, wn)?, b: elems(bytes, b_at, bn)? },
        })
    }

    /// The f32 range of arena buffer `b` (empty for a non-arena operand).
    fn region(&self, b: Buf) -> Range<usize> {
        let ep = self.setup.borrow();
        match b {
            Buf::Arena(i) => {
                let start = ep.plan.offsets()[i as usize] / 4;
                start..start + ep.schedule.buffers()[i as usize].bytes / 4
            }
            Buf::None | Buf::Input | Buf::Output => 0..0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &self,
        isa: Isa,
        step: &Step,
        w: StepWeights<'_>,
        panels: Option<PanelWeights<'_>>,
        input: &[f32],
        arena: &mut [f32],
        logits: &mut [f32],
    ) -> Result<(), EngineError> {
        let n = self.setup.borrow().schedule.batch;
        let read = step_input(step);
        let [ro, rw, scratch] =
            arena::split(arena, [self.region(read), self.region(step.y), self.region(step.scratch)])
                .ok_or(EngineError::OverlappingOperands { layer: step.layer })?;
        let x: &[f32] = if read == Buf::Input { input } else { ro };
        let y: &mut [f32] = if step.y == Buf::Output { logits } else { rw };
        match panels {
            #[cfg(feature = "panels")]
            Some(wp) => panel_step(isa, step, n, wp, w, x, y, scratch),
            _ => forward_step(isa, step, n, w, x, y, scratch),
        }
        .map_err(|err| EngineError::Kernel { layer: step.layer, err })
    }
}

/// A step's weights packed into panels (its bias stays in the file). Without the `panels`
/// feature it has no values (`Engine::run` always passes `None`).
#[derive(Clone, Copy, Debug)]
enum PanelWeights<'w> {
    #[cfg(feature = "panels")]
    F32(&'w [f32]),
    #[cfg(feature = "panels")]
    F16(&'w [f16]),
    #[cfg(not(feature = "panels"))]
    #[allow(dead_code)]
    Never(core::marker::PhantomData<&'w ()>, core::convert::Infallible),
}

/// Runs a conv or fc step from its packed weights `wp` (bias from `w`).
#[cfg(feature = "panels")]
#[allow(clippy::too_many_arguments)]
fn panel_step(
    isa: Isa,
    step: &Step,
    n: usize,
    wp: PanelWeights<'_>,
    w: StepWeights<'_>,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let act = match step.kind {
        StepKind::Conv { relu: true } => Act::Relu,
        _ => Act::None,
    };
    match (step.kind, wp, w) {
        (StepKind::Conv { .. }, PanelWeights::F32(wp), StepWeights::F32 { b, .. }) => {
            conv::conv2d_fwd_panels(isa, &step.conv2d(n), x, wp, Some(b), act, y, scratch)
        }
        (StepKind::Conv { .. }, PanelWeights::F16(wp), StepWeights::F16 { b, .. }) => {
            conv::conv2d_fwd_panels(isa, &step.conv2d(n), x, wp, Some(b), act, y, scratch)
        }
        (StepKind::Fc, PanelWeights::F32(wp), StepWeights::F32 { b, .. }) => {
            linear::linear_fwd_panels(isa, &step.linear(n), x, wp, Some(b), act, y)
        }
        (StepKind::Fc, PanelWeights::F16(wp), StepWeights::F16 { b, .. }) => {
            linear::linear_fwd_panels(isa, &step.linear(n), x, wp, Some(b), act, y)
        }
        // `with_panels` packs only conv and fc steps, in the file's dtype.
        _ => Err(KernelError::Shape("packed weights for a step without them")),
    }
}

/// The buffer a step reads (`x`; for the in-place residual add, the other operand `x2`).
pub(crate) fn step_input(step: &Step) -> Buf {
    if step.kind == StepKind::AddRelu {
        step.x2
    } else {
        step.x
    }
}

/// Runs one inference step of a batch of `n` with its weights `w`: reads `x`
/// ([`step_input`]), writes `y` (in place for the residual add + ReLU), uses `scratch`.
/// The one kernel dispatch of the schedule's steps (the engine and the fine-tuner's frozen
/// prefix both run it).
pub(crate) fn forward_step(
    isa: Isa,
    step: &Step,
    n: usize,
    w: StepWeights<'_>,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
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
        // Binding gives every conv and fc step its weights.
        (StepKind::Conv { .. } | StepKind::DwConv { .. } | StepKind::Fc, StepWeights::None) => {
            Err(KernelError::Shape("layer without weights"))
        }
    }
}

/// Finds and checks the weights and bias of `step` in `file` as [`bind`] does (dims, dtypes,
/// finite values), searching the table from its start; [`StepWeights::None`] for a step
/// without weights.
pub(crate) fn step_weights<'w>(file: &WeightFile<'w>, step: &Step) -> Result<StepWeights<'w>, EngineError> {
    let Some((wdims, bias_role)) = weight_dims(step) else { return Ok(StepWeights::None) };
    let mut cursor = TableCursor::new(file);
    let w = tensor(&mut cursor, param_name(step.layer, ParamRole::Weights), wdims)?;
    let b = tensor(&mut cursor, param_name(step.layer, bias_role), graph::Dims::new(&[step.y_shape.c as usize]))?;
    let weights = pair(w, b, step.layer)?;
    check_finite(w, b, step.layer, bias_role)?;
    Ok(weights)
}

/// The fc into the logits.
fn fc<W: Elem>(isa: Isa, step: &Step, n: usize, x: &[f32], w: &[W], b: &[W], y: &mut [f32]) -> Result<(), KernelError> {
    linear::linear_fwd(isa, &step.linear(n), x, w, Some(b), Act::None, y)
}

/// The dims of `step`'s weights and the role of its bias (`None` for a step without weights).
const fn weight_dims(step: &Step) -> Option<(graph::Dims, ParamRole)> {
    let (c_in, c_out, k) = (step.x_shape.c as usize, step.y_shape.c as usize, step.k as usize);
    match step.kind {
        StepKind::Conv { .. } => Some((graph::Dims::new(&[k, k, c_in, c_out]), ParamRole::Bias)),
        StepKind::DwConv { .. } => Some((graph::Dims::new(&[3, 3, c_out]), ParamRole::Bias)),
        StepKind::Fc => Some((graph::Dims::new(&[c_in, c_out]), ParamRole::Offset)),
        StepKind::MaxPool | StepKind::AddRelu | StepKind::GlobalAvgPool => None,
    }
}

/// The bytes of `region` as `T` (`None` if misaligned or not a whole number of `T`).
#[cfg(feature = "panels")]
fn elems_mut<T: Plain>(region: &mut [u8]) -> Option<&mut [T]> {
    // SAFETY: `T` is `f32` or `f16` (`Plain`), for which every bit pattern is a valid value
    // (and any value a valid byte sequence); `align_to_mut` only reinterprets the correctly
    // aligned middle part, and the edges are checked to be empty.
    let (pre, mid, post) = unsafe { region.align_to_mut::<T>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// Element types whose every bit pattern is a valid value (f32 and f16 weights).
trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for f16 {}

/// The `n` elements of `T` stored at byte offset `at` of `bytes`; `None` if they run past the
/// end or are misaligned.
fn elems<T: Plain>(bytes: &[u8], at: usize, n: usize) -> Option<&[T]> {
    let region = bytes.get(at..at.checked_add(n.checked_mul(core::mem::size_of::<T>())?)?)?;
    // SAFETY: `T` is `f32` or `f16` (`Plain`), for which every bit pattern is a valid value,
    // and `align_to` only reinterprets the correctly aligned middle part (the edges are
    // checked to be empty below). The weight file is little-endian and `WeightFile::parse`
    // refuses big-endian targets, so the bytes are in native order.
    let (pre, mid, post) = unsafe { region.align_to::<T>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// A layer's weights and bias, which must have the same dtype.
fn pair<'w>(w: TensorData<'w>, b: TensorData<'w>, layer: Name) -> Result<StepWeights<'w>, EngineError> {
    match (w, b) {
        (TensorData::F32(w), TensorData::F32(b)) => Ok(StepWeights::F32 { w, b }),
        (TensorData::F16(w), TensorData::F16(b)) => Ok(StepWeights::F16 { w, b }),
        _ => Err(EngineError::MixedDTypes { layer }),
    }
}

/// Finds and checks the weights and bias of `step` in the file; returns the byte offsets of
/// their data in the file (`[0, 0]` for a step without weights).
fn bind(cursor: &mut TableCursor<'_, '_>, step: &Step) -> Result<[usize; 2], EngineError> {
    let Some((wdims, bias_role)) = weight_dims(step) else { return Ok([0, 0]) };
    let w = tensor(cursor, param_name(step.layer, ParamRole::Weights), wdims)?;
    let b = tensor(cursor, param_name(step.layer, bias_role), graph::Dims::new(&[step.y_shape.c as usize]))?;
    pair(w, b, step.layer)?;
    check_finite(w, b, step.layer, bias_role)?;
    let start = cursor.file.bytes().as_ptr() as usize;
    let at = |t: TensorData<'_>| match t {
        TensorData::F32(v) => (v.as_ptr() as usize).wrapping_sub(start),
        TensorData::F16(v) => (v.as_ptr() as usize).wrapping_sub(start),
    };
    Ok([at(w), at(b)])
}

/// [`EngineError::NonFiniteWeight`] naming the first of `layer`'s weights `w` and bias `b`
/// (of role `bias_role`) with a NaN or infinite value: a NaN weight before a ReLU would come
/// out as 0 and the logits would look valid. Not inlined: its two callers (the engine's and the
/// fine-tuner's binding) share one copy in a firmware.
#[inline(never)]
fn check_finite(w: TensorData<'_>, b: TensorData<'_>, layer: Name, bias_role: ParamRole) -> Result<(), EngineError> {
    for (t, role) in [(w, ParamRole::Weights), (b, bias_role)] {
        if let Some(index) = first_non_finite(t) {
            return Err(EngineError::NonFiniteWeight { name: param_name(layer, role), index });
        }
    }
    Ok(())
}

/// The index of the first NaN or infinite value of `t`, if any: f32 by [`all_finite`]'s
/// sufficient sum first, f16 by [`f16_all_finite`]; only a tensor that fails is searched.
fn first_non_finite(t: TensorData<'_>) -> Option<usize> {
    match t {
        TensorData::F32(v) if all_finite(v) => None,
        TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
        TensorData::F16(v) if f16_all_finite(v) => None,
        TensorData::F16(v) => v.iter().position(|h| h.to_bits() & 0x7C00 == 0x7C00),
    }
}

/// Whether no value of `v` is NaN or ±Inf, i.e. has all exponent bits set: `(bits & 0x7C00) +
/// 0x0400` carries into bit 15 exactly then. Two values per 32-bit word, OR-ed over the
/// slice and tested once: a load and three ALU operations per two weights on a Cortex-M4
/// (a firmware binds its engine at start-up; testing each value took ~7.5 instructions).
fn f16_all_finite(v: &[f16]) -> bool {
    let mut acc = 0u32;
    let mut pairs = v.chunks_exact(2);
    for p in &mut pairs {
        let w = u32::from(p[0].to_bits()) | u32::from(p[1].to_bits()) << 16;
        acc |= (w & 0x7C00_7C00) + 0x0400_0400;
    }
    for h in pairs.remainder() {
        acc |= (u32::from(h.to_bits()) & 0x7C00) + 0x0400;
    }
    acc & 0x8000_8000 == 0
}

/// The data of tensor `name`, which must have dims `dims`.
fn tensor<'w>(cursor: &mut TableCursor<'_, 'w>, name: Name, dims: graph::Dims) -> Result<TensorData<'w>, EngineError> {
    let t = cursor.find(name.as_str()).ok_or(EngineError::MissingTensor { name })?;
    if !dims.eq_u32(t.dims.as_slice()) || t.data.len() != dims.numel() {
        return Err(EngineError::TensorDims { name, expected: dims, got: t.dims });
    }
    Ok(t.data)
}

/// A position in a weight file's tensor table that moves forward: looking up tensors in
/// (roughly) file order reads each table entry about once, where [`WeightFile::get`] starts
/// from the first entry every time. The engine's steps and the exporter's tensors follow the
/// program's layer order, so binding an engine decodes each entry once.
struct TableCursor<'f, 'w> {
    file: &'f WeightFile<'w>,
    iter: Tensors<'w>,
    /// Index of the entry `iter` yields next.
    next: usize,
}

impl<'f, 'w> TableCursor<'f, 'w> {
    fn new(file: &'f WeightFile<'w>) -> Self {
        TableCursor { file, iter: file.iter(), next: 0 }
    }

    /// Back to the first entry.
    fn rewind(&mut self) {
        self.iter = self.file.iter();
        self.next = 0;
    }

    /// The next entry.
    fn advance(&mut self) -> Option<TensorRef<'w>> {
        let t = self.iter.next()?;
        self.next += 1;
        Some(t)
    }

    /// The entry called `name`: searched from here to the end, then from the first entry up
    /// to here.
    fn find(&mut self, name: &str) -> Option<TensorRef<'w>> {
        let start = self.next;
        while let Some(t) = self.advance() {
            if t.name == name {
                return Some(t);
            }
        }
        self.rewind();
        while self.next < start {
            let t = self.advance()?;
            if t.name == name {
                return Some(t);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-wise f16 test against the value-wise one: every exponent pattern (the finite
    /// largest 0x7BFF, ±Inf, NaNs), at every position of even and odd lengths (the tail).
    #[test]
    fn f16_finiteness_by_words_matches_by_values() {
        for bad in [0x7C00u16, 0xFC00, 0x7C01, 0xFE00, 0x7FFF] {
            for len in 1..=7 {
                for at in 0..len {
                    let mut v = [f16::from_bits(0x7BFF); 7];
                    v[1] = f16::from_bits(0xFBFF);
                    v[at] = f16::from_bits(bad);
                    assert!(!f16_all_finite(&v[..len]), "{bad:#x} at {at} of {len}");
                    assert_eq!(first_non_finite(TensorData::F16(&v[..len])), Some(at));
                }
                assert!(f16_all_finite(&[f16::from_bits(0x7BFF); 7][..len]));
                assert!(f16_all_finite(&[f16::from_bits(0x83FF); 7][..len]));
            }
        }
        assert!(f16_all_finite(&[]));
    }
}
