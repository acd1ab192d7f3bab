//! On-device fine-tuning (`tinykd::finetune`) on the host, through the same `no_std` code
//! path the firmware in `examples/mcu_finetune/` runs: compile-time sizes and a valid arena
//! plan for every tail; tail gradients against central differences; the first step equals
//! plain SGD on those gradients and is deterministic; fine-tuning a deployed student on a
//! shifted task with new classes raises held-out accuracy by a documented margin; errors.

#[path = "../kernels/tests/common/mod.rs"]
mod common;

use common::Rng;
use tinykd::engine::EngineError;
use tinykd::finetune::{finetune_arena_bytes, state_len, trainable_len, FineTuner, FinetuneError, Layout, Tail};
use tinykd::fold::export_inference;
use tinykd::host::data::synth;
use tinykd::kernels::optim::Momentum;
use tinykd::kernels::{DType, Isa};
use tinykd::params::ParamStore;
use tinykd::train::Executor;
use tinykd::weights::{to_bytes, AlignedBuf, FileKind, TensorOut, WeightFile};
use tinykd::{ModelConfig, Stem};

/// The deployed student: He-initialised weights (γ = 1, β = 0) whose batch-norm running
/// statistics are calibrated on `batches` train-mode forwards of 32 unshifted synthetic training
/// images — a random-feature network with healthy activations and an fc never trained for the
/// user's classes — exported BN-folded in `dtype`.
fn calibrated_student(cfg: &ModelConfig, seed: u64, batches: usize, dtype: DType) -> AlignedBuf {
    let mut store = ParamStore::init(cfg, seed).unwrap();
    let prog = tinykd::models::program(cfg).unwrap();
    let mut exec = Executor::new(&prog, 32, 2);
    let (train, _) = synth::generate(32 * batches, 0, seed);
    let mut x = Vec::new();
    for b in 0..batches {
        let idx: Vec<usize> = (32 * b..32 * (b + 1)).collect();
        train.batch_nhwc(&idx, &mut x);
        exec.forward_train(&mut store, &x).unwrap();
    }
    AlignedBuf::from_bytes(&export_inference(&store, dtype).unwrap())
}

/// Number of the user's new classes: the scene's colour cast (neutral, warm, cool, green).
const NEW_CLASSES: usize = 4;

/// The user's task: `n` synthetic images (split `seed`) seen through a new sensor that swaps
/// red and blue and darkens (`x' = 0.6·x_swapped − 0.25`), under one of [`NEW_CLASSES`] colour
/// casts of random strength (0.08–0.25) with random brightness (±0.15); the label is the cast.
fn user_task(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    const CASTS: [[f32; 3]; NEW_CLASSES] = [[0.0, 0.0, 0.0], [1.0, 0.3, -0.6], [-0.6, 0.1, 1.0], [-0.4, 1.0, -0.4]];
    let (_, test) = synth::generate(0, n, seed);
    let idx: Vec<usize> = (0..n).collect();
    let mut x = Vec::new();
    test.batch_nhwc(&idx, &mut x);
    let mut rng = tinykd::host::data::Rng::stream(seed, 0x7573_6572); // "user"
    let mut labels = Vec::with_capacity(n);
    for img in x.chunks_exact_mut(32 * 32 * 3) {
        let label = rng.below(NEW_CLASSES);
        let (k, bright) = (rng.uniform(0.3, 0.5), rng.uniform(-0.15, 0.15));
        for px in img.chunks_exact_mut(3) {
            px.swap(0, 2);
            for (v, c) in px.iter_mut().zip(CASTS[label]) {
                *v = 0.6 * *v - 0.25 + bright + k * c;
            }
        }
        labels.push(label as u32);
    }
    (x, labels)
}

/// One image's values.
const IMAGE_LEN: usize = 32 * 32 * 3;

/// A fresh state (the file's tail, affine at identity, momentum 0) and an arena for `ft`.
fn fresh(ft: &FineTuner) -> (Vec<f32>, Vec<u8>) {
    let mut state = vec![0.0; ft.state_len()];
    ft.init_state(&mut state).unwrap();
    (state, vec![0u8; ft.arena_bytes()])
}

/// Held-out top-1 count over batches of the tuner's batch.
fn correct(ft: &FineTuner, state: &[f32], x: &[f32], y: &[u32], arena: &mut [u8]) -> usize {
    let b = ft.layout().dims.batch;
    x.chunks_exact(IMAGE_LEN * b)
        .zip(y.chunks_exact(b))
        .map(|(xs, ys)| ft.correct(Isa::scalar(), state, xs, ys, arena).unwrap())
        .sum()
}

const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
/// Compile-time sizes: these are array lengths, so they must be `const`.
static FC_STATE: [f32; state_len(&CFG, Tail::Fc)] = [0.0; state_len(&CFG, Tail::Fc)];
const SEP_ARENA: usize = finetune_arena_bytes(&CFG, Tail::FcSep, 8);

