//! aarch64 NEON depthwise 3x3 forward: channel-vectorised, 8 channels (two q registers) per
//! block.
//!
//! For each block of 8 channels the 9 taps and the bias are widened to f32 once (`fcvtl` for
//! f16 storage) and held in 20 q registers; the block then sweeps every output pixel.
//! Interior pixels (all 9 taps in bounds) run an unrolled body with no bounds logic; border
//! pixels clip their tap range. Channels past the last full block of 8 go to the scalar loop.
//! Accumulation order per output is bias, then taps in row-major order, fused multiply-adds.

use super::{scalar, taps, WTile, BLOCK};
use crate::act::Act;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::aarch64::*;

/// Widens `src` (exactly [`BLOCK`] values) into `dst`.
///
/// # Safety
/// The CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn widen<W: Elem>(src: &[W], dst: &mut [f32; BLOCK]) {
    if TypeId::of::<W>() == TypeId::of::<f16>() {
        // SAFETY: `W` is `f16`, so this is the same slice; `dst` holds BLOCK f32; NEON present.
        unsafe {
            let h = core::slice::from_raw_parts(src.as_ptr() as *const f16, src.len().min(BLOCK));
            crate::convert::arm::f16_to_f32_raw(h, dst.as_mut_ptr());
        }
    } else {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = v.to_f32();
        }
    }
}

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    let c = s.c;
    let full = c - c % BLOCK;
    let mut tile = WTile::default();
    for c0 in (0..full).step_by(BLOCK) {
        for t in 0..9 {
            // SAFETY: NEON vouched for by the caller.
            unsafe { widen(&w[t * c + c0..t * c + c0 + BLOCK], &mut tile.0[t]) };
        }
        match bias {
            // SAFETY: as above.
            Some(b) => unsafe { widen(&b[c0..c0 + BLOCK], &mut tile.0[9]) },
            None => tile.0[9].fill(0.0),
        }
        // SAFETY: x and y have the checked lengths and c0 + BLOCK ≤ c; NEON vouched for.
        unsafe { block(s, x.as_ptr().add(c0), &tile, act, y.as_mut_ptr().add(c0)) };
    }
    if full < c {
        scalar::fwd(s, x, w, bias, act, y, full);
    }
}

/// One 8-channel block over every output pixel. `x` and `y` point at channel `c0` of pixel 0;
/// pixel `p` of either is `c` floats further on.
///
/// # Safety
/// `x` is readable and `y` writable at `p·c + l` for every pixel `p` of the shape and lane
/// `l < 8`; the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn block(s: &DwConv3x3, x: *const f32, tile: &WTile, act: Act, y: *mut f32) {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    // SAFETY (all loads/stores below): every pixel index is < n·h·w (input) or
    // < n·out_h·out_w (output) by the tap clipping, so the caller's guarantee covers it.
    let wv: [[float32x4_t; 2]; 10] = core::array::from_fn(|t| {
        // SAFETY: the tile rows are 8 f32.
        unsafe { [vld1q_f32(tile.0[t].as_ptr()), vld1q_f32(tile.0[t].as_ptr().add(4))] }
    });
    let relu = act == Act::Relu;
    let zero = vdupq_n_f32(0.0);
    let tap = |acc: &mut [float32x4_t; 2], p: *const f32, t: usize| {
        // SAFETY: see above.
        unsafe {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(p), wv[t][0]);
            acc[1] = vfmaq_f32(acc[1], vld1q_f32(p.add(4)), wv[t][1]);
        }
    };
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
                let mut acc = wv[9];
                if full_rows && ox >= 1 && ox < ox_in_hi {
                    let base = (n * h + iyp - 1) * wd + ixp - 1;
                    for ky in 0..3 {
                        let row = base + ky * wd;
                        // SAFETY: pixels row..row+3 are in bounds (interior).
                        unsafe {
                            tap(&mut acc, x.add(row * c), ky * 3);
                            tap(&mut acc, x.add((row + 1) * c), ky * 3 + 1);
                            tap(&mut acc, x.add((row + 2) * c), ky * 3 + 2);
                        }
                    }
                } else {
                    let (kx_lo, kx_hi) = taps(ixp, wd);
                    for ky in ky_lo..ky_hi {
                        let row = (n * h + iyp + ky - 1) * wd;
                        for kx in kx_lo..kx_hi {
                            // SAFETY: the tap is clipped to the image.
                            tap(&mut acc, unsafe { x.add((row + ixp + kx - 1) * c) }, ky * 3 + kx);
                        }
                    }
                }
                if relu {
                    // `fmaxnm` would keep a NaN's partner; `vmaxq` of NaN is NaN, so compare
                    // instead: lanes that are not > 0 (including NaN) become 0, as in `Act`.
                    for a in &mut acc {
                        *a = vbslq_f32(vcgtq_f32(*a, zero), *a, zero);
                    }
                }
                // SAFETY: output pixel out_row + ox < n·out_h·out_w.
                unsafe {
                    let dst = y.add((out_row + ox) * c);
                    vst1q_f32(dst, acc[0]);
                    vst1q_f32(dst.add(4), acc[1]);
                }
            }
        }
    }
}

