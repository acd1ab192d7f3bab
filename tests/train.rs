//! Training executor and trainer: whole-program gradient checks of cross-entropy (every op kind
//! of both models), thread determinism, the training loop (loss falls, NaN detection) and
//! learning-rate schedules. Distillation losses are checked in `tests/dist.rs`.

#[path = "../kernels/tests/common/mod.rs"]
mod common;

use common::{assert_close, dot64, grad_check, Rng};
use tinykd::dist::{Loss, Merged};
use tinykd::graph::{Program, TensorId};
use tinykd::kernels::loss::softmax_ce;
use tinykd::kernels::shape::Logits;
use tinykd::kernels::Isa;
use tinykd::models;
use tinykd::params::ParamStore;
use tinykd::train::{ExecError, Executor, MemoryData, Mode, Schedule, TrainConfig, TrainError, Trainer};
use tinykd::{ModelConfig, Stem};

/// MobileNetV1 at 0.25 width, CIFAR stem, 32x32 inputs (ends at 2x2), 10 classes.
fn tiny_mobilenet(seed: u64) -> (Program, ParamStore) {
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar);
    (models::program(&cfg).unwrap(), ParamStore::init(&cfg, seed).unwrap())
}

/// Softmax cross-entropy averaged over the batch, in f64 (independent of the kernel).
fn ce64(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let per_row = logits.chunks(classes).zip(labels).map(|(z, &l)| {
        let m = z.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
        m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() - z[l as usize] as f64
    });
    per_row.sum::<f64>() / labels.len() as f64
}

fn batch(rng: &mut Rng, prog: &Program, n: usize) -> (Vec<f32>, Vec<u32>) {
    let per = prog.tensor(prog.input()).shape.numel();
    let classes = prog.tensor(prog.output()).shape.c as usize;
    (rng.vec(n * per), (0..n).map(|_| rng.below(classes) as u32).collect())
}

/// Backward of the kernel's cross-entropy gradient at the logits.
fn ce_backward(ex: &mut Executor, params: &ParamStore, labels: &[u32]) {
    let classes = ex.program().tensor(ex.program().output()).shape.c as usize;
    let mut d = vec![0.0; ex.logits().len()];
    softmax_ce(Isa::detect(), &Logits::new(labels.len(), classes), ex.logits(), labels, Some(&mut d)).unwrap();
    let out = ex.program().output();
    ex.backward(params, &[(out, &d)]).unwrap();
}

/// Checks `ex`'s gradient of each parameter in `names` against central differences of
/// `loss(params)` (a train-mode forward of a perturbed copy).
fn check_params(
    ex: &Executor,
    params: &ParamStore,
    names: &[&str],
    eps: f32,
    tol: f64,
    max_checks: usize,
    mut loss: impl FnMut(&mut ParamStore) -> f64,
) {
    for &name in names {
        let analytic = ex.param_grad(name).unwrap_or_else(|| panic!("no gradient for {name}")).to_vec();
        assert!(analytic.iter().all(|g| g.is_finite()), "{name}: non-finite gradient");
        assert!(analytic.iter().any(|&g| g != 0.0), "{name}: gradient is all zero");
        let base = params.get(name).unwrap().data.clone();
        grad_check(name, &base, &analytic, eps, tol, max_checks, |v| {
            let mut q = params.clone();
            q.get_mut(name).unwrap().data.copy_from_slice(v);
            loss(&mut q)
        });
    }
}

#[test]
fn mobilenet_ce_gradients_match_finite_differences() {
    // The upper layers hold every op kind (pointwise conv, depthwise conv, BN scale/offset,
    // ReLU, global average pool, fc); deeper layers are checked through shallow hint losses in
    // tests/dist.rs, because a random BN network's loss is too kinked there for differences.
    let (prog, params) = tiny_mobilenet(7);
    let mut rng = Rng::new(1);
    let (x, labels) = batch(&mut rng, &prog, 4);
    let mut ex = Executor::new(&prog, 4, 1);
    // Backward gets the store the forward ran with: the few-row pointwise convs reuse the
    // weights that forward packed (another store's slices fall back to the plain GEMM).
    let mut run = params.clone();
    ex.forward(&mut run, &x, Mode::Train).unwrap();
    ce_backward(&mut ex, &run, &labels);
    let mut probe = Executor::new(&prog, 4, 1);
    let names = [
        "fc7_weights",
        "fc7_offset",
        "conv6_sep_bn_scale",
        "conv6_sep_bn_offset",
        "conv6_sep_weights",
        "conv6_dw_bn_scale",
        "conv6_dw_weights",
        "conv5_6_sep_weights",
    ];
    check_params(&ex, &params, &names, 1e-3, 3e-2, 8, |q| {
        probe.forward(q, &x, Mode::Train).unwrap();
        ce64(probe.logits(), &labels, 10)
    });
}

