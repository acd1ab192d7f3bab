//! The CIFAR-10 reader on arbitrary bytes, through files (the reader takes paths):
//! `read_cifar_file` on the input, and `load_cifar_dir` on a directory whose
//! `batches.meta.txt` is the input. `Ok` or `Err`, never a panic; an `Ok` read is consistent.
//!
//! Files go to a per-process directory under `$TMPDIR` (use a tmpfs such as /dev/shm for speed).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tinykd::host::data::cifar::{load_cifar_dir, read_cifar_file, IMAGE_BYTES, NUM_CLASSES, RECORD_BYTES};

/// `(input file, dataset dir)`: the dataset has one valid training and one test record.
fn paths() -> &'static (PathBuf, PathBuf) {
    static P: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("tinykd-fuzz-cifar-{}", std::process::id()));
        let ds = root.join("ds");
        std::fs::create_dir_all(&ds).expect("temp dir");
        let mut record = vec![3u8; RECORD_BYTES];
        record[0] = 7;
        std::fs::write(ds.join("data_batch_1.bin"), &record).expect("write");
        std::fs::write(ds.join("test_batch.bin"), &record).expect("write");
        (root.join("input.bin"), ds)
    })
}

fuzz_target!(|data: &[u8]| {
    let (input, ds) = paths();
    std::fs::write(input, data).expect("write input");
    let (mut labels, mut images) = (Vec::new(), Vec::new());
    match read_cifar_file(input, &mut labels, &mut images) {
        Ok(()) => {
            assert_eq!(labels.len() * RECORD_BYTES, data.len());
            assert_eq!(images.len(), labels.len() * IMAGE_BYTES);
            for (i, r) in data.chunks_exact(RECORD_BYTES).enumerate() {
                assert_eq!(labels[i], r[0]);
                assert!((r[0] as usize) < NUM_CLASSES);
                assert_eq!(&images[i * IMAGE_BYTES..][..IMAGE_BYTES], &r[1..]);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    std::fs::write(ds.join("batches.meta.txt"), data).expect("write meta");
    match load_cifar_dir(ds) {
        Ok((train, test)) => {
            assert_eq!(train.class_names.len(), NUM_CLASSES);
            assert_eq!(train.class_names, test.class_names);
            assert_eq!((train.len(), test.len()), (1, 1));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
