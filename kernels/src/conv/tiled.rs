//! The im2col + GEMM drivers: every KxK conv pass is a loop over tiles of [`IM2COL_ROWS`]
//! output rows, or a multiple of it when the scratch holds more (rows = flattened
//! `n·out_h·out_w` pixels), each one GEMM call,
//! so the conv runs at the speed of [`crate::gemm::gemm`]. A pointwise conv (1x1, stride 1,
//! no padding) is a single GEMM over the input itself, with no scratch, and so is a conv from
//! a 1x1 map to a 1x1 map, over its one in-bounds tap ([`Conv2d::only_tap`]: ResNet50's res5
//! 3x3 convs at a 32x32 input did 9× the work on im2col zeros; its train step 202–208 →
//! 215–220 img/s on the AMD EPYC VM, the same bits, since the zero taps added exact zeros
//! in whole KC blocks). A forward with at most
//! [`stream::MAX_ROWS`] output pixels (the late layers at batch 1) instead streams the weights
//! once ([`stream`]), tap by tap, skipping taps that only ever read padding (at 1x1 spatial
//! size a 3x3 conv reads 1/9 of its weights).
//!
//! Lengths and the shape are checked by the public functions in the parent module.

use super::im2col;
use crate::act::Act;
use crate::elem::Elem;
use crate::error::Result;
use crate::gemm::{gemm, GemmShape};
use crate::isa::Isa;
use crate::linear::dense_fwd;
use crate::linear::epilogue::{bias_act, gemm_bias_act};
use crate::linear::panels::{self, PanelProduct, Start};
use crate::linear::stream::{self, Product};
use crate::shape::{Conv2d, IM2COL_ROWS};

/// A pointwise weight gradient over at most this many pixels runs in row blocks of dW.
const SHALLOW_DW_ROWS: usize = 64;
/// Rows of dW (input channels) per block of a shallow pointwise weight gradient.
const DW_ROW_BLOCK: usize = 48;

/// The output rows of the conv, split into tiles of as many whole [`IM2COL_ROWS`] blocks as
/// `scratch` holds (at least one: the callers check [`Conv2d::scratch_len`]): yields
/// `(row0, rows)`. A host caller passing a larger scratch gets fewer, taller tiles, the same
/// bits: each output row's GEMM sum does not depend on the tile, the col2im scatter adds in
/// row order either way, and the weight gradient keeps its [`IM2COL_ROWS`]-row GEMMs.
fn tiles(s: &Conv2d, scratch: &[f32]) -> impl Iterator<Item = (usize, usize)> {
    let total = s.n * s.out_h() * s.out_w();
    let step = (scratch.len() / s.k().max(1) / IM2COL_ROWS).max(1) * IM2COL_ROWS;
    (0..total).step_by(step).map(move |row0| (row0, step.min(total - row0)))
}

/// `y = act(im2col(x) · w + b)`, tile by tile.
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd<W: Elem>(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let (k, c_out) = (s.k(), s.c_out);
    let total = s.n * s.out_h() * s.out_w();
    if s.is_pointwise() {
        return dense_fwd(isa, total, k, c_out, x, w, bias, act, y);
    }
    if let Some(t) = s.only_tap() {
        let per_tap = s.c_in * c_out;
        return dense_fwd(isa, total, s.c_in, c_out, x, &w[t * per_tap..][..per_tap], bias, act, y);
    }
    if stream::applies(isa, total) {
        return fwd_streamed(isa, s, x, w, bias, act, y, scratch);
    }
    for (row0, rows) in tiles(s, scratch) {
        let col = &mut scratch[..rows * k];
        im2col::pack(s, x, row0, col);
        let y_tile = &mut y[row0 * c_out..(row0 + rows) * c_out];
        gemm_bias_act(isa, &GemmShape::nn(rows, c_out, k), col, w, bias, act, y_tile)?;
    }
    Ok(())
}

