//! The library training loop: Momentum SGD with L2 weight decay over the student's trainable
//! parameters, on any weighted sum of [`Loss`]es over a [`Merged`] student (+ frozen teacher).
//!
//! One step: a check of the batch (one input per label, labels below the student's classes
//! when a loss reads them; [`TrainError::Data`]); student forward in train mode; teacher
//! forward in eval mode on the student's own input buffer (only when a loss reads a teacher
//! tensor); losses and their gradients ([`Losses::compute`]); a check that every loss value is
//! finite ([`TrainError::NonFinite`]); student backward, which checks every gradient as it
//! sums it ([`TrainError::NonFiniteTensor`] names the first that holds a NaN or an infinity);
//! `v = μ·v + g + wd·p; p −= lr·v` ([`optim::sgd_momentum`]) for every trainable parameter
//! (batch-norm running statistics are updated by the forward, never by the optimizer; the
//! teacher is never touched).
//!
//! A step that fails leaves the trainer as it was: the forward's updates of the running
//! statistics are put back (they are copied before it, a few thousand values), and nothing
//! else changes before the update. The one exception is an update that overflows f32 from
//! finite values (e.g. a learning rate of 1e30): it is reported
//! ([`TrainError::NonFiniteTensor`] with [`Diverged::Update`]) after it wrote its results.
//!
//! [`Trainer::new`] refuses what would only fail later: a momentum outside `[0, 1)`, a
//! negative weight decay, non-finite student parameters (non-finite teacher ones are refused
//! by [`merge`](crate::dist::merge)).
//!
//! Data comes from a [`DataSource`]: anything that fills a batch of normalised NHWC images and
//! labels for given sample indices. Each epoch visits the samples in an order shuffled by a
//! generator seeded with `(seed, epoch)`, in batches of `batch_size`; a last partial batch is
//! dropped in training (small batches make batch-norm statistics noisy) and kept in evaluation.

use std::fmt;
use std::string::String;
use std::time::Instant;
use std::vec::Vec;

use tinykd_kernels::optim::{self, Momentum};
use tinykd_kernels::shape::Logits;
use tinykd_kernels::{loss, Isa, KernelError};

use super::exec::{run_threads, share_out, ExecError, Executor};
use super::sched::Schedule;
use crate::dist::{DistError, Loss, LossValues, Losses, Merged};
use crate::graph::VarKind;
use crate::host::data::Rng;
use crate::params::ParamStore;

/// A dataset the trainer can draw batches from.
pub trait DataSource {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Replaces `images` with samples `indices` as normalised NHWC f32 (`indices.len() · h·w·c`
    /// values) and `labels` with their labels.
    fn fill(&mut self, indices: &[usize], images: &mut Vec<f32>, labels: &mut Vec<u32>) -> Result<(), String>;
}

/// Samples held in memory: `images` is `len · per_sample` NHWC values.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryData {
    images: Vec<f32>,
    labels: Vec<u32>,
    per_sample: usize,
}

impl MemoryData {
    /// `labels.len()` samples of `per_sample` values each (`images.len()` must match).
    pub fn new(images: Vec<f32>, labels: Vec<u32>, per_sample: usize) -> Result<MemoryData, String> {
        if per_sample == 0 || images.len() != labels.len() * per_sample {
            return Err(format!(
                "{} image values for {} labels of {per_sample} values each",
                images.len(),
                labels.len()
            ));
        }
        Ok(MemoryData { images, labels, per_sample })
    }
}

impl DataSource for MemoryData {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn fill(&mut self, indices: &[usize], images: &mut Vec<f32>, labels: &mut Vec<u32>) -> Result<(), String> {
        images.clear();
        labels.clear();
        for &i in indices {
            let img =
                self.images.get(i * self.per_sample..(i + 1) * self.per_sample).ok_or("sample index out of range")?;
            images.extend_from_slice(img);
            labels.push(self.labels[i]);
        }
        Ok(())
    }
}

/// Hyper-parameters of a [`Trainer`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Samples per step (also the evaluation batch).
    pub batch_size: usize,
    /// Worker threads of each executor: 0 is taken as 1, and more threads than `batch_size`
    /// are capped at `batch_size` (the work is shared out by sample).
    pub threads: usize,
    /// Seed of the per-epoch shuffling.
    pub seed: u64,
    /// Momentum `μ`, finite and in `[0, 1)` (0: plain SGD; at 1 or more the velocity never
    /// decays). Paddle's `Momentum` does not check it; [`Trainer::new`] does.
    pub momentum: f32,
    /// L2 weight decay (added to the gradient as `wd·p`), finite and `>= 0`.
    pub weight_decay: f32,
    /// Learning rate per step.
    pub schedule: Schedule,
}

