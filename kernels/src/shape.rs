//! Small `Copy` shape structs with `const fn` output dimensions, slice lengths and scratch
//! lengths, so that a planner (or a no_std user writing a `static` arena) can size every buffer
//! at compile time.
//!
//! Layouts (row-major, last index fastest):
//! - activations NHWC: `x[n][h][w][c]`;
//! - KxK conv weights HWIO: `w[kh][kw][c_in][c_out]` (so the weight is the `K x c_out` right
//!   operand of the im2col GEMM, `K = kh*kw*c_in`);
//! - depthwise weights HWC: `w[3][3][c]`;
//! - pointwise / fully-connected weights IO: `w[c_in][c_out]`.

use crate::error::{ensure, Result};

/// Rows of the im2col tile used by the KxK conv kernels; bounds their scratch.
pub const IM2COL_ROWS: usize = 64;

/// The product of `factors`, saturating at `usize::MAX`: every length and count below is one,
/// so a shape whose true length does not fit a `usize` asks for more than any slice holds and
/// fails its length check, instead of wrapping to a small length that a slice could pass (and
/// that the SIMD paths would then index past). Inlined: with a literal array the loop unrolls
/// to one saturating multiply per factor.
#[inline]
pub const fn prod(factors: &[usize]) -> usize {
    let mut p = 1usize;
    let mut i = 0;
    while i < factors.len() {
        p = p.saturating_mul(factors[i]);
        i += 1;
    }
    p
}

/// A KxK convolution with zero padding `pad` on all four sides, no dilation, no groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding (all four sides).
    pub pad: usize,
}

impl Conv2d {
    /// Square kernel `k`, stride `stride`, padding `pad`.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        n: usize,
        h: usize,
        w: usize,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        Conv2d { n, h, w, c_in, c_out, kh: k, kw: k, stride, pad }
    }
    /// Output height `(h + 2·pad − kh) / stride + 1` (0 if the shape is invalid).
    pub const fn out_h(&self) -> usize {
        if self.stride == 0 || self.h.saturating_add(self.pad.saturating_mul(2)) < self.kh {
            0
        } else {
            ((self.h.saturating_add(self.pad.saturating_mul(2)) - self.kh) / self.stride).saturating_add(1)
        }
    }
    /// Output width `(w + 2·pad − kw) / stride + 1` (0 if the shape is invalid).
    pub const fn out_w(&self) -> usize {
        if self.stride == 0 || self.w.saturating_add(self.pad.saturating_mul(2)) < self.kw {
            0
        } else {
            ((self.w.saturating_add(self.pad.saturating_mul(2)) - self.kw) / self.stride).saturating_add(1)
        }
    }
    /// Length of `x`: `n·h·w·c_in`.
    pub const fn x_len(&self) -> usize {
        prod(&[self.n, self.h, self.w, self.c_in])
    }
    /// Length of `w`: `kh·kw·c_in·c_out`.
    pub const fn w_len(&self) -> usize {
        prod(&[self.kh, self.kw, self.c_in, self.c_out])
    }
    /// Length of `y`: `n·out_h·out_w·c_out`.
    pub const fn y_len(&self) -> usize {
        prod(&[self.n, self.out_h(), self.out_w(), self.c_out])
    }
    /// GEMM depth `K = kh·kw·c_in`.
    pub const fn k(&self) -> usize {
        prod(&[self.kh, self.kw, self.c_in])
    }
    /// Multiply-accumulates of one forward pass.
    pub const fn macs(&self) -> usize {
        prod(&[self.n, self.out_h(), self.out_w(), self.c_out, self.k()])
    }
    /// True when the conv is a plain GEMM over the input (1x1, stride 1, no padding).
    pub const fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// The input pixel (`iy·w + ix`, within one image) that tap `t` (`ky·kw + kx`) of output
    /// pixel `(oy, ox)` reads, or `None` where it reads padding.
    pub fn tap_source(&self, oy: usize, ox: usize, t: usize) -> Option<usize> {
        let iy = (oy * self.stride + t / self.kw).checked_sub(self.pad).filter(|&iy| iy < self.h)?;
        let ix = (ox * self.stride + t % self.kw).checked_sub(self.pad).filter(|&ix| ix < self.w)?;
        Some(iy * self.w + ix)
    }
    /// The one tap `t = pad·kw + pad` a conv from a 1x1 map to a 1x1 map reads in bounds (its
    /// output pixel is its input pixel, whatever the stride), if the shape is such a conv and not
    /// already pointwise: then it is the pointwise conv with weights `w[t]` (`c_in × c_out`),
    /// the other taps reading only padding (ResNet50's res5 3x3 convs at a 32x32 input).
    pub const fn only_tap(&self) -> Option<usize> {
        let one_out = self.out_h() == 1 && self.out_w() == 1;
        if self.h == 1 && self.w == 1 && one_out && self.pad < self.kh && self.pad < self.kw && !self.is_pointwise() {
            Some(self.pad * self.kw + self.pad)
        } else {
            None
        }
    }
    /// f32 scratch length needed by the forward, grad-input and grad-weight kernels:
    /// one im2col tile of `min(IM2COL_ROWS, n·out_h·out_w)` rows of `K`; 0 for a pointwise conv.
    pub const fn scratch_len(&self) -> usize {
        let rows = prod(&[self.n, self.out_h(), self.out_w()]);
        if self.is_pointwise() {
            0
        } else if rows < IM2COL_ROWS {
            prod(&[rows, self.k()])
        } else {
            prod(&[IM2COL_ROWS, self.k()])
        }
    }
    /// Checks the shape describes a real convolution.
    pub const fn validate(&self) -> Result<()> {
        let ok = self.n > 0
            && self.h > 0
            && self.w > 0
            && self.c_in > 0
            && self.c_out > 0
            && self.kh > 0
            && self.kw > 0
            && self.stride > 0
            && self.pad < self.kh
            && self.pad < self.kw
            && self.h.saturating_add(self.pad.saturating_mul(2)) >= self.kh
            && self.w.saturating_add(self.pad.saturating_mul(2)) >= self.kw;
        ensure(ok, "conv2d: zero dimension, stride 0, pad >= kernel, or kernel larger than padded input")
    }
}

