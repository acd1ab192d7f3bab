//! KxK convolution (NHWC activations, HWIO weights `w[kh][kw][c_in][c_out]`, zero padding,
//! no dilation or groups): forward, grad-input and grad-weight, as im2col + GEMM over tiles of
//! [`IM2COL_ROWS`](crate::shape::IM2COL_ROWS) output rows.
//!
//! Scratch: every function takes at least [`Conv2d::scratch_len`] f32 (one im2col tile,
//! `IM2COL_ROWS·kh·kw·c_in`; 0 for a pointwise conv, which runs the GEMM on `x` directly).
//! A longer scratch makes the tiles taller (as many whole `IM2COL_ROWS` blocks as it holds;
//! fewer GEMM calls, the same bits). Its contents on entry are ignored and on return are
//! unspecified.
//!
//! The ISA-independent data movement (im2col / col2im) lives in `im2col`, the tile loops in
//! `tiled`; all arithmetic goes through [`crate::gemm::gemm`], which dispatches on the ISA —
//! except the forward of a conv with few input channels on a Cortex-M4F (`m4`: direct, no
//! im2col, same bits) and on AVX2 and NEON (`direct`: no im2col, groups of pixels in registers).
//! Over weights packed into panels, a forward ([`conv2d_fwd_panels`]) and an input gradient
//! ([`conv2d_bwd_input_panels`]) run one product per in-bounds tap, position by position on
//! small maps; a weight gradient of at most 4 output pixels runs one GEMM per in-bounds (tap,
//! position) pair, straight from `x` and `dy`.

/// AVX2 and NEON direct forward for few input channels (the stem).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod direct;
mod im2col;
mod tiled;

/// Cortex-M4F direct forward for few input channels (the `cfg` of [`crate::gemm`]'s M4F path).
#[cfg(tinykd_m4f)]
mod m4;

use crate::act::Act;
use crate::elem::Elem;
use crate::error::{check_len, check_scratch, Result};
use crate::isa::{Isa, IsaKind};
use crate::linear::panels::panels_len;
use crate::shape::{prod, Conv2d};

/// `y = act(conv(x, w) + b)`: `x[n][h][w][c_in]` → `y[n][out_h][out_w][c_out]`, weights HWIO
/// `w[kh][kw][c_in][c_out]` and optional `bias[c_out]` stored as f32 or f16, f32 accumulation.
///
/// Errors: [`KernelError::Shape`](crate::KernelError::Shape) if `s` is invalid;
/// [`KernelError::Len`](crate::KernelError::Len) naming `x`, `w`, `bias`, `y` (exact lengths)
/// or `scratch` (at least [`Conv2d::scratch_len`]). Nothing is written on error.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_fwd<W: Elem>(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("w", w.len(), s.w_len())?;
    if let Some(b) = bias {
        check_len("bias", b.len(), s.c_out)?;
    }
    check_len("y", y.len(), s.y_len())?;
    check_scratch("scratch", scratch.len(), s.scratch_len())?;
    match isa.kind() {
        #[cfg(tinykd_m4f)]
        IsaKind::Scalar if m4::applies(s) => {
            // SAFETY: shape validated and lengths checked above; `applies` holds.
            unsafe { m4::fwd(s, x, w, bias, act, y) };
            Ok(())
        }
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 if direct::applies(s) => {
            // SAFETY: shape validated and lengths checked above; `applies` holds; an `Isa` of
            // kind Avx2 or Avx512 exists only when the CPU has AVX2+FMA+F16C (isa.rs).
            unsafe { direct::avx2::fwd(s, x, w, bias, act, y) };
            Ok(())
        }
        #[cfg(target_arch = "aarch64")]
        IsaKind::Neon if direct::applies(s) => {
            // SAFETY: shape validated and lengths checked above; `applies` holds; an `Isa` of
            // kind Neon exists only on aarch64 CPUs with NEON (isa.rs).
            unsafe { direct::neon::fwd(s, x, w, bias, act, y) };
            Ok(())
        }
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            tiled::fwd(isa, s, x, w, bias, act, y, scratch)
        }
    }
}

