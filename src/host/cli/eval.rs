//! `tinykd eval`: top-1 / top-5 accuracy of weights on a dataset's test split, computed by the
//! `no_std` inference [`Engine`] — exactly what the device runs. A Params file or checkpoint is
//! BN-folded (f32) in memory first.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::ProgressBar;
use tinykd_kernels::shape::Logits;
use tinykd_kernels::{loss, DType, Isa};

use super::weights_io::{self, Loaded};
use super::{default_threads, emit, UsageError};
use crate::config::ModelConfig;
use crate::engine::Engine;
use crate::fold;
use crate::host::data::cifar::{IMAGE_C, IMAGE_H, IMAGE_W, NUM_CLASSES};
use crate::host::data::{load_cifar_test, Dataset};
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

/// Accuracy over a set of images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    /// Fraction whose label has the highest logit.
    pub top1: f64,
    /// Fraction whose label is among the five highest logits.
    pub top5: f64,
    /// Images evaluated.
    pub n: usize,
}

/// Counts of correct predictions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    /// Label ranked first.
    pub top1: usize,
    /// Label ranked in the first five (all classes if fewer than five).
    pub top5: usize,
}

impl Hits {
    /// Scores a batch of `logits` (`labels.len()` rows) with the kernels' tie rule
    /// ([`loss::topk_correct`]: a tie ranks the lower class index first).
    pub fn add(&mut self, logits: &[f32], labels: &[u32]) -> anyhow::Result<()> {
        let classes = logits.len() / labels.len().max(1);
        let sh = Logits::new(labels.len(), classes);
        self.top1 += loss::topk_correct(&sh, logits, labels, 1)?;
        self.top5 += loss::topk_correct(&sh, logits, labels, 5.min(classes))?;
        Ok(())
    }

    /// The fractions over `n` samples.
    pub fn accuracy(self, n: usize) -> Accuracy {
        let d = n.max(1) as f64;
        Accuracy { top1: self.top1 as f64 / d, top5: self.top5 as f64 / d, n }
    }
}

/// A BN-folded f32 inference file of `store`, in aligned memory.
pub fn fold_f32(store: &ParamStore) -> anyhow::Result<AlignedBuf> {
    let bytes = fold::export_inference(store, DType::F32).context("cannot fold batch norm")?;
    Ok(AlignedBuf::from_bytes(&bytes))
}

/// Evaluates the inference file `file` on every image of `set` with the engine: the set is split
/// into `threads` contiguous parts, each run in batches of `batch` (plus one smaller batch for
/// its tail) on its own arena.
pub fn evaluate(file: &WeightFile<'_>, set: &Dataset, batch: usize, threads: usize) -> anyhow::Result<Accuracy> {
    let cfg = file.config();
    let n = set.len();
    let batch = batch.clamp(1, n.max(1));
    let threads = threads.clamp(1, n.div_ceil(batch).max(1));
    let engine = Engine::new(&cfg, batch, file).context("cannot prepare the inference engine")?;
    let isa = Isa::detect();
    let parts: Vec<std::ops::Range<usize>> = (0..threads).map(|k| n * k / threads..n * (k + 1) / threads).collect();
    let bar = progress_bar(n);
    let results: Vec<anyhow::Result<Hits>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|range| {
                let (engine, bar) = (&engine, bar.as_ref());
                s.spawn(move || run_part(engine, file, isa, set, range, batch, bar))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("eval worker panicked")).collect()
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut hits = Hits::default();
    for r in results {
        let h = r?;
        hits.top1 += h.top1;
        hits.top5 += h.top5;
    }
    Ok(hits.accuracy(n))
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

/// Runs the images `range` of `set` through `engine` (batches of `batch`; the tail through an
/// engine built for its size), advancing `bar` by each batch.
fn run_part(
    engine: &Engine<'_>,
    file: &WeightFile<'_>,
    isa: Isa,
    set: &Dataset,
    range: std::ops::Range<usize>,
    batch: usize,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Hits> {
    let cfg = file.config();
    let classes = cfg.classes as usize;
    let tail = range.len() % batch;
    let tail_engine = if tail > 0 {
        Some(Engine::new(&cfg, tail, file).context("cannot prepare the inference engine")?)
    } else {
        None
    };
    let arena_len = engine.arena_bytes().max(tail_engine.as_ref().map_or(0, Engine::arena_bytes));
    let mut arena = vec![0u8; arena_len];
    let mut input = Vec::new();
    let mut logits = vec![0.0f32; batch * classes];
    let mut hits = Hits::default();
    let indices: Vec<usize> = range.collect();
    for chunk in indices.chunks(batch) {
        let eng = if chunk.len() == batch { engine } else { tail_engine.as_ref().expect("tail engine exists") };
        set.batch_nhwc(chunk, &mut input);
        let out = &mut logits[..chunk.len() * classes];
        eng.run(isa, &input, &mut arena, out).context("inference failed")?;
        let labels: Vec<u32> = chunk.iter().map(|&i| set.label(i) as u32).collect();
        hits.add(out, &labels)?;
        if let Some(bar) = bar {
            bar.inc(chunk.len() as u64);
        }
    }
    Ok(hits)
}

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
