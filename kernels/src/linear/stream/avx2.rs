//! AVX2+FMA+F16C streaming product: 8 columns per ymm, 4 rows of B per step.

use super::Product;
use crate::elem::{f16, Elem};
use core::any::TypeId;
use core::arch::x86_64::*;

/// Bytes of B ahead of the current four rows whose cache lines are prefetched (at least 4
/// rows): the hardware prefetchers stop at page boundaries, and a B row of 512+ f32 spans
/// pages.
const PREFETCH_BYTES: usize = 64 * 1024;

/// Columns of C kept hot per sweep over B: `m·NC` f32 stay within 16 KiB of L1.
const C_BYTES: usize = 16 * 1024;

/// `C += A·B` (see [`super::accumulate`]).
///
/// # Safety
/// The operand lengths satisfy the checks of [`super::accumulate`] and the CPU supports AVX2,
/// FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn accumulate<W: Elem>(p: &Product<'_, W>, c: &mut [f32]) {
    let f16b = TypeId::of::<W>() == TypeId::of::<f16>();
    let nc = (C_BYTES / 4 / p.m).max(8) / 8 * 8;
    let mut j0 = 0;
    while j0 < p.n {
        let cols = nc.min(p.n - j0);
        // SAFETY: j0 + cols ≤ n; the caller's length guarantees cover every access.
        unsafe {
            if f16b {
                panel(p, p.b.as_ptr() as *const u16, true, c.as_mut_ptr(), j0, cols);
            } else {
                panel(p, p.b.as_ptr() as *const u16, false, c.as_mut_ptr(), j0, cols);
            }
        }
        j0 += cols;
    }
}

/// Loads 8 values of B at element offset `at` (f16 widened). With `len < 8` only the first
/// `len` lanes are meaningful: the load reads 8 elements when B has them (the extra lanes hold
/// other weights, which the caller never stores), else only `len` (the rest 0).
///
/// # Safety
/// Elements `at..at + min(len, 8)` of B are readable, and B has `b_len` elements; the CPU
/// supports AVX2 and F16C.
#[inline(always)]
unsafe fn load_b(b: *const u16, f16b: bool, b_len: usize, at: usize, len: usize) -> __m256 {
    // SAFETY: forwarded contract; the 8-wide loads are taken only when `at + 8 ≤ b_len`.
    unsafe {
        if len >= 8 || at + 8 <= b_len {
            if f16b {
                _mm256_cvtph_ps(_mm_loadu_si128(b.add(at) as *const __m128i))
            } else {
                _mm256_loadu_ps((b as *const f32).add(at))
            }
        } else if f16b {
            let mut t = [0u16; 8];
            for (i, v) in t.iter_mut().enumerate().take(len) {
                *v = *b.add(at + i);
            }
            _mm256_cvtph_ps(_mm_loadu_si128(t.as_ptr() as *const __m128i))
        } else {
            _mm256_maskload_ps((b as *const f32).add(at), mask(len))
        }
    }
}

/// Lanes `0..len` set.
///
/// # Safety
/// The CPU supports AVX2.
#[inline(always)]
unsafe fn mask(len: usize) -> __m256i {
    // SAFETY: plain register arithmetic (AVX2 vouched for by the callers).
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// `C[..m][j0..j0 + cols] += A·B[..][j0..j0 + cols]`, B as raw `u16` (f16) or f32 bits.
///
/// # Safety
/// As [`accumulate`], with `j0 + cols ≤ n`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel<W: Elem>(p: &Product<'_, W>, b: *const u16, f16b: bool, c: *mut f32, j0: usize, cols: usize) {
    let (m, n, k, lda) = (p.m, p.n, p.k, p.lda);
    let a = p.a.as_ptr();
    let esize = if f16b { 2 } else { 4 };
    let b_len = k * n;
    let ahead_rows = (PREFETCH_BYTES / (n * esize)).max(4);
    let k4 = k - k % 4;
    let mut q = 0;
    // SAFETY (every access below): row q + r < k of B at columns < j0 + cols ≤ n, rows i < m
    // of A at column q + r < k and of C at columns < n, all within the checked lengths.
    unsafe {
        while q < k4 {
            let mut j = 0;
            while j < cols {
                let len = cols - j;
                let at = j0 + j;
                let b0 = load_b(b, f16b, b_len, q * n + at, len);
                let b1 = load_b(b, f16b, b_len, (q + 1) * n + at, len);
                let b2 = load_b(b, f16b, b_len, (q + 2) * n + at, len);
                let b3 = load_b(b, f16b, b_len, (q + 3) * n + at, len);
                // One prefetch per 64-byte line of the rows `ahead_rows` ahead (prefetching
                // past the end of B is harmless: it never faults and the address is not read).
                if (at * esize) % 64 < 8 * esize {
                    for r in 0..4 {
                        let ahead = (q + ahead_rows + r) * n + at;
                        _mm_prefetch::<_MM_HINT_T0>((b as *const i8).wrapping_add(ahead * esize));
                    }
                }
                for i in 0..m {
                    let ar = a.add(i * lda + q);
                    let cp = c.add(i * n + at);
                    let mut acc = if len >= 8 { _mm256_loadu_ps(cp) } else { _mm256_maskload_ps(cp, mask(len)) };
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ar), b0, acc);
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ar.add(1)), b1, acc);
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ar.add(2)), b2, acc);
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ar.add(3)), b3, acc);
                    if len >= 8 {
                        _mm256_storeu_ps(cp, acc);
                    } else {
                        _mm256_maskstore_ps(cp, mask(len), acc);
                    }
                }
                j += 8;
            }
            q += 4;
        }
        while q < k {
            let mut j = 0;
            while j < cols {
                let len = cols - j;
                let at = j0 + j;
                let b0 = load_b(b, f16b, b_len, q * n + at, len);
                for i in 0..m {
                    let cp = c.add(i * n + at);
                    let mut acc = if len >= 8 { _mm256_loadu_ps(cp) } else { _mm256_maskload_ps(cp, mask(len)) };
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*a.add(i * lda + q)), b0, acc);
                    if len >= 8 {
                        _mm256_storeu_ps(cp, acc);
                    } else {
                        _mm256_maskstore_ps(cp, mask(len), acc);
                    }
                }
                j += 8;
            }
            q += 1;
        }
    }
}
