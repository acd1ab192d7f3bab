//! Distillation: merge semantics (names, aliases, frozen teacher), loss resolution errors,
//! the loss-spec parser, default losses, and whole-program gradient checks of every loss kind
//! (l2 hint with cross-entropy, a shallow l2 hint down to the input, fsp, soft label, custom).

#[path = "../kernels/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::{grad_check, Rng};
use tinykd::dist::{
    self, default_losses, merge, parse_loss, parse_losses, DistError, Loss, LossKind, Losses, Merged, Side,
};
use tinykd::graph::{Layout, Program};
use tinykd::kernels::Isa;
use tinykd::models;
use tinykd::params::ParamStore;
use tinykd::train::{Executor, MemoryData, Mode, TrainConfig, Trainer};
use tinykd::{ModelConfig, Stem};

/// MobileNetV1 0.25, CIFAR stem, 32x32 (ends at 2x2).
fn tiny(seed: u64) -> (Program, ParamStore) {
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar);
    (models::program(&cfg).unwrap(), ParamStore::init(&cfg, seed).unwrap())
}

/// A student and a same-architecture teacher (other weights) merged with `teacher_`.
fn tiny_pair() -> (Merged, ParamStore) {
    let (tprog, tparams) = tiny(100);
    let (sprog, sparams) = tiny(7);
    (merge((&tprog, &tparams), &sprog, &[("image", "image")], "teacher_").unwrap(), sparams)
}

fn ce64(z: &[f32], labels: &[u32], classes: usize) -> f64 {
    let rows = z.chunks(classes).zip(labels).map(|(z, &l)| {
        let m = z.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() - z[l as usize] as f64
    });
    rows.sum::<f64>() / labels.len() as f64
}

fn l2_64(t: &[f32], s: &[f32]) -> f64 {
    t.iter().zip(s).map(|(&a, &b)| (b as f64 - a as f64).powi(2)).sum::<f64>() / t.len() as f64
}

/// `G[n][i][j] = (1/hw) Σ_p x[n][p][i]·y[n][p][j]`.
fn gram64(x: &[f32], y: &[f32], n: usize, c1: usize, c2: usize) -> Vec<f64> {
    let hw = x.len() / (n * c1);
    let mut g = vec![0.0; n * c1 * c2];
    for b in 0..n {
        for p in 0..hw {
            for i in 0..c1 {
                for j in 0..c2 {
                    g[(b * c1 + i) * c2 + j] +=
                        x[(b * hw + p) * c1 + i] as f64 * y[(b * hw + p) * c2 + j] as f64 / hw as f64;
                }
            }
        }
    }
    g
}