#[test]
fn resnet50_gradients_match_finite_differences() {
    // ImageNet stem (7x7 conv, max pool), residual add+ReLU, shortcut convs, strided 3x3
    // convs; the loss is Σ r·T at a tensor (f64), the network runs to the end.
    let cfg = ModelConfig::resnet50();
    let prog = models::program(&cfg).unwrap();
    let params = ParamStore::init(&cfg, 3).unwrap();
    let mut rng = Rng::new(5);
    let (x, _) = batch(&mut rng, &prog, 2);
    // The res5 convs (1x1 maps at batch 2) take their weight gradients whole-batch at reduce
    // time (a pointwise conv, a 1x1 stride-2 shortcut, 3x3 convs into a 1x1 map from 2x2 and
    // from 1x1: per-tap GEMMs and zero padding taps).
    let cases: [(&str, &[&str]); 6] = [
        ("pool1", &["conv1_weights", "bn_conv1_scale", "bn_conv1_offset"]),
        ("res2a.add.relu", &["res2a_branch1_weights", "bn2a_branch1_scale", "res2a_branch2c_weights"]),
        ("res3a_branch2b", &["res3a_branch2b_weights", "bn3a_branch2a_scale"]),
        ("res5a_branch2b", &["res5a_branch2b_weights", "res5a_branch2a_weights"]),
        ("res5a_branch1", &["res5a_branch1_weights"]),
        ("res5b_branch2b", &["res5b_branch2b_weights"]),
    ];
    let mut ex = Executor::new(&prog, 2, 1);
    let mut probe = Executor::new(&prog, 2, 1);
    for (tensor, names) in cases {
        let id = prog.find(tensor).unwrap();
        let mut run = params.clone();
        ex.forward(&mut run, &x, Mode::Train).unwrap();
        let r = rng.vec(ex.tensor(id).len());
        ex.backward(&run, &[(id, &r)]).unwrap();
        check_params(&ex, &params, names, 3e-4, 5e-2, 4, |q| {
            probe.forward(q, &x, Mode::Train).unwrap();
            dot64(&r, probe.tensor(id))
        });
    }
}

#[test]
fn eval_mode_uses_and_keeps_running_statistics() {
    let (prog, params) = tiny_mobilenet(7);
    let mut rng = Rng::new(2);
    let (x, _) = batch(&mut rng, &prog, 3);
    let mut ex = Executor::new(&prog, 3, 1);
    let mut p = params.clone();
    ex.forward(&mut p, &x, Mode::Train).unwrap();
    assert_ne!(p, params, "train mode updates the running statistics");
    let after_train = p.clone();
    ex.forward(&mut p, &x, Mode::Eval).unwrap();
    assert_eq!(p, after_train, "eval mode never changes them");
    // With the running statistics converged to this batch's statistics (no weight updates),
    // eval mode reproduces train mode.
    for _ in 0..250 {
        ex.forward(&mut p, &x, Mode::Train).unwrap();
    }
    let train_logits = ex.logits().to_vec();
    ex.forward(&mut p, &x, Mode::Eval).unwrap();
    let scale = train_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close("eval vs train logits", ex.logits(), &train_logits, 1e-2, 1e-2 * scale);
    // Eval results do not depend on the other samples of the batch.
    let first = ex.logits()[..10].to_vec();
    ex.forward_eval(&p, &x[..32 * 32 * 3]).unwrap();
    assert_close("eval logits of sample 0", ex.logits(), &first, 1e-5, 1e-6);
    assert_eq!(ex.backward(&p, &[]), Err(tinykd::train::ExecError::NoTrainForward));
}

#[test]
fn only_the_input_gradient_is_kept() {
    // The backward reuses each consumed gradient's buffer for the next one it writes, so after
    // it only the input's gradient (asked for) is readable; a second backward over the same
    // forward, its buffers holding the first one's leftovers in other places, repeats it.
    let (prog, params) = tiny_mobilenet(9);
    let mut rng = Rng::new(5);
    let (x, labels) = batch(&mut rng, &prog, 4);
    let mut ex = Executor::new(&prog, 4, 2);
    ex.set_input_grad(true);
    let mut p = params.clone();
    ex.forward(&mut p, &x, Mode::Train).unwrap();
    ce_backward(&mut ex, &p, &labels);
    let image = ex.tensor_grad(TensorId(0)).unwrap().to_vec();
    let grads: Vec<Vec<f32>> = ex.param_grads().map(|(_, g)| g.to_vec()).collect();
    assert!(image.iter().any(|&v| v != 0.0) && image.iter().all(|v| v.is_finite()));
    assert!(ex.tensor_grad(prog.find("conv1_bn").unwrap()).is_none(), "an intermediate gradient is not kept");
    ce_backward(&mut ex, &p, &labels);
    assert_eq!(ex.tensor_grad(TensorId(0)).unwrap(), &image[..], "the input gradient repeats bitwise");
    let again: Vec<Vec<f32>> = ex.param_grads().map(|(_, g)| g.to_vec()).collect();
    assert_eq!(again, grads, "the parameter gradients repeat bitwise");
}