/// The forward for few output pixels (one im2col tile): `y = Σ_taps col[.., tap] · w[tap]`
/// over the taps some pixel reads in bounds, each a streamed `c_in × c_out` product.
#[allow(clippy::too_many_arguments)]
fn fwd_streamed<W: Elem>(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let (k, c_in, c_out) = (s.k(), s.c_in, s.c_out);
    let total = s.n * s.out_h() * s.out_w();
    let col = &mut scratch[..total * k];
    im2col::pack(s, x, 0, col);
    y.fill(0.0);
    'taps: for ky in 0..s.kh {
        for kx in 0..s.kw {
            if !im2col::tap_used(s, 0, total, ky, kx) {
                continue;
            }
            let t = ky * s.kw + kx;
            let wt = &w[t * c_in * c_out..(t + 1) * c_in * c_out];
            let product = Product { m: total, n: c_out, k: c_in, a: &col[t * c_in..], lda: k, b: wt };
            if !stream::accumulate(isa, &product, y) {
                // Only reachable if `applies` and `accumulate` disagree: redo it all as a GEMM.
                gemm(isa, &GemmShape::nn(total, c_out, k), 1.0, &col[..], w, 0.0, y)?;
                break 'taps;
            }
        }
    }
    bias_act(isa, c_out, bias, act, y);
    Ok(())
}

/// `y = act(Σ_taps im2col(x)[.., tap] · wp[tap] + b)` over packed weights, tile by tile,
/// skipping the taps no pixel of the tile reads in bounds (see [`crate::linear::panels`]);
/// a batch's small maps go position by position, so every tile skips its padding taps.
#[allow(clippy::too_many_arguments)]
pub(super) fn fwd_panels<W: Elem>(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    wp: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let (k, c_out) = (s.k(), s.c_out);
    let pixels = s.out_h() * s.out_w();
    if s.is_pointwise() {
        panels::forward(isa, s.n * s.h * s.w, c_out, k, x, k, wp, bias, false, act, y);
        return;
    }
    if s.kh == 1 && s.kw == 1 && s.pad == 0 {
        // A strided 1x1 conv reads no padding: each tile of gathered input pixels is one
        // product with the bias and activation applied as it is stored.
        for (row0, rows) in tiles(s, scratch) {
            let col = &mut scratch[..rows * k];
            im2col::pack(s, x, row0, col);
            let y_tile = &mut y[row0 * c_out..(row0 + rows) * c_out];
            panels::forward(isa, rows, c_out, k, col, k, wp, bias, false, act, y_tile);
        }
        return;
    }
    y.fill(0.0);
    if s.n > 1 && pixels <= BY_POSITION_PIXELS {
        // Small maps of a batch: tiles of one output position across images, so each tile
        // skips the taps that position reads only as padding (at a 2x2 map, 5 of 9).
        for pos in 0..pixels {
            for img0 in (0..s.n).step_by(IM2COL_ROWS) {
                let rows = IM2COL_ROWS.min(s.n - img0);
                let row0 = img0 * pixels + pos;
                let col = &mut scratch[..rows * k];
                im2col::pack_strided(s, x, row0, pixels, col);
                let y_tile = &mut y[row0 * c_out..];
                taps_into(isa, s, col, row0, 1, rows, wp, y_tile, pixels * c_out);
            }
        }
    } else {
        for (row0, rows) in tiles(s, scratch) {
            let col = &mut scratch[..rows * k];
            im2col::pack(s, x, row0, col);
            let y_tile = &mut y[row0 * c_out..(row0 + rows) * c_out];
            taps_into(isa, s, col, row0, rows, rows, wp, y_tile, c_out);
        }
    }
    bias_act(isa, c_out, bias, act, y);
}

/// Output maps of at most this many pixels run a batch's packed forward position by position.
const BY_POSITION_PIXELS: usize = 16;

