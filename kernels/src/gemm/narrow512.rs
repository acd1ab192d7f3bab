//! x86_64 AVX-512F path for a narrow C (`n ≤ 10`, the fc at batch 64):
//! `C[i][j] = α·Σ_p A[i][p]·op(B)[p][j] + β·C[i][j]` with each zmm holding 8 consecutive k of
//! two columns — vector v = `[col 2v | col 2v+1]` (⌈n/2⌉ vectors, every lane used for even n)
//! — in 4-row tiles (4 A broadcasts and up to 5 op(B) loads per 20 FMAs).
//!
//! op(B) is packed per `KB`-deep block: an f32, untransposed B straight from its rows
//! ([`rows8`]: 8 masked row loads, a transpose of the rows' column pairs, 19 shuffles per 8 k);
//! any other by the AVX2 `narrow.rs` packer (ymm `[col v | col v+4]`, `[col 8 | col 9]` per
//! group of 4 k) regrouped into this layout in a second pass over the L1-resident block (two
//! such groups → one of 8 k, one `vpermt2ps` per vector). A's rows are read in place, 8 k broadcast to both
//! halves (`vbroadcastf64x4`); each row tile's accumulators are held across k blocks and
//! reduced once (`shuffle_f32x4` pairs add the two 4-lane halves of four columns at once, an
//! unpack and a swap sum each 128-bit lane, one two-source permute gathers the sums in column
//! order). Each output is summed in 8 lane-wise partial sums over all of k: another order than
//! the AVX2 path's (4 partial sums), inside the same error bound.
//!
//! `TINYKD_ISA=avx512 tinykd bench gemm` (fraction of the AVX-512 peak, three alternating
//! rounds against the previous layout — 4 k × 4 columns per zmm, `[c0..c3]`, `[c4..c7]`,
//! `[c8 c9 0 0]`, 6-row tiles, a sixth of the lanes empty at n = 10): 64×10×1024 54.7–57.8 →
//! 64.7–70.4 %, 64×10×2048 54.9–59.3 → 64.8–70.6, 32×10×1024 44.9–46.7 → 54.5–59.9, 64×8×1024
//! 61.2–67.1 → 64.9–70.5, 64×4×1024 43.6–44.5 → 47.3–51.9; f16 B 64×10×1024 55.2–59.8 →
//! 66.3–72.0. By `perf` at 64×10×1024 the k loop then took ~76 % of the time (running near
//! the 85–90 % an L1-resident zmm loop reaches on this Xeon, see `avx512.rs`), packing ~12 %,
//! the held accumulators and reductions the rest; packing from the rows (`rows8`, instead of
//! the AVX2 packer and a regroup pass), three alternating rounds: 64×10×1024 66.0–66.9 →
//! 71.5–72.5 %, 32×10×1024 57.1–57.6 → 63.9–65.9, 64×8×1024 65.7–66.7 → 69.3–70.7. Measured
//! and not kept: tiles of 3 rows (61.9 %)
//! or 5 (25 accumulators + 5 broadcasts + 1 B: the loop spills, 10 %); 6 or 8 rows for n ≤ 6
//! (fewer vectors per row; the compiled loop keeps its accumulators in memory, 3–7 %); a
//! 256-, 512- or 768-deep block (within noise of 384); prefetching the next tile's A rows
//! from the k loop, two lines per 8 k, as the 6×64 kernel does (`avx512.rs`):
//! 64×10×1024 72.0–73.6 → 61.7–62.4 %, 32×10×1024 65.0–68.1 → 56.3–58.4.

use super::blocked::Buf;
use super::narrow::{self, group, KB, MAX_N};
use super::{GemmShape, Trans};
use crate::elem::{as_f32, Elem};
use core::arch::x86_64::*;

/// f32 per regrouped group of 8 k: up to 5 zmm.
const GROUP: usize = 80;
/// Rows per chunk: their accumulators are held (40 KiB) across the k blocks, and op(B) is
/// packed once per chunk.
const MC: usize = 128;
/// Rows per tile.
const R: usize = 4;