/// The fc's forward runs over its weights packed once per forward (AVX2, more than 16 rows per
/// thread): the logits are bitwise those of the fc kernel over the pool's output and the
/// current weights, in train and eval mode, on 1 and 2 threads, and after the weights change
/// between forwards (a stale pack would show).
#[test]
fn fc_over_weights_packed_per_forward_matches_its_kernel() {
    use tinykd::kernels::act::Act;
    use tinykd::kernels::linear::linear_fwd;
    use tinykd::kernels::shape::Linear;
    let (prog, mut params) = tiny_mobilenet(21);
    let mut rng = Rng::new(8);
    let n = 40;
    let (x, _) = batch(&mut rng, &prog, n);
    for threads in [1, 2] {
        let mut ex = Executor::new(&prog, n, threads);
        for (round, mode) in [Mode::Train, Mode::Eval, Mode::Train].into_iter().enumerate() {
            if round > 0 {
                let w = params.get_mut("fc7_weights").unwrap();
                w.data.iter_mut().enumerate().for_each(|(i, v)| *v += ((i % 7) as f32 - 3.0) * 1e-3);
            }
            ex.forward(&mut params, &x, mode).unwrap();
            let (pool, _) = ex.activation("pool").unwrap();
            let (w, b) = (&params.get("fc7_weights").unwrap().data, &params.get("fc7_offset").unwrap().data);
            let mut want = vec![f32::NAN; n * 10];
            let s = Linear::new(n / threads, pool.len() / n, 10);
            for (xc, yc) in pool.chunks(s.x_len()).zip(want.chunks_mut(s.y_len())) {
                linear_fwd(ex.isa(), &s, xc, w, Some(b), Act::None, yc).unwrap();
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(ex.logits()), bits(&want), "{threads} threads, {mode:?}, round {round}");
        }
    }
}

#[test]
fn threads_match_one_thread_and_repeat_bitwise() {
    let (prog, params) = tiny_mobilenet(7);
    let mut rng = Rng::new(3);
    let (x, labels) = batch(&mut rng, &prog, 5); // chunks of 3 and 2 samples
    let run = |threads: usize| {
        let mut ex = Executor::new(&prog, 5, threads);
        ex.set_input_grad(true);
        let mut p = params.clone();
        ex.forward(&mut p, &x, Mode::Train).unwrap();
        ce_backward(&mut ex, &p, &labels);
        let grads: Vec<Vec<f32>> = ex.param_grads().map(|(_, g)| g.to_vec()).collect();
        (ex.logits().to_vec(), grads, ex.tensor_grad(TensorId(0)).unwrap().to_vec(), p)
    };
    let one = run(1);
    let two = run(2);
    assert_eq!(two, run(2), "two threads twice: bitwise identical");
    // Three threads (chunks of 2, 2, 1): each weight gradient is summed in three pieces.
    let three = run(3);
    assert_eq!(three, run(3), "three threads twice: bitwise identical");
    // Different thread counts sum in different orders: equal within f32 rounding, amplified
    // by the depth of a random network (tolerances relative to each tensor's largest value).
    // A structural error (e.g. per-chunk instead of whole-batch statistics) is O(1) off.
    let within = |tol: f64| {
        move |what: &str, a: &[f32], b: &[f32]| {
            let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            assert!(norm(b) > 0.0, "{what}: all zero");
            assert!(norm(&diff) <= tol * norm(b) + 1e-4, "{what}: |a − b| = {} vs |b| = {}", norm(&diff), norm(b));
        }
    };
    let close = within(2e-2);
    close("logits", &two.0, &one.0);
    for (i, (a, b)) in two.1.iter().zip(&one.1).enumerate() {
        close(&format!("param grad {i}"), a, b);
    }
    // Three chunks round differently again (the worst gradient here moves by 3.4 %; a lost
    // chunk would be O(1) off).
    for (i, (a, b)) in three.1.iter().zip(&one.1).enumerate() {
        within(5e-2)(&format!("param grad {i}, three threads"), a, b);
    }
    close("input grad", &two.2, &one.2);
    for (a, b) in two.3.params().iter().zip(one.3.params()) {
        assert_close(&a.name, &a.data, &b.data, 1e-3, 1e-4);
    }
}

fn tiny_data(n: usize, seed: u64) -> MemoryData {
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar).with_input(16, 16);
    let per = 16 * 16 * 3;
    let mut rng = Rng::new(seed);
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    // Each class gets its own mean colour plus noise: learnable.
    let images = labels
        .iter()
        .flat_map(|&l| {
            let base = l as f32 / 5.0 - 0.9;
            (0..per).map(|k| base * [1.0, -0.5, 0.25][k % 3] + 0.3 * rng.uniform(-1.0, 1.0)).collect::<Vec<_>>()
        })
        .collect();
    let _ = cfg;
    MemoryData::new(images, labels, per).unwrap()
}

fn tiny16() -> (ModelConfig, Program, ParamStore) {
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar).with_input(16, 16);
    (cfg, models::program(&cfg).unwrap(), ParamStore::init(&cfg, 11).unwrap())
}

