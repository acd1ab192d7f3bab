//! The two models as named static programs: [`program`] builds the [`Program`] of a
//! [`ModelConfig`] in a `const fn`. With `std`: [`list_vars`] (every activation, parameter and
//! statistic with its shape) and [`summary`] (counts, MACs, arena size).

pub mod mobilenet_v1;
pub mod resnet50;

use core::fmt;

use crate::config::{Arch, ModelConfig};
use crate::graph::Program;

/// Why a configuration (or a request about it) is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// The width multiplier is not supported: MobileNetV1 needs 32..=4000 permille (every
    /// channel count at least 1), ResNet50 exactly 1000.
    Scale {
        /// The architecture.
        arch: Arch,
        /// The requested multiplier in thousandths.
        scale_permille: u16,
    },
    /// `classes` is 0.
    Classes,
    /// `in_c` is 0.
    InputChannels,
    /// The input height or width is 0 or not a multiple of the network's total stride.
    InputSize {
        /// Requested height.
        h: u16,
        /// Requested width.
        w: u16,
        /// The total stride both must be positive multiples of.
        multiple: u16,
    },
    /// A batch size of 0.
    Batch,
    /// A batch so large that a tensor would exceed [`crate::plan::MAX_BUFFER_BYTES`].
    BatchTooLarge {
        /// The batch size.
        batch: usize,
    },
    /// A fixed-capacity table is too small (a bug in this crate, not in the config).
    Capacity {
        /// Which table.
        what: &'static str,
        /// Its capacity.
        cap: usize,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ModelError::Scale { arch: Arch::MobileNetV1, scale_permille } => write!(
                f,
                "MobileNetV1 width scale {scale_permille}/1000 is not supported (use 32..=4000 thousandths, e.g. 250, 500, 750, 1000)"
            ),
            ModelError::Scale { arch: Arch::ResNet50, scale_permille } => {
                write!(f, "ResNet50 has no width scale: scale_permille must be 1000, got {scale_permille}")
            }
            ModelError::Classes => f.write_str("the number of classes must be at least 1"),
            ModelError::InputChannels => f.write_str("the number of input channels must be at least 1"),
            ModelError::InputSize { h, w, multiple } => write!(
                f,
                "input size {h}x{w} does not divide through the network: height and width must be positive multiples of {multiple}"
            ),
            ModelError::Batch => f.write_str("the batch size must be at least 1"),
            ModelError::BatchTooLarge { batch } => {
                write!(f, "batch {batch} is too large: a tensor of the model would not fit in memory")
            }
            ModelError::Capacity { what, cap } => write!(f, "internal capacity of {what} ({cap}) exceeded"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ModelError {}

/// The product of all strides of `cfg`'s network: input height and width must be multiples.
pub const fn total_stride(cfg: &ModelConfig) -> usize {
    match cfg.arch {
        Arch::MobileNetV1 => mobilenet_v1::total_stride(cfg.stem),
        Arch::ResNet50 => resnet50::total_stride(cfg.stem),
    }
}

/// Checks that `cfg` describes a buildable network.
pub const fn check(cfg: &ModelConfig) -> Result<(), ModelError> {
    let scale_ok = match cfg.arch {
        Arch::MobileNetV1 => cfg.scale_permille >= 32 && cfg.scale_permille <= 4000,
        Arch::ResNet50 => cfg.scale_permille == 1000,
    };
    if !scale_ok {
        return Err(ModelError::Scale { arch: cfg.arch, scale_permille: cfg.scale_permille });
    }
    if cfg.classes == 0 {
        return Err(ModelError::Classes);
    }
    if cfg.in_c == 0 {
        return Err(ModelError::InputChannels);
    }
    let m = total_stride(cfg);
    let (h, w) = (cfg.in_h as usize, cfg.in_w as usize);
    if h == 0 || w == 0 || h % m != 0 || w % m != 0 {
        return Err(ModelError::InputSize { h: cfg.in_h, w: cfg.in_w, multiple: m as u16 });
    }
    Ok(())
}

/// The program of `cfg`: MobileNetV1 or ResNet50 with PaddleSlim's layer names (see
/// [`mobilenet_v1`], [`resnet50`], and [`crate::graph`] for the naming scheme).
pub const fn program(cfg: &ModelConfig) -> Result<Program, ModelError> {
    if let Err(e) = check(cfg) {
        return Err(e);
    }
    Ok(match cfg.arch {
        Arch::MobileNetV1 => mobilenet_v1::build(cfg),
        Arch::ResNet50 => resnet50::build(cfg),
    })
}

#[cfg(feature = "std")]
mod vars;

pub use crate::graph::VarKind;
#[cfg(feature = "std")]
pub use vars::{find_var, list_vars, summary, Summary, VarInfo};
