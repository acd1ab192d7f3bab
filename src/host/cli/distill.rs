//! `tinykd distill`: trains a student against a frozen, merged teacher (prefix `teacher_`) on
//! the losses of `--loss` (default: [`default_losses`]).

use std::path::PathBuf;

use super::fit::{fit, Job, TrainOpts};
use super::model_args::describe;
use super::weights_io::load_params;
use super::{emit, ModelArgs, UsageError};
use crate::dist::{default_losses, merge, parse_losses, Loss, LossKind, Merged, Side, TensorRef};
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
    /// `soft:T,S[,Tt=x][,Ts=x][,T=x]` (teacher and student temperatures, `T=` both; default 1),
    /// each with an optional `*weight`. Teacher tensors are `teacher_<name>`.
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
    for (i, l) in losses.iter().enumerate() {
        let label = l.kind.label();
        if losses[..i].iter().any(|e| e.kind.label() == label) {
            return Err(UsageError(format!(
                "--loss {label} is given twice; give it once, with a weight for more of it (e.g. {label}*2)"
            ))
            .into());
        }
    }
    check_trains_student(&merged, &losses)?;
    let labels: Vec<String> = losses.iter().map(weighted_label).collect();
    let job = Job {
        merged,
        losses,
        opts: &a.opts,
        command: format!("distill {} from {} ({})", describe(&scfg), a.teacher.display(), describe(&tcfg)),
        inputs: vec![("--teacher".into(), a.teacher.clone())],
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

/// A loss's label with its weight when it is not 1 (`ce*0.5`).
fn weighted_label(l: &Loss) -> String {
    if l.weight == 1.0 {
        l.kind.label()
    } else {
        format!("{}*{}", l.kind.label(), l.weight)
    }
}

/// Refuses losses under which the student would learn nothing, each named with the reason: a
/// term whose trained side (`S` of `l2:T,S` and `soft:T,S`, `S1`/`S2` of `fsp`) is a teacher
/// tensor or the input image (no student weight before it: no gradient), an `l2` or `soft` term
/// whose two sides are the same tensor (its value and gradient are always zero), a custom term
/// reading no student tensor, or weights that are all zero. (Spelled `l2:S,T`, with the
/// sides swapped, such a run trained nothing for all its epochs.)
fn check_trains_student(merged: &Merged, losses: &[Loss]) -> Result<(), UsageError> {
    let student = |name: &str, item: &str| -> Result<TensorRef, UsageError> {
        let r = merged.resolve(name, item).map_err(|e| UsageError(e.to_string()))?;
        let why = match r.side {
            Side::Teacher => "a teacher tensor (frozen)",
            Side::Student if r.id == merged.student().input() => "the input image",
            Side::Student => return Ok(r),
        };
        Err(UsageError(format!(
            "--loss {item}: `{name}` is on the trained side but is {why}, so the student gets no gradient; \
             the order is teacher first, then student (e.g. l2:teacher_<name>,<name>)"
        )))
    };
    let mut weighted = false;
    for l in losses {
        let item = l.kind.label();
        let same = |t: &str, s: &TensorRef| -> Result<(), UsageError> {
            let t = merged.resolve(t, &item).map_err(|e| UsageError(e.to_string()))?;
            if t.side == s.side && t.id == s.id {
                return Err(UsageError(format!(
                    "--loss {item}: both sides are `{}`, so the loss and its gradient are always zero",
                    s.name
                )));
            }
            Ok(())
        };
        match &l.kind {
            LossKind::Ce => {}
            LossKind::L2 { teacher, student: s } | LossKind::SoftLabel { teacher, student: s, .. } => {
                same(teacher, &student(s, &item)?)?
            }
            LossKind::Fsp { s1, s2, .. } => {
                student(s1, &item)?;
                student(s2, &item)?;
            }
            LossKind::Custom { names, .. } => {
                let reads_student =
                    names.iter().any(|n| merged.resolve(n, &item).is_ok_and(|r| r.side == Side::Student));
                if !reads_student {
                    return Err(UsageError(format!("--loss {item}: it reads no student tensor, so it trains nothing")));
                }
            }
        }
        weighted |= l.weight != 0.0;
    }
    if !weighted {
        return Err(UsageError("every --loss weight is 0: the student would not learn".into()));
    }
    Ok(())
}