#[test]
fn training_loss_falls() {
    let (_, prog, params) = tiny16();
    let cfg = TrainConfig {
        batch_size: 10,
        threads: 2,
        seed: 1,
        schedule: Schedule::constant(0.05).unwrap(),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg).unwrap();
    let mut data = tiny_data(10, 4);
    let mut losses = Vec::new();
    for epoch in 0..20 {
        t.train_epoch(&mut data, epoch, &mut |r| losses.push(r.losses.total)).unwrap();
    }
    assert_eq!(losses.len(), 20);
    assert_eq!(t.step_count(), 20);
    // The median of the last five steps, not their mean: at batch 10 one step's loss can spike
    // (3.26 at step 17 of 20 after a rounding-level change, between 0.41 and 0.65).
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let mut last: Vec<f32> = losses[15..].to_vec();
    last.sort_by(f32::total_cmp);
    assert!(last[2] < 0.5 * first, "loss did not fall: {losses:?}");
    let eval = t.evaluate(&mut data).unwrap();
    assert_eq!(eval.samples, 10);
    assert!(eval.top5 >= eval.top1 && eval.loss.is_finite(), "{eval:?}");
}

#[test]
fn trainer_is_bitwise_reproducible_with_two_threads() {
    let run = || {
        let (_, prog, params) = tiny16();
        let cfg = TrainConfig { batch_size: 6, threads: 2, seed: 9, weight_decay: 1e-4, ..TrainConfig::default() };
        let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg).unwrap();
        let mut data = tiny_data(13, 5); // 2 batches per epoch, 1 sample dropped
        for epoch in 0..2 {
            t.train_epoch(&mut data, epoch, &mut |_| {}).unwrap();
        }
        assert_eq!(t.step_count(), 4);
        t.into_params()
    };
    let a = run();
    let b = run();
    for (x, y) in a.params().iter().zip(b.params()) {
        assert!(x.data.iter().zip(&y.data).all(|(p, q)| p.to_bits() == q.to_bits()), "{} differs", x.name);
    }
}

#[test]
fn op_level_sync_changes_no_bit() {
    let run = |sync_every_op: bool| {
        let (_, prog, params) = tiny16();
        let cfg = TrainConfig { batch_size: 6, threads: 2, seed: 9, ..TrainConfig::default() };
        let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg).unwrap();
        t.set_sync_every_op(sync_every_op);
        let mut data = tiny_data(12, 5);
        t.train_epoch(&mut data, 0, &mut |_| {}).unwrap();
        assert_eq!(t.step_count(), 2);
        t.into_params()
    };
    let (a, b) = (run(false), run(true));
    for (x, y) in a.params().iter().zip(b.params()) {
        assert!(x.data.iter().zip(&y.data).all(|(p, q)| p.to_bits() == q.to_bits()), "{} differs", x.name);
    }
}

