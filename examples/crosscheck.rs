//! Records two training runs and the engine's logits for an independent re-computation in
//! PyTorch (`scripts/torch_crosscheck.py`, which reads what this writes).
//!
//! ```text
//! cargo run --release --example crosscheck -- OUT_DIR [BATCH]
//! ```
//!
//! `OUT_DIR/distill`: a ResNet50 teacher (random weights; its running statistics moved a third
//! of the way to the batch statistics by four train-mode batches at learning rate 0) merged
//! with a MobileNetV1 1.0 student, two Momentum steps with cross-entropy, the tutorial's L2
//! hint, a second L2 hint and an FSP loss at 2x2, and a soft-label loss (temperatures 2 and 3). `OUT_DIR/resnet50`: that
//! ResNet50 trained alone with cross-entropy (the main job's teacher phase). Each: batches of
//! `BATCH` (default 8), two threads, weight decay on. Each directory holds `manifest.json` (the programs op by
//! op, the layout of every blob, the optimizer, the losses with their tensors' canonical
//! names, each step's loss values and labels) and little-endian f32 blobs: the starting
//! parameters and statistics (and the teacher's); per step the batch, the teacher tensors
//! the losses read, every student activation the executor kept, the parameter gradients, the
//! parameters, statistics and momentum buffers after the update; and the engine's logits
//! (batch norm folded; f32 and f16 weight files) of the trained model (and the teacher's) for
//! the first batch. `OUT_DIR/finetune`: the on-device fine-tuner (run on the host) training
//! each of its tails for two Momentum steps from a MobileNetV1 ×0.25 student's f16 inference
//! file: the student's parameters, and per tail the state (trainable parameters, then their
//! momentum) before and after each step, with each step's loss.
//!
//! `bash scripts/crosscheck.sh torch|numpy` runs this and the check.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tinykd::dist::{merge, Loss, Merged};
use tinykd::engine::Engine;
use tinykd::finetune::{FineTuner, Tail};
use tinykd::graph::{OpKind, Program, BN_EPS};
use tinykd::kernels::optim::Momentum;
use tinykd::kernels::{DType, Isa};
use tinykd::params::ParamStore;
use tinykd::train::{Schedule, TrainConfig, Trainer};
use tinykd::weights::{AlignedBuf, WeightFile};
use tinykd::{fold, models, ModelConfig, Stem};

const PER: usize = 32 * 32 * 3;
const TEACHER_HINT: &str = "bn5c_branch2b.output.1.tmp_3";
const STUDENT_HINT: &str = "depthwise_conv2d_11";
/// Weight of the L2 hint loss (cross-entropy has 1).
const HINT_WEIGHT: f32 = 0.5;
/// The soft-label loss between the logits: weight, teacher and student temperatures.
const SOFT: (f32, f32, f32) = (0.3, 2.0, 3.0);
/// The FSP loss: weight; the teacher's and the student's pair of 2x2x256 tensors (2x2, so that
/// its 1/(H·W) and the spatial layout matter; the tutorial's hint pair is 1x1).
const FSP: (f32, [&str; 2], [&str; 2]) = (1e-3, ["bn4b_branch2a", "bn4b_branch2b"], ["conv4_2_dw", "conv4_2_dw_bn"]);
/// A second L2 hint at 2x2x256: weight, teacher tensor, student tensor.
const HINT2: (f32, &str, &str) = (0.1, "bn4b_branch2b", "conv4_2_dw");
/// Weight decay: large enough that a missing or misplaced decay term shows in every update.
const WD: f32 = 0.05;

/// Sets every offset (batch-norm β, fc bias) of `p` to a deterministic value in ±0.1, so that
/// what acts on them (weight decay, folding) is not multiplied by zero.
fn offsets(mut p: ParamStore) -> ParamStore {
    for t in p.params_mut().iter_mut().filter(|t| t.name.ends_with("_offset")) {
        for (i, v) in t.data.iter_mut().enumerate() {
            *v = ((i * 37 + t.name.len() * 11) % 41) as f32 / 205.0 - 0.1;
        }
    }
    p
}
/// Momentum's learning rate.
const LR: f32 = 0.01;