/// `dx` of the depthwise conv as a gather over each input pixel's taps, any stride (see
/// [`super::dwconv3x3_bwd_input`]): input pixel `(iy, ix)` gets `Σ dy[oy][ox]·w[ky][kx]` over
/// the taps with `oy·st + ky − 1 = iy`, `ox·st + kx − 1 = ix` in bounds (at most 9 at stride 1,
/// 4 at stride 2), found once per pixel and swept over the channels 8, then 4, then 1 at a time,
/// fused multiply-adds in `(ky, kx)` order from zero.
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_bwd_input`]; the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn bwd_input(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (c, h, wd) = (s.c, s.h, s.w);
    // (dy pixel, weight row) per tap, as offsets of channel 0.
    let mut list = [(0usize, 0usize); 9];
    for n in 0..s.n {
        for iy in 0..h {
            for ix in 0..wd {
                let nt = scalar::input_taps(s, n, iy, ix, &mut list);
                for t in &mut list[..nt] {
                    *t = (t.0 * c, t.1 * c);
                }
                let out = ((n * h + iy) * wd + ix) * c;
                let taps = &list[..nt];
                let mut c0 = 0;
                // SAFETY (both vector loops): output pixel (n, oy, ox) < n·oh·ow, tap row < 9 and
                // input pixel (n, iy, ix) < n·h·w, so every offset + c0 + lanes ≤ the slice's
                // length; NEON vouched for by the caller.
                while c0 + 8 <= c {
                    unsafe {
                        let mut a = [vdupq_n_f32(0.0); 2];
                        for &(o, t) in taps {
                            let (g, k) = (dy.as_ptr().add(o + c0), w.as_ptr().add(t + c0));
                            a[0] = vfmaq_f32(a[0], vld1q_f32(g), vld1q_f32(k));
                            a[1] = vfmaq_f32(a[1], vld1q_f32(g.add(4)), vld1q_f32(k.add(4)));
                        }
                        let d = dx.as_mut_ptr().add(out + c0);
                        vst1q_f32(d, a[0]);
                        vst1q_f32(d.add(4), a[1]);
                    }
                    c0 += 8;
                }
                while c0 + 4 <= c {
                    unsafe {
                        let mut a = vdupq_n_f32(0.0);
                        for &(o, t) in taps {
                            a = vfmaq_f32(a, vld1q_f32(dy.as_ptr().add(o + c0)), vld1q_f32(w.as_ptr().add(t + c0)));
                        }
                        vst1q_f32(dx.as_mut_ptr().add(out + c0), a);
                    }
                    c0 += 4;
                }
                for ch in c0..c {
                    dx[out + ch] = taps.iter().fold(0.0, |a, &(o, t)| libm::fmaf(dy[o + ch], w[t + ch], a));
                }
            }
        }
    }
}

/// `dw[tap][c] = Σ x·dy` over every output pixel's in-bounds taps (see
/// [`super::dwconv3x3_bwd_weight`]): image by image (its maps stay in cache across the channel
/// blocks, as on AVX2), per block of `4·Q` channels the 9 tap sums live in registers (`9·Q`
/// q registers of NEON's 32) over the image's output pixels (pixel order, fused
/// multiply-adds) and are added to `dw` once per image. Channels past the last block of 4 run
/// the scalar loop.
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_bwd_weight`]; the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn bwd_weight(s: &DwConv3x3, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let c = s.c;
    let vec_end = c / 4 * 4;
    for n in 0..s.n {
        let mut c0 = 0;
        while c0 + 8 <= c {
            // SAFETY: c0 + 8 ≤ c, n < s.n; lengths and NEON vouched for by the caller.
            unsafe { weight_block::<2>(s, x, dy, dw, c0, n) };
            c0 += 8;
        }
        if c0 < vec_end {
            // SAFETY: as above, c0 + 4 ≤ c.
            unsafe { weight_block::<1>(s, x, dy, dw, c0, n) };
        }
    }
    let c0 = vec_end;
    if c0 < c {
        for t in 0..9 {
            dw[t * c + c0..(t + 1) * c].fill(0.0);
        }
        scalar::for_each_tap(s, |out, inp, tap| {
            for ch in c0..c {
                dw[tap * c + ch] += x[inp * c + ch] * dy[out * c + ch];
            }
        });
    }
}

