//! On-device fine-tuning (`no_std`, no allocation): trains a chosen tail of a deployed student
//! from labelled samples with the same backward kernels and Momentum SGD as the host trainer.
//!
//! The student is an inference weight file (BN folded, f32 or f16, e.g. in flash). The
//! **frozen prefix** runs from that file with the inference engine's schedule and kernels; the
//! **tail** — chosen by [`Tail`] — is trained:
//!
//! | [`Tail`] | trained (f32, in the caller's state) | frozen |
//! |---|---|---|
//! | [`Tail::Fc`] | fc weights + offset | everything before the fc |
//! | [`Tail::FcAffine`] | fc + a per-channel affine `relu(γ'·z + β')` on the folded output `z` of the last pointwise conv (`conv6_sep`; `γ' = 1, β' = 0` at start, i.e. that block's BN scale/bias) | the rest |
//! | [`Tail::FcSep`] | fc + the last pointwise conv's folded weights and bias | the rest |
//!
//! Memory: trainable parameters and their momentum live in a caller-provided `&mut [f32]` of
//! [`state_len`] values (`[params..., momentum...]`); every activation the backward pass needs,
//! the gradients and the scratch live in one arena of [`finetune_arena_bytes`] bytes, planned
//! at compile time ([`Layout`]); the prefix's activations share it and are dead by the time the
//! tail runs. Both sizes are `const fn`, so both buffers can be statics:
//!
//! ```
//! use tinykd::finetune::{finetune_arena_bytes, state_len, Tail};
//! use tinykd::ModelConfig;
//! const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
//! static mut ARENA: [u8; finetune_arena_bytes(&CFG, Tail::FcAffine, 8)] = [0; finetune_arena_bytes(&CFG, Tail::FcAffine, 8)];
//! static mut STATE: [f32; state_len(&CFG, Tail::FcAffine)] = [0.0; state_len(&CFG, Tail::FcAffine)];
//! ```
//!
//! One [`FineTuner::step`]: prefix forward, tail forward, softmax cross-entropy (mean over the
//! batch), tail backward (`linear_bwd_weight`/`linear_bwd_input`, `global_avg_bwd`,
//! `relu_bwd_inplace`), then `sgd_momentum` over all trainable parameters at once. Everything
//! is deterministic; with the same ISA path (e.g. [`Isa::scalar`], what a Cortex-M4F runs) the
//! host and the device compute the same numbers.

mod layout;
mod run;

use core::fmt;

pub use layout::{Layout, TailBufs, TailDims};
pub use run::FineTuner;

use crate::config::ModelConfig;
use crate::engine::EngineError;
use crate::models::ModelError;

#[cfg(doc)]
use tinykd_kernels::Isa;

/// Which tail of the student is trained (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tail {
    /// The classifier only.
    Fc,
    /// The classifier and a per-channel scale/bias on the last pointwise conv's output.
    FcAffine,
    /// The classifier and the last pointwise conv.
    FcSep,
}

impl Tail {
    /// All tails, smallest first.
    pub const ALL: [Tail; 3] = [Tail::Fc, Tail::FcAffine, Tail::FcSep];

    /// `fc`, `fc+affine` or `fc+sep`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tail::Fc => "fc",
            Tail::FcAffine => "fc+affine",
            Tail::FcSep => "fc+sep",
        }
    }
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why fine-tuning refused to be set up or to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FinetuneError {
    /// The configuration (or batch) is invalid.
    Model(ModelError),
    /// The tail does not fit the model (see [`Layout::new`]).
    TailUnsupported {
        /// The requested tail.
        tail: Tail,
    },
    /// A weight-file, arena, input, logits or kernel error, as the inference engine reports it.
    Engine(EngineError),
    /// The state slice is not [`state_len`] values.
    StateLen {
        /// Values needed.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The labels slice is not `batch` values, or a label is not below the class count.
    Labels {
        /// The batch.
        batch: usize,
        /// The class count.
        classes: usize,
    },
    /// The step's loss, a gradient, or an updated parameter or momentum would not be finite;
    /// the state was left unchanged.
    NonFinite {
        /// The batch's loss before the refused update (may itself be NaN or infinite).
        loss: f32,
    },
}

impl fmt::Display for FinetuneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinetuneError::Model(e) => write!(f, "{e}"),
            FinetuneError::TailUnsupported { tail } => write!(
                f,
                "tail `{tail}` does not fit the model: it needs global average pool + fc at the end, \
                 and `fc+affine`/`fc+sep` a pointwise conv with ReLU before the pool (MobileNetV1)"
            ),
            FinetuneError::Engine(e) => write!(f, "{e}"),
            FinetuneError::StateLen { expected, got } => {
                write!(f, "state slice has {got} values, the tail needs {expected} (parameters + momentum)")
            }
            FinetuneError::Labels { batch, classes } => {
                write!(f, "labels must be {batch} values, each below {classes}")
            }
            FinetuneError::NonFinite { loss } => write!(
                f,
                "step refused, the state is unchanged: the loss ({loss}), a gradient or the update would not be \
                 finite (lower the learning rate, or check the inputs for NaN or huge values)"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FinetuneError {}

impl From<EngineError> for FinetuneError {
    fn from(e: EngineError) -> Self {
        FinetuneError::Engine(e)
    }
}

impl From<ModelError> for FinetuneError {
    fn from(e: ModelError) -> Self {
        FinetuneError::Model(e)
    }
}

/// The layout of `cfg`, `tail`, `batch`, panicking (a compile error in a `const`) if invalid.
const fn layout_or_panic(cfg: &ModelConfig, tail: Tail, batch: usize) -> Layout {
    match Layout::new(cfg, tail, batch) {
        Ok(l) => l,
        Err(_) => panic!("invalid model configuration, batch or tail"),
    }
}

/// Bytes of a `[u8]` fine-tuning arena (at any alignment) for `tail` of `cfg` at batch
/// `batch`: the plan's peak + [`ALIGN`](crate::plan::ALIGN). Panics (a compile error in a
/// `const`) if invalid; see [`Layout::new`] for the fallible form.
pub const fn finetune_arena_bytes(cfg: &ModelConfig, tail: Tail, batch: usize) -> usize {
    layout_or_panic(cfg, tail, batch).arena_bytes()
}

/// Number of trainable parameters of `tail` of `cfg`. Panics (a compile error in a `const`) if
/// invalid.
pub const fn trainable_len(cfg: &ModelConfig, tail: Tail) -> usize {
    layout_or_panic(cfg, tail, 1).trainable()
}

/// Length of the state slice (`[params..., momentum...]`, f32): `2 ·` [`trainable_len`].
pub const fn state_len(cfg: &ModelConfig, tail: Tail) -> usize {
    2 * trainable_len(cfg, tail)
}