fn softmax64(z: &[f32], t: f32) -> Vec<f64> {
    let m = z.iter().fold(f64::MIN, |m, &v| m.max(v as f64 / t as f64));
    let e: Vec<f64> = z.iter().map(|&v| (v as f64 / t as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn soft64(t: &[f32], s: &[f32], tt: f32, ts: f32, classes: usize) -> f64 {
    let rows = t.chunks(classes).zip(s.chunks(classes)).map(|(t, s)| {
        let (pt, ps) = (softmax64(t, tt), softmax64(s, ts));
        -pt.iter().zip(&ps).map(|(a, b)| a * b.ln()).sum::<f64>()
    });
    rows.sum::<f64>() / (t.len() / classes) as f64
}

/// Gradient check of `losses` through the whole student: analytic gradients from
/// `Losses::compute` + backward; numeric ones from `loss64(student, teacher)` (an independent
/// f64 formula) after train-mode forwards of perturbed parameters (or input, for `"image"`).
/// The teacher runs once on the unperturbed input: it gets no gradient.
fn check(losses: &[Loss], names: &[&str], eps: f32, loss64: impl Fn(&Executor, &Executor, &[u32]) -> f64) {
    let (merged, sparams) = tiny_pair();
    let resolved = Losses::new(&merged, losses).unwrap();
    let mut rng = Rng::new(11);
    let n = 4;
    let x = rng.vec(n * 32 * 32 * 3);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
    let mut ex = Executor::new(merged.student(), n, 1);
    ex.set_input_grad(true);
    let mut tex = Executor::new(&merged.teacher().unwrap().program, n, 1);
    let mut run = sparams.clone();
    ex.forward(&mut run, &x, Mode::Train).unwrap();
    tex.forward_eval(&merged.teacher().unwrap().params, ex.input()).unwrap();
    let (values, seeds) = resolved.compute(Isa::detect(), &ex, Some(&tex), &labels).unwrap();
    let want = loss64(&ex, &tex, &labels);
    assert!((values.total as f64 - want).abs() <= 1e-4 * want.abs() + 1e-6, "loss {} vs f64 {want}", values.total);
    let seeds: Vec<_> = seeds.iter().map(|(id, g)| (*id, g.as_slice())).collect();
    ex.backward(&run, &seeds).unwrap();
    let mut probe = Executor::new(merged.student(), n, 1);
    for &name in names {
        let (base, analytic) = if name == "image" {
            (x.clone(), ex.tensor_grad(merged.student().input()).unwrap().to_vec())
        } else {
            (sparams.get(name).unwrap().data.clone(), ex.param_grad(name).unwrap().to_vec())
        };
        assert!(analytic.iter().any(|&g| g != 0.0) && analytic.iter().all(|g| g.is_finite()), "{name}: {analytic:?}");
        grad_check(name, &base, &analytic, eps, 5e-2, 6, |v| {
            let mut q = sparams.clone();
            let input = if name == "image" { v } else { &x };
            if name != "image" {
                q.get_mut(name).unwrap().data.copy_from_slice(v);
            }
            probe.forward(&mut q, input, Mode::Train).unwrap();
            loss64(&probe, &tex, &labels)
        });
    }
}

fn act<'a>(ex: &'a Executor, name: &str) -> &'a [f32] {
    ex.activation(name).unwrap_or_else(|| panic!("no tensor {name}")).0
}

#[test]
fn ce_plus_l2_hint_gradients() {
    let losses = [Loss::ce(), Loss::l2("teacher_depthwise_conv2d_11", "depthwise_conv2d_11").weighted(2.0)];
    check(
        &losses,
        &["fc7_weights", "conv6_dw_weights", "conv5_6_dw_weights", "conv5_6_dw_bn_offset"],
        1e-3,
        |s, t, l| ce64(s.logits(), l, 10) + 2.0 * l2_64(act(t, "conv5_6_dw"), act(s, "conv5_6_dw")),
    );
}

#[test]
fn shallow_l2_hint_gradients_reach_the_input() {
    // conv1 (3x3 conv), its BN and the input gradient, through one BN + ReLU + depthwise conv.
    let losses = [Loss::l2("teacher_conv2_1_dw", "conv2_1_dw")];
    check(&losses, &["conv1_weights", "conv1_bn_scale", "conv1_bn_offset", "image"], 3e-4, |s, t, _| {
        l2_64(act(t, "conv2_1_dw"), act(s, "conv2_1_dw"))
    });
}

#[test]
fn fsp_gradients() {
    let losses = [Loss::fsp("teacher_conv5_4_sep_bn", "teacher_conv5_5_sep_bn", "conv5_4_sep_bn", "conv5_5_sep_bn")];
    check(
        &losses,
        &["conv5_5_sep_weights", "conv5_5_dw_weights", "conv5_4_sep_bn_offset", "conv5_5_sep_bn_scale"],
        1e-3,
        |s, t, _| {
            let (c, n) = (128, 4);
            let gs = gram64(act(s, "conv5_4_sep_bn"), act(s, "conv5_5_sep_bn"), n, c, c);
            let gt = gram64(act(t, "conv5_4_sep_bn"), act(t, "conv5_5_sep_bn"), n, c, c);
            gs.iter().zip(&gt).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / gs.len() as f64
        },
    );
}

#[test]
fn soft_label_gradients() {
    let losses = [Loss::soft_label("teacher_fc7", "fc7", 4.0, 2.0)];
    check(&losses, &["fc7_weights", "fc7_offset", "conv6_sep_bn_scale", "conv6_sep_weights"], 1e-3, |s, t, _| {
        soft64(act(t, "fc7"), act(s, "fc7"), 4.0, 2.0, 10)
    });
}

#[test]
fn custom_loss_gradients() {
    // L = mean(s·t + s²/2) over student conv4_1_dw and teacher conv4_1_dw; ∂L/∂s = (t + s)/len.
    let f = Arc::new(|args: &[dist::TensorArg<'_>]| {
        let (s, t) = (&args[0], &args[1]);
        if s.side != Side::Student || t.side != Side::Teacher || s.layout != Layout::Nhwc || s.dims.as_slice()[0] != 4 {
            return Err(format!("unexpected arguments {:?} {:?}", (s.name, s.side, s.dims), (t.name, t.side, t.dims)));
        }
        let len = s.data.len() as f32;
        let v = s.data.iter().zip(t.data).map(|(&a, &b)| a * b + 0.5 * a * a).sum::<f32>() / len;
        let g = s.data.iter().zip(t.data).map(|(&a, &b)| (a + b) / len).collect();
        Ok((v, vec![g, Vec::new()]))
    });
    let losses = [Loss::custom("dot", &["conv4_1_dw", "teacher_conv4_1_dw"], f).weighted(3.0)];
    check(&losses, &["conv4_1_dw_weights", "conv3_2_sep_bn_offset"], 1e-3, |s, t, _| {
        let (s, t) = (act(s, "conv4_1_dw"), act(t, "conv4_1_dw"));
        3.0 * s.iter().zip(t).map(|(&a, &b)| a as f64 * b as f64 + 0.5 * a as f64 * a as f64).sum::<f64>()
            / s.len() as f64
    });
}

#[test]
fn custom_loss_errors_are_reported() {
    let (merged, sparams) = tiny_pair();
    let bad = Arc::new(|_: &[dist::TensorArg<'_>]| Ok((0.0, vec![vec![1.0; 3]])));
    let l = Losses::new(&merged, &[Loss::custom("bad", &["fc7"], bad)]).unwrap();
    let mut ex = Executor::new(merged.student(), 2, 1);
    ex.forward(&mut sparams.clone(), &vec![0.1; 2 * 3072], Mode::Train).unwrap();
    let e = l.compute(Isa::detect(), &ex, None, &[0, 1]).unwrap_err();
    assert!(matches!(e, DistError::Custom { .. }) && e.to_string().contains("fc7"), "{e}");
}

#[test]
fn merged_teacher_is_frozen_and_reads_the_student_input() {
    let (tprog, tparams) = tiny(100);
    let (sprog, sparams) = tiny(7);
    let original = tparams.clone();
    let merged = merge((&tprog, &tparams), &sprog, &[("image", "image")], "teacher_").unwrap();
    let losses = [
        Loss::ce(),
        Loss::l2("teacher_conv5_6_sep_bn", "conv5_6_sep_bn"),
        Loss::soft_label("teacher_fc7", "fc7", 2.0, 2.0),
    ];
    let cfg = TrainConfig { batch_size: 4, threads: 2, ..TrainConfig::default() };
    let mut t = Trainer::new(merged, sparams.clone(), &losses, cfg).unwrap();
    let mut rng = Rng::new(4);
    let mut data = MemoryData::new(rng.vec(8 * 3072), (0..8).map(|i| i % 10).collect(), 3072).unwrap();
    let mut parts = Vec::new();
    for epoch in 0..2 {
        t.train_epoch(&mut data, epoch, &mut |r| parts.push(r.losses.parts.len())).unwrap();
    }
    assert_eq!(parts, vec![3; 4]);
    let frozen = &t.merged().teacher().unwrap().params;
    for (a, b) in frozen.params().iter().zip(original.params()) {
        assert!(a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits()), "teacher {} changed", a.name);
    }
    assert_ne!(t.params().get("conv1_weights"), sparams.get("conv1_weights"), "the student trains");
    assert_ne!(t.params().get("conv1_bn_mean"), sparams.get("conv1_bn_mean"), "student BN statistics move");
    // The teacher ran in eval mode on exactly the student's batch: the trainer folds the
    // frozen teacher's batch norms and ReLUs into its convs (keeping what the losses read) and
    // packs its small-map convs; one thread gives the trainer's two threads' bits, and the
    // plain, packed and folded forwards agree up to rounding.
    let mut check = Executor::new(&tprog, 4, 1);
    check.forward_eval(&original, t.student().input()).unwrap();
    let plain = check.logits().to_vec();
    let hint = tprog.find("conv5_6_sep_bn").unwrap();
    let plain_hint = check.tensor(hint).to_vec();
    let close = |what: &str, got: &[f32], want: &[f32], tol: f32| {
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= tol * scale, "{what}: {a} vs plain {b}");
        }
    };
    check.pack_frozen_convs(&original).unwrap();
    check.forward_eval(&original, t.student().input()).unwrap();
    close("packed", check.logits(), &plain, 1e-5);
    check.fold_frozen(&original, &[hint]).unwrap();
    check.forward_eval(&original, t.student().input()).unwrap();
    assert_eq!(check.logits(), t.teacher().unwrap().logits(), "folded: 1 thread vs the trainer's 2");
    close("folded", check.logits(), &plain, 1e-4);
    close("folded, kept hint", check.tensor(hint), &plain_hint, 1e-4);
    // The raw conv outputs before a folded batch norm are skipped, and say so.
    assert!(check.activation("conv1").is_none(), "conv1's output is folded away");
    assert!(check.activation("conv1_bn.relu").is_some());
    let err = std::panic::catch_unwind(|| check.tensor(tprog.find("conv1").unwrap()).len()).unwrap_err();
    assert!(err.downcast_ref::<String>().is_some_and(|m| m.contains("folded away")), "clear panic message");
    // A forward with other parameter slices runs unfolded: every tensor is written again.
    let copy = original.clone();
    check.forward_eval(&copy, t.student().input()).unwrap();
    close("other slices", check.logits(), &plain, 1e-5);
    assert!(check.activation("conv1").is_some());
}