/// A depthwise 3x3 convolution, padding 1, stride 1 or 2 (channel multiplier 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DwConv3x3 {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels (in = out).
    pub c: usize,
    /// Stride: 1 or 2.
    pub stride: usize,
}

impl DwConv3x3 {
    /// The shape.
    pub const fn new(n: usize, h: usize, w: usize, c: usize, stride: usize) -> Self {
        DwConv3x3 { n, h, w, c, stride }
    }
    /// Output height `(h − 1) / stride + 1`.
    pub const fn out_h(&self) -> usize {
        if self.stride == 0 || self.h == 0 {
            0
        } else {
            (self.h - 1) / self.stride + 1
        }
    }
    /// Output width `(w − 1) / stride + 1`.
    pub const fn out_w(&self) -> usize {
        if self.stride == 0 || self.w == 0 {
            0
        } else {
            (self.w - 1) / self.stride + 1
        }
    }
    /// Length of `x`: `n·h·w·c`.
    pub const fn x_len(&self) -> usize {
        prod(&[self.n, self.h, self.w, self.c])
    }
    /// Length of `w`: `9·c`.
    pub const fn w_len(&self) -> usize {
        prod(&[9, self.c])
    }
    /// Length of `y`: `n·out_h·out_w·c`.
    pub const fn y_len(&self) -> usize {
        prod(&[self.n, self.out_h(), self.out_w(), self.c])
    }
    /// Multiply-accumulates of one forward pass.
    pub const fn macs(&self) -> usize {
        prod(&[self.y_len(), 9])
    }
    /// Checks the shape.
    pub const fn validate(&self) -> Result<()> {
        ensure(
            self.n > 0 && self.h > 0 && self.w > 0 && self.c > 0 && (self.stride == 1 || self.stride == 2),
            "dwconv3x3: zero dimension or stride not 1 or 2",
        )
    }
}

/// A dense layer over rows: `y[rows][c_out] = x[rows][c_in] · w[c_in][c_out] (+ b)`.
/// A pointwise (1x1) conv is this with `rows = n·h·w`; the fc is this with `rows = n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Linear {
    /// Rows (`n·h·w` for a pointwise conv, `n` for the fc).
    pub rows: usize,
    /// Input features.
    pub c_in: usize,
    /// Output features.
    pub c_out: usize,
}

impl Linear {
    /// The shape.
    pub const fn new(rows: usize, c_in: usize, c_out: usize) -> Self {
        Linear { rows, c_in, c_out }
    }
    /// Length of `x`.
    pub const fn x_len(&self) -> usize {
        prod(&[self.rows, self.c_in])
    }
    /// Length of `w`.
    pub const fn w_len(&self) -> usize {
        prod(&[self.c_in, self.c_out])
    }
    /// Length of `y`.
    pub const fn y_len(&self) -> usize {
        prod(&[self.rows, self.c_out])
    }
    /// Multiply-accumulates of one forward pass.
    pub const fn macs(&self) -> usize {
        prod(&[self.rows, self.c_in, self.c_out])
    }
    /// Checks the shape.
    pub const fn validate(&self) -> Result<()> {
        ensure(self.rows > 0 && self.c_in > 0 && self.c_out > 0, "linear: zero dimension")
    }
}