impl Default for TrainConfig {
    /// The tutorial's optimizer `Momentum(0.01, 0.9)`, batch 64, one thread, seed 0.
    fn default() -> Self {
        TrainConfig {
            batch_size: 64,
            threads: 1,
            seed: 0,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::Constant(0.01),
        }
    }
}

/// Why training stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainError {
    /// The executor failed.
    Exec(ExecError),
    /// A loss failed (or did not resolve).
    Dist(DistError),
    /// A loss value was NaN or infinite at `step` (trainable parameters were not updated). Its
    /// message advises smaller loss weights when every loss is finite but their weighted sum is
    /// not, and a lower learning rate only after step 0 (at step 0 no update has run yet).
    NonFinite {
        /// The global step (0-based).
        step: usize,
        /// The losses of that step.
        values: LossValues,
    },
    /// The data source failed or gave a batch of the wrong size.
    Data(String),
    /// An invalid configuration.
    Config(String),
    /// The optimizer or a metric kernel refused its arguments.
    Kernel(KernelError),
    /// A tensor the step computed held a NaN or an infinity at `step`, though every loss was
    /// finite. For [`Diverged::Statistic`] and [`Diverged::Gradient`] the step stopped before
    /// the update and the trainer is as it was before the step; for [`Diverged::Update`] the
    /// update has written its results (see [`Trainer::step`]).
    NonFiniteTensor {
        /// The global step (0-based).
        step: usize,
        /// Where the step found it.
        at: Diverged,
        /// The parameter or statistic (for [`Diverged::Update`], the parameter whose weights or
        /// momentum the update made non-finite).
        name: String,
        /// What is wrong with it, e.g. `has 3 of 216 values not finite (3 NaN; the first at
        /// index 7)`.
        detail: String,
        /// The losses of that step.
        values: LossValues,
    },
}

/// A trainable parameter as the update takes it: its index in the store, its values, its
/// momentum buffer and its gradient.
type Trainable<'a> = (usize, &'a mut [f32], &'a mut [f32], &'a [f32]);

/// Where a step whose losses were finite found a NaN or an infinity
/// ([`TrainError::NonFiniteTensor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diverged {
    /// A batch-norm running statistic, after the student's forward (restored since).
    Statistic,
    /// A trainable parameter's gradient, after the backward (nothing was updated).
    Gradient,
    /// A trainable parameter or its momentum buffer, as the update wrote it.
    Update,
}

impl Diverged {
    /// What held the value, for tensor `name`: `the gradient of conv1_weights`, ...
    pub fn what(self, name: &str) -> String {
        match self {
            Diverged::Statistic => format!("the batch-norm statistic {name} after the forward"),
            Diverged::Gradient => format!("the gradient of {name}"),
            Diverged::Update => format!("the update of {name}"),
        }
    }
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Exec(e) => write!(f, "{e}"),
            TrainError::Dist(e) => write!(f, "{e}"),
            TrainError::NonFinite { step, values } => {
                write!(f, "loss is not finite at step {step} (total {}", values.total)?;
                for (label, w, v) in &values.parts {
                    write!(f, "; {label} ×{w}: {v}")?;
                }
                f.write_str(")")?;
                if values.parts.iter().all(|p| p.2.is_finite()) {
                    f.write_str("; each loss is finite but their weighted sum is not: use smaller loss weights")
                } else if *step == 0 {
                    f.write_str(
                        "; no update has run yet, so the learning rate is not the cause: check the scale of the \
                         inputs, the loss weights and the temperatures",
                    )
                } else {
                    f.write_str("; try a lower learning rate")
                }
            }
            TrainError::Data(e) => write!(f, "data: {e}"),
            TrainError::Config(e) => write!(f, "configuration: {e}"),
            TrainError::Kernel(e) => write!(f, "{e}"),
            TrainError::NonFiniteTensor { step, at, name, detail, values } => {
                write!(f, "{} is not finite at step {step}: it {detail} (loss {})", at.what(name), values.total)?;
                match at {
                    Diverged::Update => f.write_str(
                        "; the update has written its results, so restore the parameters and momentum buffers \
                         from a checkpoint and use a lower learning rate or weight decay",
                    ),
                    _ if *step == 0 => f.write_str(
                        "; nothing was updated; no update has run yet, so the learning rate is not the cause: check \
                         the scale of the inputs and the loss weights",
                    ),
                    _ => f.write_str("; nothing was updated; try a lower learning rate"),
                }
            }
        }
    }
}

