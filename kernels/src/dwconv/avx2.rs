//! x86_64 AVX2+FMA+F16C depthwise 3x3: the forward (`lines.rs` over 8-lane ymm registers,
//! [`Ymm`]; also the stride-1 input gradient, a forward of `dy` with the taps flipped), the
//! strided input gradient as a gather, and the weight gradient.

use super::lines::{pixel, taps_fwd, Lanes, Tap};
use super::scalar::input_taps;
use super::{taps, BLOCK};
use crate::act::Act;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::x86_64::*;

/// The AVX2 register: 8 lanes.
pub(super) struct Ymm;

impl Lanes for Ymm {
    type V = __m256;
    const N: usize = BLOCK;
    type Tail = Ymm;
    const OVERLAP_BELOW: usize = 32;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: forwarded.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_w<W: Elem>(p: *const W) -> __m256 {
        // SAFETY: forwarded; `W` is f16 (read as 8 halves) or f32, the only other `Elem`.
        unsafe {
            if TypeId::of::<W>() == TypeId::of::<f16>() {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            } else {
                _mm256_loadu_ps(p as *const f32)
            }
        }
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: register work (AVX: caller).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: register work (FMA: caller).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256, relu: bool) {
        // SAFETY: forwarded.
        unsafe { _mm256_storeu_ps(p, if relu { _mm256_max_ps(v, _mm256_setzero_ps()) } else { v }) }
    }
}

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { taps_fwd::<Ymm, W, false>(s, x, w, bias, act, y) }
}

/// `dx = Σ_taps shift(dy ⊙ w[tap])` for stride 1 (see [`super::dwconv3x3_bwd_input`]): input
/// pixel `i` gets `dy[i − k + 1]·w[k]` over the taps `k`, i.e. the forward of `dy` with the
/// kernel flipped (`w[2 − ky][2 − kx]`), same padding.
///
/// # Safety
/// `s.stride == 1`, lengths as checked by [`super::dwconv3x3_bwd_input`], and the CPU supports
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bwd_input_s1(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(s.stride, 1);
    // SAFETY: at stride 1 `dy` and `dx` both hold n·h·w·c values; forwarded otherwise.
    unsafe { taps_fwd::<Ymm, f32, true>(s, dy, w, None, Act::None, dx) }
}

