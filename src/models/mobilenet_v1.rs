//! MobileNetV1 (PaddleSlim's definition) as a [`Program`].
//!
//! `conv1` (3x3, stride 2, or 1 with the CIFAR stem) with BN and ReLU, then thirteen
//! depthwise separable blocks `convX_Y`: `convX_Y_dw` (3x3 depthwise) with BN and ReLU, then
//! `convX_Y_sep` (1x1) with BN and ReLU; then global average pool `pool` and `fc7`. Every
//! channel count is `int(c·scale)`; BN layers are `<conv>_bn`.

use crate::config::{ModelConfig, Stem};
use crate::graph::{Builder, Name, Program};

/// The separable blocks: (name stage, index within the stage or 0 for `conv6`, depthwise
/// channels, pointwise output channels, stride) before scaling.
const BLOCKS: [(usize, usize, usize, usize, usize); 13] = [
    (2, 1, 32, 64, 1),
    (2, 2, 64, 128, 2),
    (3, 1, 128, 128, 1),
    (3, 2, 128, 256, 2),
    (4, 1, 256, 256, 1),
    (4, 2, 256, 512, 2),
    (5, 1, 512, 512, 1),
    (5, 2, 512, 512, 1),
    (5, 3, 512, 512, 1),
    (5, 4, 512, 512, 1),
    (5, 5, 512, 512, 1),
    (5, 6, 512, 1024, 2),
    (6, 0, 1024, 1024, 1),
];

/// Product of all strides: the input height and width must be multiples of this.
pub const fn total_stride(stem: Stem) -> usize {
    match stem {
        Stem::ImageNet => 32,
        Stem::Cifar => 16,
    }
}

/// `int(c·scale)`.
const fn scaled(c: usize, scale_permille: u16) -> usize {
    c * scale_permille as usize / 1000
}

/// `convX_Y` (or `conv6` when `y == 0`).
const fn block_name(x: usize, y: usize) -> Name {
    let n = Name::new("conv").push_num(x);
    if y == 0 {
        n
    } else {
        n.push_byte(b'_').push_num(y)
    }
}

/// conv + `<conv>_bn` + ReLU.
const fn conv_bn_relu(b: Builder, conv: Name) -> Builder {
    b.bn(conv.push_str("_bn")).relu()
}

/// The program for `cfg` (whose validity [`crate::models::check`] has established).
pub(crate) const fn build(cfg: &ModelConfig) -> Program {
    let s = cfg.scale_permille;
    let stride1 = match cfg.stem {
        Stem::ImageNet => 2,
        Stem::Cifar => 1,
    };
    let mut b = Builder::new(cfg);
    let conv1 = Name::new("conv1");
    b = conv_bn_relu(b.conv(conv1, b.last(), 3, stride1, scaled(32, s)), conv1);
    let mut i = 0;
    while i < BLOCKS.len() {
        let (x, y, _, c_out, stride) = BLOCKS[i];
        let name = block_name(x, y);
        let dw = name.push_str("_dw");
        b = conv_bn_relu(b.dwconv(dw, stride), dw);
        let sep = name.push_str("_sep");
        b = conv_bn_relu(b.conv(sep, b.last(), 1, 1, scaled(c_out, s)), sep);
        i += 1;
    }
    b.global_avg_pool(Name::new("pool")).fc(Name::new("fc7"), cfg.classes as usize).finish()
}
