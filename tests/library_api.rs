//! The public library API refuses bad input up front with errors that name it: non-finite
//! teacher or student parameters, losses whose trained side is a teacher tensor, an empty
//! teacher prefix, invalid optimizer settings, batches of the wrong size and out-of-range labels
//! in training and evaluation; a non-finite loss at step 0 does not blame the learning rate; a
//! non-finite gradient or running statistic stops the step and leaves the trainer as it was, an
//! overflowing update is named; and the documented behaviour of the teacher executor's
//! accessors.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tinykd::dist::{self, merge, DistError, Loss, Merged};
use tinykd::graph::Program;
use tinykd::models;
use tinykd::params::ParamStore;
use tinykd::train::{Diverged, MemoryData, Schedule, TrainConfig, TrainError, Trainer};
use tinykd::ModelConfig;

/// MobileNetV1 at 0.25 width, 32x32x3 inputs, 10 classes.
fn tiny(seed: u64) -> (Program, ParamStore) {
    let cfg = ModelConfig::mobilenet_v1(250);
    (models::program(&cfg).unwrap(), ParamStore::init(&cfg, seed).unwrap())
}

const PER: usize = 32 * 32 * 3;

/// `n` deterministic normalised images in [-1, 1].
fn images(n: usize) -> Vec<f32> {
    (0..n * PER).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect()
}

/// Batch 2, one thread, the default optimizer.
fn cfg() -> TrainConfig {
    TrainConfig { batch_size: 2, threads: 1, ..TrainConfig::default() }
}

/// A student and a same-architecture teacher merged as `teacher_`.
fn pair() -> (Merged, ParamStore) {
    let ((tprog, tparams), (sprog, sparams)) = (tiny(1), tiny(2));
    (merge((&tprog, &tparams), &sprog, &[("image", "image")], "teacher_").unwrap(), sparams)
}