#[test]
fn sizes_are_compile_time_constants_and_match_the_model() {
    // MobileNetV1 x0.25: conv6_sep is 256 -> 256 at 1x1, fc 256 -> 10.
    assert_eq!(trainable_len(&CFG, Tail::Fc), 256 * 10 + 10);
    assert_eq!(trainable_len(&CFG, Tail::FcAffine), 256 * 10 + 10 + 2 * 256);
    assert_eq!(trainable_len(&CFG, Tail::FcSep), 256 * 10 + 10 + 256 * 256 + 256);
    assert_eq!(FC_STATE.len(), 2 * 2570);
    for tail in Tail::ALL {
        for batch in [1, 8] {
            let l = Layout::new(&CFG, tail, batch).unwrap();
            assert_eq!(l.arena_bytes(), finetune_arena_bytes(&CFG, tail, batch));
            assert!(l.plan.peak >= l.plan.lower_bound, "{tail}: peak below the lower bound");
            // No two buffers live at the same step overlap in memory.
            let (reqs, offs) = (l.buffers(), l.plan.offsets());
            for i in 0..reqs.len() {
                for j in i + 1..reqs.len() {
                    if reqs[i].overlaps_in_time(&reqs[j]) && reqs[i].bytes > 0 && reqs[j].bytes > 0 {
                        let disjoint = offs[i] + reqs[i].bytes <= offs[j] || offs[j] + reqs[j].bytes <= offs[i];
                        assert!(disjoint, "{tail} batch {batch}: buffers {i} and {j} overlap");
                    }
                }
            }
            // The tail's gradients hold every trainable parameter.
            assert_eq!(reqs[l.bufs.grads as usize].bytes, 4 * l.trainable());
        }
    }
    assert_eq!(SEP_ARENA, Layout::new(&CFG, Tail::FcSep, 8).unwrap().arena_bytes());
    // ResNet50 ends in add + ReLU before the pool: only the fc tail fits.
    let r = ModelConfig::resnet50();
    assert!(Layout::new(&r, Tail::Fc, 1).is_ok());
    for tail in [Tail::FcAffine, Tail::FcSep] {
        assert_eq!(Layout::new(&r, tail, 1).unwrap_err(), FinetuneError::TailUnsupported { tail });
    }
}

/// Batch-mean softmax cross-entropy of f32 logits, in f64 (independent of the kernel).
fn ce64(logits: &[f32], labels: &[u32]) -> f64 {
    let k = logits.len() / labels.len();
    let mut sum = 0.0;
    for (z, &l) in logits.chunks_exact(k).zip(labels) {
        let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        sum += lse - z[l as usize] as f64;
    }
    sum / labels.len() as f64
}

/// Central-difference check of every trainable tensor of every tail; a CIFAR-stem student
/// so the last pointwise conv's output is 2x2 (the pool's backward is not trivial), batch 3,
/// state perturbed away from its initial values (affine not at identity). The numeric loss is
/// an f64 cross-entropy of the f32 logits; eps 3e-4 and 10 % tolerance sit between f32
/// rounding of the logits (small eps) and ReLU kinks of the pointwise conv (large eps).
#[test]
fn tail_gradients_match_finite_differences() {
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar);
    let buf = calibrated_student(&cfg, 3, 4, DType::F32);
    let file = WeightFile::parse(&buf).unwrap();
    let mut rng = Rng::new(5);
    let batch = 3;
    let x = rng.vec(batch * IMAGE_LEN);
    let y = [1u32, 7, 3];
    for tail in Tail::ALL {
        let ft = FineTuner::new(&cfg, tail, batch, &file).unwrap();
        assert_eq!(ft.layout().dims.hw, 4);
        let (mut state, mut arena) = fresh(&ft);
        let n = ft.layout().trainable();
        for v in &mut state[..n] {
            *v *= rng.uniform(0.7, 1.3);
            *v += rng.uniform(-0.05, 0.05);
        }
        let (_, g) = ft.grads(Isa::detect(), &state, &x, &y, &mut arena).unwrap();
        let grads = g.to_vec();
        let d = ft.layout().dims;
        let fc = d.c * d.classes;
        let extra = n - fc - d.classes;
        let mut ranges = vec![("fc weights", 0..fc), ("fc offset", fc..fc + d.classes)];
        if extra > 0 {
            let split = fc + d.classes + extra - d.c;
            ranges.push(("tail weights/γ'", fc + d.classes..split));
            ranges.push(("tail bias/β'", split..n));
        }
        for (what, r) in ranges {
            let mut trial = state.clone();
            let mut arena2 = vec![0u8; ft.arena_bytes()];
            let mut logits = vec![0.0f32; batch * d.classes];
            common::grad_check(&format!("{tail} {what}"), &state[r.clone()], &grads[r.clone()], 3e-4, 0.1, 25, |p| {
                trial[r.clone()].copy_from_slice(p);
                ft.logits(Isa::detect(), &trial, &x, &mut arena2, &mut logits).unwrap();
                ce64(&logits, &y)
            });
        }
    }
}

