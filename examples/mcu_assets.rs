//! Writes the inputs of the Cortex-M4F firmware in `examples/mcu/` and the host engine's answers
//! for them:
//!
//! ```text
//! cargo run --example mcu_assets -- [--weights FILE] [--scale 0.25] [--images 8] [--seed 7] --out examples/mcu/assets
//! ```
//!
//! Files written to `--out`:
//! - `student_f32.tkd`, `student_f16.tkd`: inference (BN-folded) weight files of the student;
//! - `images.bin`: `--images` normalised NHWC f32 LE test images of the built-in synthetic data;
//! - `expected_f32.bin`, `expected_f16.bin`: the host engine's logits (scalar path, the one the
//!   M4F runs) for each image with each weight file, `[images][classes]` f32 LE;
//! - `expected.txt`: the same as text, one line per image and dtype: `dtype index top1 label
//!   logits...`;
//! - `model.rs`: the student's `ModelConfig` as Rust constants, from which the firmware sizes
//!   its arena at compile time.
//!
//! Without `--weights` the student is the deterministic random initialisation of `--seed`
//! (He-uniform weights) with random, non-trivial batch-norm parameters and statistics, so the
//! fold is exercised. `--weights` takes a MobileNetV1 Params or Inference weight file (as the
//! trainer exports; f32 or f16), whose config then wins over `--scale`; with an f16 Inference
//! file the f32 variant is its f16 weights widened.
//!
//! The firmware runs MobileNetV1 only, and both weight files must fit its flash (`FLASH` in
//! `examples/mcu/memory.x`) with the images, the host logits and the code: another model, or a
//! student too wide for that flash, is refused before anything is written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tinykd::engine::Engine;
use tinykd::fold;
use tinykd::graph::OpKind;
use tinykd::host::cli::model_args::describe;
use tinykd::host::data::{synth, Rng};
use tinykd::kernels::{DType, Isa};
use tinykd::params::ParamStore;
use tinykd::weights::{self, AlignedBuf, FileKind, TensorOut, WeightFile};
use tinykd::{models, Arch, ModelConfig};

/// Writes the firmware's weight files, test images and the host engine's logits.
#[derive(Parser, Debug)]
struct Args {
    /// A MobileNetV1 Params or Inference weight file (f32 or f16); default: the random
    /// initialisation of `--seed`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// MobileNetV1 width multiplier (ignored with `--weights`, whose config is used).
    #[arg(long, default_value_t = 0.25)]
    scale: f64,
    /// Number of test images.
    #[arg(long, default_value_t = 8)]
    images: usize,
    /// Seed of the random student and of the synthetic images.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "examples/mcu/assets")]
    out: PathBuf,
}

/// Largest accepted difference between the host's scalar and SIMD logits (different summation
/// orders), a sanity check of the reference itself.
const ISA_TOLERANCE: f32 = 1e-3;

/// The firmware's linker memory map; its `FLASH` length bounds what the assets may hold.
const MEMORY_X: &str = include_str!("mcu/memory.x");

/// Flash the firmware needs besides the embedded files: its code (vector table + `.text`,
/// 86.5 KB measured by `examples/mcu/check.sh`, docs/MCU.md) and the rest of `.rodata`, with
/// room to grow.
const CODE_RESERVE: usize = 128 * 1024;

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcu_assets: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let (cfg, f32_file, f16_file) = match &args.weights {
        Some(path) => from_file(path)?,
        None => {
            let permille = (args.scale * 1000.0).round();
            if !(1.0..=u16::MAX as f64).contains(&permille) {
                bail!("--scale {} is out of range", args.scale);
            }
            let cfg = ModelConfig::mobilenet_v1(permille as u16);
            let params = random_student(&cfg, args.seed)?;
            let f32_file = fold::export_inference(&params, DType::F32)?;
            let f16_file = fold::export_inference(&params, DType::F16)?;
            (cfg, f32_file, f16_file)
        }
    };
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    let image_len = cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize;
    if image_len != synth_image_len() {
        bail!("the synthetic test images are 32x32x3; the model takes {}x{}x{}", cfg.in_h, cfg.in_w, cfg.in_c);
    }
    check_flash(&cfg, &f32_file, &f16_file, args.images)?;
    let (_, test) = synth::generate(0, args.images, args.seed);
    let indices: Vec<usize> = (0..args.images).collect();
    let mut images = Vec::new();
    test.batch_nhwc(&indices, &mut images);
    let labels = test.batch_labels(&indices);

    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write(out, "student_f32.tkd", &f32_file)?;
    write(out, "student_f16.tkd", &f16_file)?;
    write(out, "images.bin", &le_bytes(&images))?;
    let mut text = String::from("# dtype image top1 label logits... (host engine, scalar path)\n");
    let mut f32_logits = Vec::new();
    for (dtype, bytes) in [("f32", &f32_file), ("f16", &f16_file)] {
        let logits = host_logits(&cfg, bytes, &images, image_len)?;
        for (i, l) in logits.chunks_exact(cfg.classes as usize).enumerate() {
            let vals: Vec<String> = l.iter().map(|v| format!("{v:?}")).collect();
            text += &format!("{dtype} {i} {} {} {}\n", argmax(l), labels[i], vals.join(" "));
        }
        write(out, &format!("expected_{dtype}.bin"), &le_bytes(&logits))?;
        if dtype == "f32" {
            f32_logits = logits;
        } else {
            let (diff, agree) = compare(&f32_logits, &logits, cfg.classes as usize);
            println!(
                "f16 vs f32 weights on the host: max |logit diff| {diff:.3e}, top-1 agrees on {agree} of {} images",
                args.images
            );
        }
    }
    write(out, "expected.txt", text.as_bytes())?;
    write(out, "model.rs", model_rs(&cfg, args.images).as_bytes())?;

    let prog = models::program(&cfg)?;
    let summary = models::summary(&cfg)?;
    println!(
        "student: {}; {} MACs, {} parameters; arena {} B (lower bound {} B); f32 file {} B, f16 file {} B",
        describe(&cfg),
        prog.total_macs(),
        summary.params,
        summary.arena_bytes,
        summary.arena_lower_bound,
        f32_file.len(),
        f16_file.len()
    );
    println!("wrote {} images and the host logits to {}", args.images, out.display());
    Ok(())
}

