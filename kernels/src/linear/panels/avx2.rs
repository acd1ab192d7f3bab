//! AVX2+FMA+F16C product over packed panels: per 16-column panel, passes of 1–6 rows whose
//! `R×16` tile of `C` lives in 2·R ymm accumulators over all of `k`. With f32 weights every
//! row is summed in `k` order whatever pass it falls in (results independent of the row
//! grouping); with f16 weights a 1–3-row pass over a single panel splits the sum over
//! independent sets (the multi-panel passes below have enough FMA chains without).
//!
//! **Several weight streams at once.** A block of 1–3 rows (batch-1 layers on 1x1 maps, the
//! fc) runs 4 panels (1 row) or 2 panels (2–3 rows) in one pass, reading each panel as its own
//! sequential stream. One core reads DRAM faster over several streams than over one (a plain
//! read loop on the 2-core AMD EPYC VM: 1 stream 15–16.5 GB/s, 2 streams 18.6–19.5, 4 streams
//! 19.7–22.9): the 1x1024→1024 product with weights cold (`cargo bench --bench kernels --
//! "linear-panels/f32/avx2/1x1024-1024-cold"`) 302–350 → 226–249 µs in f32 and 178–195 →
//! 134–145 µs in f16, alternating builds; ResNet50's res5 at batch 1 2.5–2.7 → 1.8–2.0 ms.
//! A block of 4–6 rows (2x2 maps) keeps one panel per pass (2 panels would need more than
//! the 16 ymm registers) and instead prefetches the next panel into L2 as two streams, its
//! two halves each at half the consumption rate (`AHEAD`): 4x512→512 cold f32 81–88 → 56–69
//! µs. f16 weights only from [`F16_AHEAD_MIN_BYTES`] on (on the Xeon VM f16 gained nothing
//! cold and lost 11 % on MobileNetV1 1.0's L3-resident conv5 layers, 0.143 → 0.160 ms; on the
//! AMD EPYC VM ResNet50's res4 gains ~20 %, see there). Such a pass skips the
//! per-row L2 prefetch (its panel is in L2 already) and runs two panel rows per loop trip:
//! 4x512→512 with the weights in L3 70 → 79 GFLOP/s (a standalone loop, alternating builds),
//! MobileNetV1 1.0's five conv5 layers ~30 → ~29 µs each inside the model. Measured and not
//! kept: 4-row passes over three panels as two 4×24 tiles (12 accumulators, 12 FMA chains
//! instead of 8; the same bits): on the AMD EPYC VM (`--layers`, two alternating rounds) the
//! f16 conv5 layers 22.8–25.3 → 22.5–23.8 µs — they already run at 83–92 GFLOP/s, not FMA-latency
//! bound — and the f32 ones 27.7–29.2 → 30.7–34.2 µs (a tile reads one and a half f32 panels,
//! 48 KiB of lines, through the 32 KiB L1).

use super::{relu_if, Base, Finish, PanelProduct, PANEL};
use crate::elem::{f16, Elem};
use core::any::TypeId;
use core::arch::x86_64::*;

/// Bytes ahead of the current panel row that are prefetched into L1 (the panels are one
/// stream; the hardware prefetchers stop at 4 KiB page boundaries).
pub(super) const PREFETCH_BYTES: usize = 1024;
/// Bytes ahead that are prefetched into L2: a late layer's weights come from L3 or DRAM
/// (ResNet50's 94 MB), whose latency needs more in flight than the L1 distance covers.
/// Measured on a 2-core Xeon VM: 256 B L1 only → ResNet50 batch 1 8.5–9.9 ms; 1 KiB L1 +
/// 8 KiB L2 → 4.9–6.7 ms (`tinykd bench infer --model resnet50`, alternating runs).
pub(super) const PREFETCH_L2_BYTES: usize = 8192;