/// Per-channel statistics over `rows` rows of `c` channels (batch norm over NHWC with
/// `rows = n·h·w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Channels {
    /// Rows (`n·h·w`).
    pub rows: usize,
    /// Channels.
    pub c: usize,
}

impl Channels {
    /// The shape.
    pub const fn new(rows: usize, c: usize) -> Self {
        Channels { rows, c }
    }
    /// Length of the activation: `rows·c`.
    pub const fn len(&self) -> usize {
        prod(&[self.rows, self.c])
    }
    /// True if there are no elements.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Checks the shape.
    pub const fn validate(&self) -> Result<()> {
        ensure(self.rows > 0 && self.c > 0, "channels: zero dimension")
    }
}

/// An NHWC image batch for pooling: max pool 3x3/s2/p1 and global average pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Pool {
    /// The shape.
    pub const fn new(n: usize, h: usize, w: usize, c: usize) -> Self {
        Pool { n, h, w, c }
    }
    /// Length of `x`.
    pub const fn x_len(&self) -> usize {
        prod(&[self.n, self.h, self.w, self.c])
    }
    /// Max pool 3x3/s2/p1 output height `(h − 1) / 2 + 1`.
    pub const fn max_out_h(&self) -> usize {
        if self.h == 0 {
            0
        } else {
            (self.h - 1) / 2 + 1
        }
    }
    /// Max pool 3x3/s2/p1 output width `(w − 1) / 2 + 1`.
    pub const fn max_out_w(&self) -> usize {
        if self.w == 0 {
            0
        } else {
            (self.w - 1) / 2 + 1
        }
    }
    /// Max pool output length.
    pub const fn max_y_len(&self) -> usize {
        prod(&[self.n, self.max_out_h(), self.max_out_w(), self.c])
    }
    /// Global average pool output length `n·c`.
    pub const fn avg_y_len(&self) -> usize {
        prod(&[self.n, self.c])
    }
    /// Checks the shape.
    pub const fn validate(&self) -> Result<()> {
        ensure(self.n > 0 && self.h > 0 && self.w > 0 && self.c > 0, "pool: zero dimension")
    }
}

/// A batch of class scores: `logits[n][classes]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Logits {
    /// Batch size.
    pub n: usize,
    /// Classes.
    pub classes: usize,
}

impl Logits {
    /// The shape.
    pub const fn new(n: usize, classes: usize) -> Self {
        Logits { n, classes }
    }
    /// Length of the logits: `n·classes`.
    pub const fn len(&self) -> usize {
        prod(&[self.n, self.classes])
    }
    /// True if there are no elements.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Checks the shape.
    pub const fn validate(&self) -> Result<()> {
        ensure(self.n > 0 && self.classes > 0, "logits: zero dimension")
    }
}

/// The FSP (flow of solution procedure) loss shape: two feature maps `x[n][hw][c1]` and
/// `y[n][hw][c2]` of the same spatial size give a Gram matrix `G[n][c1][c2]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fsp {
    /// Batch size.
    pub n: usize,
    /// Spatial positions `h·w` (the same for both maps).
    pub hw: usize,
    /// Channels of the first map.
    pub c1: usize,
    /// Channels of the second map.
    pub c2: usize,
}

impl Fsp {
    /// The shape.
    pub const fn new(n: usize, hw: usize, c1: usize, c2: usize) -> Self {
        Fsp { n, hw, c1, c2 }
    }
    /// Length of the first map.
    pub const fn x_len(&self) -> usize {
        prod(&[self.n, self.hw, self.c1])
    }
    /// Length of the second map.
    pub const fn y_len(&self) -> usize {
        prod(&[self.n, self.hw, self.c2])
    }
    /// Length of one Gram matrix batch `n·c1·c2`.
    pub const fn gram_len(&self) -> usize {
        prod(&[self.n, self.c1, self.c2])
    }
    /// f32 scratch the loss needs: two Gram batches (student and teacher).
    pub const fn scratch_len(&self) -> usize {
        prod(&[2, self.gram_len()])
    }
    /// Checks the shape.
    pub const fn validate(&self) -> Result<()> {
        ensure(self.n > 0 && self.hw > 0 && self.c1 > 0 && self.c2 > 0, "fsp: zero dimension")
    }
}
