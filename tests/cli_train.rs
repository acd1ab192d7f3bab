//! `tinykd train`, `distill`, `eval`, `export` on a tiny synthetic dataset: files written, loss
//! falling, bitwise-exact resume, evaluation consistency, inference exports, and the errors
//! (exit codes, messages naming close names, no partial output).
#![cfg(feature = "std")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tinykd::host::checkpoint::Checkpoint;
use tinykd::host::data::synth;
use tinykd::kernels::DType;
use tinykd::params::ParamStore;
use tinykd::weights::{self, AlignedBuf, FileKind, WeightFile};
use tinykd::ModelConfig;

fn tinykd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinykd")).args(args).output().expect("run tinykd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), stdout(&o), stderr(&o));
    o
}

/// Asserts exit code `code`, an `error:` message containing every word of `words`.
fn assert_fails(o: &Output, code: i32, words: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains("error:"), "{err}");
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A temp dir with a synthetic dataset of 192 training and 64 test images in `data/`.
fn dataset() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth::write_synth_dir(&data, 192, 64, 3).unwrap();
    (dir, data)
}

/// `tinykd train` of MobileNetV1 x0.25 (ImageNet stem: fast) with `extra` options.
fn train(data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        "mobilenet_v1",
        "--scale",
        "0.25",
        "--data",
        s(data),
        "--epochs",
        epochs,
        "--out",
        s(out),
        "--batch",
        "32",
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    tinykd(&args)
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head = lines.next().unwrap().split(',').map(str::to_string).collect();
    (head, lines.map(|l| l.split(',').map(str::to_string).collect()).collect())
}

fn read_weights(path: &Path) -> AlignedBuf {
    AlignedBuf::read(path).unwrap()
}

