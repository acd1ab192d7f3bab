//! Reliability promises (docs/RELIABILITY.md) that are not covered elsewhere: the fuzz seed
//! corpora are valid inputs, every invalid command line of a training command fails with one
//! paragraph, a non-zero exit and no output file, training is bitwise deterministic for a
//! seed and thread count, a resume with changed options is refused, temp files of killed
//! writes are cleaned up, non-finite weights are refused, and divergence stops the run with the
//! last checkpoint intact. (The kill/resume test is `tests/kill_resume.rs`.)
#![cfg(feature = "std")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tinykd::host::checkpoint::{Checkpoint, NamedTensor, TrainState};
use tinykd::host::data::Rng;
use tinykd::kernels::DType;
use tinykd::params::ParamStore;
use tinykd::weights::{self, AlignedBuf, FileKind, TensorOut, WeightFile};
use tinykd::{ModelConfig, Stem};

// ---------------------------------------------------------------------------------------------
// Fuzz seed corpora (fuzz/seeds/<target>/): generated here, so they follow the formats.

/// The fuzz crate's seed directory.
fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("seeds")
}

/// Small tensors shaped like a model's (the parser does not tie tensors to the model).
fn seed_tensors(rng: &mut Rng) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let shapes: [(&str, &[usize]); 5] = [
        ("conv1_weights", &[3, 3, 3, 4]),
        ("conv1_bn_scale", &[4]),
        ("conv2_1_dw_weights", &[3, 3, 4]),
        ("fc7_weights", &[4, 10]),
        ("fc7_offset", &[10]),
    ];
    shapes
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec(), (0..d.iter().product()).map(|_| rng.uniform(-1.0, 1.0)).collect()))
        .collect()
}

/// `weights_parse` seeds: a mode byte (bit 0 reseal, bit 1 misaligned copy), then a file.
fn weight_seeds() -> Vec<(String, Vec<u8>)> {
    let ts = seed_tensors(&mut Rng::new(11));
    let outs: Vec<TensorOut> = ts.iter().map(|(n, d, v)| TensorOut { name: n, dims: d, data: v }).collect();
    let mnv1 = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar);
    let mut out = Vec::new();
    for (name, mode, cfg, kind, dtype, tensors) in [
        ("params_f32", 0u8, mnv1, FileKind::Params, DType::F32, &outs[..]),
        ("inference_f16", 2, mnv1, FileKind::Inference, DType::F16, &outs[..]),
        ("resnet_one_tensor_resealed", 1, ModelConfig::resnet50(), FileKind::Params, DType::F32, &outs[..1]),
        ("empty", 3, mnv1, FileKind::Inference, DType::F32, &[]),
    ] {
        let mut bytes = vec![mode];
        bytes.extend(weights::to_bytes(&cfg, kind, dtype, tensors).expect("seed weight file"));
        out.push((name.to_string(), bytes));
    }
    out
}

/// `checkpoint_read` seeds: a mode byte (bit 0: reseal, the file then lacks its CRC), then a file.
fn checkpoint_seeds() -> Vec<(String, Vec<u8>)> {
    let ts = seed_tensors(&mut Rng::new(12));
    let named = |r: std::ops::Range<usize>| -> Vec<NamedTensor> {
        ts[r].iter().map(|(n, d, v)| NamedTensor::new(n.clone(), d.clone(), v.clone())).collect()
    };
    let ck = Checkpoint {
        config: ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar),
        params: named(0..2),
        statistics: named(1..2),
        momentum: named(0..2),
        state: TrainState { epoch: 2, step: 8, rng_state: 77, lr_step: 8, lr: 0.05, best_metric: Some(0.5) },
        meta: r#"{"command":"train","run":{"seed":0}}"#.to_string(),
    };
    let bytes = ck.to_bytes().expect("seed checkpoint");
    let mut plain = vec![0u8];
    plain.extend_from_slice(&bytes);
    let mut resealed = vec![1u8];
    resealed.extend_from_slice(&bytes[..bytes.len() - 4]);
    vec![("small".to_string(), plain), ("small_resealed".to_string(), resealed)]
}

/// `cifar_read` seeds: two records, and a class-name file.
fn cifar_seeds() -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(13);
    let mut two = Vec::new();
    for label in [3u8, 9] {
        two.push(label);
        two.extend((0..3072).map(|_| rng.below(256) as u8));
    }
    let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec();
    vec![("two_records".to_string(), two), ("meta".to_string(), meta)]
}

