//! The per-epoch metrics log: CSV contents, SVG plot, resume, and the progress display's
//! non-terminal mode.
#![cfg(feature = "std")]

use tinykd::host::metrics::{EpochMetrics, MetricsLog};
use tinykd::host::progress::Progress;

fn row(epoch: u64, test: bool) -> EpochMetrics {
    let e = epoch as f64;
    EpochMetrics {
        epoch,
        step: epoch * 100,
        lr: 0.01 / e,
        train_loss: 2.3 / e,
        loss_parts: vec![2.0 / e, 0.3 / e],
        train_top1: 0.1 * e,
        test_top1: test.then_some(0.09 * e),
        test_top5: test.then_some(0.4 + 0.05 * e),
        images_per_sec: 1000.0 + e,
        seconds: 12.5,
    }
}

#[test]
fn csv_and_svg_are_written_after_every_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("run.csv");
    let mut log = MetricsLog::new(&csv, &["ce", "kd & <hint>"]);
    assert_eq!(log.svg_path(), dir.path().join("run.svg"));
    log.push(row(1, true)).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 2);
    log.push(row(2, false)).unwrap();
    log.push(row(3, true)).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,step,lr,train_loss,ce,kd & <hint>,train_top1,test_top1,test_top5,images_per_sec,seconds"
    );
    assert_eq!(lines.len(), 4);
    let f: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(f.len(), 11);
    assert_eq!(f[0], "2");
    assert_eq!(f[1], "200");
    assert!((f[2].parse::<f64>().unwrap() - 0.005).abs() < 1e-12);
    assert!((f[3].parse::<f64>().unwrap() - 1.15).abs() < 1e-6);
    assert_eq!((f[7], f[8]), ("", ""), "unmeasured test accuracy is an empty field");

    let svg = std::fs::read_to_string(log.svg_path()).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in ["Loss", "Accuracy (%)", "train loss", "ce", "kd &amp; &lt;hint&gt;", "test top-5", "epoch"] {
        assert!(svg.contains(&format!(">{label}<")), "missing label {label}");
    }
    assert!(svg.contains("<polyline points=\""), "curves are drawn");
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    // No temp files left beside the outputs.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn wrong_number_of_loss_parts_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::new(dir.path().join("m.csv"), &["ce"]);
    assert!(log.push(row(1, true)).is_err());
    assert!(log.rows().is_empty());
    assert!(!dir.path().join("m.csv").exists());
}

#[test]
fn resume_keeps_rows_up_to_the_checkpoint_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("run.csv");
    let mut log = MetricsLog::new(&csv, &["ce", "kd"]);
    for e in 1..=4 {
        log.push(row(e, e % 2 == 0)).unwrap();
    }
    let resumed = MetricsLog::resume(&csv, &["ce", "kd"], 2).unwrap();
    assert_eq!(resumed.rows().len(), 2);
    assert_eq!(resumed.rows()[1].epoch, 2);
    assert_eq!(resumed.rows()[0].test_top1, None);
    assert!((resumed.rows()[1].test_top5.unwrap() - 0.5).abs() < 1e-6);
    // Different loss parts: the old file does not fit.
    assert!(MetricsLog::resume(&csv, &["ce"], 2).is_err());
    // No file yet: an empty log.
    assert!(MetricsLog::resume(dir.path().join("new.csv"), &[], 5).unwrap().rows().is_empty());
}

#[test]
fn progress_without_terminal_prints_lines() {
    let mut p = Progress::with_mode(2, false);
    assert!(!p.is_live());
    p.start_epoch(1, 10);
    p.update(5, 1.25, 900.0);
    p.finish_epoch("loss 1.25");
}