#[test]
fn first_step_is_plain_sgd_on_the_gradients() {
    let buf = calibrated_student(&CFG, 4, 2, DType::F16);
    let file = WeightFile::parse(&buf).unwrap();
    let (x, y) = user_task(8, 21);
    let hp = Momentum { lr: 0.1, mu: 0.9, wd: 0.0 };
    for tail in Tail::ALL {
        let ft = FineTuner::new(&CFG, tail, 8, &file).unwrap();
        let (mut state, mut arena) = fresh(&ft);
        let p0 = ft.params(&state).to_vec();
        let (loss, g) = ft.grads(Isa::scalar(), &state, &x, &y, &mut arena).unwrap();
        let g = g.to_vec();
        assert!(g.iter().any(|&v| v != 0.0), "{tail}: all-zero gradient");
        let step_loss = ft.step(Isa::scalar(), hp, &mut state, &x, &y, &mut arena).unwrap();
        assert_eq!(loss, step_loss, "{tail}: loss");
        let n = p0.len();
        for i in 0..n {
            assert_eq!(state[n + i], g[i], "{tail}: momentum[{i}] after one step is the gradient");
            assert_eq!(state[i], p0[i] - 0.1 * g[i], "{tail}: parameter {i}");
        }
        // Deterministic: the same step from the same state gives the same bits.
        let (mut again, _) = fresh(&ft);
        ft.step(Isa::scalar(), hp, &mut again, &x, &y, &mut arena).unwrap();
        assert_eq!(again, state, "{tail}: not deterministic");
    }
}

/// The firmware's scenario on the host, same code path (scalar kernels, f16 frozen student,
/// 32 labelled samples, 3 epochs of batch 8, lr 0.03, μ 0.9): held-out accuracy on 64 samples
/// of the user's task must rise by at least 6 samples (+9.4 points) for every tail.
#[test]
fn finetuning_raises_heldout_accuracy_on_the_shifted_task() {
    let buf = calibrated_student(&CFG, 7, 30, DType::F16);
    let file = WeightFile::parse(&buf).unwrap();
    let (xt, yt) = user_task(32, 11);
    let (xh, yh) = user_task(64, 12);
    let hp = Momentum { lr: 0.03, mu: 0.9, wd: 0.0 };
    for tail in Tail::ALL {
        let ft = FineTuner::new(&CFG, tail, 8, &file).unwrap();
        let (mut state, mut arena) = fresh(&ft);
        let before = correct(&ft, &state, &xh, &yh, &mut arena);
        let mut losses = Vec::new();
        for _ in 0..3 {
            for (xs, ys) in xt.chunks_exact(8 * IMAGE_LEN).zip(yt.chunks_exact(8)) {
                losses.push(ft.step(Isa::scalar(), hp, &mut state, xs, ys, &mut arena).unwrap());
            }
        }
        let after = correct(&ft, &state, &xh, &yh, &mut arena);
        println!(
            "{tail}: held-out {before}/64 -> {after}/64, loss {:.3} -> {:.3}",
            losses[0],
            losses[losses.len() - 1]
        );
        assert!(after >= before + 6, "{tail}: held-out accuracy {before}/64 -> {after}/64, wanted a rise of 6");
        assert!(losses[losses.len() - 1] < 0.6 * losses[0], "{tail}: training loss did not fall: {losses:?}");
    }
}

