//! `tinykd distill`: trains a student against a frozen, merged teacher (prefix `teacher_`) on
//! the losses of `--loss` (default: [`default_losses`]).

use std::path::PathBuf;

use super::fit::{fit, Job, TrainOpts};
use super::model_args::describe;
use super::weights_io::load_params;
use super::{emit, ModelArgs, UsageError};
use crate::dist::{default_losses, merge, parse_losses, Loss};
use crate::models;

/// The prefix of the teacher's tensor names in the merged name space.
pub const TEACHER_PREFIX: &str = "teacher_";

/// `tinykd distill`.
#[derive(clap::Args, Debug)]
#[command(mut_arg("model", |a| {
    a.long("student").value_name("M").required(false).default_value("mobilenet_v1").help("The student architecture (default: the tutorial's)")
}))]
pub struct Args {
    /// The trained teacher: a params file or a checkpoint.
    #[arg(long, value_name = "FILE")]
    pub teacher: PathBuf,
    /// The student model.
    #[command(flatten)]
    pub student: ModelArgs,
    /// A loss spec, repeatable, items also `;`-separated: `ce`, `l2:T,S`, `fsp:T1,T2,S1,S2`,
    /// `soft:T,S[,T=x]`, each with an optional `*weight`. Teacher tensors are `teacher_<name>`.
    /// Default: ce + l2:teacher_bn5c_branch2b,depthwise_conv2d_11 when their shapes match,
    /// else `ce + soft:teacher_<logits>,<logits>`.
    #[arg(long = "loss", value_name = "SPEC")]
    pub losses: Vec<String>,
    /// Training options.
    #[command(flatten)]
    pub opts: TrainOpts,
}

/// Runs `distill`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let scfg = a.student.to_config()?;
    let teacher = load_params(&a.teacher)?;
    let tcfg = *teacher.config();
    if (tcfg.in_h, tcfg.in_w, tcfg.in_c) != (scfg.in_h, scfg.in_w, scfg.in_c) {
        return Err(UsageError(format!(
            "the teacher {} takes {}x{}x{} inputs, the student {}x{}x{}",
            a.teacher.display(),
            tcfg.in_h,
            tcfg.in_w,
            tcfg.in_c,
            scfg.in_h,
            scfg.in_w,
            scfg.in_c
        ))
        .into());
    }
    let tprog = models::program(&tcfg).map_err(|e| UsageError(e.to_string()))?;
    let sprog = models::program(&scfg).map_err(|e| UsageError(e.to_string()))?;
    let merged = merge((&tprog, &teacher), &sprog, &[("image", "image")], TEACHER_PREFIX)
        .map_err(|e| UsageError(e.to_string()))?;
    let losses: Vec<Loss> = if a.losses.is_empty() {
        default_losses(&merged)
    } else {
        let mut v = Vec::new();
        for spec in &a.losses {
            v.extend(parse_losses(spec).map_err(|e| UsageError(format!("--loss {spec}: {e}")))?);
        }
        v
    };
    if losses.is_empty() {
        return Err(UsageError("--loss gave no loss".into()).into());
    }
    let labels: Vec<String> = losses.iter().map(|l| l.kind.label()).collect();
    let job = Job {
        merged,
        losses,
        opts: &a.opts,
        command: format!("distill {} from {} ({})", describe(&scfg), a.teacher.display(), describe(&tcfg)),
    };
    let out = fit(job)?;
    emit(&format!(
        "wrote {} ({}, losses {}): test top-1 {:.2}%, top-5 {:.2}% in {:.1} s\n",
        a.opts.out.display(),
        describe(&scfg),
        labels.join(" + "),
        out.test.top1 * 100.0,
        out.test.top5 * 100.0,
        out.seconds
    ))
}
