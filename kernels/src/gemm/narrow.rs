//! x86_64 AVX2+FMA path for a narrow C (`n ≤ 10`, e.g. an fc with 10 classes at batch 64):
//! `C[i][j] = α·Σ_p A[i][p]·op(B)[p][j] + β·C[i][j]` with the lanes along k, 4 k × 2 columns
//! per vector, in 2-row × 10-column tiles (10 accumulators, 2 A broadcasts and 5 op(B) loads
//! per 4 k; for n ≤ 8, 2 × 8 with 4 vectors).
//!
//! The 6×16 micro-kernel puts C's columns in its lanes, so with n = 10 it leaves 6 of 16 lanes
//! idle. Here a vector holds 4 consecutive k for two columns: op(B) is packed once per k block,
//! `KB` deep, in groups of 4 k, each group 5 vectors `[col v | col v+4]` (v < 4) and
//! `[col 8 | col 9]`, every half the 4 k in order (zero past n and past k); A's rows are read
//! in place (f32, untransposed), 4 k broadcast to both halves. Packing is half a transpose (a
//! 4×4 one in each 128-bit lane, 8 shuffles per 4 rows of B). Loop order: chunk of `MC` rows →
//! k block → row pairs (A streams from L2, the packed block, 15 KiB, stays in L1); a pair's
//! accumulators are held in a buffer between k blocks and reduced once, after the last, by
//! three `hadd`s per 8 outputs, which leave each column's sum in order. [`pack_whole`] packs
//! all of op(B) once in the same layout (blocks start at group `p0 / 4`) for [`gemm_packed`]:
//! the same loop and bits without the per-call pack (the trainer's fc, its weights packed once
//! per forward and shared by the threads). Each output is summed in 4 lane-wise partial sums
//! over all of k, reduced at the end: another order than the blocked path's, inside the same
//! error bound (see the module docs of `gemm`).
//!
//! `tinykd bench gemm --shape 64x10x1024` (fraction of the FMA peak timed in the same rounds):
//! 40 % on the 6×16 kernel; 73–77 % as 8-k dot products over two 5-column tiles with full 8×8
//! transposes; ~82 % with this layout (half the packing shuffles, A read once, no per-output
//! horizontal sums); 86 % with the accumulators held across k blocks (the reductions and C
//! updates of all but the last block were ~10 % of the time). n ≤ 8 runs 4 vectors per group
//! (64×8×1024 ~63 → 76–85 %); n ≤ 4 leaves half of each vector empty (64×4×1024 39–41 %, from
//! 17 % when such rows were packed element by element). Of what is left, packing is ~5 %
//! (~10 % at m = 32) and A's stream from L2 ~3 % (A's rows held in L1: +3 %; not a matter of
//! L1 sets — a padded row stride is no faster — nor of prefetching); on the AMD EPYC VM, with
//! packing skipped (wrong results, timing only) 64×10×1024 ran at 87–90 % against 79–82 %, and
//! a standalone pack loop took ~9.6 cycles per group of 4 rows; over a whole pack
//! ([`gemm_packed`], `tinykd bench gemm --packed-b`, three alternating rounds) 64×10×1024
//! 88.5–89.2 % against 83.3–86.0 % per call, 64×10×2048 85.2–87.9 against 81.3–83.8, 32×10×1024
//! 90.0–92.2 against 80.0–81.9 (a whole pack with 16-, 32- or 64-row chunks, or KB 192, 256
//! or 512, no faster). Measured and not kept:
//! columns 0–7 as an outer product with A broadcast per k (one broadcast per FMA: 62 %);
//! unrolling the k loop 4× (2× is kept: +3 % on Zen 2, no gain measured on the Xeon); software
//! prefetch of A (the next pair's rows at the tile start or through the tile, into L1 or L2;
//! the current rows 128 B–1 KiB ahead); prefetch of B while packing; packing fused with the
//! first row pair's FMAs; the next block packed a slice after each tile into a second buffer
//! (−3 to −5 %: the two blocks crowd L1; again on the EPYC VM, −3 to −8 % at KB 384 and −5 to
//! −9 % at KB 256, where both blocks fit L1: the pack's shuffles slow the FMAs); columns 8–9
//! packed from four aligned loads, three blends and one `vpermps` instead of five shuffles (the
//! pack 9.6 → 9.0 cycles per group standalone, ~0.5 % of the GEMM); equal-depth k blocks; KB
//! of 256 or 320 (more block passes) or 512 (the block, A's rows and the prefetched
//! lines no longer fit L1's 8 ways); 3-row tiles (15 accumulators, op(B) as memory operands of
//! the FMAs, in inline assembly since the compiled loop spills): 64×10×1024 108–110 → 95–98
//! GFLOP/s on the AVX-512 Xeon (1.2 loads per FMA instead of 0.7).

