//! aarch64 NEON path: `f32-gemm 8x8 neonfma` micro-kernel (16 q-register accumulators,
//! `vfmaq_laneq_f32` against 2 A and 2 B vectors per k step), KC ≤ 256, MC = 128 at KC = 256;
//! f16 operands widened with `fcvtl` while packing. Packing buffers: 128·256 + 256·8 f32 =
//! 136 KiB on the stack, 64-byte aligned.

use super::blocked::{self, Blocking, Buf, MicroKernel};
use super::GemmShape;
use crate::convert;
use crate::elem::{as_f16, as_f32, Elem};
use core::arch::aarch64::*;

const MR: usize = 8;
const NR: usize = 8;
/// KC ≤ 256, MC = 128 at KC = 256 (no single deeper block: not measured on NEON hardware).
const BLOCKING: Blocking = Blocking { kc: 256, kc_one: 256, mc: 128 };
const _: () = assert!(BLOCKING.valid(MR));

/// `C = α·op(A)·op(B) + β·C` (see [`super::gemm`]).
///
/// # Safety
/// The slices satisfy [`super::gemm`]'s length checks for `s`, `m, n ≥ 1`, and the CPU
/// supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn gemm<A: Elem, B: Elem>(s: &GemmShape, alpha: f32, a: &[A], b: &[B], beta: f32, c: &mut [f32]) {
    let mut abuf = Buf::<{ BLOCKING.a_len() }>::new();
    let mut bbuf = Buf::<{ BLOCKING.b_len(NR) }>::new();
    // SAFETY: the buffers have the sizes `run` needs and are 64-byte aligned, BLOCKING
    // satisfies its conditions (checked at compile time), the caller guarantees the slice
    // lengths and the CPU features.
    unsafe {
        blocked::run::<Neon8x8, A, B, MR, NR>(s, alpha, a, b, beta, c, abuf.as_mut_ptr(), BLOCKING, bbuf.as_mut_ptr())
    }
}

/// The 8×8 NEON micro-kernel.
struct Neon8x8;

impl MicroKernel for Neon8x8 {
    const MR: usize = MR;
    const NR: usize = NR;

    #[inline(always)]
    unsafe fn widen<E: Elem>(src: &[E], dst: *mut f32) {
        if let Some(h) = as_f16(src) {
            // SAFETY: `dst` is valid for `src.len()` writes (caller); NEON is present (caller).
            unsafe { convert::arm::f16_to_f32_raw(h, dst) }
        } else if let Some(x) = as_f32(src) {
            // SAFETY: `dst` is valid for `x.len()` writes and cannot overlap a shared slice.
            unsafe { core::ptr::copy_nonoverlapping(x.as_ptr(), dst, x.len()) }
        } else {
            for (i, v) in src.iter().enumerate() {
                // SAFETY: i < src.len(), valid by the caller's guarantee.
                unsafe { dst.add(i).write(v.to_f32()) };
            }
        }
    }

    #[inline(always)]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded verbatim; same contract.
        unsafe { tile_8x8(kc, a, b, c, ldc, mr, nr, alpha, beta) }
    }
}

/// See [`MicroKernel::tile`].
///
/// # Safety
/// As [`MicroKernel::tile`] with MR = NR = 8; the CPU supports NEON.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_8x8(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
    macro_rules! row {
        ($r:expr, $lane:expr, $av:expr, $b0:expr, $b1:expr) => {
            acc[$r][0] = vfmaq_laneq_f32::<$lane>(acc[$r][0], $b0, $av);
            acc[$r][1] = vfmaq_laneq_f32::<$lane>(acc[$r][1], $b1, $av);
        };
    }
    for p in 0..kc {
        // SAFETY: p < kc: the A and B panels each hold kc·8 f32.
        unsafe {
            let bp = b.add(p * NR);
            let b0 = vld1q_f32(bp);
            let b1 = vld1q_f32(bp.add(4));
            let ap = a.add(p * MR);
            let a0 = vld1q_f32(ap);
            let a1 = vld1q_f32(ap.add(4));
            row!(0, 0, a0, b0, b1);
            row!(1, 1, a0, b0, b1);
            row!(2, 2, a0, b0, b1);
            row!(3, 3, a0, b0, b1);
            row!(4, 0, a1, b0, b1);
            row!(5, 1, a1, b0, b1);
            row!(6, 2, a1, b0, b1);
            row!(7, 3, a1, b0, b1);
        }
    }
    if mr == MR && nr == NR {
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: row r < 8, columns 0..8 are inside C (caller).
            unsafe {
                let cr = c.add(r * ldc);
                for (h, &v) in row.iter().enumerate() {
                    let d = cr.add(4 * h);
                    let t = vmulq_n_f32(v, alpha);
                    let out = if beta == 0.0 {
                        t
                    } else if beta == 1.0 {
                        vaddq_f32(t, vld1q_f32(d))
                    } else {
                        vfmaq_n_f32(t, vld1q_f32(d), beta)
                    };
                    vst1q_f32(d, out);
                }
            }
        }
    } else {
        let mut t = [0.0f32; MR * NR];
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: t holds 8·8 f32; row r writes t[r·8 ..][.. 8].
            unsafe {
                vst1q_f32(t.as_mut_ptr().add(r * NR), row[0]);
                vst1q_f32(t.as_mut_ptr().add(r * NR + 4), row[1]);
            }
        }
        // SAFETY: t holds MR·NR values, the caller guarantees the mr×nr part of C.
        unsafe { blocked::edge_epilogue::<NR>(&t, c, ldc, mr, nr, alpha, beta) };
    }
}