#[test]
fn names_and_aliases_resolve() {
    let (merged, _) = tiny_pair();
    let a = merged.resolve("teacher_depthwise_conv2d_11", "").unwrap();
    let b = merged.resolve("teacher_conv5_6_dw", "").unwrap();
    assert_eq!((a.side, a.id), (Side::Teacher, b.id));
    let s = merged.resolve("depthwise_conv2d_11.tmp_0", "").unwrap();
    assert_eq!((s.side, s.id), (Side::Student, merged.student().find("conv5_6_dw").unwrap()));
    let bn = merged.resolve("teacher_conv6_sep_bn.output.1.tmp_3", "").unwrap();
    assert_eq!(bn.id, merged.teacher().unwrap().program.find("conv6_sep_bn").unwrap());
    // The mapped input is the student's own tensor, not a teacher one.
    assert_eq!(merged.resolve("image", "").unwrap().side, Side::Student);
    assert!(merged.resolve("teacher_image", "").is_err());
}

fn tutorial(scale: u16) -> Merged {
    let tcfg = ModelConfig::resnet50();
    let scfg = ModelConfig::mobilenet_v1(scale);
    let tprog = models::program(&tcfg).unwrap();
    merge(
        (&tprog, &ParamStore::init(&tcfg, 1).unwrap()),
        &models::program(&scfg).unwrap(),
        &[("image", "image")],
        "teacher_",
    )
    .unwrap()
}

