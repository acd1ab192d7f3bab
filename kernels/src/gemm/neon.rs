//! aarch64 NEON path: `f32-gemm 8x8 neonfma` micro-kernel (16 q-register accumulators,
//! `vfmaq_laneq_f32` against 2 A and 2 B vectors per k step), KC ≤ 256, MC = 128 at KC = 256;
//! f16 operands widened with `fcvtl` while packing. An f32 A is read in place
//! (`DIRECT_A`): untransposed, each row's next 4 k in one load and `fmla` by lane; transposed,
//! the tile's rows at one k are consecutive as in a packed panel — the same operations in the
//! same order as the packed kernel, so the same bits (MobileNetV1 ×0.25 train step, batch 16,
//! guest instructions under qemu-user: 36.4 → 33.8 M per step). Packing buffers: 128·256 +
//! 256·8 f32 = 136 KiB on the stack, 64-byte aligned.

use super::blocked::{self, Blocking, Buf, MicroKernel};
use super::GemmShape;
use crate::convert;
use crate::elem::{as_f16, as_f32, Elem};
use core::arch::aarch64::*;

const MR: usize = 8;
const NR: usize = 8;
/// KC ≤ 256, MC = 128 at KC = 256 (no single deeper block: not measured on NEON hardware).
const BLOCKING: Blocking = Blocking { kc: 256, kc_one: 256, mc: 128, ac_bytes: usize::MAX, sweep_k: 0 };
const _: () = assert!(BLOCKING.valid(MR, NR));

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

    const DIRECT_A: bool = true;

    #[inline(always)]
    unsafe fn tile_direct<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        trans: bool,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded; A[r][p] at a[r·lda + p] (a[p·lda + r] when trans) is readable for
        // r < R, p < kc (caller).
        unsafe {
            if trans {
                tile_direct_t::<R>(kc, a, lda, b, c, ldc, nr, alpha, beta)
            } else {
                tile_direct_n::<R>(kc, a, lda, b, c, ldc, nr, alpha, beta)
            }
        }
    }
}

/// `acc[r][h] += A[r][l]·B̃[p + l][4h..]` for `l` = 0..4 in order, fused (`fmla` by lane of
/// `av[r]` = `A[r][p..p + 4]`): the packed kernel's operations, in its order. By value in and
/// out, so LLVM keeps the accumulators in registers across the k loop.
///
/// # Safety
/// Rows `p..p + 4` of the 8-column panel `b` are readable; NEON present.
#[inline(always)]
unsafe fn quad<const R: usize>(
    mut acc: [[float32x4_t; 2]; R],
    av: [float32x4_t; R],
    b: *const f32,
    p: usize,
) -> [[float32x4_t; 2]; R] {
    macro_rules! step {
        ($lane:literal) => {
            // SAFETY: row p + lane of the panel (caller).
            let (b0, b1) = unsafe { (vld1q_f32(b.add((p + $lane) * NR)), vld1q_f32(b.add((p + $lane) * NR + 4))) };
            for r in 0..R {
                // SAFETY: register work.
                unsafe {
                    acc[r][0] = vfmaq_laneq_f32::<$lane>(acc[r][0], b0, av[r]);
                    acc[r][1] = vfmaq_laneq_f32::<$lane>(acc[r][1], b1, av[r]);
                }
            }
        };
    }
    step!(0);
    step!(1);
    step!(2);
    step!(3);
    acc
}

/// [`MicroKernel::tile_direct`] for an untransposed A (`A[r][p]` at `a[r·lda + p]`): each row's
/// 4 next k in one load, then [`quad`]; the last `kc % 4` by scalar (`fmla` by element).
///
/// # Safety
/// As [`MicroKernel::tile_direct`] with `trans = false`; NEON present.
#[target_feature(enable = "neon")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_direct_n<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY (every load): rows r < R of A at p < kc, rows p < kc of the panel (caller).
    unsafe {
        let ar: [*const f32; R] = core::array::from_fn(|r| a.add(r * lda));
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        let mut p = 0;
        while p + 4 <= kc {
            acc = quad::<R>(acc, core::array::from_fn(|r| vld1q_f32(ar[r].add(p))), b, p);
            p += 4;
        }
        while p < kc {
            let (b0, b1) = (vld1q_f32(b.add(p * NR)), vld1q_f32(b.add(p * NR + 4)));
            for (row, &ap) in acc.iter_mut().zip(&ar) {
                let x = *ap.add(p);
                row[0] = vfmaq_n_f32(row[0], b0, x);
                row[1] = vfmaq_n_f32(row[1], b1, x);
            }
            p += 1;
        }
        store_rows(&acc, R, c, ldc, nr, alpha, beta);
    }
}

/// [`MicroKernel::tile_direct`] for a transposed A (`A[r][p]` at `a[p·lda + r]`: the tile's
/// rows at one k are consecutive, as in a packed panel): 8 or 4 rows by vector loads and
/// `fmla` by lane, 2 and 1 by scalar loads.
///
/// # Safety
/// As [`MicroKernel::tile_direct`] with `trans = true`; NEON present.
#[target_feature(enable = "neon")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_direct_t<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY (every load): A at p·lda + r for p < kc, r < R; rows p < kc of the panel (caller).
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        macro_rules! lane {
            ($r:literal, $lane:literal, $av:expr, $b0:expr, $b1:expr) => {
                if $r < R {
                    acc[$r][0] = vfmaq_laneq_f32::<$lane>(acc[$r][0], $b0, $av);
                    acc[$r][1] = vfmaq_laneq_f32::<$lane>(acc[$r][1], $b1, $av);
                }
            };
        }
        for p in 0..kc {
            let (b0, b1) = (vld1q_f32(b.add(p * NR)), vld1q_f32(b.add(p * NR + 4)));
            let ap = a.add(p * lda);
            if R >= 4 {
                let a0 = vld1q_f32(ap);
                lane!(0, 0, a0, b0, b1);
                lane!(1, 1, a0, b0, b1);
                lane!(2, 2, a0, b0, b1);
                lane!(3, 3, a0, b0, b1);
                if R == 8 {
                    let a1 = vld1q_f32(ap.add(4));
                    lane!(4, 0, a1, b0, b1);
                    lane!(5, 1, a1, b0, b1);
                    lane!(6, 2, a1, b0, b1);
                    lane!(7, 3, a1, b0, b1);
                }
            } else {
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = *ap.add(r);
                    row[0] = vfmaq_n_f32(row[0], b0, x);
                    row[1] = vfmaq_n_f32(row[1], b1, x);
                }
            }
        }
        store_rows(&acc, R, c, ldc, nr, alpha, beta);
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
    // SAFETY: forwarded (C rows < mr, columns < nr).
    unsafe { store_rows(&acc, mr, c, ldc, nr, alpha, beta) }
}

/// `C[r][j] = α·acc[r][j] + β·C[r][j]` (C only written when `β = 0`) for `r < mr`, `j < nr`.
///
/// # Safety
/// `acc` holds at least `mr ≤ 8` rows; C is valid at `c.add(r·ldc + j)` for `r < mr`, `j < nr ≤ 8`;
/// NEON present.
#[inline(always)]
unsafe fn store_rows(acc: &[[float32x4_t; 2]], mr: usize, c: *mut f32, ldc: usize, nr: usize, alpha: f32, beta: f32) {
    if nr == NR {
        for (r, row) in acc.iter().enumerate().take(mr) {
            // SAFETY: row r < mr, columns 0..8 are inside C (caller).
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
        for (r, row) in acc.iter().enumerate().take(mr) {
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