/// The L2 prefetch of a pass over `P` consecutive panels (`panel_bytes` each, `k` rows of
/// `row_bytes`): each panel prefetches [`PREFETCH_L2_BYTES`] ahead of the row it reads, and
/// from the returned step on, where that runs past its end, the same distance into the next
/// pass's panel at the same place (`P` panels on: the returned byte skip). Without the skip
/// only the last panel's prefetch ran on into the next pass's (its first); the others' first
/// 8 KiB were fetched when their pass reached them. Measured on the Xeon VM (three
/// alternating rounds of a standalone loop over `linear_fwd_panels`, weights from L3), f16:
/// 1x512→1024 23.0–24.3 → 25.8–27.2 GB/s, 1x1024→1024 24.6–25.6 → 25.7–27.9, 4x512→512
/// (AVX-512) 20.7–22.8 → 24.9–26.1; f32 26–28 either way. At batch 1 with f16 weights
/// (`tinykd bench infer`, alternating builds): MobileNetV1 1.0 351–374 → 340–347 µs, ResNet50
/// 2.13–2.26 → 1.91–2.03 ms; f32 and the distillation step unchanged. Prefetches only: the
/// same bits.
#[inline(always)]
pub(super) fn l2_wrap<const P: usize>(k: usize, row_bytes: usize, panel_bytes: usize) -> (usize, usize) {
    if P == 1 {
        (k, 0)
    } else {
        (panel_bytes.saturating_sub(PREFETCH_L2_BYTES).div_ceil(row_bytes).min(k), (P - 1) * panel_bytes)
    }
}

/// Packed weights up to this size skip the per-row L2 prefetch: a small model's weights stay
/// in L2 between calls, where the prefetch is only a load-port uop per panel row. Measured on
/// the Xeon VM (a standalone loop over `linear_fwd_panels`): 1x256→256 with the weights in
/// L2 2.50 → 2.00–2.10 µs without it; from L3 (32 MiB of copies) 9.1–9.9 µs either way.
const L2_PREFETCH_MIN_BYTES: usize = 512 * 1024;

/// Whether the packed weights of a `k`-deep product over `np` panels of `esize`-byte elements
/// are small enough to stay in L2 between calls ([`L2_PREFETCH_MIN_BYTES`]).
pub(super) const fn stays_in_l2(k: usize, np: usize, esize: usize) -> bool {
    np * k * PANEL * esize <= L2_PREFETCH_MIN_BYTES
}

/// Bytes of A per row block (see [`panels`]): an eighth of a 2 MiB L2. Measured in a batch-32
/// forward of ResNet50's 8x8 pointwise convs with cold caches (alternating with unblocked):
/// 256→64 and 256→128 1.06–1.11x faster, other shapes unchanged.
pub(super) const A_BLOCK_BYTES: usize = 256 * 1024;

/// Packed f16 weights from this size on run their 4-row passes (2x2 maps at batch 1) with the
/// next panel prefetched into L2 as f32 weights always do (`AHEAD`). Measured on the AMD EPYC
/// VM (four alternating rounds, `tinykd bench infer --dtype f16`): ResNet50, whose 47 MB of f16
/// weights come from DRAM, 3.75–3.83 → 3.52–3.63 ms at batch 1 (res4's 1x1 convs 41–47 → 34–37
/// µs each in `--layers` rounds); MobileNetV1 1.0 (its 512 KiB conv5 layers L3-resident)
/// 371–386 → 375–383 µs (slower in three rounds by ≤ 2 %); with the prefetch for every size
/// MobileNetV1 ×0.25 (32 KiB layers in L2) lost 0.3–1 % (34.9–35.0 → 35.0–35.3 µs), hence the
/// floor, below a 3x3 tap of res4 (128 KiB: a KxK conv's products are per tap). On the Xeon VM
/// of earlier sessions f16 showed no cold gain.
const F16_AHEAD_MIN_BYTES: usize = 64 * 1024;

/// Panels a one-row pass runs at once (one weight stream each; 2 for passes of 2–3 rows).
const MULTI_PANELS: usize = 4;

/// `C += A·B` (see [`super::accumulate`]).
///
/// # Safety
/// `p` fits `c` (`PanelProduct::fits`), `m, n, k ≥ 1`, and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn accumulate<W: Elem>(p: &PanelProduct<'_, W>, c: &mut [f32]) {
    if TypeId::of::<W>() == TypeId::of::<f16>() {
        // SAFETY: forwarded; `W` is f16, 2 bytes per element.
        unsafe { panels::<W, true>(p, c.as_mut_ptr()) }
    } else {
        // SAFETY: forwarded; `W` is f32 (the only other `Elem`), 4 bytes per element.
        unsafe { panels::<W, false>(p, c.as_mut_ptr()) }
    }
}