#[test]
fn tutorial_names_defaults_and_errors() {
    let full = tutorial(1000);
    let d = default_losses(&full);
    assert!(matches!(&d[0].kind, LossKind::Ce));
    assert!(
        matches!(&d[1].kind, LossKind::L2 { teacher, student } if teacher == "teacher_bn5c_branch2b" && student == "depthwise_conv2d_11")
    );
    let hint = full.resolve("teacher_bn5c_branch2b.output.1.tmp_3", "").unwrap();
    assert_eq!(hint.dims(64).as_slice(), &[64, 1, 1, 512]);
    Losses::new(&full, &d).unwrap();

    let small = tutorial(250);
    let d = default_losses(&small);
    assert!(
        matches!(&d[1].kind, LossKind::SoftLabel { teacher, student, .. } if teacher == "teacher_fc" && student == "fc7")
    );

    let e = Losses::new(&small, &[Loss::l2("teacher_bn5c_branch2", "depthwise_conv2d_11")]).unwrap_err().to_string();
    for close in ["teacher_bn5c_branch2a", "teacher_bn5c_branch2b", "teacher_bn5c_branch2c"] {
        assert!(e.contains(close), "{e}");
    }
    assert!(e.contains("`teacher_bn5c_branch2`"), "{e}");
    let e = Losses::new(&small, &[Loss::l2("teacher_bn5c_branch2b", "depthwise_conv2d_11")]).unwrap_err().to_string();
    assert!(e.contains("teacher_bn5c_branch2b") && e.contains("depthwise_conv2d_11"), "{e}");
    assert!(e.contains("[N, 1, 1, 512] NHWC") && e.contains("[N, 1, 1, 128] NHWC"), "{e}");
    let e = Losses::new(&small, &[Loss::soft_label("teacher_fc", "pool", 1.0, 1.0)]).unwrap_err().to_string();
    assert!(e.contains("[N, 10] NC") && e.contains("[N, 256] NC"), "{e}");
    let e = Losses::new(&small, &[Loss::l2("teacher_fc", "fc8")]).unwrap_err().to_string();
    assert!(e.contains("`fc7`"), "{e}");
}

