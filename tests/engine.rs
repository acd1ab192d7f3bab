//! The no_std inference engine against an independent reference forward written here: naive
//! loops over the program's ops with plain `Vec` buffers, f64 accumulation, unfolded batch norm
//! in eval mode and no fusion. Random parameters with non-trivial BN statistics; both models,
//! both stems, batch 1 and 2; f16 weights; error cases; the compile-time `EnginePlan` path.

#[path = "../kernels/tests/common/mod.rs"]
mod common;

use common::Rng;
use tinykd::engine::{Engine, EngineError, EnginePlan, StaticEngine};
use tinykd::fold::{export_inference, inference_tensors};
use tinykd::graph::{OpKind, Program, VarKind, BN_EPS};
use tinykd::kernels::{DType, Isa};
use tinykd::models;
use tinykd::params::ParamStore;
use tinykd::weights::{to_bytes, AlignedBuf, FileKind, TensorOut, WeightFile};
use tinykd::{ModelConfig, Stem};

/// Random parameters: He-initialised weights plus random BN γ ∈ [0.5, 1.5), β, μ ∈ [−0.5, 0.5),
/// σ² ∈ [0.5, 2) and a random fc offset.
fn random_params(cfg: &ModelConfig, seed: u64) -> ParamStore {
    let mut store = ParamStore::init(cfg, seed).unwrap();
    let mut rng = Rng::new(seed);
    for p in store.params_mut() {
        let (lo, hi) = if p.name.ends_with("_scale") || p.name.ends_with("_variance") {
            (0.5, 1.5 + 0.5 * p.name.ends_with("_variance") as u8 as f32)
        } else if p.name.ends_with("_offset") || p.name.ends_with("_mean") {
            (-0.5, 0.5)
        } else {
            continue;
        };
        for v in &mut p.data {
            *v = rng.uniform(lo, hi);
        }
    }
    store
}

fn param<'a>(store: &'a ParamStore, name: &str) -> &'a [f32] {
    &store.get(name).unwrap_or_else(|| panic!("no parameter {name}")).data
}

