//! The training run behind `tinykd train`, `distill` and `pipeline`: options, learning-rate
//! schedule, the epoch loop with per-epoch checkpoints (exact resume), metrics and progress.
//!
//! Steps are the library [`Trainer`]'s ([`Trainer::step`]): student forward (train mode),
//! teacher forward (eval mode) when a loss reads the teacher, [`Losses::compute`], a loss
//! finiteness check, student backward, then Momentum SGD `v = μ·v + g + wd·p; p −= lr·v`. This
//! module feeds it the batches (shuffle and augmentation below), saves and restores its
//! parameters, momentum buffers and step count, and checks after every step that the
//! gradients, parameters, statistics and momentum buffers are finite.
//!
//! # Divergence
//!
//! A NaN or infinity in the loss, a gradient or a weight stops the run in the step it appears,
//! with a message naming the tensor, the step and the option that sets the learning rate.
//! Checkpoints are written only at the end of an epoch whose every step passed the check, so
//! none holds a non-finite value and the last one stays intact.
//!
//! # Determinism and resume
//!
//! Epoch `e` (0-based) visits the training images in the order of a shuffle drawn from
//! `Rng::stream(seed, 2e)` and augments them from `Rng::stream(seed, 2e + 1)`; the last partial
//! batch is dropped. Parameters start from [`ParamStore::init`]`(cfg, seed)`, with ResNet50's
//! residual branches zero-initialised (see `zero_init_residuals`). The checkpoint
//! written after each epoch holds the parameters, statistics, momentum buffers, epoch and step;
//! everything else is a function of them, so `--resume` continues bit for bit. A resume with
//! options that would change the result (including the thread count: the executor's
//! reductions are grouped per thread) is refused (see `TrainOpts::fingerprint`). The metrics
//! row of an epoch is written before its checkpoint, so the log has one row per epoch however
//! often the run is killed and resumed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use tinykd_kernels::DType;

use super::eval::{check_fits_cifar, evaluate, fold_f32, Accuracy, Hits};
use super::model_args::describe;
use super::paths::{check_outputs, check_writable, dir_of};
use super::weights_io::{file_magic, named_tensors, non_finite, store_from_checkpoint, Magic};
use super::{default_threads, UsageError};
use crate::crc32::Crc32;
use crate::dist::{Loss, LossValues, Losses, Merged};
use crate::graph::VarKind;
use crate::host::checkpoint::{Checkpoint, CkptError, NamedTensor, TrainState};
use crate::host::data::cifar::{META_FILE, TEST_FILE, TRAIN_FILES};
use crate::host::data::{load_cifar_dir, Augment, Dataset, Rng};
use crate::host::metrics::{EpochMetrics, MetricsLog};
use crate::host::progress::Progress;
use crate::params::ParamStore;
use crate::train::{Diverged, Schedule, TrainConfig, TrainError, Trainer};
use crate::weights::{self, FileKind, WeightFile};

/// Images per engine run when evaluating the test split after an epoch.
const EVAL_BATCH: usize = 100;

/// `--schedule`: the learning-rate schedule over the run.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleSpec {
    /// `--lr` throughout.
    Constant,
    /// Cosine decay from `--lr` to 0 at the last step.
    Cosine,
    /// `piecewise:B1,B2:V0,V1,V2`: rate `V0` before epoch `B1`, `V1` from `B1`, `V2` from
    /// `B2` (`--lr` is not used).
    Piecewise {
        /// Epochs at which the rate changes.
        epochs: Vec<u64>,
        /// The rates.
        values: Vec<f32>,
    },
}

impl FromStr for ScheduleSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a schedule: use constant, cosine or piecewise:B1,B2:V0,V1,V2");
        match s.trim() {
            "constant" => Ok(ScheduleSpec::Constant),
            "cosine" => Ok(ScheduleSpec::Cosine),
            other => {
                let rest = other.strip_prefix("piecewise:").ok_or_else(bad)?;
                let (b, v) = rest.split_once(':').ok_or_else(bad)?;
                let epochs: Vec<u64> =
                    b.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad())?;
                let values: Vec<f32> =
                    v.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad())?;
                if values.len() != epochs.len() + 1 {
                    return Err(format!("`{s}`: piecewise needs one more rate than boundaries"));
                }
                if epochs.windows(2).any(|w| w[0] >= w[1]) || epochs.first() == Some(&0) {
                    return Err(format!("`{s}`: boundaries must be increasing epochs >= 1"));
                }
                if values.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                    return Err(format!("`{s}`: rates must be finite and >= 0"));
                }
                Ok(ScheduleSpec::Piecewise { epochs, values })
            }
        }
    }
}

