//! A built-in synthetic 10-class dataset of 32x32 RGB images, deterministic by seed, written in
//! the CIFAR-10 binary format so that the same reader loads it.
//!
//! It is meant to be *learnable but hard*, so that a large teacher clearly beats a tiny student
//! trained alone, within the few epochs a 2-core machine can afford. A class is a **texture**
//! that fills the whole image, named by two properties:
//!
//! - its **kind**: stripes, checks, dots, rings (concentric around a random centre) or waves
//!   (stripes bent by a sine) (5);
//! - its **scale**: fine (period 2.6–3.6 px) or coarse (period 4.5–7 px) (2),
//!
//! giving class `2·kind + scale` (names in [`CLASS_NAMES`]). Everything else is nuisance: the
//! texture's two colours (random, the second pushed towards the first's complement by a random
//! contrast), orientation, phase and exact period; 1–3 occluding blobs (disks or squares of
//! radius 2.5–6 px, random solid colours); and uniform pixel noise of random amplitude. Every
//! class is invariant under the training augmentation (crops and horizontal flips). Telling
//! the classes apart needs many oriented, frequency-tuned filters at full resolution: a wide
//! first layer (ResNet50's 64 filters of 7x7) finds them quickly, a network with 8 filters of
//! 3x3 at stride 2 (MobileNetV1 x0.25) has to build them from too few channels, and confuses
//! the fine textures most.
//!
//! Because the texture covers the whole image, every position carries the class: a network
//! whose output at initialisation depends on only part of the image (ResNet50's ImageNet stem
//! at 32x32 with zero-initialised residual branches sees only the top-left corner through its
//! strided 1x1 shortcuts) can still start learning at once.

use std::path::Path;

use super::cifar::{
    write_cifar_file, write_class_names, DataError, Dataset, IMAGE_BYTES, IMAGE_H, IMAGE_W, NUM_CLASSES, TEST_FILE,
    TRAIN_FILES,
};
use super::replace::replace_dir;
use super::rng::Rng;

/// Class names of the synthetic dataset, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "stripes_fine",
    "stripes_coarse",
    "checks_fine",
    "checks_coarse",
    "dots_fine",
    "dots_coarse",
    "rings_fine",
    "rings_coarse",
    "waves_fine",
    "waves_coarse",
];

/// Stream ids separating the train and test splits of one seed.
const TRAIN_STREAM: u64 = 1;
const TEST_STREAM: u64 = 2;

/// Generates `train` training and `test` test images from `seed`. Labels are balanced (each
/// class gets `n/10` or one more) and shuffled; the same seed always gives the same bytes.
pub fn generate(train: usize, test: usize, seed: u64) -> (Dataset, Dataset) {
    (generate_split(train, seed, TRAIN_STREAM), generate_split(test, seed, TEST_STREAM))
}

/// Generates the synthetic dataset and writes it to `dir` in CIFAR binary format: the training
/// images split evenly over up to five `data_batch_N.bin` files (one per image below five
/// images), `test_batch.bin` and `batches.meta.txt` with the class names. Both counts must be at
/// least 1. `dir` is created, or replaced as a whole: a reader sees the old dataset or the new
/// one, never a mix, and a failure leaves the old one untouched (see [`replace_dir`]); an
/// existing `dir` must hold only a dataset's files. The bytes are those of [`generate`].
pub fn write_synth_dir(dir: &Path, train: usize, test: usize, seed: u64) -> Result<(), DataError> {
    write_synth_dir_with_progress(dir, train, test, seed, &mut |_| {})
}