/// A step that would leave a non-finite loss, gradient, parameter or momentum is refused with
/// `NonFinite` and writes nothing: a NaN weight (NaN loss), and finite gradients whose update
/// overflows (momentum near `f32::MAX`, lr 10). The same state then still takes good steps.
#[test]
fn non_finite_steps_are_refused_and_leave_the_state() {
    let buf = calibrated_student(&CFG, 4, 1, DType::F32);
    let file = WeightFile::parse(&buf).unwrap();
    let (x, y) = user_task(2, 21);
    let hp = Momentum { lr: 0.1, mu: 0.9, wd: 0.0 };
    for tail in Tail::ALL {
        let ft = FineTuner::new(&CFG, tail, 2, &file).unwrap();
        let (mut state, mut arena) = fresh(&ft);
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let init = bits(&state);

        // A NaN fc weight (a state corrupted earlier) makes the logits and the loss NaN.
        let mut nan = state.clone();
        nan[3] = f32::NAN;
        let before = bits(&nan);
        let err = ft.step(Isa::scalar(), hp, &mut nan, &x, &y, &mut arena).unwrap_err();
        assert!(matches!(err, FinetuneError::NonFinite { loss } if loss.is_nan()), "{tail}: NaN weight gave {err:?}");
        assert!(err.to_string().contains("state is unchanged"), "{tail}: {err}");
        assert_eq!(bits(&nan), before, "{tail}: the NaN step wrote the state");

        // Finite loss and gradients, but v' = 0.9·3e38 + g and p − 10·v' overflow.
        let n = ft.params(&state).len();
        let mut huge = state.clone();
        huge[n..].fill(3e38);
        let before = bits(&huge);
        let loud = Momentum { lr: 10.0, ..hp };
        let err = ft.step(Isa::scalar(), loud, &mut huge, &x, &y, &mut arena).unwrap_err();
        assert!(matches!(err, FinetuneError::NonFinite { loss } if loss.is_finite()), "{tail}: overflow gave {err:?}");
        assert_eq!(bits(&huge), before, "{tail}: the overflowing step wrote the state");

        let loss = ft.step(Isa::scalar(), hp, &mut state, &x, &y, &mut arena).unwrap();
        assert!(loss.is_finite() && state.iter().all(|v| v.is_finite()), "{tail}: a good step after the refusals");
        assert_ne!(bits(&state), init, "{tail}: the good step did not update");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let buf = calibrated_student(&CFG, 4, 1, DType::F32);
    let file = WeightFile::parse(&buf).unwrap();
    let ft = FineTuner::new(&CFG, Tail::FcAffine, 2, &file).unwrap();
    let (mut state, mut arena) = fresh(&ft);
    let untouched = state.clone();
    let x = vec![0.1; 2 * IMAGE_LEN];
    let hp = Momentum { lr: 0.1, mu: 0.9, wd: 0.0 };
    let short = &mut state.clone()[1..];
    assert!(matches!(ft.step(Isa::scalar(), hp, short, &x, &[0, 1], &mut arena), Err(FinetuneError::StateLen { .. })));
    assert!(matches!(
        ft.step(Isa::scalar(), hp, &mut state, &x, &[0, 10], &mut arena),
        Err(FinetuneError::Labels { .. })
    ));
    assert!(matches!(ft.step(Isa::scalar(), hp, &mut state, &x, &[0], &mut arena), Err(FinetuneError::Labels { .. })));
    let small = &mut arena.clone()[..ft.layout().plan.peak - 1];
    assert!(matches!(
        ft.step(Isa::scalar(), hp, &mut state, &x, &[0, 1], small),
        Err(FinetuneError::Engine(EngineError::ArenaTooSmall { .. }))
    ));
    assert!(matches!(
        ft.step(Isa::scalar(), hp, &mut state, &x[1..], &[0, 1], &mut arena),
        Err(FinetuneError::Engine(EngineError::InputLen { .. }))
    ));
    let mut nan_x = x.clone();
    nan_x[IMAGE_LEN + 17] = f32::NAN;
    assert_eq!(
        ft.step(Isa::scalar(), hp, &mut state, &nan_x, &[0, 1], &mut arena),
        Err(FinetuneError::Engine(EngineError::NonFiniteInput { index: IMAGE_LEN + 17, per_image: IMAGE_LEN }))
    );
    assert_eq!(state, untouched, "a refused step wrote the state");
    let other = ModelConfig::mobilenet_v1(500);
    assert!(matches!(
        FineTuner::new(&other, Tail::Fc, 2, &file),
        Err(FinetuneError::Engine(EngineError::ConfigMismatch { .. }))
    ));
    assert!(matches!(FineTuner::new(&CFG, Tail::Fc, 0, &file), Err(FinetuneError::Model(_))));
    // A NaN weight in the frozen prefix is refused at bind time, as the engine does (the ReLU
    // after it would turn it into 0 and the loss would look fine).
    let mut t = tinykd::fold::inference_tensors(&ParamStore::init(&CFG, 4).unwrap()).unwrap();
    t.iter_mut().find(|t| t.name == "conv2_1_sep_weights").unwrap().data[5] = f32::NAN;
    let outs: Vec<TensorOut> = t.iter().map(|t| TensorOut { name: &t.name, dims: &t.dims, data: &t.data }).collect();
    let bad = AlignedBuf::from_bytes(&to_bytes(&CFG, FileKind::Inference, DType::F32, &outs).unwrap());
    let e = FineTuner::new(&CFG, Tail::Fc, 2, &WeightFile::parse(&bad).unwrap()).unwrap_err();
    assert!(
        matches!(&e, FinetuneError::Engine(EngineError::NonFiniteWeight { name, index: 5 }) if name == "conv2_1_sep_weights"),
        "{e:?}"
    );
}
