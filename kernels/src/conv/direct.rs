//! Direct forward for KxK convs with few input channels (MobileNetV1's stem: 3x3, 3 → 8·k
//! channels) on AVX2 (`avx2.rs`) and NEON (`neon.rs`): no im2col. An im2col + GEMM of such a
//! conv is dominated by moving data (27-deep products over a 16-column tile of which the ×0.25
//! stem fills 8): 10–17 µs for the ×0.25 stem at batch 1 on AVX2, its largest layer; on NEON
//! the im2col, the GEMM's packing and its 8x8 tiles were 136 K of the ×0.25 model's 680 K
//! guest instructions per inference.
//!
//! Output rows are taken in runs with the same in-bounds kernel rows; in a run each row's interior
//! pixels (all kernel columns in bounds) form a line along the row, and each border column a line
//! down the run (its kernel columns clipped the same way), computed in groups of up to `GROUP` (8)
//! pixels, one accumulator each, so the FMA chains overlap (the ×0.25 stem's left border column,
//! one pixel at a time, was a third of its FMA-latency time: in the model 2.1–2.2 → 1.85–1.95 µs);
//! a line is split into groups of sizes differing by at most one. AVX2 runs groups of up to 6
//! pixels × 16 channels where `c_out` fills two vectors (12 chains, 8 loads per 12 FMAs; 8 × 8 had
//! 9 loads per 8 FMAs and only 8 chains for Zen 2's 5-cycle latency): MobileNetV1 1.0's stem at
//! batch 1, AMD EPYC VM, three alternating rounds, 8.8–11.8 → 7.8–8.4 µs. Each accumulator holds 8
//! output channels (one ymm, two q registers) and sums `x·w` over the in-bounds `(ky, kx, ci)` in
//! order from 0, fused; then `y = act(sum + b)` — the same bits on both paths. The weights (and
//! bias) are widened once per call into a stack tile with the channels padded to a multiple of 8
//! (zeros), so every weight load is a whole vector and only the store of a last partial block of
//! channels is narrower. This file holds the driver; each path's `group` (the pixels of one group)
//! is its `Pixels` impl.

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2;
#[cfg(target_arch = "aarch64")]
pub(super) mod neon;

use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Conv2d;

/// Largest widened weight tile, f32 values (8 KiB of stack).
const MAX_W: usize = 2048;
/// Most output channels (the bias tile).
const MAX_C_OUT: usize = 256;
/// Most products per output (`kh·kw·c_in`): deeper convs are faster as im2col + GEMM in the
/// models. (ResNet50's 7x7 stem, 147 deep, ran 63 µs direct against 70 µs as im2col + GEMM
/// in the criterion bench, but no faster in the model at batch 1 — 113–116 µs either way —
/// and the 37 KiB weight tile's zeroing slowed the small stems: not kept.)
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
pub(super) struct Job<'a> {
    s: &'a Conv2d,
    /// Widened weights `[ky][kx][ci][cp]`, `cp` = `c_out` rounded up to 8 (zeros).
    wt: &'a [f32],
    cp: usize,
    /// Widened bias (zeros without one), `cp` values.
    bt: &'a [f32],
    relu: bool,
}

/// One path's arithmetic: the pixels of one group.
pub(super) trait Pixels {
    /// Pixels per group for a job of `cp` padded output channels (at most [`GROUP`]).
    fn group_len(_cp: usize) -> usize {
        GROUP
    }