/// `C = α·A·op(B) + β·C` for a shape that [`narrow::applies`].
///
/// # Safety
/// The slices satisfy [`super::gemm`]'s length checks for `s`, `m, n ≥ 1`,
/// [`narrow::applies`]`(s)`, and the CPU supports AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn gemm<B: Elem>(s: &GemmShape, alpha: f32, a: &[f32], b: &[B], beta: f32, c: &mut [f32]) {
    debug_assert!(narrow::applies(s));
    // SAFETY: forwarded contract; n ≤ 2·V in each arm, W = 5 exactly when n > 8.
    unsafe {
        match s.n {
            9.. => run::<B, 5, 5>(s, alpha, a, b, beta, c),
            7..=8 => run::<B, 4, 4>(s, alpha, a, b, beta, c),
            5..=6 => run::<B, 3, 4>(s, alpha, a, b, beta, c),
            3..=4 => run::<B, 2, 4>(s, alpha, a, b, beta, c),
            _ => run::<B, 1, 4>(s, alpha, a, b, beta, c),
        }
    }
}

/// [`gemm`] with `V` zmm per group of 8 k (columns 0..2V) over the AVX2 packer's `W`-vector
/// groups of 4 k.
///
/// # Safety
/// As [`gemm`], n ≤ 2·V, and W = 5 when n > 8, else 4.
#[inline(always)]
unsafe fn run<B: Elem, const V: usize, const W: usize>(
    s: &GemmShape,
    alpha: f32,
    a: &[f32],
    b: &[B],
    beta: f32,
    c: &mut [f32],
) {
    let mut ymm_block = Buf::<{ KB / 4 * group(5) }>::new();
    let ymm_block = ymm_block.as_mut_ptr();
    let mut bp = Buf::<{ KB / 8 * GROUP }>::new();
    let bp = bp.as_mut_ptr();
    let mut held = Buf::<{ MC.div_ceil(R) * R * 5 * 16 }>::new();
    let held = held.as_mut_ptr() as *mut [[__m512; 5]; R] as *mut [[__m512; V]; R];
    for m0 in (0..s.m).step_by(MC) {
        let mc = MC.min(s.m - m0);
        let mut p0 = 0;
        while p0 < s.k {
            let kb = KB.min(s.k - p0);
            let quads = kb.div_ceil(4);
            // SAFETY: `ymm_block` holds KB / 4 groups of 8W f32 and `bp` KB / 8 of 16V, both
            // 64-byte aligned; kb ≤ KB, and an odd quad count is below KB / 4 (even), so the
            // zeroed group after the last fits; `b` passed the length check; the CPU features
            // are present.
            unsafe {
                match as_f32(b) {
                    Some(bf) if s.tb == Trans::N => {
                        for g in 0..kb.div_ceil(8) {
                            rows8::<V>(bf, s, p0 + 8 * g, (kb - 8 * g).min(8), bp.add(g * 16 * V));
                        }
                    }
                    _ => {
                        narrow::pack::<B, W>(s, b, p0, kb, ymm_block);
                        if quads % 2 == 1 {
                            core::ptr::write_bytes(ymm_block.add(quads * group(W)), 0, group(W));
                        }
                        for g in 0..quads.div_ceil(2) {
                            regroup::<V, W>(ymm_block.add(2 * g * group(W)), bp.add(g * 16 * V));
                        }
                    }
                }
            }
            let last = p0 + kb == s.k;
            for t in 0..mc.div_ceil(R) {
                let i0 = m0 + R * t;
                let rows = R.min(m0 + mc - i0);
                // SAFETY: rows i0..i0+rows (inside this chunk) of A hold columns p0..p0+kb
                // (caller's length check), missing rows of a short tile read row i0 again (their
                // sums are dropped); the regrouped block holds kb rounded up to 8; `held` has
                // ⌈MC / R⌉ 64-byte aligned slots, t < ⌈MC / R⌉, each written (p0 = 0) before it
                // is read; C's outputs written are rows < m, columns < n.
                unsafe {
                    let a0 = a.as_ptr().add(i0 * s.lda + p0);
                    let ar: [*const f32; R] = core::array::from_fn(|r| if r < rows { a0.add(r * s.lda) } else { a0 });
                    let slot = held.add(t);
                    let acc = if p0 == 0 { [[_mm512_setzero_ps(); V]; R] } else { slot.read() };
                    let acc = tile::<V>(kb, ar, bp, acc);
                    if last {
                        for (r, x) in acc.iter().enumerate().take(rows) {
                            update(&reduce(x), s.n, alpha, beta, c.as_mut_ptr().add((i0 + r) * s.ldc));
                        }
                    } else {
                        slot.write(acc);
                    }
                }
            }
            p0 += kb;
        }
    }
}

