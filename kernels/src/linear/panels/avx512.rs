//! AVX-512F product over packed panels: a 16-column panel row is one zmm, so a pass of `R ≤ 12`
//! rows over `P ≤ 2` panels holds its `R×16P` tile of `C` in `R·P` zmm accumulators over all of
//! `k` (24 of the 32 registers at 12×2: two panel loads and 12 broadcasts per 24 FMAs).
//!
//! Products of at most 3 rows (batch-1 layers on 1x1 maps, the fc) are weight-bandwidth bound
//! and run the AVX2 path, whose several weight streams per pass matter there (see its module
//! docs) — except one-row products whose weights stay in L2 (`avx2::stays_in_l2`, a small
//! model's; f16 ones over at least 2 panels): 8 panels per pass on zmm, one load per panel row
//! and no L2 prefetch (MobileNetV1 ×0.25's conv6 2.5 → 2.1 µs and conv5_6 1.35 → 1.15 µs
//! inside the model in f32, the same bits; its f16 inference 19.3–19.6 → 18.2–18.3 µs).
//! This path takes the taller products (a batch's pointwise and tap products, the early layers
//! at batch 1), which are FMA bound. Each row is summed with one accumulator in `k` order, as
//! on the AVX2 path in f32, so with f32 weights the results are the AVX2 path's bit for bit
//! and independent of how rows are grouped (tests/panels.rs checks both). (With f16 weights
//! the AVX2 path splits a 1–3-row pass over several accumulator sets, so a short last pass may
//! round differently.)
//!
//! Measured (distillation step, alternating builds): the teacher's forward 52–54 ms on the AVX2
//! path → 37–41 ms; 4 panels × 6 rows per pass (4 loads and 6 broadcasts per 24 FMAs, as the
//! GEMM's 6×64 shape) instead of 2 × 12 changed nothing (38–41 ms either way); without the
//! panel prefetches (the panels are reused from L2 across a block's passes) 36.7–37.2 →
//! 39.2–40.6 ms; with the L1 prefetch only, the step is unchanged but batch-1 ResNet50 (its
//! 2x2-map layers stream their weights from DRAM through this path) 3.16–3.25 → 3.50–3.79 ms.

use super::avx2::{l2_wrap, stays_in_l2, A_BLOCK_BYTES, PREFETCH_BYTES, PREFETCH_L2_BYTES};
use super::{Base, Finish, PanelProduct, PANEL};
use crate::elem::{f16, Elem};
use core::any::TypeId;
use core::arch::x86_64::*;

/// Most rows per pass.
const MAX_R: usize = 12;

/// `C += A·B` (see [`super::accumulate`]).
///
/// # Safety
/// `p` fits `c` (`PanelProduct::fits`), `m, n, k ≥ 1`, and the CPU supports AVX-512F, AVX2, FMA
/// and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn accumulate<W: Elem>(p: &PanelProduct<'_, W>, c: &mut [f32]) {
    let f16 = TypeId::of::<W>() == TypeId::of::<f16>();
    let np = p.n.div_ceil(PANEL);
    // (A single f16 panel, e.g. the fc, runs faster on AVX2 with its sum split over 4 sets.)
    if p.m == 1 && stays_in_l2(p.k, np, if f16 { 2 } else { 4 }) && !(f16 && np == 1) {
        // SAFETY: forwarded; `W` is f16 when `f16`, else f32.
        unsafe {
            if f16 {
                one_row_in_l2::<W, true>(p, c.as_mut_ptr())
            } else {
                one_row_in_l2::<W, false>(p, c.as_mut_ptr())
            }
        };
        return;
    }
    if p.m <= 3 {
        // SAFETY: forwarded contract (AVX2, FMA, F16C present).
        unsafe { super::avx2::accumulate(p, c) };
        return;
    }
    if TypeId::of::<W>() == TypeId::of::<f16>() {
        // SAFETY: forwarded; `W` is f16, 2 bytes per element.
        unsafe { panels::<W, true>(p, c.as_mut_ptr()) }
    } else {
        // SAFETY: forwarded; `W` is f32 (the only other `Elem`), 4 bytes per element.
        unsafe { panels::<W, false>(p, c.as_mut_ptr()) }
    }
}