/// The reference forward: every op of the program in order, naive loops, NHWC.
fn reference_forward(prog: &Program, store: &ParamStore, n: usize, image: &[f32]) -> Vec<f32> {
    let mut vals: Vec<Vec<f32>> = vec![Vec::new(); prog.tensors().len()];
    vals[0] = image.to_vec();
    for op in prog.ops() {
        let xs = prog.tensor(op.input()).shape;
        let ys = prog.tensor(op.output).shape;
        let (h, w, c) = (xs.h as usize, xs.w as usize, xs.c as usize);
        let (oh, ow, oc) = (ys.h as usize, ys.w as usize, ys.c as usize);
        let x = &vals[op.input().index()];
        let name = op.name.as_str();
        let y = match op.kind {
            OpKind::Conv { k, stride, pad } => {
                let (k, s, p) = (k as usize, stride as usize, pad as usize);
                assert_eq!((oh, ow), ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1), "{name} geometry");
                let wt = param(store, &format!("{name}_weights"));
                let mut y = vec![0.0f32; n * oh * ow * oc];
                for b in 0..n {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for co in 0..oc {
                                let mut acc = 0.0f64;
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let iy = (oy * s + ky) as isize - p as isize;
                                        let ix = (ox * s + kx) as isize - p as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                            continue;
                                        }
                                        let xb = ((b * h + iy as usize) * w + ix as usize) * c;
                                        for ci in 0..c {
                                            acc += x[xb + ci] as f64 * wt[((ky * k + kx) * c + ci) * oc + co] as f64;
                                        }
                                    }
                                }
                                y[((b * oh + oy) * ow + ox) * oc + co] = acc as f32;
                            }
                        }
                    }
                }
                y
            }
            OpKind::DwConv { stride } => {
                let s = stride as usize;
                let wt = param(store, &format!("{name}_weights"));
                let mut y = vec![0.0f32; n * oh * ow * c];
                for b in 0..n {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ch in 0..c {
                                let mut acc = 0.0f64;
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let iy = (oy * s + ky) as isize - 1;
                                        let ix = (ox * s + kx) as isize - 1;
                                        if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                            let xi = ((b * h + iy as usize) * w + ix as usize) * c + ch;
                                            acc += x[xi] as f64 * wt[(ky * 3 + kx) * c + ch] as f64;
                                        }
                                    }
                                }
                                y[((b * oh + oy) * ow + ox) * c + ch] = acc as f32;
                            }
                        }
                    }
                }
                y
            }
            OpKind::BatchNorm => {
                let g = param(store, &format!("{name}_scale"));
                let be = param(store, &format!("{name}_offset"));
                let m = param(store, &format!("{name}_mean"));
                let v = param(store, &format!("{name}_variance"));
                x.iter()
                    .enumerate()
                    .map(|(i, &xv)| {
                        let ch = i % c;
                        let norm = (xv as f64 - m[ch] as f64) / (v[ch] as f64 + BN_EPS as f64).sqrt();
                        (norm * g[ch] as f64 + be[ch] as f64) as f32
                    })
                    .collect()
            }
            OpKind::Relu => x.iter().map(|&v| v.max(0.0)).collect(),
            OpKind::AddRelu => {
                let other = &vals[op.inputs()[1].index()];
                x.iter().zip(other).map(|(&a, &b)| (a + b).max(0.0)).collect()
            }
            OpKind::MaxPool => {
                let mut y = vec![f32::NEG_INFINITY; n * oh * ow * c];
                for b in 0..n {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (2 * oy + ky) as isize - 1;
                                    let ix = (2 * ox + kx) as isize - 1;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    for ch in 0..c {
                                        let o = &mut y[((b * oh + oy) * ow + ox) * c + ch];
                                        *o = o.max(x[((b * h + iy as usize) * w + ix as usize) * c + ch]);
                                    }
                                }
                            }
                        }
                    }
                }
                y
            }
            OpKind::GlobalAvgPool => {
                let mut y = vec![0.0f32; n * c];
                for b in 0..n {
                    for ch in 0..c {
                        let sum: f64 = (0..h * w).map(|p| x[(b * h * w + p) * c + ch] as f64).sum();
                        y[b * c + ch] = (sum / (h * w) as f64) as f32;
                    }
                }
                y
            }
            OpKind::Fc => {
                let wt = param(store, &format!("{name}_weights"));
                let bias = param(store, &format!("{name}_offset"));
                let mut y = vec![0.0f32; n * oc];
                for b in 0..n {
                    for co in 0..oc {
                        let acc: f64 = (0..c).map(|ci| x[b * c + ci] as f64 * wt[ci * oc + co] as f64).sum();
                        y[b * oc + co] = (acc + bias[co] as f64) as f32;
                    }
                }
                y
            }
        };
        assert_eq!(y.len(), n * ys.numel(), "{name} output length");
        vals[op.output.index()] = y;
    }
    vals.swap_remove(prog.output().index())
}

/// An inference file of `store` in `dtype`, in aligned memory.
fn export(store: &ParamStore, dtype: DType) -> AlignedBuf {
    AlignedBuf::from_bytes(&export_inference(store, dtype).unwrap())
}

/// Runs the engine on the inference file `bytes` for a batch of `n`.
fn engine_forward(cfg: &ModelConfig, bytes: &AlignedBuf, n: usize, image: &[f32]) -> Vec<f32> {
    let file = WeightFile::parse(bytes).unwrap();
    let engine = Engine::new(cfg, n, &file).unwrap();
    // An arena of exactly `arena_bytes`, deliberately misaligned by 3 bytes and filled with NaN
    // bytes: the engine must align it and overwrite everything it reads.
    let need = engine.arena_bytes();
    assert_eq!(need, tinykd::plan::arena_bytes(cfg, n));
    let mut raw = vec![0xFFu8; need + 64];
    let skip = (ALIGN_PROBE + 3 - raw.as_ptr() as usize % ALIGN_PROBE) % ALIGN_PROBE;
    let arena = &mut raw[skip..skip + need];
    let mut logits = vec![0.0f32; n * cfg.classes as usize];
    engine.run(Isa::detect(), image, arena, &mut logits).unwrap();
    logits
}

const ALIGN_PROBE: usize = 16;

/// `max|got − want| ≤ rel · max|want|`.
fn assert_rel(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate reference (max |logit| {scale})");
    let (i, err) =
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold((0, 0.0f32), |a, b| if b.1 > a.1 { b } else { a });
    assert!(
        err <= rel * scale,
        "{what}: logit {i} got {} want {} (error {err:e} > {rel:e} x max|logit| {scale})",
        got[i],
        want[i]
    );
}