/// Every binary seed as written; with `TINYKD_WRITE_FUZZ_SEEDS=1` the files are (re)written.
/// Otherwise they must be present and current, and each must be accepted by its parser (so
/// the fuzzers start from valid inputs).
#[test]
fn fuzz_seed_corpora_are_current_and_valid() {
    let write = std::env::var_os("TINYKD_WRITE_FUZZ_SEEDS").is_some();
    for (target, seeds) in
        [("weights_parse", weight_seeds()), ("checkpoint_read", checkpoint_seeds()), ("cifar_read", cifar_seeds())]
    {
        let dir = seeds_dir().join(target);
        for (name, bytes) in seeds {
            let path = dir.join(format!("{name}.bin"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; regenerate with TINYKD_WRITE_FUZZ_SEEDS=1", path.display()));
            assert!(on_disk == bytes, "{} is stale; regenerate with TINYKD_WRITE_FUZZ_SEEDS=1", path.display());
        }
    }
    for (_, b) in weight_seeds() {
        let buf = AlignedBuf::from_bytes(&b[1..]);
        WeightFile::parse(&buf).expect("weight seed parses");
    }
    let (_, plain) = &checkpoint_seeds()[0];
    Checkpoint::from_bytes(&plain[1..], Path::new("seed")).expect("checkpoint seed parses");
    let total: u64 = walk(&seeds_dir()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(total < 200 * 1024, "seed corpora are {total} bytes; keep them under 200 KB");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The training commands: invalid input, determinism, divergence.

fn tinykd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinykd")).args(args).output().expect("run tinykd")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A synthetic dataset of `train` + 16 images in `dir/data`.
fn dataset(dir: &Path, train: usize) -> PathBuf {
    dataset_seeded(dir, train, 4)
}

/// [`dataset`] drawn with another `seed` (other images and labels of the same size).
fn dataset_seeded(dir: &Path, train: usize, seed: u64) -> PathBuf {
    let data = dir.join("data");
    let (train, seed) = (train.to_string(), seed.to_string());
    let o = tinykd(&["data", "synth", "--out", s(&data), "--train", &train, "--test", "16", "--seed", &seed]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    data
}

/// The tiny student every test trains: MobileNetV1 x0.25, CIFAR stem, 32x32, 10 classes.
const STUDENT: [&str; 8] = ["--model", "mobilenet_v1", "--scale", "0.25", "--stem", "cifar", "--classes", "10"];

/// `train` with the tiny student and `extra` options (which must include --data and --out).
fn train(extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend(STUDENT);
    args.extend(["--batch", "16", "--eval-every", "0"]);
    args.extend(extra);
    tinykd(&args)
}

/// A params file of the tiny student's architecture, usable as a teacher.
fn teacher_file(dir: &Path) -> PathBuf {
    teacher_file_seeded(dir, 9)
}

/// [`teacher_file`] with other weights (drawn from `seed`).
fn teacher_file_seeded(dir: &Path, seed: u64) -> PathBuf {
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar);
    let store = ParamStore::init(&cfg, seed).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("teacher.tkd");
    weights::write_file(&path, &cfg, FileKind::Params, DType::F32, &store.to_tensors()).unwrap();
    path
}

/// Files under `dir` (recursively), as paths relative to it.
fn files_in(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut v: Vec<String> =
        walk(dir).iter().map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Asserts a clean failure: exit `code`, nothing on stdout, stderr is one `error:` paragraph
/// (optionally followed by clap's usage or `--help` hint) containing every word of `words`, no
/// panic, and nothing written under `out_dir`.
fn assert_clean_failure(o: &Output, code: i32, words: &[&str], out_dir: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    let mut paragraphs = err.split("\n\n").filter(|p| !p.trim().is_empty());
    let first = paragraphs.next().unwrap_or("");
    assert!(first.starts_with("error:"), "stderr does not start with `error:`: {err}");
    for p in paragraphs {
        assert!(p.starts_with("For more information") || p.starts_with("Usage:"), "more than one paragraph: {err}");
    }
    for w in words {
        assert!(first.contains(w), "the error lacks {w:?}: {err}");
    }
    assert_eq!(files_in(out_dir), Vec::<String>::new(), "files were left in {}", out_dir.display());
}

#[test]
fn invalid_training_command_lines_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let out_dir = dir.path().join("out");
    let out = out_dir.join("w.tkd");
    let (d, o) = (s(&data), s(&out));
    let base = |model: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["train".into()];
        v.extend(model.iter().map(|x| x.to_string()));
        v.extend(["--epochs", "1", "--batch", "16", "--data", d, "--out", o].iter().map(|x| x.to_string()));
        v
    };
    let run = |args: Vec<String>| Command::new(env!("CARGO_BIN_EXE_tinykd")).args(&args).output().unwrap();

    // Unknown model, bad scales.
    assert_clean_failure(&run(base(&["--model", "vgg16"])), 2, &["vgg16", "--model"], &out_dir);
    assert_clean_failure(&run(base(&["--model", "mobilenet_v1", "--scale", "0.3"])), 2, &["0.3", "0.25"], &out_dir);
    assert_clean_failure(&run(base(&["--model", "mobilenet_v1", "--scale", "wide"])), 2, &["wide"], &out_dir);
    assert_clean_failure(&run(base(&["--model", "resnet50", "--scale", "0.5"])), 2, &["--scale", "resnet50"], &out_dir);
    assert_clean_failure(&run(base(&["--model", "mobilenet_v1", "--input", "0x32"])), 2, &["0x32"], &out_dir);

    // Missing dataset directory.
    let missing = dir.path().join("no-such-data");
    let o2 = train(&["--epochs", "1", "--data", s(&missing), "--out", o]);
    assert_clean_failure(&o2, 1, &["no-such-data"], &out_dir);

    // A dataset whose file is truncated.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["data_batch_1.bin", "test_batch.bin"] {
        std::fs::copy(data.join(f), bad.join(f)).unwrap();
    }
    let len = std::fs::metadata(bad.join("test_batch.bin")).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(bad.join("test_batch.bin")).unwrap().set_len(len - 5).unwrap();
    assert_clean_failure(
        &train(&["--epochs", "1", "--data", s(&bad), "--out", o]),
        1,
        &["test_batch.bin", "truncated"],
        &out_dir,
    );

    // Bad training options.
    assert_clean_failure(&train(&["--epochs", "0", "--data", d, "--out", o]), 2, &["--epochs"], &out_dir);
    assert_clean_failure(&train(&["--epochs", "1", "--lr", "nan", "--data", d, "--out", o]), 2, &["nan"], &out_dir);
    assert_clean_failure(
        &train(&["--epochs", "1", "--schedule", "steps", "--data", d, "--out", o]),
        2,
        &["steps"],
        &out_dir,
    );
    // Values that parse but make no run, and a negative number (not taken for an option).
    let no_run: [(&[&str], &[&str]); 7] = [
        (&["--epochs", "2", "--warmup-epochs", "2"], &["--warmup-epochs 2", "--epochs 2"]),
        (&["--epochs", "1", "--momentum", "1.5"], &["--momentum 1.5"]),
        // Below 1 as typed, 1 in f32 (training's precision); a weight decay beyond f32.
        (&["--epochs", "1", "--momentum", "0.99999999"], &["--momentum 0.99999999", "f32"]),
        (&["--epochs", "1", "--wd", "1e39"], &["--wd 1e39", "f32"]),
        (&["--epochs", "2", "--schedule", "piecewise:1:0.1,0.01", "--lr", "0.5"], &["--lr", "piecewise"]),
        (&["--epochs", "1", "--lr", "-1"], &["-1", "--lr"]),
        (&["--epochs", "1", "--wd", "-0.1"], &["-0.1", "--wd"]),
    ];
    for (opts, words) in no_run {
        let mut args = opts.to_vec();
        args.extend(["--data", d, "--out", o]);
        assert_clean_failure(&train(&args), 2, words, &out_dir);
    }
}

/// An output that would replace an input (the teacher, a dataset file, the weights being
/// exported), or that names a directory, is refused before any work, and the input is intact.
#[test]
fn outputs_that_would_replace_an_input_or_are_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let teacher = teacher_file(dir.path());
    let teacher_bytes = std::fs::read(&teacher).unwrap();
    let test_bytes = std::fs::read(data.join("test_batch.bin")).unwrap();
    let distill = |out: &str| {
        let mut args = vec!["distill", "--teacher", s(&teacher)];
        args.extend(["--student", "mobilenet_v1", "--scale", "0.25", "--stem", "cifar"]);
        args.extend(["--epochs", "1", "--batch", "16", "--data", s(&data), "--out", out]);
        tinykd(&args)
    };
    let empty = dir.path().join("empty");
    // The teacher, spelled through another path; the test split; `<out>.ckpt` over the teacher.
    let via = dir.path().join("data").join("..").join("teacher.tkd");
    assert_clean_failure(&distill(s(&via)), 2, &["--teacher", "replace an input"], &empty);
    let test_split = data.join("test_batch.bin");
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&test_split)]);
    assert_clean_failure(&o, 2, &["--data", "test_batch.bin", "replace an input"], &empty);
    let stem = dir.path().join("teacher");
    std::fs::rename(&teacher, dir.path().join("teacher.ckpt")).unwrap();
    let ckpt_teacher = dir.path().join("teacher.ckpt");
    let o = {
        let mut args = vec!["distill", "--teacher", s(&ckpt_teacher)];
        args.extend(["--student", "mobilenet_v1", "--scale", "0.25", "--stem", "cifar"]);
        args.extend(["--epochs", "1", "--batch", "16", "--data", s(&data), "--out", s(&stem)]);
        tinykd(&args)
    };
    assert_clean_failure(&o, 2, &["written beside --out", "replace an input"], &empty);
    std::fs::rename(&ckpt_teacher, &teacher).unwrap();
    // Directories.
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(dir.path())]);
    assert_clean_failure(&o, 2, &["--out", "is a directory"], &empty);
    let slash = format!("{}/", dir.path().join("new").display());
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", &slash]);
    assert_clean_failure(&o, 2, &["--out", "is a directory"], &empty);
    assert!(!dir.path().join("new").exists());
    // Export over its own input.
    let o = tinykd(&["export", "--weights", s(&teacher), "--out", s(&teacher)]);
    assert_clean_failure(&o, 2, &["--weights", "replace an input"], &empty);
    assert_eq!(std::fs::read(&teacher).unwrap(), teacher_bytes, "the teacher was modified");
    assert_eq!(std::fs::read(data.join("test_batch.bin")).unwrap(), test_bytes, "the test split was modified");
}

