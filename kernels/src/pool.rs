//! Pooling over NHWC batches ([`Pool`]): max pool 3x3 / stride 2 / padding 1 (the ResNet50
//! stem) and global average pool (the head of both models), forward and backward.

use crate::error::{check_len, Result};
use crate::isa::{Isa, IsaKind};
use crate::shape::Pool;

/// Max pool forward `y[n][oy][ox][c] = max_{ky,kx<3} x[n][2oy+ky−1][2ox+kx−1][c]`, padding 1
/// that never wins (the window is clipped to the image, never padded with zeros or −∞):
/// `x[n][h][w][c]`, `y[n][max_out_h][max_out_w][c]` (overwritten).
pub fn maxpool3x3s2_fwd(isa: Isa, s: &Pool, x: &[f32], y: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("y", y.len(), s.max_y_len())?;
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 or Avx512 exists only when the CPU has
        // AVX2 (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::maxpool_fwd(s, x, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: lengths checked above; an `Isa` of kind Neon exists only on aarch64 CPUs with
        // NEON (isa.rs).
        IsaKind::Neon => unsafe { neon::maxpool_fwd(s, x, y) },
        _ => scalar::maxpool_fwd(s, x, y),
    }
    Ok(())
}

/// Max pool backward: `dx[p] = Σ dy[o]` over the outputs `o` whose window's FIRST maximum (in
/// row-major window order, found as the first `x == y[o]`) is `p`; every other `dx` is 0.
/// `dx` is overwritten. If a window holds no element equal to `y[o]` (a `y` not computed from
/// this `x`), its gradient goes to the window's first maximum of `x`.
pub fn maxpool3x3s2_bwd(isa: Isa, s: &Pool, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("y", y.len(), s.max_y_len())?;
    check_len("dy", dy.len(), s.max_y_len())?;
    check_len("dx", dx.len(), s.x_len())?;
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 or Avx512 exists only when the CPU has
        // AVX2 (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::maxpool_bwd(s, x, y, dy, dx) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: lengths checked above; an `Isa` of kind Neon exists only on aarch64 CPUs with
        // NEON (isa.rs).
        IsaKind::Neon => unsafe { neon::maxpool_bwd(s, x, y, dy, dx) },
        _ => scalar::maxpool_bwd(s, x, y, dy, dx),
    }
    Ok(())
}

/// Global average pool forward `y[n][c] = (1/(h·w)) Σ_{h,w} x[n][h][w][c]`; `y` overwritten.
pub fn global_avg_fwd(isa: Isa, s: &Pool, x: &[f32], y: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("y", y.len(), s.avg_y_len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::avg_fwd(s, x, y),
    }
    Ok(())
}

/// Global average pool backward `dx[n][h][w][c] = dy[n][c] / (h·w)`; `dx` overwritten.
pub fn global_avg_bwd(isa: Isa, s: &Pool, dy: &[f32], dx: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("dy", dy.len(), s.avg_y_len())?;
    check_len("dx", dx.len(), s.x_len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::avg_bwd(s, dy, dx),
    }
    Ok(())
}

/// Portable paths (the specification). Lengths are checked by the callers.
/// The input rows (or columns) `2o−1 ..= 2o+1` of output `o`, clipped to `0..len`.
#[inline(always)]
fn window(o: usize, len: usize) -> core::ops::Range<usize> {
    (2 * o).saturating_sub(1)..(2 * o + 2).min(len)
}

/// The in-bounds window pixels of output `(oy, ox)` as offsets (channel 0) into one image, in
/// row-major order, and how many there are (1 to 9).
#[inline(always)]
fn window_taps(s: &crate::shape::Pool, oy: usize, ox: usize) -> ([usize; 9], usize) {
    let mut taps = [0usize; 9];
    let mut nt = 0;
    for iy in window(oy, s.h) {
        for ix in window(ox, s.w) {
            taps[nt] = (iy * s.w + ix) * s.c;
            nt += 1;
        }
    }
    (taps, nt)
}