/// `y_tile += Σ_taps col[.., tap] · wp[tap]` for an im2col tile of `rows` rows (C rows `ldc`
/// apart), over the taps that some of the `span` output pixels from `row0` read in bounds.
#[allow(clippy::too_many_arguments)]
fn taps_into<W: Elem>(
    isa: Isa,
    s: &Conv2d,
    col: &[f32],
    row0: usize,
    span: usize,
    rows: usize,
    wp: &[W],
    y_tile: &mut [f32],
    ldc: usize,
) {
    let (k, c_in, c_out) = (s.k(), s.c_in, s.c_out);
    let per_tap = panels::panels_len(1, c_in, c_out);
    for ky in 0..s.kh {
        for kx in 0..s.kw {
            if !im2col::tap_used(s, row0, span, ky, kx) {
                continue;
            }
            let t = ky * s.kw + kx;
            let b = &wp[t * per_tap..(t + 1) * per_tap];
            let a = &col[t * c_in..];
            let product = PanelProduct {
                m: rows,
                n: c_out,
                k: c_in,
                a,
                lda: k,
                b,
                ldc,
                start: Start::C,
                relu: false,
                residual: false,
            };
            panels::accumulate(isa, &product, y_tile);
        }
    }
}

/// `dx = col2im(dy · wᵀ)`: per tile `dcol = dy_tile · wᵀ`, scatter-added into a zeroed `dx`.
pub(super) fn bwd_input(
    isa: Isa,
    s: &Conv2d,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let (k, c_out) = (s.k(), s.c_out);
    if s.is_pointwise() {
        return gemm(isa, &GemmShape::nt(s.n * s.h * s.w, k, c_out), 1.0, dy, w, 0.0, dx);
    }
    if let Some(t) = s.only_tap() {
        // dx = dy · w[t]ᵀ: the other taps read only padding.
        let per_tap = s.c_in * c_out;
        return gemm(isa, &GemmShape::nt(s.n, s.c_in, c_out), 1.0, dy, &w[t * per_tap..][..per_tap], 0.0, dx);
    }
    dx.fill(0.0);
    for (row0, rows) in tiles(s, scratch) {
        let dcol = &mut scratch[..rows * k];
        let dy_tile = &dy[row0 * c_out..(row0 + rows) * c_out];
        gemm(isa, &GemmShape::nt(rows, k, c_out), 1.0, dy_tile, w, 0.0, dcol)?;
        im2col::scatter_add(s, dcol, row0, dx);
    }
    Ok(())
}

/// `dx = Σ_(position, tap) dy[position] · wtp[tap]ᵀ`, each product added into the input pixel
/// the tap reads from that output position (taps reading padding skipped), in position-major,
/// tap-minor order; a pointwise conv is one product.
pub(super) fn bwd_input_panels<W: Elem>(isa: Isa, s: &Conv2d, dy: &[f32], wtp: &[W], dx: &mut [f32]) {
    let (c_in, c_out) = (s.c_in, s.c_out);
    if s.is_pointwise() {
        panels::forward(isa, s.n * s.h * s.w, c_in, c_out, dy, c_out, wtp, None, false, Act::None, dx);
        return;
    }
    let per_tap = panels::panels_len(1, c_out, c_in);
    let (out_h, out_w) = (s.out_h(), s.out_w());
    dx.fill(0.0);
    for oy in 0..out_h {
        for ox in 0..out_w {
            let pos = oy * out_w + ox;
            for t in 0..s.kh * s.kw {
                let Some(src) = s.tap_source(oy, ox, t) else { continue };
                let product = PanelProduct {
                    m: s.n,
                    n: c_in,
                    k: c_out,
                    a: &dy[pos * c_out..],
                    lda: out_h * out_w * c_out,
                    b: &wtp[t * per_tap..(t + 1) * per_tap],
                    ldc: s.h * s.w * c_in,
                    start: Start::C,
                    relu: false,
                    residual: false,
                };
                panels::accumulate(isa, &product, &mut dx[src * c_in..]);
            }
        }
    }
}