/// Row blocks of at most `A_BLOCK_BYTES` of A (A stays in L2 while every panel passes over
/// it); within a block, pairs of panels, each pair in passes of at most 12 rows.
///
/// # Safety
/// As [`accumulate`], with `c` the start of C and `F16` whether `W` is f16.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn panels<W: Elem, const F16: bool>(p: &PanelProduct<'_, W>, c: *mut f32) {
    let (m, n, k, lda, ldc, fin) = (p.m, p.n, p.k, p.lda, p.ldc, p.finish(c));
    let (a, b) = (p.a.as_ptr(), p.b.as_ptr() as *const u8);
    let esize = if F16 { 2 } else { 4 };
    let block = (A_BLOCK_BYTES / (4 * k)).max(1).next_multiple_of(MAX_R);
    let np = n.div_ceil(PANEL);
    for i_blk in (0..m).step_by(block) {
        let i_end = m.min(i_blk + block);
        let mut jp = 0;
        while jp < np {
            let two = np - jp >= 2;
            let j0 = jp * PANEL;
            let cols = (n - j0).min(if two { 2 * PANEL } else { PANEL });
            let base = p.start.at(j0);
            // SAFETY: panels jp.. lie within the checked `panels_len(1, k, n)` elements.
            let bp = unsafe { b.add(jp * k * PANEL * esize) };
            let mut i = i_blk;
            while i < i_end {
                let rows = (i_end - i).min(MAX_R);
                // SAFETY: rows i..i+rows < m of A (stride lda, k columns) and C (stride ldc,
                // columns j0..j0+cols ≤ n) are inside the checked lengths; the 1 or 2 panels
                // hold k rows each.
                unsafe {
                    let (ai, ci, fi) = (a.add(i * lda), c.add(i * ldc + j0), fin.at(i * ldc + j0));
                    if two {
                        pass::<2, F16>(rows, k, ai, lda, bp, ci, ldc, cols, fi, base)
                    } else {
                        pass::<1, F16>(rows, k, ai, lda, bp, ci, ldc, cols, fi, base)
                    }
                }
                i += rows;
            }
            jp += if two { 2 } else { 1 };
        }
    }
}

/// A one-row product (batch 1 on a 1x1 map, the fc) with weights small enough to stay in L2
/// between calls: passes over 8 panels at once (8 FMA chains, one zmm load per panel row, f16
/// widened by `vcvtph2ps`; then 4, 2, 1 for the rest), no L2 prefetch. Each column is summed in
/// `k` order, as on the AVX2 path in f32: the same bits. (f16: the AVX2 path splits a one-row
/// sum over 4 sets and 4 panels per pass, where its 8 ymm conversions per weight row were the
/// cost: MobileNetV1 ×0.25's conv6 2.56–2.64 → 1.83–1.88 µs, conv5_6 1.40–1.45 → 1.00–1.02;
/// a single panel, the fc, stays there: 0.28 vs 0.34 µs.)
///
/// # Safety
/// As [`accumulate`] with `m = 1`, and `W` f16 exactly when `F16`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn one_row_in_l2<W: Elem, const F16: bool>(p: &PanelProduct<'_, W>, c: *mut f32) {
    let (n, k) = (p.n, p.k);
    let (a, b) = (p.a.as_ptr(), p.b.as_ptr() as *const u8);
    let np = n.div_ceil(PANEL);
    let mut jp = 0;
    while jp < np {
        let group = match np - jp {
            8.. => 8,
            4..=7 => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let j0 = jp * PANEL;
        let cols = (n - j0).min(group * PANEL);
        // SAFETY: panels jp..jp + group lie within the checked `panels_len(1, k, n)` elements;
        // row 0 of A holds k values, C columns j0..j0 + cols ≤ n.
        unsafe {
            let (bp, cp) = (b.add(jp * k * PANEL * if F16 { 2 } else { 4 }), c.add(j0));
            let (base, fin) = (p.start.at(j0), p.finish(c).at(j0));
            match group {
                8 => tile::<1, 8, F16, false>(k, a, 0, bp, cp, 0, cols, fin, base),
                4 => tile::<1, 4, F16, false>(k, a, 0, bp, cp, 0, cols, fin, base),
                2 => tile::<1, 2, F16, false>(k, a, 0, bp, cp, 0, cols, fin, base),
                _ => tile::<1, 1, F16, false>(k, a, 0, bp, cp, 0, cols, fin, base),
            }
        }
        jp += group;
    }
}

/// [`tile`] for `rows ≤ 12` known at run time.
///
/// # Safety
/// As [`tile`] with `R = rows`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pass<const P: usize, const F16: bool>(
    rows: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    fin: Finish,
    base: Base,
) {
    // SAFETY: forwarded, R = rows.
    unsafe {
        match rows {
            12 => tile::<12, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            11 => tile::<11, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            10 => tile::<10, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            9 => tile::<9, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            8 => tile::<8, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            7 => tile::<7, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            6 => tile::<6, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            5 => tile::<5, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            4 => tile::<4, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            3 => tile::<3, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            2 => tile::<2, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
            _ => tile::<1, P, F16, true>(k, a, lda, b, c, ldc, cols, fin, base),
        }
    }
}

