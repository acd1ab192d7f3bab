//! CIFAR-10, binary version: reader, writer, normalisation to NHWC f32 and augmentation.
//!
//! A CIFAR-10 binary file is a sequence of 3073-byte records: one label byte (0..=9) and
//! 3072 pixel bytes in CHW order (1024 red, 1024 green, 1024 blue, each a row-major 32x32
//! plane). A dataset directory holds `data_batch_1.bin` .. `data_batch_k.bin` (training,
//! `1 <= k <= 5`, read in that order; a gap such as a missing `data_batch_2.bin` beside a
//! `data_batch_3.bin` is an error, not fewer images; so is any other `data_batch_*` name, such
//! as `data_batch_6.bin`, which would otherwise be silently left out) and `test_batch.bin`
//! (test), and optionally `batches.meta.txt` with exactly one class name on each of its 10
//! non-empty lines. A file that cannot be looked at (a directory without read or search
//! permission) is reported with its OS error, never as missing.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::rng::Rng;
use crate::host::atomic::write_atomic;
use crate::host::read::{read_file, read_text};

/// Image height in pixels.
pub const IMAGE_H: usize = 32;
/// Image width in pixels.
pub const IMAGE_W: usize = 32;
/// Colour channels.
pub const IMAGE_C: usize = 3;
/// Bytes of one image (CHW).
pub const IMAGE_BYTES: usize = IMAGE_H * IMAGE_W * IMAGE_C;
/// Bytes of one record: label + image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes; labels are `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;
/// Training files, in the order they are read.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The optional class-name file (one name per non-empty line, exactly [`NUM_CLASSES`] of them).
pub const META_FILE: &str = "batches.meta.txt";
/// CIFAR-10's class names, used when a directory has no `batches.meta.txt`.
pub const CIFAR10_CLASSES: [&str; NUM_CLASSES] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// What went wrong reading or writing a CIFAR-format dataset. Every variant names the file.
///
/// The message of [`DataError::Io`] includes the OS error, so [`std::error::Error::source`] is
/// `None`: a chain printer (anyhow's `{:#}`) would otherwise print that cause twice.
#[derive(Debug)]
pub enum DataError {
    /// The dataset directory does not exist or is not a directory.
    DirMissing {
        /// The directory given.
        dir: PathBuf,
    },
    /// None of `data_batch_1.bin` .. `data_batch_5.bin` exists.
    NoTrainFiles {
        /// The dataset directory.
        dir: PathBuf,
    },
    /// A training file is missing while a later one exists (the files must be `1..=k`).
    TrainGap {
        /// The first missing training file.
        missing: PathBuf,
        /// A later training file that exists.
        present: PathBuf,
    },
    /// A `data_batch_*` file that is not one of [`TRAIN_FILES`], so would not be read.
    UnreadTrainFile {
        /// The file.
        path: PathBuf,
    },
    /// `batches.meta.txt` does not have exactly [`NUM_CLASSES`] non-empty lines.
    BadClassNames {
        /// The class-name file.
        path: PathBuf,
        /// Its non-empty lines.
        lines: usize,
    },
    /// `test_batch.bin` does not exist.
    TestMissing {
        /// Where the test file should be.
        path: PathBuf,
    },
    /// A file has no bytes.
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A file's length is not a multiple of [`RECORD_BYTES`].
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// A record's label byte is not in `0..=9`.
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Index of the record in the file.
        record: usize,
        /// The label byte.
        value: u8,
    },
    /// Reading or writing failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Inputs given to a writer or generator are inconsistent.
    Invalid {
        /// What is wrong, as a sentence.
        what: String,
    },
    /// A dataset writer's output directory exists and is not a directory.
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// A dataset writer's output directory holds a file that is not a dataset's (replacing the
    /// directory would delete it).
    ForeignFile {
        /// The directory to replace.
        dir: PathBuf,
        /// The other file in it (the first by name).
        path: PathBuf,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::DirMissing { dir } => {
                write!(f, "dataset directory {} does not exist or is not a directory", dir.display())
            }
            DataError::NoTrainFiles { dir } => write!(
                f,
                "dataset directory {} has no training file (expected at least one of data_batch_1.bin .. data_batch_5.bin)",
                dir.display()
            ),
            DataError::TrainGap { missing, present } => write!(
                f,
                "training file {} is missing but {} exists; the training files must be data_batch_1.bin .. \
                 data_batch_k.bin without a gap (restore the missing file or remove the later ones)",
                missing.display(),
                present.display()
            ),
            DataError::UnreadTrainFile { path } => write!(
                f,
                "training file {} would not be read: the reader reads data_batch_1.bin .. data_batch_5.bin \
                 (CIFAR-10's five training files) and no other data_batch_* name; merge its images into those \
                 files, or rename or remove it",
                path.display()
            ),
            DataError::BadClassNames { path, lines } => write!(
                f,
                "class-name file {} has {lines} non-empty lines, but needs exactly {NUM_CLASSES} (one class name \
                 per line); fix it, or delete it to use the CIFAR-10 names",
                path.display()
            ),
            DataError::TestMissing { path } => write!(f, "test file {} is missing", path.display()),
            DataError::Empty { path } => write!(f, "file {} is empty (0 bytes)", path.display()),
            DataError::Truncated { path, len } => write!(
                f,
                "file {} has {len} bytes, which is not a whole number of {RECORD_BYTES}-byte records; truncated?",
                path.display()
            ),
            DataError::BadLabel { path, record, value } => write!(
                f,
                "file {}: record {record} has label {value}, but labels must be 0..={}",
                path.display(),
                NUM_CLASSES - 1
            ),
            DataError::Io { path, source } => write!(f, "cannot access {}: {source}", path.display()),
            DataError::Invalid { what } => write!(f, "{what}"),
            DataError::NotADirectory { path } => write!(
                f,
                "{} exists and is not a directory; give a new directory or one that holds a dataset",
                path.display()
            ),
            DataError::ForeignFile { dir, path } => write!(
                f,
                "{} holds {}, which is not a dataset file (data_batch_1.bin .. data_batch_5.bin, test_batch.bin, \
                 batches.meta.txt); the directory is replaced as a whole, which would delete it, so nothing was \
                 written: move it away or choose another directory",
                dir.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for DataError {}

/// Labelled 32x32 RGB images, stored as read: CHW `u8` per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * IMAGE_BYTES` bytes, image `i` at `i * IMAGE_BYTES`, CHW.
    pub images: Vec<u8>,
    /// One label per image, each `< NUM_CLASSES`.
    pub labels: Vec<u8>,
    /// Class names, `NUM_CLASSES` of them.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// A dataset from labels and CHW images, checking lengths and labels; class names are
    /// CIFAR-10's.
    pub fn new(labels: Vec<u8>, images: Vec<u8>) -> Result<Self, DataError> {
        check_records(&labels, &images)?;
        Ok(Dataset { images, labels, class_names: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect() })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`, CHW bytes. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Label of image `i`. Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The images at `indices` as a normalised NHWC f32 batch (`(x − 127.5)/127.5`), written to
    /// `out` (resized to `indices.len() * IMAGE_BYTES`). Panics if an index is out of range.
    pub fn batch_nhwc(&self, indices: &[usize], out: &mut Vec<f32>) {
        out.clear();
        out.resize(indices.len() * IMAGE_BYTES, 0.0);
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(IMAGE_BYTES)) {
            to_nhwc_f32(self.image(i), dst);
        }
    }

    /// Like [`Dataset::batch_nhwc`], with each image augmented by a draw of `aug` from `rng`.
    pub fn batch_nhwc_augmented(&self, indices: &[usize], aug: &Augment, rng: &mut Rng, out: &mut Vec<f32>) {
        out.clear();
        out.resize(indices.len() * IMAGE_BYTES, 0.0);
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(IMAGE_BYTES)) {
            let draw = aug.draw(rng);
            augment_to_nhwc_f32(self.image(i), &draw, dst);
        }
    }

    /// The labels at `indices`.
    pub fn batch_labels(&self, indices: &[usize]) -> Vec<u8> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }
}

/// A dataset feeds a [`Trainer`](crate::train::Trainer) as it is: normalised NHWC images
/// ([`Dataset::batch_nhwc`], no augmentation) and `u32` labels. An index out of range is an
/// error naming it, not a panic.
impl crate::train::DataSource for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }

    fn fill(&mut self, indices: &[usize], images: &mut Vec<f32>, labels: &mut Vec<u32>) -> Result<(), String> {
        if let Some(&i) = indices.iter().find(|&&i| i >= Dataset::len(self)) {
            return Err(format!("sample {i} asked for, the dataset has {}", Dataset::len(self)));
        }
        self.batch_nhwc(indices, images);
        labels.clear();
        labels.extend(indices.iter().map(|&i| u32::from(self.labels[i])));
        Ok(())
    }
}

/// The tutorial's input transform of one pixel: `(x − 127.5)/127.5`, into [-1, 1].
#[inline]
pub fn normalize_pixel(x: u8) -> f32 {
    (x as f32 - 127.5) / 127.5
}

/// One CHW `u8` image → normalised HWC f32. `chw.len()` and `hwc.len()` must be
/// [`IMAGE_BYTES`] (panics otherwise).
pub fn to_nhwc_f32(chw: &[u8], hwc: &mut [f32]) {
    augment_to_nhwc_f32(chw, &AugDraw::IDENTITY, hwc);
}

/// Augmentation policy: random crop after zero padding, random horizontal flip.
///
/// The padding is zero in the *normalised* domain, i.e. the value 0.0 of a pixel 127.5
/// (mid grey), so padding is neutral for the network; in raw pixels it is mid grey, not black.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Padding on each side before a 32x32 crop (0 disables cropping).
    pub pad: usize,
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
}

impl Default for Augment {
    /// The usual CIFAR policy: 4-pixel padding, random flips.
    fn default() -> Self {
        Augment { pad: 4, flip: true }
    }
}

/// One random outcome of an [`Augment`]: the crop's shift and whether to flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugDraw {
    /// Vertical shift in `-pad..=pad`: output row `y` reads input row `y + dy`.
    pub dy: i32,
    /// Horizontal shift in `-pad..=pad`: (unflipped) output column `x` reads input column `x + dx`.
    pub dx: i32,
    /// Mirror the cropped image left–right.
    pub flip: bool,
}

impl AugDraw {
    /// No change.
    pub const IDENTITY: AugDraw = AugDraw { dy: 0, dx: 0, flip: false };
}

impl Augment {
    /// Draws a crop offset (uniform over the `(2·pad+1)²` positions) and a flip.
    pub fn draw(&self, rng: &mut Rng) -> AugDraw {
        let span = 2 * self.pad + 1;
        let dy = rng.below(span) as i32 - self.pad as i32;
        let dx = rng.below(span) as i32 - self.pad as i32;
        let flip = self.flip && rng.coin();
        AugDraw { dy, dx, flip }
    }
}

/// One CHW `u8` image → normalised HWC f32, cropped and flipped by `draw`:
/// `out[y][x][c] = norm(in[c][y+dy][x'+dx])` with `x' = W−1−x` when flipping, else `x`; pixels
/// outside the image are 0.0 (normalised zero padding). Panics unless both lengths are
/// [`IMAGE_BYTES`].
pub fn augment_to_nhwc_f32(chw: &[u8], draw: &AugDraw, hwc: &mut [f32]) {
    assert_eq!(chw.len(), IMAGE_BYTES, "CHW image length");
    assert_eq!(hwc.len(), IMAGE_BYTES, "HWC output length");
    let plane = IMAGE_H * IMAGE_W;
    for y in 0..IMAGE_H {
        let sy = y as i32 + draw.dy;
        for x in 0..IMAGE_W {
            let xx = if draw.flip { IMAGE_W - 1 - x } else { x };
            let sx = xx as i32 + draw.dx;
            let dst = &mut hwc[(y * IMAGE_W + x) * IMAGE_C..][..IMAGE_C];
            if (0..IMAGE_H as i32).contains(&sy) && (0..IMAGE_W as i32).contains(&sx) {
                let src = sy as usize * IMAGE_W + sx as usize;
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = normalize_pixel(chw[c * plane + src]);
                }
            } else {
                dst.fill(0.0);
            }
        }
    }
}

fn check_records(labels: &[u8], images: &[u8]) -> Result<(), DataError> {
    if images.len() != labels.len() * IMAGE_BYTES {
        return Err(DataError::Invalid {
            what: format!(
                "{} labels need {} image bytes, got {}",
                labels.len(),
                labels.len() * IMAGE_BYTES,
                images.len()
            ),
        });
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES) {
        return Err(DataError::Invalid { what: format!("label {l} of image {i} is not in 0..={}", NUM_CLASSES - 1) });
    }
    Ok(())
}

/// Reads one CIFAR binary file, appending its records to `labels` and `images`.
pub fn read_cifar_file(path: &Path, labels: &mut Vec<u8>, images: &mut Vec<u8>) -> Result<(), DataError> {
    let bytes = read_file(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    if bytes.is_empty() {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    if bytes.len() % RECORD_BYTES != 0 {
        return Err(DataError::Truncated { path: path.to_path_buf(), len: bytes.len() as u64 });
    }
    let n = bytes.len() / RECORD_BYTES;
    labels.reserve(n);
    images.reserve(n * IMAGE_BYTES);
    for (record, r) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if r[0] as usize >= NUM_CLASSES {
            return Err(DataError::BadLabel { path: path.to_path_buf(), record, value: r[0] });
        }
        labels.push(r[0]);
        images.extend_from_slice(&r[1..]);
    }
    Ok(())
}

/// Writes `labels` and CHW `images` as one CIFAR binary file, atomically.
pub fn write_cifar_file(path: &Path, labels: &[u8], images: &[u8]) -> Result<(), DataError> {
    check_records(labels, images)?;
    let mut bytes = Vec::with_capacity(labels.len() * RECORD_BYTES);
    for (l, img) in labels.iter().zip(images.chunks_exact(IMAGE_BYTES)) {
        bytes.push(*l);
        bytes.extend_from_slice(img);
    }
    write_atomic(path, &bytes).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

/// Loads a CIFAR-10 binary directory: (train, test). Training images are the files
/// `data_batch_1.bin` .. `data_batch_k.bin` (`1 <= k <= 5`, no gap, no other `data_batch_*`
/// name) concatenated in order; class names come from `batches.meta.txt` (exactly
/// [`NUM_CLASSES`] non-empty lines) when it exists, else they are CIFAR-10's.
pub fn load_cifar_dir(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    existing_dir(dir)?;
    let train_paths = train_files(dir)?;
    let (test_path, class_names) = test_and_names(dir)?;
    let train = read_split(&train_paths, class_names.clone())?;
    let test = read_split(&[test_path], class_names)?;
    Ok((train, test))
}

/// Loads only the test split of a CIFAR-10 binary directory (`test_batch.bin`, class names as
/// [`load_cifar_dir`]): what evaluation reads, so a directory without training files serves.
pub fn load_cifar_test(dir: &Path) -> Result<Dataset, DataError> {
    existing_dir(dir)?;
    let (test_path, class_names) = test_and_names(dir)?;
    read_split(&[test_path], class_names)
}

/// `Ok` when `dir` is a directory; [`DataError::DirMissing`] when it does not exist or is
/// something else, [`DataError::Io`] when it cannot be looked at (e.g. permission denied).
fn existing_dir(dir: &Path) -> Result<(), DataError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DataError::DirMissing { dir: dir.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DataError::DirMissing { dir: dir.to_path_buf() }),
        Err(source) => Err(DataError::Io { path: dir.to_path_buf(), source }),
    }
}

/// Whether `path` exists; [`DataError::Io`] when that cannot be told (e.g. permission denied),
/// so that such a file is not reported as missing.
fn file_exists(path: &Path) -> Result<bool, DataError> {
    path.try_exists().map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

/// The test file of `dir` (which must exist) and the class names ([`read_class_names`]).
fn test_and_names(dir: &Path) -> Result<(PathBuf, Vec<String>), DataError> {
    let test_path = dir.join(TEST_FILE);
    if !file_exists(&test_path)? {
        return Err(DataError::TestMissing { path: test_path });
    }
    Ok((test_path, read_class_names(dir)?))
}

/// The records of `paths`, concatenated in order, as one split.
fn read_split(paths: &[PathBuf], class_names: Vec<String>) -> Result<Dataset, DataError> {
    let (mut labels, mut images) = (Vec::new(), Vec::new());
    for p in paths {
        read_cifar_file(p, &mut labels, &mut images)?;
    }
    Ok(Dataset { images, labels, class_names })
}

/// The training files of `dir`: `data_batch_1.bin` up to the last one present. Fails when there
/// is none, when one is missing below a present one, or when another `data_batch_*` name exists
/// (either way some images would silently be left out).
fn train_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let names = train_names(dir)?;
    if let Some(other) = names.iter().find(|n| !TRAIN_FILES.contains(&n.as_str())) {
        return Err(DataError::UnreadTrainFile { path: dir.join(other) });
    }
    let present: Vec<bool> = TRAIN_FILES.iter().map(|f| names.iter().any(|n| n == f)).collect();
    let Some(last) = present.iter().rposition(|&p| p) else {
        return Err(DataError::NoTrainFiles { dir: dir.to_path_buf() });
    };
    let paths: Vec<PathBuf> = TRAIN_FILES[..=last].iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = present[..last].iter().position(|&p| !p) {
        return Err(DataError::TrainGap { missing: paths[missing].clone(), present: paths[last].clone() });
    }
    Ok(paths)
}

/// The names in `dir` that start with `data_batch_`, sorted; [`DataError::Io`] when `dir`
/// cannot be listed.
fn train_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let io_err = |source| DataError::Io { path: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let name = entry.map_err(io_err)?.file_name().to_string_lossy().into_owned();
        if name.starts_with("data_batch_") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The class names of `dir`: those of `batches.meta.txt` (trimmed non-empty lines, exactly
/// [`NUM_CLASSES`]) when it exists, else CIFAR-10's.
fn read_class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(META_FILE);
    if !file_exists(&path)? {
        return Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    let text = read_text(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != NUM_CLASSES {
        return Err(DataError::BadClassNames { path, lines: names.len() });
    }
    Ok(names)
}

/// Writes class names as `batches.meta.txt` (one per line), atomically.
pub fn write_class_names(dir: &Path, names: &[&str]) -> Result<(), DataError> {
    let path = dir.join(META_FILE);
    let mut text = names.join("\n");
    text.push('\n');
    write_atomic(&path, text.as_bytes()).map_err(|source| DataError::Io { path, source })
}