/// Two groups of the AVX2 packer's layout (`W` ymm each, 4 k: `[col v | col v+4]` for v < 4,
/// then `[col 8 | col 9]`) to one of this path's (`V` zmm, 8 k: vector v =
/// `[col 2v | col 2v+1]`, each half the first group's 4 k then the second's).
///
/// # Safety
/// `src` is readable for 16W f32, `dst` writable for 16V f32 and 64-byte aligned; the CPU
/// supports AVX-512F.
#[inline(always)]
unsafe fn regroup<const V: usize, const W: usize>(src: *const f32, dst: *mut f32) {
    // SAFETY: the reads and writes the contract allows; register work otherwise.
    unsafe {
        // In 4-float chunks, a group is c0 c4 c1 c5 c2 c6 c3 c7 (c8 c9): its first 16 floats
        // hold columns 0, 4, 1, 5 and the next 16 columns 2, 6, 3, 7.
        let (g0, g1) = (src, src.add(group(W)));
        let (a0, a1) = (_mm512_loadu_ps(g0), _mm512_loadu_ps(g1));
        // Chunks 0 and 2 (columns 0, 1 or 2, 3) of both groups, interleaved by group.
        let even = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
        // Chunks 1 and 3 (columns 4, 5 or 6, 7).
        let odd = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
        _mm512_store_ps(dst, _mm512_permutex2var_ps(a0, even, a1));
        if V > 1 {
            let (b0, b1) = (_mm512_loadu_ps(g0.add(16)), _mm512_loadu_ps(g1.add(16)));
            _mm512_store_ps(dst.add(16), _mm512_permutex2var_ps(b0, even, b1));
            if V > 2 {
                _mm512_store_ps(dst.add(32), _mm512_permutex2var_ps(a0, odd, a1));
            }
            if V > 3 {
                _mm512_store_ps(dst.add(48), _mm512_permutex2var_ps(b0, odd, b1));
            }
        }
        if V > 4 {
            // [c8 | c9] of each group → [c8 | c8' | c9 | c9'].
            let (t0, t1) =
                (_mm256_castps_pd(_mm256_loadu_ps(g0.add(32))), _mm256_castps_pd(_mm256_loadu_ps(g1.add(32))));
            let t = _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(t0), t1));
            let order = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
            _mm512_store_ps(dst.add(64), _mm512_permutexvar_ps(order, t));
        }
    }
}