/// All panels, each in passes of at most 6 rows, over row blocks of at most
/// [`A_BLOCK_BYTES`] of A.
///
/// # Safety
/// As [`accumulate`], with `c` the start of C and `F16` whether `W` is f16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panels<W: Elem, const F16: bool>(p: &PanelProduct<'_, W>, c: *mut f32) {
    let (m, n, k, lda, ldc, fin) = (p.m, p.n, p.k, p.lda, p.ldc, p.finish(c));
    let (a, b) = (p.a.as_ptr(), p.b.as_ptr() as *const u8);
    let esize = if F16 { 2 } else { 4 };
    // Rows in blocks whose A stays in L2 while every panel passes over it (a batch's tall A
    // would otherwise stream from L3 once per panel).
    let block = (A_BLOCK_BYTES / (4 * k)).max(1).next_multiple_of(6);
    let np = n.div_ceil(PANEL);
    // Prefetch into L2 only weights that do not stay there.
    let l2 = !stays_in_l2(k, np, esize);
    // f16 4-row passes prefetch the next panel only over large weights ([`F16_AHEAD_MIN_BYTES`]).
    let ahead16 = np * k * PANEL * esize >= F16_AHEAD_MIN_BYTES;
    for i_blk in (0..m).step_by(block) {
        let i_end = m.min(i_blk + block);
        let mut jp = 0;
        while jp < np {
            // A block of at most 3 rows (one pass) runs several panels at once: one weight
            // stream per panel, and a core reads DRAM faster over several streams than over
            // one (see the module docs). (4 rows as two passes of 2 over the same two panels
            // was slower: ResNet50's res4 at batch 1 1.9–2.0 → 2.2–2.3 ms.)
            let (rows, left) = (i_end - i_blk, np - jp);
            let group = match rows {
                1 if left >= MULTI_PANELS => MULTI_PANELS,
                1..=3 if left >= 2 => 2,
                _ => 1,
            };
            let j0 = jp * PANEL;
            let base = p.start.at(j0);
            // SAFETY: panels jp..jp+group lie within the checked `panels_len(1, k, n)` elements.
            let bp = unsafe { b.add(jp * k * PANEL * esize) };
            if group > 1 {
                let cols = (n - j0).min(group * PANEL);
                // SAFETY: rows i_blk..i_end < m of A and C, columns j0..j0+cols ≤ n of C, and
                // the group's panels (k rows each) are inside the checked lengths.
                unsafe {
                    let (ai, ci, fin) = (a.add(i_blk * lda), c.add(i_blk * ldc + j0), fin.at(i_blk * ldc + j0));
                    match (rows, group) {
                        (1, MULTI_PANELS) => {
                            tile::<1, 1, MULTI_PANELS, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base)
                        }
                        (1, _) => tile::<1, 1, 2, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        (2, _) => tile::<2, 1, 2, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        _ => tile::<3, 1, 2, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                    }
                }
                jp += group;
                continue;
            }
            let cols = PANEL.min(n - j0);
            jp += 1;
            // One pass over this panel (a block of at most 6 rows): prefetch the next one.
            let single = i_end - i_blk <= 6;
            let mut i = i_blk;
            while i < i_end {
                let rows = (i_end - i).min(6);
                // SAFETY: rows i..i+rows < m of A (stride lda, k columns) and C (stride ldc,
                // columns j0..j0+cols ≤ n) are inside the checked lengths; the panel is k rows.
                unsafe {
                    let (ai, ci, fin) = (a.add(i * lda), c.add(i * ldc + j0), fin.at(i * ldc + j0));
                    match rows {
                        // f16 rows stream fast enough for the FMA latency to show: split the sum
                        // over several accumulator sets. f32 sums each row in plain k order, so
                        // its bits do not depend on how rows are grouped into passes (the trainer
                        // splits a batch over threads; results must not depend on that).
                        1 if F16 => tile::<1, 4, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        2 if F16 => tile::<2, 3, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        3 if F16 => tile::<3, 2, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        1 => tile::<1, 1, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        2 => tile::<2, 1, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        3 => tile::<3, 1, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        4 if single && (!F16 || ahead16) => {
                            tile::<4, 1, 1, true, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base)
                        }
                        5 if single && !F16 => tile::<5, 1, 1, true, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        6 if single && !F16 => tile::<6, 1, 1, true, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        4 => tile::<4, 1, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        5 => tile::<5, 1, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                        _ => tile::<6, 1, 1, false, F16>(k, ai, lda, bp, ci, ldc, cols, fin, l2, base),
                    }
                }
                i += rows;
            }
        }
    }
}

/// `max(v, 0)` lane-wise when `relu` (Act::Relu's bits: 0 for NaN and −0, the second
/// operand), else `v`.
///
/// # Safety
/// The CPU supports AVX.
#[inline(always)]
unsafe fn relu8(relu: bool, v: __m256) -> __m256 {
    // SAFETY: register work (AVX: caller).
    unsafe {
        if relu {
            _mm256_max_ps(v, _mm256_setzero_ps())
        } else {
            v
        }
    }
}

