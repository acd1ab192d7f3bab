//! Weights packed once into 16-column panels, and the few-row product over them:
//! `C[m×n] += A[m×k]·B[k×n]` with `B` read once, front to back, and `C` held in registers.
//!
//! Layout ([`pack_panels`]): `taps` stacked `k×n` matrices `w[t][p][j]` (an HWIO conv weight
//! has `taps = kh·kw`, `k = c_in`; an fc or pointwise weight `taps = 1`) become
//! `wp[t][j / 16][p][j % 16]`, the last panel's missing columns 0. One panel row is one 64-byte
//! cache line of f32 (32 bytes of f16), so a panel — and the whole tensor — is a single
//! sequential stream that the prefetchers run at full bandwidth, and a 16-column tile of `C`
//! stays in registers across all of `k` (no load/store of `C` per step, unlike
//! `linear::stream`, which works on the stored layout). This is what inference engines do
//! at load time (onnxruntime's pre-packed GEMM, XNNPACK's packed weights); the engine packs
//! the layers for which [`worth_packing`] holds.
//!
//! Paths: AVX2+FMA+F16C (`avx2.rs`: 1–6 rows per pass, for f16 weights independent
//! accumulator sets for 1–3 rows so the FMA latency is hidden, software prefetch ahead of the
//! stream, f16 widened by `vcvtph2ps`); AVX-512F (`avx512.rs`); NEON (`neon.rs`: 1–4 rows per
//! pass, 2 panels for a lone row, f16 widened by `fcvtl`); portable (below, the specification:
//! each output `C₀ + Σ_p A·B` in `p` order, used by the scalar kind). All satisfy the GEMM's
//! dot-product error bound, and with f32 weights each output's bits depend only on its own row
//! (not on `m` or on the other rows), so splitting a batch across threads changes nothing; the
//! SIMD paths' f32 bits are also the same on every path (one fused chain per value in `p` order).

use super::epilogue::bias_rows;
use crate::act::Act;
use crate::elem::{as_f16, as_f32, f16, Elem};
use crate::error::{check_len, Result};
use crate::isa::Isa;
use crate::shape::prod;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod both_ways;
#[cfg(target_arch = "aarch64")]
mod neon;

/// Columns per panel (the same on every ISA, so one packed file serves all of them).
pub const PANEL: usize = 16;

/// The most output rows (batch × output pixels) for which [`worth_packing`] holds: up to
/// there a panel pass (at most 6 rows against one panel, `C` in registers) beats packing the
/// weights at every call as the blocked GEMM does. At batch 1 and 32x32 that is every layer
/// after the first of both models.
pub const PACK_MAX_ROWS: usize = 256;

/// Whether a layer with `rows` output rows, `taps` kernel taps and `c_in` input channels runs
/// faster from packed panels: at most [`PACK_MAX_ROWS`] rows and [`deep_enough`]. Every path
/// runs such a layer from its panels. (AVX2 ran only those of at most 16 rows from them while
/// its panel tiles kept their accumulators in memory — 16 against 256 rows on the Xeon VM
/// with `TINYKD_ISA=avx2`: MobileNetV1 1.0 532–547 → 524–531 µs, ×0.25 25.3–26.0 → 24.4–25.1;
/// with the tiles fixed, on the AMD EPYC VM, four alternating rounds, 16 → 256 rows:
/// MobileNetV1 1.0 446–516 → 468–490 µs, ×0.25 36.5–37.9 → 35.6–36.6, f16 35.7–36.3 →
/// 34.6–34.7, ResNet50 the same.)
pub const fn worth_packing(rows: usize, taps: usize, c_in: usize) -> bool {
    rows <= PACK_MAX_ROWS && deep_enough(taps, c_in)
}

/// Whether the per-tap products of a conv over panels are deep enough to pay: a pointwise
/// conv or fc (one tap), or a KxK conv with at least 8 input channels (each tap is one product
/// of depth `c_in`; shallower ones are dominated by their pass over `C`, e.g. a 3-channel
/// stem, 1.8x slower packed).
pub const fn deep_enough(taps: usize, c_in: usize) -> bool {
    taps == 1 || c_in >= 8
}

/// Elements of `taps` stacked `k×n` matrices packed into panels: `taps·k·⌈n/16⌉·16`
/// (saturating, see [`crate::shape::prod`]).
pub const fn panels_len(taps: usize, k: usize, n: usize) -> usize {
    prod(&[taps, k, n.div_ceil(PANEL), PANEL])
}

