//! `tinykd train`: trains a model from scratch with cross-entropy (the teacher, or the
//! no-distillation baseline student).

use super::fit::{fit, Job, TrainOpts};
use super::model_args::describe;
use super::{emit, ModelArgs, UsageError};
use crate::dist::{Loss, Merged};
use crate::models;

/// `tinykd train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to train.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training options.
    #[command(flatten)]
    pub opts: TrainOpts,
}

/// Runs `train`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.model.to_config()?;
    let prog = models::program(&cfg).map_err(|e| UsageError(e.to_string()))?;
    let job = Job {
        merged: Merged::student_only(&prog),
        losses: vec![Loss::ce()],
        opts: &a.opts,
        command: format!("train {}", describe(&cfg)),
        inputs: Vec::new(),
    };
    let out = fit(job)?;
    emit(&format!(
        "wrote {} ({}): test top-1 {:.2}%, top-5 {:.2}% in {:.1} s\n",
        a.opts.out.display(),
        describe(&cfg),
        out.test.top1 * 100.0,
        out.test.top5 * 100.0,
        out.seconds
    ))
}
