//! aarch64 NEON product over packed panels: `C[i][j] = start + Σ_p A[i][p]·B[p][j]` per
//! 16-column panel, in passes of 1–4 rows whose `R×16` tile of `C` lives in `4·R` q-register
//! accumulators over all of `k` (`fmla` by lane of a 4-k load of each A row, one chain per
//! lane in `p` order: with f32 weights the same bits as the AVX2 and AVX-512 paths, whatever
//! the row grouping). A one-row pass (batch 1 on 1x1 maps, the fc) runs 2 panels at once, so
//! 8 FMA chains are in flight (a Cortex-A76-class core has 2 FMA pipes of 4-cycle latency);
//! f16 weights are widened by `fcvtl` / `fcvtl2` as each panel row is loaded (inline `asm!`:
//! the f16 intrinsics are unstable). Passes go row block by row block, each over every panel
//! (4 A rows stay in L1, the weights stream per pass; x86 goes panel by panel over A blocks
//! instead — which order wins on an ARM core's caches is for hardware to say). Before this
//! path the NEON kind ran the portable product: one row at a time (every panel re-read per
//! row), a separate multiply and add, and each f16 weight widened in scalar code.

use super::{Base, Finish, PanelProduct, PANEL};
use crate::convert::arm::{widen4, widen8};
use crate::elem::{f16, Elem};
use core::any::TypeId;
use core::arch::aarch64::*;

/// Rows of the tallest pass: 16 accumulators, 4 panel-row registers and the A scalars stay
/// well inside the 32 q registers.
const MAX_ROWS: usize = 4;

/// `C += A·B` (see [`super::accumulate`]).
///
/// # Safety
/// `p` fits `c` (`PanelProduct::fits`), `m, n, k ≥ 1`, and the CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn accumulate<W: Elem>(p: &PanelProduct<'_, W>, c: &mut [f32]) {
    if TypeId::of::<W>() == TypeId::of::<f16>() {
        // SAFETY: forwarded; `W` is f16, 2 bytes per element.
        unsafe { panels::<W, true>(p, c.as_mut_ptr()) }
    } else {
        // SAFETY: forwarded; `W` is f32 (the only other `Elem`), 4 bytes per element.
        unsafe { panels::<W, false>(p, c.as_mut_ptr()) }
    }
}

/// Every panel in passes of at most [`MAX_ROWS`] rows; a lone row takes two panels at once.
///
/// # Safety
/// As [`accumulate`], with `c` the start of C and `F16` whether `W` is f16.
#[target_feature(enable = "neon")]
unsafe fn panels<W: Elem, const F16: bool>(p: &PanelProduct<'_, W>, c: *mut f32) {
    let (m, n, k, lda, ldc, fin) = (p.m, p.n, p.k, p.lda, p.ldc, p.finish(c));
    let (a, b) = (p.a.as_ptr(), p.b.as_ptr() as *const u8);
    let panel_bytes = k * PANEL * if F16 { 2 } else { 4 };
    let np = n.div_ceil(PANEL);
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MAX_ROWS);
        let mut jp = 0;
        while jp < np {
            let j0 = jp * PANEL;
            let two = rows == 1 && np - jp >= 2;
            let cols = (n - j0).min(if two { 2 * PANEL } else { PANEL });
            // SAFETY: rows i..i+rows < m of A (stride lda, k columns) and of C (stride ldc,
            // columns j0..j0+cols ≤ n), the start row from j0, and the pass's panels (k rows
            // each) lie inside the lengths `fits` checked.
            unsafe {
                let (ai, bp, ci) = (a.add(i * lda), b.add(jp * panel_bytes), c.add(i * ldc + j0));
                let (fin, base) = (fin.at(i * ldc + j0), p.start.at(j0));
                match rows {
                    1 if two => tile::<1, 2, F16>(k, ai, lda, bp, ci, ldc, cols, fin, base),
                    1 => tile::<1, 1, F16>(k, ai, lda, bp, ci, ldc, cols, fin, base),
                    2 => tile::<2, 1, F16>(k, ai, lda, bp, ci, ldc, cols, fin, base),
                    3 => tile::<3, 1, F16>(k, ai, lda, bp, ci, ldc, cols, fin, base),
                    _ => tile::<4, 1, F16>(k, ai, lda, bp, ci, ldc, cols, fin, base),
                }
            }
            jp += if two { 2 } else { 1 };
        }
        i += rows;
    }
}

/// The 16 values of panel row `p` as four f32 vectors.
///
/// # Safety
/// Row `p` of the panel at `b` is readable (16 f16 when `F16`, else 16 f32); NEON present.
#[inline(always)]
unsafe fn load_row<const F16: bool>(b: *const u8, p: usize) -> [float32x4_t; 4] {
    // SAFETY: forwarded contract.
    unsafe {
        if F16 {
            let r = b.add(p * PANEL * 2) as *const u16;
            let (v0, v1) = widen8(vld1q_u16(r));
            let (v2, v3) = widen8(vld1q_u16(r.add(8)));
            [v0, v1, v2, v3]
        } else {
            let r = b.add(p * PANEL * 4) as *const f32;
            [vld1q_f32(r), vld1q_f32(r.add(4)), vld1q_f32(r.add(8)), vld1q_f32(r.add(12))]
        }
    }
}

