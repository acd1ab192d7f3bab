//! Model configuration: which architecture, width, classes, stem and input size.

/// The two architectures of the tutorial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// MobileNetV1 (the student).
    MobileNetV1,
    /// ResNet50, bottleneck v1.5 (the teacher).
    ResNet50,
}

/// The first layers of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stem {
    /// PaddleSlim's / the tutorial's: MobileNetV1 conv1 stride 2; ResNet50 7x7 s2 + max pool.
    ImageNet,
    /// CIFAR-style: MobileNetV1 conv1 stride 1; ResNet50 3x3 s1 conv, no max pool.
    Cifar,
}

/// A complete model configuration. `scale_permille` is the MobileNetV1 width multiplier in
/// thousandths (250, 500, 750, 1000) so that `int(c * scale)` is exact integer arithmetic
/// (`c * scale_permille / 1000`); it is 1000 for ResNet50.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Width multiplier in thousandths.
    pub scale_permille: u16,
    /// Number of classes of the final fc.
    pub classes: u16,
    /// Stem variant.
    pub stem: Stem,
    /// Input height.
    pub in_h: u16,
    /// Input width.
    pub in_w: u16,
    /// Input channels.
    pub in_c: u16,
}

impl ModelConfig {
    /// MobileNetV1 at `scale_permille`/1000 width, 32x32x3 input, 10 classes, ImageNet stem.
    pub const fn mobilenet_v1(scale_permille: u16) -> Self {
        ModelConfig {
            arch: Arch::MobileNetV1,
            scale_permille,
            classes: 10,
            stem: Stem::ImageNet,
            in_h: 32,
            in_w: 32,
            in_c: 3,
        }
    }
    /// ResNet50, 32x32x3 input, 10 classes, ImageNet stem.
    pub const fn resnet50() -> Self {
        ModelConfig {
            arch: Arch::ResNet50,
            scale_permille: 1000,
            classes: 10,
            stem: Stem::ImageNet,
            in_h: 32,
            in_w: 32,
            in_c: 3,
        }
    }
    /// The same config with another stem.
    pub const fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }
    /// The same config with another class count.
    pub const fn with_classes(mut self, classes: u16) -> Self {
        self.classes = classes;
        self
    }
    /// The same config with another input size.
    pub const fn with_input(mut self, h: u16, w: u16) -> Self {
        self.in_h = h;
        self.in_w = w;
        self
    }
}
