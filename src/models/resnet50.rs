//! ResNet50, bottleneck v1.5 (PaddleSlim's definition; the stride sits on `branch2b`), as a
//! [`Program`].
//!
//! Stem: `conv1` 7x7/s2 + `bn_conv1` + ReLU + max pool `pool1` 3x3/s2 (CIFAR stem: `conv1`
//! 3x3/s1 + `bn_conv1` + ReLU, no pool). Stages res2..res5 of 3, 4, 6, 3 blocks of width 64,
//! 128, 256, 512; block `resXY` = `resXY_branch2a` 1x1 + BN + ReLU, `resXY_branch2b` 3x3 +
//! BN + ReLU, `resXY_branch2c` 1x1 (4·width) + BN; shortcut `resXY_branch1` 1x1 + BN in the
//! first block of each stage, identity otherwise; then add + ReLU (`resXY.add.relu`). BN
//! layers are `bn` + the conv name without `res`. Then global average pool `pool` and `fc`.

use crate::config::{ModelConfig, Stem};
use crate::graph::{Builder, Name, Program, TensorId};

/// Blocks per stage.
const DEPTHS: [usize; 4] = [3, 4, 6, 3];
/// Bottleneck width per stage (the block output has four times as many channels).
const WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// Product of all strides: the input height and width must be multiples of this.
pub const fn total_stride(stem: Stem) -> usize {
    match stem {
        Stem::ImageNet => 32,
        Stem::Cifar => 8,
    }
}

/// conv `res<block><branch>` over `x` + BN `bn<block><branch>` (+ ReLU).
#[allow(clippy::too_many_arguments)]
const fn conv_bn(
    b: Builder,
    block: Name,
    branch: &str,
    x: TensorId,
    k: usize,
    stride: usize,
    c_out: usize,
    relu: bool,
) -> Builder {
    let conv = Name::new("res").push_str(block.as_str()).push_str(branch);
    let bn = Name::new("bn").push_str(block.as_str()).push_str(branch);
    let b = b.conv(conv, x, k, stride, c_out).bn(bn);
    if relu {
        b.relu()
    } else {
        b
    }
}

/// The program for `cfg` (whose validity [`crate::models::check`] has established).
pub(crate) const fn build(cfg: &ModelConfig) -> Program {
    let mut b = Builder::new(cfg);
    let conv1 = Name::new("conv1");
    b = match cfg.stem {
        Stem::ImageNet => {
            b.conv(conv1, b.last(), 7, 2, 64).bn(Name::new("bn_conv1")).relu().max_pool(Name::new("pool1"))
        }
        Stem::Cifar => b.conv(conv1, b.last(), 3, 1, 64).bn(Name::new("bn_conv1")).relu(),
    };
    let mut stage = 0;
    while stage < DEPTHS.len() {
        let width = WIDTHS[stage];
        let mut i = 0;
        while i < DEPTHS[stage] {
            // `2a`, `2b`, ..., `5c`: the block name without `res` / `bn`.
            let block = Name::EMPTY.push_num(stage + 2).push_byte(b'a' + i as u8);
            let stride = if i == 0 && stage > 0 { 2 } else { 1 };
            let x = b.last();
            b = conv_bn(b, block, "_branch2a", x, 1, 1, width, true);
            b = conv_bn(b, block, "_branch2b", b.last(), 3, stride, width, true);
            b = conv_bn(b, block, "_branch2c", b.last(), 1, 1, 4 * width, false);
            let main = b.last();
            let short = if i == 0 {
                b = conv_bn(b, block, "_branch1", x, 1, stride, 4 * width, false);
                b.last()
            } else {
                x
            };
            b = b.add_relu(Name::new("res").push_str(block.as_str()), main, short);
            i += 1;
        }
        stage += 1;
    }
    b.global_avg_pool(Name::new("pool")).fc(Name::new("fc"), cfg.classes as usize).finish()
}
