//! NEON arithmetic of the direct forward: 8 output channels per pair of q accumulators.

use super::{Job, Line, Pixels};
use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Conv2d;
use core::arch::aarch64::*;

/// The NEON path.
pub(in crate::conv) struct Neon;

/// `y = act(conv(x, w) + b)` for a shape [`super::applies`] accepts.
///
/// # Safety
/// `s` is valid, `applies(s)`, `x`, `w`, `bias`, `y` have the lengths `conv2d_fwd` checks, and
/// the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(in crate::conv) unsafe fn fwd<W: Elem>(
    s: &Conv2d,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) {
    // SAFETY: forwarded contract; NEON present.
    unsafe { super::fwd::<Neon, W>(s, x, w, bias, act, y) }
}

/// Adds the bias, applies the activation (`v > 0 ? v : +0`, `Act::Relu`'s bits) and stores
/// the 8 channels from `j` (only the first `c_out − j` of a last partial block).
///
/// # Safety
/// `out[j..]` holds `min(8, c_out − j)` values; `j < cp`; NEON present.
#[inline(always)]
unsafe fn store(job: &Job<'_>, acc: [float32x4_t; 2], j: usize, out: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe {
        let zero = vdupq_n_f32(0.0);
        let mut v = [0, 1].map(|h| vaddq_f32(acc[h], vld1q_f32(job.bt.as_ptr().add(j + 4 * h))));
        if job.relu {
            v = v.map(|x| vbslq_f32(vcgtq_f32(x, zero), x, zero));
        }
        let o = out.as_mut_ptr().add(j);
        if j + 8 <= job.s.c_out {
            vst1q_f32(o, v[0]);
            vst1q_f32(o.add(4), v[1]);
        } else {
            let mut t = [0.0f32; 8];
            vst1q_f32(t.as_mut_ptr(), v[0]);
            vst1q_f32(t.as_mut_ptr().add(4), v[1]);
            for (q, &x) in t.iter().enumerate().take(job.s.c_out - j) {
                o.add(q).write(x);
            }
        }
    }
}

impl Pixels for Neon {
    #[inline(always)]
    unsafe fn group<const G: usize>(job: &Job<'_>, x: *const f32, y: *mut f32, l: Line) {
        let s = job.s;
        let (c_in, c_out, cp) = (s.c_in, s.c_out, job.cp);
        // Taps (kx, ci) of a kernel row are contiguous in the input and in the weights: t from
        // kx.0·c_in to kx.1·c_in, input offset t − kx.0·c_in.
        let (t_lo, t_hi) = (l.kx.0 * c_in, l.kx.1 * c_in);
        for j in (0..cp).step_by(8) {
            // SAFETY (every access below): in-bounds taps of the G pixels (caller), weight rows
            // (ky·kw·c_in + t) < depth, lanes j..j+8 ≤ cp inside `wt`, outputs of the G pixels.
            unsafe {
                let mut acc = [[vdupq_n_f32(0.0); 2]; G];
                for ky in l.ky.0..l.ky.1 {
                    let xrow = x.add((ky - l.ky.0) * s.w * c_in).wrapping_sub(t_lo);
                    let wrow = job.wt.as_ptr().add(ky * s.kw * c_in * cp + j);
                    for t in t_lo..t_hi {
                        let (w0, w1) = (vld1q_f32(wrow.add(t * cp)), vld1q_f32(wrow.add(t * cp + 4)));
                        for (p, a) in acc.iter_mut().enumerate() {
                            let xv = *xrow.wrapping_add(p * l.x + t);
                            a[0] = vfmaq_n_f32(a[0], w0, xv);
                            a[1] = vfmaq_n_f32(a[1], w1, xv);
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate() {
                    store(job, *a, j, core::slice::from_raw_parts_mut(y.add(p * l.y), c_out));
                }
            }
        }
    }
}
