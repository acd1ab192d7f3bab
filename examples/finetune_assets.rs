//! Writes the inputs of the fine-tuning firmware in `examples/mcu_finetune/` and the host's
//! answers for them (the same `tinykd::finetune` code, scalar path, that the Cortex-M4F runs):
//!
//! ```text
//! cargo run --example finetune_assets -- [--out examples/mcu_finetune/assets]
//! ```
//!
//! The deployed student is MobileNetV1 ×0.25 with He-initialised weights whose batch-norm
//! statistics are calibrated on 30 train-mode batches of the unshifted synthetic data (a
//! random-feature network; its fc was never trained for the user's classes), exported
//! BN-folded with f16 storage. The user's task (see [`user_task`]): synthetic images through a
//! new sensor (red/blue swapped, darker) with four new classes, the scene's colour cast.
//!
//! Files written to `--out`: `student_f16.tkd`; `train.bin` / `heldout.bin` (normalised NHWC
//! f32 LE images) with `train_labels.bin` / `heldout_labels.bin` (u32 LE); `model.rs` (the
//! constants the firmware is built with); `expected_<tail>.txt` for every tail: the host's
//! held-out accuracy before and after fine-tuning, the loss of every step and a checksum of
//! the updated parameters, in the lines the firmware prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tinykd::finetune::{finetune_arena_bytes, state_len, FineTuner, Tail};
use tinykd::fold::export_inference;
use tinykd::host::data::{synth, Rng};
use tinykd::kernels::optim::Momentum;
use tinykd::kernels::{DType, Isa};
use tinykd::params::ParamStore;
use tinykd::train::Executor;
use tinykd::weights::{AlignedBuf, WeightFile};
use tinykd::{models, ModelConfig};

/// Writes the fine-tuning firmware's student, samples and expected results.
#[derive(Parser, Debug)]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "examples/mcu_finetune/assets")]
    out: PathBuf,
}

/// The student.
const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);
/// Seed of the student's initialisation and calibration data.
const SEED: u64 = 7;
/// Fine-tuning batch.
const BATCH: usize = 8;
/// Labelled samples the device trains on.
const N_TRAIN: usize = 32;
/// Held-out samples the device evaluates on.
const N_HELDOUT: usize = 64;
/// Passes over the training samples.
const EPOCHS: usize = 3;
/// Momentum SGD.
const HP: Momentum = Momentum { lr: 0.03, mu: 0.9, wd: 0.0 };
/// Values of one image.
const IMAGE_LEN: usize = 32 * 32 * 3;
/// Number of the user's new classes: the scene's colour cast (neutral, warm, cool, green).
const NEW_CLASSES: usize = 4;

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finetune_assets: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let student = calibrated_student(30)?;
    let (xt, yt) = user_task(N_TRAIN, 11);
    let (xh, yh) = user_task(N_HELDOUT, 12);
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write(out, "student_f16.tkd", &student)?;
    write(out, "train.bin", &le_bytes(&xt))?;
    write(out, "train_labels.bin", &le_bytes_u32(&yt))?;
    write(out, "heldout.bin", &le_bytes(&xh))?;
    write(out, "heldout_labels.bin", &le_bytes_u32(&yh))?;
    write(out, "model.rs", model_rs().as_bytes())?;
    let buf = AlignedBuf::from_bytes(&student);
    let file = WeightFile::parse(&buf).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("student: MobileNetV1 x0.25, f16 file {} B", student.len());
    for tail in Tail::ALL {
        let text = expected(&file, tail, &xt, &yt, &xh, &yh)?;
        print!("{text}");
        write(out, &format!("expected_{}.txt", tail_file(tail)), text.as_bytes())?;
    }
    Ok(())
}

/// `fc`, `fc_affine`, `fc_sep`.
fn tail_file(tail: Tail) -> String {
    tail.as_str().replace('+', "_")
}

/// He-initialised MobileNetV1 ×0.25 whose BN running statistics come from `batches`
/// train-mode forwards of 32 unshifted synthetic training images, BN-folded, f16.
fn calibrated_student(batches: usize) -> Result<Vec<u8>> {
    let mut store = ParamStore::init(&CFG, SEED)?;
    let prog = models::program(&CFG)?;
    let mut exec = Executor::new(&prog, 32, 2);
    let (train, _) = synth::generate(32 * batches, 0, SEED);
    let mut x = Vec::new();
    for b in 0..batches {
        let idx: Vec<usize> = (32 * b..32 * (b + 1)).collect();
        train.batch_nhwc(&idx, &mut x);
        exec.forward_train(&mut store, &x).map_err(|e| anyhow::anyhow!("calibration: {e:?}"))?;
    }
    Ok(export_inference(&store, DType::F16)?)
}