fn check_model(cfg: ModelConfig, seed: u64) {
    let store = random_params(&cfg, seed);
    let bytes = export(&store, DType::F32);
    let prog = models::program(&cfg).unwrap();
    let mut rng = Rng::new(seed + 100);
    for n in [1, 2] {
        let image = rng.vec(n * cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize);
        let want = reference_forward(&prog, &store, n, &image);
        let got = engine_forward(&cfg, &bytes, n, &image);
        assert_rel(&format!("{cfg:?} batch {n}"), &got, &want, 1e-5);
        if n == 2 {
            // Each sample of the batch is independent of the other.
            let alone = engine_forward(&cfg, &bytes, 1, &image[image.len() / 2..]);
            assert_rel(&format!("{cfg:?} second sample alone"), &alone, &want[want.len() / 2..], 1e-5);
        }
    }
}

#[test]
fn mobilenet_v1_matches_reference_both_stems() {
    check_model(ModelConfig::mobilenet_v1(1000), 1);
    check_model(ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar).with_input(16, 16), 2);
    check_model(ModelConfig::mobilenet_v1(500).with_classes(7).with_input(32, 64), 3);
}

#[test]
fn resnet50_imagenet_stem_matches_reference() {
    check_model(ModelConfig::resnet50(), 4);
}

#[test]
fn resnet50_cifar_stem_matches_reference() {
    // 8x8 keeps the naive reference fast (the CIFAR stem costs ~1.3 GMAC at 32x32).
    check_model(ModelConfig::resnet50().with_stem(Stem::Cifar).with_input(8, 8), 5);
}

/// f16 weights (f32 compute) stay within 0.5% of max |logit| of the f32 weights: each weight
/// carries a relative rounding error of at most 2⁻¹¹ ≈ 4.9e-4, and these errors add up roughly
/// in quadrature through the depth of the network (measured: ~2.5e-4 for MobileNetV1,
/// ~5e-4 for ResNet50).
#[test]
fn f16_weights_match_f32_within_tolerance() {
    for cfg in [ModelConfig::mobilenet_v1(1000), ModelConfig::resnet50().with_stem(Stem::Cifar).with_input(8, 8)] {
        let store = random_params(&cfg, 6);
        let image = Rng::new(9).vec(2 * cfg.in_h as usize * cfg.in_w as usize * 3);
        let f32_logits = engine_forward(&cfg, &export(&store, DType::F32), 2, &image);
        let f16_logits = engine_forward(&cfg, &export(&store, DType::F16), 2, &image);
        assert_rel(&format!("{cfg:?} f16"), &f16_logits, &f32_logits, 5e-3);
        assert!(f16_logits != f32_logits, "f16 rounding must show");
    }
}

#[test]
fn folded_tensors_are_named_and_shaped_for_the_engine() {
    let cfg = ModelConfig::mobilenet_v1(250);
    let store = random_params(&cfg, 8);
    let t = inference_tensors(&store).unwrap();
    let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(&names[..4], ["conv1_weights", "conv1_bias", "conv2_1_dw_weights", "conv2_1_dw_bias"]);
    assert_eq!(&names[names.len() - 2..], ["fc7_weights", "fc7_offset"]);
    assert_eq!(t.len(), 2 * 27 + 2);
    // Folding: w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), checked on one channel of conv1.
    let (g, be, m, v) = (
        param(&store, "conv1_bn_scale")[5],
        param(&store, "conv1_bn_offset")[5],
        param(&store, "conv1_bn_mean")[5],
        param(&store, "conv1_bn_variance")[5],
    );
    let s = g / (v + BN_EPS).sqrt();
    let w0 = param(&store, "conv1_weights")[5];
    assert!((t[0].data[5] - w0 * s).abs() <= 1e-6 * (w0 * s).abs().max(1e-3));
    assert!((t[1].data[5] - (be - m * s)).abs() <= 1e-6);
    assert_eq!(store.count(VarKind::Statistic), models::summary(&cfg).unwrap().statistics);
}

