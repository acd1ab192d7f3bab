//! x86_64 AVX2+FMA path: `f32-gemm 6x16 fma3` micro-kernel (12 ymm accumulators, 2 B loads
//! and 6 broadcasts per k step; 4-, 2- and 1-row variants for edge panels), KC ≤ 256 (one
//! block up to k = 320), MC = 144 at KC = 256 (more rows for a shorter kc); f16 operands
//! widened with F16C while packing. Packing buffers: 144·256 + 320·16 f32 = 164 KiB on the
//! stack, 64-byte aligned.

use super::blocked::{self, Blocking, Buf, MicroKernel};
use super::{narrow, GemmShape};
use crate::convert;
use crate::elem::{as_f16, as_f32, Elem};
use core::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;
/// KC ≤ 256 (one 16 KiB B panel in L1), one block up to k = 320 (k = 288, a 3x3 conv over 32
/// channels, then makes one pass over C instead of two; measured +3 % at 64×64×288), MC = 144
/// rows at KC = 256 (a 144 KiB A block in L2), and for a short k at most 256 KiB of A block
/// and C rows, half of Zen 2's L2 (AMD EPYC VM, three alternating rounds: 4096×128×64 80–82 →
/// 85–86 % of the peak, 2048×256×64 83–84 → 85–86, the other default shapes the same; the
/// Xeon's 2 MiB L2 never needed it). Row blocking leaves every sum's order, so the bits, alone.
/// A k up to 128 with A in place sweeps blocks of B panels row panel by row panel
/// (`blocked::sweep`: 512×2048×64 transposed 72–79 → 84 %); at k = 256 that order lost
/// (512×256×256 84–86 → 81 %), and AVX-512 and NEON are unmeasured (`sweep_k` 0).
const BLOCKING: Blocking = Blocking { kc: 256, kc_one: 320, mc: 144, ac_bytes: 256 * 1024, sweep_k: 128 };
const _: () = assert!(BLOCKING.valid(MR, NR));

/// `C = α·op(A)·op(B) + β·C` (see [`super::gemm`]).
///
/// # Safety
/// The slices satisfy [`super::gemm`]'s length checks for `s`, `m, n ≥ 1`, and the CPU
/// supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm<A: Elem, B: Elem>(s: &GemmShape, alpha: f32, a: &[A], b: &[B], beta: f32, c: &mut [f32]) {
    if let Some(af) = as_f32(a).filter(|_| narrow::applies(s)) {
        // SAFETY: forwarded contract; `applies` checked.
        unsafe { narrow::gemm(s, alpha, af, b, beta, c) };
        return;
    }
    let mut abuf = Buf::<{ BLOCKING.a_len() }>::new();
    let mut bbuf = Buf::<{ BLOCKING.b_len(NR) }>::new();
    // SAFETY: the buffers have the sizes `run` needs and are 64-byte aligned, BLOCKING
    // satisfies its conditions (checked at compile time), the caller guarantees the slice
    // lengths and the CPU features.
    unsafe {
        blocked::run::<Fma6x16, A, B, MR, NR>(s, alpha, a, b, beta, c, abuf.as_mut_ptr(), BLOCKING, bbuf.as_mut_ptr())
    }
}

/// The 6×16 AVX2+FMA micro-kernel.
pub(super) struct Fma6x16;

impl MicroKernel for Fma6x16 {
    const MR: usize = MR;
    const NR: usize = NR;

    #[inline(always)]
    unsafe fn widen<E: Elem>(src: &[E], dst: *mut f32) {
        if let Some(h) = as_f16(src) {
            // SAFETY: `dst` is valid for `src.len()` writes (caller); F16C is present (caller).
            unsafe { convert::x86::f16_to_f32_raw(h, dst) }
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
        // SAFETY: forwarded verbatim; a packed panel holds A[r][p] at a[p·MR + r]. An edge
        // panel of ≤ 4 rows runs the 4-row kernel (8 accumulators still cover the FMA latency),
        // not 6 rows of which 2 would be zero padding.
        unsafe {
            if mr <= 4 {
                tile_packed::<4>(kc, a, b, c, ldc, mr, nr, alpha, beta)
            } else {
                tile_packed::<MR>(kc, a, b, c, ldc, mr, nr, alpha, beta)
            }
        }
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
        // SAFETY: forwarded; A[r][p] at a[r·lda + p] (a[p·lda + r] when trans) is readable
        // for r < R (caller).
        unsafe {
            if trans {
                tile_rx16::<R, true, true>(kc, a, lda, b, c, ldc, R, nr, alpha, beta)
            } else {
                tile_rx16::<R, true, false>(kc, a, lda, b, c, ldc, R, nr, alpha, beta)
            }
        }
    }
}

/// [`tile_rx16`] on a packed panel, compiled on its own: inlined into the loop nest beside the
/// in-place variant, LLVM ran out of ymm registers and spilled accumulators in the k loop.
///
/// # Safety
/// As [`tile_rx16`] with `DIRECT = false`.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_packed<const R: usize>(
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
    // SAFETY: forwarded verbatim.
    unsafe { tile_rx16::<R, false, false>(kc, a, 0, b, c, ldc, mr, nr, alpha, beta) }
}

