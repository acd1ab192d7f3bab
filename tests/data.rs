//! CIFAR-10 reader/writer, normalisation and augmentation, and the synthetic dataset.
#![cfg(feature = "std")]

use std::path::Path;

use tinykd::host::data::cifar::{
    augment_to_nhwc_f32, read_cifar_file, to_nhwc_f32, write_class_names, AugDraw, Augment, DataError, Dataset,
    CIFAR10_CLASSES, IMAGE_BYTES, RECORD_BYTES,
};
use tinykd::host::data::synth::{self, CLASS_NAMES};
use tinykd::host::data::{load_cifar_dir, write_cifar_file, Rng};

/// `n` records with labels `(i * 7 + salt) % 10` and pseudo-random pixels.
fn records(n: usize, salt: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(salt);
    let labels = (0..n).map(|i| ((i as u64 * 7 + salt) % 10) as u8).collect();
    let images = (0..n * IMAGE_BYTES).map(|_| rng.next_u64() as u8).collect();
    (labels, images)
}

fn write_raw(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A valid directory: data_batch_1 (3 records), data_batch_2 (1), data_batch_3 (7), test (5).
fn valid_dir() -> (tempfile::TempDir, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut tl, mut ti) = (Vec::new(), Vec::new());
    for (name, n, salt) in [("data_batch_1.bin", 3, 1), ("data_batch_2.bin", 1, 3), ("data_batch_3.bin", 7, 5)] {
        let (l, i) = records(n, salt);
        write_cifar_file(&dir.path().join(name), &l, &i).unwrap();
        tl.extend(l);
        ti.extend(i);
    }
    let (el, ei) = records(5, 9);
    write_cifar_file(&dir.path().join("test_batch.bin"), &el, &ei).unwrap();
    (dir, tl, ti, el, ei)
}

#[test]
fn reader_round_trips_several_files_in_order() {
    let (dir, tl, ti, el, ei) = valid_dir();
    let (train, test) = load_cifar_dir(dir.path()).unwrap();
    assert_eq!(train.len(), 11);
    assert_eq!(test.len(), 5);
    assert_eq!(train.labels, tl);
    assert_eq!(train.images, ti);
    assert_eq!(test.labels, el);
    assert_eq!(test.images, ei);
    assert_eq!(train.image(4), &ti[4 * IMAGE_BYTES..5 * IMAGE_BYTES]);
    assert_eq!(train.label(4), tl[4]);
    assert_eq!(train.class_names, CIFAR10_CLASSES.map(String::from).to_vec());
    let counts = train.class_counts();
    for (k, &count) in counts.iter().enumerate() {
        assert_eq!(count, tl.iter().filter(|&&l| l as usize == k).count());
    }
    // The on-disk record layout is label byte + CHW pixels.
    let raw = std::fs::read(dir.path().join("data_batch_1.bin")).unwrap();
    assert_eq!(raw.len(), 3 * RECORD_BYTES);
    assert_eq!(raw[RECORD_BYTES], tl[1]);
    assert_eq!(&raw[RECORD_BYTES + 1..2 * RECORD_BYTES], &ti[IMAGE_BYTES..2 * IMAGE_BYTES]);
}

#[test]
fn class_names_come_from_meta_file() {
    let (dir, ..) = valid_dir();
    let names = ["a0", "b1", "c2", "d3", "e4", "f5", "g6", "h7", "i8", "j9"];
    write_class_names(dir.path(), &names).unwrap();
    let (train, test) = load_cifar_dir(dir.path()).unwrap();
    assert_eq!(train.class_names, names);
    assert_eq!(test.class_names, names);
}

#[test]
fn class_name_files_need_exactly_ten_names() {
    let (dir, ..) = valid_dir();
    let meta = dir.path().join("batches.meta.txt");
    // Blank lines, surrounding spaces and CRLF do not count.
    write_raw(&meta, b"\n a0 \r\nb1\nc2\n\nd3\ne4\nf5\ng6\nh7\ni8\nj9\r\n\n");
    let (train, _) = load_cifar_dir(dir.path()).unwrap();
    assert_eq!(train.class_names[0], "a0");
    for (text, lines) in
        [(&b"a\nb\nc\nd\ne\nf\ng\nh\ni\n"[..], 9), (b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n", 11), (b"", 0)]
    {
        write_raw(&meta, text);
        let (e, s) = err_text(dir.path());
        assert!(matches!(e, DataError::BadClassNames { lines: l, .. } if l == lines), "{e:?}");
        assert!(s.contains("batches.meta.txt has") && s.contains(&format!("{lines} non-empty lines")), "{s}");
        assert!(s.contains("exactly 10"), "{s}");
    }
}

#[test]
fn a_gap_in_the_training_files_is_an_error() {
    let (dir, ..) = valid_dir();
    std::fs::remove_file(dir.path().join("data_batch_2.bin")).unwrap();
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::TrainGap { .. }), "{e:?}");
    assert!(s.contains("data_batch_2.bin is missing but") && s.contains("data_batch_3.bin exists"), "{s}");
    // Only data_batch_5.bin: data_batch_1.bin is the first one missing.
    for f in ["data_batch_1.bin", "data_batch_3.bin"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let (l, i) = records(2, 5);
    write_cifar_file(&dir.path().join("data_batch_5.bin"), &l, &i).unwrap();
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::TrainGap { .. }), "{e:?}");
    assert!(s.contains("data_batch_1.bin is missing but") && s.contains("data_batch_5.bin exists"), "{s}");
}

