//! The `tinykd` command: `data synth`, `data check`, `list-vars`, `summary`; every invalid
//! input gives a non-zero exit, one clear message on stderr, and no output file.
#![cfg(feature = "std")]

use std::path::Path;
use std::process::{Command, Output};

use tinykd::host::data::{load_cifar_dir, synth};

fn tinykd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinykd")).args(args).output().expect("run tinykd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts exit code `code`, empty stdout, and stderr containing every word of `words`.
fn assert_fails(o: &Output, code: i32, words: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout should be empty, got: {}", stdout(o));
    assert!(err.starts_with("error:"), "{err}");
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn data_synth_writes_a_dataset_the_reader_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let o = tinykd(&["data", "synth", "--out", s(&out), "--train", "57", "--test", "13", "--seed", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 57 training and 13 test images"), "{}", stdout(&o));
    // Not a terminal: one line on stderr says what is generated and where.
    let line = format!("generating 57 training and 13 test images (seed 5) in {}", out.display());
    assert_eq!(stderr(&o).trim_end(), line);
    let (train, test) = load_cifar_dir(&out).unwrap();
    let (gt, ge) = synth::generate(57, 13, 5);
    assert_eq!(train, gt);
    assert_eq!(test, ge);

    let o = tinykd(&["data", "check", "--data", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("57 training images, 13 test images"), "{text}");
    let counts = gt.class_counts();
    let line = text.lines().find(|l| l.contains(synth::CLASS_NAMES[7])).expect("class line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields, ["7", synth::CLASS_NAMES[7], &counts[7].to_string(), &ge.class_counts()[7].to_string()]);
}

#[test]
fn data_synth_defaults_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(tinykd(&["data", "synth", "--out", s(&a), "--train", "20", "--test", "5"]).status.success());
    assert!(tinykd(&["data", "synth", "--out", s(&b), "--train", "20", "--test", "5", "--seed", "0"]).status.success());
    for f in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn data_synth_bad_arguments_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = s(&out);
    assert_fails(&tinykd(&["data", "synth", "--out", o, "--train", "0"]), 2, &["--train", "0"]);
    assert_fails(&tinykd(&["data", "synth", "--out", o, "--test", "many"]), 2, &["--test", "many"]);
    assert_fails(&tinykd(&["data", "synth", "--out", o, "--seed", "-1"]), 2, &["-1"]);
    assert_fails(&tinykd(&["data", "synth", "--train", "5"]), 2, &["--out"]);
    assert_fails(&tinykd(&["data", "synth", "--out", o, "--bogus"]), 2, &["--bogus"]);
    assert!(!out.exists());
    // --out naming an existing file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_fails(
        &tinykd(&["data", "synth", "--out", s(&file), "--train", "3", "--test", "1"]),
        2,
        &["not a directory"],
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn data_check_reports_reader_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    assert_fails(&tinykd(&["data", "check", "--data", s(&missing)]), 1, &["missing", "does not exist"]);
    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 10, 3, 1).unwrap();
    let p = out.join("data_batch_2.bin");
    let mut raw = std::fs::read(&p).unwrap();
    raw.pop();
    std::fs::write(&p, raw).unwrap();
    assert_fails(
        &tinykd(&["data", "check", "--data", s(&out)]),
        1,
        &["data_batch_2.bin has 6145 bytes", "not a whole number of 3073-byte records; truncated?"],
    );
}

#[test]
fn os_errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("sub");
    let o = tinykd(&["data", "synth", "--out", s(&under_file), "--train", "3", "--test", "1"]);
    assert_fails(&o, 1, &["file/sub", "os error"]);
    assert_eq!(stderr(&o).matches("os error").count(), 1, "{}", stderr(&o));

    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 10, 3, 1).unwrap();
    let batch = out.join("data_batch_2.bin");
    std::fs::remove_file(&batch).unwrap();
    // A symbolic link to itself: reading it is an OS error (ELOOP) whatever the user's rights.
    std::os::unix::fs::symlink("data_batch_2.bin", &batch).unwrap();
    let o = tinykd(&["data", "check", "--data", s(&out)]);
    assert_fails(&o, 1, &["data_batch_2.bin", "os error"]);
    assert_eq!(stderr(&o).matches("os error").count(), 1, "{}", stderr(&o));
}

