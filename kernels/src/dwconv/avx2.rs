//! x86_64 AVX2+FMA+F16C depthwise 3x3 forward: channel-vectorised, 8 channels per ymm.
//!
//! For each block of 8 channels the 9 taps and the bias are widened to f32 once (F16C for f16
//! storage) and held in 10 ymm registers; the block then sweeps every output pixel. Interior
//! pixels (all 9 taps in bounds) run an unrolled 9-FMA body with no bounds logic; border
//! pixels clip their tap range. A last block of fewer than 8 channels uses masked loads and
//! stores, so nothing outside the slices is touched. Accumulation order per output is bias,
//! then taps in row-major order, fused multiply-adds.

use super::{taps, WTile, BLOCK};
use crate::act::Act;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::x86_64::*;

/// Widens `src` (at most [`BLOCK`] values) into `dst[..src.len()]`, zeroing the rest.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen<W: Elem>(src: &[W], dst: &mut [f32; BLOCK]) {
    let n = src.len().min(BLOCK);
    let f16w = TypeId::of::<W>() == TypeId::of::<f16>();
    if n == BLOCK {
        // SAFETY: 8 elements of `src` are readable (as f16 bits when `W` is `f16`, else as
        // f32, the only other `Elem`); `dst` holds 8 f32; the caller vouches for F16C.
        unsafe {
            let v = if f16w {
                _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr() as *const __m128i))
            } else {
                _mm256_loadu_ps(src.as_ptr() as *const f32)
            };
            _mm256_storeu_ps(dst.as_mut_ptr(), v);
        }
        return;
    }
    dst.fill(0.0);
    for (d, v) in dst.iter_mut().zip(&src[..n]) {
        *d = v.to_f32();
    }
}

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    let c = s.c;
    let mut tile = WTile::default();
    for c0 in (0..c).step_by(BLOCK) {
        let cb = BLOCK.min(c - c0);
        for t in 0..9 {
            // SAFETY: CPU features vouched for by the caller.
            unsafe { widen(&w[t * c + c0..t * c + c0 + cb], &mut tile.0[t]) };
        }
        match bias {
            // SAFETY: as above.
            Some(b) => unsafe { widen(&b[c0..c0 + cb], &mut tile.0[9]) },
            None => tile.0[9].fill(0.0),
        }
        // SAFETY: x and y have the checked lengths, c0 + cb ≤ c; CPU features vouched for.
        unsafe {
            if cb == BLOCK {
                block::<false>(s, x.as_ptr().add(c0), &tile, act, y.as_mut_ptr().add(c0), cb);
            } else {
                block::<true>(s, x.as_ptr().add(c0), &tile, act, y.as_mut_ptr().add(c0), cb);
            }
        }
    }
}

/// One 8-channel block over every output pixel. `x` and `y` point at channel `c0` of pixel 0;
/// pixel `p` of either is `c` floats further on. With `MASKED`, only the first `cb` lanes are
/// read and written.
///
/// # Safety
/// `x` is readable and `y` writable at `p·c + l` for every pixel `p` of the shape and lane
/// `l < cb` (`l < 8` when not `MASKED`); the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const MASKED: bool>(s: &DwConv3x3, x: *const f32, tile: &WTile, act: Act, y: *mut f32, cb: usize) {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    // SAFETY (all loads/stores below): every pixel index is < n·h·w (input) or
    // < n·out_h·out_w (output) by the tap clipping, so the caller's guarantee covers it.
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cb as i32), lanes);
    let ld = |p: *const f32| -> __m256 {
        if MASKED {
            // SAFETY: see above; masked-off lanes are not read.
            unsafe { _mm256_maskload_ps(p, mask) }
        } else {
            // SAFETY: see above.
            unsafe { _mm256_loadu_ps(p) }
        }
    };
    let wv: [__m256; 9] = core::array::from_fn(|t| {
        // SAFETY: the tile rows are 8 f32.
        unsafe { _mm256_loadu_ps(tile.0[t].as_ptr()) }
    });
    // SAFETY: the tile row is 8 f32.
    let bv = unsafe { _mm256_loadu_ps(tile.0[9].as_ptr()) };
    let relu = act == Act::Relu;
    let zero = _mm256_setzero_ps();
    // Output columns whose three taps are all in bounds: ox·st ≥ 1 and ox·st + 1 ≤ w − 1.
    let ox_in_hi = if wd >= 2 { ((wd - 2) / st + 1).min(ow) } else { 0 };
    for n in 0..s.n {
        for oy in 0..oh {
            let iyp = oy * st;
            let (ky_lo, ky_hi) = taps(iyp, h);
            let full_rows = ky_lo == 0 && ky_hi == 3;
            let out_row = (n * oh + oy) * ow;
            for ox in 0..ow {
                let ixp = ox * st;
                let mut acc = bv;
                if full_rows && ox >= 1 && ox < ox_in_hi {
                    // Interior: input pixel (iyp − 1 + ky, ixp − 1 + kx), all in bounds.
                    let base = (n * h + iyp - 1) * wd + ixp - 1;
                    for ky in 0..3 {
                        let row = base + ky * wd;
                        // SAFETY: pixels row..row+3 are in bounds (interior).
                        unsafe {
                            acc = _mm256_fmadd_ps(ld(x.add(row * c)), wv[ky * 3], acc);
                            acc = _mm256_fmadd_ps(ld(x.add((row + 1) * c)), wv[ky * 3 + 1], acc);
                            acc = _mm256_fmadd_ps(ld(x.add((row + 2) * c)), wv[ky * 3 + 2], acc);
                        }
                    }
                } else {
                    let (kx_lo, kx_hi) = taps(ixp, wd);
                    for ky in ky_lo..ky_hi {
                        let row = (n * h + iyp + ky - 1) * wd;
                        for kx in kx_lo..kx_hi {
                            // SAFETY: the tap is clipped to the image.
                            let xv = ld(unsafe { x.add((row + ixp + kx - 1) * c) });
                            acc = _mm256_fmadd_ps(xv, wv[ky * 3 + kx], acc);
                        }
                    }
                }
                if relu {
                    acc = _mm256_max_ps(acc, zero);
                }
                // SAFETY: output pixel out_row + ox < n·out_h·out_w.
                unsafe {
                    let dst = y.add((out_row + ox) * c);
                    if MASKED {
                        _mm256_maskstore_ps(dst, mask, acc);
                    } else {
                        _mm256_storeu_ps(dst, acc);
                    }
                }
            }
        }
    }
}
