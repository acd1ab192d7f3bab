//! Depthwise 3x3 convolution, padding 1, stride 1 or 2, channel multiplier 1: NHWC
//! activations, HWC weights `w[3][3][c]`; forward, grad-input and grad-weight. Direct loops
//! (channel-innermost), no scratch.
//!
//! The per-ISA loops live in submodules: `scalar` (the specification, and the backward
//! passes on the other ISAs), `lines` (the SIMD forward, written once over a register type:
//! pixel-major over window classes, lines of up to 8 pixels whose border taps are clipped the
//! same way, 8 FMA chains whatever the width, weights widened in the load; the same bits on
//! every path; the stride-1 input gradient is that forward over `dy` with the kernel flipped),
//! `avx2` (that forward on ymm; the strided input gradient as a gather; the weight gradient 8
//! channels per FMA, with the 9 tap sums in registers per image on stride-1 maps of at least
//! 64 pixels), `avx512` (the forward and the stride-1 input gradient on zmm), `neon` (the
//! forward and the stride-1 input gradient on q registers; the strided input gradient as a
//! gather over each input pixel's taps; the weight gradient with a channel block's 9 tap sums
//! in registers for the whole sweep), and `m4` (the scalar forward on a Cortex-M4F: 8 channel
//! accumulators in registers per output pixel, bit-identical to `scalar`). Each public
//! function checks its arguments and dispatches once on [`Isa::kind`].

mod scalar;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod lines;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "aarch64")]
mod neon;

/// Cortex-M4F (the `cfg` of [`crate::gemm`]'s M4F path).
#[cfg(tinykd_m4f)]
mod m4;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use scalar::taps;

use crate::act::Act;
use crate::elem::Elem;
use crate::error::{check_len, Result};
use crate::isa::{Isa, IsaKind};
use crate::shape::DwConv3x3;

/// Channels per AVX2 register (the x86 forward's narrowest block, the weight gradient's block).
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 8;

/// `y = act(dwconv3x3(x, w) + b)`: `x[n][h][w][c]` → `y[n][out_h][out_w][c]`, weights
/// `w[3][3][c]` and optional `bias[c]` stored as f32 or f16, f32 accumulation.
///
/// Errors: [`KernelError::Shape`](crate::KernelError::Shape) if `s` is invalid (stride not 1
/// or 2, a zero dimension); [`KernelError::Len`](crate::KernelError::Len) naming `x`, `w`,
/// `bias` or `y`. Nothing is written on error.
pub fn dwconv3x3_fwd<W: Elem>(
    isa: Isa,
    s: &DwConv3x3,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("w", w.len(), s.w_len())?;
    if let Some(b) = bias {
        check_len("bias", b.len(), s.c)?;
    }
    check_len("y", y.len(), s.y_len())?;
    match isa.kind() {
        #[cfg(not(tinykd_m4f))]
        IsaKind::Scalar => scalar::fwd(s, x, w, bias, act, y, 0),
        #[cfg(tinykd_m4f)]
        // SAFETY: shape validated and lengths checked above.
        IsaKind::Scalar => unsafe { m4::fwd(s, x, w, bias, act, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 exists only when the CPU has
        // AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx2 => unsafe { avx2::fwd(s, x, w, bias, act, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx512 exists only when the CPU has
        // AVX-512F and AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx512 => unsafe { avx512::fwd(s, x, w, bias, act, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: lengths checked above; an `Isa` of kind Neon exists only on aarch64 CPUs with
        // NEON (isa.rs).
        IsaKind::Neon => unsafe { neon::fwd(s, x, w, bias, act, y) },
        // Kinds of another architecture: no `Isa` of them can exist on this target.
        _ => scalar::fwd(s, x, w, bias, act, y, 0),
    }
    Ok(())
}

/// `dX = Σ_taps shift(dY ⊙ w[tap])` (overwrites `dx`): `dy[n][out_h][out_w][c]`, weights
/// `w[3][3][c]` → `dx[n][h][w][c]`.
///
/// Errors: `Shape` if `s` is invalid; `Len` naming `dy`, `w` or `dx`. Nothing is written on
/// error.
pub fn dwconv3x3_bwd_input(isa: Isa, s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("w", w.len(), s.w_len())?;
    check_len("dx", dx.len(), s.x_len())?;
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: stride 1 and lengths checked above; an `Isa` of kind Avx2 exists only when the
        // CPU has AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx2 if s.stride == 1 => unsafe { avx2::bwd_input_s1(s, dy, w, dx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; Avx512 also has AVX-512F (isa.rs).
        IsaKind::Avx512 if s.stride == 1 => unsafe { avx512::bwd_input_s1(s, dy, w, dx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above (any stride).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::bwd_input_gather(s, dy, w, dx) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: stride 1 and lengths checked above; an `Isa` of kind Neon exists only on
        // aarch64 CPUs with NEON (isa.rs).
        IsaKind::Neon if s.stride == 1 => unsafe { neon::bwd_input_s1(s, dy, w, dx) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above (any stride).
        IsaKind::Neon => unsafe { neon::bwd_input(s, dy, w, dx) },
        _ => scalar::bwd_input(s, dy, w, dx),
    }
    Ok(())
}

/// `dW[ky][kx][c] = Σ_{n,oy,ox} X[n][oy·s+ky−1][ox·s+kx−1][c] · dY[n][oy][ox][c]` (overwrites
/// `dw`): `x[n][h][w][c]`, `dy[n][out_h][out_w][c]` → `dw[3][3][c]`.
///
/// Errors: `Shape` if `s` is invalid; `Len` naming `x`, `dy` or `dw`. Nothing is written on
/// error.
pub fn dwconv3x3_bwd_weight(isa: Isa, s: &DwConv3x3, x: &[f32], dy: &[f32], dw: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("dw", dw.len(), s.w_len())?;
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 or Avx512 exists only when the CPU has
        // AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::bwd_weight(s, x, dy, dw) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: lengths checked above; an `Isa` of kind Neon exists only on aarch64 CPUs with
        // NEON (isa.rs).
        IsaKind::Neon => unsafe { neon::bwd_weight(s, x, dy, dw) },
        _ => scalar::bwd_weight(s, x, dy, dw),
    }
    Ok(())
}