impl std::error::Error for TrainError {}

impl From<ExecError> for TrainError {
    fn from(e: ExecError) -> Self {
        TrainError::Exec(e)
    }
}

impl From<DistError> for TrainError {
    fn from(e: DistError) -> Self {
        TrainError::Dist(e)
    }
}

/// What one training step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The global step (0-based, counted over all epochs).
    pub step: usize,
    /// The epoch (0-based; 0 for a bare [`Trainer::step`]).
    pub epoch: usize,
    /// The learning rate used.
    pub lr: f32,
    /// Samples in the batch.
    pub batch: usize,
    /// The loss values.
    pub losses: LossValues,
    /// Where the step's wall-clock time went.
    pub phases: StepPhases,
}

/// Wall-clock seconds of one step's phases, in the order they run (each phase uses all the
/// threads).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepPhases {
    /// The student's train-mode forward (its few-row convs' weight packing included).
    pub student_fwd: f64,
    /// The frozen teacher's eval forward (0 without a teacher).
    pub teacher_fwd: f64,
    /// The losses and their gradients.
    pub losses: f64,
    /// The student's backward.
    pub backward: f64,
    /// The optimizer's update of every trainable parameter.
    pub update: f64,
}

/// Accuracy and cross-entropy of the student over a dataset, eval mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalReport {
    /// Samples evaluated.
    pub samples: usize,
    /// Fraction whose label is the top logit.
    pub top1: f64,
    /// Fraction whose label is among the five highest logits (all classes if fewer than 5).
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// The training loop over a student (and optional frozen teacher); see the
/// [module docs](self).
#[derive(Debug)]
pub struct Trainer {
    cfg: TrainConfig,
    isa: Isa,
    merged: Merged,
    losses: Losses,
    params: ParamStore,
    /// Per store entry: momentum buffer (empty for statistics) and executor gradient slot.
    velocity: Vec<Vec<f32>>,
    grad_of: Vec<Option<usize>>,
    student: Executor,
    teacher: Option<Executor>,
    step: usize,
    images: Vec<f32>,
    labels: Vec<u32>,
    /// The running statistics as they were before the current step's forward (one entry per
    /// statistic of `params`, in order), put back when the step fails.
    saved_stats: Vec<Vec<f32>>,
}

impl Trainer {
    /// Makes both executors' threads wait for each other after every op
    /// ([`Executor::set_sync_every_op`]): for measuring op-level against batch-level
    /// parallelism; the step's results do not change.
    pub fn set_sync_every_op(&mut self, on: bool) {
        self.student.set_sync_every_op(on);
        if let Some(t) = &mut self.teacher {
            t.set_sync_every_op(on);
        }
    }

