//! `tinykd bench`: speed of inference (the no_std engine), of a training step and of a
//! distillation step on random weights and inputs, printed as one JSON object.
//!
//! - `bench infer`: batch-`B` inference through [`Engine`] with BN-folded f32 or f16 weights;
//! - `bench train-step`: one [`Trainer::step`] of the student alone (forward, cross-entropy,
//!   backward, Momentum update);
//! - `bench distill-step`: one step of the tutorial's distillation (frozen ResNet50 teacher
//!   forward, student forward/backward, cross-entropy + L2 hint, Momentum update);
//! - `bench gemm` (`bench_gemm.rs`): GEMM GFLOP/s against the FMA peak of the same run.
//!
//! Each runs `--warmup` untimed iterations, then `--iters` timed ones, and reports the median,
//! 10th and 90th percentile in milliseconds and the throughput at the median.

use std::time::Instant;

use clap::Subcommand;
use serde_json::json;

use super::export::DTypeArg;
use super::{emit, ModelArgs, UsageError};
use crate::config::{Arch, ModelConfig};
use crate::dist::{default_losses, merge, Merged};
use crate::engine::Engine;
use crate::fold::export_inference;
use crate::host::data::rng::Rng;
use crate::kernels::{DType, Isa};
use crate::models;
use crate::params::ParamStore;
use crate::train::{Executor, StepPhases, TrainConfig, Trainer};
use crate::weights::{AlignedBuf, WeightFile};

/// `tinykd bench ...`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Inference latency of the no_std engine (random BN-folded weights).
    Infer(InferArgs),
    /// One training step of the model alone (cross-entropy), batch 64 by default.
    TrainStep(StepArgs),
    /// One distillation step: ResNet50 teacher forward + this student's training step with
    /// `distill`'s default losses (cross-entropy + the tutorial's L2 hint where the student's
    /// width matches it, else + soft labels; the JSON names them), batch 64 by default.
    DistillStep(StepArgs),
    /// Single-thread GEMM GFLOP/s and fraction of the FMA peak, measured in the same run.
    Gemm(super::bench_gemm::GemmArgs),
}

/// Timing options shared by every benchmark.
#[derive(clap::Args, Clone, Debug)]
pub struct Timing {
    /// Timed iterations.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub iters: u32,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub warmup: u32,
}

/// `tinykd bench infer`.
#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), value_name = "B")]
    pub batch: u32,
    /// Worker threads (the engine runs on the calling thread: only 1).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub threads: u32,
    /// Weight storage.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Run every layer from the weight file's layout instead of packing the few-row layers'
    /// weights into panels first (`Engine::with_panels`).
    #[arg(long)]
    pub no_panels: bool,
    /// Also time every step of the engine's schedule (median per layer, its MACs, weight
    /// bytes, GFLOP/s and GB/s of weights): the JSON gains a `layers` array.
    #[arg(long)]
    pub layers: bool,
    /// Timing.
    #[command(flatten)]
    pub timing: Timing,
}

/// `tinykd bench train-step` / `distill-step`.
#[derive(clap::Args, Debug)]
#[command(mut_arg("model", |a| a.required(false).default_value("mobilenet_v1")))]
pub struct StepArgs {
    /// The student model (default: the tutorial's, MobileNetV1).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..), value_name = "B")]
    pub batch: u32,
    /// Worker threads (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "T")]
    pub threads: Option<u32>,
    /// When the threads synchronise: `batch` (each runs its share of the batch through every
    /// op, meeting only at the batch norms: what training uses) or `op` (all meet after every
    /// op, as op-level / GEMM-level parallelism must; for comparison).
    #[arg(long, value_enum, default_value_t = SyncArg::Batch)]
    pub sync: SyncArg,
    /// Also time every op of the timed steps: the JSON gains an `ops` array (network, op,
    /// kind, forward and backward milliseconds per step summed over the threads — a thread's
    /// wait for the others at a batch norm counts), heaviest first.
    #[arg(long)]
    pub ops: bool,
    /// Timing.
    #[command(flatten)]
    pub timing: Timing,
}

