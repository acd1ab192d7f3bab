//! Training checkpoints: round trip, and every corruption gives the right typed error
//! (never a panic, never a silently wrong checkpoint).
#![cfg(feature = "std")]

use std::path::Path;

use tinykd::crc32::crc32;
use tinykd::host::checkpoint::{Checkpoint, CkptError, NamedTensor, TrainState, MAGIC, VERSION};
use tinykd::host::cli::weights_io::load;
use tinykd::host::data::Rng;
use tinykd::{ModelConfig, Stem};

fn sample() -> Checkpoint {
    let mut rng = Rng::new(42);
    let mut t = |name: &str, dims: Vec<usize>| {
        let n = dims.iter().product();
        NamedTensor::new(name, dims, (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect())
    };
    Checkpoint {
        config: ModelConfig::mobilenet_v1(250).with_stem(Stem::Cifar).with_classes(7).with_input(64, 32),
        params: vec![t("conv1_weights", vec![3, 3, 3, 8]), t("fc7_offset", vec![7]), t("scalar", vec![])],
        statistics: vec![t("conv1_bn_mean", vec![8]), t("conv1_bn_variance", vec![8])],
        momentum: vec![t("conv1_weights", vec![3, 3, 3, 8]), t("empty", vec![0, 5])],
        state: TrainState {
            epoch: 3,
            step: 4711,
            rng_state: 0xDEAD_BEEF_1234,
            lr_step: 9,
            lr: 0.0125,
            best_metric: Some(0.625),
        },
        meta: r#"{"cmd":"tinykd train","note":"ünïcode ✓"}"#.to_string(),
    }
}

fn saved(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let p = dir.join("ck.tkd");
    sample().save(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    (p, bytes)
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (p, bytes) = saved(dir.path());
    let back = Checkpoint::load(&p).unwrap();
    assert_eq!(back, sample());
    assert_eq!(back.tensor("conv1_bn_variance").unwrap().dims, vec![8]);
    assert_eq!(&bytes[..8], &MAGIC);
    // Only the checkpoint is in the directory (no temp file left behind).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let mut other = sample();
    other.config = ModelConfig::resnet50();
    other.state.best_metric = None;
    other.params.clear();
    other.meta.clear();
    other.save(&p).unwrap();
    assert_eq!(Checkpoint::load(&p).unwrap(), other);
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Checkpoint::load(&dir.path().join("none.tkd")).unwrap_err();
    assert!(matches!(e, CkptError::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains("none.tkd"));
}

#[test]
fn truncated_at_every_cut_point() {
    let dir = tempfile::tempdir().unwrap();
    let (p, bytes) = saved(dir.path());
    for cut in 0..bytes.len() {
        let e = Checkpoint::from_bytes(&bytes[..cut], &p).unwrap_err();
        assert!(matches!(e, CkptError::Truncated { .. }), "cut {cut}: {e:?}");
    }
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Checkpoint::load(&p).unwrap_err();
    assert!(e.to_string().contains("truncated") && e.to_string().contains("ck.tkd"), "{e}");
}

#[test]
fn every_flipped_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (p, bytes) = saved(dir.path());
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            let e = Checkpoint::from_bytes(&b, &p).unwrap_err();
            match i {
                0..=7 => assert!(matches!(e, CkptError::BadMagic { .. }), "byte {i}: {e:?}"),
                8..=11 => assert!(matches!(e, CkptError::Version { .. }), "byte {i}: {e:?}"),
                12..=19 => {
                    assert!(matches!(e, CkptError::Truncated { .. } | CkptError::Malformed { .. }), "byte {i}: {e:?}")
                }
                _ => assert!(matches!(e, CkptError::Checksum { .. }), "byte {i}: {e:?}"),
            }
        }
    }
}

#[test]
fn bad_magic_and_version_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (p, bytes) = saved(dir.path());
    std::fs::write(&p, b"this is not a checkpoint at all, just text").unwrap();
    let e = Checkpoint::load(&p).unwrap_err();
    assert!(matches!(e, CkptError::BadMagic { .. }), "{e:?}");
    assert!(e.to_string().contains("not a tinykd checkpoint"), "{e}");

    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let e = Checkpoint::from_bytes(&b, &p).unwrap_err();
    assert!(matches!(e, CkptError::Version { found, .. } if found == VERSION + 1), "{e:?}");
    assert!(e.to_string().contains(&format!("version {}", VERSION + 1)), "{e}");

    let mut b = bytes;
    b.push(0);
    assert!(matches!(Checkpoint::from_bytes(&b, &p), Err(CkptError::Malformed { .. })));
}