/// `dw = xᵀ · dy` for `rows` pixels of `k` input channels (`dw` is `k × c_out`).
fn pointwise_bwd_weight(
    isa: Isa,
    rows: usize,
    k: usize,
    c_out: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) -> Result<()> {
    if rows <= SHALLOW_DW_ROWS {
        // A shallow product (few pixels: a late layer's map × a thread's samples) writes a
        // large dW once per element; row blocks of dW keep those writes on few pages.
        for i0 in (0..k).step_by(DW_ROW_BLOCK) {
            let mb = DW_ROW_BLOCK.min(k - i0);
            let shape = GemmShape { m: mb, ..GemmShape::tn(k, c_out, rows) };
            gemm(isa, &shape, 1.0, &x[i0..], dy, 0.0, &mut dw[i0 * c_out..(i0 + mb) * c_out])?;
        }
        return Ok(());
    }
    gemm(isa, &GemmShape::tn(k, c_out, rows), 1.0, x, dy, 0.0, dw)
}

/// `dw = im2col(x)ᵀ · dy`: the first tile overwrites `dw`, later tiles accumulate (β = 1).
pub(super) fn bwd_weight(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let (k, c_out) = (s.k(), s.c_out);
    if s.is_pointwise() {
        return pointwise_bwd_weight(isa, s.n * s.h * s.w, k, c_out, x, dy, dw);
    }
    if let Some(t) = s.only_tap() {
        // dw[t] = xᵀ · dy; the other taps read only padding: their gradient is 0.
        let per_tap = s.c_in * c_out;
        dw.fill(0.0);
        return pointwise_bwd_weight(isa, s.n, s.c_in, c_out, x, dy, &mut dw[t * per_tap..][..per_tap]);
    }
    if s.out_h() * s.out_w() <= BY_POSITION_DW_PIXELS {
        return bwd_weight_by_position(isa, s, x, dy, dw);
    }
    for (row0, rows) in tiles(s, scratch) {
        let col = &mut scratch[..rows * k];
        im2col::pack(s, x, row0, col);
        // One GEMM per IM2COL_ROWS rows whatever the tile: the grouping of dW's sum.
        for sub in (0..rows).step_by(IM2COL_ROWS) {
            let (r0, n) = (row0 + sub, IM2COL_ROWS.min(rows - sub));
            let beta = if r0 == 0 { 0.0 } else { 1.0 };
            let (a, dy_tile) = (&col[sub * k..(sub + n) * k], &dy[r0 * c_out..(r0 + n) * c_out]);
            gemm(isa, &GemmShape::tn(k, c_out, n), 1.0, a, dy_tile, beta, dw)?;
        }
    }
    Ok(())
}

/// Output maps of at most this many pixels get their KxK weight gradient position by position
/// ([`bwd_weight_by_position`]).
const BY_POSITION_DW_PIXELS: usize = 4;

/// `dw[t] = Σ_positions x[pixel t reads there]ᵀ · dy[position]` over the batch, one GEMM per
/// (tap, position) at which the tap reads the input in bounds, straight from `x` and `dy` at
/// their batch strides (no im2col tile), positions in order, `β = 1` after a tap's first; a
/// tap that reads only padding gets 0. At a 2x2 map a 3x3 conv's taps read the input at 16 of
/// the 36 (tap, position) pairs: the im2col GEMM multiplied zeros for the other 20.
fn bwd_weight_by_position(isa: Isa, s: &Conv2d, x: &[f32], dy: &[f32], dw: &mut [f32]) -> Result<()> {
    let (c_in, c_out) = (s.c_in, s.c_out);
    let (out_h, out_w) = (s.out_h(), s.out_w());
    let shape = GemmShape { lda: s.h * s.w * c_in, ldb: out_h * out_w * c_out, ..GemmShape::tn(c_in, c_out, s.n) };
    for (t, dw_t) in dw.chunks_exact_mut(c_in * c_out).enumerate() {
        let mut beta = 0.0;
        for oy in 0..out_h {
            for ox in 0..out_w {
                let Some(src) = s.tap_source(oy, ox, t) else { continue };
                let (a, b) = (&x[src * c_in..], &dy[(oy * out_w + ox) * c_out..]);
                gemm(isa, &shape, 1.0, a, b, beta, dw_t)?;
                beta = 1.0;
            }
        }
        if beta == 0.0 {
            dw_t.fill(0.0);
        }
    }
    Ok(())
}
