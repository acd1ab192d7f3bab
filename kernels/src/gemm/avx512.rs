//! x86_64 AVX-512F path: a 6×64 micro-kernel (24 zmm accumulators, 4 B loads and 6
//! broadcasts per k step), KC = 128 (a 32 KiB B panel in a 48 KiB L1) but k ≤ 192 in one block
//! (ResNet50's 7x7 stem, k = 147: 63–66 → 67–69 % at 8192×64×147, against a second 19-deep
//! pass over C), MC = 288 (a 216 KiB A block). Edge tiles run narrower variants: ≤ 2 or ≤ 4
//! rows as 2 or 4, ≤ 16·v columns on v vectors (a 32-column C, e.g. MobileNetV1 ×0.25's
//! layers, does not pay for 64 lanes); the stored columns ≥ n go through lane masks. f16
//! operands are widened with F16C while packing; a C of at most 10 columns goes to
//! `narrow512.rs` (lanes along k, as `narrow.rs` on AVX2). Each output is summed in k order
//! within a KC block whatever the tile shape, so the tile shapes give the same bits.
//!
//! Tile shapes measured (`TINYKD_ISA=avx512 tinykd bench gemm`, fraction of the AVX-512 FMA
//! peak, 2-core Xeon VM with two 512-bit FMA ports): 6×32 75–78 % at 256³ (one broadcast per
//! 2 FMAs), 8×32 81 %, 4×64 80–83 %, 12×32 49 % (its compiled loop moves zmm values through the
//! stack); 6×64 against 4×64 in alternating runs: 256³ 83.3–83.9 vs 81.4–82.2 %,
//! 4096×128×64 69.7–72.6 vs 64.9–67.9, 1024×256×128 81.0–81.6 vs 77.9–79.9, 256×512×512
//! 78.5–79.5 vs 76.1–77.5, 64×64×288 72.5–73.5 vs 75.7–76.3 (64 rows leave a 4-row edge), the
//! distillation step unchanged. KC of 128, 192 or 256 for 6×32 within 1 % (for 6×64, KC 144,
//! i.e. k = 288 in two blocks instead of three: 64×64×288 83.0–83.9 → 81.0–81.5 %); A packed instead
//! of read in place −7 %. An L1-resident loop alone reaches only 85–90 % of the peak loop
//! (which has no loads): each load costs FMA throughput on this core — in a peak loop, 10 zmm
//! loads per 24 FMAs cost 10–14 %, 10 broadcasts 1–6 %. A hand-scheduled inline-asm loop
//! (pure loads, pointer increments, timed in the same binary as the intrinsics loop and the
//! peak) was no faster: 6×64 85–94 % either way, 8×48, 9×48, 12×32 and 14×32 within the same
//! noise, embedded-broadcast FMAs 70–80 %. So the compiled loop is not the limit; packing B
//! and the 4-row edge of 256 rows cost the other ~4 points at 256³ (perf: 95 % of the GEMM's
//! time in the micro-kernel). With A and C on cache lines (`tinykd bench gemm` allocates them
//! so since the trainer's activations are) quiet rounds reach 86–87 % at 256³.
//!
//! With A read in place, each tile's k loop prefetches the next tile's A rows into L1, two
//! lines per 4 k steps ([`NextRows`], below): three alternating rounds, 4096×128×64 (its 1 MiB A
//! streams from L3) 75.7–76.3 → 81.0–82.1 %, 256³ 81.8–82.5 → 84.5–85.6, 256×512×512
//! 77.5–79.4 → 81.1–82.4, 64×64×288 75.7–76.5 → 78.2–79.0; the distillation step unchanged
//! (pairs run in both orders). One line per 4 k steps leaves lines unfetched when a 64-deep
//! tile ends (4096×128×64 75.6–77.1 % against 79.8–80.2 in the same rounds); three do as two.
//! On AVX2's 6×16 tile, with half the FMAs per k step to hide it behind, the same prefetch cost
//! 1–5 % and is not used. Not kept either: n ≤ 16 on AVX-512 sent to the AVX2 kernel (12
//! accumulators against the zmm tile's 6): 64×16×144 89–90 → 102–106 GFLOP/s but 16384×16×8
//! 82–83 → 79–80 and 4096×8×27 55–56 → 49–50, the ×0.25 train step unchanged.

use super::avx2::Fma6x16;
use super::blocked::{self, Blocking, Buf, MicroKernel};
use super::{narrow, narrow512, GemmShape};
use crate::elem::{as_f32, Elem};
use core::arch::x86_64::*;

const MR: usize = 6;
/// zmm vectors per tile row.
const NV: usize = 4;
const NR: usize = 16 * NV;
const BLOCKING: Blocking = Blocking { kc: 128, kc_one: 192, mc: 288, ac_bytes: usize::MAX, sweep_k: 0 };
const _: () = assert!(BLOCKING.valid(MR, NR));