/// Writes `data` as little-endian f32 to `dir/name.f32` and returns `name.f32`.
fn blob(dir: &Path, name: &str, data: &[f32]) -> Result<String, Box<dyn Error>> {
    let file = format!("{name}.f32");
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(dir.join(&file), bytes)?;
    Ok(file)
}

/// The program's own name of the tensor `name` reaches (aliases resolved), if any.
fn canon(p: &Program, name: &str) -> Option<String> {
    p.find(name).map(|id| p.tensor(id).name.as_str().to_string())
}

/// Every parameter and statistic of `store` in one blob, with each one's name, dims, kind and
/// offset (in f32) in the returned list.
fn store_blob(dir: &Path, name: &str, store: &ParamStore) -> Result<Value, Box<dyn Error>> {
    let (mut all, mut layout) = (Vec::new(), Vec::new());
    for p in store.params() {
        layout.push(json!({ "name": p.name, "dims": p.dims, "kind": p.kind.as_str(), "offset": all.len() }));
        all.extend_from_slice(&p.data);
    }
    Ok(json!({ "file": blob(dir, name, &all)?, "params": layout }))
}

/// The program op by op: kind, hyper-parameters, input and output tensor names, parameters.
fn program_json(p: &Program) -> Value {
    let name = |id| p.tensor(id).name.as_str().to_string();
    let ops: Vec<Value> = p
        .ops()
        .iter()
        .map(|op| {
            let kind = match op.kind {
                OpKind::Conv { k, stride, pad } => json!({ "op": "conv", "k": k, "stride": stride, "pad": pad }),
                OpKind::DwConv { stride } => json!({ "op": "dwconv", "stride": stride }),
                OpKind::BatchNorm => json!({ "op": "bn" }),
                OpKind::Relu => json!({ "op": "relu" }),
                OpKind::MaxPool => json!({ "op": "maxpool" }),
                OpKind::AddRelu => json!({ "op": "addrelu" }),
                OpKind::GlobalAvgPool => json!({ "op": "gap" }),
                OpKind::Fc => json!({ "op": "fc" }),
            };
            let params: Vec<String> = p.params(op).iter().map(|s| s.name().as_str().to_string()).collect();
            json!({
                "name": op.name.as_str(),
                "kind": kind,
                "inputs": op.inputs().iter().map(|&id| name(id)).collect::<Vec<_>>(),
                "output": name(op.output),
                "params": params,
            })
        })
        .collect();
    json!({ "input": name(p.input()), "output": name(p.output()), "ops": ops })
}

/// `n` deterministic images in [-1, 1) from `seed` (a 64-bit LCG's high bits).
fn images(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * PER)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The engine's logits for each of `images` (batch 1) from `params` exported with `dtype`.
fn engine_logits(
    cfg: &ModelConfig,
    params: &ParamStore,
    dtype: DType,
    images: &[f32],
) -> Result<Vec<f32>, Box<dyn Error>> {
    let bytes = fold::export_inference(params, dtype)?;
    let buf = AlignedBuf::from_bytes(&bytes);
    let file = WeightFile::parse(buf.as_bytes())?;
    let engine = Engine::new(cfg, 1, &file)?;
    let mut arena = vec![0u8; engine.arena_bytes()];
    let mut out = vec![0.0f32; images.len() / PER * 10];
    for (x, y) in images.chunks(PER).zip(out.chunks_mut(10)) {
        engine.run(Isa::detect(), x, &mut arena, y)?;
    }
    Ok(out)
}