/// See [`MicroKernel::tile`], for the first `R ≤ 6` rows: `C[..mr][..nr] = α·Ã·B̃ + β·C` with
/// `mr ≤ R`, `A[r][p]` read at `a[p·6 + r]` (a packed panel) or, when `DIRECT`, in place at
/// `a[r·lda + p]` (`a[p·lda + r]` with `TRANS`).
///
/// # Safety
/// As [`MicroKernel::tile`] with MR = 6, NR = 16, `mr ≤ R`, A readable at those positions for
/// r < R, p < kc; the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rx16<const R: usize, const DIRECT: bool, const TRANS: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    let (a_rs, a_ps) = match (DIRECT, TRANS) {
        (false, _) => (1, MR),
        (true, false) => (lda, 1),
        (true, true) => (1, lda),
    };
    const { assert!(R <= MR) };
    debug_assert!(mr <= R);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // One k step: 2 B loads, R A broadcasts, 2·R FMAs.
    let step = |acc: &mut [[__m256; 2]; R], p: usize| {
        // SAFETY: p < kc: the B panel holds kc·16 f32 (aligned, so each 8-lane row half is
        // 32-byte aligned); A[r][p] is readable (caller).
        unsafe {
            let bp = b.add(p * NR);
            let b0 = _mm256_load_ps(bp);
            let b1 = _mm256_load_ps(bp.add(8));
            let ap = a.add(p * a_ps);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r * a_rs));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
    };
    // Four steps per trip: the address arithmetic folds into the loads' displacements.
    let mut p = 0;
    while p + 4 <= kc {
        for u in 0..4 {
            step(&mut acc, p + u);
        }
        p += 4;
    }
    while p < kc {
        step(&mut acc, p);
        p += 1;
    }
    let va = _mm256_set1_ps(alpha);
    if mr == R && nr == NR {
        let vb = _mm256_set1_ps(beta);
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: a full tile: row r < R = mr, columns 0..16 are inside C (caller).
            unsafe {
                let cr = c.add(r * ldc);
                for (h, &v) in row.iter().enumerate() {
                    let d = cr.add(8 * h);
                    let out = if beta == 0.0 {
                        _mm256_mul_ps(va, v)
                    } else if beta == 1.0 {
                        _mm256_fmadd_ps(va, v, _mm256_loadu_ps(d))
                    } else {
                        _mm256_fmadd_ps(va, v, _mm256_mul_ps(vb, _mm256_loadu_ps(d)))
                    };
                    _mm256_storeu_ps(d, out);
                }
            }
        }
    } else {
        // An edge tile: rows < mr, the first nr columns through lane masks (masked-off lanes
        // are neither read nor written).
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks = [0, 8].map(|h| _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32 - h), lanes));
        let vb = _mm256_set1_ps(beta);
        for (r, row) in acc.iter().enumerate().take(mr) {
            // SAFETY: row r < mr and the columns the masks select (< nr) are inside C (caller).
            unsafe {
                let cr = c.add(r * ldc);
                for (h, (&v, &m)) in row.iter().zip(&masks).enumerate() {
                    if nr <= 8 * h {
                        break;
                    }
                    let d = cr.add(8 * h);
                    let out = if beta == 0.0 {
                        _mm256_mul_ps(va, v)
                    } else {
                        _mm256_fmadd_ps(va, v, _mm256_mul_ps(vb, _mm256_maskload_ps(d, m)))
                    };
                    _mm256_maskstore_ps(d, m, out);
                }
            }
        }
    }
}