    /// `G` pixels of a line from `x`, `y` (one accumulator each per 8 output channels, so the
    /// FMA chains overlap): `Σ x·w` over the in-bounds `(ky, kx, ci)` in order, fused, then
    /// the bias and the activation (ReLU: `v > 0 ? v : +0`).
    ///
    /// # Safety
    /// As [`line()`] for pixels `0..G`, and the CPU supports the path's features.
    unsafe fn group<const G: usize>(job: &Job<'_>, x: *const f32, y: *mut f32, l: Line);
}

/// `y = act(conv(x, w) + b)` for a shape [`applies`] accepts, with `P`'s arithmetic (inlined
/// into each path's entry, which enables its features).
///
/// # Safety
/// `s` is valid, [`applies`]`(s)`, `x`, `w`, `bias`, `y` have the lengths `conv2d_fwd` checks,
/// and the CPU supports `P`'s features.
#[inline(always)]
unsafe fn fwd<P: Pixels, W: Elem>(s: &Conv2d, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
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
    let job = Job { s, wt: &wt[..depth * cp], cp, bt: &bt[..cp], relu: act == Act::Relu };
    let (oh, ow) = (s.out_h(), s.out_w());
    // Output columns whose kernel columns are all in bounds: ox·stride ≥ pad and
    // ox·stride − pad + kw ≤ w.
    let ox_lo = s.pad.div_ceil(s.stride).min(ow);
    let ox_hi = if s.w + s.pad >= s.kw { ((s.w + s.pad - s.kw) / s.stride + 1).min(ow) } else { 0 }.max(ox_lo);
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    for n in 0..s.n {
        // Runs of output rows with the same in-bounds kernel rows.
        let mut oy = 0;
        while oy < oh {
            let ky = clip(oy * s.stride, s.pad, s.h, s.kh);
            let mut end = oy + 1;
            while end < oh && clip(end * s.stride, s.pad, s.h, s.kh) == ky {
                end += 1;
            }
            // The first in-bounds input of output pixel (oy, ox) for kernel columns from kx_lo,
            // and its output: inside `x` and `y` by the clipping.
            let at = |oy: usize, ox: usize, kx_lo: usize| {
                let (iy, ix) = (oy * s.stride + ky.0 - s.pad, ox * s.stride + kx_lo - s.pad);
                (((n * s.h + iy) * s.w + ix) * c_in, ((n * oh + oy) * ow + ox) * c_out)
            };
            // Each row's interior pixels, along the row.
            for r in oy..end {
                if ox_lo < ox_hi {
                    let (xo, yo) = at(r, ox_lo, 0);
                    let l = Line { x: s.stride * c_in, y: c_out, len: ox_hi - ox_lo, ky, kx: (0, s.kw) };
                    // SAFETY: the line's windows (interior columns, rows clipped) and outputs
                    // are in bounds; AVX2/FMA vouched for by the caller.
                    unsafe { line::<P>(&job, xp.add(xo), yp.add(yo), l) };
                }
            }
            // Each border column down the run's rows.
            for ox in (0..ox_lo).chain(ox_hi..ow) {
                let kx = clip(ox * s.stride, s.pad, s.w, s.kw);
                let (xo, yo) = at(oy, ox, kx.0);
                let l = Line { x: s.stride * s.w * c_in, y: ow * c_out, len: end - oy, ky, kx };
                // SAFETY: as above, with the column's kernel columns clipped.
                unsafe { line::<P>(&job, xp.add(xo), yp.add(yo), l) };
            }
            oy = end;
        }
    }
}

/// Output pixels in a line (along a row, or down a border column): pixel `p`'s first in-bounds
/// input at `x + p·x` (from the line's start), its output at `y + p·y`; kernel rows `ky.0..ky.1`
/// and columns `kx.0..kx.1` in bounds for all of them.
#[derive(Clone, Copy)]
pub(super) struct Line {
    x: usize,
    y: usize,
    len: usize,
    ky: (usize, usize),
    kx: (usize, usize),
}

/// The pixels of a line in groups of up to [`GROUP`].
///
/// # Safety
/// Every pixel's in-bounds inputs (tap `(ky, kx, ci)` at `x + p·l.x + ((ky − ky.0)·w + kx −
/// kx.0)·c_in + ci`) and its `c_out` outputs are in bounds; the CPU supports `P`'s features.
#[inline(always)]
unsafe fn line<P: Pixels>(job: &Job<'_>, x: *const f32, y: *mut f32, l: Line) {
    // As few groups as the path's group length allows, of sizes differing by at most one
    // (13 pixels as 5 + 4 + 4, not 6 + 6 + 1: a lone pixel's chains wait on the FMA latency).
    let groups = l.len.div_ceil(P::group_len(job.cp).min(GROUP));
    let mut p = 0;
    for i in 0..groups {
        let g = l.len / groups + usize::from(i < l.len % groups);
        // SAFETY: pixels p..p + g of the line (caller).
        unsafe {
            let (x, y) = (x.add(p * l.x), y.add(p * l.y));
            match g {
                8 => P::group::<8>(job, x, y, l),
                7 => P::group::<7>(job, x, y, l),
                6 => P::group::<6>(job, x, y, l),
                5 => P::group::<5>(job, x, y, l),
                4 => P::group::<4>(job, x, y, l),
                3 => P::group::<3>(job, x, y, l),
                2 => P::group::<2>(job, x, y, l),
                _ => P::group::<1>(job, x, y, l),
            }
        }
        p += g;
    }
}