/// The 16 values of panel row `p` as one f32 vector.
///
/// # Safety
/// Row `p` of the panel at `b` is readable; the CPU supports AVX-512F.
#[inline(always)]
unsafe fn load_row<const F16: bool>(b: *const u8, p: usize) -> __m512 {
    // SAFETY: forwarded contract (16 elements at row p).
    unsafe {
        if F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(b.add(p * PANEL * 2) as *const __m256i))
        } else {
            _mm512_loadu_ps(b.add(p * PANEL * 4) as *const f32)
        }
    }
}

/// `C[..R][..cols] = start + A[..R][..k]·panels` over `P` consecutive panels (`cols ≤ 16·P`),
/// one accumulator per row and panel, summed in `k` order; `start` per `base` (C's own values,
/// zero, or a shared row from the tile's first column).
///
/// # Safety
/// A rows `< R` (stride `lda`) hold `k` values, the `P` panels `k` rows of 16 each (f16 when
/// `F16`), C rows `< R` (stride `ldc`) `cols` writable values, a start row (`Base::Row`, `RowF16`) `cols` readable ones, and
/// so do the residual's (`fin.res`, stride `ldc`: C's own values, each read before it is
/// written); the CPU supports AVX-512F. Each stored C
/// value is `start + product`, plus the residual's value if any, then `max(·, 0)` with
/// `fin.relu`. `L2`: also prefetch each panel into L2 ahead of use and, near its end, the
/// next pass's panels ([`l2_wrap`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const P: usize, const F16: bool, const L2: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    fin: Finish,
    base: Base,
) {
    let row_bytes = PANEL * if F16 { 2 } else { 4 };
    let panel_bytes = k * row_bytes;
    // SAFETY (every access below): p < k rows of each of the P panels and columns of A rows
    // < R; prefetches use wrapping address arithmetic and never fault; C and residual rows < R,
    // columns < cols (masked loads and stores for a narrower last panel), the start row's
    // columns < cols.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let ar: [*const f32; R] = core::array::from_fn(|r| a.add(r * lda));
        let (wrap, skip) = if L2 { l2_wrap::<P>(k, row_bytes, panel_bytes) } else { (k, 0) };
        macro_rules! steps {
            ($steps:expr, $skip:expr) => {
                for p in $steps {
                    let rows: [__m512; P] = core::array::from_fn(|q| {
                        let bq = b.add(q * panel_bytes);
                        _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(p * row_bytes + PREFETCH_BYTES) as *const i8);
                        if L2 {
                            _mm_prefetch::<_MM_HINT_T1>(
                                bq.wrapping_add($skip + p * row_bytes + PREFETCH_L2_BYTES) as *const i8
                            );
                        }
                        load_row::<F16>(bq, p)
                    });
                    for (v, &ap) in acc.iter_mut().zip(&ar) {
                        let av = _mm512_set1_ps(*ap.add(p));
                        for (vq, &bq) in v.iter_mut().zip(&rows) {
                            *vq = _mm512_fmadd_ps(av, bq, *vq);
                        }
                    }
                }
            };
        }
        steps!(0..wrap, 0);
        steps!(wrap..k, skip);
        // Only the last of the P panels can be narrower than 16 columns.
        let masks: [__mmask16; P] = core::array::from_fn(|q| {
            let cols_q = if q + 1 == P { cols - q * PANEL } else { PANEL };
            if cols_q >= PANEL {
                0xFFFF
            } else {
                (1u16 << cols_q) - 1
            }
        });
        // The start of every row when it is not C's own values (zero or the shared row).
        let shared: [__m512; P] =
            core::array::from_fn(|q| match base {
                Base::C | Base::Zero => _mm512_setzero_ps(),
                Base::Row(row) => _mm512_maskz_loadu_ps(masks[q], row.add(q * PANEL)),
                Base::RowF16(row) if masks[q] == 0xFFFF => {
                    _mm512_cvtph_ps(_mm256_loadu_si256(row.add(q * PANEL) as *const __m256i))
                }
                Base::RowF16(row) => {
                    let t: [f32; PANEL] = core::array::from_fn(|j| {
                        if masks[q] >> j & 1 == 1 {
                            (*row.add(q * PANEL + j)).to_f32()
                        } else {
                            0.0
                        }
                    });
                    _mm512_loadu_ps(t.as_ptr())
                }
            });
        for (r, v) in acc.iter().enumerate() {
            for (q, &vq) in v.iter().enumerate() {
                let (cr, mask) = (c.add(r * ldc + q * PANEL), masks[q]);
                let start = if let Base::C = base { _mm512_maskz_loadu_ps(mask, cr) } else { shared[q] };
                let v = _mm512_add_ps(start, vq);
                let v = match fin.res {
                    Some(res) => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res.add(r * ldc + q * PANEL))),
                    None => v,
                };
                // max(v, 0) is Act::Relu's bits: 0 for NaN and −0 (the second operand).
                let v = if fin.relu { _mm512_max_ps(v, _mm512_setzero_ps()) } else { v };
                _mm512_mask_storeu_ps(cr, mask, v);
            }
        }
    }
}