/// The offset in `img` that channel `ch` of an output with window `taps` and value `target`
/// routes its gradient to ([`maxpool3x3s2_bwd`]): the first tap equal to `target`, else the
/// first maximum (`v > best`, so a NaN never takes over and a NaN first tap stays).
#[inline(always)]
fn route(img: &[f32], taps: &[usize], target: f32, ch: usize) -> usize {
    let mut best = taps[0] + ch;
    for &t in taps {
        let v = img[t + ch];
        if v == target {
            return t + ch;
        }
        if v > img[best] {
            best = t + ch;
        }
    }
    best
}

/// The max pool backward's walk, shared by every path: `dx` zeroed, then per output pixel (in
/// order) `L` channels at a time through `block(img, dimg, taps, o, i)`, which routes what it
/// can and returns a bit mask of the lanes it left (they take [`route`]), the last `c % L`
/// channels by [`route`] alone (`L = 1`, a `block` that leaves every lane: the scalar path).
#[inline(always)]
fn maxpool_bwd_walk<const L: usize>(
    s: &crate::shape::Pool,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    mut block: impl FnMut(&[f32], &mut [f32], &[usize], usize, usize) -> u32,
) {
    let (oh, ow, c) = (s.max_out_h(), s.max_out_w(), s.c);
    let (full, plane) = (c / L * L, s.h * s.w * c);
    dx.fill(0.0);
    for n in 0..s.n {
        let img = &x[n * plane..(n + 1) * plane];
        let dimg = &mut dx[n * plane..(n + 1) * plane];
        for oy in 0..oh {
            for ox in 0..ow {
                let o = ((n * oh + oy) * ow + ox) * c;
                let (taps, nt) = window_taps(s, oy, ox);
                let taps = &taps[..nt];
                for i in (0..full).step_by(L) {
                    let left = block(img, dimg, taps, o, i);
                    for ch in (0..L).filter(|l| left >> l & 1 == 1).map(|l| i + l) {
                        dimg[route(img, taps, y[o + ch], ch)] += dy[o + ch];
                    }
                }
                for ch in full..c {
                    dimg[route(img, taps, y[o + ch], ch)] += dy[o + ch];
                }
            }
        }
    }
}

/// Channels `from..` of one output pixel `out` as [`scalar::maxpool_fwd`] computes them (first
/// tap, then `v > m ? v : m` per tap): the SIMD forwards' channel tail.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn max_tail(img: &[f32], taps: &[usize], from: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate().skip(from) {
        *o = img[taps[0] + i];
        for &t in &taps[1..] {
            if img[t + i] > *o {
                *o = img[t + i];
            }
        }
    }
}