/// Image values of the synthetic data set (32x32 RGB).
fn synth_image_len() -> usize {
    tinykd::host::data::cifar::IMAGE_BYTES
}

/// The random student of `seed`: He-uniform weights ([`ParamStore::init`]) and, for every batch
/// norm, γ ∈ [0.6, 1.4], β ∈ [−0.3, 0.3], running mean ∈ [−0.3, 0.3], running variance ∈ [0.4,
/// 1.6]; the fc offset ∈ [−0.1, 0.1].
fn random_student(cfg: &ModelConfig, seed: u64) -> Result<ParamStore> {
    let mut params = ParamStore::init(cfg, seed)?;
    let prog = models::program(cfg)?;
    let mut rng = Rng::stream(seed, 0x006d_6375); // "mcu" in ASCII
    for op in prog.ops() {
        let ranges: &[(f32, f32)] = match op.kind {
            OpKind::BatchNorm => &[(0.6, 1.4), (-0.3, 0.3), (-0.3, 0.3), (0.4, 1.6)],
            OpKind::Fc => &[(f32::NAN, f32::NAN), (-0.1, 0.1)],
            _ => &[],
        };
        for (spec, &(lo, hi)) in prog.params(op).iter().zip(ranges) {
            if lo.is_nan() {
                continue; // keep the initial weights
            }
            let name = spec.name();
            let p = params.get_mut(name.as_str()).with_context(|| format!("parameter {name} missing"))?;
            p.data.iter_mut().for_each(|v| *v = rng.uniform(lo, hi));
        }
    }
    Ok(params)
}

/// The config and f32 / f16 inference files from a Params or Inference weight file.
fn from_file(path: &Path) -> Result<(ModelConfig, Vec<u8>, Vec<u8>)> {
    let buf = AlignedBuf::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = WeightFile::parse(&buf).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cfg = file.config();
    if cfg.arch != Arch::MobileNetV1 {
        bail!(
            "{}: the weights of a {}; the firmware (examples/mcu) runs a MobileNetV1 student only",
            path.display(),
            describe(&cfg)
        );
    }
    match file.kind() {
        FileKind::Params => {
            let mut params = ParamStore::init(&cfg, 0)?;
            for p in params.params_mut() {
                let t = file.get(&p.name).with_context(|| format!("{}: tensor {} missing", path.display(), p.name))?;
                if t.data.len() != p.data.len() {
                    bail!(
                        "{}: tensor {} has {} values, the model needs {}",
                        path.display(),
                        p.name,
                        t.data.len(),
                        p.data.len()
                    );
                }
                for (i, v) in p.data.iter_mut().enumerate() {
                    *v = t.data.get(i).unwrap_or(0.0);
                }
            }
            Ok((cfg, fold::export_inference(&params, DType::F32)?, fold::export_inference(&params, DType::F16)?))
        }
        FileKind::Inference => {
            let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = file
                .iter()
                .map(|t| {
                    let data = (0..t.data.len()).map(|i| t.data.get(i).unwrap_or(0.0)).collect();
                    (t.name.to_string(), t.dims.as_slice().iter().map(|&d| d as usize).collect(), data)
                })
                .collect();
            let outs: Vec<TensorOut> =
                tensors.iter().map(|(name, dims, data)| TensorOut { name, dims, data }).collect();
            let f32_file = weights::to_bytes(&cfg, FileKind::Inference, DType::F32, &outs)?;
            let f16_file = weights::to_bytes(&cfg, FileKind::Inference, DType::F16, &outs)?;
            Ok((cfg, f32_file, f16_file))
        }
    }
}

