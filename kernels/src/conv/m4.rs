//! Cortex-M4F direct forward for KxK convs with few input channels (the stem: 3x3, 3 → 8·k
//! channels): no im2col. For each output pixel and block of 8 output channels one assembly
//! walk ([`segmented_1x8`]) multiplies the in-bounds kernel rows — each one contiguous run of
//! `(kx_hi − kx_lo)·c_in` input values against as many consecutive HWIO weight rows — into 8
//! register accumulators, adds the bias, applies the ReLU and stores.
//!
//! The im2col + GEMM path sums the same products in the same `(ky, kx, ci)` order from 0 and
//! only adds exact zeros for the padding taps (which leave a sum unchanged: it starts at +0
//! and is never −0), so the outputs are the same bits. The weights (and bias) are widened to
//! f32 once per call into a stack tile of at most [`MAX_W`] values.

use crate::act::Act;
use crate::convert::m4::widen;
use crate::elem::Elem;
use crate::gemm::m4::{segmented_1x8, Segments};
use crate::shape::Conv2d;

/// Largest weight tensor (f32 values) widened on the stack (4 KiB).
const MAX_W: usize = 1024;
/// Most output channels (the bias tile).
const MAX_C_OUT: usize = 64;

/// True when the direct path takes `s`: not pointwise, at most 8 input channels (more are
/// faster as im2col + the 4×4 GEMM), output channels a multiple of 8 up to [`MAX_C_OUT`],
/// weights fitting [`MAX_W`].
pub(super) fn applies(s: &Conv2d) -> bool {
    !s.is_pointwise() && s.c_in <= 8 && s.c_out % 8 == 0 && s.c_out <= MAX_C_OUT && s.w_len() <= MAX_W
}

/// Kernel taps `lo..hi` (of `k`) whose padded position `start + t` lies in `pad..pad + len`.
fn clip(start: usize, pad: usize, len: usize, k: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(start).min(k);
    let hi = (pad + len).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

/// `y = act(conv(x, w) + b)` for a shape [`applies`] accepts.
///
/// # Safety
/// `s` is valid, [`applies`]`(s)`, and `x`, `w`, `bias`, `y` have the lengths `conv2d_fwd`
/// checks.
pub(super) unsafe fn fwd<W: Elem>(s: &Conv2d, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    let (c_in, c_out) = (s.c_in, s.c_out);
    let mut wt = [0.0f32; MAX_W];
    widen(w, &mut wt[..s.w_len()]);
    let mut bt = [0.0f32; MAX_C_OUT];
    if let Some(b) = bias {
        widen(b, &mut bt[..c_out]);
    }
    let relu = act == Act::Relu;
    let (oh, ow) = (s.out_h(), s.out_w());
    for n in 0..s.n {
        for oy in 0..oh {
            let (ky_lo, ky_hi) = clip(oy * s.stride, s.pad, s.h, s.kh);
            for ox in 0..ow {
                let (kx_lo, kx_hi) = clip(ox * s.stride, s.pad, s.w, s.kw);
                let out = ((n * oh + oy) * ow + ox) * c_out;
                let len = (kx_hi - kx_lo) * c_in;
                let seg = Segments { len, a_skip: (s.w * c_in - len) * 4, b_skip: (s.kw * c_in - len) * c_out * 4 };
                let iy = oy * s.stride + ky_lo - s.pad;
                let ix = ox * s.stride + kx_lo - s.pad;
                let a = ((n * s.h + iy) * s.w + ix) * c_in;
                let w0 = (ky_lo * s.kw + kx_lo) * c_in * c_out;
                for j in (0..c_out).step_by(8) {
                    // SAFETY: a valid shape has pad < kh, kw, so every output pixel has at
                    // least one in-bounds kernel row and column (nky, len ≥ 1); those rows
                    // ky_lo..ky_hi and columns kx_lo..kx_hi are in bounds, so the A walk (len values per row, rows s.w·c_in apart) stays in
                    // `x` and the B walk (rows c_out apart, kw·c_in rows per kernel row) in the
                    // `w_len` widened weights; columns j..j+8 ≤ c_out of the bias tile and of
                    // output pixel `out` are in bounds.
                    unsafe {
                        segmented_1x8(
                            relu,
                            x.as_ptr().add(a),
                            wt.as_ptr().add(w0 + j),
                            c_out * 4,
                            &seg,
                            ky_hi - ky_lo,
                            y.as_mut_ptr().add(out + j),
                            bt.as_ptr().add(j),
                        )
                    };
                }
            }
        }
    }
}