impl std::fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleSpec::Constant => f.write_str("constant"),
            ScheduleSpec::Cosine => f.write_str("cosine"),
            ScheduleSpec::Piecewise { epochs, values } => {
                let e: Vec<String> = epochs.iter().map(u64::to_string).collect();
                let v: Vec<String> = values.iter().map(f32::to_string).collect();
                write!(f, "piecewise:{}:{}", e.join(","), v.join(","))
            }
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a finite number >= 0")),
    }
}

/// The options every training command shares.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainOpts {
    /// Dataset directory (CIFAR-10 binary format).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Epochs to train (in total, counting those of a resumed run).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000), value_name = "E")]
    pub epochs: u64,
    /// The final params weight file; `<out>.ckpt` (checkpoint) and `<out stem>.metrics.{csv,svg}` go beside it.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096), value_name = "B")]
    pub batch: u64,
    /// Base learning rate [default: 0.1] (not with a piecewise schedule, whose rates set it).
    #[arg(long, value_parser = parse_rate, value_name = "LR", allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Momentum μ.
    #[arg(long, default_value = "0.9", value_parser = parse_rate, value_name = "MU", allow_negative_numbers = true)]
    pub momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value = "5e-4", value_parser = parse_rate, value_name = "WD", allow_negative_numbers = true)]
    pub wd: f64,
    /// Learning-rate schedule: constant, cosine, or piecewise:B1,B2:V0,V1,V2 (boundaries in epochs).
    #[arg(long, default_value = "cosine", value_name = "S")]
    pub schedule: ScheduleSpec,
    /// Epochs of linear warmup in front of the schedule.
    #[arg(long, default_value_t = 0, value_name = "W")]
    pub warmup_epochs: u64,
    /// Random crops (4-pixel padding) and flips of the training images (default on).
    #[arg(long, overrides_with = "no_augment")]
    pub augment: bool,
    /// Train on the images as they are.
    #[arg(long, overrides_with = "augment")]
    pub no_augment: bool,
    /// Seed of the initial weights, shuffling and augmentation.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Worker threads (default: all cores; on --resume, the count the checkpoint was written
    /// with). The count changes the rounding, so a resumed run must use the same one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256), value_name = "T")]
    pub threads: Option<u64>,
    /// Continue from `<out>.ckpt` if it exists (same epoch, step, momentum, learning-rate
    /// position); the model, the options that shape the result, the training images and the
    /// teacher's weights must be those it was written with.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate on the test split every N epochs (0: only after the last).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub eval_every: u64,
}

impl TrainOpts {
    /// Options with the defaults of the command line.
    pub fn new(data: PathBuf, epochs: u64, out: PathBuf) -> TrainOpts {
        TrainOpts {
            data,
            epochs,
            out,
            batch: 64,
            lr: None,
            momentum: 0.9,
            wd: 5e-4,
            schedule: ScheduleSpec::Cosine,
            warmup_epochs: 0,
            augment: false,
            no_augment: false,
            seed: 0,
            threads: None,
            resume: false,
            eval_every: 1,
        }
    }

    /// The base learning rate: `--lr`, or its default 0.1.
    pub fn base_lr(&self) -> f64 {
        self.lr.unwrap_or(0.1)
    }

    /// Whether training images are augmented.
    pub fn augmenting(&self) -> bool {
        !self.no_augment
    }

    /// Worker threads.
    pub fn thread_count(&self) -> usize {
        self.threads.map_or_else(default_threads, |t| t as usize)
    }

    /// The checkpoint path, `<out>.ckpt`.
    pub fn ckpt_path(&self) -> PathBuf {
        let mut s = OsString::from(self.out.as_os_str());
        s.push(".ckpt");
        PathBuf::from(s)
    }

    /// The metrics CSV path, `<out without extension>.metrics.csv` (the SVG beside it).
    pub fn metrics_path(&self) -> PathBuf {
        self.out.with_extension("metrics.csv")
    }