#[test]
fn merge_refuses_non_finite_teacher_parameters() {
    let ((tprog, mut tparams), (sprog, _)) = (tiny(1), tiny(2));
    let w = &mut tparams.get_mut("conv2_1_sep_weights").unwrap().data;
    let len = w.len();
    (w[5], w[9]) = (f32::NAN, f32::NEG_INFINITY);
    let e = merge((&tprog, &tparams), &sprog, &[("image", "image")], "teacher_").unwrap_err();
    assert!(matches!(e, DistError::TeacherParams { .. }), "{e:?}");
    let msg = e.to_string();
    for part in ["`conv2_1_sep_weights`", &format!("2 of {len} values"), "1 NaN, 1 -Inf", "first at index 5"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    // A running statistic counts too: the frozen teacher's batch norms use them.
    let ((tprog, mut tparams), (sprog, _)) = (tiny(1), tiny(2));
    tparams.get_mut("conv1_bn_variance").unwrap().data[0] = f32::INFINITY;
    let e = merge((&tprog, &tparams), &sprog, &[("image", "image")], "teacher_").unwrap_err().to_string();
    assert!(e.contains("`conv1_bn_variance`") && e.contains("first at index 0"), "{e}");
}

#[test]
fn trainer_refuses_non_finite_student_parameters() {
    let (prog, mut params) = tiny(2);
    params.get_mut("fc7_offset").unwrap().data[3] = f32::NAN;
    let e = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg()).unwrap_err();
    assert!(matches!(e, TrainError::Config(_)), "{e:?}");
    let msg = e.to_string();
    for part in ["`fc7_offset`", "1 of 10 values", "1 NaN", "first at index 3"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
}

/// A custom loss over the student logits whose value is `value` (zero gradients).
fn constant_loss(value: f32) -> Loss {
    let f = Arc::new(move |args: &[dist::TensorArg<'_>]| Ok((value, vec![vec![0.0; args[0].data.len()]])));
    Loss::custom("constant", &["fc7"], f)
}

#[test]
fn non_finite_loss_advice_depends_on_the_step_and_the_parts() {
    let (prog, params) = tiny(2);
    let x = images(2);
    let run = |losses: &[Loss], step: usize| {
        let mut t = Trainer::new(Merged::student_only(&prog), params.clone(), losses, cfg()).unwrap();
        t.set_step_count(step);
        let e = t.step(&x, &[0, 1]).unwrap_err();
        assert!(matches!(e, TrainError::NonFinite { .. }), "{e:?}");
        e.to_string()
    };
    // At step 0 no update has run: the learning rate cannot be the cause.
    let e = run(&[constant_loss(f32::NAN)], 0);
    assert!(e.contains("at step 0") && !e.contains("lower learning rate"), "{e}");
    assert!(e.contains("the learning rate is not the cause") && e.contains("loss weights"), "{e}");
    // After updates it can be.
    let e = run(&[constant_loss(f32::NAN)], 5);
    assert!(e.contains("at step 5") && e.contains("try a lower learning rate"), "{e}");
    // Finite parts whose weighted sum overflows: the weights are the cause, at any step.
    let big = [constant_loss(3e38), constant_loss(3e38)];
    for step in [0, 5] {
        let e = run(&big, step);
        assert!(e.contains("smaller loss weights") && !e.contains("learning rate"), "{e}");
    }
}

#[test]
fn losses_refuse_a_teacher_tensor_on_the_trained_side() {
    let (merged, _) = pair();
    let zero = Arc::new(|args: &[dist::TensorArg<'_>]| Ok((0.0, vec![Vec::new(); args.len()])));
    for (loss, tensor, which) in [
        (Loss::l2("teacher_conv5_6_dw", "teacher_conv5_6_dw"), "teacher_conv5_6_dw", "second argument"),
        (Loss::soft_label("fc7", "teacher_fc7", 1.0, 1.0), "teacher_fc7", "second argument"),
        (
            Loss::fsp("teacher_conv5_4_sep_bn", "teacher_conv5_5_sep_bn", "conv5_4_sep_bn", "teacher_conv5_5_sep_bn"),
            "teacher_conv5_5_sep_bn",
            "fourth argument",
        ),
        (
            Loss::fsp("teacher_conv5_4_sep_bn", "teacher_conv5_5_sep_bn", "teacher_conv5_4_sep_bn", "conv5_5_sep_bn"),
            "teacher_conv5_4_sep_bn",
            "third argument",
        ),
    ] {
        let e = dist::Losses::new(&merged, &[Loss::ce(), loss.clone()]).unwrap_err();
        assert!(matches!(e, DistError::NotTrained { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("`{tensor}` is a teacher tensor")), "{msg}");
        assert!(msg.contains(&format!("{which} must be a student tensor")), "{msg}");
        assert!(msg.starts_with(&loss.kind.label()), "names the loss: {msg}");
        // The trainer refuses it too (it resolves its losses with `Losses::new`).
        let e = Trainer::new(merged.clone(), tiny(2).1, &[loss], cfg()).unwrap_err();
        assert!(matches!(e, TrainError::Dist(DistError::NotTrained { .. })), "{e:?}");
    }
    let e = dist::Losses::new(&merged, &[Loss::custom("only_teacher", &["teacher_fc7"], zero.clone())]).unwrap_err();
    assert!(matches!(e, DistError::NotTrained { .. }) && e.to_string().contains("teacher_fc7"), "{e}");
    let e = dist::Losses::new(&merged, &[Loss::custom("nothing", &[], zero.clone())]).unwrap_err();
    assert!(e.to_string().contains("reads no student tensor"), "{e}");
    // The right order, and a custom loss reading both sides, are fine.
    dist::Losses::new(
        &merged,
        &[
            Loss::l2("teacher_conv5_6_dw", "conv5_6_dw"),
            Loss::soft_label("teacher_fc7", "fc7", 2.0, 2.0),
            Loss::fsp("teacher_conv5_4_sep_bn", "teacher_conv5_5_sep_bn", "conv5_4_sep_bn", "conv5_5_sep_bn"),
            Loss::custom("both", &["teacher_fc7", "fc7"], zero),
        ],
    )
    .unwrap();
}

#[test]
fn merge_refuses_an_empty_prefix() {
    let ((tprog, tparams), (sprog, _)) = (tiny(1), tiny(2));
    let e = merge((&tprog, &tparams), &sprog, &[("image", "image")], "").unwrap_err();
    assert!(matches!(&e, DistError::Prefix { prefix, .. } if prefix.is_empty()), "{e:?}");
    assert!(e.to_string().contains("must not be empty") && e.to_string().contains("`conv1`"), "{e}");
    // Any other prefix no student name starts with is fine.
    let m = merge((&tprog, &tparams), &sprog, &[("image", "image")], "t.").unwrap();
    assert_eq!(m.resolve("t.conv1", "").unwrap().side, dist::Side::Teacher);
    assert_eq!(m.resolve("conv1", "").unwrap().side, dist::Side::Student);
}

#[test]
fn optimizer_settings_are_checked_up_front() {
    let (prog, params) = tiny(2);
    let new = |momentum: f32, weight_decay: f32| {
        let c = TrainConfig { momentum, weight_decay, ..cfg() };
        Trainer::new(Merged::student_only(&prog), params.clone(), &[Loss::ce()], c)
    };
    for mu in [f32::NAN, f32::INFINITY, -0.1, 1.0, 1.5] {
        let e = new(mu, 0.0).unwrap_err();
        assert!(matches!(&e, TrainError::Config(m) if m.contains(&format!("the momentum is {mu}"))), "{mu}: {e}");
        assert!(e.to_string().contains("below 1"), "{e}");
    }
    for wd in [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -1e-4] {
        let e = new(0.9, wd).unwrap_err();
        assert!(matches!(&e, TrainError::Config(m) if m.contains(&format!("the weight decay is {wd}"))), "{wd}: {e}");
    }
    // Plain SGD without decay, and the tutorial's settings, stay legal.
    let mut t = new(0.0, 0.0).unwrap();
    t.step(&images(2), &[0, 1]).unwrap();
    new(0.9, 5e-4).unwrap();
}

#[test]
fn evaluate_checks_the_batch_size() {
    let (prog, params) = tiny(2);
    let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg()).unwrap();
    // Half-size samples: 4 "samples" whose values make 2 real inputs.
    let mut data = MemoryData::new(images(2), vec![0, 1, 2, 3], PER / 2).unwrap();
    let e = t.evaluate(&mut data).unwrap_err();
    assert!(matches!(e, TrainError::Data(_)), "{e:?}");
    assert_eq!(e.to_string(), format!("data: 2 labels for {PER} image values ({PER} per sample)"));
    let mut ok = MemoryData::new(images(3), vec![0, 1, 2], PER).unwrap();
    assert_eq!(t.evaluate(&mut ok).unwrap().samples, 3);
}

#[test]
fn labels_out_of_range_are_named_before_running() {
    let (prog, params) = tiny(2);
    let mut t = Trainer::new(Merged::student_only(&prog), params.clone(), &[Loss::ce()], cfg()).unwrap();
    let e = t.step(&images(2), &[3, 10]).unwrap_err();
    assert!(matches!(e, TrainError::Data(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "data: sample 1 of the batch has label 10, but the student has 10 classes: labels must be below 10"
    );
    assert_eq!(t.step_count(), 0, "nothing ran");
    // Evaluation and epochs name the sample's index in the data source.
    let mut data = MemoryData::new(images(4), vec![0, 1, 2, u32::MAX], PER).unwrap();
    let e = t.evaluate(&mut data).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("data: sample 3 has label {}, but the student has 10 classes: labels must be below 10", u32::MAX)
    );
    let e = t.train_epoch(&mut data, 0, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("sample 3 has label 4294967295"), "{e}");
    // Losses that read no label do not check them.
    let mut t = Trainer::new(Merged::student_only(&prog), params, &[constant_loss(1.0)], cfg()).unwrap();
    t.step(&images(2), &[3, 99]).unwrap();
}

/// A custom loss on `fc7` of value 1 whose gradient is the f32 in `seed` (its bits) at class 0
/// of every sample, 0 elsewhere.
fn seeding_loss(seed: Arc<AtomicU32>) -> Loss {
    let f = Arc::new(move |args: &[dist::TensorArg<'_>]| {
        let s = f32::from_bits(seed.load(Ordering::Relaxed));
        Ok((1.0, vec![(0..args[0].data.len()).map(|i| if i % 10 == 0 { s } else { 0.0 }).collect()]))
    });
    Loss::custom("seeding", &["fc7"], f)
}

/// The bits of everything a step may change: parameters and statistics, momentum buffers, the
/// step count.
fn state(t: &Trainer) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, usize) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
    let params = t.params().params().iter().map(|p| bits(&p.data)).collect();
    (params, t.momentum_buffers().iter().map(|v| bits(v)).collect(), t.step_count())
}

#[test]
fn a_non_finite_gradient_stops_the_step_and_changes_nothing() {
    // A NaN seed reaches every gradient (the first in program order is conv1's, summed last);
    // with the fc's weights zeroed, 3e38 at class 0 of both samples overflows only the fc's own
    // gradients (summed first, after the last batch norm's backward): the backward's checks
    // are right on both sides of the segment sums, on one thread and on two.
    for threads in [1, 2] {
        for (bad, zero_fc, first) in [(f32::NAN, false, "conv1_weights"), (3e38, true, "fc7_")] {
            let (prog, params) = tiny(2);
            let seed = Arc::new(AtomicU32::new(0.5f32.to_bits()));
            let c = TrainConfig { threads, ..cfg() };
            let mut t = Trainer::new(Merged::student_only(&prog), params, &[seeding_loss(seed.clone())], c).unwrap();
            t.step(&images(2), &[0, 1]).unwrap();
            if zero_fc {
                t.params_mut().get_mut("fc7_weights").unwrap().data.fill(0.0);
            }
            let before = state(&t);
            seed.store(bad.to_bits(), Ordering::Relaxed);
            let e = t.step(&images(2), &[0, 1]).unwrap_err();
            let TrainError::NonFiniteTensor { step: 1, at: Diverged::Gradient, name, .. } = &e else { panic!("{e:?}") };
            assert!(name.starts_with(first), "{e}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("the gradient of {name} is not finite at step 1: it has ")), "{msg}");
            assert!(msg.ends_with("nothing was updated; try a lower learning rate"), "{msg}");
            // The named gradient is the first that a scan finds, and (for the fc case) the others are finite.
            let scan = t.student().param_grads().find(|(_, g)| g.iter().any(|v| !v.is_finite()));
            assert_eq!(scan.map(|(n, _)| n), Some(name.as_str()));
            if zero_fc {
                let bad: Vec<&str> = t
                    .student()
                    .param_grads()
                    .filter(|(_, g)| g.iter().any(|v| !v.is_finite()))
                    .map(|(n, _)| n)
                    .collect();
                assert!(bad.iter().all(|n| n.starts_with("fc7_")), "{bad:?}");
            }
            assert_eq!(state(&t), before, "the failed step changed the trainer");
            // The caller may go on from the same state.
            seed.store(0.5f32.to_bits(), Ordering::Relaxed);
            t.step(&images(2), &[0, 1]).unwrap();
        }
    }
}

#[test]
fn non_finite_running_statistics_stop_the_step_and_are_put_back() {
    // Inputs of 1e20 give conv1 outputs whose batch variance overflows: the running variance
    // becomes infinite while the batch norm's output (scaled by 1/√∞ = 0) and the loss stay
    // finite.
    let (prog, params) = tiny(2);
    let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg()).unwrap();
    t.step(&images(2), &[0, 1]).unwrap();
    let before = state(&t);
    let huge: Vec<f32> = images(2).iter().map(|v| v * 1e20).collect();
    let e = t.step(&huge, &[0, 1]).unwrap_err();
    let TrainError::NonFiniteTensor { step: 1, at: Diverged::Statistic, name, .. } = &e else { panic!("{e:?}") };
    assert!(name.starts_with("conv1_bn_"), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("the batch-norm statistic {name} after the forward is not finite at step 1")),
        "{e}"
    );
    assert_eq!(state(&t), before, "the statistics were not put back");
}

#[test]
fn an_overflowing_update_is_an_error_naming_the_parameter() {
    // Documented on `Trainer::step`: an update that overflows from finite values fails after
    // writing. `lr · wd · p` overflows for every non-zero weight.
    let (prog, params) = tiny(2);
    let c = TrainConfig { schedule: Schedule::constant(1e30).unwrap(), weight_decay: 1e30, ..cfg() };
    let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], c).unwrap();
    let e = t.step(&images(2), &[0, 1]).unwrap_err();
    let TrainError::NonFiniteTensor { step: 0, at: Diverged::Update, name, .. } = &e else { panic!("{e:?}") };
    assert_eq!(name, "conv1_weights");
    let msg = e.to_string();
    assert!(
        msg.starts_with("the update of conv1_weights is not finite at step 0: it wrote a weight tensor that now has"),
        "{msg}"
    );
    assert!(msg.contains("restore the parameters and momentum buffers from a checkpoint"), "{msg}");
    assert!(t.params().params().iter().any(|p| p.data.iter().any(|v| !v.is_finite())));
}

#[test]
fn the_teacher_computes_only_what_the_losses_read() {
    // Documented on `Trainer::teacher` and `Executor::logits`: with a hint-only loss the
    // teacher's logits are not computed; `activation` says so without panicking.
    let (merged, sparams) = pair();
    let losses = [Loss::ce(), Loss::l2("teacher_conv5_6_dw", "conv5_6_dw")];
    let mut t = Trainer::new(merged, sparams, &losses, cfg()).unwrap();
    let x = images(2);
    t.step(&x, &[0, 1]).unwrap();
    let teacher = t.teacher().unwrap();
    assert!(teacher.activation("conv5_6_dw").is_some());
    assert!(teacher.activation("fc7").is_none());
    let err = std::panic::catch_unwind(|| teacher.logits().len()).unwrap_err();
    assert!(err.downcast_ref::<String>().is_some_and(|m| m.contains("fc7")), "names the tensor");
    // `input` never panics: the student's last train-mode input.
    assert_eq!(t.student().input(), &x[..]);
}

/// Without a teacher, a loss naming a `teacher_` tensor says that no teacher was merged (it
/// used to be an unknown name with student names as suggestions).
#[test]
fn a_teacher_name_without_a_teacher_says_so() {
    let (prog, _) = tiny(1);
    let merged = Merged::student_only(&prog);
    let e = dist::Losses::new(&merged, &[Loss::l2("teacher_fc7", "fc7")]).unwrap_err();
    assert!(matches!(&e, DistError::NoTeacher { name } if name == "teacher_fc7"), "{e:?}");
    assert!(e.to_string().contains("no teacher was merged"), "{e}");
    // A misspelt student name is still an unknown name with suggestions.
    let e = dist::Losses::new(&merged, &[Loss::l2("fc7", "fc8")]).unwrap_err();
    assert!(matches!(e, DistError::UnknownTensor { .. }), "{e:?}");
}

/// A prefix under which a student name would resolve to a teacher tensor is refused, naming
/// both: ResNet50's `bn_conv1` under the prefix `bn_` would be the teacher's `conv1`.
#[test]
fn merge_refuses_a_prefix_that_shadows_a_student_name() {
    let (tprog, tparams) = tiny(1);
    let student = models::program(&ModelConfig::resnet50()).unwrap();
    let e = merge((&tprog, &tparams), &student, &[("image", "image")], "bn_").unwrap_err();
    assert!(matches!(&e, DistError::Prefix { prefix, .. } if prefix == "bn_"), "{e:?}");
    assert!(e.to_string().contains("`bn_conv1`") && e.to_string().contains("`conv1`"), "{e}");
    merge((&tprog, &tparams), &student, &[("image", "image")], "teacher_").unwrap();
}