#[test]
fn nan_loss_stops_with_the_step() {
    let (_, prog, params) = tiny16();
    let cfg = TrainConfig { batch_size: 4, ..TrainConfig::default() };
    let mut t = Trainer::new(Merged::student_only(&prog), params, &[Loss::ce()], cfg).unwrap();
    // A parameter made NaN after the trainer's own checks (e.g. by an earlier diverged update).
    t.params_mut().get_mut("fc7_offset").unwrap().data[3] = f32::NAN;
    let before = t.params().clone();
    let mut data = tiny_data(4, 1);
    t.set_step_count(7);
    let err = t.train_epoch(&mut data, 0, &mut |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 7, .. }), "{err:?}");
    assert!(err.to_string().contains("step 7"), "{err}");
    let trainable = |p: &ParamStore| {
        p.params()
            .iter()
            .filter(|x| x.kind == tinykd::graph::VarKind::Parameter)
            .map(|x| x.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(trainable(t.params()), trainable(&before), "no update on a non-finite step");
}

#[test]
fn errors_are_reported() {
    let (_, prog, params) = tiny16();
    let mut ex = Executor::new(&prog, 2, 1);
    let mut p = params.clone();
    assert!(matches!(ex.forward(&mut p, &[0.0; 5], Mode::Train), Err(tinykd::train::ExecError::InputLen { .. })));
    assert!(matches!(
        ex.forward(&mut p, &vec![0.0; 3 * 768], Mode::Train),
        Err(tinykd::train::ExecError::InputLen { .. })
    ));
    let mut q = params.clone();
    q.get_mut("conv1_weights").unwrap().dims = vec![1, 2];
    let e = ex.forward(&mut q, &vec![0.0; 768], Mode::Train).unwrap_err();
    assert!(e.to_string().contains("conv1_weights"), "{e}");
}

#[test]
fn schedules() {
    let c = Schedule::constant(0.1).unwrap();
    assert_eq!(c.lr(0), 0.1);
    assert_eq!(c.lr(1000), 0.1);
    let p = Schedule::piecewise(vec![10, 20], vec![1.0, 0.1, 0.01]).unwrap();
    assert_eq!([p.lr(0), p.lr(9), p.lr(10), p.lr(19), p.lr(20), p.lr(99)], [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]);
    assert!(Schedule::piecewise(vec![10], vec![1.0]).is_err());
    assert!(Schedule::piecewise(vec![10, 10], vec![1.0, 2.0, 3.0]).is_err());
    let cos = Schedule::cosine(1.0, 100).unwrap();
    assert_eq!(cos.lr(0), 1.0);
    assert!((cos.lr(50) - 0.5).abs() < 1e-6);
    assert!(cos.lr(100).abs() < 1e-7 && cos.lr(150).abs() < 1e-7);
    assert!(cos.lr(25) > cos.lr(26));
    let w = Schedule::warmup(4, Schedule::cosine(1.0, 10).unwrap()).unwrap();
    assert_eq!([w.lr(0), w.lr(1), w.lr(3)], [0.25, 0.5, 1.0]);
    assert_eq!(w.lr(4), 1.0);
    assert!((w.lr(9) - 0.5).abs() < 1e-6);
    assert!(
        Schedule::constant(f32::NAN).is_err() && Schedule::cosine(1.0, 0).is_err() && Schedule::warmup(0, c).is_err()
    );
}

#[test]
fn momentum_buffers_round_trip() {
    let (_, prog, params) = tiny16();
    let cfg = TrainConfig { batch_size: 4, ..TrainConfig::default() };
    let mut data = tiny_data(4, 1);
    let mut a = Trainer::new(Merged::student_only(&prog), params.clone(), &[Loss::ce()], cfg.clone()).unwrap();
    a.train_epoch(&mut data, 0, &mut |_| {}).unwrap();
    // A second trainer restored from a's state continues identically.
    let mut b = Trainer::new(Merged::student_only(&prog), a.params().clone(), &[Loss::ce()], cfg).unwrap();
    b.set_momentum_buffers(a.momentum_buffers().to_vec()).unwrap();
    b.set_step_count(a.step_count());
    a.train_epoch(&mut data, 1, &mut |_| {}).unwrap();
    b.train_epoch(&mut data, 1, &mut |_| {}).unwrap();
    assert_eq!(a.params(), b.params());
    assert!(b.set_momentum_buffers(vec![]).is_err());
}

#[test]
fn resnet50_two_threads_match_one_thread() {
    // Residual add+ReLU (gradients delivered twice), max pool, batch norm at 1x1 spatial size
    // (res5: only the batch's rows) across two chunks of 3 samples. A random 50-layer network
    // amplifies rounding: a 1e-6 relative change of the input moves these gradients by ~3%,
    // so the bound is 10%; a structural error (per-chunk statistics, a lost accumulation) is
    // O(1) off.
    let cfg = ModelConfig::resnet50();
    let prog = models::program(&cfg).unwrap();
    let params = ParamStore::init(&cfg, 3).unwrap();
    let mut rng = Rng::new(5);
    let (x, labels) = batch(&mut rng, &prog, 6);
    let run = |threads: usize| {
        let mut ex = Executor::new(&prog, 6, threads);
        ex.set_input_grad(true);
        let mut run = params.clone();
        ex.forward(&mut run, &x, Mode::Train).unwrap();
        ce_backward(&mut ex, &run, &labels);
        let mut all: Vec<(String, Vec<f32>)> = ex.param_grads().map(|(n, g)| (n.to_string(), g.to_vec())).collect();
        all.push(("image".into(), ex.tensor_grad(TensorId(0)).unwrap().to_vec()));
        all.push(("logits".into(), ex.logits().to_vec()));
        all
    };
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    for ((name, a), (_, b)) in run(2).iter().zip(&run(1)) {
        let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        assert!(norm(b) > 0.0, "{name}: all zero");
        assert!(norm(&diff) <= 0.1 * norm(b), "{name}: |a − b| = {} vs |b| = {}", norm(&diff), norm(b));
    }
}

#[test]
fn resnet50_with_identity_blocks_sees_only_the_top_left_corner() {
    // Why the synthetic classes fill the whole image: with the ImageNet stem at 32x32 and every
    // residual branch's last BN scale at 0 (the zero-init of `fit`), the network is its four
    // strided 1x1 shortcuts, which keep position (0, 0) each time: the logits depend only on
    // the pixels under pool1[0, 0], the top-left 6x6 corner.
    let cfg = ModelConfig::resnet50();
    let prog = models::program(&cfg).unwrap();
    let mut params = ParamStore::init(&cfg, 1).unwrap();
    for p in params.params_mut().iter_mut().filter(|p| p.name.ends_with("_branch2c_scale")) {
        p.data.fill(0.0);
    }
    let mut rng = Rng::new(9);
    let a = rng.vec(32 * 32 * 3);
    let mut b = rng.vec(32 * 32 * 3);
    for y in 0..6 {
        b[y * 96..y * 96 + 18].copy_from_slice(&a[y * 96..y * 96 + 18]);
    }
    let mut ex = Executor::new(&prog, 1, 1);
    ex.forward_eval(&params, &a).unwrap();
    let la = ex.logits().to_vec();
    ex.forward_eval(&params, &b).unwrap();
    assert_eq!(la, ex.logits(), "only the top-left 6x6 pixels matter");
    // A pixel inside the corner does matter.
    b[5 * 96 + 5 * 3] += 1.0;
    ex.forward_eval(&params, &b).unwrap();
    assert_ne!(la, ex.logits());
}

#[test]
fn backward_with_another_store_of_the_same_weights_agrees() {
    // The few-row pointwise convs' input gradients use the weights packed by the forward when
    // the backward gets that same store, and the plain GEMM otherwise: same math.
    // Width 0.5: 512-channel convs, deeper than one GEMM k block (256), so the two paths
    // round differently and the test can tell that both were taken.
    let cfg = ModelConfig::mobilenet_v1(500).with_stem(Stem::Cifar);
    let (prog, params) = (models::program(&cfg).unwrap(), ParamStore::init(&cfg, 5).unwrap());
    let mut rng = Rng::new(8);
    let (x, labels) = batch(&mut rng, &prog, 3);
    let grads = |same: bool| {
        let mut ex = Executor::new(&prog, 3, 2);
        ex.set_input_grad(true);
        let mut run = params.clone();
        ex.forward(&mut run, &x, Mode::Train).unwrap();
        let other = run.clone();
        ce_backward(&mut ex, if same { &run } else { &other }, &labels);
        ex.tensor_grad(TensorId(0)).unwrap().to_vec()
    };
    let (a, b) = (grads(true), grads(false));
    assert_close("input grad, packed vs plain", &a, &b, 1e-3, 1e-5);
    assert!(a != b, "the two paths round differently (both were taken)");
}

#[test]
fn bn_relu_fusion_changes_no_bit() {
    let (prog, params) = tiny_mobilenet(8);
    let mut rng = Rng::new(4);
    let (x, labels) = batch(&mut rng, &prog, 5);
    let kept = prog.find("conv2_1_sep_bn").unwrap();
    let run = |fuse: bool| {
        let mut ex = Executor::new(&prog, 5, 2);
        ex.set_input_grad(true);
        if fuse {
            ex.fuse_bn_relu(&[kept]);
        }
        let mut p = params.clone();
        ex.forward(&mut p, &x, Mode::Train).unwrap();
        ce_backward(&mut ex, &p, &labels);
        let grads: Vec<Vec<f32>> = ex.param_grads().map(|(_, g)| g.to_vec()).collect();
        let relu_out = ex.activation("conv1_bn.relu").unwrap().0.to_vec();
        let train = (ex.logits().to_vec(), grads, ex.tensor_grad(TensorId(0)).unwrap().to_vec(), relu_out);
        assert_eq!(ex.activation("conv1_bn").is_none(), fuse, "a fused batch norm's output is not kept");
        assert!(ex.activation("conv2_1_sep_bn").is_some(), "a kept one is");
        ex.forward(&mut p, &x, Mode::Eval).unwrap();
        assert_eq!(ex.activation("conv1_bn").is_none(), fuse);
        (train, ex.logits().to_vec(), p)
    };
    let same = |what: &str, u: &[f32], v: &[f32]| {
        assert_eq!(u.len(), v.len(), "{what}: lengths");
        if let Some(k) = u.iter().zip(v).position(|(x, y)| x.to_bits() != y.to_bits()) {
            panic!("{what}: first difference at {k}: {} vs {}", u[k], v[k]);
        }
    };
    let (a, b) = (run(true), run(false));
    same("train logits", &a.0 .0, &b.0 .0);
    for (i, (g, h)) in a.0 .1.iter().zip(&b.0 .1).enumerate() {
        same(&format!("param grad {i}"), g, h);
    }
    same("input grad", &a.0 .2, &b.0 .2);
    same("a fused ReLU's output", &a.0 .3, &b.0 .3);
    same("eval logits", &a.1, &b.1);
    for (p, q) in a.2.params().iter().zip(b.2.params()) {
        same(&format!("{} (running statistics)", p.name), &p.data, &q.data);
    }

    // A gradient seeded at a batch norm's output the fused forward never wrote is refused; at a
    // kept one it flows.
    let mut ex = Executor::new(&prog, 5, 2);
    ex.fuse_bn_relu(&[kept]);
    let mut p = params.clone();
    ex.forward(&mut p, &x, Mode::Train).unwrap();
    let bn1 = prog.find("conv1_bn").unwrap();
    let g = vec![1.0; ex.tensor_grad(bn1).map_or(5 * prog.tensor(bn1).shape.numel(), <[f32]>::len)];
    let e = ex.backward(&p, &[(bn1, &g)]).unwrap_err();
    assert!(e.to_string().contains("conv1_bn") && e.to_string().contains("keep"), "{e}");
    let g = vec![1.0; 5 * prog.tensor(kept).shape.numel()];
    ex.backward(&p, &[(kept, &g)]).unwrap();
    assert!(ex.param_grad("conv1_weights").unwrap().iter().any(|&v| v != 0.0));
}

#[test]
fn residual_add_folded_into_the_conv_changes_no_bit() {
    // Folding a frozen ResNet50 also folds each block's residual add + ReLU into the conv that
    // runs last of its two inputs (the same add and ReLU over the conv's output). Keeping the
    // batch-norm outputs the adds read prevents that fusion: the logits must be the same bits.
    let cfg = ModelConfig::resnet50();
    let prog = models::program(&cfg).unwrap();
    let params = ParamStore::init(&cfg, 6).unwrap();
    let mut rng = Rng::new(7);
    let (x, _) = batch(&mut rng, &prog, 3);
    let add_inputs: Vec<TensorId> = prog
        .ops()
        .iter()
        .filter(|op| op.kind == tinykd::graph::OpKind::AddRelu)
        .flat_map(|op| op.inputs().to_vec())
        .collect();
    let run = |keep: &[TensorId]| {
        let mut ex = Executor::new(&prog, 3, 2);
        ex.fold_frozen(&params, keep).unwrap();
        ex.forward_eval(&params, &x).unwrap();
        let readable = ex.activation("bn2b_branch2c").is_some();
        // res2a's output is res2b's residual, which res2b's last conv (pointwise, its last
        // reader) overwrites in place.
        let written_over = ex.activation("res2a.add.relu").is_none();
        (ex.logits().iter().map(|v| v.to_bits()).collect::<Vec<u32>>(), readable, written_over)
    };
    let (fused, readable, written_over) = run(&[]);
    let (kept, kept_readable, kept_written_over) = run(&add_inputs);
    assert_eq!(fused, kept);
    assert!(!readable && kept_readable, "the folded add's input is skipped unless kept");
    assert!(written_over && !kept_written_over, "the residual is written over only when the add is folded");
    let res2a = prog.find("res2a.add.relu").unwrap();
    let (_, _, kept_res2a_over) = run(&[res2a]);
    assert!(!kept_res2a_over, "a kept residual is not written over");
}

#[test]
fn folded_eval_forward_with_targets_recycles_buffers_and_changes_no_bit() {
    // With eval targets, a folded forward writes outputs into buffers of tensors already read
    // for the last time: the targets keep their bits (an early one whose buffer a later output
    // of its size would take if targets were recycled, a mid-network hint, the logits; over two
    // forwards, batch 3 on 2 threads: chunks of 2 and 1), and every other tensor but the input
    // refuses to be read afterwards.
    let cfg = ModelConfig::resnet50();
    let prog = models::program(&cfg).unwrap();
    let params = ParamStore::init(&cfg, 8).unwrap();
    let mut rng = Rng::new(9);
    let (x, _) = batch(&mut rng, &prog, 3);
    let (y, _) = batch(&mut rng, &prog, 3);
    let find = |name: &str| prog.find(name).unwrap();
    let targets = [find("pool1"), find("bn4f_branch2b"), prog.output()];
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    let mut plain = Executor::new(&prog, 3, 2);
    plain.fold_frozen(&params, &targets).unwrap();
    let mut recycled = Executor::new(&prog, 3, 2);
    recycled.fold_frozen(&params, &targets).unwrap();
    recycled.set_eval_targets(Some(&targets)).unwrap();
    let others = ["bn2a_branch2a.relu", "bn3b_branch2b.relu", "bn5a_branch2a.relu"];
    for input in [&x, &y] {
        plain.forward_eval(&params, input).unwrap();
        recycled.forward_eval(&params, input).unwrap();
        for t in targets {
            assert_eq!(bits(recycled.tensor(t)), bits(plain.tensor(t)), "{}", prog.tensor(t).name);
        }
        for name in others {
            assert!(plain.activation(name).is_some(), "without targets {name} is kept");
            assert!(recycled.activation(name).is_none(), "{name} is not a target");
        }
        assert!(recycled.activation("image").is_some());
    }
}

#[test]
fn non_finite_inputs_are_refused_naming_the_image_and_value() {
    // A ReLU maps NaN to 0, so such an input used to give plausible logits, and a train
    // forward wrote NaN into the batch-norm running statistics.
    let (_, prog, params) = tiny16();
    let per = 16 * 16 * 3;
    let mut rng = Rng::new(5);
    let x = rng.vec(2 * per);
    let mut ex = Executor::new(&prog, 2, 2);
    let mut p = params.clone();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut poisoned = x.clone();
        poisoned[per + 5] = bad;
        for mode in [Mode::Train, Mode::Eval] {
            let e = ex.forward(&mut p, &poisoned, mode).unwrap_err();
            assert_eq!(e, ExecError::NonFiniteInput { index: per + 5, per_sample: per }, "{mode:?}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("input value {} (image 1, value 5 of it) is NaN or infinite", per + 5)),
                "{msg}"
            );
        }
        assert_eq!(p, params, "a refused train forward wrote the running statistics");
    }
    // Through the trainer too, before anything changes.
    let cfg = TrainConfig { batch_size: 2, ..Default::default() };
    let mut t = Trainer::new(Merged::student_only(&prog), params.clone(), &[Loss::ce()], cfg).unwrap();
    let mut poisoned = x.clone();
    poisoned[7] = f32::NAN;
    let e = t.step(&poisoned, &[0, 1]).unwrap_err();
    assert_eq!(e, TrainError::Exec(ExecError::NonFiniteInput { index: 7, per_sample: per }));
    assert_eq!(t.params(), &params);
    // Huge finite values whose sum overflows are accepted (the fast test is only sufficient).
    ex.forward_eval(&params, &vec![3e38; 2 * per]).unwrap();
}