#[test]
fn param_store_init_is_deterministic() {
    let cfg = ModelConfig::mobilenet_v1(250);
    let (a, b, c) =
        (ParamStore::init(&cfg, 1).unwrap(), ParamStore::init(&cfg, 1).unwrap(), ParamStore::init(&cfg, 2).unwrap());
    assert_eq!(a, b);
    assert_ne!(a.get("conv1_weights"), c.get("conv1_weights"));
    let w = &a.get("conv2_1_sep_weights").unwrap().data;
    let bound = (6.0f32 / 8.0).sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.5 * bound), "He-uniform bound");
    assert!(a.get("conv1_bn_variance").unwrap().data.iter().all(|&v| v == 1.0));
    assert!(a.get("conv1_bn_mean").unwrap().data.iter().all(|&v| v == 0.0));
    assert_eq!(a.count(VarKind::Parameter), models::summary(&cfg).unwrap().params);
    // A params file round-trips through the weight-file writer and reader.
    let bytes = AlignedBuf::from_bytes(&to_bytes(&cfg, FileKind::Params, DType::F32, &a.to_tensors()).unwrap());
    let file = WeightFile::parse(&bytes).unwrap();
    assert_eq!(file.len(), a.params().len());
}

/// Writes an inference file of `cfg` whose tensors went through `edit` first.
fn edited_file(cfg: &ModelConfig, edit: impl FnOnce(&mut Vec<tinykd::fold::InferenceTensor>)) -> AlignedBuf {
    let mut t = inference_tensors(&random_params(cfg, 3)).unwrap();
    edit(&mut t);
    let outs: Vec<TensorOut> = t.iter().map(|t| TensorOut { name: &t.name, dims: &t.dims, data: &t.data }).collect();
    AlignedBuf::from_bytes(&to_bytes(cfg, FileKind::Inference, DType::F32, &outs).unwrap())
}

/// A NaN or infinite weight (f32 or f16) is refused when the engine binds the file, naming the
/// tensor and the index: run, a NaN weight before a ReLU comes out as 0 and the logits look
/// valid. The exporter refuses such parameters before they reach a file.
#[test]
fn engine_refuses_non_finite_weights_and_the_exporter_refuses_non_finite_parameters() {
    let cfg = ModelConfig::mobilenet_v1(250);
    for (dtype, bad) in [(DType::F32, f32::NAN), (DType::F16, f32::NEG_INFINITY), (DType::F32, f32::INFINITY)] {
        let mut t = inference_tensors(&random_params(&cfg, 3)).unwrap();
        t.iter_mut().find(|t| t.name == "conv2_2_sep_weights").unwrap().data[17] = bad;
        let outs: Vec<TensorOut> =
            t.iter().map(|t| TensorOut { name: &t.name, dims: &t.dims, data: &t.data }).collect();
        let buf = AlignedBuf::from_bytes(&to_bytes(&cfg, FileKind::Inference, dtype, &outs).unwrap());
        let file = WeightFile::parse(&buf).unwrap();
        let e = Engine::new(&cfg, 1, &file).unwrap_err();
        assert!(matches!(e, EngineError::NonFiniteWeight { name, index: 17 } if name == "conv2_2_sep_weights"), "{e}");
        assert!(e.to_string().contains("`conv2_2_sep_weights`") && e.to_string().contains("index 17"), "{e}");
        let plan = EnginePlan::new(&cfg, 1).unwrap();
        assert!(matches!(Engine::from_plan(&plan, &file), Err(EngineError::NonFiniteWeight { .. })));
    }
    let mut store = random_params(&cfg, 3);
    store.get_mut("conv1_bn_variance").unwrap().data[2] = f32::NAN;
    let e = export_inference(&store, DType::F32).unwrap_err();
    assert!(e.to_string().contains("`conv1_bn_variance` has 1 NaN or infinite values (the first at index 2)"), "{e}");
    // Finite statistics that fold to non-finite values (a variance below −ε) are named by the
    // exporter, not left for the engine to refuse.
    let mut store = random_params(&cfg, 3);
    store.get_mut("conv1_bn_variance").unwrap().data[2] = -1.0;
    let e = export_inference(&store, DType::F32).unwrap_err();
    assert!(e.to_string().contains("folding batch norm `conv1_bn` gives `conv1_weights` "), "{e}");
    // A data length that does not match the dims is named as such (the dims alone agree).
    let mut store = random_params(&cfg, 3);
    store.get_mut("fc7_offset").unwrap().data.pop();
    let e = export_inference(&store, DType::F32).unwrap_err();
    assert_eq!(e.to_string(), "parameter `fc7_offset` has 9 values, its dims hold 10");
}

