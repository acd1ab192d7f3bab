//! `tinykd bench`: the JSON report of each benchmark (keys, types, consistency of the
//! percentiles and throughput) and the usage errors.

use std::process::Command;

fn tinykd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tinykd")).args(args).output().expect("run tinykd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Parses a successful run's JSON report and checks the timing fields.
fn report(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = tinykd(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"));
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{args:?}: no number `{k}` in {v}"));
    let (p10, med, p90) = (f("ms_p10"), f("ms_median"), f("ms_p90"));
    assert!(0.0 < p10 && p10 <= med && med <= p90, "{v}");
    let batch = v["batch"].as_u64().unwrap() as f64;
    assert!((f("images_per_s") - batch * 1e3 / med).abs() <= 1e-6 * f("images_per_s"), "{v}");
    v
}

#[test]
fn infer_reports_model_dtype_isa_and_times() {
    let v = report(&["bench", "infer", "--model", "mobilenet_v1", "--scale", "0.25", "--dtype", "f16", "--iters", "3"]);
    assert_eq!(v["bench"], "infer");
    assert_eq!(v["model"], "mobilenet_v1");
    assert_eq!(v["scale"], 0.25);
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["batch"], 1);
    assert_eq!(v["threads"], 1);
    assert!(["scalar", "avx2", "avx512", "neon"].contains(&v["isa"].as_str().unwrap()), "{v}");
    assert_eq!(v["panels"], true, "{v}");
    let v = report(&["bench", "infer", "--model", "mobilenet_v1", "--scale", "0.25", "--batch", "2", "--iters", "2"]);
    assert_eq!((v["batch"].as_u64(), v["dtype"].as_str()), (Some(2), Some("f32")));
    // The stored layout, without packing.
    let v = report(&["bench", "infer", "--model", "mobilenet_v1", "--scale", "0.25", "--no-panels", "--iters", "2"]);
    assert_eq!(v["panels"], false, "{v}");
}

#[test]
fn infer_layers_time_every_step_and_count_its_work() {
    let v = report(&["bench", "infer", "--model", "mobilenet_v1", "--scale", "0.25", "--layers", "--iters", "3"]);
    let layers = v["layers"].as_array().unwrap_or_else(|| panic!("no `layers` array: {v}"));
    // MobileNetV1: conv1, 13 depthwise + pointwise pairs, the pool and the fc.
    assert_eq!(layers.len(), 1 + 2 * 13 + 2, "{v}");
    assert_eq!((layers[0]["layer"].as_str(), layers[1]["layer"].as_str()), (Some("conv1"), Some("conv2_1_dw")));
    let macs: u64 = layers.iter().map(|l| l["macs"].as_u64().unwrap()).sum();
    // The model's MACs at ×0.25 (`tinykd summary`: 834,688).
    assert_eq!(macs, 834_688, "{v}");
    let bytes: u64 = layers.iter().map(|l| l["weight_bytes"].as_u64().unwrap()).sum();
    assert!(bytes > 0 && bytes.is_multiple_of(4), "{v}");
    for l in layers {
        assert!(l["ms_median"].as_f64().unwrap() >= 0.0, "{l}");
    }
    // Without --layers, no array.
    let v = report(&["bench", "infer", "--model", "mobilenet_v1", "--scale", "0.25", "--iters", "2"]);
    assert!(v.get("layers").is_none(), "{v}");
}

#[test]
fn train_and_distill_steps_report_their_losses() {
    let small = ["--model", "mobilenet_v1", "--scale", "0.25", "--batch", "2", "--iters", "1", "--warmup", "0"];
    let v = report(&[&["bench", "train-step"][..], &small, &["--threads", "1"]].concat());
    assert_eq!(v["bench"], "train-step");
    assert_eq!(v["losses"], serde_json::json!(["ce"]));
    // Every phase is timed; without a teacher its forward takes no time and has no rate.
    let phase = |v: &serde_json::Value, k: &str| v["phases_ms"][k].as_f64().unwrap_or_else(|| panic!("no {k}: {v}"));
    for k in ["student_fwd", "backward", "update"] {
        assert!(phase(&v, k) > 0.0, "{k}: {v}");
    }
    assert!(phase(&v, "losses") >= 0.0 && phase(&v, "teacher_fwd") == 0.0, "{v}");
    assert!(v.get("teacher_fwd_images_per_s").is_none(), "{v}");
    let v = report(&[&["bench", "train-step"][..], &small, &["--threads", "2", "--sync", "op"]].concat());
    assert_eq!((v["threads"].as_u64(), v["sync"].as_str()), (Some(2), Some("op")), "{v}");
    let v = report(&[&["bench", "distill-step"][..], &small].concat());
    assert_eq!(v["sync"], "batch", "{v}");
    assert_eq!(v["bench"], "distill-step");
    assert_eq!(v["losses"][0], "ce");
    assert_eq!(v["losses"].as_array().unwrap().len(), 2, "{v}");
    assert!(phase(&v, "teacher_fwd") > 0.0, "{v}");
    let rate = v["teacher_fwd_images_per_s"].as_f64().unwrap();
    assert!((rate - 2e3 / phase(&v, "teacher_fwd")).abs() < 1e-6 * rate, "batch / teacher time: {v}");
}

