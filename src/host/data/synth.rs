//! A built-in synthetic 10-class dataset of 32x32 RGB images, deterministic by seed, written in
//! the CIFAR-10 binary format so that the same reader loads it.
//!
//! It is meant to be *learnable but hard*, so that a large teacher clearly beats a tiny student
//! trained alone. A class is a combination of two properties of the image's **main object**:
//!
//! - its **shape**: disk, square, triangle, ring or cross (5);
//! - its **texture**: stripes or a checkerboard (2),
//!
//! giving class `2·shape + texture` (names in [`CLASS_NAMES`]). Everything else is nuisance:
//! the object's position (±6 px), size (radius 7.5–12 px) and rotation; the texture's period
//! (3.3–7 px), orientation and phase; both texture colours (random, the second pushed towards
//! the first's complement so the texture stays visible); a two-colour background gradient;
//! 4–10 clutter strokes and dots; 1–3 **distractor** shapes of random shape, solid or textured
//! like a real object but much smaller (radius 3–5.5 px) and always under the main object; and
//! uniform pixel noise of random amplitude. Telling the classes apart needs the network to find
//! the largest object, judge its outline under rotation (square vs cross vs triangle), separate
//! it from its texture, and tell a 1-D from a 2-D texture at a few pixels per period.

use std::path::Path;

use super::cifar::{
    write_cifar_file, write_class_names, DataError, Dataset, IMAGE_BYTES, IMAGE_H, IMAGE_W, NUM_CLASSES, TEST_FILE,
    TRAIN_FILES,
};
use super::rng::Rng;

/// Class names of the synthetic dataset, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "disk_stripes",
    "disk_checks",
    "square_stripes",
    "square_checks",
    "triangle_stripes",
    "triangle_checks",
    "ring_stripes",
    "ring_checks",
    "cross_stripes",
    "cross_checks",
];

/// Stream ids separating the train and test splits of one seed.
const TRAIN_STREAM: u64 = 1;
const TEST_STREAM: u64 = 2;

/// Generates `train` training and `test` test images from `seed`. Labels are balanced (each
/// class gets `n/10` or one more) and shuffled; the same seed always gives the same bytes.
pub fn generate(train: usize, test: usize, seed: u64) -> (Dataset, Dataset) {
    (generate_split(train, seed, TRAIN_STREAM), generate_split(test, seed, TEST_STREAM))
}

/// Generates the synthetic dataset and writes it to `dir` (created if needed) in CIFAR binary
/// format: the training images split evenly over up to five `data_batch_N.bin` files (one per
/// image below five images), `test_batch.bin` and `batches.meta.txt` with the class names. Both
/// counts must be at least 1, and `dir` must not hold a training file this run would not
/// overwrite (it would be read as part of the dataset).
pub fn write_synth_dir(dir: &Path, train: usize, test: usize, seed: u64) -> Result<(), DataError> {
    if train == 0 || test == 0 {
        return Err(DataError::Invalid {
            what: format!("the synthetic dataset needs at least 1 training and 1 test image (got {train} and {test})"),
        });
    }
    let files = train.min(TRAIN_FILES.len());
    // A training file this run would not overwrite would silently join the dataset.
    if let Some(stale) = TRAIN_FILES[files..].iter().map(|f| dir.join(f)).find(|p| p.exists()) {
        return Err(DataError::Invalid {
            what: format!(
                "{} already exists and would not be overwritten by a dataset of {train} training images; \
                 use an empty directory",
                stale.display()
            ),
        });
    }
    let (tr, te) = generate(train, test, seed);
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut start = 0;
    for (k, name) in TRAIN_FILES.iter().take(files).enumerate() {
        let end = train * (k + 1) / files;
        write_cifar_file(&dir.join(name), &tr.labels[start..end], &tr.images[start * IMAGE_BYTES..end * IMAGE_BYTES])?;
        start = end;
    }
    write_cifar_file(&dir.join(TEST_FILE), &te.labels, &te.images)?;
    write_class_names(dir, &CLASS_NAMES)
}