#[test]
fn engine_reports_clear_errors() {
    let cfg = ModelConfig::mobilenet_v1(250);
    let good = edited_file(&cfg, |_| {});
    let file = WeightFile::parse(&good).unwrap();

    // Missing tensor.
    let bytes = edited_file(&cfg, |t| t.retain(|t| t.name != "conv5_6_dw_bias"));
    let e = Engine::new(&cfg, 1, &WeightFile::parse(&bytes).unwrap()).unwrap_err();
    assert!(matches!(e, EngineError::MissingTensor { name } if name == "conv5_6_dw_bias"));
    assert_eq!(e.to_string(), "tensor `conv5_6_dw_bias` is missing from the weight file");

    // Wrong dims: both shapes are named.
    let bytes = edited_file(&cfg, |t| {
        let fc = t.iter_mut().find(|t| t.name == "fc7_weights").unwrap();
        fc.dims = vec![10, 256];
    });
    let e = Engine::new(&cfg, 1, &WeightFile::parse(&bytes).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "tensor `fc7_weights` has dims [10, 256] in the weight file, the model needs [256, 10]");

    // Config mismatch and a raw-parameter file.
    let other = ModelConfig::mobilenet_v1(500);
    assert!(matches!(Engine::new(&other, 1, &file), Err(EngineError::ConfigMismatch { .. })));
    let params = random_params(&cfg, 1);
    let raw = AlignedBuf::from_bytes(&to_bytes(&cfg, FileKind::Params, DType::F32, &params.to_tensors()).unwrap());
    assert_eq!(Engine::new(&cfg, 1, &WeightFile::parse(&raw).unwrap()).unwrap_err(), EngineError::NotInference);
    assert!(matches!(Engine::new(&cfg, 0, &file), Err(EngineError::Model(models::ModelError::Batch))));

    // Arena too small, wrong input and logits lengths; the logits are left untouched.
    let engine = Engine::new(&cfg, 1, &file).unwrap();
    let image = vec![0.5f32; 32 * 32 * 3];
    let mut logits = [7.0f32; 10];
    let mut arena = vec![0u8; engine.arena_bytes()];
    let base = arena.as_ptr().align_offset(tinykd::plan::ALIGN);
    let short = &mut arena[base..base + engine.plan().peak - 1];
    let e = engine.run(Isa::scalar(), &image, short, &mut logits).unwrap_err();
    assert_eq!(e, EngineError::ArenaTooSmall { needed: engine.plan().peak, got: engine.plan().peak - 1 });
    assert!(e.to_string().contains("too small"), "{e}");
    let e = engine.run(Isa::scalar(), &image[1..], &mut arena, &mut logits).unwrap_err();
    assert_eq!(e, EngineError::InputLen { expected: 3072, got: 3071 });
    let e = engine.run(Isa::scalar(), &image, &mut arena, &mut logits[..9]).unwrap_err();
    assert_eq!(e, EngineError::LogitsLen { expected: 10, got: 9 });
    // A NaN or infinite input value is named (a ReLU would have turned NaN into 0).
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut poisoned = image.clone();
        poisoned[1000] = bad;
        let e = engine.run(Isa::scalar(), &poisoned, &mut arena, &mut logits).unwrap_err();
        assert_eq!(e, EngineError::NonFiniteInput { index: 1000, per_image: 3072 });
        assert!(e.to_string().contains("input value 1000 (image 0, value 1000 of it) is NaN or infinite"), "{e}");
    }
    // Huge finite values whose sum overflows are still accepted (the fast test is only sufficient).
    let huge = vec![3e38f32; 32 * 32 * 3];
    engine.run(Isa::scalar(), &huge, &mut arena, &mut logits).unwrap();
    logits = [7.0; 10];
    assert_eq!(logits, [7.0; 10]);
    // An arena starting ALIGN-aligned needs only the plan's peak.
    let exact = &mut arena[base..base + engine.plan().peak];
    engine.run(Isa::scalar(), &image, exact, &mut logits).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()) && logits != [7.0; 10]);
}

/// The student of the firmware (`examples/mcu`), planned by the compiler for batch 2.
const STUDENT: ModelConfig = ModelConfig::mobilenet_v1(250);
static STUDENT_PLAN: EnginePlan = EnginePlan::build(&STUDENT, 2);