/// One group of this path's layout straight from `rows ≤ 8` rows of an f32, untransposed B
/// (rows p..p+rows, zeros past them): a transpose of the rows' column pairs as 64-bit values
/// (unpacks, then 128-bit shuffles, then one two-source permute per vector that also splits
/// each pair into the two halves) — 19 shuffles per 8 rows where the AVX2 packer and
/// [`regroup`] take ~36 and a round trip through memory.
///
/// # Safety
/// Rows p..p+rows of B hold n ≤ 2V ≤ 10 elements each (length check); `dst` is writable for
/// 16V f32, 64-byte aligned; the CPU supports AVX-512F.
#[inline(always)]
unsafe fn rows8<const V: usize>(b: &[f32], s: &GemmShape, p: usize, rows: usize, dst: *mut f32) {
    // SAFETY: masked loads of n elements of rows < p + rows (caller); register work; V
    // aligned stores into `dst` (caller).
    unsafe {
        let mask: __mmask16 = (1u16 << s.n) - 1;
        let x: [__m512d; 8] = core::array::from_fn(|t| {
            if t < rows {
                _mm512_castps_pd(_mm512_maskz_loadu_ps(mask, b.as_ptr().add((p + t) * s.ldb)))
            } else {
                _mm512_setzero_pd()
            }
        });
        // Row t as doubles: P0..P4 (P_v = columns 2v, 2v+1), then zeros. Per row pair, by
        // 128-bit lane: lo = [P0 | P2 | P4 | 0], hi = [P1 | P3 | 0 | 0] (each [row t, row t+1]).
        let lo: [__m512d; 4] = core::array::from_fn(|q| _mm512_unpacklo_pd(x[2 * q], x[2 * q + 1]));
        let hi: [__m512d; 4] = core::array::from_fn(|q| _mm512_unpackhi_pd(x[2 * q], x[2 * q + 1]));
        // Per half of the rows (0–3, 4–7): [P0 | P2] and [P1 | P3] for rows (0, 1) then (2, 3),
        // and [P4 | 0].
        let a02: [__m512d; 2] =
            core::array::from_fn(|h| _mm512_shuffle_f64x2::<0b01_00_01_00>(lo[2 * h], lo[2 * h + 1]));
        let a13: [__m512d; 2] =
            core::array::from_fn(|h| _mm512_shuffle_f64x2::<0b01_00_01_00>(hi[2 * h], hi[2 * h + 1]));
        let a4: [__m512d; 2] =
            core::array::from_fn(|h| _mm512_shuffle_f64x2::<0b11_10_11_10>(lo[2 * h], lo[2 * h + 1]));
        // Float indices, in the two sources (rows 0–3, rows 4–7), of the pair held in 128-bit
        // lanes 0 and 2 (rows 0, 1 and 2, 3): its first column for rows 0..8, then its second;
        // `second`: the pair in lanes 1 and 3.
        let first = _mm512_setr_epi32(0, 2, 8, 10, 16, 18, 24, 26, 1, 3, 9, 11, 17, 19, 25, 27);
        let second = _mm512_add_epi32(first, _mm512_set1_epi32(4));
        let out = |src: [__m512d; 2], idx: __m512i| {
            _mm512_permutex2var_ps(_mm512_castpd_ps(src[0]), idx, _mm512_castpd_ps(src[1]))
        };
        _mm512_store_ps(dst, out(a02, first));
        if V > 1 {
            _mm512_store_ps(dst.add(16), out(a13, first));
        }
        if V > 2 {
            _mm512_store_ps(dst.add(32), out(a02, second));
        }
        if V > 3 {
            _mm512_store_ps(dst.add(48), out(a13, second));
        }
        if V > 4 {
            _mm512_store_ps(dst.add(64), out(a4, first));
        }
    }
}

/// The R×2V outputs' lane-wise partial sums: `acc[r][v] += Σ_{q<kb} A_r[q]·block[q]` for the
/// R rows `ar` and the regrouped block `bp`.
///
/// # Safety
/// Each `ar[r]` is readable for `kb` f32; `bp` holds kb rounded up to 8 (zero beyond kb),
/// 64-byte aligned; the CPU supports AVX-512F and AVX2.
#[inline(always)]
unsafe fn tile<const V: usize>(
    kb: usize,
    ar: [*const f32; R],
    bp: *const f32,
    mut acc: [[__m512; V]; R],
) -> [[__m512; V]; R] {
    // SAFETY (loads): q + 8 ≤ full ≤ kb in the loop; the tail reads A through a lane mask and
    // the block up to kb rounded up to 8 (caller). Register work otherwise.
    unsafe {
        let full = kb - kb % 8;
        let mut q = 0;
        while q < full {
            let av: [__m512; R] = core::array::from_fn(|r| broadcast8(_mm256_loadu_ps(ar[r].add(q))));
            step(&mut acc, av, bp.add(q / 8 * 16 * V));
            q += 8;
        }
        if q < kb {
            let mask =
                _mm256_cmpgt_epi32(_mm256_set1_epi32((kb - q) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            let av: [__m512; R] = core::array::from_fn(|r| broadcast8(_mm256_maskload_ps(ar[r].add(q), mask)));
            step(&mut acc, av, bp.add(q / 8 * 16 * V));
        }
        acc
    }
}

/// `[x | x]`.
///
/// # Safety
/// The CPU supports AVX-512F.
#[inline(always)]
unsafe fn broadcast8(x: __m256) -> __m512 {
    // SAFETY: register work (a load folded into it becomes `vbroadcastf64x4`).
    unsafe { _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(x))) }
}