    /// Another run's output beside `--out` whose metrics log is this run's too (the same name
    /// up to the extension: `runs/teacher.tkd` for `--out runs/teacher`), found by its weight
    /// file or its checkpoint (`<out>.ckpt`), each known by its magic bytes (a log or notes
    /// file of the same stem is no run's output).
    fn metrics_owner(&self) -> Option<PathBuf> {
        let dir = dir_of(&self.out);
        let csv = self.metrics_path();
        let logs_here = |o: &Path| o.with_extension("metrics.csv").file_name() == csv.file_name();
        // Names first: only a file that could be a same-stem output is opened.
        let named = |p: &PathBuf| {
            logs_here(p) || p.to_str().and_then(|s| s.strip_suffix(".ckpt")).is_some_and(|o| logs_here(Path::new(o)))
        };
        std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| named(p) && p.is_file()).find_map(|p| {
            let out = match file_magic(&p)? {
                Magic::Weights => p,
                Magic::Checkpoint => p.to_str()?.strip_suffix(".ckpt").map(PathBuf::from)?,
            };
            (logs_here(&out) && out.file_name() != self.out.file_name()).then_some(out)
        })
    }

    /// Every file a run writes: `--out`, its checkpoint and its metrics CSV and SVG.
    pub fn outputs(&self) -> Vec<PathBuf> {
        let csv = self.metrics_path();
        vec![self.out.clone(), self.ckpt_path(), MetricsLog::svg_path_for(&csv), csv]
    }

    /// Refuses option values that parse but make no run: a warmup as long as the run (the
    /// schedule would never start; at `--warmup-epochs` ≥ `--epochs` the rate never reaches
    /// `--lr`), a momentum of 1 or more (the velocity never decays), and `--lr` given with a
    /// piecewise schedule, whose rates replace it.
    pub fn check(&self) -> Result<(), UsageError> {
        if self.warmup_epochs > 0 && self.warmup_epochs >= self.epochs {
            return Err(UsageError(format!(
                "--warmup-epochs {} is not fewer than --epochs {}: the learning rate would never reach its \
                 schedule",
                self.warmup_epochs, self.epochs
            )));
        }
        // Training runs in f32: 0.99999999 rounds to 1.
        if self.momentum >= 1.0 || self.momentum as f32 >= 1.0 {
            return Err(UsageError(format!(
                "--momentum {} must be below 1 (at 1 or more the velocity never decays; training is in f32, where \
                 the largest momentum below 1 is 0.99999994)",
                short(self.momentum)
            )));
        }
        if !(self.wd as f32).is_finite() {
            return Err(UsageError(format!("--wd {} is beyond f32's range (training is in f32)", short(self.wd))));
        }
        if self.lr.is_some() && matches!(self.schedule, ScheduleSpec::Piecewise { .. }) {
            return Err(UsageError(format!(
                "--lr does not apply to --schedule {}: its rates set the learning rate",
                self.schedule
            )));
        }
        Ok(())
    }

    /// The per-step schedule for `steps_per_epoch` steps per epoch.
    fn lr_schedule(&self, steps_per_epoch: usize) -> Result<Schedule, UsageError> {
        let spe = steps_per_epoch;
        let warm = self.warmup_epochs as usize * spe;
        let total = self.epochs as usize * spe;
        let lr = self.base_lr() as f32;
        let inner = match &self.schedule {
            ScheduleSpec::Constant => Schedule::constant(lr),
            ScheduleSpec::Cosine => Schedule::cosine(lr, total.saturating_sub(warm).max(1)),
            ScheduleSpec::Piecewise { epochs, values } => {
                if epochs.iter().any(|&b| b <= self.warmup_epochs) {
                    return Err(UsageError(format!(
                        "piecewise boundaries must come after the {} warmup epochs",
                        self.warmup_epochs
                    )));
                }
                Schedule::piecewise(epochs.iter().map(|&b| b as usize * spe - warm).collect(), values.clone())
            }
        };
        let inner = inner.map_err(|e| UsageError(e.to_string()))?;
        if warm == 0 {
            return Ok(inner);
        }
        Schedule::warmup(warm, inner).map_err(|e| UsageError(e.to_string()))
    }

    /// The options that define the run's result, compared on resume (keys are option names
    /// without `--`, see [`option_name`]). `threads` (the run's worker count) is included: it
    /// changes the rounding of the executor's reductions, so a resume at another count would
    /// not repeat the uninterrupted run bit for bit. `--epochs` is included only for the cosine
    /// schedule (whose horizon it sets): a constant or piecewise run may be extended.
    fn fingerprint(&self, losses: &[String], threads: usize, train: &Dataset) -> serde_json::Value {
        let mut v = serde_json::json!({
            "batch": self.batch, "lr": self.base_lr(), "momentum": self.momentum, "wd": self.wd,
            "schedule": self.schedule.to_string(), "warmup_epochs": self.warmup_epochs,
            "augment": self.augmenting(), "seed": self.seed, "losses": losses,
            "threads": threads, "data": data_fingerprint(train),
        });
        if self.schedule == ScheduleSpec::Cosine {
            v["epochs"] = self.epochs.into();
        }
        v
    }

    /// How to lower the learning rate: the option that sets it under this schedule.
    fn lr_advice(&self) -> String {
        match &self.schedule {
            ScheduleSpec::Constant | ScheduleSpec::Cosine => {
                format!("try a lower learning rate than --lr {}", short(self.base_lr()))
            }
            ScheduleSpec::Piecewise { epochs, values } => {
                let e: Vec<String> = epochs.iter().map(u64::to_string).collect();
                let v: Vec<String> = values.iter().map(|&v| short(v)).collect();
                format!(
                    "try a lower learning rate in --schedule piecewise:{}:{} (its rates set it; --lr is not used)",
                    e.join(","),
                    v.join(",")
                )
            }
        }
    }
}