/// Rewrites the CRC so that a payload edit reaches the parser.
fn reseal(b: &mut [u8]) {
    let n = b.len() - 4;
    let crc = crc32(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn malformed_payload_with_valid_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (p, bytes) = saved(dir.path());
    // Payload offsets: config at 20 (arch, stem, 5 × u16), state at 32 (4 × u64, f64, u8, f64),
    // the params count at 32 + 49 = 81.
    let cases: [(usize, &[u8], &str); 5] = [
        (20, &[7], "architecture"),
        (21, &[9], "stem"),
        (72, &[2], "best-metric flag"),
        (81, &u32::MAX.to_le_bytes(), "malformed"),
        (85, &u32::MAX.to_le_bytes(), "name"),
    ];
    for (at, patch, word) in cases {
        let mut b = bytes.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        reseal(&mut b);
        let e = Checkpoint::from_bytes(&b, &p).unwrap_err();
        assert!(matches!(e, CkptError::Malformed { .. }), "at {at}: {e:?}");
        assert!(e.to_string().contains(word), "at {at}: {e}");
    }
    // A huge dimension must not allocate or overflow: the first tensor's rank is at
    // 81 + 4 + 4 + len("conv1_weights") = 102, its first dim at 106.
    let mut b = bytes.clone();
    b[106..114].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(Checkpoint::from_bytes(&b, &p), Err(CkptError::Malformed { .. })));
    // Invalid UTF-8 in a name.
    let mut b = bytes;
    b[89] = 0xFF;
    reseal(&mut b);
    let e = Checkpoint::from_bytes(&b, &p).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
}

#[test]
fn inconsistent_tensor_is_refused_on_save() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.tkd");
    let mut ck = sample();
    ck.params[0].data.pop();
    let e = ck.save(&p).unwrap_err();
    assert!(matches!(e, CkptError::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("conv1_weights"), "{e}");
    assert!(!p.exists());
}

#[test]
fn a_file_shorter_than_its_magic_is_reported_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = saved(dir.path());
    let cut = dir.path().join("cut5.tkd");
    std::fs::write(&cut, &bytes[..5]).unwrap();
    let e = Checkpoint::load(&cut).unwrap_err();
    assert!(matches!(e, CkptError::Truncated { len: 5, .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("cut5.tkd") && e.contains("truncated") && e.contains("5 bytes"), "{e}");

    // The command's reader (weights or checkpoint, by magic) says the same.
    let cases: [(&str, &[u8], &[&str]); 5] = [
        ("cut5.tkd", &bytes[..5], &["cut5.tkd", "truncated", "only 5 bytes", "a tinykd checkpoint"]),
        ("tkd3.tkd", b"TKD", &["tkd3.tkd", "truncated", "only 3 bytes", "weight file or checkpoint"]),
        ("empty.tkd", b"", &["empty.tkd", "empty (0 bytes)", "truncated"]),
        ("xy.tkd", b"xy", &["xy.tkd", "only 2 bytes", "truncated"]),
        ("junk.tkd", b"this is not a weight file", &["junk.tkd", "unknown magic bytes"]),
    ];
    for (name, content, words) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let e = format!("{:#}", load(&p).err().expect("refused"));
        for w in words {
            assert!(e.contains(w), "{name}: lacks {w:?}: {e}");
        }
        assert_eq!(e.contains("unknown magic"), name == "junk.tkd", "{name}: {e}");
    }
}

#[test]
fn an_os_error_is_in_the_message_and_not_repeated_as_a_source() {
    let dir = tempfile::tempdir().unwrap();
    // A symbolic link to itself: an OS error (too many levels of links).
    let looped = dir.path().join("loop.ckpt");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let e = Checkpoint::load(&looped).unwrap_err();
    assert!(matches!(e, CkptError::Io { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_none());
    let chain = format!("{:#}", anyhow::Error::new(e).context("resuming"));
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    // A directory is named as one (it is refused before it is opened).
    let e = Checkpoint::load(dir.path()).unwrap_err();
    assert!(matches!(e, CkptError::Io { .. }) && e.to_string().ends_with("a directory"), "{e}");
}
