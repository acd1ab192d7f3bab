//! AVX2 batch-norm kernels, bit-identical to the portable ones (the same operations in the same
//! order, no fused multiply-add).

use super::scalar::{
    apply_row, blocked_sums, bwd_apply_row, bwd_sums_row, infer_row, m2_row, moments_by, sum_row, Block, BwdSums,
    Stored, Tile, BLOCK,
};
use super::ReluAfter;
use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Channels;
use core::arch::x86_64::*;

/// [`super::scalar::infer`] 8 channels per instruction: the same subtract, multiply, add
/// (no fused multiply-add) and ReLU as `max(v, 0)` (0 for NaN, as `Act::apply`), so the
/// result is bit-identical.
///
/// # Safety
/// `x` and `y` hold whole rows of `c` channels, the stored statistics `c` each; the CPU
/// supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn infer<W: Elem>(c: usize, st: &Stored<'_, W>, x: &[f32], act: Act, y: &mut [f32]) {
    let relu = act == Act::Relu;
    let mut c0 = 0;
    while c0 < c {
        let cb = BLOCK.min(c - c0);
        let k = Block::of(st, c0, cb);
        let full = cb / 8 * 8;
        for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let (yb, xb) = (&mut yr[c0..c0 + cb], &xr[c0..c0 + cb]);
            let mut i = 0;
            while i < full {
                // SAFETY: i + 8 ≤ cb: inside the row block and the constant arrays.
                unsafe {
                    let v = _mm256_sub_ps(_mm256_loadu_ps(xb.as_ptr().add(i)), _mm256_loadu_ps(k.mean.as_ptr().add(i)));
                    let v = _mm256_add_ps(
                        _mm256_mul_ps(v, _mm256_loadu_ps(k.scale.as_ptr().add(i))),
                        _mm256_loadu_ps(k.beta.as_ptr().add(i)),
                    );
                    let v = if relu { _mm256_max_ps(v, _mm256_setzero_ps()) } else { v };
                    _mm256_storeu_ps(yb.as_mut_ptr().add(i), v);
                }
                i += 8;
            }
            infer_row(full, &k, xb, act, yb);
        }
        c0 += cb;
    }
}

/// Loads 8 floats at `p + i`.
///
/// # Safety
/// `p + i .. p + i + 8` is inside one slice; the CPU supports AVX.
#[inline(always)]
unsafe fn ld(p: &[f32], i: usize) -> __m256 {
    debug_assert!(i + 8 <= p.len());
    // SAFETY: the caller keeps i + 8 within `p`.
    unsafe { _mm256_loadu_ps(p.as_ptr().add(i)) }
}

/// Stores 8 floats at `p + i`.
///
/// # Safety
/// As [`ld`].
#[inline(always)]
unsafe fn st(p: &mut [f32], i: usize, v: __m256) {
    debug_assert!(i + 8 <= p.len());
    // SAFETY: the caller keeps i + 8 within `p`.
    unsafe { _mm256_storeu_ps(p.as_mut_ptr().add(i), v) }
}

/// [`gate`](super::scalar::gate) for 8 channels from `i`: the BN output recomputed as [`apply`] computes it
/// (subtract, multiply by `γ·invstd`, add `β`), compared `> 0` (false for NaN), masking `dy`.
///
/// # Safety
/// As [`ld`], for `dy`, `x`, `mean`, `invstd` and the ReLU's `gamma`, `beta`.
#[inline(always)]
unsafe fn gate8(relu: Option<&ReluAfter<'_>>, dy: &[f32], x: &[f32], mean: &[f32], invstd: &[f32], i: usize) -> __m256 {
    // SAFETY: as the caller's.
    unsafe {
        let d = ld(dy, i);
        match relu {
            None => d,
            Some(r) => {
                let k = _mm256_mul_ps(ld(r.gamma, i), ld(invstd, i));
                let v = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(ld(x, i), ld(mean, i)), k), ld(r.beta, i));
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_setzero_ps()), d)
            }
        }
    }
}

/// [`super::scalar::moments`] 8 channels per instruction: per channel the same blocked sums
/// (`mean` and `m2` are the accumulators), so the result is bit-identical.
///
/// # Safety
/// `x` holds `s.rows` whole rows of `s.c` channels, `mean` and `m2` `s.c` each; the CPU
/// supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn moments(s: &Channels, x: &[f32], mean: &mut [f32], m2: &mut [f32]) {
    // SAFETY (both closures): the tiles lie inside `x` (s.rows rows of s.c) and `mean` covers
    // their channels; AVX2 present (caller).
    moments_by(s, mean, m2, |t, p| unsafe { sum_tile(t, x, p) }, |t, mean, p| unsafe { m2_tile(t, x, mean, p) });
}

/// One tile of [`moments`]' sums: `p[j] += x[r][c0 + j]`, rows `r0..r1` in order.
///
/// # Safety
/// The tile lies inside `x`; the CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn sum_tile(t: &Tile, x: &[f32], p: &mut [f32]) {
    let full = t.cb / 8 * 8;
    for r in t.r0..t.r1 {
        let row = t.row(x, r);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full ≤ cb, the length of `row` and `p` (`blocked_sums`).
            unsafe { st(p, i, _mm256_add_ps(ld(p, i), ld(row, i))) };
        }
        sum_row(full, row, p);
    }
}

