//! Dense layers over rows: the pointwise (1x1, stride 1) conv with `rows = n·h·w` over NHWC, and
//! the fully-connected layer with `rows = n`. Weights are IO `w[c_in][c_out]`, bias `b[c_out]`.
//!
//! All three passes are one call of [`crate::gemm::gemm`], so they speed up with it; only the
//! forward's bias + activation epilogue (`epilogue`) and the bias gradient are computed here.
//! A forward of at most `stream::MAX_ROWS` rows (batch-1 fc, late pointwise convs) instead
//! streams the weights once in their stored order (`stream`), which is what bounds its speed;
//! weights packed once into panels ([`panels`], as the engine does) stream faster still. An
//! fc's weights packed once for the GEMM's narrow path ([`pack_narrow`], [`linear_fwd_narrow`])
//! save the trainer's threads packing them on every call.

pub(crate) mod epilogue;
pub mod panels;
pub(crate) mod stream;

use crate::act::Act;
use crate::elem::Elem;
use crate::error::{check_len, check_scratch, KernelError, Result};
use crate::gemm::{gemm, gemm_packed_b, pack_b, packed_b_len, GemmShape};
use crate::isa::{Isa, IsaKind};
use crate::shape::Linear;

/// Forward `y = act(x · w + b)`: `x[rows][c_in]`, `w[c_in][c_out]` (f32 or f16), optional
/// `b[c_out]` (same dtype), `y[rows][c_out]` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd<W: Elem>(
    isa: Isa,
    s: &Linear,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    check_fwd(s, x, w, bias, y)?;
    dense_fwd(isa, s.rows, s.c_in, s.c_out, x, w, bias, act, y)
}

/// `y = act(x · w + b)` for `rows` rows of `c_in` (`w` is `c_in × c_out`), lengths already
/// checked: few rows stream the weights once ([`stream`]), more go through the GEMM with the
/// bias and activation in its store. Also a pointwise conv's forward (`conv::tiled`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_fwd<W: Elem>(
    isa: Isa,
    rows: usize,
    c_in: usize,
    c_out: usize,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    let product = stream::Product { m: rows, n: c_out, k: c_in, a: x, lda: c_in, b: w };
    if stream::overwrite(isa, &product, y) {
        epilogue::bias_act(isa, c_out, bias, act, y);
        return Ok(());
    }
    epilogue::gemm_bias_act(isa, &GemmShape::nn(rows, c_out, c_in), x, w, bias, act, y)
}

/// f32 that `w` takes packed by [`pack_narrow`] for [`linear_fwd_narrow`] on `isa` (any number
/// of rows), or `None` where `isa` has no such path for `s` — then [`linear_fwd`] packs the
/// weights on each call. On AVX2: at most 10 outputs from at least 64 inputs (an fc), whose
/// forward over many rows packs `w` for the GEMM's narrow path on every call.
pub fn narrow_packed_len(isa: Isa, s: &Linear) -> Option<usize> {
    packed_b_len(isa, &GemmShape::nn(s.rows, s.c_out, s.c_in))
}

/// Packs `w[c_in][c_out]` (f32 or f16, widened) into `wp` (at least [`narrow_packed_len`]
/// f32) for [`linear_fwd_narrow`] calls with the same `c_in`, `c_out` and any rows.
///
/// Errors: `Shape` when [`narrow_packed_len`] is `None`; `Len` for a `w` of another length or
/// a short `wp`.
pub fn pack_narrow<W: Elem>(isa: Isa, s: &Linear, w: &[W], wp: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("w", w.len(), s.w_len())?;
    pack_b(isa, &GemmShape::nn(s.rows, s.c_out, s.c_in), w, wp)
}

/// [`linear_fwd`] with `wp` = `w` packed by [`pack_narrow`]: the same bits, where the GEMM
/// reads `wp` instead of packing `w` (the few rows that stream the weights read `w`). The
/// trainer packs an fc's weights once per forward and shares them between its threads.
///
/// Errors: as [`linear_fwd`], and `Shape` when [`narrow_packed_len`] is `None`, `Len` for a
/// short `wp`.
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd_narrow<W: Elem>(
    isa: Isa,
    s: &Linear,
    x: &[f32],
    w: &[W],
    wp: &[f32],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    check_fwd(s, x, w, bias, y)?;
    let g = GemmShape::nn(s.rows, s.c_out, s.c_in);
    let len = packed_b_len(isa, &g).ok_or(KernelError::Shape("linear: this ISA has no packed narrow weights"))?;
    check_scratch("wp", wp.len(), len)?;
    let product = stream::Product { m: s.rows, n: s.c_out, k: s.c_in, a: x, lda: s.c_in, b: w };
    if !stream::overwrite(isa, &product, y) {
        gemm_packed_b(isa, &g, 1.0, x, wp, 0.0, y)?;
    }
    epilogue::bias_act(isa, s.c_out, bias, act, y);
    Ok(())
}