/// Runs `engine` on `image` (batch of `n`) with a fresh arena of `engine.arena_bytes()`.
fn run_engine<P: core::borrow::Borrow<EnginePlan>>(engine: &Engine<'_, P>, n: usize, image: &[f32]) -> Vec<f32> {
    let cfg = engine.schedule().config;
    let mut arena = vec![0xFFu8; engine.arena_bytes()];
    let mut logits = vec![0.0f32; n * cfg.classes as usize];
    engine.run(Isa::detect(), image, &mut arena, &mut logits).unwrap();
    logits
}

#[test]
fn static_plan_engine_equals_engine_new() {
    // The const plan is the runtime one.
    let (schedule, plan) = tinykd::plan::plan_for(&STUDENT, 2).unwrap();
    assert_eq!(STUDENT_PLAN.plan(), &plan);
    assert_eq!(STUDENT_PLAN.schedule().steps(), schedule.steps());
    assert_eq!(STUDENT_PLAN.schedule().buffers(), schedule.buffers());
    assert_eq!((STUDENT_PLAN.config(), STUDENT_PLAN.batch()), (STUDENT, 2));
    assert_eq!(STUDENT_PLAN.arena_bytes(), tinykd::plan::arena_bytes(&STUDENT, 2));

    let store = random_params(&STUDENT, 21);
    let image = Rng::new(22).vec(2 * 32 * 32 * 3);
    for dtype in [DType::F32, DType::F16] {
        let bytes = export(&store, dtype);
        let file = WeightFile::parse(&bytes).unwrap();
        let host = Engine::new(&STUDENT, 2, &file).unwrap();
        let want = run_engine(&host, 2, &image);
        let fixed: StaticEngine = Engine::from_plan(&STUDENT_PLAN, &file).unwrap();
        assert_eq!(fixed.plan(), host.plan());
        assert_eq!(fixed.arena_bytes(), host.arena_bytes());
        assert_eq!(run_engine(&fixed, 2, &image), want, "{dtype:?}: static plan vs Engine::new");
        // An owned plan works through the same constructor.
        let owned = Engine::from_plan(EnginePlan::new(&STUDENT, 2).unwrap(), &file).unwrap();
        assert_eq!(run_engine(&owned, 2, &image), want, "{dtype:?}: owned plan");
        // The reference forward agrees too (the engine is not just equal to itself).
        if dtype == DType::F32 {
            let prog = models::program(&STUDENT).unwrap();
            assert_rel("static plan vs reference", &want, &reference_forward(&prog, &store, 2, &image), 1e-5);
        }
    }
    // What a firmware holds: the reference, the file view and a per-step offset table, far
    // smaller than the schedule and plan it borrows.
    let small = core::mem::size_of::<StaticEngine>();
    assert!(small <= 2 * 96 * core::mem::size_of::<usize>() + 128, "StaticEngine is {small} bytes");
    assert!(core::mem::size_of::<EnginePlan>() > 4 * small);
}

#[test]
fn tensors_are_found_in_any_file_order() {
    let cfg = STUDENT;
    let image = Rng::new(23).vec(2 * 32 * 32 * 3);
    let in_order = edited_file(&cfg, |_| {});
    let want =
        run_engine(&Engine::from_plan(&STUDENT_PLAN, &WeightFile::parse(&in_order).unwrap()).unwrap(), 2, &image);
    // Reversed (every lookup wraps around to the start) and interleaved with extra tensors.
    let reversed = edited_file(&cfg, |t| t.reverse());
    let padded = edited_file(&cfg, |t| {
        let extra =
            |i: usize| tinykd::fold::InferenceTensor { name: format!("extra_{i}"), dims: vec![3], data: vec![9.0; 3] };
        let mut out = Vec::new();
        for (i, x) in t.drain(..).enumerate() {
            out.push(extra(i));
            out.push(x);
        }
        out.swap(4, 40);
        *t = out;
    });
    for (what, bytes) in [("reversed", reversed), ("padded and swapped", padded)] {
        let file = WeightFile::parse(&bytes).unwrap();
        assert_eq!(run_engine(&Engine::from_plan(&STUDENT_PLAN, &file).unwrap(), 2, &image), want, "{what}");
        assert_eq!(run_engine(&Engine::new(&cfg, 2, &file).unwrap(), 2, &image), want, "{what}: Engine::new");
    }
}