/// `--sync`: where the worker threads of a step wait for each other.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncArg {
    /// Batch-level: only at the batch norms.
    Batch,
    /// Op-level: after every op.
    Op,
}

/// Runs `bench`.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let report = match cmd {
        BenchCommand::Infer(a) => infer(a)?,
        BenchCommand::TrainStep(a) => step(a, false)?,
        BenchCommand::DistillStep(a) => step(a, true)?,
        BenchCommand::Gemm(a) => super::bench_gemm::run(a)?,
    };
    emit(&format!("{}\n", serde_json::to_string_pretty(&report).expect("JSON values always serialise")))
}

/// Refuses (naming `options`) a benchmark whose buffers, `need` bytes estimated from the
/// model's tensor sizes before anything is allocated, exceed the memory available
/// (`MemAvailable` of /proc/meminfo; no check where that cannot be read). A batch of a million
/// used to allocate for tens of seconds and then abort.
fn check_memory(options: &str, need: u128) -> Result<(), UsageError> {
    let Some(avail) = mem_available() else { return Ok(()) };
    if need > avail as u128 {
        return Err(UsageError(format!(
            "{options}: the benchmark's buffers need ~{:.1} GB, more than the {:.1} GB of memory available; \
             use a smaller --batch (or --input)",
            need as f64 / 1e9,
            avail as f64 / 1e9
        )));
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Milliseconds per iteration: median, 10th and 90th percentile (nearest rank).
struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
}

/// Times `f` for `t.warmup` untimed and `t.iters` timed calls.
fn time(t: &Timing, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Stats> {
    for _ in 0..t.warmup {
        f()?;
    }
    let mut ms = Vec::with_capacity(t.iters as usize);
    for _ in 0..t.iters {
        let start = Instant::now();
        f()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok(Stats { median: at(0.5), p10: at(0.1), p90: at(0.9) })
}

/// `n` pseudo-random input values in [−1, 1).
fn random_input(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// The JSON fields naming the model.
fn model_fields(cfg: &ModelConfig) -> (&'static str, f64) {
    let name = match cfg.arch {
        Arch::MobileNetV1 => "mobilenet_v1",
        Arch::ResNet50 => "resnet50",
    };
    (name, cfg.scale_permille as f64 / 1000.0)
}

fn infer(a: InferArgs) -> anyhow::Result<serde_json::Value> {
    let cfg = a.model.to_config()?;
    if a.threads != 1 {
        return Err(UsageError(format!(
            "--threads {}: the inference engine runs on the calling thread; use --threads 1",
            a.threads
        ))
        .into());
    }
    let batch = a.batch as usize;
    let dtype = DType::from(a.dtype);
    let plan = crate::engine::EnginePlan::new(&cfg, batch).map_err(|e| UsageError(format!("--batch {batch}: {e}")))?;
    let per_image = cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize;
    check_memory("--batch/--input", plan.arena_bytes() as u128 + (batch as u128) * (per_image as u128) * 4)?;
    let params = ParamStore::init(&cfg, 0).map_err(|e| UsageError(e.to_string()))?;
    let bytes = AlignedBuf::from_bytes(&export_inference(&params, dtype)?);
    let file = WeightFile::parse(&bytes)?;
    let mut engine = Engine::new(&cfg, batch, &file)?;
    let mut panel_buf: Vec<u8>;
    if !a.no_panels {
        panel_buf = vec![0u8; engine.panels_bytes()];
        engine.with_panels(&mut panel_buf)?;
    }
    let input = random_input(batch * per_image, 1);
    let mut arena = vec![0u8; engine.arena_bytes()];
    let mut logits = vec![0.0f32; batch * cfg.classes as usize];
    let isa = Isa::detect();
    let s = time(&a.timing, || Ok(engine.run(isa, &input, &mut arena, &mut logits)?))?;
    let (model, scale) = model_fields(&cfg);
    let layers = if a.layers {
        let steps = engine.schedule().steps();
        let mut ms = vec![Vec::with_capacity(a.timing.iters as usize); steps.len()];
        for it in 0..a.timing.warmup + a.timing.iters {
            let mut last = Instant::now();
            engine.run_observed(isa, &input, &mut arena, &mut logits, |i| {
                let now = Instant::now();
                if it >= a.timing.warmup {
                    ms[i].push((now - last).as_secs_f64() * 1e3);
                }
                last = now;
            })?;
        }
        let esize = dtype.size();
        let rows: Vec<serde_json::Value> = steps
            .iter()
            .zip(&mut ms)
            .map(|(step, t)| {
                t.sort_by(f64::total_cmp);
                let med = t[t.len() / 2];
                let (macs, weights) = step_cost(step, batch);
                json!({
                    "layer": step.layer.to_string(),
                    "kind": format!("{:?}", step.kind),
                    "ms_median": med,
                    "macs": macs,
                    "weight_bytes": weights * esize,
                    "gflops": 2.0 * macs as f64 / med / 1e6,
                    "weight_gb_per_s": (weights * esize) as f64 / med / 1e6,
                })
            })
            .collect();
        Some(rows)
    } else {
        None
    };
    let mut report = json!({
        "bench": "infer",
        "model": model,
        "scale": scale,
        "batch": batch,
        "threads": 1,
        "dtype": dtype.name(),
        "panels": !a.no_panels,
        "isa": isa.kind().name(),
        "ms_median": s.median,
        "ms_p10": s.p10,
        "ms_p90": s.p90,
        "images_per_s": batch as f64 * 1e3 / s.median,
    });
    if let Some(rows) = layers {
        report["layers"] = serde_json::Value::Array(rows);
    }
    Ok(report)
}

/// Multiply-adds of one engine step for a batch of `n`, and its weight count (0 for steps
/// without weights).
fn step_cost(step: &crate::plan::Step, n: usize) -> (usize, usize) {
    use crate::plan::StepKind;
    let (x, y) = (step.x_shape, step.y_shape);
    let pixels = n * y.h as usize * y.w as usize;
    let (k2, cin, cout) = (step.k as usize * step.k as usize, x.c as usize, y.c as usize);
    match step.kind {
        StepKind::Conv { .. } => (pixels * k2 * cin * cout, k2 * cin * cout),
        StepKind::DwConv { .. } => (pixels * k2 * cout, k2 * cout),
        StepKind::Fc => (n * cin * cout, cin * cout),
        StepKind::MaxPool | StepKind::AddRelu | StepKind::GlobalAvgPool => (0, 0),
    }
}

fn step(a: StepArgs, distill: bool) -> anyhow::Result<serde_json::Value> {
    let cfg = a.model.to_config()?;
    let batch = a.batch as usize;
    // A thread beyond the batch would have no sample: the executor runs min(threads, batch).
    let threads = a.threads.map_or_else(super::default_threads, |t| t as usize).min(batch);
    let student = models::program(&cfg).map_err(|e| UsageError(e.to_string()))?;
    let tcfg = ModelConfig::resnet50().with_classes(cfg.classes).with_input(cfg.in_h, cfg.in_w);
    let tprog =
        if distill { Some(models::program(&tcfg).map_err(|e| UsageError(format!("teacher: {e}")))?) } else { None };
    // The executors' batch-sized buffers (the teacher's too for a distillation step).
    let need: u128 = [Some(&student), tprog.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| Executor::buffer_bytes(p, batch, threads).map_or(u128::MAX, |b| b as u128))
        .fold(0, u128::saturating_add);
    check_memory("--batch/--input", need)?;
    let params = ParamStore::init(&cfg, 0).map_err(|e| UsageError(e.to_string()))?;
    let merged = if let Some(tprog) = &tprog {
        let tparams = ParamStore::init(&tcfg, 1).map_err(|e| UsageError(format!("teacher: {e}")))?;
        merge((tprog, &tparams), &student, &[("image", "image")], "teacher_")?
    } else {
        Merged::student_only(&student)
    };
    let losses = default_losses(&merged);
    let tc = TrainConfig { batch_size: batch, threads, ..TrainConfig::default() };
    let mut trainer = Trainer::new(merged, params, &losses, tc)?;
    trainer.set_sync_every_op(a.sync == SyncArg::Op);
    let per_image = cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize;
    let images = random_input(batch * per_image, 2);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % cfg.classes as u32).collect();
    let mut profiled = 0u32;
    let mut phases = Vec::new();
    let s = time(&a.timing, || {
        // Profile the timed steps only (`time` runs the warm-up ones first).
        if a.ops && profiled == a.timing.warmup {
            trainer.set_profiling(true);
        }
        let timed = profiled >= a.timing.warmup;
        profiled += 1;
        let r = trainer.step(&images, &labels)?;
        if timed {
            phases.push(r.phases);
        }
        Ok(())
    })?;
    let median_ms = |f: fn(&StepPhases) -> f64| {
        let mut v: Vec<f64> = phases.iter().map(|p| f(p) * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    let teacher_ms = median_ms(|p| p.teacher_fwd);
    let ops = a.ops.then(|| op_rows(&trainer, a.timing.iters));
    let (model, scale) = model_fields(&cfg);
    let loss_names: Vec<String> = losses.iter().map(|l| l.kind.label()).collect();
    let mut report = json!({
        "bench": if distill { "distill-step" } else { "train-step" },
        "model": model,
        "scale": scale,
        "batch": batch,
        "threads": threads,
        "sync": if a.sync == SyncArg::Op { "op" } else { "batch" },
        "dtype": "f32",
        "isa": Isa::detect().kind().name(),
        "losses": loss_names,
        "ms_median": s.median,
        "ms_p10": s.p10,
        "ms_p90": s.p90,
        "images_per_s": batch as f64 * 1e3 / s.median,
        // Medians of each phase over the timed steps (they need not add up to ms_median).
        "phases_ms": {
            "student_fwd": median_ms(|p| p.student_fwd),
            "teacher_fwd": teacher_ms,
            "losses": median_ms(|p| p.losses),
            "backward": median_ms(|p| p.backward),
            "update": median_ms(|p| p.update),
        },
    });
    if distill {
        report["teacher_fwd_images_per_s"] = json!(batch as f64 * 1e3 / teacher_ms);
    }
    if let Some(rows) = ops {
        report["ops"] = serde_json::Value::Array(rows);
    }
    Ok(report)
}

/// The per-op times of a profiled trainer, per step (`steps` timed), heaviest first.
fn op_rows(trainer: &Trainer, steps: u32) -> Vec<serde_json::Value> {
    let nets = [("student", Some(trainer.student())), ("teacher", trainer.teacher())];
    let mut rows: Vec<(f64, serde_json::Value)> = nets
        .iter()
        .filter_map(|&(net, ex)| ex.map(|ex| (net, ex)))
        .flat_map(|(net, ex)| {
            // Reduce time runs between ops (after batch-norm barriers): rows of their own, when
            // there was any — summing the threads' weight gradients, and the late layers'
            // whole-batch weight gradients.
            let [sums, whole] = ex.reduce_seconds().map(|s| s * 1e3 / f64::from(steps));
            let reduce = [("weight-gradient sums", sums), ("whole-batch weight gradients", whole)]
                .into_iter()
                .filter(|&(_, ms)| ms > 0.0)
                .map(move |(op, ms)| {
                    (ms, json!({"net": net, "op": op, "kind": "Reduce", "fwd_ms": 0.0, "bwd_ms": ms}))
                });
            ex.op_times()
                .into_iter()
                .map(move |(name, kind, [f, b])| {
                    let per = 1e3 / f64::from(steps);
                    let (fwd_ms, bwd_ms) = (f * per, b * per);
                    let row = json!({
                        "net": net,
                        "op": name.to_string(),
                        "kind": format!("{kind:?}"),
                        "fwd_ms": fwd_ms,
                        "bwd_ms": bwd_ms,
                    });
                    // Sorted by the sum of the printed values (not (f + b)·per, which rounds
                    // differently and could order near-equal rows against what a reader adds up).
                    (fwd_ms + bwd_ms, row)
                })
                .chain(reduce)
        })
        .collect();
    rows.sort_by(|x, y| y.0.total_cmp(&x.0));
    rows.into_iter().map(|(_, r)| r).collect()
}
