//! aarch64 NEON batch-norm kernels, bit-identical to the portable ones (the same operations in
//! the same order, no fused multiply-add), 4 channels per instruction; the twins of `avx2.rs`.

use super::scalar::{
    apply_row, blocked_sums, bwd_apply_row, bwd_sums_row, infer_row, m2_row, moments_by, sum_row, Block, BwdSums,
    Stored, Tile, BLOCK,
};
use super::ReluAfter;
use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Channels;
use core::arch::aarch64::*;

/// Loads 4 floats at `p + i`.
///
/// # Safety
/// `p + i .. p + i + 4` is inside one slice; the CPU supports NEON.
#[inline(always)]
unsafe fn ld(p: &[f32], i: usize) -> float32x4_t {
    debug_assert!(i + 4 <= p.len());
    // SAFETY: the caller keeps i + 4 within `p`.
    unsafe { vld1q_f32(p.as_ptr().add(i)) }
}

/// Stores 4 floats at `p + i`.
///
/// # Safety
/// As [`ld`].
#[inline(always)]
unsafe fn st(p: &mut [f32], i: usize, v: float32x4_t) {
    debug_assert!(i + 4 <= p.len());
    // SAFETY: the caller keeps i + 4 within `p`.
    unsafe { vst1q_f32(p.as_mut_ptr().add(i), v) }
}

/// `Act::Relu` on 4 lanes: lanes not `> 0` (NaN included) become +0, as `Act::apply`
/// (`vmaxq` would keep a NaN).
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
unsafe fn relu4(v: float32x4_t) -> float32x4_t {
    // SAFETY: NEON vouched for by the caller.
    unsafe {
        let zero = vdupq_n_f32(0.0);
        vbslq_f32(vcgtq_f32(v, zero), v, zero)
    }
}

/// [`super::scalar::infer`] 4 channels per instruction, bit-identical (see `avx2::infer`).
///
/// # Safety
/// `x` and `y` hold whole rows of `c` channels, the stored statistics `c` each; the CPU
/// supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn infer<W: Elem>(c: usize, stats: &Stored<'_, W>, x: &[f32], act: Act, y: &mut [f32]) {
    let relu = act == Act::Relu;
    let mut c0 = 0;
    while c0 < c {
        let cb = BLOCK.min(c - c0);
        let k = Block::of(stats, c0, cb);
        let full = cb / 4 * 4;
        for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let (yb, xb) = (&mut yr[c0..c0 + cb], &xr[c0..c0 + cb]);
            for i in (0..full).step_by(4) {
                // SAFETY: i + 4 ≤ cb: inside the row block and the constant arrays.
                unsafe {
                    let v = vsubq_f32(ld(xb, i), ld(&k.mean, i));
                    let v = vaddq_f32(vmulq_f32(v, ld(&k.scale, i)), ld(&k.beta, i));
                    st(yb, i, if relu { relu4(v) } else { v });
                }
            }
            infer_row(full, &k, xb, act, yb);
        }
        c0 += cb;
    }
}

/// [`super::scalar::gate`] for 4 channels from `i` (see `avx2::gate8`): the BN output
/// recomputed, compared `> 0` (false for NaN), masking `dy` (masked lanes +0).
///
/// # Safety
/// As [`ld`], for `dy`, `x`, `mean`, `invstd` and the ReLU's `gamma`, `beta`.
#[inline(always)]
unsafe fn gate4(
    relu: Option<&ReluAfter<'_>>,
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    invstd: &[f32],
    i: usize,
) -> float32x4_t {
    // SAFETY: as the caller's.
    unsafe {
        let d = ld(dy, i);
        match relu {
            None => d,
            Some(r) => {
                let k = vmulq_f32(ld(r.gamma, i), ld(invstd, i));
                let v = vaddq_f32(vmulq_f32(vsubq_f32(ld(x, i), ld(mean, i)), k), ld(r.beta, i));
                let keep = vcgtq_f32(v, vdupq_n_f32(0.0));
                vreinterpretq_f32_u32(vandq_u32(keep, vreinterpretq_u32_f32(d)))
            }
        }
    }
}

/// [`super::scalar::moments`] 4 channels per instruction: per channel the same blocked sums,
/// so the result is bit-identical.
///
/// # Safety
/// `x` holds `s.rows` whole rows of `s.c` channels, `mean` and `m2` `s.c` each; the CPU
/// supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn moments(s: &Channels, x: &[f32], mean: &mut [f32], m2: &mut [f32]) {
    // SAFETY (both closures): the tiles lie inside `x` (s.rows rows of s.c) and `mean` covers
    // their channels; NEON present (caller).
    moments_by(s, mean, m2, |t, p| unsafe { sum_tile(t, x, p) }, |t, mean, p| unsafe { m2_tile(t, x, mean, p) });
}

/// One tile of [`moments`]' sums: `p[j] += x[r][c0 + j]`, rows `r0..r1` in order.
///
/// # Safety
/// The tile lies inside `x`; the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn sum_tile(t: &Tile, x: &[f32], p: &mut [f32]) {
    let full = t.cb / 4 * 4;
    for r in t.r0..t.r1 {
        let row = t.row(x, r);
        for i in (0..full).step_by(4) {
            // SAFETY: i + 4 ≤ full ≤ cb, the length of `row` and `p` (`blocked_sums`).
            unsafe { st(p, i, vaddq_f32(ld(p, i), ld(row, i))) };
        }
        sum_row(full, row, p);
    }
}

