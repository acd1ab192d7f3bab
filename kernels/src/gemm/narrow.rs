//! x86_64 AVX2+FMA path for a narrow C (`n ≤ 10`, e.g. an fc with 10 classes at batch 64):
//! each output as a dot product along k, `C[i][j] = α·Σ_p A[i][p]·op(B)[p][j] + β·C[i][j]`,
//! 8 k-lanes at a time in 2×5 tiles of outputs (10 accumulators, 2 A and 5 Bᵀ loads per 8 k).
//!
//! The 6×16 micro-kernel puts C's columns in its lanes, so with n = 10 it leaves 6 of 16 lanes
//! idle. Here the lanes run along k, which is long, and A's rows are read in place (f32,
//! untransposed); op(B) is transposed (8×8 in registers where it can, f16 widened) once per k
//! block into `Bᵀ` on the stack (40 KiB), `KB` deep, zero-padded to 10 rows and to a multiple
//! of 8 columns. Loop order: k block → 5-column tile (its 5 Bᵀ rows, 20 KiB, stay in L1) →
//! row pairs (A streams from L2). Each output sums its k block in 8 lane-wise partial sums,
//! reduced at the end, and the k blocks add into C one after another: another order than the
//! blocked path's, inside the same error bound (see the module docs of `gemm`).
//!
//! `tinykd bench gemm --shape 64x10x1024`: 40 → 73–77 % of the FMA peak (same-run ratios;
//! padding Bᵀ's rows by a cache line took it from 69–71 %). Measured and not kept: row pairs
//! outside the column tiles, with KB = 512 or 1024 (A's pair stays in L1 for both tiles, Bᵀ
//! does not): 61–71 %.

use super::avx2::Fma6x16;
use super::blocked::{as_f16, as_f32, Buf, MicroKernel};
use super::{GemmShape, Trans};
use crate::elem::Elem;
use core::arch::x86_64::*;

/// Widest C this path takes (two 5-column tiles).
pub(super) const MAX_N: usize = 10;
/// Shortest k it takes: below, the per-output reductions outweigh the lanes it fills.
pub(super) const MIN_K: usize = 64;
/// Depth of a `Bᵀ` block (5 rows of it, 20 KiB, stay in L1 while A streams past; 512 was
/// slower, 64×10×1024 at 64 vs 70 % of the peak: twice the per-output reductions).
const KB: usize = 1024;
/// Row stride of `Bᵀ`: one cache line more than KB, so that its rows (and A's, when lda is a
/// multiple of 1024) do not all map to the same L1 set at a given k.
const LDBT: usize = KB + 16;
/// Columns per tile.
const NC: usize = 5;

/// Whether this path computes `s` (with an f32 A): a narrow C, a long k, A untransposed.
pub(super) fn applies(s: &GemmShape) -> bool {
    s.n <= MAX_N && s.k >= MIN_K && s.ta == Trans::N
}

/// `C = α·A·op(B) + β·C` for a shape that [`applies`].
///
/// # Safety
/// The slices satisfy [`super::gemm`]'s length checks for `s`, `m, n ≥ 1`, [`applies`]`(s)`,
/// and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm<B: Elem>(s: &GemmShape, alpha: f32, a: &[f32], b: &[B], beta: f32, c: &mut [f32]) {
    debug_assert!(applies(s));
    let mut bt = Buf::<{ MAX_N * LDBT }>::new();
    let bt = bt.as_mut_ptr();
    let cols = s.n.next_multiple_of(NC);
    let mut p0 = 0;
    while p0 < s.k {
        let kb = KB.min(s.k - p0);
        let kb8 = kb.next_multiple_of(8);
        // SAFETY: `bt` holds MAX_N rows of LDBT f32; rows j < cols ≤ MAX_N, columns < kb8 ≤ KB.
        unsafe { pack_bt(s, b, p0, kb, kb8, cols, bt) };
        let beta_p = if p0 == 0 { beta } else { 1.0 };
        for j0 in (0..cols).step_by(NC) {
            for i0 in (0..s.m).step_by(2) {
                let two = i0 + 1 < s.m;
                // SAFETY: rows i0 (and i0 + 1 when `two`) of A hold columns p0..p0+kb (caller's
                // length check); Bᵀ rows j0..j0+5 hold kb8 packed values; C's outputs written
                // are rows < m, columns < n.
                unsafe {
                    let a0 = a.as_ptr().add(i0 * s.lda + p0);
                    let a1 = if two { a0.add(s.lda) } else { a0 };
                    let sums = tile(kb, a0, a1, bt.add(j0 * LDBT));
                    for (r, row) in sums.iter().enumerate().take(1 + two as usize) {
                        for (jj, &v) in row.iter().enumerate().take(s.n.saturating_sub(j0).min(NC)) {
                            let d = c.as_mut_ptr().add((i0 + r) * s.ldc + j0 + jj);
                            *d = if beta_p == 0.0 { alpha * v } else { alpha * v + beta_p * *d };
                        }
                    }
                }
            }
        }
        p0 += kb;
    }
}