#[test]
fn tensor_ids_not_of_the_program_are_refused() {
    let (_, prog, params) = tiny16();
    let tensors = prog.tensors().len();
    let foreign = TensorId(60000);
    let x = Rng::new(6).vec(2 * 16 * 16 * 3);
    let mut ex = Executor::new(&prog, 2, 1);
    let mut p = params.clone();
    ex.forward_train(&mut p, &x).unwrap();
    let e = ex.backward(&p, &[(foreign, &[1.0][..])]).unwrap_err();
    assert_eq!(e, ExecError::UnknownTensor { id: foreign, tensors });
    assert!(e.to_string().contains("tensor id 60000 is not a tensor of this program"), "{e}");
    // A refused target list keeps the previous choice (the pool only: the logits are skipped).
    ex.set_eval_targets(Some(&[prog.find("pool").unwrap()])).unwrap();
    assert_eq!(
        ex.set_eval_targets(Some(&[prog.output(), foreign])),
        Err(ExecError::UnknownTensor { id: foreign, tensors })
    );
    ex.forward_eval(&p, &x).unwrap();
    assert!(ex.activation("pool").is_some() && ex.activation("fc7").is_none());
    // `tensor` returns a slice: it panics, with that message (documented under # Panics).
    let err = std::panic::catch_unwind(|| ex.tensor(foreign).len()).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("tensor id 60000 is not a tensor of this program"), "{msg}");
}