#[test]
fn an_os_error_is_in_the_message_and_not_repeated_as_a_source() {
    let (dir, ..) = valid_dir();
    let p = dir.path().join("data_batch_2.bin");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    let e = load_cifar_dir(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_none());
    let chain = format!("{:#}", anyhow::Error::new(e).context("loading"));
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    assert!(chain.contains("data_batch_2.bin"), "{chain}");
}

fn err_text(dir: &Path) -> (DataError, String) {
    let e = load_cifar_dir(dir).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (e, s) = err_text(&missing);
    assert!(matches!(e, DataError::DirMissing { .. }), "{e:?}");
    assert!(s.contains("nope") && s.contains("does not exist"), "{s}");
}

#[test]
fn no_train_files() {
    let (dir, ..) = valid_dir();
    for f in ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::NoTrainFiles { .. }), "{e:?}");
    assert!(s.contains("data_batch_1.bin"), "{s}");
}

#[test]
fn test_file_missing() {
    let (dir, ..) = valid_dir();
    std::fs::remove_file(dir.path().join("test_batch.bin")).unwrap();
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::TestMissing { .. }), "{e:?}");
    assert!(s.contains("test_batch.bin") && s.contains("missing"), "{s}");
}

#[test]
fn truncated_file() {
    let (dir, ..) = valid_dir();
    let p = dir.path().join("data_batch_2.bin");
    let mut raw = std::fs::read(&p).unwrap();
    raw.extend_from_slice(&[0u8; RECORD_BYTES]);
    raw.truncate(RECORD_BYTES + 1000);
    write_raw(&p, &raw);
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::Truncated { len: 4073, .. }), "{e:?}");
    assert!(
        s.contains("data_batch_2.bin has 4073 bytes, which is not a whole number of 3073-byte records; truncated?"),
        "{s}"
    );
}

#[test]
fn bad_label_names_file_record_and_value() {
    let (dir, ..) = valid_dir();
    let p = dir.path().join("data_batch_3.bin");
    let mut raw = std::fs::read(&p).unwrap();
    raw[4 * RECORD_BYTES] = 10;
    write_raw(&p, &raw);
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::BadLabel { record: 4, value: 10, .. }), "{e:?}");
    assert!(s.contains("data_batch_3.bin") && s.contains("record 4") && s.contains("label 10"), "{s}");
}

#[test]
fn empty_file() {
    let (dir, ..) = valid_dir();
    write_raw(&dir.path().join("test_batch.bin"), &[]);
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::Empty { .. }), "{e:?}");
    assert!(s.contains("test_batch.bin") && s.contains("empty"), "{s}");
}

#[test]
fn writer_rejects_inconsistent_input_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bin");
    assert!(write_cifar_file(&p, &[1, 2], &[0; IMAGE_BYTES]).is_err());
    assert!(write_cifar_file(&p, &[12], &[0; IMAGE_BYTES]).is_err());
    assert!(!p.exists());
    assert!(Dataset::new(vec![1], vec![0; 5]).is_err());
    let (mut l, mut i) = (Vec::new(), Vec::new());
    assert!(matches!(read_cifar_file(&p, &mut l, &mut i), Err(DataError::Io { .. })));
}

/// Independent reference: normalised pixel at (y, x, c) of a CHW image, padded with 0.0.
fn naive(chw: &[u8], y: i32, x: i32, c: usize) -> f32 {
    if (0..32).contains(&y) && (0..32).contains(&x) {
        (chw[c * 1024 + y as usize * 32 + x as usize] as f32 - 127.5) / 127.5
    } else {
        0.0
    }
}

