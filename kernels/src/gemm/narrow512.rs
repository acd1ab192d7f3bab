//! x86_64 AVX-512F path for a narrow C (`n ≤ 10`, the fc at batch 64):
//! `C[i][j] = α·Σ_p A[i][p]·op(B)[p][j] + β·C[i][j]` with each 128-bit lane of a zmm holding 4
//! consecutive k of one column — `[col 0 | col 1 | col 2 | col 3]`, `[col 4 | … | col 7]`,
//! `[col 8 | col 9 | 0 | 0]` (3 vectors for n > 8, 2 for n > 4, 1 else) — in 6-row tiles (6 A
//! broadcasts and up to 3 op(B) loads per 18 FMAs).
//!
//! It is the AVX2 `narrow.rs` scheme on wider vectors: op(B) is packed per `KB`-deep block by
//! that module's packer (ymm `[col v | col v+4]`, `[col 8 | col 9]` per group of 4 k) and
//! regrouped into this layout in a second pass over the L1-resident block (two `vpermt2ps`
//! per group); A's rows are read in place, 4 k broadcast to the four lanes; each row tile's
//! accumulators are held across k blocks and reduced once (two in-lane shuffles and adds, then
//! one permute that gathers the lane sums in column order). Each output is summed in 4
//! lane-wise partial sums over all of k, as on AVX2, but the tiles and the reduction differ, so
//! the bits may too (same error bound).
//!
//! `TINYKD_ISA=avx512 tinykd bench gemm` (fraction of the AVX-512 peak, against the AVX2 narrow
//! path run under the same kind): 64×10×1024 44.6 → 50–53 %, 64×8×1024 41 → 60 %, 64×4×1024
//! 20 → 41 %, 32×10×1024 41 → 43 %. Tiles of 4 rows: 50 / 58 / 38 %; of 8: 49 / 62 / 44 %. A
//! third of the n = 10 group's third vector is padding, and the loop runs at ~60 % of the
//! peak (its FMAs ~80 % of the time by `perf`); as on the blocked kernel, the loads per FMA
//! seem to be what the zmm loops pay for on this Xeon (no cycle counters in the VM to say).

use super::blocked::Buf;
use super::narrow::{self, group, KB, MAX_N};
use super::GemmShape;
use crate::elem::Elem;
use core::arch::x86_64::*;

/// f32 per regrouped group of 4 k: 3 zmm.
const GROUP: usize = 48;
/// Rows per chunk: their accumulators are held (25 KiB) across the k blocks, and op(B) is
/// packed once per chunk.
const MC: usize = 128;
/// Rows per tile.
const R: usize = 6;

/// `C = α·A·op(B) + β·C` for a shape that [`narrow::applies`].
///
/// # Safety
/// The slices satisfy [`super::gemm`]'s length checks for `s`, `m, n ≥ 1`,
/// [`narrow::applies`]`(s)`, and the CPU supports AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn gemm<B: Elem>(s: &GemmShape, alpha: f32, a: &[f32], b: &[B], beta: f32, c: &mut [f32]) {
    debug_assert!(narrow::applies(s));
    // SAFETY: forwarded contract; n ≤ 4·V in each arm.
    unsafe {
        match s.n {
            9.. => run::<B, 3, 5>(s, alpha, a, b, beta, c),
            5..=8 => run::<B, 2, 4>(s, alpha, a, b, beta, c),
            _ => run::<B, 1, 4>(s, alpha, a, b, beta, c),
        }
    }
}