/// Runs `batches` through `trainer` one step each, writing to `dir` what each step did (see the
/// module docs) and returning its records; `teacher` names the teacher tensors the losses read.
fn record(
    dir: &Path,
    trainer: &mut Trainer,
    student: &Program,
    teacher: Option<(&Program, &[&str])>,
    batches: &[(Vec<f32>, Vec<u32>)],
) -> Result<Vec<Value>, Box<dyn Error>> {
    let mut steps = Vec::new();
    for (i, (x, y)) in batches.iter().enumerate() {
        let s = i + 1;
        let r = trainer.step(x, y)?;
        let parts: Vec<Value> =
            r.losses.parts.iter().map(|(l, w, v)| json!({ "label": l, "weight": w, "value": v })).collect();
        let mut rec = json!({ "total": r.losses.total, "parts": parts, "labels": y });
        rec["images"] = blob(dir, &format!("images{s}"), x)?.into();
        rec["after"] = store_blob(dir, &format!("student_after{s}"), trainer.params())?;
        // The student's gradients and momentum buffers, in the store's order of trainable
        // parameters; every activation its train-mode forward kept (NHWC or NC).
        let (mut grads, mut velocity, mut layout) = (Vec::new(), Vec::new(), Vec::new());
        for (p, v) in trainer.params().params().iter().zip(trainer.momentum_buffers()) {
            if let Some(g) = trainer.student().param_grad(&p.name) {
                layout.push(json!({ "name": p.name, "dims": p.dims, "offset": grads.len() }));
                grads.extend_from_slice(g);
                velocity.extend_from_slice(v);
            }
        }
        rec["grads"] = json!({ "file": blob(dir, &format!("grads{s}"), &grads)?, "params": layout });
        rec["velocity"] = json!({ "file": blob(dir, &format!("velocity{s}"), &velocity)?, "params": layout });
        let tensors =
            |exec: &tinykd::train::Executor, prog: &Program, names: &mut dyn Iterator<Item = &str>, file: &str| {
                let (mut all, mut layout) = (Vec::new(), Vec::new());
                for name in names {
                    if let Some((a, dims)) = exec.activation(name) {
                        layout.push(json!({ "name": canon(prog, name), "dims": dims.as_slice(), "offset": all.len() }));
                        all.extend_from_slice(a);
                    }
                }
                Ok::<_, Box<dyn Error>>((json!({ "file": blob(dir, file, &all)?, "params": layout }), layout.len()))
            };
        let mut names = student.tensors().iter().map(|t| t.name.as_str());
        rec["activations"] = tensors(trainer.student(), student, &mut names, &format!("activations{s}"))?.0;
        if let Some((tprog, read)) = teacher {
            let tex = trainer.teacher().ok_or("no teacher executor")?;
            let (v, found) = tensors(tex, tprog, &mut read.iter().copied(), &format!("teacher{s}"))?;
            if found != read.len() {
                return Err(
                    format!("the teacher computed {found} of the {} tensors the losses read", read.len()).into()
                );
            }
            rec["teacher"] = v;
        }
        steps.push(rec);
    }
    Ok(steps)
}