/// Packs `w[t][p][j]` (`taps` stacked `k×n`, row-major) into `wp[t][j/16][p][j%16]`, padding
/// columns set to 0. Errors: `w` not exactly `taps·k·n` or `wp` not exactly
/// [`panels_len`]`(taps, k, n)` elements ([`crate::KernelError::Len`]).
pub fn pack_panels<W: Elem>(taps: usize, k: usize, n: usize, w: &[W], wp: &mut [W]) -> Result<()> {
    check_len("w", w.len(), prod(&[taps, k, n]))?;
    check_len("wp", wp.len(), panels_len(taps, k, n))?;
    if taps == 0 || k == 0 || n == 0 {
        return Ok(());
    }
    let per_tap = panels_len(1, k, n);
    for (src, dst) in w.chunks_exact(k * n).zip(wp.chunks_exact_mut(per_tap)) {
        for (jp, panel) in dst.chunks_exact_mut(k * PANEL).enumerate() {
            let j0 = jp * PANEL;
            let cols = PANEL.min(n - j0);
            for (p, out) in panel.chunks_exact_mut(PANEL).enumerate() {
                out[..cols].copy_from_slice(&src[p * n + j0..p * n + j0 + cols]);
                out[cols..].fill(W::from_f32(0.0));
            }
        }
    }
    Ok(())
}

/// Packs `B = wtᵀ`, the transpose of a stored `n×k` matrix `wt[j][p]` (so `B[p][j] =
/// wt[j][p]`), into `wp` exactly as [`pack_panels`]`(1, k, n, B, wp)` would. A pointwise or fc
/// weight `w[c_in][c_out]` packed with `k = c_out`, `n = c_in` is the right operand of the input
/// gradient `dX = dY·Wᵀ` (the trainer packs its few-row convs so once per step). Errors: `wt`
/// not exactly `n·k` or `wp` not exactly [`panels_len`]`(1, k, n)` elements
/// ([`crate::KernelError::Len`]).
pub fn pack_panels_transposed<W: Elem>(k: usize, n: usize, wt: &[W], wp: &mut [W]) -> Result<()> {
    check_len("wt", wt.len(), prod(&[n, k]))?;
    check_len("wp", wp.len(), panels_len(1, k, n))?;
    if k == 0 || n == 0 {
        return Ok(());
    }
    for (jp, panel) in wp.chunks_exact_mut(k * PANEL).enumerate() {
        let j0 = jp * PANEL;
        let cols = PANEL.min(n - j0);
        // The panel's columns are `cols` rows of `wt`, read side by side.
        let rows: [&[W]; PANEL] = core::array::from_fn(|c| if c < cols { &wt[(j0 + c) * k..][..k] } else { &[] });
        for (p, out) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (c, o) in out.iter_mut().enumerate() {
                *o = if c < cols { rows[c][p] } else { W::from_f32(0.0) };
            }
        }
    }
    Ok(())
}

/// Packs `taps` stacked `k×n` matrices `w[t]` both ways in one pass: `fwd` as
/// [`pack_panels`]`(taps, k, n, w, ..)` and `bwd` as each tap's [`pack_panels_transposed`]`(n,
/// k, w[t], ..)` (the panels of `w[t]ᵀ`, tap after tap: [`panels_len`]`(taps, n, k)` in all),
/// with the same bits. A trainer's conv weight `w[t][c_in][c_out]` (`k = c_in`, `n = c_out`)
/// gives the forward's `B = w[t]` and the input gradient's `B = w[t]ᵀ` from one read of `w`;
/// the AVX2 path (`both_ways.rs`, on AVX2 and AVX-512 kinds) moves 16×16 tiles through
/// registers, the others run the two packers. Errors: `w` not exactly `taps·k·n`, `fwd` not
/// exactly [`panels_len`]`(taps, k, n)` or `bwd` not exactly [`panels_len`]`(taps, n, k)`
/// elements ([`crate::KernelError::Len`]).
pub fn pack_panels_both_ways(
    isa: Isa,
    taps: usize,
    k: usize,
    n: usize,
    w: &[f32],
    fwd: &mut [f32],
    bwd: &mut [f32],
) -> Result<()> {
    check_len("w", w.len(), prod(&[taps, k, n]))?;
    check_len("fwd", fwd.len(), panels_len(taps, k, n))?;
    check_len("bwd", bwd.len(), panels_len(taps, n, k))?;
    if taps == 0 || k == 0 || n == 0 {
        return Ok(());
    }
    let (f_tap, b_tap) = (panels_len(1, k, n), panels_len(1, n, k));
    for ((w, fwd), bwd) in w.chunks_exact(k * n).zip(fwd.chunks_exact_mut(f_tap)).zip(bwd.chunks_exact_mut(b_tap)) {
        #[cfg(target_arch = "x86_64")]
        if isa.kind().has_avx2() {
            // SAFETY: lengths checked above (one tap's share of each), k, n ≥ 1; an `Isa` of
            // kind Avx2 or Avx512 exists only when the CPU has AVX2 (isa.rs).
            unsafe { both_ways::pack(k, n, w, fwd, bwd) };
            continue;
        }
        let _ = isa;
        pack_panels(1, k, n, w, fwd)?;
        pack_panels_transposed(n, k, w, bwd)?;
    }
    Ok(())
}

