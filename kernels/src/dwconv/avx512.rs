//! x86_64 AVX-512F depthwise 3x3 forward (and the stride-1 input gradient, the same loop over
//! `dy` with the taps flipped): `lines.rs`'s loops over 16-lane zmm registers ([`Zmm`]), so a
//! pixel's channels take half the loads and FMAs; a last block of 8 channels runs on ymm, fewer
//! than 8 through the AVX2 path's stack copy. Each lane computes what the AVX2 lane computes
//! (bias, then the taps in row-major order, fused multiply-adds): the same bits. The weight
//! gradient stays on AVX2. Measured against the AVX2 loops inside the models (alternating
//! builds, Xeon VM): MobileNetV1 ×0.25's 13 depthwise layers at batch 1 4.6–4.8 → 3.9–4.1 µs
//! (conv3_1 0.81 → 0.57), the whole ×0.25 18.5–19.8 → 18.0–19.1 µs, 1.0 0.50–0.53 → 0.49–0.51
//! ms, the distillation step 895–905 → 909–917 img/s.

use super::avx2::Ymm;
use super::lines::{taps_fwd, Lanes};
use crate::act::Act;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::x86_64::*;

/// The AVX-512 register: 16 lanes.
pub(super) struct Zmm;

impl Lanes for Zmm {
    type V = __m512;
    const N: usize = 16;
    type Tail = Ymm;
    const OVERLAP_BELOW: usize = 32;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: forwarded.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_w<W: Elem>(p: *const W) -> __m512 {
        // SAFETY: forwarded; `W` is f16 (read as 16 halves) or f32, the only other `Elem`.
        unsafe {
            if TypeId::of::<W>() == TypeId::of::<f16>() {
                _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
            } else {
                _mm512_loadu_ps(p as *const f32)
            }
        }
    }
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: register work (AVX-512F: caller).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: register work (AVX-512F: caller).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512, relu: bool) {
        // SAFETY: forwarded; `_mm512_max_ps` returns the second operand (0) for NaN.
        unsafe { _mm512_storeu_ps(p, if relu { _mm512_max_ps(v, _mm512_setzero_ps()) } else { v }) }
    }
}

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports AVX-512F, AVX2,
/// FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { taps_fwd::<Zmm, W, false>(s, x, w, bias, act, y) }
}

/// The stride-1 input gradient (see [`super::dwconv3x3_bwd_input`] and `avx2::bwd_input_s1`).
///
/// # Safety
/// `s.stride == 1`, lengths as checked by [`super::dwconv3x3_bwd_input`], and the CPU supports
/// AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn bwd_input_s1(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(s.stride, 1);
    // SAFETY: at stride 1 `dy` and `dx` both hold n·h·w·c values; forwarded otherwise.
    unsafe { taps_fwd::<Zmm, f32, true>(s, dy, w, None, Act::None, dx) }
}