#[test]
fn invalid_distillation_inputs_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let teacher = teacher_file(dir.path());
    let out_dir = dir.path().join("out");
    let out = out_dir.join("w.tkd");
    let distill = |teacher: &Path, loss: &str| {
        let mut args = vec!["distill", "--teacher", s(teacher)];
        args.extend(["--student", "mobilenet_v1", "--scale", "0.25", "--stem", "cifar"]);
        args.extend(["--epochs", "1", "--batch", "16", "--data", s(&data), "--out", s(&out)]);
        if !loss.is_empty() {
            args.extend(["--loss", loss]);
        }
        tinykd(&args)
    };

    // Missing, truncated and non-weight teacher files.
    assert_clean_failure(&distill(&dir.path().join("nope.tkd"), ""), 1, &["nope.tkd"], &out_dir);
    let bytes = std::fs::read(&teacher).unwrap();
    let cut = dir.path().join("cut.tkd");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&distill(&cut, ""), 1, &["cut.tkd"], &out_dir);
    let junk = dir.path().join("junk.tkd");
    std::fs::write(&junk, b"this is not a weight file").unwrap();
    assert_clean_failure(&distill(&junk, ""), 1, &["junk.tkd"], &out_dir);
    // Loss weights whose sum overflows: the advice is about them, not the learning rate.
    assert_clean_failure(
        &distill(&teacher, "ce*2e38;soft:teacher_fc7,fc7*2e38"),
        1,
        &["step 0", "weighted sum", "smaller --loss weights"],
        &out_dir,
    );
    // An endless device is refused before it is read (it filled the memory).
    assert_clean_failure(&distill(Path::new("/dev/zero"), ""), 1, &["/dev/zero", "not a regular file"], &out_dir);

    // Loss specs: unknown tensor (with suggestions), shape-mismatched pair, bad syntax.
    assert_clean_failure(
        &distill(&teacher, "l2:teacher_conv6_sepx,conv6_sep"),
        2,
        &["teacher_conv6_sepx", "teacher_conv6_sep"],
        &out_dir,
    );
    assert_clean_failure(&distill(&teacher, "ce;l2:teacher_conv6_sep,conv7"), 2, &["conv7"], &out_dir);
    assert_clean_failure(&distill(&teacher, "l2:teacher_fc7,conv1"), 2, &["teacher_fc7", "conv1", "NHWC"], &out_dir);
    assert_clean_failure(&distill(&teacher, "fsp:teacher_conv1,teacher_fc7,conv1,fc7"), 2, &["fsp"], &out_dir);
    assert_clean_failure(&distill(&teacher, "l3:teacher_fc7,fc7"), 2, &["l3"], &out_dir);
    assert_clean_failure(&distill(&teacher, "soft:teacher_fc7,fc7,T=0"), 2, &["positive"], &out_dir);
    assert_clean_failure(&distill(&teacher, "l2:teacher_fc7,fc7*-1"), 2, &["weight"], &out_dir);
    assert_clean_failure(&distill(&teacher, "soft:teacher_fc7,fc7,T=4,T=5"), 2, &["already set"], &out_dir);
    // A term given twice (it would count double, and name two metrics columns alike).
    assert_clean_failure(&distill(&teacher, "ce;ce"), 2, &["ce", "twice", "ce*2"], &out_dir);
    assert_clean_failure(
        &distill(&teacher, "ce;l2:teacher_conv6_sep,conv6_sep*0.5;l2:teacher_conv6_sep,conv6_sep"),
        2,
        &["l2:teacher_conv6_sep,conv6_sep", "twice"],
        &out_dir,
    );

    // Specs that would train nothing: sides swapped, a teacher-only pair, the same tensor on
    // both sides, the input image as the trained side, every weight zero.
    let nothing: [(&str, &[&str]); 6] = [
        ("soft:fc7,teacher_fc7", &["teacher_fc7", "trained side", "teacher first"]),
        ("l2:teacher_fc7,teacher_fc7", &["teacher_fc7", "no gradient"]),
        ("l2:fc7,fc7", &["both sides", "fc7"]),
        ("fsp:teacher_conv1,teacher_conv2_1_sep,image,conv2_1_sep", &["image", "input image"]),
        ("ce*0", &["every --loss weight is 0"]),
        ("ce*0;soft:teacher_fc7,fc7*0", &["every --loss weight is 0"]),
    ];
    for (spec, words) in nothing {
        assert_clean_failure(&distill(&teacher, spec), 2, words, &out_dir);
    }
}