/// Writes `Bᵀ[j][q] = op(B)[p0 + q][j]` (widened) to `bt[j·LDBT + q]` for `j < n`, `q < kb`,
/// and zeros for `n ≤ j < cols` or `kb ≤ q < kb8`.
///
/// # Safety
/// `bt` is valid for `cols·LDBT` writes, `kb8 ≤ KB`; `b` satisfies the length check for `s`;
/// the CPU supports AVX2 and F16C.
#[inline(always)]
unsafe fn pack_bt<B: Elem>(s: &GemmShape, b: &[B], p0: usize, kb: usize, kb8: usize, cols: usize, bt: *mut f32) {
    // B untransposed with ≥ 8 columns: Bᵀ's rows by 8×8 register transposes over `done` rows
    // of B — columns 0..8, then (n > 8) columns n−8..n, of which the rows ≥ 8 are kept — and
    // the rest element by element below.
    let mut done = 0;
    if s.tb == Trans::N && s.n >= 8 {
        let offsets: &[usize] = if s.n > 8 { &[0, s.n - 8] } else { &[0] };
        while done + 8 <= kb {
            for &c0 in offsets {
                let rows: [&[B]; 8] = core::array::from_fn(|r| &b[(p0 + done + r) * s.ldb + c0..][..8]);
                // SAFETY: each of the 8 rows has 8 elements (sliced above); `bt` rows c0 + t <
                // n take 8 values at column `done` + 8 ≤ kb ≤ KB; AVX2 and F16C present
                // (caller).
                unsafe {
                    let t = transpose8(rows.map(|r| load8(r)));
                    for (t, v) in t.iter().enumerate() {
                        if c0 == 0 || c0 + t >= 8 {
                            _mm256_storeu_ps(bt.add((c0 + t) * LDBT + done), *v);
                        }
                    }
                }
            }
            done += 8;
        }
    }
    for j in 0..cols {
        // SAFETY: row j < cols of `bt`, columns < kb8 ≤ KB (caller).
        let row = unsafe { bt.add(j * LDBT) };
        if j < s.n {
            match s.tb {
                // op(B) = Bᵀ: row j of B is Bᵀ's row, contiguous.
                // SAFETY: `row` has kb writable slots; F16C present (caller).
                Trans::T => unsafe { Fma6x16::widen(&b[j * s.ldb + p0..][..kb], row) },
                // op(B) = B: column j, one element per row of B (the first `done` rows were
                // transposed 8×8 at a time above).
                Trans::N => {
                    let col = &b[p0 * s.ldb + j..];
                    for q in done..kb {
                        // SAFETY: q < kb; element (p0 + q, j) is inside `b` (length check).
                        unsafe { row.add(q).write(col[q * s.ldb].to_f32()) };
                    }
                }
            }
            for q in kb..kb8 {
                // SAFETY: q < kb8 ≤ KB.
                unsafe { row.add(q).write(0.0) };
            }
        } else {
            for q in 0..kb8 {
                // SAFETY: q < kb8 ≤ KB.
                unsafe { row.add(q).write(0.0) };
            }
        }
    }
}