/// [`linear_fwd`] with the weights packed by [`panels::pack_panels`]`(1, c_in, c_out, ..)`:
/// `wp` holds [`panels::panels_len`]`(1, c_in, c_out)` elements. Fast for few rows (it reads
/// `wp` once per 6 rows); the engine uses it for fc layers and pointwise convs with at most
/// [`panels::PACK_MAX_ROWS`] rows.
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd_panels<W: Elem>(
    isa: Isa,
    s: &Linear,
    x: &[f32],
    wp: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    check_panels(s, x, wp, bias, y)?;
    panels::forward(isa, s.rows, s.c_out, s.c_in, x, s.c_in, wp, bias, false, act, y);
    Ok(())
}

/// `y = act(x·W + b + y)` over packed weights: [`linear_fwd_panels`] added to a residual that
/// `y` holds on entry and is overwritten with the result — a bottleneck block's last pointwise
/// conv with its shortcut. Each value takes the bias, the residual and the activation as the
/// product stores it: one pass over `y`, whose lines are in cache from the residual's read,
/// where a separate output not in cache is first fetched line by line by the core's stores.
/// Measured with outputs and residuals out of L2 (48 of each in turn, AVX-512 Xeon VM):
/// 512×128→512 777 µs as product + add pass, 587 µs in place; 2048×64→256 935 µs as the
/// blocked GEMM + add pass, 730 µs in place. Bits: those of [`linear_fwd_panels`] with
/// [`Act::None`], then `act(y + r)`.
///
/// Errors: as [`linear_fwd_panels`].
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd_panels_residual<W: Elem>(
    isa: Isa,
    s: &Linear,
    x: &[f32],
    wp: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    check_panels(s, x, wp, bias, y)?;
    panels::forward(isa, s.rows, s.c_out, s.c_in, x, s.c_in, wp, bias, true, act, y);
    Ok(())
}

/// The argument checks of a forward over the stored weights: `s` valid, `x`, `w`, `bias` and
/// `y` of exactly the lengths it needs.
fn check_fwd<W: Elem>(s: &Linear, x: &[f32], w: &[W], bias: Option<&[W]>, y: &[f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("w", w.len(), s.w_len())?;
    if let Some(b) = bias {
        check_len("bias", b.len(), s.c_out)?;
    }
    check_len("y", y.len(), s.y_len())
}

/// The argument checks of the products over packed weights: `s` valid, `x`, `wp`, `bias`
/// and `y` of exactly the lengths it needs.
fn check_panels<W: Elem>(s: &Linear, x: &[f32], wp: &[W], bias: Option<&[W]>, y: &[f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("wp", wp.len(), panels::panels_len(1, s.c_in, s.c_out))?;
    if let Some(b) = bias {
        check_len("bias", b.len(), s.c_out)?;
    }
    check_len("y", y.len(), s.y_len())
}

/// Input gradient `dX = dY · Wᵀ`: `dy[rows][c_out]`, `w[c_in][c_out]`, `dx[rows][c_in]`
/// (overwritten).
pub fn linear_bwd_input(isa: Isa, s: &Linear, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("w", w.len(), s.w_len())?;
    check_len("dx", dx.len(), s.x_len())?;
    gemm(isa, &GemmShape::nt(s.rows, s.c_in, s.c_out), 1.0, dy, w, 0.0, dx)
}

/// Weight and bias gradients `dW = Xᵀ · dY`, `db = Σ_rows dY`: `x[rows][c_in]`,
/// `dy[rows][c_out]`, `dw[c_in][c_out]`, `db[c_out]` (both overwritten; `db` optional).
pub fn linear_bwd_weight(
    isa: Isa,
    s: &Linear,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.x_len())?;
    check_len("dy", dy.len(), s.y_len())?;
    check_len("dw", dw.len(), s.w_len())?;
    if let Some(db) = &db {
        check_len("db", db.len(), s.c_out)?;
    }
    gemm(isa, &GemmShape::tn(s.c_in, s.c_out, s.rows), 1.0, x, dy, 0.0, dw)?;
    if let Some(db) = db {
        match isa.kind() {
            IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::column_sums(s.c_out, dy, db),
        }
    }
    Ok(())
}

/// Portable paths (the specification). Lengths are checked by the callers.
mod scalar {
    /// `db[j] = Σ_r dy[r][j]`, rows summed in order.
    pub(super) fn column_sums(c_out: usize, dy: &[f32], db: &mut [f32]) {
        db.fill(0.0);
        for row in dy.chunks_exact(c_out) {
            for (acc, &v) in db.iter_mut().zip(row) {
                *acc += v;
            }
        }
    }
}