/// One group of 8 k: `acc[r][v] += av[r]·bp[16v..]`.
///
/// # Safety
/// `o` is readable for 16V f32, 64-byte aligned; the CPU supports AVX-512F.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `v` picks every row's accumulator and the packed vector.
unsafe fn step<const V: usize>(acc: &mut [[__m512; V]; R], av: [__m512; R], o: *const f32) {
    for v in 0..V {
        // SAFETY: 16v + 16 ≤ 16V (caller); AVX-512F present (caller).
        unsafe {
            let bv = _mm512_load_ps(o.add(v * 16));
            for (row, &a) in acc.iter_mut().zip(&av) {
                row[v] = _mm512_fmadd_ps(a, bv, row[v]);
            }
        }
    }
}

/// A row's outputs from its V accumulators (vector v: 8 partial sums of column 2v, then 8 of
/// column 2v+1): the two 4-lane halves of each column added (`shuffle_f32x4` pairs vectors, so
/// one add serves four columns), then each 128-bit lane summed by an unpack and a swap, and
/// one two-source permute gathering the sums in column order.
///
/// # Safety
/// The CPU supports AVX-512F.
#[inline(always)]
unsafe fn reduce<const V: usize>(x: &[__m512; V]) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    // SAFETY: register work and a 16-float store into `out`.
    unsafe {
        let zero = _mm512_setzero_ps();
        let get = |v: usize| if v < V { x[v] } else { zero };
        // Lanes 4j..4j+4 of `pairs(x_v, x_v+1)`: column 2v + j, 4 partial sums.
        let pairs = |a: __m512, b: __m512| {
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
        };
        let (z0, z1, z2) = (pairs(get(0), get(1)), pairs(get(2), get(3)), pairs(get(4), zero));
        // 128-bit lane j of t: [Σ z0 lane j, Σ z1 lane j] twice — columns j and 4 + j.
        let t = _mm512_add_ps(_mm512_unpacklo_ps(z0, z1), _mm512_unpackhi_ps(z0, z1));
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t));
        // 128-bit lane j of u: Σ z2 lane j (column 8 + j) in all four slots.
        let u = _mm512_add_ps(z2, _mm512_permute_ps::<0b10_11_00_01>(z2));
        let u = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 16, 20, 24, 28, 0, 0, 0, 0);
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_permutex2var_ps(t, order, u));
    }
    out
}

/// `d[j] = α·v[j] + β·d[j]` for `j < n` (`β = 0` ignores `d`).
///
/// # Safety
/// `d` is valid for `n ≤ MAX_N` reads and writes; the CPU supports AVX-512F.
#[inline(always)]
unsafe fn update(v: &[f32; 16], n: usize, alpha: f32, beta: f32, d: *mut f32) {
    debug_assert!(n <= MAX_N);
    // SAFETY: lanes < n ≤ MAX_N, masked (caller).
    unsafe {
        let mask: __mmask16 = (1u16 << n) - 1;
        let x = _mm512_mul_ps(_mm512_set1_ps(alpha), _mm512_loadu_ps(v.as_ptr()));
        let y = if beta == 0.0 { x } else { _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(mask, d), x) };
        _mm512_mask_storeu_ps(d, mask, y);
    }
}