/// Channels `c0..c0 + 4·Q` of image `n` in [`bwd_weight`]: stored into `dw` for image 0,
/// added for the others.
///
/// # Safety
/// `c0 + 4·Q ≤ s.c`, `n < s.n`, lengths as checked by [`super::dwconv3x3_bwd_weight`]; the CPU
/// supports NEON.
#[inline(always)]
unsafe fn weight_block<const Q: usize>(s: &DwConv3x3, x: &[f32], dy: &[f32], dw: &mut [f32], c0: usize, n: usize) {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    let (xp, gp) = (x.as_ptr(), dy.as_ptr());
    // SAFETY (all loads): the input pixel of an in-bounds tap is < n·h·w and the output pixel
    // < n·oh·ow; channel c0 + 4·Q ≤ c. NEON vouched for by the caller.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); Q]; 9];
        // Output columns whose three taps are all in bounds (as in `block`).
        let ox_in_hi = if wd >= 2 { ((wd - 2) / st + 1).min(ow) } else { 0 };
        for oy in 0..oh {
            let iyp = oy * st;
            let (ky_lo, ky_hi) = taps(iyp, h);
            for ox in 0..ow {
                let ixp = ox * st;
                let (kx_lo, kx_hi) = taps(ixp, wd);
                let g: [float32x4_t; Q] =
                    core::array::from_fn(|q| vld1q_f32(gp.add(((n * oh + oy) * ow + ox) * c + c0 + 4 * q)));
                let interior = ky_lo == 0 && ky_hi == 3 && ox >= 1 && ox < ox_in_hi;
                // Constant trip counts, so the tap index is a constant after unrolling and
                // the sums stay in registers; border pixels skip their clipped taps.
                for ky in 0..3 {
                    for kx in 0..3 {
                        if interior || (ky >= ky_lo && ky < ky_hi && kx >= kx_lo && kx < kx_hi) {
                            let p = xp.add(((n * h + iyp + ky - 1) * wd + ixp + kx - 1) * c + c0);
                            for q in 0..Q {
                                acc[ky * 3 + kx][q] = vfmaq_f32(acc[ky * 3 + kx][q], vld1q_f32(p.add(4 * q)), g[q]);
                            }
                        }
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            for (q, &v) in a.iter().enumerate() {
                // SAFETY: row t < 9 of `dw`, channels c0 + 4q .. + 4 ≤ c.
                let d = dw.as_mut_ptr().add(t * c + c0 + 4 * q);
                vst1q_f32(d, if n == 0 { v } else { vaddq_f32(vld1q_f32(d), v) });
            }
        }
    }
}