#[test]
fn normalisation_chw_to_nhwc() {
    let (labels, mut images) = records(3, 4);
    images[0] = 0;
    images[1] = 255;
    let ds = Dataset::new(labels, images).unwrap();
    let mut out = Vec::new();
    ds.batch_nhwc(&[2, 0], &mut out);
    assert_eq!(out.len(), 2 * IMAGE_BYTES);
    assert_eq!(out[IMAGE_BYTES], -1.0); // image 0, pixel (0,0), red
    assert_eq!(out[IMAGE_BYTES + 3], 1.0); // image 0, pixel (0,1), red
    for (b, &i) in [2usize, 0].iter().enumerate() {
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    let got = out[b * IMAGE_BYTES + (y * 32 + x) * 3 + c];
                    assert_eq!(got, naive(ds.image(i), y as i32, x as i32, c), "b{b} y{y} x{x} c{c}");
                }
            }
        }
    }
    assert_eq!(ds.batch_labels(&[2, 0]), vec![ds.labels[2], ds.labels[0]]);
}

#[test]
fn augmentation_crop_and_flip_match_reference() {
    let (_, images) = records(1, 11);
    let mut out = vec![9.0; IMAGE_BYTES];
    let mut plain = vec![0.0; IMAGE_BYTES];
    to_nhwc_f32(&images, &mut plain);
    augment_to_nhwc_f32(&images, &AugDraw::IDENTITY, &mut out);
    assert_eq!(out, plain);
    for draw in [
        AugDraw { dy: 2, dx: -3, flip: false },
        AugDraw { dy: -4, dx: 4, flip: true },
        AugDraw { dy: 0, dx: 0, flip: true },
    ] {
        augment_to_nhwc_f32(&images, &draw, &mut out);
        for y in 0..32i32 {
            for x in 0..32i32 {
                let xs = if draw.flip { 31 - x } else { x };
                for c in 0..3 {
                    let want = naive(&images, y + draw.dy, xs + draw.dx, c);
                    assert_eq!(out[((y * 32 + x) * 3) as usize + c], want, "{draw:?} y{y} x{x} c{c}");
                }
            }
        }
    }
    // A shift by 4 pads four rows with exactly 0.0 (mid grey).
    augment_to_nhwc_f32(&images, &AugDraw { dy: 4, dx: 0, flip: false }, &mut out);
    assert!(out[28 * 32 * 3..].iter().all(|&v| v == 0.0));
}

#[test]
fn augmentation_draws_are_seeded_and_in_range() {
    let aug = Augment::default();
    let draws = |seed| {
        let mut rng = Rng::new(seed);
        (0..400).map(|_| aug.draw(&mut rng)).collect::<Vec<_>>()
    };
    let a = draws(5);
    assert_eq!(a, draws(5));
    assert_ne!(a, draws(6));
    assert!(a.iter().all(|d| (-4..=4).contains(&d.dy) && (-4..=4).contains(&d.dx)));
    assert!(a.iter().any(|d| d.flip) && a.iter().any(|d| !d.flip));
    assert!(a.iter().any(|d| d.dy == -4) && a.iter().any(|d| d.dx == 4));
    let none = Augment { pad: 0, flip: false };
    let mut rng = Rng::new(1);
    assert!((0..50).all(|_| none.draw(&mut rng) == AugDraw::IDENTITY));

    let (labels, images) = records(4, 2);
    let ds = Dataset::new(labels, images).unwrap();
    let (mut o1, mut o2) = (Vec::new(), Vec::new());
    ds.batch_nhwc_augmented(&[0, 1, 2, 3], &aug, &mut Rng::new(3), &mut o1);
    ds.batch_nhwc_augmented(&[0, 1, 2, 3], &aug, &mut Rng::new(3), &mut o2);
    assert_eq!(o1, o2);
    let mut rng = Rng::new(3);
    for (b, chunk) in o1.chunks_exact(IMAGE_BYTES).enumerate() {
        let mut want = vec![0.0; IMAGE_BYTES];
        augment_to_nhwc_f32(ds.image(b), &aug.draw(&mut rng), &mut want);
        assert_eq!(chunk, &want[..]);
    }
}