#[test]
fn static_plan_engine_reports_clear_errors() {
    let good = edited_file(&STUDENT, |_| {});
    let file = WeightFile::parse(&good).unwrap();
    // The plan is for another config than the file.
    static WIDE: EnginePlan = EnginePlan::build(&ModelConfig::mobilenet_v1(500), 1);
    let e = Engine::from_plan(&WIDE, &file).unwrap_err();
    assert_eq!(e, EngineError::ConfigMismatch { file: STUDENT, model: ModelConfig::mobilenet_v1(500) });
    // Missing tensor, wrong dims, raw parameters.
    let bytes = edited_file(&STUDENT, |t| t.retain(|t| t.name != "fc7_offset"));
    let e = Engine::from_plan(&STUDENT_PLAN, &WeightFile::parse(&bytes).unwrap()).unwrap_err();
    assert!(matches!(e, EngineError::MissingTensor { name } if name == "fc7_offset"), "{e}");
    let bytes =
        edited_file(&STUDENT, |t| t.iter_mut().find(|t| t.name == "conv2_1_dw_weights").unwrap().dims = vec![8, 9]);
    let e = Engine::from_plan(&STUDENT_PLAN, &WeightFile::parse(&bytes).unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor `conv2_1_dw_weights` has dims [8, 9] in the weight file, the model needs [3, 3, 8]"
    );
    let params = random_params(&STUDENT, 1);
    let raw = AlignedBuf::from_bytes(&to_bytes(&STUDENT, FileKind::Params, DType::F32, &params.to_tensors()).unwrap());
    assert_eq!(
        Engine::from_plan(&STUDENT_PLAN, &WeightFile::parse(&raw).unwrap()).unwrap_err(),
        EngineError::NotInference
    );
    // Invalid plans are refused when built at run time (and fail to compile as a `static`).
    assert_eq!(EnginePlan::new(&STUDENT, 0).unwrap_err(), models::ModelError::Batch);
    assert!(matches!(EnginePlan::new(&ModelConfig::mobilenet_v1(10), 1), Err(models::ModelError::Scale { .. })));
    // A wrong input length is still caught with a static plan (batch 2).
    let engine = Engine::from_plan(&STUDENT_PLAN, &file).unwrap();
    let mut arena = vec![0u8; engine.arena_bytes()];
    let e = engine.run(Isa::scalar(), &[0.0; 3072], &mut arena, &mut [0.0; 20]).unwrap_err();
    assert_eq!(e, EngineError::InputLen { expected: 6144, got: 3072 });
    let mut two = [0.0f32; 6144];
    two[3072 + 5] = f32::NAN;
    let e = engine.run(Isa::scalar(), &two, &mut arena, &mut [0.0; 20]).unwrap_err();
    assert_eq!(e, EngineError::NonFiniteInput { index: 3077, per_image: 3072 });
    assert!(e.to_string().contains("(image 1, value 5 of it)"), "{e}");
}

#[test]
fn packed_panels_match_the_file_layout_on_every_isa() {
    // Batch 1 packs every layer but the stem (ResNet50's 7x7 stem has 3 input channels: not
    // packed); batch 3 packs fewer; both dtypes; each ISA this CPU has against the unpacked run
    // (on AVX2 the packed layers of over 16 rows run from the file: the packed ones after them
    // must still find their panels).
    let cases = [(STUDENT, 1), (STUDENT, 3), (ModelConfig::resnet50(), 1)];
    for (cfg, n) in cases {
        let store = random_params(&cfg, 31);
        let image = Rng::new(32).vec(n * 32 * 32 * 3);
        for dtype in [DType::F32, DType::F16] {
            let bytes = export(&store, dtype);
            let file = WeightFile::parse(&bytes).unwrap();
            let plain = Engine::new(&cfg, n, &file).unwrap();
            let mut packed = plain.clone();
            let need = packed.panels_bytes();
            assert!(need > 0, "{cfg:?} batch {n}: nothing packed");
            // Too short a buffer is refused and leaves the engine as it was.
            let mut short = vec![0u8; need - 1];
            let err = packed.with_panels(&mut short).unwrap_err();
            assert_eq!(err, EngineError::PanelBufferTooSmall { needed: need, got: need - 1 });
            assert!(err.to_string().contains("too small"), "{err}");
            let mut buf = vec![0u8; need];
            packed.with_panels(&mut buf).unwrap();
            for kind in tinykd::kernels::IsaKind::ALL {
                let Some(isa) = Isa::force(kind) else { continue };
                let mut arena = vec![0u8; plain.arena_bytes()];
                let mut want = vec![0.0f32; n * cfg.classes as usize];
                plain.run(isa, &image, &mut arena, &mut want).unwrap();
                let mut got = vec![f32::NAN; want.len()];
                packed.run(isa, &image, &mut arena, &mut got).unwrap();
                assert_rel(&format!("{cfg:?} batch {n} {dtype:?} {kind:?}: panels vs file"), &got, &want, 1e-4);
            }
        }
    }
}