/// One tile of [`moments`]' squared deviations: `p[j] += (x[r][c0 + j] − mean[c0 + j])²`.
///
/// # Safety
/// As [`sum_tile`], and `mean` holds the tile's channels (`cb`).
#[target_feature(enable = "avx2")]
unsafe fn m2_tile(t: &Tile, x: &[f32], mean: &[f32], p: &mut [f32]) {
    let full = t.cb / 8 * 8;
    for r in t.r0..t.r1 {
        let row = t.row(x, r);
        for i in (0..full).step_by(8) {
            // SAFETY: as in `sum_tile`.
            unsafe {
                let d = _mm256_sub_ps(ld(row, i), ld(mean, i));
                st(p, i, _mm256_add_ps(ld(p, i), _mm256_mul_ps(d, d)));
            }
        }
        m2_row(full, row, mean, p);
    }
}

/// [`super::scalar::apply`] 8 channels per instruction (ReLU as in [`infer`]), bit-identical.
///
/// # Safety
/// `x` and `y` hold whole rows of `c` channels, the statistics `c` each; the CPU supports AVX2.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn apply(
    c: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    act: Act,
    y: &mut [f32],
) {
    let relu = act == Act::Relu;
    let full = c / 8 * 8;
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full ≤ c, the length of every slice indexed.
            unsafe {
                let k = _mm256_mul_ps(ld(gamma, i), ld(invstd, i));
                let v = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(ld(xr, i), ld(mean, i)), k), ld(beta, i));
                st(yr, i, if relu { _mm256_max_ps(v, _mm256_setzero_ps()) } else { v });
            }
        }
        apply_row(full, xr, gamma, beta, mean, invstd, act, yr);
    }
}

/// [`super::scalar::bwd_sums`] 8 channels per instruction, bit-identical (the same blocked sums).
///
/// # Safety
/// `x` and `dy` hold whole rows of `c` channels, the other slices (and the ReLU's) `c` each;
/// the CPU supports AVX2.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn bwd_sums(
    c: usize,
    x: &[f32],
    dy: &[f32],
    relu: Option<&ReluAfter<'_>>,
    mean: &[f32],
    invstd: &[f32],
    sum_dy: &mut [f32],
    sum_dy_xhat: &mut [f32],
) {
    // SAFETY: the tiles lie inside `x`, `dy` and the vectors; AVX2 present (caller).
    blocked_sums(c, x.len() / c, [sum_dy, sum_dy_xhat], |t, [pd, px]| unsafe {
        bwd_tile(t, x, dy, relu, mean, invstd, pd, px)
    });
}

/// One tile of [`bwd_sums`]: `pd[j] += g`, `px[j] += g·x̂` over rows `r0..r1` in order.
///
/// # Safety
/// The tile lies inside `x` and `dy`, the vectors (and the ReLU's) cover its channels; the
/// CPU supports AVX2.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn bwd_tile(
    t: &Tile,
    x: &[f32],
    dy: &[f32],
    relu: Option<&ReluAfter<'_>>,
    mean: &[f32],
    invstd: &[f32],
    pd: &mut [f32],
    px: &mut [f32],
) {
    let full = t.cb / 8 * 8;
    let relu = relu.map(|r| t.relu(r));
    let (mean, invstd) = (t.cols(mean), t.cols(invstd));
    for r in t.r0..t.r1 {
        let (xr, dyr) = (t.row(x, r), t.row(dy, r));
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full ≤ cb, the length of every slice indexed.
            unsafe {
                let g = gate8(relu.as_ref(), dyr, xr, mean, invstd, i);
                let xhat = _mm256_mul_ps(_mm256_sub_ps(ld(xr, i), ld(mean, i)), ld(invstd, i));
                st(pd, i, _mm256_add_ps(ld(pd, i), g));
                st(px, i, _mm256_add_ps(ld(px, i), _mm256_mul_ps(g, xhat)));
            }
        }
        bwd_sums_row(full, xr, dyr, relu.as_ref(), mean, invstd, pd, px);
    }
}

/// [`super::scalar::bwd_apply`] 8 channels per instruction, bit-identical.
///
/// # Safety
/// `x`, `dy` and `dx` hold whole rows of `c` channels, the slices of `b` (and the ReLU's) `c`
/// each; the CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn bwd_apply(
    c: usize,
    b: &BwdSums<'_>,
    x: &[f32],
    dy: &[f32],
    relu: Option<&ReluAfter<'_>>,
    dx: &mut [f32],
) {
    let inv_n = 1.0 / b.count as f32;
    let inv = _mm256_set1_ps(inv_n);
    let full = c / 8 * 8;
    for ((dxr, xr), dyr) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 ≤ full ≤ c, the length of every slice indexed.
            unsafe {
                let g = gate8(relu, dyr, xr, b.mean, b.invstd, i);
                let xhat = _mm256_mul_ps(_mm256_sub_ps(ld(xr, i), ld(b.mean, i)), ld(b.invstd, i));
                let centred = _mm256_sub_ps(
                    _mm256_sub_ps(g, _mm256_mul_ps(ld(b.sum_dy, i), inv)),
                    _mm256_mul_ps(xhat, _mm256_mul_ps(ld(b.sum_dy_xhat, i), inv)),
                );
                st(dxr, i, _mm256_mul_ps(_mm256_mul_ps(ld(b.gamma, i), ld(b.invstd, i)), centred));
            }
        }
        bwd_apply_row(full, b, inv_n, xr, dyr, relu, dxr);
    }
}