#[test]
fn an_output_whose_metrics_log_is_another_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let runs = dir.path().join("runs");
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&runs.join("teacher.tkd"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (csv, svg) = (runs.join("teacher.metrics.csv"), runs.join("teacher.metrics.svg"));
    let (csv_bytes, svg_bytes) = (std::fs::read(&csv).unwrap(), std::fs::read(&svg).unwrap());
    // `--out runs/teacher` writes `runs/teacher.metrics.csv` too: refused, the log kept.
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&runs.join("teacher"))]);
    assert_refused(
        &o,
        &["teacher.metrics.csv", "teacher.tkd", "another --out"],
        &[(&csv, &csv_bytes), (&svg, &svg_bytes)],
    );
    assert!(!runs.join("teacher").exists() && !runs.join("teacher.ckpt").exists());
    // Its own output again is fine (it replaces its own log).
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&runs.join("teacher.tkd"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A directory below a file is named as such.
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&runs.join("teacher.tkd").join("x.tkd"))]);
    assert_refused(&o, &["teacher.tkd is a file, not a directory"], &[]);
    // Other files of the same stem are no run's output: a log beside it (as `2> runs/s.log`
    // makes), and an --out named `.ckpt`, which its own re-run reads as weights.
    std::fs::write(runs.join("student.log"), b"a log").unwrap();
    let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&runs.join("student.tkd"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for _ in 0..2 {
        let o = train(&["--epochs", "1", "--data", s(&data), "--out", s(&runs.join("m.ckpt"))]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn a_corrupt_or_foreign_checkpoint_refuses_to_resume_and_stays_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("w.tkd");
    let ckpt = out_dir.join("w.tkd.ckpt");
    let garbage = b"TKDCKPT\0 but then nothing sensible".to_vec();
    std::fs::write(&ckpt, &garbage).unwrap();
    let o = train(&["--epochs", "1", "--resume", "--data", s(&data), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("w.tkd.ckpt") && !err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), garbage, "the checkpoint was modified");
    assert_eq!(files_in(&out_dir), vec!["w.tkd.ckpt".to_string()]);

    // A valid checkpoint of another run (different learning rate) is refused too.
    std::fs::remove_file(&ckpt).unwrap();
    let o = train(&["--epochs", "1", "--lr", "0.05", "--data", s(&data), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = std::fs::read(&ckpt).unwrap();
    std::fs::remove_file(&out).unwrap();
    let o = train(&["--epochs", "1", "--lr", "0.01", "--resume", "--data", s(&data), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lr"));
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the checkpoint was modified");
    assert!(!out.exists());
}

#[test]
fn same_seed_and_threads_give_bitwise_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let run = |name: &str, threads: &str, seed: &str| -> Vec<u8> {
        let out = dir.path().join(name);
        let o = train(&["--epochs", "2", "--threads", threads, "--seed", seed, "--data", s(&data), "--out", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&out).unwrap()
    };
    let a = run("a.tkd", "2", "3");
    let b = run("b.tkd", "2", "3");
    assert!(a == b, "two runs with the same seed and thread count differ");
    let c = run("c.tkd", "2", "4");
    assert!(a != c, "the seed has no effect");
    let one = run("one.tkd", "1", "3");
    // Documented in docs/RELIABILITY.md: a different thread count may change the rounding of
    // reductions; report which it is on this machine.
    eprintln!("threads 1 vs 2: {}", if one == a { "bitwise identical" } else { "different" });
}

/// A teacher file with one NaN weight: the run must not start, and the message must name the
/// file and the tensor. (Unchecked, a NaN in `conv1_weights` is silently absorbed by the ReLU
/// after it and distillation "succeeds"; a NaN in `fc7` makes the loss NaN at step 0 and the
/// message blames the learning rate.)
#[test]
fn a_non_finite_teacher_weight_is_named_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let cfg = ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar);
    let mut store = ParamStore::init(&cfg, 9).unwrap();
    store.get_mut("conv1_weights").expect("conv1_weights").data[0] = f32::NAN;
    let teacher = dir.path().join("nan_teacher.tkd");
    weights::write_file(&teacher, &cfg, FileKind::Params, DType::F32, &store.to_tensors()).unwrap();
    let out_dir = dir.path().join("out");
    let out = out_dir.join("w.tkd");
    let mut args = vec!["distill", "--teacher", s(&teacher), "--student", "mobilenet_v1", "--scale", "0.25"];
    args.extend(["--stem", "cifar", "--epochs", "1", "--batch", "16", "--data", s(&data), "--out", s(&out)]);
    let o = tinykd(&args);
    assert_clean_failure(&o, 1, &["nan_teacher.tkd", "conv1_weights"], &out_dir);
}

/// Trains the tiny student for 3 epochs: epoch 1 at lr 0.05, then lr 1e30, under which the
/// weights blow up in epoch 2. Returns the exit, stderr and the checkpoint path.
fn diverging_run(dir: &Path) -> (Option<i32>, String, PathBuf) {
    let data = dataset(dir, 32);
    let out = dir.join("out").join("w.tkd");
    let o = train(&["--epochs", "3", "--schedule", "piecewise:1:0.05,1e30", "--data", s(&data), "--out", s(&out)]);
    assert!(!out.exists(), "no weight file after a diverged run");
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned(), dir.join("out").join("w.tkd.ckpt"))
}

#[test]
fn a_new_run_replaces_the_earlier_runs_weights_with_its_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let out = dir.path().join("out").join("w.tkd");
    let o = train(&["--epochs", "1", "--seed", "1", "--data", s(&data), "--out", s(&out)]);
    assert!(o.status.success() && out.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    // A new run that diverges in epoch 2: its epoch-1 checkpoint is left, and no weight file
    // (the earlier run's would pass for this run's).
    let o = train(&["--epochs", "3", "--schedule", "piecewise:1:0.05,1e30", "--data", s(&data), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("w.tkd and ") && err.contains("of an earlier run will be replaced"), "{err}");
    assert!(!out.exists(), "the earlier run's weights were left beside this run's checkpoint: {err}");
    let ck = Checkpoint::load(&dir.path().join("out").join("w.tkd.ckpt")).unwrap();
    assert_eq!(ck.state.epoch, 1, "{err}");
}

#[test]
fn a_resume_under_another_schedule_names_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let out = dir.path().join("pw").join("w.tkd");
    let o = train(&["--epochs", "1", "--schedule", "piecewise:1:0.05,0.01", "--data", s(&data), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = dir.path().join("pw").join("w.tkd.ckpt");
    let ck_bytes = std::fs::read(&ckpt).unwrap();
    // A piecewise run records the default --lr it does not use: the schedule is named, not it.
    let o = train(&[
        "--epochs",
        "2",
        "--schedule",
        "constant",
        "--lr",
        "0.05",
        "--resume",
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert_refused(&o, &["--schedule", "piecewise:1:0.05,0.01", "constant"], &[(&ckpt, &ck_bytes)]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("--lr 0.1"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_export_makes_its_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher_file(dir.path());
    let out = dir.path().join("new").join("dir").join("s.f16.tkd");
    let o = tinykd(&["export", "--weights", s(&teacher), "--dtype", "f16", "--out", s(&out)]);
    assert!(o.status.success() && out.exists(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_distillation_resume_with_another_teacher_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let (t1, t2) = (teacher_file_seeded(&dir.path().join("t1"), 9), teacher_file_seeded(&dir.path().join("t2"), 10));
    let out = dir.path().join("out").join("s.tkd");
    let distill = |teacher: &Path, epochs: &str, resume: bool| {
        let mut args = vec!["distill", "--teacher", s(teacher), "--student", "mobilenet_v1", "--scale", "0.25"];
        args.extend(["--stem", "cifar", "--batch", "16", "--schedule", "constant", "--lr", "0.05", "--threads", "2"]);
        args.extend(["--eval-every", "0", "--epochs", epochs, "--data", s(&data), "--out", s(&out)]);
        if resume {
            args.push("--resume");
        }
        tinykd(&args)
    };
    let o = distill(&t1, "1", false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = dir.path().join("out").join("s.tkd.ckpt");
    let ck_bytes = std::fs::read(&ckpt).unwrap();
    assert_refused(&distill(&t2, "2", true), &["another --teacher", "CRC-32"], &[(&ckpt, &ck_bytes)]);
    // A copy of the same teacher resumes.
    let copy = dir.path().join("copy.tkd");
    std::fs::copy(&t1, &copy).unwrap();
    let o = distill(&copy, "2", true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn divergence_stops_the_run_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, ckpt) = diverging_run(dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in ["not finite", "step", "ce = ", "lower learning rate", "w.tkd.ckpt", "intact"] {
        assert!(err.contains(w), "the message lacks {w:?}: {err}");
    }
    // The piecewise schedule sets the rate, so the advice names it, not --lr.
    assert!(err.contains("--schedule piecewise:1:0.05,1e30") && !err.contains("than --lr"), "{err}");
    Checkpoint::load(&ckpt).expect("the checkpoint loads");
}

/// Under lr 1e30 the weights and gradients turn Inf/NaN in epoch 2 while the batch-normalised
/// loss stays finite (about 1e29). Checked only on the loss, the run wrote the epoch-2
/// checkpoint with non-finite weights and stopped in epoch 3; the running statistics, the
/// gradients and the weights are checked in every step, so the run stops in epoch 2, naming
/// the tensor, and the epoch-1 checkpoint stays the last one.
#[test]
fn divergence_leaves_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, ckpt) = diverging_run(dir.path());
    assert_eq!(code, Some(1), "{err}");
    let ck = Checkpoint::load(&ckpt).expect("the last good checkpoint loads");
    let mut names = ck.params.iter().chain(&ck.statistics);
    assert!(names.any(|t| err.contains(&format!(" {} ", t.name))), "the message names no tensor: {err}");
    assert!(err.contains("(epoch 2,") && err.contains("of epoch 1 is intact"), "{err}");
    for t in ck.params.iter().chain(&ck.statistics).chain(&ck.momentum) {
        let bad = t.data.iter().filter(|v| !v.is_finite()).count();
        assert_eq!(
            bad, 0,
            "checkpoint of epoch {} has {bad} non-finite values in {}; stderr: {err}",
            ck.state.epoch, t.name
        );
    }
    assert_eq!(ck.state.epoch, 1, "{err}");
}

// ---------------------------------------------------------------------------------------------
// Resume: options that change the result are refused; --epochs may grow.

/// Asserts a refused resume: exit 2, one `error:` paragraph with every word of `words`, and
/// the checkpoint and metrics files unchanged.
fn assert_refused(o: &Output, words: &[&str], files: &[(&Path, &[u8])]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error:") && !err.contains("panicked"), "{err}");
    let first = err.split("\n\n").next().unwrap();
    for w in words {
        assert!(first.contains(w), "the error lacks {w:?}: {err}");
    }
    for (path, bytes) in files {
        assert!(std::fs::read(path).unwrap() == *bytes, "{} was modified", path.display());
    }
}

/// `tinykd train` of the tiny student with a constant schedule, with the options of `base`
/// except those `over` replaces or adds (a flag without a value has the value "").
fn train_with(base: &[(&str, &str)], over: &[(&str, &str)]) -> Output {
    let mut opts: Vec<(&str, &str)> = base.to_vec();
    for &(k, v) in over {
        match opts.iter_mut().find(|(f, _)| *f == k) {
            Some(o) => o.1 = v,
            None => opts.push((k, v)),
        }
    }
    let mut args = vec!["train", "--model", "mobilenet_v1", "--stem", "cifar", "--classes", "10", "--eval-every", "0"];
    for (k, v) in opts {
        args.push(k);
        if !v.is_empty() {
            args.push(v);
        }
    }
    tinykd(&args)
}

#[test]
fn a_resume_with_other_result_defining_options_is_refused_but_epochs_may_grow() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 32);
    let out = dir.path().join("r").join("w.tkd");
    let base = [
        ("--scale", "0.25"),
        ("--batch", "16"),
        ("--schedule", "constant"),
        ("--lr", "0.05"),
        ("--threads", "2"),
        ("--seed", "3"),
        ("--data", s(&data)),
        ("--out", s(&out)),
    ];
    let o1 = train_with(&base, &[("--epochs", "1")]);
    assert!(o1.status.success(), "{}", String::from_utf8_lossy(&o1.stderr));
    let ckpt = dir.path().join("r").join("w.tkd.ckpt");
    let csv = dir.path().join("r").join("w.metrics.csv");
    let (ck_bytes, csv_bytes) = (std::fs::read(&ckpt).unwrap(), std::fs::read(&csv).unwrap());
    let keep: [(&Path, &[u8]); 2] = [(&ckpt, &ck_bytes), (&csv, &csv_bytes)];

    // Each option is named with both values.
    let other = dataset(&dir.path().join("other"), 48);
    let same_size = dataset_seeded(&dir.path().join("same_size"), 32, 5);
    for (change, words) in [
        (("--batch", "8"), &["--batch", "16", "8"][..]),
        (("--lr", "0.02"), &["--lr", "0.05", "0.02"]),
        (("--seed", "4"), &["--seed", "3", "4"]),
        (("--threads", "1"), &["--threads", "2", "1"]),
        (("--scale", "0.5"), &["x0.25", "x0.5", "--scale"]),
        (("--no-augment", ""), &["--augment", "true", "false"]),
        // Another dataset: its step count does not match the checkpoint's.
        (("--data", s(&other)), &["--data", "steps"]),
        // Another dataset of the same size: its images and labels differ.
        (("--data", s(&same_size)), &["--data", "other images or labels", "CRC-32"]),
    ] {
        let o = train_with(&base, &[("--epochs", "2"), ("--resume", ""), change]);
        assert_refused(&o, words, &keep);
    }

    // A checkpoint holding a NaN is refused, naming the tensor.
    let mut ck = Checkpoint::load(&ckpt).unwrap();
    ck.params[0].data[1] = f32::NAN;
    let nan_out = dir.path().join("nan").join("w.tkd");
    std::fs::create_dir_all(nan_out.parent().unwrap()).unwrap();
    ck.save(&dir.path().join("nan").join("w.tkd.ckpt")).unwrap();
    let o = train_with(&base, &[("--epochs", "2"), ("--resume", ""), ("--out", s(&nan_out))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!(" {} ", ck.params[0].name)) && err.contains("NaN"), "{err}");
    assert!(err.contains("w.tkd.ckpt") && !err.contains("panicked"), "{err}");

    // More epochs under a constant schedule: the run continues, bit for bit the same as an
    // uninterrupted one, with one metrics row per epoch.
    let o = train_with(&base, &[("--epochs", "2"), ("--resume", "")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = dir.path().join("whole.tkd");
    assert!(train_with(&base, &[("--epochs", "2"), ("--out", s(&whole))]).status.success());
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&out).unwrap(), "the extended run differs");
    let text = std::fs::read_to_string(&csv).unwrap();
    let epochs: Vec<&str> = text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(epochs, ["1", "2"]);
    // Without --threads a resume takes the checkpoint's count (3 here, no machine's default
    // here), and still repeats the uninterrupted run bit for bit.
    let t3 = dir.path().join("t3").join("w.tkd");
    let no_threads: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != "--threads").collect();
    let three = [("--threads", "3"), ("--out", s(&t3))];
    assert!(train_with(&no_threads, &[three[0], three[1], ("--epochs", "1")]).status.success());
    let o = train_with(&no_threads, &[three[1], ("--epochs", "2"), ("--resume", "")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming with 3 threads"), "{err}");
    let whole3 = dir.path().join("whole3.tkd");
    assert!(train_with(&no_threads, &[three[0], ("--epochs", "2"), ("--out", s(&whole3))]).status.success());
    assert!(std::fs::read(&whole3).unwrap() == std::fs::read(&t3).unwrap(), "the resumed 3-thread run differs");

    // Fewer epochs than the checkpoint has trained is refused.
    let (ck_bytes, csv_bytes) = (std::fs::read(&ckpt).unwrap(), std::fs::read(&csv).unwrap());
    let o = train_with(&base, &[("--epochs", "1"), ("--resume", "")]);
    assert_refused(&o, &["2 epochs", "--epochs 1"], &[(&ckpt, &ck_bytes), (&csv, &csv_bytes)]);

    // Cosine's horizon is --epochs: extending it would change the finished epochs' schedule.
    let cos = dir.path().join("cos").join("w.tkd");
    let cosine = [("--schedule", "cosine"), ("--out", s(&cos))];
    assert!(train_with(&base, &[cosine[0], cosine[1], ("--epochs", "1")]).status.success());
    let cos_ckpt = dir.path().join("cos").join("w.tkd.ckpt");
    let cos_bytes = std::fs::read(&cos_ckpt).unwrap();
    let o = train_with(&base, &[cosine[0], cosine[1], ("--epochs", "2"), ("--resume", "")]);
    assert_refused(&o, &["--epochs 1", "--epochs 2", "cosine"], &[(&cos_ckpt, &cos_bytes)]);
}

// ---------------------------------------------------------------------------------------------
// Atomic writes: temp files of killed writers are removed by the next write.

#[test]
#[cfg(target_os = "linux")]
fn a_write_removes_the_temp_files_of_dead_writers_of_that_file_only() {
    use tinykd::host::atomic::write_atomic;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("w.tkd");
    // Pids above the kernel's limit (2^22) never run.
    let stale = [".w.tkd.4194305.0.tmp", ".w.tkd.99999999.17.tmp"];
    let me = std::process::id();
    let kept = [
        ".w.tkd.1.0.tmp".to_string(),             // pid 1 runs
        format!(".w.tkd.{me}.999.tmp"),           // this process: maybe another thread's write
        ".w.tkd.ckpt.99999999.0.tmp".to_string(), // another file's
        ".x.tkd.99999999.0.tmp".to_string(),
        ".w.tkd.99999999.tmp".to_string(), // not the pattern
        ".w.tkd.9999999x.0.tmp".to_string(),
        ".w.tkd.99999999.0.tmp.bak".to_string(),
        "w.tkd.99999999.0.tmp".to_string(),
    ];
    for n in stale.iter().map(|s| s.to_string()).chain(kept.iter().cloned()) {
        std::fs::write(dir.path().join(n), b"x").unwrap();
    }
    std::fs::create_dir(dir.path().join(".w.tkd.99999998.0.tmp")).unwrap(); // not a file
    write_atomic(&target, b"new contents").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
    let mut left = files_in(dir.path());
    left.retain(|n| n != "w.tkd");
    let mut want: Vec<String> = kept.to_vec();
    want.sort();
    assert_eq!(left, want);
    assert!(dir.path().join(".w.tkd.99999998.0.tmp").is_dir());
}
