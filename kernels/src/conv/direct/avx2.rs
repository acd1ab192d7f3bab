//! AVX2+FMA arithmetic of the direct forward: 8 output channels per ymm accumulator.

use super::{Job, Line, Pixels};
use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Conv2d;
use core::arch::x86_64::*;

/// The AVX2 path.
pub(in crate::conv) struct Avx2;

/// `y = act(conv(x, w) + b)` for a shape [`super::applies`] accepts.
///
/// # Safety
/// `s` is valid, `applies(s)`, `x`, `w`, `bias`, `y` have the lengths `conv2d_fwd` checks, and
/// the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::conv) unsafe fn fwd<W: Elem>(
    s: &Conv2d,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) {
    // SAFETY: forwarded contract; AVX2, FMA, F16C present.
    unsafe { super::fwd::<Avx2, W>(s, x, w, bias, act, y) }
}

/// Adds the bias, applies the activation and stores 8 channels from `j` (masked on the last
/// block of a `c_out` that is not a multiple of 8).
///
/// # Safety
/// `out[j..]` holds `min(8, c_out − j)` values; `j < cp`; AVX2 vouched for by the caller.
#[inline(always)]
unsafe fn store(job: &Job<'_>, acc: __m256, j: usize, out: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe {
        let mut v = _mm256_add_ps(acc, _mm256_loadu_ps(job.bt.as_ptr().add(j)));
        if job.relu {
            v = _mm256_max_ps(v, _mm256_setzero_ps());
        }
        if j + 8 <= job.s.c_out {
            _mm256_storeu_ps(out.as_mut_ptr().add(j), v);
        } else {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((job.s.c_out - j) as i32), lanes);
            _mm256_maskstore_ps(out.as_mut_ptr().add(j), tail, v);
        }
    }
}

impl Pixels for Avx2 {
    /// 6 pixels × 16 channels (12 accumulators: enough FMA chains in flight for Zen 2's
    /// 5-cycle latency, 8 loads per 12 FMAs) where `c_out` fills two vectors, else 8 × 8.
    fn group_len(cp: usize) -> usize {
        if cp >= 16 {
            6
        } else {
            8
        }
    }

    #[inline(always)]
    unsafe fn group<const G: usize>(job: &Job<'_>, x: *const f32, y: *mut f32, l: Line) {
        let s = job.s;
        let (c_in, c_out, cp) = (s.c_in, s.c_out, job.cp);
        // Taps (kx, ci) of a kernel row are contiguous in the input and in the weights: t from
        // kx.0·c_in to kx.1·c_in, input offset t − kx.0·c_in.
        let (t_lo, t_hi) = (l.kx.0 * c_in, l.kx.1 * c_in);
        let mut j = 0;
        // Two vectors of output channels per pass while 2G accumulators fit the registers.
        while G <= 6 && j + 16 <= cp {
            // SAFETY (every access below): in-bounds taps of the G pixels (caller), weight rows
            // (ky·kw·c_in + t) < depth, lanes j..j+16 ≤ cp inside `wt`, outputs of the G pixels.
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); 2]; G];
                for ky in l.ky.0..l.ky.1 {
                    let xrow = x.add((ky - l.ky.0) * s.w * c_in).wrapping_sub(t_lo);
                    let wrow = job.wt.as_ptr().add(ky * s.kw * c_in * cp + j);
                    for t in t_lo..t_hi {
                        let (w0, w1) = (_mm256_loadu_ps(wrow.add(t * cp)), _mm256_loadu_ps(wrow.add(t * cp + 8)));
                        for (p, a) in acc.iter_mut().enumerate() {
                            let xv = _mm256_broadcast_ss(&*xrow.wrapping_add(p * l.x + t));
                            a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                            a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate() {
                    let out = core::slice::from_raw_parts_mut(y.add(p * l.y), c_out);
                    store(job, a[0], j, out);
                    store(job, a[1], j + 8, out);
                }
            }
            j += 16;
        }
        while j < cp {
            // SAFETY (every access below): as above, lanes j..j+8 ≤ cp.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); G];
                for ky in l.ky.0..l.ky.1 {
                    let xrow = x.add((ky - l.ky.0) * s.w * c_in).wrapping_sub(t_lo);
                    let wrow = job.wt.as_ptr().add(ky * s.kw * c_in * cp + j);
                    for t in t_lo..t_hi {
                        let wv = _mm256_loadu_ps(wrow.add(t * cp));
                        for (p, a) in acc.iter_mut().enumerate() {
                            let xv = _mm256_broadcast_ss(&*xrow.wrapping_add(p * l.x + t));
                            *a = _mm256_fmadd_ps(xv, wv, *a);
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate() {
                    store(job, *a, j, core::slice::from_raw_parts_mut(y.add(p * l.y), c_out));
                }
            }
            j += 8;
        }
    }
}