#[test]
fn a_batch_too_large_for_the_address_space_is_an_error() {
    // The buffer sizes used to wrap or overflow: "capacity overflow" panics.
    let (_, prog, params) = tiny16();
    for huge in [1usize << 62, usize::MAX / 4096, usize::MAX] {
        let e = Executor::try_new(&prog, huge, 1).unwrap_err();
        assert_eq!(e, ExecError::BatchTooLarge { max_batch: huge });
        assert!(e.to_string().contains(&format!("batch size {huge} is too large")), "{e}");
        let cfg = TrainConfig { batch_size: huge, threads: 2, ..Default::default() };
        let e = Trainer::new(Merged::student_only(&prog), params.clone(), &[Loss::ce()], cfg).unwrap_err();
        assert_eq!(e, TrainError::Exec(ExecError::BatchTooLarge { max_batch: huge }));
    }
    let err = std::panic::catch_unwind(|| Executor::new(&prog, 1 << 62, 1).max_batch()).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("batch size 4611686018427387904 is too large"), "{msg}");
    assert_eq!(Executor::try_new(&prog, 3, 2).unwrap().max_batch(), 3);
}

#[test]
fn schedules_built_from_the_variants_are_validated() {
    // The public fields bypass the constructors: `lr` indexed past `values` and divided by a
    // zero `total`; the trainer now refuses such schedules like the constructors do.
    let short = Schedule::Piecewise { boundaries: vec![0], values: vec![] };
    assert_eq!([short.lr(0), short.lr(7)], [0.0, 0.0]);
    let fewer = Schedule::Piecewise { boundaries: vec![5, 10], values: vec![1.0, 0.5] };
    assert_eq!([fewer.lr(4), fewer.lr(5), fewer.lr(12)], [1.0, 0.5, 0.5]);
    let cos0 = Schedule::Cosine { base: 0.1, total: 0 };
    assert_eq!([cos0.lr(0), cos0.lr(3)], [0.0, 0.0]);
    let bad_inner = Schedule::Warmup { steps: 2, inner: Box::new(cos0.clone()) };
    let (_, prog, params) = tiny16();
    for (s, why) in [
        (short, "piecewise needs one more value than boundaries"),
        (fewer, "piecewise needs one more value than boundaries"),
        (Schedule::Piecewise { boundaries: vec![3, 3], values: vec![1.0; 3] }, "strictly increasing"),
        (cos0, "cosine needs at least one step"),
        (bad_inner, "cosine needs at least one step"),
        (Schedule::Warmup { steps: 0, inner: Box::new(Schedule::Constant(0.1)) }, "warmup needs at least one step"),
        (Schedule::Constant(f32::NAN), "rates must be finite and >= 0"),
    ] {
        assert!(s.validate().is_err(), "{s:?}");
        let cfg = TrainConfig { batch_size: 2, schedule: s.clone(), ..Default::default() };
        let e = Trainer::new(Merged::student_only(&prog), params.clone(), &[Loss::ce()], cfg).unwrap_err();
        assert!(matches!(&e, TrainError::Config(m) if m.contains(why)), "{s:?}: {e}");
    }
    let good = Schedule::warmup(2, Schedule::piecewise(vec![5], vec![0.1, 0.01]).unwrap()).unwrap();
    good.validate().unwrap();
    assert_eq!(
        good,
        Schedule::Warmup {
            steps: 2,
            inner: Box::new(Schedule::Piecewise { boundaries: vec![5], values: vec![0.1, 0.01] })
        }
    );
}

#[test]
fn a_parameter_with_other_values_than_its_dims_is_named_with_both_counts() {
    // The message used to repeat the same dims twice ("has dims [3, 3, 3, 8] in the store,
    // the program needs [3, 3, 3, 8]").
    let (_, prog, params) = tiny16();
    let mut ex = Executor::new(&prog, 1, 1);
    let mut q = params.clone();
    let w = q.get_mut("conv1_weights").unwrap();
    let (dims, need) = (format!("{:?}", w.dims), w.dims.iter().product::<usize>());
    w.data.truncate(3);
    let e = ex.forward_train(&mut q, &vec![0.5; 16 * 16 * 3]).unwrap_err();
    assert!(
        matches!(&e, ExecError::ParamLen { name, expected, got: 3, .. } if name == "conv1_weights" && *expected == need)
    );
    let want = format!("parameter `conv1_weights` has 3 values in the store where its dims {dims} need {need}");
    assert_eq!(e.to_string(), want);
}