    /// Starts (or stops) timing every op of the student and the teacher executors, from zero
    /// ([`Executor::set_profiling`]; read with [`Trainer::student`] / [`Trainer::teacher`] and
    /// [`Executor::op_times`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.student.set_profiling(on);
        if let Some(t) = &mut self.teacher {
            t.set_profiling(on);
        }
    }

    /// A trainer of `merged`'s student, starting from `params`, on `losses`. Refuses
    /// ([`TrainError::Config`]) a batch size of 0, no losses, a momentum outside `[0, 1)` or a
    /// negative weight decay (or either not finite), a schedule the [`Schedule`] constructors
    /// would refuse ([`Schedule::validate`]), parameters of another model and parameters or
    /// statistics with a NaN or infinite value (naming the tensor, how many values and the
    /// first index); also a batch whose buffers would not fit in the address space
    /// ([`ExecError::BatchTooLarge`]) and losses [`Losses::new`] refuses.
    pub fn new(merged: Merged, params: ParamStore, losses: &[Loss], cfg: TrainConfig) -> Result<Trainer, TrainError> {
        if cfg.batch_size == 0 {
            return Err(TrainError::Config("the batch size must be at least 1".into()));
        }
        if losses.is_empty() {
            return Err(TrainError::Config("at least one loss is needed".into()));
        }
        if !(cfg.momentum.is_finite() && (0.0..1.0).contains(&cfg.momentum)) {
            return Err(TrainError::Config(format!(
                "the momentum is {}; it must be finite, >= 0 and below 1 (0 is plain SGD; at 1 or more the \
                 velocity never decays)",
                cfg.momentum
            )));
        }
        if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
            return Err(TrainError::Config(format!(
                "the weight decay is {}; it must be finite and >= 0 (0 for none)",
                cfg.weight_decay
            )));
        }
        cfg.schedule.validate().map_err(|e| TrainError::Config(e.to_string()))?;
        if *params.config() != merged.student().config {
            return Err(TrainError::Config(format!(
                "the parameters are for {:?}, the student is {:?}",
                params.config(),
                merged.student().config
            )));
        }
        if let Some((name, bad)) = params.first_non_finite() {
            return Err(TrainError::Config(format!(
                "the student's `{name}` {bad}; start from finite weights (a checkpoint written before the run \
                 diverged, or a fresh initialisation)"
            )));
        }
        let isa = Isa::detect();
        let resolved = Losses::new(&merged, losses)?;
        let mut student = Executor::try_with_isa(merged.student(), cfg.batch_size, cfg.threads, isa)?;
        // Each batch norm and the ReLU after it in one pass (bit-identical), except where a
        // loss reads the batch norm's output.
        student.fuse_bn_relu(&resolved.student_tensors());
        let teacher = match merged.teacher() {
            Some(t) if resolved.needs_teacher() => {
                let mut ex = Executor::try_with_isa(&t.program, cfg.batch_size, cfg.threads, isa)?;
                // The teacher's parameters live in `merged`, which the trainer never changes:
                // fold its batch norms (and ReLUs) into its convs, except what the losses read.
                let read = resolved.teacher_tensors();
                ex.fold_frozen(&t.params, &read)?;
                ex.set_eval_targets(Some(&read))?;
                Some(ex)
            }
            _ => None,
        };
        let slots: Vec<&str> = student.param_grads().map(|(n, _)| n).collect();
        let grad_of: Vec<Option<usize>> =
            params.params().iter().map(|p| slots.iter().position(|&n| n == p.name)).collect();
        let velocity = params
            .params()
            .iter()
            .map(|p| if p.kind == VarKind::Parameter { vec![0.0; p.data.len()] } else { Vec::new() })
            .collect();
        Ok(Trainer {
            cfg,
            isa,
            merged,
            losses: resolved,
            params,
            velocity,
            grad_of,
            student,
            teacher,
            step: 0,
            images: Vec::new(),
            labels: Vec::new(),
            saved_stats: Vec::new(),
        })
    }

    /// The student's parameters and statistics.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The student's parameters and statistics, consuming the trainer.
    pub fn into_params(self) -> ParamStore {
        self.params
    }

    /// The student's parameters and statistics, mutably (e.g. to restore a checkpoint; names
    /// and dims must not change).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// The momentum buffers, one per entry of [`Trainer::params`] in the same order (empty for
    /// batch-norm statistics), e.g. to save in a checkpoint.
    pub fn momentum_buffers(&self) -> &[Vec<f32>] {
        &self.velocity
    }

    /// Replaces the momentum buffers (e.g. from a checkpoint); they must have the layout of
    /// [`Trainer::momentum_buffers`].
    pub fn set_momentum_buffers(&mut self, buffers: Vec<Vec<f32>>) -> Result<(), TrainError> {
        let same =
            buffers.len() == self.velocity.len() && buffers.iter().zip(&self.velocity).all(|(a, b)| a.len() == b.len());
        if !same {
            return Err(TrainError::Config("momentum buffers do not match the parameters".into()));
        }
        self.velocity = buffers;
        Ok(())
    }

    /// The merged name space (and the frozen teacher's parameters).
    pub fn merged(&self) -> &Merged {
        &self.merged
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Steps taken so far (the next step's index).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Sets the step counter (e.g. when resuming), which drives the learning-rate schedule.
    pub fn set_step_count(&mut self, step: usize) {
        self.step = step;
    }

    /// The student executor (activations and gradients of the last step). Its batch norms run
    /// with their ReLUs ([`Executor::fuse_bn_relu`]): a batch norm's output that no loss reads
    /// is not kept (read the ReLU's output instead).
    pub fn student(&self) -> &Executor {
        &self.student
    }

    /// The teacher executor, if a loss reads teacher tensors. Its forward computes only what
    /// the tensors the losses read depend on ([`Executor::set_eval_targets`]), with its batch
    /// norms folded into its convs ([`Executor::fold_frozen`]): only those tensors can be read
    /// after a step — [`Executor::logits`] and [`Executor::tensor`] panic on the others (e.g.
    /// the logits when the losses read only a hint tensor); [`Executor::activation`] returns
    /// `None` for them.
    pub fn teacher(&self) -> Option<&Executor> {
        self.teacher.as_ref()
    }

    /// One step on a batch (`images` NHWC normalised, one label per sample; at most
    /// `batch_size` samples). A batch whose images are not one input per label, or (when a
    /// loss reads labels: cross-entropy) with a label not below the student's classes, is
    /// refused before anything runs ([`TrainError::Data`] naming the sample's place in the
    /// batch).
    ///
    /// A NaN or an infinity stops the step: in a loss ([`TrainError::NonFinite`]), in a
    /// running statistic after the forward or in a gradient ([`TrainError::NonFiniteTensor`],
    /// naming the tensor). The step then leaves the trainer as it was (the statistics the
    /// forward updated are put back; nothing else has changed), so a caller may lower the
    /// learning rate and go on. Only an update that overflows f32 from finite gradients,
    /// weights and momentum (far beyond any useful learning rate or weight decay) fails after
    /// writing ([`Diverged::Update`]): the weights and momentum buffers then hold non-finite
    /// values; restore them from the last good checkpoint ([`Trainer::params_mut`],
    /// [`Trainer::set_momentum_buffers`], [`Trainer::set_step_count`]).
    pub fn step(&mut self, images: &[f32], labels: &[u32]) -> Result<StepReport, TrainError> {
        self.step_in_epoch(images, labels, None, 0)
    }

    /// Refuses a batch whose `images` are not one student input per label, whose labels are
    /// not one per index of `indices` (when the batch came from a data source), or, when
    /// `labels_used`, with a label not below the student's classes. Samples are named by
    /// their index in the data source when `indices` is known, else by their place in the
    /// batch.
    fn check_batch(
        &self,
        images: &[f32],
        labels: &[u32],
        indices: Option<&[usize]>,
        labels_used: bool,
    ) -> Result<(), TrainError> {
        let student = self.merged.student();
        let per = student.tensor(student.input()).shape.numel();
        if labels.len() * per != images.len() {
            return Err(TrainError::Data(format!(
                "{} labels for {} image values ({per} per sample)",
                labels.len(),
                images.len()
            )));
        }
        if let Some(idx) = indices.filter(|idx| idx.len() != labels.len()) {
            return Err(TrainError::Data(format!(
                "the data source gave {} samples for the {} asked for",
                labels.len(),
                idx.len()
            )));
        }
        let classes = student.tensor(student.output()).shape.c as usize;
        if let Some(k) = labels.iter().position(|&l| l as usize >= classes).filter(|_| labels_used) {
            let sample = match indices {
                Some(idx) => format!("sample {}", idx[k]),
                None => format!("sample {k} of the batch"),
            };
            return Err(TrainError::Data(format!(
                "{sample} has label {}, but the student has {classes} classes: labels must be below {classes}",
                labels[k]
            )));
        }
        Ok(())
    }

    fn step_in_epoch(
        &mut self,
        images: &[f32],
        labels: &[u32],
        indices: Option<&[usize]>,
        epoch: usize,
    ) -> Result<StepReport, TrainError> {
        self.check_batch(images, labels, indices, self.losses.needs_labels())?;
        let mut phases = StepPhases::default();
        self.save_statistics();
        let values = match self.forward_backward(images, labels, &mut phases) {
            Ok(v) => v,
            Err(e) => {
                self.restore_statistics();
                return Err(e);
            }
        };
        let clock = Instant::now();
        let lr = self.cfg.schedule.lr(self.step);
        self.update(lr, &values)?;
        phases.update = clock.elapsed().as_secs_f64();
        let report = StepReport { step: self.step, epoch, lr, batch: labels.len(), losses: values, phases };
        self.step += 1;
        Ok(report)
    }

    /// The step up to the update: forwards, losses (refused when not finite), the check of the
    /// running statistics, backward and the check of the gradients. Returns the losses.
    fn forward_backward(
        &mut self,
        images: &[f32],
        labels: &[u32],
        phases: &mut StepPhases,
    ) -> Result<LossValues, TrainError> {
        let mut clock = Instant::now();
        let mut lap = |slot: &mut f64| {
            let now = Instant::now();
            *slot = (now - clock).as_secs_f64();
            clock = now;
        };
        self.student.forward_train(&mut self.params, images)?;
        lap(&mut phases.student_fwd);
        if let (Some(tex), Some(t)) = (self.teacher.as_mut(), self.merged.teacher()) {
            // The teacher reads the student's input buffer in place (`image` is mapped).
            tex.forward_eval_of_finite(&t.params, self.student.input())?;
            lap(&mut phases.teacher_fwd);
        }
        let (values, seeds) = self.losses.compute(self.isa, &self.student, self.teacher.as_ref(), labels)?;
        lap(&mut phases.losses);
        let step = self.step;
        if !values.total.is_finite() || values.parts.iter().any(|p| !p.2.is_finite()) {
            return Err(TrainError::NonFinite { step, values });
        }
        let bad_stat = self.params.params().iter().filter(|p| p.kind == VarKind::Statistic).find_map(|p| {
            let detail = crate::params::non_finite(&p.data)?;
            Some((p.name.clone(), detail))
        });
        if let Some((name, detail)) = bad_stat {
            return Err(TrainError::NonFiniteTensor { step, at: Diverged::Statistic, name, detail, values });
        }
        let seeds: Vec<_> = seeds.iter().map(|(id, g)| (*id, g.as_slice())).collect();
        self.student.backward(&self.params, &seeds)?;
        lap(&mut phases.backward);
        if let Some((name, g)) = self.student.non_finite_grad() {
            let detail = crate::params::non_finite(g).unwrap_or_else(|| "is not finite".into());
            return Err(TrainError::NonFiniteTensor {
                step,
                at: Diverged::Gradient,
                name: name.into(),
                detail,
                values,
            });
        }
        Ok(values)
    }

    /// `v = μ·v + g + wd·p; p −= lr·v` for every trainable parameter, shared out over the
    /// threads. Names the first parameter (in store order) whose weights or momentum it made
    /// non-finite ([`Diverged::Update`], with the step's loss `values`).
    fn update(&mut self, lr: f32, values: &LossValues) -> Result<(), TrainError> {
        let h = Momentum { lr, mu: self.cfg.momentum, wd: self.cfg.weight_decay };
        let grads: Vec<&[f32]> = self.student.param_grads().map(|(_, g)| g).collect();
        // The trainable parameters (with store index, velocity and gradient).
        let trainable: Vec<Trainable<'_>> = self
            .params
            .params_mut()
            .iter_mut()
            .zip(&mut self.velocity)
            .zip(&self.grad_of)
            .enumerate()
            .filter_map(|(i, ((p, v), slot))| match (p.kind, slot) {
                (VarKind::Parameter, Some(s)) => Some((i, &mut p.data[..], &mut v[..], grads[*s])),
                _ => None,
            })
            .collect();
        let isa = self.isa;
        let shares = share_out(trainable, self.student.threads(), |t| t.1.len());
        let results = run_threads(shares.into_iter().map(|share| {
            move || {
                let mut first_bad = None;
                for (i, p, v, g) in share {
                    if !optim::sgd_momentum(isa, h, p, g, v)? && first_bad.is_none() {
                        first_bad = Some(i);
                    }
                }
                Ok::<_, KernelError>(first_bad)
            }
        }));
        let mut first_bad = None;
        for r in results {
            first_bad = first_bad.or(r.map_err(TrainError::Kernel)?);
        }
        let Some(i) = first_bad else { return Ok(()) };
        let p = &self.params.params()[i];
        let detail = match crate::params::non_finite(&p.data) {
            Some(d) => format!("wrote a weight tensor that now {d}"),
            None => match crate::params::non_finite(&self.velocity[i]) {
                Some(d) => format!("wrote a momentum buffer that now {d}"),
                None => "wrote a NaN or an infinity".into(),
            },
        };
        let (step, name, values) = (self.step, p.name.clone(), values.clone());
        Err(TrainError::NonFiniteTensor { step, at: Diverged::Update, name, detail, values })
    }

    /// Copies the running statistics (before a forward that updates them).
    fn save_statistics(&mut self) {
        let stats = self.params.params().iter().filter(|p| p.kind == VarKind::Statistic);
        self.saved_stats.resize_with(stats.clone().count(), Vec::new);
        for (saved, p) in self.saved_stats.iter_mut().zip(stats) {
            saved.clear();
            saved.extend_from_slice(&p.data);
        }
    }

    /// Puts back the running statistics [`Trainer::save_statistics`] copied.
    fn restore_statistics(&mut self) {
        let stats = self.params.params_mut().iter_mut().filter(|p| p.kind == VarKind::Statistic);
        for (saved, p) in self.saved_stats.iter().zip(stats) {
            p.data.copy_from_slice(saved);
        }
    }

    /// One epoch over `data` (shuffled by `(seed, epoch)`, last partial batch dropped), calling
    /// `on_step` after every step. Returns the mean total loss over the epoch's steps. Each
    /// batch is checked as [`Trainer::step`] does (a bad sample is named by its index in
    /// `data`).
    ///
    /// A step that fails stops the epoch with its error (see [`Trainer::step`]: the trainer is
    /// then as it was before that step, unless the update overflowed).
    pub fn train_epoch(
        &mut self,
        data: &mut dyn DataSource,
        epoch: usize,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<f64, TrainError> {
        let bs = self.cfg.batch_size;
        if data.len() < bs {
            return Err(TrainError::Data(format!("{} samples are fewer than one batch of {bs}", data.len())));
        }
        let mut order: Vec<usize> = (0..data.len()).collect();
        Rng::stream(self.cfg.seed, epoch as u64).shuffle(&mut order);
        let mut images = std::mem::take(&mut self.images);
        let mut labels = std::mem::take(&mut self.labels);
        let mut sum = 0.0f64;
        let mut steps = 0usize;
        let result = (|| {
            for idx in order.chunks_exact(bs) {
                data.fill(idx, &mut images, &mut labels).map_err(TrainError::Data)?;
                let r = self.step_in_epoch(&images, &labels, Some(idx), epoch)?;
                sum += r.losses.total as f64;
                steps += 1;
                on_step(&r);
            }
            Ok(sum / steps as f64)
        })();
        self.images = images;
        self.labels = labels;
        result
    }

    /// Evaluates the student in eval mode over all of `data` in batches of `batch_size`. Each
    /// batch is checked as in training ([`TrainError::Data`]: images not one input per label,
    /// not as many samples as asked for, or a label not below the student's classes, naming
    /// the sample's index in `data`).
    pub fn evaluate(&mut self, data: &mut dyn DataSource) -> Result<EvalReport, TrainError> {
        let n = data.len();
        if n == 0 {
            return Err(TrainError::Data("nothing to evaluate".into()));
        }
        let classes = self.merged.student().tensor(self.merged.student().output()).shape.c as usize;
        let (mut top1, mut top5, mut ce) = (0usize, 0usize, 0.0f64);
        let mut images = std::mem::take(&mut self.images);
        let mut labels = std::mem::take(&mut self.labels);
        let order: Vec<usize> = (0..n).collect();
        let result = (|| {
            for idx in order.chunks(self.cfg.batch_size) {
                data.fill(idx, &mut images, &mut labels).map_err(TrainError::Data)?;
                self.check_batch(&images, &labels, Some(idx), true)?;
                self.student.forward_eval(&self.params, &images)?;
                let z = self.student.logits();
                let sh = Logits::new(idx.len(), classes);
                top1 += loss::topk_correct(&sh, z, &labels, 1).map_err(TrainError::Kernel)?;
                top5 += loss::topk_correct(&sh, z, &labels, 5.min(classes)).map_err(TrainError::Kernel)?;
                ce += loss::softmax_ce(self.isa, &sh, z, &labels, None).map_err(TrainError::Kernel)? as f64
                    * idx.len() as f64;
            }
            Ok(EvalReport {
                samples: n,
                top1: top1 as f64 / n as f64,
                top5: top5 as f64 / n as f64,
                loss: ce / n as f64,
            })
        })();
        self.images = images;
        self.labels = labels;
        result
    }
}