/// Refuses assets that would not fit the firmware's flash: either weight file plus the
/// images, the host logits and [`CODE_RESERVE`] against `FLASH` in `examples/mcu/memory.x`.
fn check_flash(cfg: &ModelConfig, f32_file: &[u8], f16_file: &[u8], images: usize) -> Result<()> {
    let flash = flash_length(MEMORY_X).context("examples/mcu/memory.x: cannot read the LENGTH of the FLASH region")?;
    let image_bytes = 4 * images * cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize;
    let logit_bytes = 4 * images * cfg.classes as usize;
    for (dtype, file) in [("f32", f32_file), ("f16", f16_file)] {
        let need = file.len() + image_bytes + logit_bytes + CODE_RESERVE;
        if need > flash {
            // Fewer images help only when the weights and code alone fit.
            let advice = if file.len() + CODE_RESERVE <= flash {
                "fewer --images, a narrower student, or a part with more flash"
            } else {
                "a narrower student (--scale) or a part with more flash; the weights alone do not fit"
            };
            bail!(
                "{}: the {dtype} weight file is {} B; with {} B of images and host logits and {} KiB \
                 for the code the firmware needs {need} B of flash, more than the {flash} B of FLASH in \
                 examples/mcu/memory.x (use {advice})",
                describe(cfg),
                file.len(),
                image_bytes + logit_bytes,
                CODE_RESERVE / 1024
            );
        }
    }
    Ok(())
}

/// The `LENGTH` of the `FLASH` region of a linker `MEMORY` block, in bytes (decimal or `0x`
/// hex, optionally with a `K` or `M` suffix); comments are skipped.
fn flash_length(memory_x: &str) -> Option<usize> {
    let mut text = String::new();
    let mut rest = memory_x;
    while let Some(start) = rest.find("/*") {
        text.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
    }
    text.push_str(rest);
    let line = text.lines().find(|l| l.trim_start().starts_with("FLASH"))?;
    let value = line.split("LENGTH").nth(1)?.trim_start().strip_prefix('=')?;
    let value = value.trim().trim_end_matches(',').trim();
    let (digits, unit) = match value.as_bytes().last()? {
        b'K' | b'k' => (&value[..value.len() - 1], 1024),
        b'M' | b'm' => (&value[..value.len() - 1], 1024 * 1024),
        _ => (value, 1),
    };
    let n = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    n.checked_mul(unit)
}

/// The host engine's logits for every image: the scalar path (what the M4F runs), checked
/// against the best SIMD path of this machine.
fn host_logits(cfg: &ModelConfig, bytes: &[u8], images: &[f32], image_len: usize) -> Result<Vec<f32>> {
    let buf = AlignedBuf::from_bytes(bytes);
    let file = WeightFile::parse(&buf).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::new(cfg, 1, &file)?;
    let mut arena = vec![0u8; engine.arena_bytes()];
    let classes = cfg.classes as usize;
    let mut scalar = vec![0.0f32; images.len() / image_len * classes];
    let mut simd = scalar.clone();
    for ((image, a), b) in
        images.chunks_exact(image_len).zip(scalar.chunks_exact_mut(classes)).zip(simd.chunks_exact_mut(classes))
    {
        engine.run(Isa::scalar(), image, &mut arena, a)?;
        engine.run(Isa::detect(), image, &mut arena, b)?;
    }
    let (diff, agree) = compare(&scalar, &simd, classes);
    let isa = Isa::detect().kind().name();
    println!(
        "{} weights: host scalar vs {isa}: max |logit diff| {diff:.3e}, top-1 agrees on {agree} images",
        file.dtype().name()
    );
    if diff > ISA_TOLERANCE {
        bail!("the host's scalar and {isa} logits differ by {diff} (> {ISA_TOLERANCE})");
    }
    Ok(scalar)
}

/// Largest absolute difference of two logit sets and on how many rows their top-1 agrees.
fn compare(a: &[f32], b: &[f32], classes: usize) -> (f32, usize) {
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let agree = a.chunks_exact(classes).zip(b.chunks_exact(classes)).filter(|(x, y)| argmax(x) == argmax(y)).count();
    (diff, agree)
}

/// Index of the largest value (the first one on ties), as the firmware computes it.
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Little-endian bytes of `v`.
fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The firmware's `model.rs`: the config and image count as Rust constants.
fn model_rs(cfg: &ModelConfig, images: usize) -> String {
    format!(
        "// Generated by `cargo run --example mcu_assets`; do not edit.\n\
         /// The student's model configuration; the arena is planned for it at compile time.\n\
         pub const CFG: ModelConfig = ModelConfig {{ arch: Arch::{:?}, scale_permille: {}, classes: {}, stem: Stem::{:?}, in_h: {}, in_w: {}, in_c: {} }};\n\
         /// Number of test images in `images.bin`.\n\
         pub const N_IMAGES: usize = {images};\n",
        cfg.arch, cfg.scale_permille, cfg.classes, cfg.stem, cfg.in_h, cfg.in_w, cfg.in_c
    )
}

/// Writes `dir/name`.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}
