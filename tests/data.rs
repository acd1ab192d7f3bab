//! CIFAR-10 reader/writer, normalisation and augmentation, and the synthetic dataset.
#![cfg(feature = "std")]

use std::path::Path;

use tinykd::host::data::cifar::{
    augment_to_nhwc_f32, load_cifar_test, read_cifar_file, to_nhwc_f32, write_class_names, AugDraw, Augment, DataError,
    Dataset, CIFAR10_CLASSES, IMAGE_BYTES, RECORD_BYTES,
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
    // A symbolic link to itself: opening it is an OS error (ELOOP) whatever the user's rights.
    std::os::unix::fs::symlink("data_batch_2.bin", &p).unwrap();
    let e = load_cifar_dir(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_none());
    let chain = format!("{:#}", anyhow::Error::new(e).context("loading"));
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    assert!(chain.contains("data_batch_2.bin"), "{chain}");
    // A directory in its place is named as such (by `host::read`, without an OS error).
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    let e = load_cifar_dir(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("data_batch_2.bin: a directory"), "{e}");
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
    // The progress callback counts every image, and the bytes do not depend on it.
    let counted = dir.path().join("counted");
    let mut calls = Vec::new();
    synth::write_synth_dir_with_progress(&counted, 13, 4, 21, &mut |n| calls.push(n)).unwrap();
    assert_eq!(calls.iter().sum::<usize>(), 17, "{calls:?}");
    assert_eq!(calls, [0, 2, 3, 2, 3, 3, 4], "0 once the new directory exists, then one call per file");
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

/// Every file of `dir` by name, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    files.sort();
    files
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    n.sort();
    n
}

#[test]
fn synth_replaces_a_dataset_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 13, 4, 21).unwrap();
    // Fewer training files than before: the old data_batch_4.bin and 5 do not stay behind.
    synth::write_synth_dir(&out, 3, 2, 22).unwrap();
    assert!(out.join("data_batch_3.bin").exists() && !out.join("data_batch_4.bin").exists());
    let (train, test) = load_cifar_dir(&out).unwrap();
    assert_eq!((train, test), synth::generate(3, 2, 22));
    assert_eq!(names(dir.path()), ["d"], "no temp directory is left");
    // An empty directory, and one holding leftover temp files of a killed file write, are replaced.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    synth::write_synth_dir(&empty, 2, 1, 0).unwrap();
    write_raw(&empty.join(".data_batch_1.bin.4294967295.0.tmp"), b"partial");
    synth::write_synth_dir(&empty, 2, 1, 0).unwrap();
    assert_eq!(names(&empty), ["batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"]);
}

#[test]
fn a_synth_failing_part_way_leaves_the_old_dataset_and_no_temp_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 13, 4, 21).unwrap();
    let before = snapshot(&out);
    // Once the new training files are written, a directory planted where the new test file
    // goes makes its write fail (a file cannot be renamed over a directory, even by root).
    let mut calls = 0;
    let e = synth::write_synth_dir_with_progress(&out, 500, 40, 9, &mut |_| {
        calls += 1;
        if calls == 6 {
            let fresh = names(dir.path()).into_iter().find(|n| n.starts_with(".d.tinykd-new.")).expect("new dir");
            let fresh = dir.path().join(fresh);
            assert!(fresh.join("data_batch_4.bin").exists(), "{:?}", names(&fresh));
            std::fs::create_dir(fresh.join("test_batch.bin")).unwrap();
        }
    })
    .unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    assert_eq!(snapshot(&out), before, "the old dataset is byte-identical");
    assert_eq!(names(dir.path()), ["d"], "the new directory is removed");
}