/// AVX2 max pool forward and backward (the ResNet50 stem's, on every teacher step).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{max_tail, maxpool_bwd_walk, window_taps};
    use crate::shape::Pool;
    use core::arch::x86_64::*;

    /// [`super::scalar::maxpool_fwd`] 8 channels per instruction: the window's taps in the same
    /// order, each kept as `max(v, m)` (= `v > m ? v : m`, so a NaN tap never wins and a NaN
    /// first tap stays), so the result is bit-identical; the window's maximum is held in a
    /// register and stored once.
    ///
    /// # Safety
    /// `x` holds `s.x_len()` values and `y` `s.max_y_len()`; the CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn maxpool_fwd(s: &Pool, x: &[f32], y: &mut [f32]) {
        let (oh, ow, c) = (s.max_out_h(), s.max_out_w(), s.c);
        let full = c / 8 * 8;
        for n in 0..s.n {
            let img = &x[n * s.h * s.w * c..(n + 1) * s.h * s.w * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    let out = &mut y[((n * oh + oy) * ow + ox) * c..][..c];
                    let (taps, nt) = window_taps(s, oy, ox);
                    let taps = &taps[..nt];
                    for i in (0..full).step_by(8) {
                        // SAFETY: every tap is a whole pixel of `c` channels inside `img` and
                        // i + 8 ≤ c, so each load and the store stay inside their slices.
                        unsafe {
                            let mut m = _mm256_loadu_ps(img.as_ptr().add(taps[0] + i));
                            for &t in &taps[1..] {
                                m = _mm256_max_ps(_mm256_loadu_ps(img.as_ptr().add(t + i)), m);
                            }
                            _mm256_storeu_ps(out.as_mut_ptr().add(i), m);
                        }
                    }
                    max_tail(img, taps, full, out);
                }
            }
        }
    }

    /// [`super::scalar::maxpool_bwd`] 8 channels at a time: the window's taps in order, each
    /// lane's gradient added at the first tap equal to its output (`==` of the loaded taps
    /// against `y`, lanes already routed masked off), the whole window skipped once every
    /// lane is routed; a lane no tap equals (a `y` not from this `x`, a NaN output) takes the
    /// scalar route. Outputs are visited in the same order and each adds once per channel, so
    /// every `dx` sum is the scalar one, bit for bit.
    ///
    /// # Safety
    /// `x`, `dx` hold `s.x_len()` values and `y`, `dy` `s.max_y_len()`; the CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn maxpool_bwd(s: &Pool, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        maxpool_bwd_walk::<8>(s, x, y, dy, dx, |img, dimg, taps, o, i| {
            // SAFETY: every tap is a whole pixel of `c` channels inside `img` (and `dimg`, the
            // same size) and i + 8 ≤ c, so each load and store stays inside its slice;
            // `o + i + 8 ≤` the length of `y` and `dy` (the walk); AVX2 present (caller).
            unsafe {
                let target = _mm256_loadu_ps(y.as_ptr().add(o + i));
                let g = _mm256_loadu_ps(dy.as_ptr().add(o + i));
                let mut left = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
                for &t in taps {
                    let v = _mm256_loadu_ps(img.as_ptr().add(t + i));
                    let hit = _mm256_and_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, target), left);
                    if _mm256_movemask_ps(hit) != 0 {
                        let d = dimg.as_mut_ptr().add(t + i);
                        let old = _mm256_loadu_ps(d);
                        _mm256_storeu_ps(d, _mm256_blendv_ps(old, _mm256_add_ps(old, g), hit));
                        left = _mm256_andnot_ps(hit, left);
                        if _mm256_movemask_ps(left) == 0 {
                            break;
                        }
                    }
                }
                _mm256_movemask_ps(left) as u32
            }
        })
    }
}