/// A batch whose tensors do not fit memory is refused by the plan (and so by the engine, the
/// const plan and the fine-tuner's layout). A batch of 2⁶² used to wrap the arena size to 64
/// bytes and the input and logits lengths to 0, so empty slices passed and the engine wrote out
/// of bounds.
#[test]
fn a_batch_whose_tensors_do_not_fit_memory_is_refused() {
    let cfg = ModelConfig::mobilenet_v1(250).with_classes(16);
    let bytes = export(&random_params(&cfg, 3), DType::F32);
    let file = WeightFile::parse(&bytes).unwrap();
    for batch in [1usize << 62, usize::MAX, tinykd::plan::MAX_BUFFER_BYTES] {
        let want = models::ModelError::BatchTooLarge { batch };
        assert_eq!(EnginePlan::new(&cfg, batch).err(), Some(want), "batch {batch}");
        match Engine::new(&cfg, batch, &file) {
            Err(EngineError::Model(e)) => assert_eq!(e, want),
            Err(e) => panic!("batch {batch}: {e}"),
            Ok(_) => panic!("batch {batch}: accepted"),
        }
        let e = tinykd::finetune::Layout::new(&cfg, tinykd::finetune::Tail::Fc, batch).unwrap_err();
        assert_eq!(e, tinykd::finetune::FinetuneError::Model(want));
        assert!(want.to_string().contains(&batch.to_string()));
    }
    // A large batch that fits is planned (a plan is sizes only: nothing is allocated).
    assert!(EnginePlan::new(&cfg, 1 << 20).is_ok());
}

#[test]
fn library_evaluation_is_independent_of_batch_and_threads_and_matches_a_plain_loop() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tinykd::host::data::synth;
    use tinykd::host::eval::{evaluate, EvalError, Hits};

    let cfg = ModelConfig::mobilenet_v1(250);
    let buf = export(&random_params(&cfg, 3), DType::F16);
    let file = WeightFile::parse(buf.as_bytes()).unwrap();
    let (_, test) = synth::generate(10, 37, 5);
    // Image by image through one engine.
    let engine = Engine::new(&cfg, 1, &file).unwrap();
    let mut arena = vec![0u8; engine.arena_bytes()];
    let (mut x, mut logits, mut hits) = (Vec::new(), [0.0f32; 10], Hits::default());
    for i in 0..test.len() {
        test.batch_nhwc(&[i], &mut x);
        engine.run(Isa::detect(), &x, &mut arena, &mut logits).unwrap();
        hits.add(&logits, &[test.label(i) as u32]).unwrap();
    }
    let want = hits.accuracy(test.len());
    // 37 images in batches of 5 over 3 threads (tails everywhere), of 50 on one, of 1 on two.
    for (batch, threads) in [(5, 3), (50, 1), (1, 2)] {
        let done = AtomicUsize::new(0);
        let count = |k: usize| {
            done.fetch_add(k, Ordering::Relaxed);
        };
        let got = evaluate(&file, &test, batch, threads, Some(&count)).unwrap();
        assert_eq!(got, want, "batch {batch}, {threads} threads");
        assert_eq!(done.into_inner(), 37, "progress counts every image once");
    }
    // A model with fewer classes than the labels, or for other input sizes: typed errors.
    for (other, labels) in
        [(ModelConfig { classes: 3, ..cfg }, true), (ModelConfig { in_h: 64, in_w: 64, ..cfg }, false)]
    {
        let buf = export(&random_params(&other, 3), DType::F32);
        let file = WeightFile::parse(buf.as_bytes()).unwrap();
        let e = evaluate(&file, &test, 8, 2, None).unwrap_err();
        match (e, labels) {
            (EvalError::Labels(_), true) | (EvalError::Engine(EngineError::InputLen { .. }), false) => {}
            (e, _) => panic!("{other:?}: {e:?}"),
        }
    }
}