#[test]
fn synth_refuses_a_directory_with_foreign_files_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    synth::write_synth_dir(&out, 7, 2, 1).unwrap();
    // (name, whether it is a directory)
    for (name, is_dir) in
        [("notes.txt", false), ("data_batch_6.bin", false), ("sub", true), ("test_batch.bin.orig", false)]
    {
        if is_dir {
            std::fs::create_dir(out.join(name)).unwrap();
        } else {
            write_raw(&out.join(name), b"mine");
        }
        let before = snapshot(&out);
        let e = synth::write_synth_dir(&out, 3, 1, 2).unwrap_err();
        assert!(matches!(e, DataError::ForeignFile { .. }), "{name}: {e:?}");
        let s = e.to_string();
        assert!(s.contains(&format!("holds {}", out.join(name).display())) && s.contains("nothing was written"), "{s}");
        assert_eq!(snapshot(&out), before, "{name}");
        assert_eq!(names(dir.path()), ["d"], "{name}");
        let p = out.join(name);
        if is_dir { std::fs::remove_dir(p) } else { std::fs::remove_file(p) }.unwrap();
    }
    // A regular file is not replaced by a directory.
    let file = dir.path().join("f");
    write_raw(&file, b"keep");
    let e = synth::write_synth_dir(&file, 3, 1, 2).unwrap_err();
    assert!(matches!(e, DataError::NotADirectory { .. }), "{e:?}");
    assert!(e.to_string().contains("exists and is not a directory"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    assert_eq!(names(dir.path()), ["d", "f"]);
}

#[test]
fn synth_removes_only_the_temp_dirs_of_dead_writers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let plant = |name: &str, file: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        write_raw(&p.join(file), b"x");
    };
    // Pids above the kernel's 2^22 limit never run; pid 1 always does.
    plant(".d.tinykd-new.4194305.0.tmp", "data_batch_1.bin");
    plant(".d.tinykd-old.4194306.3.tmp", "test_batch.bin");
    plant(".d.tinykd-new.4194307.0.tmp", "notes.txt");
    plant(".d.tinykd-new.1.0.tmp", "data_batch_1.bin");
    plant(".e.tinykd-new.4194305.0.tmp", "data_batch_1.bin");
    synth::write_synth_dir(&out, 2, 1, 0).unwrap();
    assert_eq!(
        names(dir.path()),
        [".d.tinykd-new.1.0.tmp", ".d.tinykd-new.4194307.0.tmp", ".e.tinykd-new.4194305.0.tmp", "d"]
    );
}

#[test]
fn training_files_beyond_the_fifth_are_an_error() {
    let (dir, ..) = valid_dir();
    for name in ["data_batch_6.bin", "data_batch_10.bin", "data_batch_1.bin.bak"] {
        std::fs::copy(dir.path().join("data_batch_1.bin"), dir.path().join(name)).unwrap();
        let (e, s) = err_text(dir.path());
        assert!(matches!(e, DataError::UnreadTrainFile { .. }), "{name}: {e:?}");
        assert!(s.contains(&format!("{name} would not be read")), "{s}");
        assert!(s.contains("data_batch_1.bin .. data_batch_5.bin"), "{s}");
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    // Evaluation reads only the test file.
    std::fs::copy(dir.path().join("data_batch_1.bin"), dir.path().join("data_batch_6.bin")).unwrap();
    assert_eq!(load_cifar_test(dir.path()).unwrap().len(), 5);
}

#[test]
fn a_file_that_cannot_be_looked_at_is_not_reported_missing() {
    // Root passes permission checks, so these use OS errors that root gets too; the CLI test
    // `an_unreadable_dataset_directory_says_permission_denied` checks EACCES without root.
    let (dir, ..) = valid_dir();
    // A symbolic link to itself: "too many levels of symbolic links", not a missing file.
    let test = dir.path().join("test_batch.bin");
    std::fs::remove_file(&test).unwrap();
    std::os::unix::fs::symlink("test_batch.bin", &test).unwrap();
    for e in [load_cifar_dir(dir.path()).unwrap_err(), load_cifar_test(dir.path()).unwrap_err()] {
        assert!(matches!(e, DataError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("test_batch.bin") && e.to_string().contains("os error"), "{e}");
    }
    let (dir, ..) = valid_dir();
    std::os::unix::fs::symlink("batches.meta.txt", dir.path().join("batches.meta.txt")).unwrap();
    let (e, s) = err_text(dir.path());
    assert!(matches!(e, DataError::Io { .. }) && s.contains("batches.meta.txt"), "{s}");
    // A dataset path below a regular file: "Not a directory", not "does not exist".
    let below = dir.path().join("data_batch_1.bin").join("d");
    let (e, s) = err_text(&below);
    assert!(matches!(e, DataError::Io { .. }) && s.contains("Not a directory"), "{s}");
}

/// A `Dataset` is a trainer data source: normalised NHWC images and `u32` labels for the given
/// indices (as `batch_nhwc` and `batch_labels`), and an index out of range is an error.
#[test]
fn a_dataset_is_a_trainer_data_source() {
    use tinykd::train::DataSource;
    let (mut train, _) = tinykd::host::data::synth::generate(6, 1, 3);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    train.fill(&[4, 1], &mut images, &mut labels).unwrap();
    let mut want = Vec::new();
    train.batch_nhwc(&[4, 1], &mut want);
    assert_eq!(images, want);
    assert_eq!(labels, train.batch_labels(&[4, 1]).into_iter().map(u32::from).collect::<Vec<_>>());
    assert_eq!(DataSource::len(&train), 6);
    let e = train.fill(&[2, 6], &mut images, &mut labels).unwrap_err();
    assert!(e.contains("sample 6") && e.contains("has 6"), "{e}");
}