/// `C = α·op(A)·op(B) + β·C` (see [`super::gemm`]).
///
/// # Safety
/// The slices satisfy [`super::gemm`]'s length checks for `s`, `m, n ≥ 1`, and the CPU
/// supports AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn gemm<A: Elem, B: Elem>(s: &GemmShape, alpha: f32, a: &[A], b: &[B], beta: f32, c: &mut [f32]) {
    if let Some(af) = as_f32(a).filter(|_| narrow::applies(s)) {
        // SAFETY: forwarded contract; `applies` checked.
        unsafe { narrow512::gemm(s, alpha, af, b, beta, c) };
        return;
    }
    let mut abuf = Buf::<{ BLOCKING.a_len() }>::new();
    let mut bbuf = Buf::<{ BLOCKING.b_len(NR) }>::new();
    // SAFETY: the buffers have the sizes `run` needs and are 64-byte aligned, BLOCKING
    // satisfies its conditions (checked at compile time), the caller guarantees the slice
    // lengths and the CPU features.
    unsafe {
        blocked::run::<Fma6x64, A, B, MR, NR>(s, alpha, a, b, beta, c, abuf.as_mut_ptr(), BLOCKING, bbuf.as_mut_ptr())
    }
}

/// The 6×64 AVX-512F micro-kernel.
struct Fma6x64;

impl MicroKernel for Fma6x64 {
    const MR: usize = MR;
    const NR: usize = NR;

    #[inline(always)]
    unsafe fn widen<E: Elem>(src: &[E], dst: *mut f32) {
        // SAFETY: forwarded (F16C present, the AVX2 kernel's contract).
        unsafe { Fma6x16::widen(src, dst) }
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
        // SAFETY: forwarded verbatim; a packed panel holds A[r][p] at a[p·MR + r]; the variant
        // covers mr rows and nr columns.
        unsafe {
            match (mr.div_ceil(2), nr.div_ceil(16)) {
                (1, 1) => tile_packed::<2, 1>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (1, 2) => tile_packed::<2, 2>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (1, 3) => tile_packed::<2, 3>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (1, _) => tile_packed::<2, 4>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (2, 1) => tile_packed::<4, 1>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (2, 2) => tile_packed::<4, 2>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (2, 3) => tile_packed::<4, 3>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (2, _) => tile_packed::<4, 4>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (_, 1) => tile_packed::<6, 1>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (_, 2) => tile_packed::<6, 2>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (_, 3) => tile_packed::<6, 3>(kc, a, b, c, ldc, mr, nr, alpha, beta),
                (_, _) => tile_packed::<6, 4>(kc, a, b, c, ldc, mr, nr, alpha, beta),
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
        // SAFETY: forwarded; A[r][p] at a[r·lda + p] (a[p·lda + r] when trans) is readable for
        // r < R (caller).
        unsafe {
            if trans {
                tile_direct_nr::<R, true>(kc, a, lda, b, c, ldc, nr, alpha, beta)
            } else {
                tile_direct_nr::<R, false>(kc, a, lda, b, c, ldc, nr, alpha, beta)
            }
        }
    }
}

/// [`tile_rx`] over `R` rows of an in-place A (`DIRECT`, rows or, with `TRANS`, columns `lda`
/// apart) in the variant that covers `nr` columns.
///
/// # Safety
/// As [`MicroKernel::tile_direct`] for [`Fma6x64`]; the CPU supports AVX-512F.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_direct_nr<const R: usize, const TRANS: bool>(
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
    // SAFETY: forwarded; the variant covers nr columns.
    unsafe {
        match nr.div_ceil(16) {
            1 => tile_rx::<R, 1, true, TRANS>(kc, a, lda, b, c, ldc, R, nr, alpha, beta),
            2 => tile_rx::<R, 2, true, TRANS>(kc, a, lda, b, c, ldc, R, nr, alpha, beta),
            3 => tile_rx::<R, 3, true, TRANS>(kc, a, lda, b, c, ldc, R, nr, alpha, beta),
            _ => tile_rx::<R, NV, true, TRANS>(kc, a, lda, b, c, ldc, R, nr, alpha, beta),
        }
    }
}

/// [`tile_rx`] on a packed panel, compiled on its own (as on AVX2: inlined beside the
/// in-place variant, the accumulators may not all stay in registers).
///
/// # Safety
/// As [`tile_rx`] with `DIRECT = false`.
#[target_feature(enable = "avx512f")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_packed<const R: usize, const V: usize>(
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
    unsafe { tile_rx::<R, V, false, false>(kc, a, 0, b, c, ldc, mr, nr, alpha, beta) }
}