/// The user's task: `n` synthetic test images (split `seed`) seen through a new sensor that
/// swaps red and blue and darkens (`x' = 0.6·x_swapped − 0.25`), under one of four colour
/// casts of random strength (0.3–0.5) with random brightness (±0.15); the label is the cast.
/// (Mirrors `user_task` in `tests/finetune.rs`.)
fn user_task(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    const CASTS: [[f32; 3]; NEW_CLASSES] = [[0.0, 0.0, 0.0], [1.0, 0.3, -0.6], [-0.6, 0.1, 1.0], [-0.4, 1.0, -0.4]];
    let (_, test) = synth::generate(0, n, seed);
    let idx: Vec<usize> = (0..n).collect();
    let mut x = Vec::new();
    test.batch_nhwc(&idx, &mut x);
    let mut rng = Rng::stream(seed, 0x7573_6572); // "user"
    let mut labels = Vec::with_capacity(n);
    for img in x.chunks_exact_mut(IMAGE_LEN) {
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

/// Held-out top-1 count.
fn correct(ft: &FineTuner, state: &[f32], x: &[f32], y: &[u32], arena: &mut [u8]) -> Result<usize> {
    let mut ok = 0;
    for (xs, ys) in x.chunks_exact(IMAGE_LEN * BATCH).zip(y.chunks_exact(BATCH)) {
        ok += ft.correct(Isa::scalar(), state, xs, ys, arena)?;
    }
    Ok(ok)
}

/// The host's run of `tail`, in the firmware's output lines.
fn expected(file: &WeightFile, tail: Tail, xt: &[f32], yt: &[u32], xh: &[f32], yh: &[u32]) -> Result<String> {
    let ft = FineTuner::new(&CFG, tail, BATCH, file)?;
    let mut state = vec![0.0; ft.state_len()];
    ft.init_state(&mut state)?;
    let mut arena = vec![0u8; ft.arena_bytes()];
    let mut text = format!(
        "tail {tail} trainable={} state_bytes={} arena_bytes={}\n",
        ft.layout().trainable(),
        4 * state_len(&CFG, tail),
        finetune_arena_bytes(&CFG, tail, BATCH)
    );
    text += &format!("before correct={} of {N_HELDOUT}\n", correct(&ft, &state, xh, yh, &mut arena)?);
    let mut step = 0;
    for _ in 0..EPOCHS {
        for (xs, ys) in xt.chunks_exact(IMAGE_LEN * BATCH).zip(yt.chunks_exact(BATCH)) {
            let loss = ft.step(Isa::scalar(), HP, &mut state, xs, ys, &mut arena)?;
            text += &format!("step {step} loss={loss:?}\n");
            step += 1;
        }
    }
    text += &format!("after correct={} of {N_HELDOUT}\n", correct(&ft, &state, xh, yh, &mut arena)?);
    let p = ft.params(&state);
    let sum: f32 = p.iter().sum();
    let abs: f32 = p.iter().map(|v| v.abs()).sum();
    text += &format!("params sum={sum:?} abs={abs:?} first={:?} last={:?}\n", p[0], p[p.len() - 1]);
    Ok(text)
}

fn model_rs() -> String {
    format!(
        "// Generated by `cargo run --example finetune_assets`; do not edit.\n\
         /// The student's model configuration.\n\
         pub const CFG: ModelConfig = ModelConfig::mobilenet_v1(250);\n\
         /// Fine-tuning batch.\npub const BATCH: usize = {BATCH};\n\
         /// Training samples in `train.bin`.\npub const N_TRAIN: usize = {N_TRAIN};\n\
         /// Held-out samples in `heldout.bin`.\npub const N_HELDOUT: usize = {N_HELDOUT};\n\
         /// Passes over the training samples.\npub const EPOCHS: usize = {EPOCHS};\n\
         /// Momentum SGD hyper-parameters.\npub const HP: Momentum = Momentum {{ lr: {:?}, mu: {:?}, wd: {:?} }};\n",
        HP.lr, HP.mu, HP.wd
    )
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}