/// The first 8 values of `x` widened to f32.
///
/// # Safety
/// `x.len() ≥ 8`; the CPU supports AVX and F16C.
#[inline(always)]
unsafe fn load8<E: Elem>(x: &[E]) -> __m256 {
    // SAFETY: 8 elements readable (caller); F16C present (caller).
    unsafe {
        if let Some(h) = as_f16(x) {
            _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i))
        } else if let Some(f) = as_f32(x) {
            _mm256_loadu_ps(f.as_ptr())
        } else {
            _mm256_setr_ps(
                x[0].to_f32(),
                x[1].to_f32(),
                x[2].to_f32(),
                x[3].to_f32(),
                x[4].to_f32(),
                x[5].to_f32(),
                x[6].to_f32(),
                x[7].to_f32(),
            )
        }
    }
}

/// The transpose of the 8×8 matrix whose rows are `r`: lane `i` of output `j` is lane `j`
/// of input `i`.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register shuffles only (AVX: caller).
    unsafe {
        let t: [__m256; 8] = core::array::from_fn(|i| {
            let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(x, y)
            } else {
                _mm256_unpackhi_ps(x, y)
            }
        });
        // t[0] = r0₀ r1₀ r0₁ r1₁ | r0₄ r1₄ r0₅ r1₅, t[1] the same for lanes 2, 3 | 6, 7, …
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        // u[j] (j < 4) holds column j of rows 0–3 | column j + 4 of rows 0–3; u[4 + j] rows 4–7.
        [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ]
    }
}

/// The 2×5 outputs `Σ_{q<kb} A_r[q]·Bᵀ[c][q]` for A rows `a0`, `a1` and Bᵀ rows `bt[c·KB..]`.
///
/// # Safety
/// `a0`, `a1` are readable for `kb` f32; the 5 Bᵀ rows for `kb` rounded up to 8 (zero
/// beyond kb); the CPU supports AVX2 and FMA.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `cc` picks a Bᵀ row and both rows' accumulators.
unsafe fn tile(kb: usize, a0: *const f32, a1: *const f32, bt: *const f32) -> [[f32; NC]; 2] {
    // SAFETY: register setup (AVX: caller).
    let mut acc = unsafe { [[_mm256_setzero_ps(); NC]; 2] };
    let body = kb - kb % 8;
    let mut q = 0;
    // SAFETY (loads): q + 8 ≤ body ≤ kb in the loop; the tail reads A through a lane mask and
    // Bᵀ up to kb rounded up to 8 (caller).
    unsafe {
        while q < body {
            let av = [_mm256_loadu_ps(a0.add(q)), _mm256_loadu_ps(a1.add(q))];
            for cc in 0..NC {
                let bv = _mm256_loadu_ps(bt.add(cc * LDBT + q));
                acc[0][cc] = _mm256_fmadd_ps(av[0], bv, acc[0][cc]);
                acc[1][cc] = _mm256_fmadd_ps(av[1], bv, acc[1][cc]);
            }
            q += 8;
        }
        if q < kb {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((kb - q) as i32), lanes);
            let av = [_mm256_maskload_ps(a0.add(q), mask), _mm256_maskload_ps(a1.add(q), mask)];
            for cc in 0..NC {
                let bv = _mm256_loadu_ps(bt.add(cc * LDBT + q));
                acc[0][cc] = _mm256_fmadd_ps(av[0], bv, acc[0][cc]);
                acc[1][cc] = _mm256_fmadd_ps(av[1], bv, acc[1][cc]);
            }
        }
    }
    let mut out = [[0.0f32; NC]; 2];
    for (o, v) in out.iter_mut().zip(&acc) {
        for (x, &w) in o.iter_mut().zip(v) {
            // SAFETY: AVX present (caller).
            *x = unsafe { hsum(w) };
        }
    }
    out
}

/// The sum of a vector's 8 lanes.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register shuffles only (AVX: caller).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}