fn generate_split(n: usize, seed: u64, split: u64) -> Dataset {
    let mut labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
    Rng::stream(seed, split).shuffle(&mut labels);
    let mut images = vec![0u8; n * IMAGE_BYTES];
    let mut canvas = Canvas::new();
    for (i, (&label, img)) in labels.iter().zip(images.chunks_exact_mut(IMAGE_BYTES)).enumerate() {
        let mut rng = Rng::stream(seed, (split << 40) | (i as u64 + 1));
        render(label, &mut rng, &mut canvas);
        canvas.to_chw(&mut rng, img);
    }
    Dataset { images, labels, class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect() }
}

/// Draws one image of class `label` on `canvas`.
fn render(label: u8, rng: &mut Rng, canvas: &mut Canvas) {
    let shape = SHAPES[label as usize / 2];
    let texture = if label % 2 == 0 { TextureKind::Stripes } else { TextureKind::Checks };

    // Background: a linear gradient between two random colours.
    let (c0, c1) = (random_colour(rng), random_colour(rng));
    let angle = rng.uniform(0.0, std::f32::consts::TAU);
    let (ga, gb) = (angle.cos() / 32.0, angle.sin() / 32.0);
    for y in 0..IMAGE_H {
        for x in 0..IMAGE_W {
            let t = (0.5 + (x as f32 - 15.5) * ga + (y as f32 - 15.5) * gb).clamp(0.0, 1.0);
            canvas.set(x, y, mix(c0, c1, t));
        }
    }

    // Clutter: thin strokes and small dots.
    for _ in 0..4 + rng.below(7) {
        let colour = random_colour(rng);
        if rng.coin() {
            let (x0, y0) = (rng.uniform(0.0, 32.0), rng.uniform(0.0, 32.0));
            let (x1, y1) = (x0 + rng.uniform(-10.0, 10.0), y0 + rng.uniform(-10.0, 10.0));
            canvas.stroke(x0, y0, x1, y1, 0.6, colour);
        } else {
            let obj =
                Object::new(Shape::Disk, rng.uniform(0.0, 32.0), rng.uniform(0.0, 32.0), rng.uniform(0.8, 2.0), 0.0);
            canvas.paint(&obj, |_, _| colour);
        }
    }

    // Distractors: small shapes, solid or textured, under the main object.
    for _ in 0..1 + rng.below(3) {
        let s = SHAPES[rng.below(SHAPES.len())];
        let obj = Object::new(
            s,
            rng.uniform(3.0, 29.0),
            rng.uniform(3.0, 29.0),
            rng.uniform(3.0, 5.5),
            rng.uniform(0.0, std::f32::consts::TAU),
        );
        if rng.coin() {
            let colour = random_colour(rng);
            canvas.paint(&obj, |_, _| colour);
        } else {
            let kind = if rng.coin() { TextureKind::Stripes } else { TextureKind::Checks };
            let tex = Texture::random(kind, rng);
            canvas.paint(&obj, |x, y| tex.colour(x, y));
        }
    }

    // The main object.
    let obj = Object::new(
        shape,
        16.0 + rng.uniform(-6.0, 6.0),
        16.0 + rng.uniform(-6.0, 6.0),
        rng.uniform(7.5, 12.0),
        rng.uniform(0.0, std::f32::consts::TAU),
    );
    let tex = Texture::random(texture, rng);
    canvas.paint(&obj, |x, y| tex.colour(x, y));
}

type Rgb = [f32; 3];

fn random_colour(rng: &mut Rng) -> Rgb {
    [rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0)]
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

#[derive(Clone, Copy)]
enum Shape {
    Disk,
    Square,
    Triangle,
    Ring,
    Cross,
}

const SHAPES: [Shape; 5] = [Shape::Disk, Shape::Square, Shape::Triangle, Shape::Ring, Shape::Cross];