/// `max(v, 0)` lane-wise with `Act::Relu`'s bits (`v > 0 ? v : +0`, so NaN and −0 give +0;
/// `fmax` would keep the NaN) when `relu`, else `v`.
///
/// # Safety
/// NEON present.
#[inline(always)]
unsafe fn relu4(relu: bool, v: float32x4_t) -> float32x4_t {
    // SAFETY: register work.
    unsafe {
        if relu {
            let zero = vdupq_n_f32(0.0);
            vbslq_f32(vcgtq_f32(v, zero), v, zero)
        } else {
            v
        }
    }
}

/// `acc[r] += A[r][p + l]·(panel row p + l)` for `l` = 0..4 in order, `av[r]` holding
/// `A[r][p..p + 4]` (by value in and out, so the accumulators stay in registers).
///
/// # Safety
/// Rows `p..p + 4` of each of the `P` panels at `b` (`panel_bytes` apart) are readable; NEON.
#[inline(always)]
unsafe fn quad<const R: usize, const P: usize, const F16: bool>(
    mut acc: [[[float32x4_t; 4]; P]; R],
    av: [float32x4_t; R],
    b: *const u8,
    panel_bytes: usize,
    p: usize,
) -> [[[float32x4_t; 4]; P]; R] {
    // (A macro: the lane index is a const generic.)
    macro_rules! step {
        ($lane:literal) => {
            // SAFETY: rows p..p + 4 of the panels (caller).
            let rows: [[float32x4_t; 4]; P] =
                core::array::from_fn(|q| unsafe { load_row::<F16>(b.add(q * panel_bytes), p + $lane) });
            for r in 0..R {
                for q in 0..P {
                    for h in 0..4 {
                        // SAFETY: register work.
                        acc[r][q][h] = unsafe { vfmaq_laneq_f32::<$lane>(acc[r][q][h], rows[q][h], av[r]) };
                    }
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

/// `C[..R][..cols] = start + A[..R][..k]·panels` over `P` consecutive panels (`cols ≤ 16·P`),
/// then `+ residual` (`fin.res`) and the ReLU (`fin.relu`) as each value is stored; `start`
/// per `base`: C's own values, zero, or a shared row from the tile's first column.
///
/// # Safety
/// A rows `< R` (stride `lda`) hold `k ≥ 1` values, each of the `P` panels `k` rows of 16 (f16
/// when `F16`), C rows `< R` (stride `ldc`) `cols` writable values, and so do a start row and
/// the residual's rows (C's own values, each read before it is written); NEON present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const P: usize, const F16: bool>(
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
    let panel_bytes = k * PANEL * if F16 { 2 } else { 4 };
    // SAFETY (every access below): p < k rows of each of the P panels and columns of A rows
    // < R; C rows < R, the start row and the residual rows, columns < cols (caller).
    unsafe {
        let mut acc = [[[vdupq_n_f32(0.0); 4]; P]; R];
        let ar: [*const f32; R] = core::array::from_fn(|r| a.add(r * lda));
        // Four panel rows per trip against one 4-k load of each A row (`fmla` by lane): 1 A
        // load per 4 k instead of 4.
        let mut p = 0;
        while p + 4 <= k {
            let av: [float32x4_t; R] = core::array::from_fn(|r| vld1q_f32(ar[r].add(p)));
            acc = quad::<R, P, F16>(acc, av, b, panel_bytes, p);
            p += 4;
        }
        while p < k {
            let rows: [[float32x4_t; 4]; P] = core::array::from_fn(|q| load_row::<F16>(b.add(q * panel_bytes), p));
            for (v, &ap) in acc.iter_mut().zip(&ar) {
                let av = *ap.add(p);
                for (vq, bq) in v.iter_mut().zip(&rows) {
                    for (x, &bv) in vq.iter_mut().zip(bq) {
                        *x = vfmaq_n_f32(*x, bv, av);
                    }
                }
            }
            p += 1;
        }
        for (r, v) in acc.iter().enumerate() {
            for (q, vq) in v.iter().enumerate() {
                let (cr, off) = (c.add(r * ldc + q * PANEL), q * PANEL);
                let res = fin.res.map(|res| res.add(r * ldc + q * PANEL));
                // Only the last of the P panels can be narrower than 16 columns.
                let cols_q = if q + 1 == P { cols - off } else { PANEL };
                if cols_q == PANEL {
                    for (h, &x) in vq.iter().enumerate() {
                        let s = match base {
                            Base::C => vld1q_f32(cr.add(4 * h)),
                            Base::Zero => vdupq_n_f32(0.0),
                            Base::Row(row) => vld1q_f32(row.add(off + 4 * h)),
                            Base::RowF16(row) => widen4(vld1_u16(row.add(off + 4 * h) as *const u16)),
                        };
                        let mut y = vaddq_f32(s, x);
                        if let Some(res) = res {
                            y = vaddq_f32(y, vld1q_f32(res.add(4 * h)));
                        }
                        vst1q_f32(cr.add(4 * h), relu4(fin.relu, y));
                    }
                } else {
                    let mut t = [0.0f32; PANEL];
                    for (h, &x) in vq.iter().enumerate() {
                        vst1q_f32(t.as_mut_ptr().add(4 * h), x);
                    }
                    for (j, &x) in t.iter().enumerate().take(cols_q) {
                        let s = match base {
                            Base::C => *cr.add(j),
                            Base::Zero => 0.0,
                            Base::Row(row) => *row.add(off + j),
                            Base::RowF16(row) => (*row.add(off + j)).to_f32(),
                        };
                        let v = s + x;
                        let v = res.map_or(v, |res| v + *res.add(j));
                        *cr.add(j) = super::relu_if(fin.relu, v);
                    }
                }
            }
        }
    }
}