/// The 16 values of panel row `p` as two f32 vectors.
///
/// # Safety
/// Row `p` of the panel at `b` is readable; the CPU supports AVX2 and F16C.
#[inline(always)]
unsafe fn load_row<const F16: bool>(b: *const u8, p: usize) -> (__m256, __m256) {
    // SAFETY: forwarded contract (16 elements at row p).
    unsafe {
        if F16 {
            let r = b.add(p * PANEL * 2) as *const __m128i;
            (_mm256_cvtph_ps(_mm_loadu_si128(r)), _mm256_cvtph_ps(_mm_loadu_si128(r.add(1))))
        } else {
            let r = b.add(p * PANEL * 4) as *const f32;
            (_mm256_loadu_ps(r), _mm256_loadu_ps(r.add(8)))
        }
    }
}

/// `C[..R][..cols] = start + A[..R][..k]·panels` (`start` per `base`: C's own values, zero, or a
/// shared row from the tile's first column) over `P` consecutive panels (`cols ≤ 16·P`), with
/// `S` independent accumulator sets (panel rows `p ≡ s mod S` go to set `s`, added together
/// at the end) so that `2·R·S·P ≥ 8` FMA chains are in flight. With `AHEAD` the panel after
/// the `P` is prefetched into L2 as two half-rate streams (its two halves), so that it is in
/// L2 when its pass starts; otherwise, with `l2`, each panel prefetches into L2 ahead of its
/// reads and, near its end, into the next pass's ([`l2_wrap`]).
///
/// # Safety
/// A rows `< R` (stride `lda`) hold `k` values, the panel `k` rows of 16 (f16 when `F16`),
/// C rows `< R` (stride `ldc`) `cols ≤ 16` writable values, a start row (`Base::Row`, `RowF16`) `cols` readable ones, and
/// so do the residual's (`fin.res`, stride `ldc`: C's own values, each read before it is
/// written); the CPU supports AVX2, FMA, F16C. Each
/// stored C value is `start + product`, plus the residual's value if any, then `max(·, 0)`
/// with `fin.relu`.
///
/// Compiled on its own, one function per variant: inlined into [`panels`] beside its twenty
/// siblings, LLVM kept every accumulator in memory too and stored it after each FMA (twelve
/// stores per k step in a 6-row pass; Zen 2 retires one store per cycle, so the pass ran at
/// half speed): the distillation step's teacher forward 723–729 → 1086–1113 img/s on the
/// 2-core AMD EPYC VM (alternating builds, same bits).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const S: usize, const P: usize, const AHEAD: bool, const F16: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    fin: Finish,
    l2: bool,
    base: Base,
) {
    let row_bytes = PANEL * if F16 { 2 } else { 4 };
    let panel_bytes = k * row_bytes;
    let mut acc = [[[[_mm256_setzero_ps(); 2]; P]; R]; S];
    let mut p = 0;
    // SAFETY (every access below): p + s < k rows of each of the P panels and columns of A
    // rows < R; prefetches use wrapping address arithmetic and never fault; C rows < R and
    // the start row, columns < cols.
    unsafe {
        let next = b.wrapping_add(P * panel_bytes);
        let half = (k / 2) * row_bytes;
        let ar: [*const f32; R] = core::array::from_fn(|r| a.add(r * lda));
        // One panel row per set: R broadcasts, 2·R·P FMAs. (A macro, not a closure: a closure
        // does not inherit the caller's target features and its intrinsics became calls.)
        macro_rules! step {
            ($p:expr, $skip:expr) => {
                let p = $p;
                for (s, set) in acc.iter_mut().enumerate() {
                    let rows: [(__m256, __m256); P] = core::array::from_fn(|q| {
                        let bq = b.add(q * panel_bytes);
                        _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add((p + s) * row_bytes + PREFETCH_BYTES) as *const i8);
                        // With AHEAD the previous pass brought this panel into L2 already.
                        if !AHEAD && l2 {
                            _mm_prefetch::<_MM_HINT_T1>(
                                bq.wrapping_add($skip + (p + s) * row_bytes + PREFETCH_L2_BYTES) as *const i8,
                            );
                        }
                        load_row::<F16>(bq, p + s)
                    });
                    for (v, &ap) in set.iter_mut().zip(&ar) {
                        let av = _mm256_broadcast_ss(&*ap.add(p + s));
                        for (vq, &(b0, b1)) in v.iter_mut().zip(&rows) {
                            vq[0] = _mm256_fmadd_ps(av, b0, vq[0]);
                            vq[1] = _mm256_fmadd_ps(av, b1, vq[1]);
                        }
                    }
                }
            };
        }
        // f32: two steps per trip (p stays even at a trip's start, so the AHEAD prefetch needs
        // no test, and the addresses fold into displacements): 4x512→512 70 → 79 GFLOP/s with
        // the panel in L3. f16: one step per trip (two lost 10–20 % on MobileNetV1's conv5/6).
        let trip = if F16 { S } else { 2 * S };
        let (wrap, skip) = l2_wrap::<P>(k, row_bytes, panel_bytes);
        macro_rules! trips {
            ($end:expr, $skip:expr) => {
                while p + trip <= $end {
                    if AHEAD {
                        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(p / 2 * row_bytes) as *const i8);
                        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(half + p / 2 * row_bytes) as *const i8);
                    }
                    step!(p, $skip);
                    if !F16 {
                        step!(p + S, $skip);
                    }
                    p += trip;
                }
            };
        }
        trips!(wrap, 0);
        trips!(k, skip);
        while p < k {
            let rows: [(__m256, __m256); P] = core::array::from_fn(|q| load_row::<F16>(b.add(q * panel_bytes), p));
            for (r, v) in acc[0].iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                for (vq, &(b0, b1)) in v.iter_mut().zip(&rows) {
                    vq[0] = _mm256_fmadd_ps(av, b0, vq[0]);
                    vq[1] = _mm256_fmadd_ps(av, b1, vq[1]);
                }
            }
            p += 1;
        }
        let (first, rest) = acc.split_at_mut(1);
        for set in rest.iter() {
            for (sum, v) in first[0].iter_mut().zip(set) {
                for (sq, vq) in sum.iter_mut().zip(v) {
                    sq[0] = _mm256_add_ps(sq[0], vq[0]);
                    sq[1] = _mm256_add_ps(sq[1], vq[1]);
                }
            }
        }
        for (r, v) in acc[0].iter().enumerate() {
            for (q, vq) in v.iter().enumerate() {
                let cr = c.add(r * ldc + q * PANEL);
                // Only the last of the P panels can be narrower than 16 columns.
                let cols_q = if q + 1 == P { cols - q * PANEL } else { PANEL };
                if cols_q == PANEL {
                    let (s0, s1) = match base {
                        Base::C => (_mm256_loadu_ps(cr), _mm256_loadu_ps(cr.add(8))),
                        Base::Zero => (_mm256_setzero_ps(), _mm256_setzero_ps()),
                        Base::Row(row) => {
                            (_mm256_loadu_ps(row.add(q * PANEL)), _mm256_loadu_ps(row.add(q * PANEL + 8)))
                        }
                        Base::RowF16(row) => {
                            let h = row.add(q * PANEL) as *const __m128i;
                            (_mm256_cvtph_ps(_mm_loadu_si128(h)), _mm256_cvtph_ps(_mm_loadu_si128(h.add(1))))
                        }
                    };
                    let (mut v0, mut v1) = (_mm256_add_ps(s0, vq[0]), _mm256_add_ps(s1, vq[1]));
                    if let Some(res) = fin.res {
                        let rr = res.add(r * ldc + q * PANEL);
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rr));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rr.add(8)));
                    }
                    _mm256_storeu_ps(cr, relu8(fin.relu, v0));
                    _mm256_storeu_ps(cr.add(8), relu8(fin.relu, v1));
                } else {
                    let mut t = [0.0f32; PANEL];
                    _mm256_storeu_ps(t.as_mut_ptr(), vq[0]);
                    _mm256_storeu_ps(t.as_mut_ptr().add(8), vq[1]);
                    for (j, &x) in t.iter().enumerate().take(cols_q) {
                        let s = match base {
                            Base::C => *cr.add(j),
                            Base::Zero => 0.0,
                            Base::Row(row) => *row.add(q * PANEL + j),
                            Base::RowF16(row) => (*row.add(q * PANEL + j)).to_f32(),
                        };
                        let v = s + x;
                        let v = fin.res.map_or(v, |res| v + *res.add(r * ldc + q * PANEL + j));
                        *cr.add(j) = relu_if(fin.relu, v);
                    }
                }
            }
        }
    }
}