/// `v` for a message: plain for ordinary magnitudes, in exponent notation (`1e30`) otherwise.
fn short<T: Copy + Into<f64> + std::fmt::Display + std::fmt::LowerExp>(v: T) -> String {
    let a = v.into().abs();
    if a != 0.0 && a.is_finite() && !(1e-4..1e6).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// The training split's identity in a checkpoint: the CRC-32 of its labels, then its images,
/// in file order (another dataset of the same size, or the same images relabelled, differ).
fn data_fingerprint(train: &Dataset) -> String {
    format!("{:08x}", Crc32::new().update(&train.labels).update(&train.images).finish())
}

/// The frozen teacher's identity in a checkpoint: the CRC-32 of its parameters and statistics
/// (values in program order), the same whether they came from a params file or a checkpoint;
/// `None` without a teacher.
fn teacher_fingerprint(merged: &Merged) -> Option<String> {
    let mut crc = Crc32::new();
    let mut bytes = Vec::new();
    for p in merged.teacher()?.params.params() {
        bytes.clear();
        bytes.extend(p.data.iter().flat_map(|v| v.to_le_bytes()));
        crc.update(&bytes);
    }
    Some(format!("{:08x}", crc.finish()))
}

/// The command-line spelling of a [`TrainOpts::fingerprint`] key.
fn option_name(key: &str) -> String {
    match key {
        "augment" => "--augment/--no-augment".to_string(),
        "losses" => "--loss".to_string(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

/// A training run: the student (with its merged teacher, if any) and its losses.
pub struct Job<'a> {
    /// The student and optional frozen teacher.
    pub merged: Merged,
    /// The weighted losses.
    pub losses: Vec<Loss>,
    /// The options.
    pub opts: &'a TrainOpts,
    /// A description of the command, stored in the checkpoint's metadata.
    pub command: String,
    /// The files the run reads besides `--data` (`(option, path)`, e.g. the teacher), which its
    /// outputs must not overwrite.
    pub inputs: Vec<(String, PathBuf)>,
}

/// What a finished run produced.
pub struct Outcome {
    /// The final parameters and statistics (also written to `--out`).
    pub params: ParamStore,
    /// Test accuracy after the last epoch (engine, BN folded).
    pub test: Accuracy,
    /// Wall-clock seconds of the training in this process.
    pub seconds: f64,
}

/// The CSV column of a loss label (commas and semicolons would break the CSV).
fn column_name(label: &str) -> String {
    label.replace([',', ';'], "|")
}

/// Runs `job` to completion (see the [module docs](self)); returns the final parameters.
pub fn fit(job: Job<'_>) -> anyhow::Result<Outcome> {
    let o = job.opts;
    o.check()?;
    let cfg = job.merged.student().config;
    let role = if job.merged.teacher().is_some() { "the student model" } else { "the model" };
    check_fits_cifar(&cfg, role)?;
    let labels = Losses::new(&job.merged, &job.losses).map_err(|e| UsageError(e.to_string()))?.labels();
    // The outputs are checked before any work: not over an input, not a directory.
    let data_files = TRAIN_FILES.iter().chain(&[TEST_FILE, META_FILE]).map(|f| ("--data".to_string(), o.data.join(f)));
    let inputs: Vec<(String, PathBuf)> = job.inputs.iter().cloned().chain(data_files).collect();
    check_outputs("--out", &o.outputs(), &inputs)?;
    if let Some(owner) = o.metrics_owner() {
        return Err(UsageError(format!(
            "--out {} would write its metrics log over {}, the log of {} (the same name up to the \
             extension); choose another --out",
            o.out.display(),
            o.metrics_path().display(),
            owner.display()
        ))
        .into());
    }
    let (train, test) = load_cifar_dir(&o.data)?;
    let bs = o.batch as usize;
    if train.len() < bs {
        return Err(UsageError(format!(
            "the training split has {} images, fewer than one batch of {bs}; use a smaller --batch",
            train.len()
        ))
        .into());
    }
    let spe = train.len() / bs;
    let ckpt_path = o.ckpt_path();
    let resume_from = if o.resume {
        match Checkpoint::load(&ckpt_path) {
            Ok(ck) => Some(ck),
            Err(CkptError::Missing { .. }) => {
                eprintln!("no checkpoint {}: starting from scratch", ckpt_path.display());
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        let old: Vec<String> =
            [&o.out, &ckpt_path].iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
        if !old.is_empty() {
            eprintln!(
                "note: {} of an earlier run will be replaced at the end of epoch 1 (--resume continues it instead)",
                old.join(" and ")
            );
        }
        None
    };
    // A new run's first checkpoint takes the place of the earlier run's, and its weights go
    // with it: until this run writes its own, they would pass for this run's.
    let mut old_weights = (resume_from.is_none() && o.out.exists()).then(|| o.out.clone());
    // Without --threads a resumed run takes the checkpoint's count (another machine's default
    // would change the rounding and be refused); an explicit other count is refused below.
    let recorded = resume_from.as_ref().and_then(recorded_threads);
    let threads = match (o.threads, recorded) {
        (None, Some(t)) => {
            if t != default_threads() {
                eprintln!("resuming with {t} threads, the count the checkpoint was written with (--threads to choose)");
            }
            t
        }
        _ => o.thread_count(),
    };
    let mut fingerprint = o.fingerprint(&labels, threads, &train);
    if let Some(t) = teacher_fingerprint(&job.merged) {
        fingerprint["teacher"] = t.into();
    }
    let mut params = ParamStore::init(&cfg, o.seed).map_err(|e| UsageError(e.to_string()))?;
    zero_init_residuals(&mut params);
    let tc = TrainConfig {
        batch_size: bs,
        threads,
        seed: o.seed,
        momentum: o.momentum as f32,
        weight_decay: o.wd as f32,
        schedule: o.lr_schedule(spe)?,
    };
    let mut trainer = Trainer::new(job.merged, params, &job.losses, tc).map_err(|e| UsageError(e.to_string()))?;
    // Last of the checks before the first step (so a refused run leaves no directory behind).
    check_writable("--out", &o.out)?;

    let (mut epoch, mut best) = (0u64, None::<f64>);
    if let Some(ck) = resume_from {
        check_resumable(&ck, &ckpt_path, &cfg, &fingerprint, o, spe)?;
        restore(&ck, &ckpt_path, &mut trainer)?;
        (epoch, best) = (ck.state.epoch, ck.state.best_metric);
        eprintln!("resuming from {} after epoch {epoch} (step {})", ckpt_path.display(), ck.state.step);
    }
    let parts: Vec<String> = labels.iter().map(|l| column_name(l)).collect();
    let part_refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let mut metrics = if epoch > 0 {
        let log = MetricsLog::resume(o.metrics_path(), &part_refs, epoch)?;
        let have: Vec<u64> = log.rows().iter().map(|r| r.epoch).collect();
        if have != (1..=epoch).collect::<Vec<_>>() {
            eprintln!(
                "note: {} has rows for epochs {have:?}, not 1 to {epoch} (rows lost before this version wrote \
                 them ahead of the checkpoint cannot be recomputed)",
                o.metrics_path().display()
            );
        }
        log
    } else {
        MetricsLog::new(o.metrics_path(), &part_refs)
    };

    let aug = Augment::default();
    let mut progress = Progress::new(o.epochs);
    let started = Instant::now();
    let mut last_test = None;
    let (mut images, mut order, mut y) = (Vec::new(), Vec::new(), Vec::with_capacity(bs));
    while epoch < o.epochs {
        let e_start = Instant::now();
        order.clear();
        order.extend(0..train.len());
        Rng::stream(o.seed, 2 * epoch).shuffle(&mut order);
        let mut aug_rng = Rng::stream(o.seed, 2 * epoch + 1);
        progress.start_epoch(epoch + 1, spe as u64);
        let mut sums = vec![0.0f64; labels.len()];
        let (mut total, mut hits, mut seen, mut lr) = (0.0f64, Hits::default(), 0usize, 0.0f32);
        for (k, idx) in order.chunks_exact(bs).enumerate() {
            if o.augmenting() {
                train.batch_nhwc_augmented(idx, &aug, &mut aug_rng, &mut images);
            } else {
                train.batch_nhwc(idx, &mut images);
            }
            y.clear();
            y.extend(idx.iter().map(|&i| train.label(i) as u32));
            let report = match trainer.step(&images, &y) {
                Ok(r) => r,
                Err(TrainError::NonFinite { step, values }) => {
                    let d = Divergence { what: "the loss".into(), detail: None, step, epoch, values, updated: false };
                    return Err(d.error(o, &trainer, &ckpt_path));
                }
                Err(TrainError::NonFiniteTensor { step, at, name, detail, values }) => {
                    let (what, updated) = (at.what(&name), at == Diverged::Update);
                    let d = Divergence { what, detail: Some(detail), step, epoch, values, updated };
                    return Err(d.error(o, &trainer, &ckpt_path));
                }
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            };
            hits.add(trainer.student().logits(), &y)?;
            lr = report.lr;
            seen += idx.len();
            total += report.losses.total as f64;
            for (s, p) in sums.iter_mut().zip(&report.losses.parts) {
                *s += p.2 as f64;
            }
            progress.update(k as u64 + 1, total / (k + 1) as f64, seen as f64 / e_start.elapsed().as_secs_f64());
        }
        epoch += 1;
        let step = trainer.step_count();
        let train_secs = e_start.elapsed().as_secs_f64();
        let due = epoch == o.epochs || (o.eval_every > 0 && epoch % o.eval_every == 0);
        let test_acc = if due { Some(eval_params(trainer.params(), &test, threads)?) } else { None };
        if let Some(a) = test_acc {
            best = Some(best.map_or(a.top1, |b: f64| b.max(a.top1)));
            last_test = Some(a);
        }
        let steps = spe as f64;
        let row = EpochMetrics {
            epoch,
            step: step as u64,
            lr: lr as f64,
            train_loss: total / steps,
            loss_parts: sums.iter().map(|s| s / steps).collect(),
            train_top1: hits.top1 as f64 / seen as f64,
            test_top1: test_acc.map(|a| a.top1),
            test_top5: test_acc.map(|a| a.top5),
            images_per_sec: seen as f64 / train_secs,
            seconds: e_start.elapsed().as_secs_f64(),
        };
        let mut summary = format!("loss {:.4}", row.train_loss);
        for (name, v) in parts.iter().zip(&row.loss_parts) {
            summary.push_str(&format!(" [{name} {v:.4}]"));
        }
        summary.push_str(&format!(" train top-1 {:.2}%", row.train_top1 * 100.0));
        if let Some(a) = test_acc {
            summary.push_str(&format!(" test top-1 {:.2}% top-5 {:.2}%", a.top1 * 100.0, a.top5 * 100.0));
        }
        summary.push_str(&format!(" {:.0} img/s", row.images_per_sec));
        // The metrics row goes first: a kill between the two writes leaves a row the resumed
        // run drops and writes again, never a checkpoint whose row is missing.
        metrics.push(row).with_context(|| format!("cannot write {}", o.metrics_path().display()))?;
        let ck = Checkpoint {
            config: cfg,
            params: named_tensors(trainer.params(), VarKind::Parameter),
            statistics: named_tensors(trainer.params(), VarKind::Statistic),
            momentum: trainer
                .params()
                .params()
                .iter()
                .zip(trainer.momentum_buffers())
                .filter(|(p, _)| p.kind == VarKind::Parameter)
                .map(|(p, v)| NamedTensor::new(p.name.clone(), p.dims.clone(), v.clone()))
                .collect(),
            state: TrainState {
                epoch,
                step: step as u64,
                rng_state: Rng::stream(o.seed, 2 * epoch).state(),
                lr_step: step as u64,
                lr: trainer.config().schedule.lr(step) as f64,
                best_metric: best,
            },
            meta: serde_json::json!({ "command": job.command, "run": fingerprint }).to_string(),
        };
        if let Some(old) = old_weights.take() {
            match std::fs::remove_file(&old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow::Error::new(e).context(format!("cannot remove the earlier {}", old.display())));
                }
                _ => {}
            }
        }
        ck.save(&ckpt_path)?;
        progress.finish_epoch(&summary);
    }
    let params = trainer.into_params();
    let test = match last_test {
        Some(a) => a,
        None => eval_params(&params, &test, threads)?,
    };
    weights::write_file(&o.out, &cfg, FileKind::Params, DType::F32, &params.to_tensors())
        .with_context(|| format!("cannot write {}", o.out.display()))?;
    Ok(Outcome { params, test, seconds: started.elapsed().as_secs_f64() })
}

/// A step that produced a NaN or an infinity.
struct Divergence {
    /// What held it: `the loss`, `the gradient of conv1_weights`, ...
    what: String,
    /// Which values, for a tensor.
    detail: Option<String>,
    /// The global step (0-based).
    step: usize,
    /// Epochs completed before it.
    epoch: u64,
    /// The losses of that step.
    values: LossValues,
    /// Whether the update ran (and wrote the non-finite values), rather than the step
    /// stopping before it.
    updated: bool,
}

impl Divergence {
    /// The error that stops the run: what, where, the losses, the checkpoint kept, advice.
    fn error(&self, o: &TrainOpts, trainer: &Trainer, ckpt_path: &Path) -> anyhow::Error {
        let parts: Vec<String> = self.values.parts.iter().map(|(l, _, v)| format!("{l} = {}", short(*v))).collect();
        let losses = match &self.detail {
            None => parts.join(", "),
            Some(d) => format!("it {d}; the loss was {}", parts.join(", ")),
        };
        let kept = if self.epoch > 0 {
            format!("the checkpoint {} of epoch {} is intact", ckpt_path.display(), self.epoch)
        } else {
            "no checkpoint was written".to_string()
        };
        anyhow::anyhow!(
            "{} is not finite at step {} (epoch {}, lr {}): {losses}; training stopped; {kept}; {}",
            self.what,
            self.step,
            self.epoch + 1,
            short(trainer.config().schedule.lr(self.step)),
            self.advice(o)
        )
    }

    /// What to change: the loss weights when the parts are finite but their weighted sum is
    /// not, or when the untrained model's step is already not finite (no update came before
    /// it, so the learning rate is not the cause); else the learning rate.
    fn advice(&self, o: &TrainOpts) -> String {
        if self.detail.is_none() && self.values.parts.iter().all(|p| p.2.is_finite()) {
            return format!(
                "each loss is finite but their weighted sum ({}) is not: try smaller --loss weights",
                short(self.values.total)
            );
        }
        if !self.updated && self.step == 0 {
            return "no update has run yet, so the learning rate is not the cause: check the --loss weights and \
                    temperatures"
                .into();
        }
        o.lr_advice()
    }
}

/// Sets the scale γ of the last batch norm of every residual branch (`bn*_branch2c_scale`,
/// ResNet50 only) to 0, so each bottleneck block starts as the identity (Goyal et al., 2017).
/// With He-initialised branches added up over 16 blocks, the initial logits are large enough
/// that ResNet50 trains erratically from the start (loss near 5 instead of ln 10 ≈ 2.3).
fn zero_init_residuals(params: &mut ParamStore) {
    for p in params.params_mut().iter_mut().filter(|p| p.name.ends_with("_branch2c_scale")) {
        p.data.fill(0.0);
    }
}

/// Test accuracy of `params` through the engine (BN folded, f32).
fn eval_params(params: &ParamStore, test: &Dataset, threads: usize) -> anyhow::Result<Accuracy> {
    let buf = fold_f32(params)?;
    let file = WeightFile::parse(&buf).context("folded weights do not parse")?;
    evaluate(&file, test, EVAL_BATCH, threads)
}

/// The worker count a checkpoint's run was written with, if it recorded one (older versions
/// did not) and it is a usable count.
fn recorded_threads(ck: &Checkpoint) -> Option<usize> {
    let meta: serde_json::Value = serde_json::from_str(&ck.meta).ok()?;
    let t = meta["run"]["threads"].as_u64()?;
    (1..=256).contains(&t).then_some(t as usize)
}

/// Refuses (with a [`UsageError`] naming the option and both values) a checkpoint of another
/// model, of other result-defining options ([`TrainOpts::fingerprint`]; an option the
/// checkpoint did not record, as older versions did not record threads, the data or the
/// teacher, is not compared), past `--epochs`, of a dataset with another number of steps per
/// epoch or other training images or labels, or of other teacher weights.
fn check_resumable(
    ck: &Checkpoint,
    path: &Path,
    cfg: &crate::config::ModelConfig,
    fingerprint: &serde_json::Value,
    o: &TrainOpts,
    steps_per_epoch: usize,
) -> anyhow::Result<()> {
    let refuse = |msg: String| -> anyhow::Result<()> {
        Err(UsageError(format!("checkpoint {} {msg}; use the same options or drop --resume", path.display())).into())
    };
    if ck.config != *cfg {
        return refuse(format!(
            "is for {}, this run trains {} (--model/--scale/--stem/--classes/--input)",
            describe(&ck.config),
            describe(cfg)
        ));
    }
    let meta: serde_json::Value = serde_json::from_str(&ck.meta).unwrap_or_default();
    if let (Some(old), Some(new)) = (meta["run"].as_object(), fingerprint.as_object()) {
        // The schedule first (a piecewise run records the default --lr it does not use, so
        // another schedule would be reported as another --lr); the data and the teacher last,
        // after the data's step count (a message with the sizes is clearer).
        let mut keys: Vec<&String> = new.keys().filter(|k| *k != "data" && *k != "teacher").collect();
        keys.sort_by_key(|k| *k != "schedule");
        for (k, v) in keys.into_iter().map(|k| (k, &new[k])) {
            match old.get(k) {
                Some(was) if was != v => {
                    let why = if k == "epochs" { " (the cosine schedule's horizon)" } else { "" };
                    return refuse(format!(
                        "was written with {opt} {was}, this run has {opt} {v}{why}",
                        opt = option_name(k)
                    ));
                }
                _ => {}
            }
        }
    }
    if ck.state.epoch > o.epochs {
        return refuse(format!("has trained {} epochs, more than --epochs {}", ck.state.epoch, o.epochs));
    }
    if ck.state.step != ck.state.epoch * steps_per_epoch as u64 {
        return refuse(format!(
            "took {} steps in {} epochs, but --data {} gives {steps_per_epoch} steps per epoch at --batch {}",
            ck.state.step,
            ck.state.epoch,
            o.data.display(),
            o.batch
        ));
    }
    // The identities of the inputs: the training split, and the teacher's weights.
    let identities = [
        (
            "data",
            format!(
                "was trained on other images or labels than --data {} holds (CRC-32 of the training split",
                o.data.display()
            ),
        ),
        ("teacher", "was distilled from another --teacher (CRC-32 of its weights".to_string()),
    ];
    for (key, what) in identities {
        if let (Some(was), Some(now)) = (meta["run"][key].as_str(), fingerprint[key].as_str()) {
            if was != now {
                return refuse(format!("{what} {was}, now {now})"));
            }
        }
    }
    Ok(())
}

/// Restores parameters, statistics, momentum and the step count from `ck` (every value must
/// be finite).
fn restore(ck: &Checkpoint, path: &Path, trainer: &mut Trainer) -> anyhow::Result<()> {
    let store = store_from_checkpoint(ck, path)?;
    let mut buffers = Vec::with_capacity(store.params().len());
    for p in store.params() {
        if p.kind != VarKind::Parameter {
            buffers.push(Vec::new());
            continue;
        }
        let m = ck
            .momentum
            .iter()
            .find(|t| t.name == p.name)
            .with_context(|| format!("checkpoint {} has no momentum for {}", path.display(), p.name))?;
        if m.data.len() != p.data.len() {
            bail!(
                "checkpoint {}: momentum of {} has {} values, not {}",
                path.display(),
                p.name,
                m.data.len(),
                p.data.len()
            );
        }
        if let Some(bad) = non_finite(&m.data) {
            bail!("checkpoint {}: the momentum of {} {bad}; it cannot be used", path.display(), p.name);
        }
        buffers.push(m.data.clone());
    }
    *trainer.params_mut() = store;
    trainer.set_momentum_buffers(buffers).with_context(|| format!("checkpoint {}", path.display()))?;
    trainer.set_step_count(ck.state.step as usize);
    Ok(())
}