/// One tap's product over packed weights: `A[i][p]` at `a[i·lda + p]`, `B` the `k×n` panels
/// (`b.len() ≥ panels_len(1, k, n)`), `C[i][j]` at `c[i·ldc + j]`.
pub(crate) struct PanelProduct<'a, W> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// A, row stride `lda`.
    pub a: &'a [f32],
    /// Row stride of A (at least `k`).
    pub lda: usize,
    /// B in panels.
    pub b: &'a [W],
    /// Row stride of C (at least `n`).
    pub ldc: usize,
    /// What each C value starts from before `A·B` is added to it.
    pub start: Start<'a>,
    /// Whether each C value becomes `max(start + (A·B), 0)` (ReLU, `Act::Relu`'s bits) as it
    /// is stored: only for the last product added into C.
    pub relu: bool,
    /// Whether C holds a residual on entry, added to each value before the ReLU:
    /// `C[i][j] = relu_if(start + (A·B) + C[i][j])` (a bottleneck block's shortcut, added while
    /// the value is in a register, and the output written over it: no pass over another
    /// output buffer, whose lines a core would first have to fetch). Not with [`Start::C`].
    pub residual: bool,
}

/// What a SIMD tile does to each value as it stores it, after `start + product`: add the
/// residual at the same position (C's row stride; C's own old value) if any, then the ReLU if
/// `relu`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy)]
pub(super) struct Finish {
    pub relu: bool,
    pub res: Option<*const f32>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Finish {
    /// This finish for the tile whose first value is at offset `off` of C.
    #[inline(always)]
    pub(super) fn at(self, off: usize) -> Finish {
        Finish { res: self.res.map(|r| r.wrapping_add(off)), ..self }
    }
}

/// The value a [`PanelProduct`] adds `A·B` to, per C value: C's own (`C += A·B`, a product of
/// several taps), zero, or a row of n values shared by every row (a bias). The last two ignore
/// C's old values, so a forward writes its output once instead of filling it first (that fill,
/// a pass over an output not yet in cache, then read back by every tile: without it the
/// distillation step went 850–871 → 875–883 img/s, see docs/ARCHITECTURE.md).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start<'a> {
    /// `C += A·B`.
    C,
    /// `C = 0 + A·B` (the `+ 0` keeps the bits of a zero-filled C: −0 becomes +0).
    Zero,
    /// `C[i][j] = row[j] + A·B`.
    Row(&'a [f32]),
    /// The same with an f16 row (an f16 model's bias), widened as it is read (exactly).
    RowF16(&'a [f16]),
}

/// [`Start`] for the columns from `j0` on, as the SIMD tiles read it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy)]
pub(super) enum Base {
    /// C's own values.
    C,
    /// Zero.
    Zero,
    /// The shared row, from column `j0`.
    Row(*const f32),
    /// The shared f16 row, from column `j0`.
    RowF16(*const f16),
}

impl Start<'_> {
    /// This start for a tile whose first column is `j0` (`j0 < n`: in bounds by [`PanelProduct::fits`]).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    pub(super) fn at(&self, j0: usize) -> Base {
        match self {
            Start::C => Base::C,
            Start::Zero => Base::Zero,
            Start::Row(r) => Base::Row(r[j0..].as_ptr()),
            Start::RowF16(r) => Base::RowF16(r[j0..].as_ptr()),
        }
    }

    /// The start of `C[i][j]` when C's own value is `c`.
    #[inline(always)]
    fn value(&self, c: f32, j: usize) -> f32 {
        match self {
            Start::C => c,
            Start::Zero => 0.0,
            Start::Row(r) => r[j],
            Start::RowF16(r) => r[j].to_f32(),
        }
    }
}

impl<W> PanelProduct<'_, W> {
    /// The store step of the SIMD tiles, for the tile at C's first value `c`.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    pub(super) fn finish(&self, c: *const f32) -> Finish {
        Finish { relu: self.relu, res: self.residual.then_some(c) }
    }

    /// Whether every operand is long enough for `C` of `c_len` elements.
    fn fits(&self, c_len: usize) -> bool {
        self.lda >= self.k
            && (self.m == 0 || self.a.len() >= (self.m - 1) * self.lda + self.k)
            && self.b.len() >= panels_len(1, self.k, self.n)
            && self.ldc >= self.n
            && (self.m == 0 || c_len >= (self.m - 1) * self.ldc + self.n)
            && !matches!(self.start, Start::Row(r) if r.len() < self.n)
            && !matches!(self.start, Start::RowF16(r) if r.len() < self.n)
            && !(self.residual && matches!(self.start, Start::C))
    }
}