#[test]
fn summary_json_matches_reference_counts() {
    let o = tinykd(&["summary", "--model", "mobilenet_v1", "--scale", "1.0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"], 3_217_226);
    assert_eq!(v["statistics"], 21_888);
    assert_eq!(v["macs"], 11_596_288);
    assert!(v["arena_bytes"].as_u64().unwrap() >= v["arena_lower_bound"].as_u64().unwrap());
    assert!(v["arena_lower_bound"].as_u64().unwrap() > 0);

    let o = tinykd(&["summary", "--model", "resnet50", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"], 23_528_522);
    assert_eq!(v["statistics"], 53_120);
    assert_eq!(v["macs"], 83_431_424);

    let o = tinykd(&["summary", "--model", "mobilenet_v1", "--scale", "0.25"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("mobilenet_v1 x0.25, 10 classes, imagenet stem, input 32x32x3"), "{}", stdout(&o));
}

#[test]
fn list_vars_table_and_json() {
    let o = tinykd(&["list-vars", "--model", "mobilenet_v1", "--scale", "0.5", "--batch", "4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vars = v.as_array().unwrap();
    let conv1 = vars.iter().find(|x| x["name"] == "conv1_weights").expect("conv1_weights");
    assert_eq!(conv1["dims"], serde_json::json!([3, 3, 3, 16]));
    assert_eq!(conv1["layout"], "HWIO");
    assert_eq!(conv1["kind"], "parameter");
    assert_eq!(conv1["bytes"], 3 * 3 * 3 * 16 * 4);
    let image = vars.iter().find(|x| x["name"] == "image").expect("image");
    assert_eq!(image["dims"], serde_json::json!([4, 32, 32, 3]));

    let o = tinykd(&["list-vars", "--model", "resnet50", "--stem", "cifar", "--classes", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("bn5c_branch2b"), "{text}");
    let fc = text.lines().find(|l| l.contains("fc") && l.contains("IO ")).expect("fc weights line");
    assert!(fc.contains("2048x100"), "{fc}");
}

#[test]
fn model_options_are_validated() {
    let cases: [(&[&str], &[&str]); 8] = [
        (&["summary", "--model", "resnet50", "--scale", "0.5"], &["--scale", "resnet50"]),
        (&["summary", "--model", "mobilenet_v1", "--scale", "0.3"], &["0.3", "0.25, 0.5, 0.75, 1.0"]),
        (&["summary", "--model", "mobilenet_v1", "--input", "31x31"], &["31x31", "multiple"]),
        (&["summary", "--model", "mobilenet_v1", "--input", "big"], &["big", "HxW"]),
        (&["summary", "--model", "vgg16"], &["vgg16", "mobilenet_v1", "resnet50"]),
        (&["summary", "--model", "resnet50", "--classes", "0"], &["--classes"]),
        (&["list-vars", "--model", "resnet50", "--batch", "0"], &["--batch"]),
        (&["list-vars", "--model", "resnet50", "--stem", "tiny"], &["tiny", "imagenet", "cifar"]),
    ];
    for (args, words) in cases {
        let o = tinykd(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = stderr(&o);
        for w in words {
            assert!(err.contains(w), "{args:?}: stderr lacks {w:?}: {err}");
        }
    }
    assert_fails(&tinykd(&["summary"]), 2, &["--model"]);
    assert_fails(&tinykd(&["frobnicate"]), 2, &["frobnicate"]);
    assert!(tinykd(&["--help"]).status.success());
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    n.sort();
    n
}

/// Every file of `dir` by name, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    names(dir).into_iter().map(|n| (n.clone(), std::fs::read(dir.join(n)).unwrap())).collect()
}

#[test]
fn a_killed_data_synth_leaves_the_old_dataset_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    assert!(tinykd(&["data", "synth", "--out", s(&out), "--train", "200", "--test", "20", "--seed", "1"])
        .status
        .success());
    let before = snapshot(&out);
    // A large run, killed once it has written into its new directory (it would take ~10 s).
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(["data", "synth", "--out", s(&out), "--train", "100000", "--seed", "2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fresh = dir.path().join(format!(".d.tinykd-new.{}.0.tmp", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&fresh).map_or(true, |mut d| d.next().is_none()) {
        assert!(std::time::Instant::now() < deadline, "no file in {}", fresh.display());
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(snapshot(&out), before, "the old dataset is byte-identical");
    let o = tinykd(&["data", "check", "--data", s(&out)]);
    assert!(stdout(&o).contains("200 training images, 20 test images"), "{}", stderr(&o));
    // The next run removes the dead run's directory.
    assert!(fresh.exists());
    assert!(tinykd(&["data", "synth", "--out", s(&out), "--train", "30", "--test", "10"]).status.success());
    assert_eq!(names(dir.path()), ["d"]);
    assert_eq!(load_cifar_dir(&out).unwrap().0.len(), 30);
}

#[test]
fn data_synth_refuses_a_directory_with_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), b"mine").unwrap();
    let o = tinykd(&["data", "synth", "--out", s(&out), "--train", "3", "--test", "1"]);
    assert_fails(&o, 1, &["thesis.tex", "not a dataset file", "nothing was written"]);
    assert_eq!(names(&out), ["thesis.tex"]);
    assert_eq!(names(dir.path()), ["d"]);
    // The current directory (`--out .`) is refused too: replacing it would leave the caller
    // in a deleted directory.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tinykd"))
        .args(["data", "synth", "--out", ".", "--train", "3", "--test", "1"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert_fails(&o, 1, &["current directory"]);
    assert!(names(&cwd).is_empty());
}

#[test]
fn data_check_refuses_a_sixth_training_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 10, 3, 1).unwrap();
    std::fs::copy(out.join("data_batch_1.bin"), out.join("data_batch_6.bin")).unwrap();
    assert_fails(
        &tinykd(&["data", "check", "--data", s(&out)]),
        1,
        &["data_batch_6.bin would not be read", "data_batch_1.bin .. data_batch_5.bin"],
    );
}

/// `tinykd args` run as user `nobody` when this process is root (through `setpriv`), else as
/// this user; `None` when root cannot switch (no `setpriv`, or `nobody` cannot run the binary).
fn tinykd_unprivileged(args: &[&str]) -> Option<Output> {
    let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        return Some(tinykd(args));
    }
    let run = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_tinykd")])
            .args(args)
            .output()
            .ok()
    };
    run(&["--version"]).filter(|o| o.status.success())?;
    run(args)
}

#[test]
fn an_unreadable_dataset_directory_says_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 10, 3, 1).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o000)).unwrap();
    let o = tinykd_unprivileged(&["data", "check", "--data", s(&out)]);
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(o) = o else {
        eprintln!("skipped: running as root without a way to drop privileges (setpriv)");
        return;
    };
    // It used to say the directory "has no training file".
    assert_fails(&o, 1, &[s(&out), "Permission denied"]);
    assert!(!stderr(&o).contains("no training file") && !stderr(&o).contains("missing"), "{}", stderr(&o));
}