/// [`gemm`] with `V` zmm per group (columns 0..4V) over the AVX2 packer's `W`-vector groups.
///
/// # Safety
/// As [`gemm`], n ≤ 4·V, and W = 5 when V = 3, else 4.
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
    let mut bp = Buf::<{ KB / 4 * GROUP }>::new();
    let bp = bp.as_mut_ptr();
    let mut held = Buf::<{ MC.div_ceil(R) * R * 3 * 16 }>::new();
    let held = held.as_mut_ptr() as *mut [[__m512; 3]; R] as *mut [[__m512; V]; R];
    for m0 in (0..s.m).step_by(MC) {
        let mc = MC.min(s.m - m0);
        let mut p0 = 0;
        while p0 < s.k {
            let kb = KB.min(s.k - p0);
            let groups = kb.div_ceil(4);
            // SAFETY: `ymm_block` holds KB / 4 groups of 8W f32 and `bp` KB / 4 of 16V, both
            // 64-byte aligned; kb ≤ KB; `b` passed the length check; the CPU features are
            // present.
            unsafe {
                narrow::pack::<B, W>(s, b, p0, kb, ymm_block);
                for g in 0..groups {
                    regroup::<V, W>(ymm_block.add(g * group(W)), bp.add(g * 16 * V));
                }
            }
            let last = p0 + kb == s.k;
            for t in 0..mc.div_ceil(R) {
                let i0 = m0 + R * t;
                let rows = R.min(m0 + mc - i0);
                // SAFETY: rows i0..i0+rows (inside this chunk) of A hold columns p0..p0+kb
                // (caller's length check), missing rows of a short tile read row i0 again (their
                // sums are dropped); the regrouped block holds kb rounded up to 4; `held` has
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

/// One group from the AVX2 packer's layout (`W` ymm: `[col v | col v+4]` for v < 4, then
/// `[col 8 | col 9]`, each half 4 k) to this path's (`V` zmm: lane j of vector u = column
/// 4u + j, 4 k).
///
/// # Safety
/// `src` is readable for 8W f32, `dst` writable for 16V f32 and 64-byte aligned; the CPU
/// supports AVX-512F.
#[inline(always)]
unsafe fn regroup<const V: usize, const W: usize>(src: *const f32, dst: *mut f32) {
    // SAFETY: the reads and writes the contract allows; register work otherwise.
    unsafe {
        // [c0 | c4 | c1 | c5] and [c2 | c6 | c3 | c7] (32-float rows 0-3 of the ymm group).
        let z01 = _mm512_loadu_ps(src);
        let z23 = _mm512_loadu_ps(src.add(16));
        // Lanes of z01 = 0: c0, 1: c4, 2: c1, 3: c5; of z23 (indices + 16) 0: c2, 1: c6, 2: c3,
        // 3: c7.
        let lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
        _mm512_store_ps(dst, _mm512_permutex2var_ps(z01, lo, z23));
        if V > 1 {
            let hi = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
            _mm512_store_ps(dst.add(16), _mm512_permutex2var_ps(z01, hi, z23));
        }
        if V > 2 {
            // [c8 | c9] → [c8 | c9 | 0 | 0].
            let t = _mm256_loadu_ps(src.add(32));
            _mm512_store_ps(dst.add(32), _mm512_castpd_ps(_mm512_zextpd256_pd512(_mm256_castps_pd(t))));
        }
    }
}

/// The R×4V outputs' lane-wise partial sums: `acc[r][u] += Σ_{q<kb} A_r[q]·block[q]` for the
/// R rows `ar` and the regrouped block `bp`.
///
/// # Safety
/// Each `ar[r]` is readable for `kb` f32; `bp` holds kb rounded up to 4 (zero beyond kb),
/// 64-byte aligned; the CPU supports AVX-512F.
#[inline(always)]
unsafe fn tile<const V: usize>(
    kb: usize,
    ar: [*const f32; R],
    bp: *const f32,
    mut acc: [[__m512; V]; R],
) -> [[__m512; V]; R] {
    // SAFETY (loads): q + 4 ≤ full ≤ kb in the loop; the tail reads A through a lane mask and
    // the block up to kb rounded up to 4 (caller). Register work otherwise.
    unsafe {
        let full = kb - kb % 4;
        let mut q = 0;
        while q < full {
            let av: [__m512; R] = core::array::from_fn(|r| _mm512_broadcast_f32x4(_mm_loadu_ps(ar[r].add(q))));
            step(&mut acc, av, bp.add(q / 4 * 16 * V));
            q += 4;
        }
        if q < kb {
            let mask = _mm_cmpgt_epi32(_mm_set1_epi32((kb - q) as i32), _mm_setr_epi32(0, 1, 2, 3));
            let av: [__m512; R] = core::array::from_fn(|r| _mm512_broadcast_f32x4(_mm_maskload_ps(ar[r].add(q), mask)));
            step(&mut acc, av, bp.add(q / 4 * 16 * V));
        }
        acc
    }
}

/// One group of 4 k: `acc[r][u] += av[r]·bp[16u..]`.
///
/// # Safety
/// `o` is readable for 16V f32, 64-byte aligned; the CPU supports AVX-512F.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `u` picks every row's accumulator and the packed vector.
unsafe fn step<const V: usize>(acc: &mut [[__m512; V]; R], av: [__m512; R], o: *const f32) {
    for u in 0..V {
        // SAFETY: 16u + 16 ≤ 16V (caller); AVX-512F present (caller).
        unsafe {
            let bv = _mm512_load_ps(o.add(u * 16));
            for (row, &a) in acc.iter_mut().zip(&av) {
                row[u] = _mm512_fmadd_ps(a, bv, row[u]);
            }
        }
    }
}

/// A row's outputs from its V accumulators: each 128-bit lane summed (two in-lane shuffles and
/// adds leave the lane's total in all four of its slots), then slots 0, 4, 8, 12 gathered —
/// columns 4u..4u+4 in order.
///
/// # Safety
/// The CPU supports AVX-512F.
#[inline(always)]
unsafe fn reduce<const V: usize>(x: &[__m512; V]) -> [f32; 12] {
    let mut out = [0.0f32; 12];
    // SAFETY: register shuffles and 4-float stores inside `out` (u < V ≤ 3).
    unsafe {
        let firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12);
        for (u, &v) in x.iter().enumerate() {
            let s = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
            let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
            let g = _mm512_permutexvar_ps(firsts, s);
            _mm_storeu_ps(out.as_mut_ptr().add(4 * u), _mm512_castps512_ps128(g));
        }
    }
    out
}

/// `d[j] = α·v[j] + β·d[j]` for `j < n` (`β = 0` ignores `d`).
///
/// # Safety
/// `d` is valid for `n ≤ MAX_N` reads and writes; the CPU supports AVX-512F.
#[inline(always)]
unsafe fn update(v: &[f32; 12], n: usize, alpha: f32, beta: f32, d: *mut f32) {
    debug_assert!(n <= MAX_N);
    // SAFETY: lanes < n ≤ MAX_N, masked (caller).
    unsafe {
        let mask: __mmask16 = (1u16 << n) - 1;
        let x = _mm512_mul_ps(_mm512_set1_ps(alpha), _mm512_maskz_loadu_ps(mask, v.as_ptr()));
        let y = if beta == 0.0 { x } else { _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(mask, d), x) };
        _mm512_mask_storeu_ps(d, mask, y);
    }
}
