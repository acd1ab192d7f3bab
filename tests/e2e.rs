//! End to end: `tinykd pipeline --quick` runs every stage and writes its table; the exported
//! distilled student, run here by the `no_std` engine directly, gives exactly the top-1 of
//! `tinykd eval` on the params file, and agrees with the training executor's eval mode.
#![cfg(feature = "std")]

use std::path::Path;
use std::process::Command;

use tinykd::engine::Engine;
use tinykd::host::cli::weights_io::{load, Loaded};
use tinykd::host::data::load_cifar_dir;
use tinykd::kernels::loss::topk_correct;
use tinykd::kernels::shape::Logits;
use tinykd::kernels::{DType, Isa};
use tinykd::models;
use tinykd::train::Executor;
use tinykd::weights::{AlignedBuf, FileKind, WeightFile};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn quick_pipeline_table_and_engine_eval_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("main");
    let o = Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(["pipeline", "--quick", "--out", s(&out), "--threads", "2", "--eval-every", "1"])
        .output()
        .unwrap();
    let (so, se) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "stdout: {so}\nstderr: {se}");
    assert!(so.contains("| model | params | top-1 |"), "{so}");
    for stage in ["teacher", "distilled student", "baseline student", "exporting"] {
        assert!(se.contains(stage), "no {stage} stage: {se}");
    }
    // `--eval-every 1`: the students' first of two epochs reports test accuracy too.
    let first_epochs: Vec<&str> = se.lines().filter(|l| l.contains("epoch 1/2")).collect();
    assert_eq!(first_epochs.len(), 2, "{se}");
    assert!(first_epochs.iter().all(|l| l.contains("test top-1")), "{first_epochs:?}");
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), so);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        assert!(Path::new(r["path"].as_str().unwrap()).exists(), "{r}");
        let t1 = r["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&t1) && r["top5"].as_f64().unwrap() >= t1, "{r}");
    }
    assert_eq!(rows[0]["params"], 23_528_522);
    assert!(json["distillation_losses"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().starts_with("soft:")));
    for f in ["teacher.tkd.ckpt", "student_kd.metrics.csv", "student_kd.metrics.svg", "student_base.metrics.csv"] {
        assert!(out.join(f).exists(), "{f}");
    }

    // The f32 export, run by the engine here, batch 16.
    let (_, test) = load_cifar_dir(&out.join("data")).unwrap();
    let buf = AlignedBuf::read(&out.join("student_kd.f32.tkd")).unwrap();
    let file = WeightFile::parse(&buf).unwrap();
    assert_eq!((file.kind(), file.dtype()), (FileKind::Inference, DType::F32));
    let cfg = file.config();
    let classes = cfg.classes as usize;
    let (batch, isa) = (16, Isa::detect());
    assert_eq!(test.len() % batch, 0);
    let engine = Engine::new(&cfg, batch, &file).unwrap();
    let mut arena = vec![0u8; engine.arena_bytes()];
    let (mut input, mut logits) = (Vec::new(), vec![0.0f32; batch * classes]);
    let sh = Logits::new(batch, classes);
    let mut engine_hits = 0;
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(batch) {
        test.batch_nhwc(chunk, &mut input);
        engine.run(isa, &input, &mut arena, &mut logits).unwrap();
        let labels: Vec<u32> = chunk.iter().map(|&i| test.label(i) as u32).collect();
        engine_hits += topk_correct(&sh, &logits, &labels, 1).unwrap();
    }
    let engine_top1 = engine_hits as f64 / test.len() as f64;

    // `tinykd eval` on the params file: the same engine on the same folded weights.
    let o = Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(["eval", "--weights", s(&out.join("student_kd.tkd")), "--data", s(&out.join("data")), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["top1"].as_f64().unwrap(), engine_top1);
    assert_eq!(rows[1]["top1"].as_f64().unwrap(), engine_top1, "pipeline table row of the distilled student");

    // The training executor in eval mode (BN unfolded) on the params: within rounding flips.
    let Loaded::Params(params) = load(&out.join("student_kd.tkd")).unwrap() else { panic!("a params file") };
    let prog = models::program(params.config()).unwrap();
    let mut ex = Executor::new(&prog, test.len(), 2);
    let all: Vec<usize> = (0..test.len()).collect();
    test.batch_nhwc(&all, &mut input);
    ex.forward_eval(&params, &input).unwrap();
    let labels: Vec<u32> = all.iter().map(|&i| test.label(i) as u32).collect();
    let exec_top1 =
        topk_correct(&Logits::new(test.len(), classes), ex.logits(), &labels, 1).unwrap() as f64 / test.len() as f64;
    assert!((exec_top1 - engine_top1).abs() <= 2.0 / test.len() as f64, "executor {exec_top1} vs engine {engine_top1}");
}

/// An output file the pipeline would write that is a directory stops it before any work (it
/// used to train for minutes and then fail), and an earlier run's results, which would describe
/// other files once this run writes new ones, are removed.
#[test]
fn pipeline_checks_its_outputs_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("main");
    std::fs::create_dir_all(out.join("student_base.tkd")).unwrap();
    std::fs::write(out.join("results.md"), "an earlier run's table").unwrap();
    let o =
        Command::new(env!("CARGO_BIN_EXE_tinykd")).args(["pipeline", "--quick", "--out", s(&out)]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("student_base.tkd") && err.contains("is a directory"), "{err}");
    assert!(!out.join("data").exists() && !out.join("teacher.tkd").exists(), "work was done before the check");
    assert!(out.join("results.md").exists(), "a refused run removed nothing");
    // A run that starts and then fails (a corrupt teacher checkpoint on --resume) leaves no
    // stale table behind.
    std::fs::remove_dir(out.join("student_base.tkd")).unwrap();
    std::fs::write(out.join("teacher.tkd.ckpt"), b"TKDCKPT\0 and nothing sensible").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(["pipeline", "--quick", "--resume", "--out", s(&out)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("results.md").exists(), "the earlier run's table is still there");
    // A dataset directory the run may not replace (a file of the user's in it) is refused
    // before the earlier run's weights are removed (which a new run does: the unit tests of
    // `check_outputs_up_front`).
    let old = ["teacher.tkd", "student_kd.tkd", "student_kd.f16.tkd"];
    for f in old {
        std::fs::write(out.join(f), b"an earlier run's weights").unwrap();
    }
    std::fs::create_dir_all(out.join("data")).unwrap();
    std::fs::write(out.join("data").join("README.txt"), b"keep").unwrap();
    let o =
        Command::new(env!("CARGO_BIN_EXE_tinykd")).args(["pipeline", "--quick", "--out", s(&out)]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("README.txt"), "{err}");
    for f in old {
        assert!(out.join(f).exists(), "{f} was removed by a refused run");
    }
}
