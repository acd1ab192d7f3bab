//! Model-selection options shared by every command that names a model (`list-vars`,
//! `summary`, and the training commands), converted to a checked [`ModelConfig`].

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;

use super::UsageError;
use crate::config::{Arch, ModelConfig, Stem};
use crate::models;

/// `--model`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// MobileNetV1 (the student); width set by `--scale`.
    #[value(name = "mobilenet_v1")]
    MobileNetV1,
    /// ResNet50 (the teacher).
    #[value(name = "resnet50")]
    ResNet50,
}

/// `--stem`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StemArg {
    /// The tutorial's: MobileNetV1 conv1 stride 2; ResNet50 7x7 s2 conv + max pool.
    Imagenet,
    /// CIFAR-style: MobileNetV1 conv1 stride 1; ResNet50 3x3 s1 conv, no max pool.
    Cifar,
}

/// `--input HxW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputSize {
    /// Height in pixels.
    pub h: u16,
    /// Width in pixels.
    pub w: u16,
}

impl FromStr for InputSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an input size: expected HxW with H, W in 1..=65535, e.g. 32x32");
        let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let h: u16 = h.trim().parse().map_err(|_| bad())?;
        let w: u16 = w.trim().parse().map_err(|_| bad())?;
        if h == 0 || w == 0 {
            return Err(bad());
        }
        Ok(InputSize { h, w })
    }
}

impl fmt::Display for InputSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.h, self.w)
    }
}

/// The supported MobileNetV1 width multipliers, as written and in thousandths.
const SCALES: [(&str, u16); 4] = [("0.25", 250), ("0.5", 500), ("0.75", 750), ("1.0", 1000)];

/// Parses `--scale` (0.25, 0.5, 0.75 or 1.0) to thousandths.
fn parse_scale(s: &str) -> Result<u16, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number; use one of 0.25, 0.5, 0.75, 1.0"))?;
    SCALES
        .iter()
        .find(|(_, p)| (v * 1000.0 - *p as f64).abs() < 1e-6)
        .map(|&(_, p)| p)
        .ok_or_else(|| format!("width scale {s} is not supported; use one of 0.25, 0.5, 0.75, 1.0"))
}

/// Which model: architecture, width, classes, stem and input size.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Architecture.
    #[arg(long, value_enum)]
    pub model: ModelKind,
    /// MobileNetV1 width multiplier: 0.25, 0.5, 0.75 or 1.0 (default 1.0; ResNet50 takes only 1.0).
    #[arg(long, value_parser = parse_scale, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<u16>,
    /// Number of classes of the final fc.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..), value_name = "C")]
    pub classes: u16,
    /// Stem variant.
    #[arg(long, value_enum, default_value_t = StemArg::Imagenet)]
    pub stem: StemArg,
    /// Input height x width (3 channels): multiples of 32 with the imagenet stem, of 16 with
    /// the cifar stem (the network halves them five or four times).
    #[arg(long, default_value = "32x32", value_name = "HxW")]
    pub input: InputSize,
}

impl ModelArgs {
    /// The model configuration these options describe, checked by [`models::check`];
    /// inconsistent options give a [`UsageError`].
    pub fn to_config(&self) -> Result<ModelConfig, UsageError> {
        let base = match self.model {
            ModelKind::MobileNetV1 => ModelConfig::mobilenet_v1(self.scale.unwrap_or(1000)),
            ModelKind::ResNet50 => {
                if let Some(s) = self.scale.filter(|&s| s != 1000) {
                    return Err(UsageError(format!(
                        "--scale {} does not apply to resnet50, which has a fixed width; --scale is for mobilenet_v1",
                        s as f64 / 1000.0
                    )));
                }
                ModelConfig::resnet50()
            }
        };
        let stem = match self.stem {
            StemArg::Imagenet => Stem::ImageNet,
            StemArg::Cifar => Stem::Cifar,
        };
        let cfg = base.with_classes(self.classes).with_stem(stem).with_input(self.input.h, self.input.w);
        models::check(&cfg).map_err(|e| UsageError(format!("invalid model options: {e}")))?;
        Ok(cfg)
    }
}

/// A one-line description of `cfg`, e.g. `mobilenet_v1 x0.25, 10 classes, imagenet stem, input 32x32x3`.
pub fn describe(cfg: &ModelConfig) -> String {
    let arch = match cfg.arch {
        Arch::MobileNetV1 => format!("mobilenet_v1 x{}", cfg.scale_permille as f64 / 1000.0),
        Arch::ResNet50 => "resnet50".to_string(),
    };
    let stem = match cfg.stem {
        Stem::ImageNet => "imagenet",
        Stem::Cifar => "cifar",
    };
    format!("{arch}, {} classes, {stem} stem, input {}x{}x{}", cfg.classes, cfg.in_h, cfg.in_w, cfg.in_c)
}