/// `dx` of a strided depthwise conv as a gather (see [`super::dwconv3x3_bwd_input`]): input
/// pixel `(iy, ix)` gets `Σ dy[oy][ox]·w[ky][kx]` over the taps with `oy·st + ky − 1 = iy`,
/// `ox·st + kx − 1 = ix` in bounds (at stride 2: 1, 2 or 4 of them), found once per pixel and
/// swept over the channels as the forward's border pixels are (`lines::pixel`), in `(ky, kx)` order.
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_bwd_input`]; the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bwd_input_gather(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (c, h, wd) = (s.c, s.h, s.w);
    let mut found = [(0usize, 0usize); 9];
    let mut list = [Tap { x: dy.as_ptr(), w: w.as_ptr() }; 9];
    for n in 0..s.n {
        for iy in 0..h {
            for ix in 0..wd {
                let nt = input_taps(s, n, iy, ix, &mut found);
                for (t, &(o, k)) in list.iter_mut().zip(&found[..nt]) {
                    // Output pixel o < n·oh·ow and tap row k < 9: both offsets stay inside
                    // the slices.
                    *t = Tap { x: dy[o * c..].as_ptr(), w: w[k * c..].as_ptr() };
                }
                let out = dx[((n * h + iy) * wd + ix) * c..].as_mut_ptr();
                // SAFETY: every tap's dy pixel and weight row hold `c` values, as does the dx
                // pixel; CPU features vouched for by the caller.
                unsafe { pixel::<Ymm, f32>(c, 0, &list[..nt], None, false, out) };
            }
        }
    }
}

/// `dw[tap][c] = Σ_{out} x[in(out, tap)][c]·dy[out][c]` (see [`super::dwconv3x3_bwd_weight`]),
/// summed over the output pixels in order with fused multiply-adds. Maps of at least
/// [`REGISTER_SUMS_PIXELS`] output pixels: per block of 8 channels the 9 tap sums stay in
/// registers over each image (interior pixels take all 9 taps without tests), the images'
/// sums added in order (stride 1 only); stride 2 and smaller
/// maps (few pixels, many channels: the per-block pass over the pixels would not pay) go
/// pixel by pixel, adding into the `dw` rows (L1) 8 channels at a time. The last < 8
/// channels are summed scalar.
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_bwd_weight`]; the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bwd_weight(s: &DwConv3x3, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let c = s.c;
    let full = c / BLOCK * BLOCK;
    dw.fill(0.0);
    let d = dw.as_mut_ptr();
    let in_registers = s.stride == 1 && s.out_h() * s.out_w() >= REGISTER_SUMS_PIXELS;
    if in_registers {
        // Image by image (its pixels stay in L2 while every channel block passes over them),
        // each image's sums added to `dw` in image order.
        for n in 0..s.n {
            for c0 in (0..full).step_by(BLOCK) {
                // SAFETY: image n < s.n, channels c0..c0 + 8 ≤ c; forwarded.
                let acc = unsafe { weight_sums(s, x.as_ptr(), dy.as_ptr(), n, c0) };
                for (t, a) in acc.iter().enumerate() {
                    // SAFETY: row t < 9 of `dw` (9·c values), channels c0..c0 + 8 ≤ c.
                    unsafe {
                        let p = d.add(t * c + c0);
                        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *a));
                    }
                }
            }
        }
    }
    if in_registers && full == c {
        return;
    }
    // The pixel walk of `scalar::for_each_tap`, written out: AVX2 intrinsics inside a closure
    // passed to a function without this `target_feature` are not inlined (each becomes a
    // call; measured 20x slower).
    let (oh, ow) = (s.out_h(), s.out_w());
    let c_lo = if in_registers { full } else { 0 };
    for n in 0..s.n {
        for oy in 0..oh {
            let iyp = oy * s.stride;
            let (ky_lo, ky_hi) = taps(iyp, s.h);
            for ox in 0..ow {
                let ixp = ox * s.stride;
                let (kx_lo, kx_hi) = taps(ixp, s.w);
                let gp = dy[((n * oh + oy) * ow + ox) * c..][..c].as_ptr();
                for ky in ky_lo..ky_hi {
                    let row = (n * s.h + iyp + ky - 1) * s.w;
                    for kx in kx_lo..kx_hi {
                        let xp = x[(row + ixp + kx - 1) * c..][..c].as_ptr();
                        // SAFETY: row ky·3 + kx < 9 of `dw`; channels < c of the input
                        // pixel, the output pixel and the row; CPU features vouched for by the
                        // caller. `d` is the only access to `dw`.
                        unsafe {
                            let a = d.add((ky * 3 + kx) * c);
                            let mut c0 = c_lo;
                            while c0 < full {
                                let v = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(xp.add(c0)),
                                    _mm256_loadu_ps(gp.add(c0)),
                                    _mm256_loadu_ps(a.add(c0)),
                                );
                                _mm256_storeu_ps(a.add(c0), v);
                                c0 += BLOCK;
                            }
                            for ch in full..c {
                                *a.add(ch) += *xp.add(ch) * *gp.add(ch);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stride-1 output maps from this many pixels (8x8) sum the weight gradient in registers (see
/// [`bwd_weight`]). Measured at batch 32 on MobileNetV1's layers against the scalar loop: 16x16
/// × 32 channels 1.85x faster in registers (1.2x adding into `dw`); 8x8 × 128 about even to
/// 1.4x; at 4x4 and below, and at stride 2, adding into `dw` per pixel is faster (1.1–1.3x).
const REGISTER_SUMS_PIXELS: usize = 64;

/// The 9 tap sums of channels `c0..c0 + 8` over the output pixels of image `n`, in order.
///
/// # Safety
/// `x` and `dy` hold the shape's NHWC values, `n < s.n`, `c0 + 8 ≤ c`; the CPU supports AVX2
/// and FMA.
#[inline(always)]
unsafe fn weight_sums(s: &DwConv3x3, x: *const f32, dy: *const f32, n: usize, c0: usize) -> [__m256; 9] {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    // Output columns whose three taps are all in bounds (as in the forward).
    let ox_in_hi = if wd >= 2 { ((wd - 2) / st + 1).min(ow) } else { 0 };
    // SAFETY (every load): pixel indices stay inside the batch by the tap clipping, channels
    // inside c0..c0 + 8 ≤ c (caller).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 9];
        {
            for oy in 0..oh {
                let iyp = oy * st;
                let (ky_lo, ky_hi) = taps(iyp, h);
                let full_rows = ky_lo == 0 && ky_hi == 3;
                for ox in 0..ow {
                    let ixp = ox * st;
                    let g = _mm256_loadu_ps(dy.add(((n * oh + oy) * ow + ox) * c + c0));
                    if full_rows && ox >= 1 && ox < ox_in_hi {
                        let top = x.add(((n * h + iyp - 1) * wd + ixp - 1) * c + c0);
                        for (t, a) in acc.iter_mut().enumerate() {
                            let p = top.add(((t / 3) * wd + t % 3) * c);
                            *a = _mm256_fmadd_ps(_mm256_loadu_ps(p), g, *a);
                        }
                        continue;
                    }
                    let (kx_lo, kx_hi) = taps(ixp, wd);
                    for (t, a) in acc.iter_mut().enumerate() {
                        let (ky, kx) = (t / 3, t % 3);
                        if ky >= ky_lo && ky < ky_hi && kx >= kx_lo && kx < kx_hi {
                            let inp = (n * h + iyp + ky - 1) * wd + ixp + kx - 1;
                            *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(inp * c + c0)), g, *a);
                        }
                    }
                }
            }
        }
        acc
    }
}