#[test]
fn loss_weights_must_be_finite_and_non_negative() {
    // `Loss::weighted` sets any weight; the spec parser refused these, `Losses::new` did not.
    let (prog, params) = tiny(3);
    let student = Merged::student_only(&prog);
    for (w, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf"), (-1.0, "-1")] {
        let e = Losses::new(&student, &[Loss::ce(), Loss::ce().weighted(w)]).unwrap_err();
        assert!(matches!(&e, DistError::Spec { item, .. } if item == "ce"), "{e:?}");
        assert_eq!(e.to_string(), format!("loss spec `ce`: the weight is {shown}; it must be finite and >= 0"));
        let cfg = TrainConfig { batch_size: 2, ..Default::default() };
        let e = Trainer::new(student.clone(), params.clone(), &[Loss::ce().weighted(w)], cfg).unwrap_err();
        assert!(e.to_string().contains(&format!("the weight is {shown}")), "{e}");
    }
    let e = Losses::new(&student, &[Loss::l2("conv1", "conv1").weighted(f32::NAN)]).unwrap_err();
    assert!(e.to_string().contains("`l2:conv1,conv1`"), "{e}");
    assert_eq!(Losses::new(&student, &[Loss::ce().weighted(0.0)]).unwrap().labels(), ["ce"]);
}

#[test]
fn closest_names_prefer_those_starting_with_or_containing_the_query() {
    let m = tutorial(250);
    // Names that start with the query, shortest first (then by name).
    let c = m.closest("teacher_res5c", 3);
    assert_eq!(c, ["teacher_res5c.add.relu", "teacher_res5c_branch2a", "teacher_res5c_branch2b"]);
    // Then names that contain it: the teacher's copy of a name typed without the prefix.
    let c = m.closest("res5c_branch2c", 2);
    assert_eq!(c[0], "teacher_res5c_branch2c", "{c:?}");
    // Otherwise edit distance, k results.
    assert_eq!(m.closest("fc8", 1), ["fc7"]);
    assert_eq!(m.closest("zzz", 5).len(), 5);
    let e = Losses::new(&m, &[Loss::l2("teacher_res5c", "depthwise_conv2d_11")]).unwrap_err().to_string();
    assert!(e.contains("closest names: `teacher_res5c.add.relu`, `teacher_res5c_branch2a`"), "{e}");
}

#[test]
fn merge_rejects_bad_maps_and_stores() {
    let (tprog, tparams) = tiny(1);
    let (sprog, sparams) = tiny(2);
    assert!(matches!(merge((&tprog, &tparams), &sprog, &[("image", "conv1")], "t_"), Err(DistError::DataMap { .. })));
    assert!(matches!(merge((&tprog, &tparams), &sprog, &[("conv1", "image")], "t_"), Err(DistError::DataMap { .. })));
    assert!(matches!(merge((&tprog, &tparams), &sprog, &[], "t_"), Err(DistError::DataMap { .. })));
    let other = ParamStore::init(&ModelConfig::mobilenet_v1(500), 1).unwrap();
    assert!(matches!(
        merge((&tprog, &other), &sprog, &[("image", "image")], "t_"),
        Err(DistError::TeacherParams { .. })
    ));
    // A custom prefix.
    let m = merge((&tprog, &tparams), &sprog, &[("image", "image")], "t_").unwrap();
    assert_eq!(m.resolve("t_fc7", "").unwrap().side, Side::Teacher);
    let _ = sparams;
}