use super::blocked::Buf;
use super::{GemmShape, Trans};
use crate::elem::{as_f16, as_f32, f16, Elem};
use core::arch::x86_64::*;

/// Widest C this path takes (two columns per vector, five vectors).
pub(super) const MAX_N: usize = 10;
/// Shortest k it takes: below, the per-tile reductions outweigh the lanes it fills.
pub(super) const MIN_K: usize = 64;
/// Depth of a packed op(B) block: 96 groups, 15 KiB, in L1 beside A's two rows.
pub(super) const KB: usize = 384;
/// f32 per packed group of 4 k: `V` vectors of 8 (5 for n > 8, 4 for n ≤ 8).
pub(super) const fn group(v: usize) -> usize {
    8 * v
}
/// Rows per chunk: their accumulators are held (20 KiB) across the k blocks, and op(B) is
/// packed once per chunk.
const MC: usize = 128;

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
    // SAFETY: forwarded contract.
    unsafe {
        if s.n > 8 {
            run::<B, 5>(s, alpha, a, Src::Pack(b), beta, c)
        } else {
            run::<B, 4>(s, alpha, a, Src::Pack(b), beta, c)
        }
    }
}

/// Vectors per packed group of 4 k for a C of `n ≤ 10` columns: 5 (columns 0–9) or 4 (0–7).
const fn vectors(n: usize) -> usize {
    if n > 8 {
        5
    } else {
        4
    }
}

/// f32 of op(B) packed whole by [`pack_whole`] for [`gemm_packed`]: k rounded up to 4, in
/// groups of 4 k (the layout of [`pack`] with one block of depth k; blocks of depth [`KB`]
/// start at group `p0 / 4`).
pub(super) const fn packed_len(s: &GemmShape) -> usize {
    s.k.div_ceil(4) * group(vectors(s.n))
}

/// Packs all of op(B) for a shape that [`applies`] (any m) into `bp`, once for many
/// [`gemm_packed`] calls (an fc's weights, packed once per forward and shared by the threads).
///
/// # Safety
/// `bp` is valid for [`packed_len`]`(s)` writes; `b` satisfies [`super::gemm`]'s length check
/// for `s`; n ≥ 1, [`applies`]`(s)`; the CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack_whole<B: Elem>(s: &GemmShape, b: &[B], bp: *mut f32) {
    // SAFETY: forwarded contract (a block of depth k at p0 = 0 holds packed_len(s) f32).
    unsafe {
        if s.n > 8 {
            pack::<B, 5>(s, b, 0, s.k, bp)
        } else {
            pack::<B, 4>(s, b, 0, s.k, bp)
        }
    }
}

/// [`gemm`] over op(B) packed by [`pack_whole`]: the same loop and the same bits, without the
/// per-call packing (5–10 % of the fc's time at 32–64 rows).
///
/// # Safety
/// `a`, `c` satisfy [`super::gemm`]'s length checks for `s`; `bp` holds [`packed_len`]`(s)`
/// f32 written by [`pack_whole`] for the same k, n, op(B); m, n ≥ 1, [`applies`]`(s)`; the
/// CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm_packed(s: &GemmShape, alpha: f32, a: &[f32], bp: *const f32, beta: f32, c: &mut [f32]) {
    debug_assert!(applies(s));
    // SAFETY: forwarded contract; B is never read (`Src::Packed`).
    unsafe {
        if s.n > 8 {
            run::<f32, 5>(s, alpha, a, Src::Packed(bp), beta, c)
        } else {
            run::<f32, 4>(s, alpha, a, Src::Packed(bp), beta, c)
        }
    }
}

/// Where [`run`] gets its packed op(B) blocks: packed from B per chunk and block, or read from
/// a whole packed op(B).
#[derive(Clone, Copy)]
enum Src<'a, B> {
    Pack(&'a [B]),
    Packed(*const f32),
}