impl Shape {
    /// Whether local point (u, v) (object radius 1) is inside.
    fn contains(self, u: f32, v: f32) -> bool {
        match self {
            Shape::Disk => u * u + v * v <= 1.0,
            Shape::Square => u.abs().max(v.abs()) <= 0.8,
            Shape::Triangle => v <= 0.5 && v >= -1.0 + 1.732 * u.abs(),
            Shape::Ring => {
                let r2 = u * u + v * v;
                (0.3..=1.0).contains(&r2)
            }
            Shape::Cross => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        }
    }
}

/// A shape placed in the image: centre, radius, rotation.
struct Object {
    shape: Shape,
    cx: f32,
    cy: f32,
    r: f32,
    cos: f32,
    sin: f32,
}

impl Object {
    fn new(shape: Shape, cx: f32, cy: f32, r: f32, rotation: f32) -> Self {
        Object { shape, cx, cy, r, cos: rotation.cos(), sin: rotation.sin() }
    }

    fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.r;
        let v = (-dx * self.sin + dy * self.cos) / self.r;
        self.shape.contains(u, v)
    }
}

#[derive(Clone, Copy)]
enum TextureKind {
    Stripes,
    Checks,
}

/// A two-colour periodic texture in image coordinates.
struct Texture {
    kind: TextureKind,
    a: Rgb,
    b: Rgb,
    /// Angular frequency (radians per pixel) and orientation.
    w: f32,
    cos: f32,
    sin: f32,
    phase_u: f32,
    phase_v: f32,
}

impl Texture {
    fn random(kind: TextureKind, rng: &mut Rng) -> Self {
        let a = random_colour(rng);
        let k = rng.uniform(0.55, 0.95);
        let b = [a[0] + (255.0 - 2.0 * a[0]) * k, a[1] + (255.0 - 2.0 * a[1]) * k, a[2] + (255.0 - 2.0 * a[2]) * k];
        let period = rng.uniform(3.3, 7.0);
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
        }
    }

    fn colour(&self, x: f32, y: f32) -> Rgb {
        let u = x * self.cos + y * self.sin;
        let s = (self.w * u + self.phase_u).sin();
        let on = match self.kind {
            TextureKind::Stripes => s > 0.0,
            TextureKind::Checks => {
                let v = -x * self.sin + y * self.cos;
                s * (self.w * v + self.phase_v).sin() > 0.0
            }
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

    /// Paints the pixels (by centre) inside `obj` with `fill(x, y)`.
    fn paint(&mut self, obj: &Object, fill: impl Fn(f32, f32) -> Rgb) {
        let reach = obj.r * 1.5;
        let (x0, x1) = (bound(obj.cx - reach), bound(obj.cx + reach + 1.0));
        let (y0, y1) = (bound(obj.cy - reach), bound(obj.cy + reach + 1.0));
        for y in y0..y1 {
            for x in x0..x1 {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                if obj.contains(fx, fy) {
                    self.set(x, y, fill(fx, fy));
                }
            }
        }
    }

    /// Paints pixels within `half_width` of the segment (x0, y0)–(x1, y1).
    fn stroke(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, half_width: f32, c: Rgb) {
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let (bx0, bx1) = (bound(x0.min(x1) - 1.0), bound(x0.max(x1) + 2.0));
        let (by0, by1) = (bound(y0.min(y1) - 1.0), bound(y0.max(y1) + 2.0));
        for y in by0..by1 {
            for x in bx0..bx1 {
                let (px, py) = (x as f32 + 0.5 - x0, y as f32 + 0.5 - y0);
                let t = ((px * dx + py * dy) / len2).clamp(0.0, 1.0);
                let (ex, ey) = (px - t * dx, py - t * dy);
                if ex * ex + ey * ey <= half_width * half_width {
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

/// A coordinate clamped into `0..=32` as a pixel index bound.
fn bound(v: f32) -> usize {
    v.floor().clamp(0.0, IMAGE_W as f32) as usize
}