#[test]
fn loss_spec_parser() {
    let l = parse_loss("ce").unwrap();
    assert!(matches!(l.kind, LossKind::Ce) && l.weight == 1.0);
    let l = parse_loss("l2:teacher_bn5c_branch2b,depthwise_conv2d_11").unwrap();
    assert!(
        matches!(&l.kind, LossKind::L2 { teacher, student } if teacher == "teacher_bn5c_branch2b" && student == "depthwise_conv2d_11")
    );
    let l = parse_loss(" l2 : teacher_bn5c_branch2b.output.1.tmp_3 , depthwise_conv2d_11.tmp_0 *0.5").unwrap();
    assert!(matches!(&l.kind, LossKind::L2 { teacher, .. } if teacher == "teacher_bn5c_branch2b.output.1.tmp_3"));
    assert_eq!(l.weight, 0.5);
    let l = parse_loss("fsp:a,b,c,d@2").unwrap();
    assert!(matches!(&l.kind, LossKind::Fsp { t1, s2, .. } if t1 == "a" && s2 == "d") && l.weight == 2.0);
    let l = parse_loss("soft:teacher_fc,fc7").unwrap();
    assert!(matches!(l.kind, LossKind::SoftLabel { tt, ts, .. } if tt == 1.0 && ts == 1.0));
    let l = parse_loss("soft:teacher_fc,fc7,Tt=4,Ts=2*0.1").unwrap();
    assert!(matches!(l.kind, LossKind::SoftLabel { tt, ts, .. } if tt == 4.0 && ts == 2.0) && l.weight == 0.1);
    let l = parse_loss("soft:teacher_fc,fc7,Ts=2,Tt=5").unwrap();
    assert!(matches!(l.kind, LossKind::SoftLabel { tt, ts, .. } if tt == 5.0 && ts == 2.0));
    let l = parse_loss("soft:teacher_fc,fc7,T=3").unwrap();
    assert!(matches!(l.kind, LossKind::SoftLabel { tt, ts, .. } if tt == 3.0 && ts == 3.0));
    let all = parse_losses("ce; l2:a,b*0.5 ;soft:x,y,T=2;").unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].kind.label(), "l2:a,b");
    for bad in [
        "",
        "xx",
        "ce:a",
        "l2:a",
        "l2:a,b,c",
        "l2:a,",
        "fsp:a,b,c",
        "soft:a",
        "soft:a,b,Q=1",
        "soft:a,b,T=0",
        "soft:a,b,T=x",
        "soft:a,b,T=4,T=5",
        "soft:a,b,Tt=2,T=3",
        "soft:a,b,Ts=2,Ts=2",
        "ce*",
        "ce*-1",
        "ce@nan",
        "custom:a",
    ] {
        let e = parse_loss(bad);
        assert!(matches!(e, Err(DistError::Spec { .. })), "{bad:?} parsed: {e:?}");
    }
    assert!(parse_loss("zz").unwrap_err().to_string().contains("ce, l2, fsp or soft"));
    assert!(parse_losses("ce;bogus").is_err());
}

#[test]
fn edit_distance() {
    assert_eq!(dist::edit_distance("kitten", "sitting"), 3);
    assert_eq!(dist::edit_distance("", "abc"), 3);
    assert_eq!(dist::edit_distance("fc7", "fc7"), 0);
}

#[test]
fn eval_targets_skip_what_no_target_needs() {
    let (prog, params) = tiny(100);
    let mut rng = Rng::new(9);
    let input = rng.vec(3 * 3072);
    let mut ex = Executor::new(&prog, 3, 2);
    ex.forward_eval(&params, &input).unwrap();
    let (logits, hint) = (ex.logits().to_vec(), prog.find("conv5_6_sep_bn").unwrap());
    let plain_hint = ex.tensor(hint).to_vec();
    ex.set_eval_targets(Some(&[hint])).unwrap();
    ex.forward_eval(&params, &input).unwrap();
    // The same ops up to the hint: the same bits; what comes after it is not computed.
    assert_eq!(ex.tensor(hint), &plain_hint[..]);
    assert!(ex.activation("conv5_6_sep_bn").is_some());
    for after in ["conv6_sep", "fc7"] {
        assert!(ex.activation(after).is_none(), "{after} is after the hint");
    }
    let err = std::panic::catch_unwind(|| ex.logits().len()).unwrap_err();
    assert!(err.downcast_ref::<String>().is_some_and(|m| m.contains("fc7")), "names the tensor");
    // A train forward runs everything; `None` restores eval forwards.
    let mut train = params.clone();
    ex.forward_train(&mut train, &input).unwrap();
    assert!(ex.activation("fc7").is_some());
    ex.set_eval_targets(None).unwrap();
    ex.forward_eval(&params, &input).unwrap();
    assert_eq!(ex.logits(), &logits[..]);
}