/// [`gemm`] with `V` vectors per group: 5 (columns 0–9) or 4 (columns 0–7, for n ≤ 8).
///
/// # Safety
/// As [`gemm`] (with `Src::Packed`, as [`gemm_packed`]), and V = [`vectors`]`(n)`.
#[inline(always)]
unsafe fn run<B: Elem, const V: usize>(
    s: &GemmShape,
    alpha: f32,
    a: &[f32],
    src: Src<'_, B>,
    beta: f32,
    c: &mut [f32],
) {
    let mut buf = Buf::<{ KB / 4 * group(5) }>::new();
    let buf = buf.as_mut_ptr();
    // Each row pair's 10 accumulators between k blocks.
    let mut held = Buf::<{ MC / 2 * 10 * 8 }>::new();
    let held = held.as_mut_ptr() as *mut [[__m256; 5]; 2] as *mut [[__m256; V]; 2];
    for m0 in (0..s.m).step_by(MC) {
        let mc = MC.min(s.m - m0);
        let mut p0 = 0;
        while p0 < s.k {
            let kb = KB.min(s.k - p0);
            let bp = match src {
                Src::Pack(b) => {
                    // SAFETY: `buf` holds KB / 4 groups, 64-byte aligned; kb ≤ KB; `b` passed the
                    // length check; AVX2 and F16C present.
                    unsafe { pack::<B, V>(s, b, p0, kb, buf) };
                    buf as *const f32
                }
                // SAFETY: p0 is a multiple of KB (of 4): group p0 / 4 of the whole pack starts
                // this block, and kb rounded up to 4 more rows follow (caller).
                Src::Packed(whole) => unsafe { whole.add(p0 / 4 * group(V)) },
            };
            let last = p0 + kb == s.k;
            for pair in 0..mc.div_ceil(2) {
                let i0 = m0 + 2 * pair;
                let two = i0 + 1 < s.m;
                // SAFETY: rows i0 (and i0 + 1 when `two`) of A hold columns p0..p0+kb (caller's
                // length check); the packed block holds kb rounded up to 4; `held` has MC / 2
                // 32-byte aligned slots, pair < MC / 2, each written (p0 = 0) before it is read;
                // C's outputs written are rows < m, columns < n.
                unsafe {
                    let a0 = a.as_ptr().add(i0 * s.lda + p0);
                    let a1 = if two { a0.add(s.lda) } else { a0 };
                    let slot = held.add(pair);
                    let acc = if p0 == 0 { [[_mm256_setzero_ps(); V]; 2] } else { slot.read() };
                    let acc = tile::<V>(kb, a0, a1, bp, acc);
                    if last {
                        for (r, x) in acc.iter().enumerate().take(1 + two as usize) {
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

/// `d[j] = α·v[j] + β·d[j]` for `j < n` (`β = 0` ignores `d`), 8 at a time when n ≥ 8.
///
/// # Safety
/// `d` is valid for `n ≤ MAX_N` reads and writes; the CPU supports AVX and FMA.
#[inline(always)]
unsafe fn update(v: &[f32; MAX_N], n: usize, alpha: f32, beta: f32, d: *mut f32) {
    // SAFETY: indices < n (caller); AVX, FMA present (caller).
    unsafe {
        let mut first = 0;
        if n >= 8 {
            let x = _mm256_mul_ps(_mm256_set1_ps(alpha), _mm256_loadu_ps(v.as_ptr()));
            let y = if beta == 0.0 { x } else { _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(d), x) };
            _mm256_storeu_ps(d, y);
            first = 8;
        }
        for (j, &v) in v.iter().enumerate().take(n).skip(first) {
            let x = alpha * v;
            *d.add(j) = if beta == 0.0 { x } else { x + beta * *d.add(j) };
        }
    }
}

/// Packs `op(B)[p0 + q][j]` for `q < kb` (zeros for `j ≥ n` and for `kb ≤ q <` kb rounded up
/// to 4): group `g` (k = 4g..4g+4) at `bp[g·8V..]` holds vector v < 4 =
/// `[col v at the 4 k | col v+4 at the 4 k]` and, when V = 5, vector 4 = `[col 8 | col 9]`.
///
/// # Safety
/// `bp` is valid for `kb.div_ceil(4)·8V` writes (32-byte aligned for speed, not required); n ≤ 2V; `b` satisfies the length
/// check for `s`; the CPU supports AVX2 and F16C.
#[inline(always)]
pub(super) unsafe fn pack<B: Elem, const V: usize>(s: &GemmShape, b: &[B], p0: usize, kb: usize, bp: *mut f32) {
    let full = kb - kb % 4;
    let mut q = 0;
    // SAFETY (stores): group q / 4 < kb.div_ceil(4) (caller's bound); (loads) each op(B)
    // element read has k < p0 + kb and column < n (length check).
    unsafe {
        while q < full {
            let o = bp.add(q / 4 * group(V));
            match s.tb {
                Trans::N => {
                    // Rows p0 + q + t < k of B hold n elements each (length check): no per-row check.
                    let row = |t: usize| core::slice::from_raw_parts(b.as_ptr().add((p0 + q + t) * s.ldb), s.n);
                    let rows = [row(0), row(1), row(2), row(3)];
                    group_rows::<B, V>(&rows, o);
                }
                Trans::T => group_cols::<B, V>(s, b, p0 + q, o),
            }
            q += 4;
        }
        if q < kb {
            group_any::<B, V>(s, b, p0, q, kb, bp.add(q / 4 * group(V)));
        }
    }
}

/// One packed group (k = q..q+4 of the block starting at p0) element by element: the last
/// group of a block whose depth is not a multiple of 4 (k past kb zero).
///
/// # Safety
/// `o` is valid for 8V writes; `b` satisfies the length check for `s`; p0 + kb ≤ k.
#[inline(always)]
unsafe fn group_any<B: Elem, const V: usize>(s: &GemmShape, b: &[B], p0: usize, q: usize, kb: usize, o: *mut f32) {
    for slot in 0..group(V) {
        let (v, half, t) = (slot / 8, slot / 4 % 2, slot % 4);
        let (j, p) = (if v < 4 { v + 4 * half } else { 8 + half }, q + t);
        let x = if j < s.n && p < kb {
            match s.tb {
                Trans::N => b[(p0 + p) * s.ldb + j].to_f32(),
                Trans::T => b[j * s.ldb + p0 + p].to_f32(),
            }
        } else {
            0.0
        };
        // SAFETY: slot < 8V (caller).
        unsafe { o.add(slot).write(x) };
    }
}

/// One packed group from a transposed B (op(B)'s columns are B's rows): two 4-long row pieces
/// per vector, k = p..p+4.
///
/// # Safety
/// `o` is valid for 8V writes; `b` satisfies the length check for `s` and
/// p + 4 ≤ k; the CPU supports AVX and F16C.
#[inline(always)]
unsafe fn group_cols<B: Elem, const V: usize>(s: &GemmShape, b: &[B], p: usize, o: *mut f32) {
    for v in 0..V {
        let j = if v < 4 { [v, v + 4] } else { [8, 9] };
        // SAFETY: register setup, 4-element loads of rows j < n at p..p+4 (length check) and
        // a store of vector v < 5 (caller); AVX, F16C present (caller).
        unsafe {
            let mut half = [_mm_setzero_ps(); 2];
            for (h, j) in half.iter_mut().zip(j) {
                if j < s.n {
                    *h = load4(&b[j * s.ldb + p..][..4]);
                }
            }
            _mm256_storeu_ps(o.add(v * 8), _mm256_set_m128(half[1], half[0]));
        }
    }
}

/// `[x[0..4] | x[0..4]]`.
///
/// # Safety
/// `x` is readable for 4 f32; the CPU supports AVX.
#[inline(always)]
unsafe fn broadcast4(x: *const f32) -> __m256 {
    // SAFETY: 16 bytes readable (caller), an unaligned load (a `&__m128` for
    // `_mm256_broadcast_ps` would have to be 16-byte aligned); LLVM emits `vbroadcastf128`.
    unsafe {
        let v = _mm_loadu_ps(x);
        _mm256_set_m128(v, v)
    }
}

/// One packed group from 4 rows of an untransposed B with n ≤ 10 columns: a 4×4 transpose in
/// each 128-bit lane of the rows' first 8 columns, and columns 8, 9 (zeros past n).
///
/// # Safety
/// `o` is valid for 8V writes; each row has n ≤ 2V elements; the CPU
/// supports AVX2 and F16C.
#[inline(always)]
unsafe fn group_rows<B: Elem, const V: usize>(rows: &[&[B]; 4], o: *mut f32) {
    // SAFETY: `load8` reads at most a row's n elements, columns 8, 9 only when present (`get`,
    // or the 64-bit load when n = 10); `o` as the caller says; AVX2, F16C present.
    unsafe {
        let (r0, r1, r2, r3) = (load8(rows[0]), load8(rows[1]), load8(rows[2]), load8(rows[3]));
        let (l01, h01) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (l23, h23) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        // l01 = r0c0 r1c0 r0c1 r1c1 | r0c4 r1c4 r0c5 r1c5, h01 the same for columns 2, 3 | 6, 7.
        _mm256_storeu_ps(o, _mm256_shuffle_ps::<0x44>(l01, l23));
        _mm256_storeu_ps(o.add(8), _mm256_shuffle_ps::<0xEE>(l01, l23));
        _mm256_storeu_ps(o.add(16), _mm256_shuffle_ps::<0x44>(h01, h23));
        _mm256_storeu_ps(o.add(24), _mm256_shuffle_ps::<0xEE>(h01, h23));
        if V < 5 {
            return;
        }
        let n = rows[0].len();
        let tail = if as_f32(rows[0]).is_some() && n == 10 {
            // Columns 8, 9 of each row as one 64-bit load: c8 c9 per row → c8 r0..r3 | c9 r0..r3.
            let mut x = [_mm_setzero_ps(); 4];
            for (x, r) in x.iter_mut().zip(rows) {
                *x = _mm_castpd_ps(_mm_load_sd(as_f32(r).unwrap_unchecked()[8..].as_ptr() as *const f64));
            }
            let (u01, u23) = (_mm_unpacklo_ps(x[0], x[1]), _mm_unpacklo_ps(x[2], x[3]));
            _mm256_set_m128(_mm_movehl_ps(u23, u01), _mm_movelh_ps(u01, u23))
        } else if as_f16(rows[0]).is_some() {
            // The 8 halves gathered in two 64-bit integers and widened at once (a scalar
            // f16 → f32 per element costs more than the whole group; a stack array's 16-bit
            // stores would not forward to one 128-bit load).
            let word = |j: usize| {
                rows.iter().enumerate().fold(0u64, |w, (t, r)| {
                    w | (as_f16(r).unwrap_unchecked().get(j).map_or(0, |x| x.to_bits()) as u64) << (16 * t)
                })
            };
            _mm256_cvtph_ps(_mm_set_epi64x(word(9) as i64, word(8) as i64))
        } else {
            let mut v = [0.0f32; 8];
            for (t, r) in rows.iter().enumerate() {
                v[t] = r.get(8).map_or(0.0, |x| x.to_f32());
                v[4 + t] = r.get(9).map_or(0.0, |x| x.to_f32());
            }
            _mm256_loadu_ps(v.as_ptr())
        };
        _mm256_storeu_ps(o.add(32), tail);
    }
}

/// The first 4 values of `x` widened to f32.
///
/// # Safety
/// `x.len() ≥ 4`; the CPU supports AVX and F16C.
#[inline(always)]
unsafe fn load4<E: Elem>(x: &[E]) -> __m128 {
    // SAFETY: 4 elements readable (caller); F16C present (caller).
    unsafe {
        if let Some(h) = as_f16(x) {
            _mm_cvtph_ps(_mm_loadl_epi64(h.as_ptr() as *const __m128i))
        } else if let Some(f) = as_f32(x) {
            _mm_loadu_ps(f.as_ptr())
        } else {
            _mm_setr_ps(x[0].to_f32(), x[1].to_f32(), x[2].to_f32(), x[3].to_f32())
        }
    }
}

/// The first 8 values of `x` widened to f32, zeros past its end.
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[inline(always)]
unsafe fn load8<E: Elem>(x: &[E]) -> __m256 {
    // SAFETY: at most x.len() elements read (a full load only when 8 are there, else a lane
    // mask or a copy); AVX2, F16C present (caller).
    unsafe {
        if let Some(h) = as_f16(x) {
            if h.len() >= 8 {
                _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i))
            } else {
                // The halves gathered in two 64-bit integers, not through a stack array (its
                // 16-bit stores cannot forward to the 128-bit load): AVX2 64×4×1024 with f16
                // B 24.8 → 33.9 % of the peak, 64×6×1024 36.0 → 50.1 (f32 B: 38, 57).
                let word = |part: &[f16]| {
                    part.iter().take(4).enumerate().fold(0u64, |w, (j, x)| w | (x.to_bits() as u64) << (16 * j))
                };
                let (lo, hi) = h.split_at(h.len().min(4));
                _mm256_cvtph_ps(_mm_set_epi64x(word(hi) as i64, word(lo) as i64))
            }
        } else if let Some(f) = as_f32(x) {
            if f.len() >= 8 {
                _mm256_loadu_ps(f.as_ptr())
            } else {
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                _mm256_maskload_ps(f.as_ptr(), _mm256_cmpgt_epi32(_mm256_set1_epi32(f.len() as i32), lanes))
            }
        } else {
            let v = |i: usize| x.get(i).map_or(0.0, |e| e.to_f32());
            _mm256_setr_ps(v(0), v(1), v(2), v(3), v(4), v(5), v(6), v(7))
        }
    }
}

/// The 2×10 outputs `Σ_{q<kb} A_r[q]·op(B)[q][j]` for A rows `a0`, `a1` and the packed
/// block `bp`.
///
/// # Safety
/// `a0`, `a1` are readable for `kb` f32; `bp` holds kb rounded up to 4 (zero beyond kb); the
/// CPU supports AVX2 and FMA.
#[inline(always)]
unsafe fn tile<const V: usize>(
    kb: usize,
    a0: *const f32,
    a1: *const f32,
    bp: *const f32,
    mut acc: [[__m256; V]; 2],
) -> [[__m256; V]; 2] {
    // SAFETY (loads): q + 4 ≤ full ≤ kb in the loop; the tail reads A through a lane mask and
    // the packed block up to kb rounded up to 4 (caller). Register work otherwise (AVX2, FMA).
    unsafe {
        let full = kb - kb % 4;
        let mut q = 0;
        // Two groups per trip: one group's 10 FMAs came with 5 loop and address uops, which
        // Zen 2's front end could not also feed (AMD EPYC VM, three alternating rounds:
        // 64×10×1024 81–82 → 84–85 % of the peak, 32×10×1024 76–78 → 80–82; 4 per trip no
        // better). Each accumulator still sums the groups in order: the same bits.
        while q + 8 <= full {
            for u in [0, 4] {
                let av = [broadcast4(a0.add(q + u)), broadcast4(a1.add(q + u))];
                step(&mut acc, av, bp.add((q + u) / 4 * group(V)));
            }
            q += 8;
        }
        while q < full {
            let av = [broadcast4(a0.add(q)), broadcast4(a1.add(q))];
            step(&mut acc, av, bp.add(q / 4 * group(V)));
            q += 4;
        }
        if q < kb {
            let mask = _mm_cmpgt_epi32(_mm_set1_epi32((kb - q) as i32), _mm_setr_epi32(0, 1, 2, 3));
            let (x0, x1) = (_mm_maskload_ps(a0.add(q), mask), _mm_maskload_ps(a1.add(q), mask));
            step(&mut acc, [_mm256_set_m128(x0, x0), _mm256_set_m128(x1, x1)], bp.add(q / 4 * group(V)));
        }
        acc
    }
}

/// One group of 4 k: `acc[r][v] += av[r]·bp[v·8..]` for the 2 rows and 5 vectors.
///
/// # Safety
/// `o` is readable for 8V f32; the CPU supports AVX2 and FMA.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `v` picks both rows' accumulators and the packed vector.
unsafe fn step<const V: usize>(acc: &mut [[__m256; V]; 2], av: [__m256; 2], o: *const f32) {
    for v in 0..V {
        // SAFETY: v·8 + 8 ≤ 8V (caller); FMA present (caller).
        unsafe {
            let bv = _mm256_loadu_ps(o.add(v * 8));
            acc[0][v] = _mm256_fmadd_ps(av[0], bv, acc[0][v]);
            acc[1][v] = _mm256_fmadd_ps(av[1], bv, acc[1][v]);
        }
    }
}

/// A row's outputs from its V accumulators: `hadd(hadd(x0, x1), hadd(x2, x3))` =
/// `Σ x0.lo, Σ x1.lo, Σ x2.lo, Σ x3.lo | Σ x0.hi, …`, columns 0–3 | 4–7 in order; x4
/// (columns 8 | 9, when V = 5) reduces against itself.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn reduce<const V: usize>(x: &[__m256; V]) -> [f32; MAX_N] {
    let mut out = [0.0f32; MAX_N];
    // SAFETY: register shuffles and an 8-float store into `out` (AVX: caller).
    unsafe {
        let lo = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
        _mm256_storeu_ps(out.as_mut_ptr(), lo);
        if V > 4 {
            let h = _mm256_hadd_ps(x[4], x[4]);
            let h = _mm256_hadd_ps(h, h);
            out[8] = _mm256_cvtss_f32(h);
            out[9] = _mm_cvtss_f32(_mm256_extractf128_ps::<1>(h));
        }
    }
    out
}