/// NEON max pool forward and backward: the twins of `avx2`, 4 channels per instruction.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{max_tail, maxpool_bwd_walk, window_taps};
    use crate::shape::Pool;
    use core::arch::aarch64::*;

    /// [`super::scalar::maxpool_fwd`] 4 channels per instruction: the window's taps in the same
    /// order, each kept as `v > m ? v : m` (a compare and select: `vmaxq` would let a NaN tap
    /// win), so the result is bit-identical; the maximum is held in a register, stored once.
    ///
    /// # Safety
    /// `x` holds `s.x_len()` values and `y` `s.max_y_len()`; the CPU supports NEON.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn maxpool_fwd(s: &Pool, x: &[f32], y: &mut [f32]) {
        let (oh, ow, c) = (s.max_out_h(), s.max_out_w(), s.c);
        let full = c / 4 * 4;
        for n in 0..s.n {
            let img = &x[n * s.h * s.w * c..(n + 1) * s.h * s.w * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    let out = &mut y[((n * oh + oy) * ow + ox) * c..][..c];
                    let (taps, nt) = window_taps(s, oy, ox);
                    let taps = &taps[..nt];
                    for i in (0..full).step_by(4) {
                        // SAFETY: every tap is a whole pixel of `c` channels inside `img` and
                        // i + 4 ≤ c, so each load and the store stay inside their slices.
                        unsafe {
                            let mut m = vld1q_f32(img.as_ptr().add(taps[0] + i));
                            for &t in &taps[1..] {
                                let v = vld1q_f32(img.as_ptr().add(t + i));
                                m = vbslq_f32(vcgtq_f32(v, m), v, m);
                            }
                            vst1q_f32(out.as_mut_ptr().add(i), m);
                        }
                    }
                    max_tail(img, taps, full, out);
                }
            }
        }
    }
    /// [`super::scalar::maxpool_bwd`] 4 channels at a time: the twin of the AVX2 backward
    /// (`vceqq` against `y`, lanes already routed masked off, a lane no tap equals routed by
    /// the scalar rule), bit for bit the scalar sums.
    ///
    /// # Safety
    /// `x`, `dx` hold `s.x_len()` values and `y`, `dy` `s.max_y_len()`; the CPU supports NEON.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn maxpool_bwd(s: &Pool, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        maxpool_bwd_walk::<4>(s, x, y, dy, dx, |img, dimg, taps, o, i| {
            // SAFETY: every tap is a whole pixel of `c` channels inside `img` (and `dimg`, the
            // same size) and i + 4 ≤ c, so each load and store stays inside its slice;
            // `o + i + 4 ≤` the length of `y` and `dy` (the walk); NEON present (caller).
            unsafe {
                let target = vld1q_f32(y.as_ptr().add(o + i));
                let g = vld1q_f32(dy.as_ptr().add(o + i));
                let mut left = vdupq_n_u32(u32::MAX);
                for &t in taps {
                    let v = vld1q_f32(img.as_ptr().add(t + i));
                    let hit = vandq_u32(vceqq_f32(v, target), left);
                    if vmaxvq_u32(hit) != 0 {
                        let d = dimg.as_mut_ptr().add(t + i);
                        let old = vld1q_f32(d);
                        vst1q_f32(d, vbslq_f32(hit, vaddq_f32(old, g), old));
                        left = vbicq_u32(left, hit);
                        if vmaxvq_u32(left) == 0 {
                            break;
                        }
                    }
                }
                // Lane l's bit: its mask's top bit, shifted into place.
                let bits = vshrq_n_u32::<31>(left);
                vgetq_lane_u32::<0>(bits)
                    | vgetq_lane_u32::<1>(bits) << 1
                    | vgetq_lane_u32::<2>(bits) << 2
                    | vgetq_lane_u32::<3>(bits) << 3
            }
        })
    }
}

mod scalar {
    use super::{maxpool_bwd_walk, window};
    use crate::shape::Pool;

    pub(super) fn maxpool_fwd(s: &Pool, x: &[f32], y: &mut [f32]) {
        let (oh, ow, c) = (s.max_out_h(), s.max_out_w(), s.c);
        for n in 0..s.n {
            let img = &x[n * s.h * s.w * c..(n + 1) * s.h * s.w * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    let out = &mut y[((n * oh + oy) * ow + ox) * c..][..c];
                    let mut first = true;
                    for iy in window(oy, s.h) {
                        for ix in window(ox, s.w) {
                            let px = &img[(iy * s.w + ix) * c..][..c];
                            if first {
                                out.copy_from_slice(px);
                                first = false;
                            } else {
                                for (o, &v) in out.iter_mut().zip(px) {
                                    if v > *o {
                                        *o = v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub(super) fn maxpool_bwd(s: &Pool, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        maxpool_bwd_walk::<1>(s, x, y, dy, dx, |_, _, _, _, _| 1);
    }

    pub(super) fn avg_fwd(s: &Pool, x: &[f32], y: &mut [f32]) {
        let c = s.c;
        let inv = 1.0 / (s.h * s.w) as f32;
        for (img, out) in x.chunks_exact(s.h * s.w * c).zip(y.chunks_exact_mut(c)) {
            out.fill(0.0);
            for px in img.chunks_exact(c) {
                for (o, &v) in out.iter_mut().zip(px) {
                    *o += v;
                }
            }
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
    }

    pub(super) fn avg_bwd(s: &Pool, dy: &[f32], dx: &mut [f32]) {
        let c = s.c;
        let inv = 1.0 / (s.h * s.w) as f32;
        for (dimg, g) in dx.chunks_exact_mut(s.h * s.w * c).zip(dy.chunks_exact(c)) {
            for px in dimg.chunks_exact_mut(c) {
                for (d, &g) in px.iter_mut().zip(g) {
                    *d = g * inv;
                }
            }
        }
    }
}
