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
