//! AVX2 direct forward for KxK convs with few input channels (MobileNetV1's stem: 3x3, 3 →
//! 8·k channels): no im2col. An im2col + GEMM of such a conv is dominated by moving data
//! (27-deep products over a 16-column tile of which the ×0.25 stem fills 8): 10–17 µs for the
//! ×0.25 stem at batch 1, its largest layer.
//!
//! Per output row the in-bounds kernel rows are fixed; pixels whose kernel columns are all in
//! bounds go in groups of up to [`GROUP`] (one accumulator each, so the FMA chains overlap),
//! border pixels one at a time over their in-bounds columns. Each accumulator holds 8 output
//! channels and sums `x·w` over `(ky, kx, ci)` in order from 0; then `y = act(sum + b)`. The
//! weights (and bias) are widened once per call into a stack tile with the channels padded to
//! a multiple of 8 (zeros), so every weight load is a whole vector and only the store of a
//! last partial block of channels is masked.

use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Conv2d;
use core::arch::x86_64::*;

/// Largest widened weight tile, f32 values (8 KiB of stack).
const MAX_W: usize = 2048;
/// Most output channels (the bias tile).
const MAX_C_OUT: usize = 256;
/// Most products per output (`kh·kw·c_in`): deeper convs are faster as im2col + GEMM.
const MAX_DEPTH: usize = 64;
/// Pixels per group: independent accumulators in flight.
const GROUP: usize = 8;

/// True when the direct path takes `s`: not pointwise, at most 8 input channels and
/// [`MAX_DEPTH`] products per output, and the padded weight tile within [`MAX_W`].
pub(super) fn applies(s: &Conv2d) -> bool {
    let depth = s.kh * s.kw * s.c_in;
    !s.is_pointwise()
        && s.c_in <= 8
        && depth <= MAX_DEPTH
        && s.c_out <= MAX_C_OUT
        && depth * s.c_out.next_multiple_of(8) <= MAX_W
}

/// Kernel taps `lo..hi` (of `k`) whose padded position `start + t` lies in `pad..pad + len`.
fn clip(start: usize, pad: usize, len: usize, k: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(start).min(k);
    let hi = (pad + len).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

/// What every pixel of one call shares.
struct Job<'a> {
    s: &'a Conv2d,
    x: &'a [f32],
    /// Widened weights `[ky][kx][ci][cp]`, `cp` = `c_out` rounded up to 8 (zeros).
    wt: &'a [f32],
    cp: usize,
    /// Widened bias (zeros without one), `cp` values.
    bt: &'a [f32],
    relu: bool,
    /// Lane mask of the last block of 8 channels (all lanes when `c_out % 8 == 0`).
    tail: __m256i,
}

/// `y = act(conv(x, w) + b)` for a shape [`applies`] accepts.
///
/// # Safety
/// `s` is valid, [`applies`]`(s)`, `x`, `w`, `bias`, `y` have the lengths `conv2d_fwd` checks,
/// and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fwd<W: Elem>(s: &Conv2d, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    let (c_in, c_out) = (s.c_in, s.c_out);
    let cp = c_out.next_multiple_of(8);
    let depth = s.kh * s.kw * c_in;
    let mut wt = [0.0f32; MAX_W];
    for (dst, src) in wt.chunks_exact_mut(cp).zip(w.chunks_exact(c_out)).take(depth) {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = v.to_f32();
        }
    }
    let mut bt = [0.0f32; MAX_C_OUT];
    if let Some(b) = bias {
        for (d, v) in bt.iter_mut().zip(b) {
            *d = v.to_f32();
        }
    }
    let rem = (c_out % 8) as i32;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let tail = if rem == 0 { _mm256_set1_epi32(-1) } else { _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lanes) };
    let job = Job { s, x, wt: &wt[..depth * cp], cp, bt: &bt[..cp], relu: act == Act::Relu, tail };
    let (oh, ow) = (s.out_h(), s.out_w());
    // Output columns whose kernel columns are all in bounds: ox·stride ≥ pad and
    // ox·stride − pad + kw ≤ w.
    let ox_lo = s.pad.div_ceil(s.stride).min(ow);
    let ox_hi = if s.w + s.pad >= s.kw { ((s.w + s.pad - s.kw) / s.stride + 1).min(ow) } else { 0 }.max(ox_lo);
    for n in 0..s.n {
        for oy in 0..oh {
            let (ky_lo, ky_hi) = clip(oy * s.stride, s.pad, s.h, s.kh);
            let row = (n * oh + oy) * ow;
            let mut ox = ox_lo;
            while ox < ox_hi {
                let g = GROUP.min(ox_hi - ox);
                let out = &mut y[(row + ox) * c_out..(row + ox + g) * c_out];
                // SAFETY: pixels ox..ox+g are interior (all kernel columns in bounds), rows
                // ky_lo..ky_hi in bounds; `out` holds their g·c_out outputs; AVX2/FMA vouched.
                unsafe {
                    match g {
                        8 => group::<8>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        7 => group::<7>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        6 => group::<6>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        5 => group::<5>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        4 => group::<4>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        3 => group::<3>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        2 => group::<2>(&job, n, oy, ox, ky_lo, ky_hi, out),
                        _ => group::<1>(&job, n, oy, ox, ky_lo, ky_hi, out),
                    }
                }
                ox += g;
            }
            for ox in (0..ox_lo).chain(ox_hi..ow) {
                let out = &mut y[(row + ox) * c_out..(row + ox + 1) * c_out];
                // SAFETY: as above for one pixel, over its in-bounds kernel columns only.
                unsafe { border(&job, n, oy, ox, ky_lo, ky_hi, out) };
            }
        }
    }
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
            _mm256_maskstore_ps(out.as_mut_ptr().add(j), job.tail, v);
        }
    }
}