/// One tile of [`moments`]' squared deviations: `p[j] += (x[r][c0 + j] − mean[c0 + j])²`.
///
/// # Safety
/// As [`sum_tile`], and `mean` holds the tile's channels (`cb`).
#[target_feature(enable = "neon")]
unsafe fn m2_tile(t: &Tile, x: &[f32], mean: &[f32], p: &mut [f32]) {
    let full = t.cb / 4 * 4;
    for r in t.r0..t.r1 {
        let row = t.row(x, r);
        for i in (0..full).step_by(4) {
            // SAFETY: as in `sum_tile`.
            unsafe {
                let d = vsubq_f32(ld(row, i), ld(mean, i));
                st(p, i, vaddq_f32(ld(p, i), vmulq_f32(d, d)));
            }
        }
        m2_row(full, row, mean, p);
    }
}

/// [`super::scalar::apply`] 4 channels per instruction, bit-identical.
///
/// # Safety
/// `x` and `y` hold whole rows of `c` channels, the statistics `c` each; the CPU supports NEON.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
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
    let full = c / 4 * 4;
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for i in (0..full).step_by(4) {
            // SAFETY: i + 4 ≤ full ≤ c, the length of every slice indexed.
            unsafe {
                let k = vmulq_f32(ld(gamma, i), ld(invstd, i));
                let v = vaddq_f32(vmulq_f32(vsubq_f32(ld(xr, i), ld(mean, i)), k), ld(beta, i));
                st(yr, i, if relu { relu4(v) } else { v });
            }
        }
        apply_row(full, xr, gamma, beta, mean, invstd, act, yr);
    }
}

/// [`super::scalar::bwd_sums`] 4 channels per instruction, bit-identical (the same blocked sums).
///
/// # Safety
/// `x` and `dy` hold whole rows of `c` channels, the other slices (and the ReLU's) `c` each;
/// the CPU supports NEON.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
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
    // SAFETY: the tiles lie inside `x`, `dy` and the vectors; NEON present (caller).
    blocked_sums(c, x.len() / c, [sum_dy, sum_dy_xhat], |t, [pd, px]| unsafe {
        bwd_tile(t, x, dy, relu, mean, invstd, pd, px)
    });
}

/// One tile of [`bwd_sums`]: `pd[j] += g`, `px[j] += g·x̂` over rows `r0..r1` in order.
///
/// # Safety
/// The tile lies inside `x` and `dy`, the vectors (and the ReLU's) cover its channels; the
/// CPU supports NEON.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
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
    let full = t.cb / 4 * 4;
    let relu = relu.map(|r| t.relu(r));
    let (mean, invstd) = (t.cols(mean), t.cols(invstd));
    for r in t.r0..t.r1 {
        let (xr, dyr) = (t.row(x, r), t.row(dy, r));
        for i in (0..full).step_by(4) {
            // SAFETY: i + 4 ≤ full ≤ cb, the length of every slice indexed.
            unsafe {
                let g = gate4(relu.as_ref(), dyr, xr, mean, invstd, i);
                let xhat = vmulq_f32(vsubq_f32(ld(xr, i), ld(mean, i)), ld(invstd, i));
                st(pd, i, vaddq_f32(ld(pd, i), g));
                st(px, i, vaddq_f32(ld(px, i), vmulq_f32(g, xhat)));
            }
        }
        bwd_sums_row(full, xr, dyr, relu.as_ref(), mean, invstd, pd, px);
    }
}

/// [`super::scalar::bwd_apply`] 4 channels per instruction, bit-identical.
///
/// # Safety
/// `x`, `dy` and `dx` hold whole rows of `c` channels, the slices of `b` (and the ReLU's) `c`
/// each; the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn bwd_apply(
    c: usize,
    b: &BwdSums<'_>,
    x: &[f32],
    dy: &[f32],
    relu: Option<&ReluAfter<'_>>,
    dx: &mut [f32],
) {
    let inv_n = 1.0 / b.count as f32;
    let inv = vdupq_n_f32(inv_n);
    let full = c / 4 * 4;
    for ((dxr, xr), dyr) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
        for i in (0..full).step_by(4) {
            // SAFETY: i + 4 ≤ full ≤ c, the length of every slice indexed.
            unsafe {
                let g = gate4(relu, dyr, xr, b.mean, b.invstd, i);
                let xhat = vmulq_f32(vsubq_f32(ld(xr, i), ld(b.mean, i)), ld(b.invstd, i));
                let centred = vsubq_f32(
                    vsubq_f32(g, vmulq_f32(ld(b.sum_dy, i), inv)),
                    vmulq_f32(xhat, vmulq_f32(ld(b.sum_dy_xhat, i), inv)),
                );
                st(dxr, i, vmulq_f32(vmulq_f32(ld(b.gamma, i), ld(b.invstd, i)), centred));
            }
        }
        bwd_apply_row(full, b, inv_n, xr, dyr, relu, dxr);
    }
}