#[test]
fn distill_step_ops_time_both_networks() {
    let small = ["--model", "mobilenet_v1", "--scale", "0.25", "--batch", "2", "--iters", "2", "--warmup", "1"];
    let v = report(&[&["bench", "distill-step"][..], &small, &["--ops"]].concat());
    let ops = v["ops"].as_array().unwrap_or_else(|| panic!("no `ops` array: {v}"));
    let of = |net: &str| ops.iter().filter(|o| o["net"] == net).collect::<Vec<_>>();
    let (student, teacher) = (of("student"), of("teacher"));
    assert!(!student.is_empty() && !teacher.is_empty(), "{v}");
    let ms = |o: &serde_json::Value, k: &str| o[k].as_f64().unwrap_or_else(|| panic!("no `{k}` in {o}"));
    // The frozen teacher only runs forward; the student trains.
    assert!(teacher.iter().all(|o| ms(o, "bwd_ms") == 0.0), "{v}");
    assert!(student.iter().any(|o| ms(o, "bwd_ms") > 0.0), "{v}");
    // The student's reduce time has rows of its own (sums of the threads' weight gradients, and
    // its last pointwise convs' whole-batch ones at this batch); the teacher has none.
    let reduce: Vec<_> = ops.iter().filter(|o| o["kind"] == "Reduce").collect();
    assert_eq!(reduce.len(), 2, "{v}");
    assert!(reduce.iter().all(|o| o["net"] == "student" && ms(o, "bwd_ms") > 0.0), "{v}");
    assert!(ops.iter().all(|o| ms(o, "fwd_ms") >= 0.0 && o["op"].is_string() && o["kind"].is_string()), "{v}");
    // Heaviest first.
    let total: Vec<f64> = ops.iter().map(|o| ms(o, "fwd_ms") + ms(o, "bwd_ms")).collect();
    assert!(total.windows(2).all(|w| w[0] >= w[1]), "{total:?}");
    assert!(report(&[&["bench", "distill-step"][..], &small].concat()).get("ops").is_none());
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = tinykd(&["bench", "infer", "--model", "resnet50", "--threads", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threads"), "{err}");
    let (code, _, _) = tinykd(&["bench", "infer", "--model", "mobilenet_v1", "--iters", "0"]);
    assert_eq!(code, 2);
    let (code, _, _) = tinykd(&["bench", "infer", "--model", "resnet50", "--scale", "0.5"]);
    assert_eq!(code, 2);
    // Buffers beyond any memory are refused before anything is allocated (they used to be
    // allocated for tens of seconds, then abort), naming the options.
    let huge: [&[&str]; 3] = [
        &["bench", "infer", "--model", "mobilenet_v1", "--batch", "4294967295"],
        &["bench", "train-step", "--batch", "4294967295", "--iters", "1", "--warmup", "0"],
        &["bench", "distill-step", "--batch", "4294967295", "--iters", "1", "--warmup", "0"],
    ];
    for args in huge {
        let (code, _, err) = tinykd(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--batch") && err.contains("GB"), "{args:?}: {err}");
    }
}

/// A step bench with more threads than samples runs (and reports) one thread per sample.
#[test]
fn step_threads_are_capped_at_the_batch() {
    let v = report(&["bench", "train-step", "--batch", "2", "--threads", "8", "--iters", "1", "--warmup", "0"]);
    assert_eq!(v["threads"], 2, "{v}");
}

#[test]
fn step_benches_default_to_the_tutorials_student() {
    // No --model: the student is MobileNetV1 (as in `tinykd distill`); infer still asks.
    for bench in ["train-step", "distill-step"] {
        let v = report(&["bench", bench, "--scale", "0.25", "--batch", "2", "--iters", "1", "--warmup", "0"]);
        assert_eq!((v["model"].as_str(), v["scale"].as_f64()), (Some("mobilenet_v1"), Some(0.25)), "{v}");
    }
    let (code, _, err) = tinykd(&["bench", "infer", "--iters", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--model"), "{err}");
    // `tinykd distill` without --student gets past the arguments to the missing teacher file.
    let dir = std::env::temp_dir();
    let out = dir.join("tinykd-default-student-never-written.tkd");
    let args = ["distill", "--teacher", "/nonexistent/teacher.tkd", "--epochs", "1"];
    let (code, _, err) =
        tinykd(&[&args[..], &["--data", dir.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("teacher.tkd") && !out.exists(), "{err}");
}

#[test]
fn gemm_rates_each_shape_against_the_peak_of_the_same_run() {
    let args = ["bench", "gemm", "--shape", "13x35x70", "--shape", "64x16x8", "--rounds", "3", "--sample-ms", "2"];
    let (code, out, err) = tinykd(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(
        (v["bench"].as_str(), v["dtype_b"].as_str(), v["rounds"].as_u64()),
        (Some("gemm"), Some("f32"), Some(3))
    );
    let peak = v["peak_gflops_median"].as_f64().unwrap();
    let shapes = v["shapes"].as_array().unwrap_or_else(|| panic!("no `shapes`: {v}"));
    let dims: Vec<_> = shapes.iter().map(|s| (s["m"].as_u64(), s["n"].as_u64(), s["k"].as_u64())).collect();
    assert_eq!(dims, [(Some(13), Some(35), Some(70)), (Some(64), Some(16), Some(8))], "{v}");
    for s in shapes {
        let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("no number `{k}` in {s}"));
        let (med, best, of_peak) = (f("gflops_median"), f("gflops_best"), f("of_peak_median"));
        assert!(0.0 < med && med <= best && peak > 0.0 && of_peak > 0.0, "{v}");
        // The call time and the rate describe the same median.
        let flop = 2.0 * (s["m"].as_f64().unwrap() * s["n"].as_f64().unwrap() * s["k"].as_f64().unwrap());
        assert!((f("us_per_call_median") - flop / med * 1e-3).abs() <= 1e-9 * f("us_per_call_median"), "{s}");
    }
    // The scalar path can always be forced; f16 weights are named in the report.
    let (code, out, err) =
        tinykd(&["bench", "gemm", "--isa", "scalar", "--dtype", "f16", "--shape", "8x8x8", "--rounds", "1"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["isa"].as_str(), v["dtype_b"].as_str()), (Some("scalar"), Some("f16")), "{v}");
    // `--packed-b`: a shape the path has no packed B for is a usage error naming it (the scalar
    // path has none); on AVX2 the fc's shape runs over B packed once and says so.
    let (code, _, err) = tinykd(&["bench", "gemm", "--isa", "scalar", "--packed-b", "--shape", "64x10x1024"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--packed-b") && err.contains("64x10x1024"), "{err}");
    if tinykd::kernels::Isa::force(tinykd::kernels::IsaKind::Avx2).is_some() {
        let args = ["bench", "gemm", "--isa", "avx2", "--packed-b", "--shape", "40x10x100", "--rounds", "1"];
        let (code, out, err) = tinykd(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((v["packed_b"].as_bool(), v["shapes"][0]["m"].as_u64()), (Some(true), Some(40)), "{v}");
        assert!(v["shapes"][0]["gflops_median"].as_f64().unwrap() > 0.0, "{v}");
    }
    // Bad shapes and rounds are usage errors that say what is wrong.
    for (bad, says) in [("--shape=8x8", "MxNxK"), ("--shape=8x0x8", "positive"), ("--rounds=0", "rounds")] {
        let (code, _, err) = tinykd(&["bench", "gemm", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

/// `TINYKD_ISA` picks the kernel path (scalar runs everywhere); a name that is no path is a
/// usage error naming the variable, before any work.
#[test]
fn tinykd_isa_override_picks_the_path_or_is_refused() {
    let run = |isa: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tinykd"))
            .env("TINYKD_ISA", isa)
            .args(["bench", "infer", "--model", "mobilenet_v1", "--scale", "0.25", "--iters", "2"])
            .output()
            .expect("run tinykd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run("scalar");
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["isa"], "scalar", "{v}");
    let (code, out, err) = run("avx3");
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.is_empty() && err.contains("TINYKD_ISA") && err.contains("avx512"), "{err}");
}