/// `G` interior pixels `ox..ox+G` of output row `oy` of image `n`.
///
/// # Safety
/// Those pixels' kernel columns are all in bounds, rows `ky_lo..ky_hi` are; `out` holds their
/// `G·c_out` outputs; the CPU supports AVX2 and FMA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group<const G: usize>(
    job: &Job<'_>,
    n: usize,
    oy: usize,
    ox: usize,
    ky_lo: usize,
    ky_hi: usize,
    out: &mut [f32],
) {
    let s = job.s;
    let (c_in, c_out, cp) = (s.c_in, s.c_out, job.cp);
    let x0 = ox * s.stride - s.pad;
    for j in (0..cp).step_by(8) {
        // SAFETY (every access below): image rows iy = oy·stride + ky − pad in bounds for ky in
        // ky_lo..ky_hi, columns x0 + p·stride + kx < w for p < G, kx < kw (interior), so each
        // input index is inside `x`; weight rows (ky·kw + kx)·c_in + ci < depth, lanes j..j+8
        // ≤ cp inside `wt`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); G];
            for ky in ky_lo..ky_hi {
                let iy = oy * s.stride + ky - s.pad;
                let xrow = job.x.as_ptr().add(((n * s.h + iy) * s.w + x0) * c_in);
                let wrow = job.wt.as_ptr().add(ky * s.kw * c_in * cp + j);
                for t in 0..s.kw * c_in {
                    // Tap (kx, ci) = (t / c_in, t % c_in): input offset kx·c_in + ci = t.
                    let wv = _mm256_loadu_ps(wrow.add(t * cp));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_broadcast_ss(&*xrow.add(p * s.stride * c_in + t));
                        *a = _mm256_fmadd_ps(xv, wv, *a);
                    }
                }
            }
            for (p, a) in acc.iter().enumerate() {
                store(job, *a, j, &mut out[p * c_out..(p + 1) * c_out]);
            }
        }
    }
}

/// One border pixel `ox` of output row `oy` of image `n`, over its in-bounds kernel columns.
///
/// # Safety
/// Rows `ky_lo..ky_hi` are in bounds; `out` holds its `c_out` outputs; the CPU supports AVX2
/// and FMA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn border(job: &Job<'_>, n: usize, oy: usize, ox: usize, ky_lo: usize, ky_hi: usize, out: &mut [f32]) {
    let s = job.s;
    let (c_in, cp) = (s.c_in, job.cp);
    let (kx_lo, kx_hi) = clip(ox * s.stride, s.pad, s.w, s.kw);
    for j in (0..cp).step_by(8) {
        // SAFETY (every access below): rows and columns clipped to the image; weight rows
        // inside the depth, lanes j..j+8 ≤ cp.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for ky in ky_lo..ky_hi {
                let iy = oy * s.stride + ky - s.pad;
                for kx in kx_lo..kx_hi {
                    let ix = ox * s.stride + kx - s.pad;
                    let xp = job.x.as_ptr().add(((n * s.h + iy) * s.w + ix) * c_in);
                    let wp = job.wt.as_ptr().add((ky * s.kw + kx) * c_in * cp + j);
                    for ci in 0..c_in {
                        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xp.add(ci)), _mm256_loadu_ps(wp.add(ci * cp)), acc);
                    }
                }
            }
            store(job, acc, j, out);
        }
    }
}
