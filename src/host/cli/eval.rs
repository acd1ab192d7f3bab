//! `tinykd eval`: top-1 / top-5 accuracy of weights on a dataset's test split, computed by the
//! `no_std` inference [`Engine`](crate::engine::Engine) — exactly what the device runs
//! ([`host::eval`](crate::host::eval)). A Params file or checkpoint is BN-folded (f32) in
//! memory first.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::ProgressBar;
use tinykd_kernels::DType;

use super::weights_io::{self, Loaded};
use super::{default_threads, emit, UsageError};
use crate::config::ModelConfig;
use crate::fold;
use crate::host::data::cifar::{IMAGE_C, IMAGE_H, IMAGE_W, NUM_CLASSES};
use crate::host::data::{load_cifar_test, Dataset};
use crate::host::eval;
pub use crate::host::eval::{Accuracy, Hits};
use crate::host::progress;
use crate::params::ParamStore;
use crate::weights::{AlignedBuf, WeightFile};

/// `tinykd eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Weights: a params file, an inference file (f32 or f16) or a checkpoint.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Dataset directory (CIFAR-10 binary format); its test split is evaluated.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Images per engine run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=4096), value_name = "B")]
    pub batch: u64,
    /// Worker threads, each with its own engine arena (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256), value_name = "T")]
    pub threads: Option<u64>,
    /// Print a JSON object (`top1`, `top5`, `n`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A BN-folded f32 inference file of `store`, in aligned memory.
pub fn fold_f32(store: &ParamStore) -> anyhow::Result<AlignedBuf> {
    let bytes = fold::export_inference(store, DType::F32).context("cannot fold batch norm")?;
    Ok(AlignedBuf::from_bytes(&bytes))
}

/// [`host::eval::evaluate`](crate::host::eval::evaluate) with a progress bar on a terminal.
pub fn evaluate(file: &WeightFile<'_>, set: &Dataset, batch: usize, threads: usize) -> anyhow::Result<Accuracy> {
    let bar = progress_bar(set.len());
    let inc = |k: usize| {
        if let Some(bar) = &bar {
            bar.inc(k as u64);
        }
    };
    let acc = eval::evaluate(file, set, batch, threads, Some(&inc));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(acc?)
}

/// A bar over `n` images on stderr when it is a terminal and the evaluation is long enough to
/// wait for (a ResNet50 evaluates ~100 images/s per core: 10,000 test images take minutes).
fn progress_bar(n: usize) -> Option<ProgressBar> {
    if n < EVAL_BAR_MIN_IMAGES || !std::io::stderr().is_terminal() {
        return None;
    }
    Some(progress::bar(n as u64, "evaluating [{bar:30.cyan/blue}] {pos}/{len} images, eta {eta}"))
}

/// Fewest test images for which [`evaluate`] draws a progress bar.
const EVAL_BAR_MIN_IMAGES: usize = 1000;

/// Evaluates weights as loaded by [`weights_io::load`] (parameters are folded to f32 first).
pub fn evaluate_loaded(w: &Loaded, set: &Dataset, batch: usize, threads: usize) -> anyhow::Result<Accuracy> {
    let folded;
    let buf = match w {
        Loaded::Params(store) => {
            folded = fold_f32(store)?;
            &folded
        }
        Loaded::Inference(buf) => buf,
    };
    let file = WeightFile::parse(buf).context("invalid inference file")?;
    evaluate(&file, set, batch, threads)
}

/// Checks that a model of `cfg` (named `what` in the message) takes the CIFAR-format images
/// (32x32x3) and has a logit for each of their 10 labels.
pub fn check_fits_cifar(cfg: &ModelConfig, what: &str) -> Result<(), UsageError> {
    if (cfg.in_h, cfg.in_w, cfg.in_c) != (IMAGE_H as u16, IMAGE_W as u16, IMAGE_C as u16) {
        return Err(UsageError(format!(
            "{what} is for {}x{}x{} inputs; the CIFAR-format dataset has {IMAGE_H}x{IMAGE_W}x{IMAGE_C} images",
            cfg.in_h, cfg.in_w, cfg.in_c
        )));
    }
    if (cfg.classes as usize) < NUM_CLASSES {
        return Err(UsageError(format!(
            "{what} has {} classes; the CIFAR-format dataset has {NUM_CLASSES} labels",
            cfg.classes
        )));
    }
    Ok(())
}

/// Runs `eval`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let w = weights_io::load(&a.weights)?;
    let cfg = w.config();
    check_fits_cifar(&cfg, &a.weights.display().to_string())?;
    let test = load_cifar_test(&a.data)?;
    let threads = a.threads.map_or_else(default_threads, |t| t as usize);
    let start = std::time::Instant::now();
    let acc = evaluate_loaded(&w, &test, a.batch as usize, threads)?;
    let text = if a.json {
        let v = serde_json::json!({ "top1": acc.top1, "top5": acc.top5, "n": acc.n });
        format!("{v}\n")
    } else {
        format!(
            "{}: top-1 {:.2}%  top-5 {:.2}%  on {} test images ({:.2} s)\n",
            a.weights.display(),
            acc.top1 * 100.0,
            acc.top5 * 100.0,
            acc.n,
            start.elapsed().as_secs_f64()
        )
    };
    emit(&text)
}