/// [`write_synth_dir`], calling `progress(0)` once the new directory exists (nothing is reported
/// for arguments or a `dir` refused before), then `progress(n)` each time `n` more images
/// (training, then test) have been generated; the calls add up to `train + test`. One file's
/// images are held in memory at a time.
pub fn write_synth_dir_with_progress(
    dir: &Path,
    train: usize,
    test: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<(), DataError> {
    if train == 0 || test == 0 {
        return Err(DataError::Invalid {
            what: format!("the synthetic dataset needs at least 1 training and 1 test image (got {train} and {test})"),
        });
    }
    replace_dir(dir, &mut |fresh| write_synth_files(fresh, train, test, seed, progress))
}

/// Writes the files of [`write_synth_dir_with_progress`] into the existing directory `dir`.
fn write_synth_files(
    dir: &Path,
    train: usize,
    test: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<(), DataError> {
    progress(0);
    let files = train.min(TRAIN_FILES.len());
    let labels = split_labels(train, seed, TRAIN_STREAM);
    let mut start = 0;
    for (k, name) in TRAIN_FILES.iter().take(files).enumerate() {
        let end = train * (k + 1) / files;
        write_range(&dir.join(name), &labels, start..end, seed, TRAIN_STREAM, progress)?;
        start = end;
    }
    let labels = split_labels(test, seed, TEST_STREAM);
    write_range(&dir.join(TEST_FILE), &labels, 0..test, seed, TEST_STREAM, progress)?;
    write_class_names(dir, &CLASS_NAMES)
}

/// Images reported to the progress callback at a time.
const PROGRESS_CHUNK: usize = 1024;

/// Renders images `range` of a split (whose labels are `labels`) and writes them as one CIFAR
/// file at `path`, reporting progress every [`PROGRESS_CHUNK`] images.
fn write_range(
    path: &Path,
    labels: &[u8],
    range: std::ops::Range<usize>,
    seed: u64,
    split: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<(), DataError> {
    let mut images = vec![0u8; range.len() * IMAGE_BYTES];
    let mut canvas = Canvas::new();
    for (c, chunk) in images.chunks_mut(PROGRESS_CHUNK * IMAGE_BYTES).enumerate() {
        let first = range.start + c * PROGRESS_CHUNK;
        render_range(&labels[first..], first, seed, split, &mut canvas, chunk);
        progress(chunk.len() / IMAGE_BYTES);
    }
    write_cifar_file(path, &labels[range], &images)
}

/// The balanced, shuffled labels of a split of `n` images.
fn split_labels(n: usize, seed: u64, split: u64) -> Vec<u8> {
    let mut labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
    Rng::stream(seed, split).shuffle(&mut labels);
    labels
}

/// Renders consecutive images of a split into `out` (CHW, `IMAGE_BYTES` each), the first being
/// image `first` with label `labels[0]`. Each image has its own RNG stream, so any range gives
/// the same bytes as the whole split.
fn render_range(labels: &[u8], first: usize, seed: u64, split: u64, canvas: &mut Canvas, out: &mut [u8]) {
    for (i, (&label, img)) in labels.iter().zip(out.chunks_exact_mut(IMAGE_BYTES)).enumerate() {
        let mut rng = Rng::stream(seed, (split << 40) | ((first + i) as u64 + 1));
        render(label, &mut rng, canvas);
        canvas.to_chw(&mut rng, img);
    }
}

/// A whole split of `n` images.
fn generate_split(n: usize, seed: u64, split: u64) -> Dataset {
    let labels = split_labels(n, seed, split);
    let mut images = vec![0u8; n * IMAGE_BYTES];
    render_range(&labels, 0, seed, split, &mut Canvas::new(), &mut images);
    Dataset { images, labels, class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect() }
}

/// Draws one image of class `label` on `canvas`.
fn render(label: u8, rng: &mut Rng, canvas: &mut Canvas) {
    let kind = KINDS[label as usize / 2];
    let (lo, hi) = if label.is_multiple_of(2) { FINE } else { COARSE };
    let tex = Texture::random(kind, rng.uniform(lo, hi), rng);
    for y in 0..IMAGE_H {
        for x in 0..IMAGE_W {
            canvas.set(x, y, tex.colour(x as f32 + 0.5, y as f32 + 0.5));
        }
    }
    // Occluders: solid disks and squares.
    for _ in 0..1 + rng.below(3) {
        let (cx, cy) = (rng.uniform(0.0, 32.0), rng.uniform(0.0, 32.0));
        let r = rng.uniform(2.5, 6.0);
        let disk = rng.coin();
        let colour = random_colour(rng);
        canvas.fill_where(colour, |x, y| {
            let (dx, dy) = (x - cx, y - cy);
            if disk {
                dx * dx + dy * dy <= r * r
            } else {
                dx.abs().max(dy.abs()) <= 0.8 * r
            }
        });
    }
}

/// Period range (pixels) of the fine and the coarse textures.
const FINE: (f32, f32) = (2.6, 3.6);
const COARSE: (f32, f32) = (4.5, 7.0);

type Rgb = [f32; 3];

fn random_colour(rng: &mut Rng) -> Rgb {
    [rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0)]
}

#[derive(Clone, Copy)]
enum Kind {
    Stripes,
    Checks,
    Dots,
    Rings,
    Waves,
}

const KINDS: [Kind; 5] = [Kind::Stripes, Kind::Checks, Kind::Dots, Kind::Rings, Kind::Waves];

/// A two-colour periodic texture in image coordinates.
struct Texture {
    kind: Kind,
    a: Rgb,
    b: Rgb,
    /// Angular frequency (radians per pixel) and orientation.
    w: f32,
    cos: f32,
    sin: f32,
    phase_u: f32,
    phase_v: f32,
    /// Centre of the rings.
    cx: f32,
    cy: f32,
}

impl Texture {
    fn random(kind: Kind, period: f32, rng: &mut Rng) -> Self {
        let a = random_colour(rng);
        let k = rng.uniform(0.4, 0.9);
        let b = [a[0] + (255.0 - 2.0 * a[0]) * k, a[1] + (255.0 - 2.0 * a[1]) * k, a[2] + (255.0 - 2.0 * a[2]) * k];
        let theta = rng.uniform(0.0, std::f32::consts::PI);
        Texture {
            kind,
            a,
            b,
            w: std::f32::consts::TAU / period,
            cos: theta.cos(),
            sin: theta.sin(),
            phase_u: rng.uniform(0.0, std::f32::consts::TAU),
            phase_v: rng.uniform(0.0, std::f32::consts::TAU),
            cx: rng.uniform(4.0, 28.0),
            cy: rng.uniform(4.0, 28.0),
        }
    }

    fn colour(&self, x: f32, y: f32) -> Rgb {
        let u = self.w * (x * self.cos + y * self.sin);
        let v = self.w * (-x * self.sin + y * self.cos);
        let (pu, pv) = (self.phase_u, self.phase_v);
        let on = match self.kind {
            Kind::Stripes => (u + pu).sin() > 0.0,
            Kind::Checks => (u + pu).sin() * (v + pv).sin() > 0.0,
            Kind::Dots => (u + pu).cos() + (v + pv).cos() > 1.0,
            Kind::Rings => (self.w * (x - self.cx).hypot(y - self.cy) + pu).sin() > 0.0,
            Kind::Waves => (u + pu + 2.0 * (v / 2.5 + pv).sin()).sin() > 0.0,
        };
        if on {
            self.a
        } else {
            self.b
        }
    }
}

/// An HWC f32 drawing surface (0..255 per channel).
struct Canvas {
    px: Vec<Rgb>,
}

impl Canvas {
    fn new() -> Self {
        Canvas { px: vec![[0.0; 3]; IMAGE_H * IMAGE_W] }
    }

    fn set(&mut self, x: usize, y: usize, c: Rgb) {
        self.px[y * IMAGE_W + x] = c;
    }

    /// Sets every pixel whose centre `(x + 0.5, y + 0.5)` satisfies `inside` to `c`.
    fn fill_where(&mut self, c: Rgb, inside: impl Fn(f32, f32) -> bool) {
        for y in 0..IMAGE_H {
            for x in 0..IMAGE_W {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    self.set(x, y, c);
                }
            }
        }
    }

    /// Adds uniform noise of random amplitude and writes CHW bytes.
    fn to_chw(&self, rng: &mut Rng, out: &mut [u8]) {
        let amp = rng.uniform(3.0, 14.0);
        let plane = IMAGE_H * IMAGE_W;
        for (i, p) in self.px.iter().enumerate() {
            for (c, &v) in p.iter().enumerate() {
                let noisy = v + rng.uniform(-amp, amp);
                out[c * plane + i] = noisy.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}