#[test]
fn train_writes_weights_checkpoint_metrics_and_the_loss_falls() {
    let (dir, data) = dataset();
    let out = dir.path().join("run/student.tkd");
    let o = ok(train(&data, &out, "3", &["--lr", "0.02", "--schedule", "constant", "--no-augment"]));
    assert!(stdout(&o).contains("test top-1"), "{}", stdout(&o));

    let buf = read_weights(&out);
    let file = WeightFile::parse(&buf).unwrap();
    assert_eq!(file.kind(), FileKind::Params);
    assert_eq!(file.config(), ModelConfig::mobilenet_v1(250));

    let ck = Checkpoint::load(&dir.path().join("run/student.tkd.ckpt")).unwrap();
    assert_eq!((ck.state.epoch, ck.state.step), (3, 18));
    assert_eq!(ck.momentum.len(), ck.params.len());
    assert!(ck.momentum.iter().any(|m| m.data.iter().any(|&v| v != 0.0)));

    let (head, rows) = csv_rows(&dir.path().join("run/student.metrics.csv"));
    assert_eq!(head[..5], ["epoch", "step", "lr", "train_loss", "ce"]);
    assert_eq!(rows.len(), 3);
    let loss = |r: &Vec<String>| r[3].parse::<f64>().unwrap();
    assert!(loss(&rows[2]) < loss(&rows[0]), "loss did not fall: {rows:?}");
    assert!(rows.iter().all(|r| !r[6].is_empty()), "test accuracy every epoch: {rows:?}");
    let svg = std::fs::read_to_string(dir.path().join("run/student.metrics.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}

#[test]
fn resume_after_the_first_epoch_gives_bitwise_the_same_weights() {
    let (dir, data) = dataset();
    let opts = ["--schedule", "piecewise:2:0.05,0.01", "--seed", "7"];
    let whole = dir.path().join("whole.tkd");
    ok(train(&data, &whole, "3", &opts));

    let parts = dir.path().join("parts.tkd");
    ok(train(&data, &parts, "1", &opts));
    assert_eq!(Checkpoint::load(&dir.path().join("parts.tkd.ckpt")).unwrap().state.epoch, 1);
    let mut resumed = opts.to_vec();
    resumed.push("--resume");
    let o = ok(train(&data, &parts, "3", &resumed));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&parts).unwrap(), "resumed weights differ");
    let (_, rows) = csv_rows(&dir.path().join("parts.metrics.csv"));
    let (_, whole_rows) = csv_rows(&dir.path().join("whole.metrics.csv"));
    assert_eq!(rows.len(), 3);
    for (a, b) in rows.iter().zip(&whole_rows) {
        assert_eq!(a[..7], b[..7], "metrics differ");
    }

    // A resume with other trajectory options is refused.
    let o = train(&data, &parts, "3", &["--schedule", "constant", "--seed", "7", "--resume"]);
    assert_fails(&o, 2, &["schedule", "--resume"]);
}

#[test]
fn eval_and_export_agree_across_params_checkpoint_and_inference_files() {
    let (dir, data) = dataset();
    let out = dir.path().join("m.tkd");
    ok(train(&data, &out, "2", &["--lr", "0.05"]));
    let eval = |w: &Path| -> serde_json::Value {
        let o =
            ok(tinykd(&["eval", "--weights", s(w), "--data", s(&data), "--json", "--batch", "7", "--threads", "2"]));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let base = eval(&out);
    assert_eq!(base["n"], 64);
    // Evaluation reads only the test split: a directory with nothing else serves.
    let test_only = dir.path().join("test-only");
    std::fs::create_dir_all(&test_only).unwrap();
    std::fs::copy(data.join("test_batch.bin"), test_only.join("test_batch.bin")).unwrap();
    let o = ok(tinykd(&["eval", "--weights", s(&out), "--data", s(&test_only), "--json", "--batch", "7"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap(), base);
    let top1 = base["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && base["top5"].as_f64().unwrap() >= top1);
    assert_eq!(eval(&dir.path().join("m.tkd.ckpt")), base);

    for (dtype, name) in [(DType::F32, "f32"), (DType::F16, "f16")] {
        let path = dir.path().join(format!("m.{name}.tkd"));
        let o = ok(tinykd(&["export", "--weights", s(&out), "--dtype", name, "--out", s(&path)]));
        assert!(stdout(&o).contains("tensors"), "{}", stdout(&o));
        let buf = read_weights(&path);
        let file = WeightFile::parse(&buf).unwrap();
        assert_eq!((file.kind(), file.dtype()), (FileKind::Inference, dtype));
        let e = eval(&path);
        if dtype == DType::F32 {
            assert_eq!(e, base, "the params file is folded to f32 and run by the same engine");
        } else {
            assert!((e["top1"].as_f64().unwrap() - top1).abs() <= 2.0 / 64.0, "f16 {e} vs f32 {base}");
        }
    }
    // Text output; batch larger than the set; one thread.
    let o = ok(tinykd(&["eval", "--weights", s(&out), "--data", s(&data), "--batch", "1000", "--threads", "1"]));
    assert!(stdout(&o).contains("top-1") && stdout(&o).contains("64 test images"), "{}", stdout(&o));

    // An inference file cannot be exported again.
    let again = dir.path().join("again.tkd");
    let o = tinykd(&["export", "--weights", s(&dir.path().join("m.f32.tkd")), "--out", s(&again)]);
    assert_fails(&o, 2, &["inference file"]);
    assert!(!again.exists());
}

/// A weight beyond f16's range (after folding) is refused by `export --dtype f16`, naming the
/// tensor, instead of becoming an infinity in the file; f32 holds it.
#[test]
fn an_f16_export_refuses_weights_beyond_f16_range() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::mobilenet_v1(250);
    let mut store = ParamStore::init(&cfg, 1).unwrap();
    store.get_mut("conv1_weights").unwrap().data[5] = 1e6;
    let params = dir.path().join("big.tkd");
    weights::write_file(&params, &cfg, FileKind::Params, DType::F32, &store.to_tensors()).unwrap();
    let out = dir.path().join("big.f16.tkd");
    let o = tinykd(&["export", "--weights", s(&params), "--dtype", "f16", "--out", s(&out)]);
    assert_fails(&o, 1, &["value 5 of the BN-folded `conv1_weights` is 99999", "beyond f16's range", "--dtype f32"]);
    assert!(!out.exists());
    ok(tinykd(&["export", "--weights", s(&params), "--dtype", "f32", "--out", s(&out)]));
}

/// A params file of a MobileNetV1 x0.5 "teacher" (fresh weights: enough to check the merge).
fn teacher_file(dir: &Path) -> PathBuf {
    let cfg = ModelConfig::mobilenet_v1(500);
    let store = ParamStore::init(&cfg, 1).unwrap();
    let path = dir.join("teacher.tkd");
    weights::write_file(&path, &cfg, FileKind::Params, DType::F32, &store.to_tensors()).unwrap();
    path
}

fn distill(teacher: &Path, data: &Path, out: &Path, losses: &[&str]) -> Output {
    let mut args = vec![
        "distill",
        "--teacher",
        s(teacher),
        "--student",
        "mobilenet_v1",
        "--scale",
        "0.25",
        "--data",
        s(data),
        "--epochs",
        "1",
        "--out",
        s(out),
        "--batch",
        "32",
        "--threads",
        "2",
    ];
    for l in losses {
        args.extend(["--loss", l]);
    }
    tinykd(&args)
}

#[test]
fn distill_logs_every_loss_part_and_rejects_bad_specs_without_output() {
    let (dir, data) = dataset();
    let teacher = teacher_file(dir.path());
    let out = dir.path().join("kd/student.tkd");
    ok(distill(&teacher, &data, &out, &["ce", "l2:teacher_conv5_6_dw_bn,conv6_dw_bn*0.5;soft:teacher_fc7,fc7,T=2"]));
    let (head, rows) = csv_rows(&dir.path().join("kd/student.metrics.csv"));
    assert_eq!(head[4..7], ["ce", "l2:teacher_conv5_6_dw_bn|conv6_dw_bn", "soft:teacher_fc7|fc7|Tt=2|Ts=2"]);
    assert_eq!(rows.len(), 1);
    assert!(WeightFile::parse(&read_weights(&out)).is_ok());

    // Default losses: the hint pair's shapes differ (x0.5 vs x0.25), so ce + soft-label.
    let def = dir.path().join("def.tkd");
    ok(distill(&teacher, &data, &def, &[]));
    let (head, _) = csv_rows(&dir.path().join("def.metrics.csv"));
    assert_eq!(head[4..6], ["ce", "soft:teacher_fc7|fc7|Tt=1|Ts=1"]);

    let bad = dir.path().join("bad/student.tkd");
    let no_output = |o: &Output| {
        assert!(!bad.exists() && !dir.path().join("bad").exists(), "partial output; stderr: {}", stderr(o));
    };
    // Unknown teacher tensor: the message names the close name.
    let o = distill(&teacher, &data, &bad, &["l2:teacher_conv6_sep_bm,conv6_sep_bn"]);
    assert_fails(&o, 2, &["teacher_conv6_sep_bm", "teacher_conv6_sep_bn"]);
    no_output(&o);
    // Unknown student tensor.
    let o = distill(&teacher, &data, &bad, &["soft:teacher_fc7,fc8"]);
    assert_fails(&o, 2, &["fc8", "fc7"]);
    no_output(&o);
    // Shape mismatch: both names and shapes.
    let o = distill(&teacher, &data, &bad, &["l2:teacher_conv6_sep_bn,conv5_6_dw"]);
    assert_fails(&o, 2, &["teacher_conv6_sep_bn", "[N, 1, 1, 512] NHWC", "conv5_6_dw", "[N, 1, 1, 128] NHWC"]);
    no_output(&o);
    // Malformed spec.
    let o = distill(&teacher, &data, &bad, &["kl:teacher_fc7,fc7"]);
    assert_fails(&o, 2, &["kl"]);
    no_output(&o);
}

#[test]
fn errors_exit_codes_and_no_partial_output() {
    let (dir, data) = dataset();
    let out = dir.path().join("x/m.tkd");
    let gone = || !dir.path().join("x").exists();

    let o = train(&dir.path().join("nope"), &out, "1", &[]);
    assert_fails(&o, 1, &["nope", "does not exist"]);
    assert!(gone());

    let o = tinykd(&["train", "--model", "resnet18", "--data", s(&data), "--epochs", "1", "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("resnet18") && stderr(&o).contains("resnet50"), "{}", stderr(&o));
    assert!(gone());

    let o = train(&data, &out, "1", &["--schedule", "linear"]);
    assert_fails(&o, 2, &["linear", "piecewise"]);
    let o = tinykd(&[
        "train",
        "--model",
        "mobilenet_v1",
        "--data",
        s(&data),
        "--epochs",
        "1",
        "--out",
        s(&out),
        "--batch",
        "500",
    ]);
    assert_fails(&o, 2, &["fewer than one batch"]);
    assert!(gone());

    let o = tinykd(&["eval", "--weights", s(&dir.path().join("missing.tkd")), "--data", s(&data)]);
    assert_fails(&o, 1, &["missing.tkd"]);
    let junk = dir.path().join("junk.tkd");
    std::fs::write(&junk, b"not weights at all").unwrap();
    let o = tinykd(&["eval", "--weights", s(&junk), "--data", s(&data)]);
    assert_fails(&o, 1, &["junk.tkd", "magic"]);
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let (dir, data) = dataset();
    let out = dir.path().join("m.tkd");
    // Epoch 1 at a sane rate, then an absurd one.
    let o = train(&data, &out, "2", &["--schedule", "piecewise:1:0.01,1e30", "--no-augment"]);
    assert_fails(&o, 1, &["not finite at step", "lower learning rate", "epoch 1 is intact"]);
    assert!(!out.exists(), "no final weights after a failed run");
    let ck = Checkpoint::load(&dir.path().join("m.tkd.ckpt")).unwrap();
    assert_eq!(ck.state.epoch, 1);
    assert!(ck.params.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
}