/// `C[..mr][..nr] = α·Ã·B̃ + β·C` for the first `R ≤ 6` rows and `16·V ≤ 64` columns, `mr ≤
/// R`, `nr ≤ 16·V`: `Σ_p A[r][p]·B̃[p][j]` in p order, `A[r][p]` read at `a[p·6 + r]` (a
/// packed panel) or, when `DIRECT`, in place at `a[r·lda + p]` (`a[p·lda + r]` with `TRANS`).
///
/// # Safety
/// As [`MicroKernel::tile`] with MR = 6, NR = 64 (the B panel 64-byte aligned), `mr ≤ R`,
/// `nr ≤ 16·V`, A readable at those positions for r < R, p < kc; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rx<const R: usize, const V: usize, const DIRECT: bool, const TRANS: bool>(
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
    const { assert!(R <= MR && V <= NV) };
    debug_assert!(mr <= R && nr <= 16 * V);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    /// One k step: V B loads, R A broadcasts, R·V FMAs.
    ///
    /// # Safety
    /// The first 16·V f32 of B panel row `p` (64-byte aligned) and `A[r][p]` are readable;
    /// AVX-512F.
    #[inline(always)]
    unsafe fn step<const R: usize, const V: usize>(
        acc: &mut [[__m512; V]; R],
        ap: *const f32,
        a_rs: usize,
        bp: *const f32,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            let bv: [__m512; V] = core::array::from_fn(|h| _mm512_load_ps(bp.add(16 * h)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r * a_rs));
                for (x, &b) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, b, *x);
                }
            }
        }
    }
    // SAFETY (steps): p < kc: the B panel holds kc·64 f32; A[r][p] is readable (caller).
    unsafe {
        // Four steps per trip: the address arithmetic folds into the loads' displacements.
        let mut p = 0;
        let mut next = NextRows::after(a, a_rs, if DIRECT && !TRANS { R } else { 0 }, kc);
        while p + 4 <= kc {
            next.touch();
            next.touch();
            for u in 0..4 {
                step(&mut acc, a.add((p + u) * a_ps), a_rs, b.add((p + u) * NR));
            }
            p += 4;
        }
        while p < kc {
            step(&mut acc, a.add(p * a_ps), a_rs, b.add(p * NR));
            p += 1;
        }
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    // Columns ≥ nr are masked off (neither read nor written), rows ≥ mr skipped.
    let masks: [__mmask16; V] = core::array::from_fn(|h| {
        let w = nr.saturating_sub(16 * h).min(16);
        if w == 16 {
            0xFFFF
        } else {
            (1u16 << w) - 1
        }
    });
    for (r, row) in acc.iter().enumerate().take(mr) {
        // SAFETY: row r < mr and the columns the masks select (< nr) are inside C (caller).
        unsafe {
            let cr = c.add(r * ldc);
            for (h, (&v, &m)) in row.iter().zip(&masks).enumerate() {
                if m == 0 {
                    break;
                }
                let d = cr.add(16 * h);
                let out = if beta == 0.0 {
                    _mm512_mul_ps(va, v)
                } else if beta == 1.0 {
                    _mm512_fmadd_ps(va, v, _mm512_maskz_loadu_ps(m, d))
                } else {
                    _mm512_fmadd_ps(va, v, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, d)))
                };
                _mm512_mask_storeu_ps(d, m, out);
            }
        }
    }
}

/// Walks the cache lines of the next tile's in-place A rows (`rows` rows `lda` apart from
/// `next`, `kc` values each), prefetching them into L1 a few at a time from the current
/// tile's k loop, so the next tile does not start on L2/L3 misses (figures in the module
/// docs). Pointers past A are only formed by `wrapping_add` and only prefetched (never read).
struct NextRows {
    next: *const f32,
    lda: usize,
    rows: usize,
    lines: usize,
    row: usize,
    line: usize,
}

impl NextRows {
    /// The rows after a tile of `rows` rows starting at `a` (row stride `lda`, `kc` deep).
    #[inline(always)]
    fn after(a: *const f32, lda: usize, rows: usize, kc: usize) -> Self {
        NextRows { next: a.wrapping_add(rows * lda), lda, rows, lines: kc.div_ceil(16), row: 0, line: 0 }
    }

    /// Prefetches the next line, if any is left.
    #[inline(always)]
    fn touch(&mut self) {
        if self.row < self.rows {
            let p = self.next.wrapping_add(self.row * self.lda + self.line * 16);
            // SAFETY: a prefetch is a hint: it reads nothing and faults on no address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
            self.line += 1;
            if self.line == self.lines {
                self.line = 0;
                self.row += 1;
            }
        }
    }
}
