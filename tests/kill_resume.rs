//! Crash-safe resume: a `tinykd train --resume` run is SIGKILLed at 28 points — 16 at
//! random times, 8 the moment a checkpoint temp file appears (i.e. during the checkpoint
//! write), 4 the moment that temp file is renamed (right after the checkpoint write) — and
//! restarted each time. After every kill the checkpoint, if there is one, must load, the
//! metrics log must have a row for every epoch of the checkpoint, and no weight file may exist
//! until the run finishes; the final weights must be bitwise identical to an uninterrupted run
//! with the same seed and thread count, the metrics log must have exactly one row per epoch, and
//! no temp file of a killed write may be left.
#![cfg(all(feature = "std", unix))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tinykd::host::checkpoint::Checkpoint;
use tinykd::host::data::Rng;

/// Epochs of the run; each has `TRAIN / BATCH` steps.
const EPOCHS: u64 = 10;
const TRAIN: usize = 48;
const BATCH: usize = 16;
const THREADS: usize = 2;
const RANDOM_KILLS: usize = 16;
const WRITE_KILLS: usize = 8;
const AFTER_WRITE_KILLS: usize = 4;

fn tinykd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tinykd"))
}

fn check(o: Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
}

/// The training command writing `out` (a tiny MobileNetV1 on the synthetic data).
fn train(data: &Path, out: &Path) -> Command {
    let mut c = tinykd();
    let (epochs, batch, threads) = (EPOCHS.to_string(), BATCH.to_string(), THREADS.to_string());
    c.args(["train", "--model", "mobilenet_v1", "--scale", "0.25", "--stem", "cifar", "--classes", "10"])
        .args(["--epochs", &epochs, "--batch", &batch, "--threads", &threads, "--seed", "5", "--lr", "0.05"])
        .args(["--eval-every", "0", "--resume"])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn ckpt_of(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// Whether `dir` holds a temp file of process `pid`'s atomic write of the checkpoint
/// (`.<name>.<pid>.<n>.tmp`, see `host::atomic`).
fn ckpt_temp_exists(dir: &Path, out: &Path, pid: u32) -> bool {
    let prefix = format!(".{}.ckpt.{pid}.", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(dir).is_ok_and(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
}

/// The epochs of the rows of the metrics log `csv` (none if it does not exist).
fn metrics_epochs(csv: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(csv).unwrap_or_default();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().expect("an epoch number")).collect()
}

/// When a kill lands.
#[derive(Clone, Copy, PartialEq)]
enum KillAt {
    /// A random time in the first quarter of a run.
    Random,
    /// The moment a checkpoint temp file appears.
    DuringWrite,
    /// The moment that temp file is gone again (renamed over the checkpoint).
    AfterWrite,
}

/// SIGKILLs `child` (std's `kill` sends SIGKILL on Unix) and reaps it; whether it was still
/// running.
fn kill(child: &mut Child) -> bool {
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    child.wait().unwrap();
    running
}

#[test]
fn sigkill_at_28_points_then_resume_gives_the_uninterrupted_weights_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let test_n = "16".to_string();
    check(
        tinykd()
            .args(["data", "synth", "--train", &TRAIN.to_string(), "--test", &test_n, "--seed", "2", "--out"])
            .arg(&data)
            .output()
            .unwrap(),
        "data synth",
    );

    // The uninterrupted run; its duration calibrates the kill times.
    let ref_dir = dir.path().join("ref");
    let ref_out = ref_dir.join("w.tkd");
    let start = Instant::now();
    check(train(&data, &ref_out).output().unwrap(), "uninterrupted run");
    let full = start.elapsed();
    let reference = std::fs::read(&ref_out).unwrap();

    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let out = run_dir.join("w.tkd");
    let ckpt = ckpt_of(&out);
    let csv = run_dir.join("w.metrics.csv");
    let mut rng = Rng::new(0x4B11);
    let (mut kills, mut write_kills, mut after_kills, mut restarts) = (0usize, 0usize, 0usize, 0usize);
    let mut epochs_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while kills < RANDOM_KILLS + WRITE_KILLS + AFTER_WRITE_KILLS {
        assert!(Instant::now() < deadline, "the kill loop did not finish");
        let mut child = train(&data, &out).spawn().unwrap();
        restarts += 1;
        let at = match kills % 4 {
            2 if write_kills < WRITE_KILLS => KillAt::DuringWrite,
            3 if after_kills < AFTER_WRITE_KILLS => KillAt::AfterWrite,
            _ => KillAt::Random,
        };
        let killed = if at == KillAt::Random {
            // A random point in the first quarter of a full run's time: startup, a step, or a write.
            let wait = full.mul_f64(rng.uniform(0.02, 0.25) as f64);
            std::thread::sleep(wait);
            kill(&mut child)
        } else {
            // Poll for the checkpoint's temp file and kill as soon as it shows up (or, after
            // a write, as soon as it is gone again).
            let limit = Instant::now() + full * 2;
            let pid = child.id();
            let mut seen = false;
            loop {
                let exists = ckpt_temp_exists(&run_dir, &out, pid);
                if exists && at == KillAt::DuringWrite {
                    let k = kill(&mut child);
                    // The temp file outliving the process proves the kill came before the
                    // rename, i.e. in the middle of the checkpoint write.
                    write_kills += (k && ckpt_temp_exists(&run_dir, &out, pid)) as usize;
                    break k;
                }
                if seen && !exists {
                    let k = kill(&mut child);
                    after_kills += k as usize;
                    break k;
                }
                seen |= exists;
                if Instant::now() > limit || child.try_wait().unwrap().is_some() {
                    break kill(&mut child);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        if out.exists() {
            // The run got to its end (before the kill, or the kill came after the final
            // write): the weights must be complete and right. Start over, so that every
            // counted kill interrupts a run.
            assert!(std::fs::read(&out).unwrap() == reference, "a finished run wrote different weights");
            for f in [&out, &ckpt, &csv] {
                std::fs::remove_file(f).unwrap();
            }
            continue;
        }
        if !killed {
            let o = child.wait_with_output().unwrap();
            panic!("the run exited without weights: {}", String::from_utf8_lossy(&o.stderr));
        }
        kills += 1;
        let epoch = if ckpt.exists() {
            let ck =
                Checkpoint::load(&ckpt).unwrap_or_else(|e| panic!("kill {kills}: the checkpoint does not load: {e}"));
            epochs_seen.push(ck.state.epoch);
            ck.state.epoch
        } else {
            0
        };
        // The metrics of every checkpointed epoch are written (the epoch in progress may be
        // too: a resumed run drops its row and writes it again).
        let rows = metrics_epochs(&csv);
        assert!(
            rows == (1..=epoch).collect::<Vec<_>>() || rows == (1..=epoch + 1).collect::<Vec<_>>(),
            "kill {kills}: the checkpoint is at epoch {epoch}, the metrics log has rows {rows:?}"
        );
    }
    let last_epoch = if ckpt.exists() { Checkpoint::load(&ckpt).unwrap().state.epoch } else { 0 };

    // Resume to the end.
    check(train(&data, &out).output().unwrap(), "final resumed run");
    let resumed = std::fs::read(&out).unwrap();
    let litter = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    eprintln!(
        "{kills} kills ({write_kills} during checkpoint writes, {after_kills} right after) over {restarts} starts; \
         checkpoint epochs after kills: {epochs_seen:?}; uninterrupted run {full:?}; {litter} temp files of killed \
         writes left behind"
    );
    assert!(write_kills >= 4, "only {write_kills} kills landed during a checkpoint write");
    assert!(after_kills >= 2, "only {after_kills} kills landed right after a checkpoint write");
    assert!(resumed == reference, "resumed weights differ from the uninterrupted run's");
    assert_eq!(Checkpoint::load(&ckpt).unwrap().state.epoch, EPOCHS);
    assert_eq!(metrics_epochs(&csv), (1..=EPOCHS).collect::<Vec<_>>(), "one metrics row per epoch");
    // Each write removes the temp files that killed writers of its file left; the final run
    // writes the checkpoint and metrics again unless the last kill came after the last epoch.
    if last_epoch < EPOCHS {
        assert_eq!(litter, 0, "temp files of killed writes were left behind");
    }
}
