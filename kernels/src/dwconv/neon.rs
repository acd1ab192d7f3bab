//! aarch64 NEON depthwise 3x3: the forward (`lines.rs` over 4-lane q registers, [`Q`]; f16
//! weights widened by `fcvtl` in the load), the input gradient as a gather, and the weight
//! gradient. The forward's bits are the x86 paths': bias, then the taps in row-major order,
//! fused multiply-adds. It replaced a pixel-at-a-time sweep per 8-channel block (weights
//! pre-widened, every border pixel through clipped tap loops): batch-1 guest instructions
//! under qemu-user (`scripts/aarch64_insns.sh`), MobileNetV1 ×0.25 f32 575 → 498 K per
//! inference (its 13 depthwise layers ~155 → ~78 K). The stride-1 input gradient as that
//! forward over `dy` with the kernel flipped replaced the gather there: the ×0.25 train step's
//! input gradients (batch 16) 16.3 → 9.3 M.

use super::lines::{taps_fwd, Lanes};
use super::{scalar, taps};
use crate::act::Act;
use crate::convert::arm::widen4;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::aarch64::*;

/// The NEON register: 4 lanes.
pub(super) struct Q;

impl Lanes for Q {
    type V = float32x4_t;
    const N: usize = 4;
    type Tail = Q;
    const OVERLAP_BELOW: usize = 16;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: forwarded.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn load_w<W: Elem>(p: *const W) -> float32x4_t {
        // SAFETY: forwarded; `W` is f16 (4 halves) or f32, the only other `Elem`.
        unsafe {
            if TypeId::of::<W>() == TypeId::of::<f16>() {
                widen4(vld1_u16(p as *const u16))
            } else {
                vld1q_f32(p as *const f32)
            }
        }
    }
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        // SAFETY: register work.
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: register work.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t, relu: bool) {
        // SAFETY: forwarded. `fmax` would keep a NaN, so compare: lanes that are not > 0
        // (NaN included) become +0, as in `Act`.
        unsafe {
            let zero = vdupq_n_f32(0.0);
            vst1q_f32(p, if relu { vbslq_f32(vcgtq_f32(v, zero), v, zero) } else { v })
        }
    }
}

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { taps_fwd::<Q, W, false>(s, x, w, bias, act, y) }
}

/// `dx = Σ_taps shift(dy ⊙ w[tap])` for stride 1 (see [`super::dwconv3x3_bwd_input`]): the
/// forward of `dy` with the kernel flipped (`w[2 − ky][2 − kx]`), same padding, as on x86.
///
/// # Safety
/// `s.stride == 1`, lengths as checked by [`super::dwconv3x3_bwd_input`], and the CPU supports
/// NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn bwd_input_s1(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(s.stride, 1);
    // SAFETY: at stride 1 `dy` and `dx` both hold n·h·w·c values; forwarded otherwise.
    unsafe { taps_fwd::<Q, f32, true>(s, dy, w, None, Act::None, dx) }
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
