//! `tinykd summary`: parameter and statistic counts, MACs and arena size of a model.

use super::model_args::describe;
use super::{emit, ModelArgs, UsageError};
use crate::config::{Arch, Stem};
use crate::models;

/// `tinykd summary`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `summary`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.model.to_config()?;
    let s = models::summary(&cfg).map_err(|e| UsageError(e.to_string()))?;
    let text = if a.json {
        let v = serde_json::json!({
            "model": match cfg.arch { Arch::MobileNetV1 => "mobilenet_v1", Arch::ResNet50 => "resnet50" },
            "scale_permille": cfg.scale_permille,
            "classes": cfg.classes,
            "stem": match cfg.stem { Stem::ImageNet => "imagenet", Stem::Cifar => "cifar" },
            "input": [cfg.in_h, cfg.in_w, cfg.in_c],
            "params": s.params,
            "statistics": s.statistics,
            "macs": s.macs,
            "arena_bytes": s.arena_bytes,
            "arena_lower_bound": s.arena_lower_bound,
        });
        format!("{}\n", serde_json::to_string_pretty(&v).expect("JSON values always serialise"))
    } else {
        format!(
            "{}\nparameters:          {:>14}\nBN statistics:       {:>14}\nMACs per image:      {:>14}\narena bytes (f32):   {:>14}\narena lower bound:   {:>14}\n",
            describe(&cfg),
            s.params,
            s.statistics,
            s.macs,
            s.arena_bytes,
            s.arena_lower_bound
        )
    };
    emit(&text)
}