fn main() -> Result<(), Box<dyn Error>> {
    const USAGE: &str = "usage: crosscheck OUT_DIR [BATCH: samples per step, at least 2; default 8]";
    let root = PathBuf::from(std::env::args().nth(1).ok_or(USAGE)?);
    let batch: usize = match std::env::args().nth(2) {
        None => 8,
        Some(b) => b.parse().ok().filter(|&b| b >= 2).ok_or(USAGE)?,
    };
    let tcfg = ModelConfig::resnet50();
    let teacher = models::program(&tcfg)?;

    // Running statistics a third of the way to the batch statistics (four train-mode batches
    // at learning rate 0: only the statistics move).
    let still = TrainConfig { batch_size: batch, threads: 2, schedule: Schedule::constant(0.0)?, ..Default::default() };
    let mut warm = Trainer::new(
        Merged::student_only(&teacher),
        offsets(ParamStore::init(&tcfg, 11)?),
        &[Loss::ce()],
        still.clone(),
    )?;
    for i in 0..4 {
        warm.step(&images(batch, 100 + i), &vec![0; batch])?;
    }
    let tparams = warm.into_params();

    let cfg = TrainConfig {
        batch_size: batch,
        threads: 2,
        seed: 0,
        momentum: 0.9,
        weight_decay: WD,
        schedule: Schedule::constant(LR)?,
    };
    let labels = |k: u32| (0..batch as u32).map(|i| (i * k + k / 2) % 10).collect::<Vec<u32>>();
    let batches = [(images(batch, 1), labels(1)), (images(batch, 2), labels(3))];
    let optimizer = json!({ "lr": LR, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay });

    // 1. The tutorial's distillation with every built-in loss.
    let t = |n: &str| format!("teacher_{n}");
    let student_run = |sub: &str, title: &str, scfg: ModelConfig, losses: &[(Loss, Value)], read: &[&str]| {
        let dir = root.join(sub);
        fs::create_dir_all(&dir)?;
        let student = models::program(&scfg)?;
        let sparams = offsets(ParamStore::init(&scfg, 12)?);
        let merged = merge((&teacher, &tparams), &student, &[("image", "image")], "teacher_")?;
        let only: Vec<Loss> = losses.iter().map(|l| l.0.clone()).collect();
        let mut trainer = Trainer::new(merged, sparams.clone(), &only, cfg.clone())?;
        let steps = record(&dir, &mut trainer, &student, Some((&teacher, read)), &batches)?;
        let mut files = serde_json::Map::new();
        files.insert("student_before1".into(), store_blob(&dir, "student_before1", &sparams)?);
        files.insert("teacher".into(), store_blob(&dir, "teacher", &tparams)?);
        for (key, cfg, params, dtype) in [
            ("engine_student_f32", &scfg, trainer.params(), DType::F32),
            ("engine_student_f16", &scfg, trainer.params(), DType::F16),
            ("engine_teacher_f32", &tcfg, &tparams, DType::F32),
        ] {
            files.insert(key.into(), blob(&dir, key, &engine_logits(cfg, params, dtype, &batches[0].0)?)?.into());
        }
        let manifest = json!({
            "title": title,
            "batch": batch,
            "teacher": program_json(&teacher),
            "student": program_json(&student),
            "bn": { "eps": BN_EPS, "momentum": 0.9 },
            "optimizer": optimizer,
            "losses": losses.iter().map(|l| l.1.clone()).collect::<Vec<_>>(),
            "steps": steps,
            "files": files,
        });
        fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;
        Ok::<_, Box<dyn Error>>(())
    };
    let ce = (Loss::ce(), json!({ "kind": "ce", "weight": 1.0 }));
    let soft = (
        Loss::soft_label(&t("fc"), "fc7", SOFT.1, SOFT.2).weighted(SOFT.0),
        json!({ "kind": "soft_label", "weight": SOFT.0, "teacher": "fc", "student": "fc7", "tt": SOFT.1, "ts": SOFT.2 }),
    );
    let student = models::program(&ModelConfig::mobilenet_v1(1000))?;
    student_run(
        "distill",
        "distillation: ResNet50 teacher, MobileNetV1 1.0 student, every loss",
        ModelConfig::mobilenet_v1(1000),
        &[
            ce.clone(),
            (
                Loss::l2(&t(TEACHER_HINT), STUDENT_HINT).weighted(HINT_WEIGHT),
                json!({ "kind": "l2", "weight": HINT_WEIGHT,
                        "teacher": canon(&teacher, TEACHER_HINT), "student": canon(&student, STUDENT_HINT) }),
            ),
            soft.clone(),
            (
                Loss::l2(&t(HINT2.1), HINT2.2).weighted(HINT2.0),
                json!({ "kind": "l2", "weight": HINT2.0,
                        "teacher": canon(&teacher, HINT2.1), "student": canon(&student, HINT2.2) }),
            ),
            (
                Loss::fsp(&t(FSP.1[0]), &t(FSP.1[1]), FSP.2[0], FSP.2[1]).weighted(FSP.0),
                json!({ "kind": "fsp", "weight": FSP.0,
                        "teacher": FSP.1.map(|n| canon(&teacher, n)), "student": FSP.2.map(|n| canon(&student, n)) }),
            ),
        ],
        &[TEACHER_HINT, "fc", FSP.1[0], FSP.1[1]],
    )?;
    // The main job's losses (cross-entropy + soft labels) for a student of odd channel counts
    // (11, 22, 44, 89, 179, 358: every SIMD tail) with the CIFAR stem (conv1 stride 1).
    student_run(
        "distill_odd",
        "distillation: ResNet50 teacher, MobileNetV1 x0.35 CIFAR-stem student, CE + soft labels",
        ModelConfig { stem: Stem::Cifar, ..ModelConfig::mobilenet_v1(350) },
        &[ce, soft],
        &["fc"],
    )?;

    // 2. The main job's teacher phase: ResNet50 trained alone with cross-entropy (the stem's
    // 7x7 conv, max pool, strided and 3x3 convs, the residual adds: none is in the student).
    let dir = root.join("resnet50");
    fs::create_dir_all(&dir)?;
    let mut trainer = Trainer::new(Merged::student_only(&teacher), tparams.clone(), &[Loss::ce()], cfg.clone())?;
    let steps = record(&dir, &mut trainer, &teacher, None, &batches)?;
    let mut files = serde_json::Map::new();
    files.insert("student_before1".into(), store_blob(&dir, "student_before1", &tparams)?);
    for (key, dtype) in [("engine_student_f32", DType::F32), ("engine_student_f16", DType::F16)] {
        files.insert(
            key.into(),
            blob(&dir, key, &engine_logits(&tcfg, trainer.params(), dtype, &batches[0].0)?)?.into(),
        );
    }
    let manifest = json!({
        "title": "ResNet50 trained alone (the main job's teacher phase)",
        "batch": batch,
        "teacher": null,
        "student": program_json(&teacher),
        "bn": { "eps": BN_EPS, "momentum": 0.9 },
        "optimizer": optimizer,
        "losses": [{ "kind": "ce", "weight": 1.0 }],
        "steps": steps,
        "files": files,
    });
    fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;

    // 4. On-device fine-tuning, run on the host: each tail, from a MobileNetV1 ×0.25 student's
    // f16 inference file (running statistics warmed as the teacher's), two Momentum steps.
    let dir = root.join("finetune");
    fs::create_dir_all(&dir)?;
    let fcfg = ModelConfig::mobilenet_v1(250);
    let fprog = models::program(&fcfg)?;
    let mut warm =
        Trainer::new(Merged::student_only(&fprog), offsets(ParamStore::init(&fcfg, 13)?), &[Loss::ce()], still)?;
    for i in 0..4 {
        warm.step(&images(batch, 200 + i), &vec![0; batch])?;
    }
    let fparams = warm.into_params();
    let bytes = fold::export_inference(&fparams, DType::F16)?;
    let buf = AlignedBuf::from_bytes(&bytes);
    let file = WeightFile::parse(buf.as_bytes())?;
    let hp = Momentum { lr: 0.05, mu: 0.9, wd: WD };
    let mut tails = Vec::new();
    for (tail, name) in [(Tail::Fc, "fc"), (Tail::FcAffine, "fc_affine"), (Tail::FcSep, "fc_sep")] {
        let ft = FineTuner::new(&fcfg, tail, batch, &file)?;
        let mut state = vec![0.0f32; ft.state_len()];
        ft.init_state(&mut state)?;
        let mut arena = vec![0u8; ft.arena_bytes()];
        let before = blob(&dir, &format!("{name}_state0"), &state)?;
        let mut steps = Vec::new();
        for (i, (x, y)) in batches.iter().enumerate() {
            let loss = ft.step(Isa::detect(), hp, &mut state, x, y, &mut arena)?;
            let after = blob(&dir, &format!("{name}_state{}", i + 1), &state)?;
            let images = blob(&dir, &format!("images{}", i + 1), x)?;
            steps.push(json!({ "loss": loss, "labels": y, "images": images, "state": after }));
        }
        tails.push(json!({ "tail": name, "state": before, "steps": steps }));
    }
    let manifest = json!({
        "kind": "finetune",
        "title": "on-device fine-tuning on the host: MobileNetV1 x0.25, f16 file, every tail",
        "batch": batch,
        "student": program_json(&fprog),
        "params": store_blob(&dir, "student", &fparams)?,
        "bn": { "eps": BN_EPS, "momentum": 0.9 },
        "optimizer": { "lr": hp.lr, "momentum": hp.mu, "weight_decay": hp.wd },
        "tails": tails,
    });
    fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;
    println!("wrote {} (distill/, distill_odd/, resnet50/, finetune/)", root.display());
    Ok(())
}
