//! Accuracy of an inference weight file (f32 or f16, batch norm folded) on a dataset, computed
//! by the `no_std` inference [`Engine`] — exactly what the device runs — on several threads.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tinykd::host::{data::synth, eval};
//! use tinykd::weights::{AlignedBuf, WeightFile};
//!
//! let buf = AlignedBuf::from_bytes(&std::fs::read("student_kd.f16.tkd")?);
//! let file = WeightFile::parse(buf.as_bytes())?;
//! let (_, test) = synth::generate(0, 1000, 7);
//! let acc = eval::evaluate(&file, &test, 50, 2, None)?;
//! println!("top-1 {:.2} %  top-5 {:.2} %", acc.top1 * 100.0, acc.top5 * 100.0);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::ops::Range;

use tinykd_kernels::shape::Logits;
use tinykd_kernels::{loss, Isa, KernelError};

use crate::engine::{Engine, EngineError};
use crate::host::data::Dataset;
use crate::weights::WeightFile;

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
    /// ([`loss::topk_correct`]: a tie ranks the lower class index first). A label not below
    /// the number of classes is an error.
    pub fn add(&mut self, logits: &[f32], labels: &[u32]) -> Result<(), KernelError> {
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

/// Why an evaluation failed.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalError {
    /// The engine refused the file or an input (e.g. a model for other input sizes than the
    /// dataset's images).
    Engine(EngineError),
    /// A label is not below the model's number of classes.
    Labels(KernelError),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Engine(e) => write!(f, "inference failed: {e}"),
            EvalError::Labels(e) => write!(f, "the dataset's labels do not fit the model's classes: {e}"),
        }
    }
}

impl std::error::Error for EvalError {}

impl From<EngineError> for EvalError {
    fn from(e: EngineError) -> Self {
        EvalError::Engine(e)
    }
}

/// Top-1 / top-5 accuracy of the inference file `file` on every image of `set`: the set is
/// split into `threads` contiguous parts (at least 1), each run in batches of `batch` (at least
/// 1; plus one smaller batch for its tail) on its own arena, with the best kernel path of this
/// CPU. `progress`, when given, is called with the number of images of each batch done (from
/// the worker threads). The result does not depend on `batch` or `threads`.
pub fn evaluate(
    file: &WeightFile<'_>,
    set: &Dataset,
    batch: usize,
    threads: usize,
    progress: Option<&(dyn Fn(usize) + Sync)>,
) -> Result<Accuracy, EvalError> {
    let cfg = file.config();
    let n = set.len();
    let batch = batch.clamp(1, n.max(1));
    let threads = threads.clamp(1, n.div_ceil(batch).max(1));
    let engine = Engine::new(&cfg, batch, file)?;
    let isa = Isa::detect();
    let parts: Vec<Range<usize>> = (0..threads).map(|k| n * k / threads..n * (k + 1) / threads).collect();
    let results: Vec<Result<Hits, EvalError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|range| {
                let engine = &engine;
                s.spawn(move || run_part(engine, file, isa, set, range, batch, progress))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("eval worker panicked")).collect()
    });
    let mut hits = Hits::default();
    for r in results {
        let h = r?;
        hits.top1 += h.top1;
        hits.top5 += h.top5;
    }
    Ok(hits.accuracy(n))
}

/// Runs the images `range` of `set` through `engine` (batches of `batch`; the tail through an
/// engine built for its size), reporting each batch to `progress`.
fn run_part(
    engine: &Engine<'_>,
    file: &WeightFile<'_>,
    isa: Isa,
    set: &Dataset,
    range: Range<usize>,
    batch: usize,
    progress: Option<&(dyn Fn(usize) + Sync)>,
) -> Result<Hits, EvalError> {
    let cfg = file.config();
    let classes = cfg.classes as usize;
    let tail = range.len() % batch;
    let tail_engine = if tail > 0 { Some(Engine::new(&cfg, tail, file)?) } else { None };
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
        eng.run(isa, &input, &mut arena, out)?;
        let labels: Vec<u32> = chunk.iter().map(|&i| set.label(i) as u32).collect();
        hits.add(out, &labels).map_err(EvalError::Labels)?;
        if let Some(p) = progress {
            p(chunk.len());
        }
    }
    Ok(hits)
}