/// [`conv2d_fwd`] with the weights packed by
/// [`pack_panels`](crate::linear::panels::pack_panels)`(kh·kw, c_in, c_out, ..)`: `wp` holds
/// [`panels_len`]`(kh·kw, c_in, c_out)` elements. Each
/// im2col tile is one product per tap that some pixel of the tile reads in bounds, so it is
/// fast for few output pixels and deep taps (the engine packs the convs for which
/// [`worth_packing`](crate::linear::panels::worth_packing) holds).
///
/// Errors: as [`conv2d_fwd`], with `wp` in place of `w`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_fwd_panels<W: Elem>(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    wp: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("wp", wp.len(), panels_len(prod(&[s.kh, s.kw]), s.c_in, s.c_out))?;
    if let Some(b) = bias {
        check_len("bias", b.len(), s.c_out)?;
    }
    check_len("y", y.len(), s.y_len())?;
    check_scratch("scratch", scratch.len(), s.scratch_len())?;
    tiled::fwd_panels(isa, s, x, wp, bias, act, y, scratch);
    Ok(())
}

/// `dX = col2im(dY · Wᵀ)` (overwrites `dx`): `dy[n][out_h][out_w][c_out]`, weights HWIO
/// `w[kh][kw][c_in][c_out]` → `dx[n][h][w][c_in]`.
///
/// Errors: `Shape` if `s` is invalid; `Len` naming `dy`, `w`, `dx` (exact) or `scratch` (at
/// least [`Conv2d::scratch_len`]). Nothing is written on error.
pub fn conv2d_bwd_input(
    isa: Isa,
    s: &Conv2d,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("w", w.len(), s.w_len())?;
    check_len("dx", dx.len(), s.x_len())?;
    check_scratch("scratch", scratch.len(), s.scratch_len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            tiled::bwd_input(isa, s, dy, w, dx, scratch)
        }
    }
}

/// [`conv2d_bwd_input`] with each tap's weights transposed and packed into panels: `wtp` holds
/// [`panels_len`]`(kh·kw, c_out, c_in)` elements, tap `t` the panels of `w[t]ᵀ` (as
/// [`pack_panels_both_ways`](crate::linear::panels::pack_panels_both_ways) packs them). Output
/// position by output position, each tap that reads the input in bounds is one product
/// `dx[pixel it reads] += dy[position] · w[t]ᵀ` over the batch (so a small map skips the taps
/// that read only padding, 5 of 9 per position at 2x2, and no im2col tile is written); fast for
/// few output pixels, as [`conv2d_fwd_panels`] is. A pointwise conv is one product.
///
/// Errors: `Shape` if `s` is invalid; `Len` naming `dy`, `wtp` or `dx` (exact lengths).
/// Nothing is written on error.
pub fn conv2d_bwd_input_panels<W: Elem>(isa: Isa, s: &Conv2d, dy: &[f32], wtp: &[W], dx: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("wtp", wtp.len(), panels_len(prod(&[s.kh, s.kw]), s.c_out, s.c_in))?;
    check_len("dx", dx.len(), s.x_len())?;
    tiled::bwd_input_panels(isa, s, dy, wtp, dx);
    Ok(())
}

/// `dW = im2col(X)ᵀ · dY` (overwrites `dw`): `x[n][h][w][c_in]`, `dy[n][out_h][out_w][c_out]`
/// → `dw[kh][kw][c_in][c_out]` (HWIO).
///
/// Errors: `Shape` if `s` is invalid; `Len` naming `x`, `dy`, `dw` (exact) or `scratch` (at
/// least [`Conv2d::scratch_len`]). Nothing is written on error.
pub fn conv2d_bwd_weight(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("dw", dw.len(), s.w_len())?;
    check_scratch("scratch", scratch.len(), s.scratch_len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            tiled::bwd_weight(isa, s, x, dy, dw, scratch)
        }
    }
}