#[test]
fn synth_is_deterministic_and_balanced() {
    let (a_train, a_test) = synth::generate(205, 30, 7);
    let (b_train, b_test) = synth::generate(205, 30, 7);
    assert_eq!(a_train, b_train);
    assert_eq!(a_test, b_test);
    let (c_train, c_test) = synth::generate(205, 30, 8);
    assert_ne!(a_train.images, c_train.images);
    assert_ne!(a_test.images, c_test.images);
    // Train and test are different images.
    assert_ne!(a_train.images[..30 * IMAGE_BYTES], a_test.images[..]);
    let counts = a_train.class_counts();
    assert!(counts.iter().all(|&c| c == 20 || c == 21), "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 205);
    assert_eq!(a_test.class_counts(), [3; 10]);
    assert_eq!(a_train.class_names, CLASS_NAMES.map(String::from).to_vec());
    // Labels are shuffled, not in class order.
    assert!(a_train.labels.windows(2).any(|w| w[1] != (w[0] + 1) % 10));
}

#[test]
fn synth_images_are_varied() {
    let (train, _) = synth::generate(100, 1, 3);
    // No two images are equal, and each uses a wide range of pixel values.
    for i in 0..train.len() {
        let img = train.image(i);
        let (lo, hi) = (img.iter().min().unwrap(), img.iter().max().unwrap());
        assert!(hi - lo > 60, "image {i} has range {lo}..{hi}");
        for j in 0..i {
            assert_ne!(img, train.image(j), "images {i} and {j}");
        }
    }
    // Mean brightness alone does not separate the classes: per-class means stay close.
    let mut sums = [0f64; 10];
    let (big, _) = synth::generate(2000, 1, 4);
    for i in 0..big.len() {
        sums[big.label(i) as usize] += big.image(i).iter().map(|&p| p as f64).sum::<f64>() / IMAGE_BYTES as f64;
    }
    let means: Vec<f64> = sums.iter().map(|s| s / 200.0).collect();
    let (lo, hi) = means.iter().fold((f64::MAX, f64::MIN), |(l, h), &m| (l.min(m), h.max(m)));
    assert!(hi - lo < 12.0, "class mean brightness {means:?}");
}

#[test]
fn synth_class_pattern_reaches_the_corner() {
    // The class texture fills the image, so even the top-left 6x6 corner (all that ResNet50's
    // ImageNet stem sees at 32x32 through its shortcuts when the residual branches start at
    // zero; see tests/train.rs) shows two colours: a spread well above the pixel noise (±14).
    // The previous generator (an object on a smooth background) had this in ~half the images.
    let (ds, _) = synth::generate(1000, 1, 5);
    let textured = (0..ds.len())
        .filter(|&i| {
            let img = ds.image(i);
            (0..3).any(|c| {
                let px = (0..6).flat_map(|y| (0..6).map(move |x| img[c * 1024 + y * 32 + x]));
                let (lo, hi) = px.fold((255u8, 0u8), |(l, h), v| (l.min(v), h.max(v)));
                hi - lo > 50
            })
        })
        .count();
    assert!(textured >= 900, "{textured} of 1000 corners show the texture");
}

#[test]
fn synth_dir_loads_with_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    synth::write_synth_dir(&out, 13, 4, 21).unwrap();
    for f in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let (train, test) = load_cifar_dir(&out).unwrap();
    let (gt, ge) = synth::generate(13, 4, 21);
    assert_eq!(train, gt);
    assert_eq!(test, ge);
    // Fewer training images than five files: one file per image.
    let small = dir.path().join("small");
    synth::write_synth_dir(&small, 2, 1, 0).unwrap();
    assert!(small.join("data_batch_2.bin").exists() && !small.join("data_batch_3.bin").exists());
    assert_eq!(load_cifar_dir(&small).unwrap().0.len(), 2);
    // A stale training file that would not be overwritten is refused, leaving the directory as it was.
    let before = std::fs::read(out.join("data_batch_1.bin")).unwrap();
    let e = synth::write_synth_dir(&out, 3, 1, 99).unwrap_err();
    assert!(e.to_string().contains("data_batch_4.bin already exists"), "{e}");
    assert_eq!(std::fs::read(out.join("data_batch_1.bin")).unwrap(), before);
    // The progress callback counts every image, and the bytes do not depend on it.
    let counted = dir.path().join("counted");
    let mut calls = Vec::new();
    synth::write_synth_dir_with_progress(&counted, 13, 4, 21, &mut |n| calls.push(n)).unwrap();
    assert_eq!(calls.iter().sum::<usize>(), 17, "{calls:?}");
    assert_eq!(calls, [0, 2, 3, 2, 3, 3, 4], "0 once the directory exists, then one call per file");
    for f in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"] {
        assert_eq!(std::fs::read(counted.join(f)).unwrap(), std::fs::read(out.join(f)).unwrap(), "{f}");
    }
    // Zero images is refused before anything is written.
    let none = dir.path().join("none");
    assert!(synth::write_synth_dir(&none, 0, 5, 0).is_err());
    assert!(!none.exists());
}

#[test]
fn synth_generation_is_fast() {
    let t = std::time::Instant::now();
    let (train, _) = synth::generate(10_000, 0, 1);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(train.len(), 10_000);
    // The target is < 2 s; the bound leaves room for a loaded CI machine.
    assert!(secs < 6.0, "10k synthetic images took {secs:.2} s");
}