/// `C += A·B` over packed `B` (see [`PanelProduct`]). Operand lengths are checked by the
/// public callers; a product that does not fit is an internal error and panics.
pub(crate) fn accumulate<W: Elem>(isa: Isa, p: &PanelProduct<'_, W>, c: &mut [f32]) {
    assert!(p.fits(c.len()), "panel product operands too short");
    if p.m == 0 || p.n == 0 {
        return;
    }
    if p.k == 0 {
        // An empty sum: C becomes its start (the SIMD tiles assume k ≥ 1).
        portable(p, c);
        return;
    }
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: operand lengths checked above; an `Isa` of kind Avx2 exists only when the CPU has
        // AVX2+FMA+F16C (isa.rs).
        crate::isa::IsaKind::Avx2 => unsafe { avx2::accumulate(p, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: operand lengths checked above; an `Isa` of kind Avx512 exists only when the
        // CPU has AVX-512F besides AVX2+FMA+F16C (isa.rs).
        crate::isa::IsaKind::Avx512 => unsafe { avx512::accumulate(p, c) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: operand lengths checked above; an `Isa` of kind Neon exists only on aarch64
        // CPUs with NEON (isa.rs).
        crate::isa::IsaKind::Neon => unsafe { neon::accumulate(p, c) },
        _ => portable(p, c),
    }
}

/// `y[m×n] = act(A·B + bias (+ y))` from one product over packed `B` (`A[i][p]` at
/// `a[i·lda + p]`; `+ y` when `residual`, `y` holding the residual on entry): each value
/// starts as its bias (an f16 one widened as it is read) and takes the residual and the ReLU
/// as it is stored — the same bits as a zeroed C, the product,
/// [`bias_act`](super::epilogue::bias_act) (one rounding of `b + A·B` either way), then the
/// residual add and the activation, in one pass. Operand lengths are checked by the public
/// callers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<W: Elem>(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[W],
    bias: Option<&[W]>,
    residual: bool,
    act: Act,
    y: &mut [f32],
) {
    let start = match bias {
        None => Start::Zero,
        Some(bias) => match (as_f32(bias), as_f16(bias)) {
            (Some(row), _) => Start::Row(row),
            (_, Some(row)) => Start::RowF16(row),
            // (`Elem` is f32 or f16; any other would start from a widened copy.)
            (None, None) if !residual => {
                bias_rows(isa, n, Some(bias), y);
                Start::C
            }
            (None, None) => unreachable!("Elem is f32 or f16"),
        },
    };
    let product = PanelProduct { m, n, k, a, lda, b, ldc: n, start, relu: act == Act::Relu, residual };
    accumulate(isa, &product, y);
}

/// `Act::Relu.apply(v)` when `relu`, else `v`.
#[inline(always)]
pub(crate) fn relu_if(relu: bool, v: f32) -> f32 {
    if relu {
        Act::Relu.apply(v)
    } else {
        v
    }
}

/// The specification: per panel and row, a 16-lane accumulator summed over `p` in order
/// (lanes are independent, so vectorising them changes no result), then added to the value's
/// [`Start`].
fn portable<W: Elem>(p: &PanelProduct<'_, W>, c: &mut [f32]) {
    let (m, n, k) = (p.m, p.n, p.k);
    if k == 0 {
        for i in 0..m {
            for (j, out) in c[i * p.ldc..i * p.ldc + n].iter_mut().enumerate() {
                let v = p.start.value(*out, j) + 0.0;
                *out = relu_if(p.relu, if p.residual { v + *out } else { v });
            }
        }
        return;
    }
    for (jp, panel) in p.b.chunks_exact(k * PANEL).take(n.div_ceil(PANEL)).enumerate() {
        let j0 = jp * PANEL;
        let cols = PANEL.min(n - j0);
        for i in 0..m {
            let mut acc = [0.0f32; PANEL];
            for (&av, brow) in p.a[i * p.lda..i * p.lda + k].iter().zip(panel.chunks_exact(PANEL)) {
                for (s, b) in acc.iter_mut().zip(brow) {
                    *s += av * b.to_f32();
                }
            }
            for (j, (out, s)) in c[i * p.ldc + j0..i * p.ldc + j0 + cols].iter_mut().zip(acc).enumerate() {
                let v = p.start.value(*out, j0 + j) + s;
                *out = relu_if(p.relu, if p.residual { v + *out } else { v });
            }
        }
    }
}
