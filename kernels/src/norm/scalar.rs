//! Portable batch-norm paths (the specification). Lengths are checked by the callers; every
//! loop walks rows of `c` channels in memory order (the per-channel sums over rows in blocks of
//! rows: [`blocked_sums`]).

use super::{BnParams, ReluAfter};
use crate::act::Act;
use crate::elem::Elem;
use crate::shape::Channels;

/// Channels per block of precomputed inference scales (stack arrays, no scratch).
pub(super) const BLOCK: usize = 32;

/// Rows per block of the per-channel sums over rows ([`moments`], [`bwd_sums`]): each block is
/// summed from zero on its own and the block sums are added to the total in order, so that
/// the rounding error grows with `ROWS + rows/ROWS` instead of `rows`. (One running sum over
/// the 4096 rows of a CIFAR-stem conv1 at 4 samples per thread put that batch norm's scale
/// gradient 5× further from the float64 value than PyTorch's float32 is:
/// `scripts/torch_crosscheck.py`.) Up to `ROWS` rows are one plain row-order sum.
pub(super) const ROWS: usize = 128;
/// Channels per chunk of those sums when there is more than one block of rows: each block's
/// partial sums live in stack arrays this long (4 KiB for the backward's two), and a chunk
/// narrower than a row reads it strided. No layer of the models has both more than [`ROWS`]
/// rows and more than `COLS` channels at batch 64 on two threads. Up to `ROWS` rows there is
/// one block, summed straight into the outputs.
pub(super) const COLS: usize = 512;

/// Rows `r0..r1` and channels `c0..c0 + cb` of a `[rows][c]` tensor: one block of the
/// per-channel sums ([`blocked_sums`]).
pub(super) struct Tile {
    pub c: usize,
    pub c0: usize,
    pub cb: usize,
    pub r0: usize,
    pub r1: usize,
}

impl Tile {
    /// The tile's channels of row `r` of `x`.
    #[inline(always)]
    pub(super) fn row<'a>(&self, x: &'a [f32], r: usize) -> &'a [f32] {
        &x[r * self.c + self.c0..][..self.cb]
    }
    /// The tile's channels of a per-channel vector.
    #[inline(always)]
    pub(super) fn cols<'a>(&self, v: &'a [f32]) -> &'a [f32] {
        &v[self.c0..][..self.cb]
    }
    /// The ReLU's per-channel vectors for the tile's channels.
    #[inline(always)]
    pub(super) fn relu<'a>(&self, r: &ReluAfter<'a>) -> ReluAfter<'a> {
        ReluAfter { gamma: &r.gamma[self.c0..][..self.cb], beta: &r.beta[self.c0..][..self.cb] }
    }
}

/// `K` per-channel sums over `rows` rows of `c` channels, in blocks of [`ROWS`] rows (and
/// chunks of [`COLS`] channels): `block(tile, sums)` adds one tile's terms into `sums` (`cb`
/// long each, `sums[k][j]` for channel `c0 + j`, zeroed before each block), which are then
/// added to `out[k]` (zeroed first) — the order every path keeps, so that their sums are
/// bit-identical. Up to [`ROWS`] rows, one tile of all channels adds straight into `out`.
#[inline(always)]
pub(super) fn blocked_sums<const K: usize>(
    c: usize,
    rows: usize,
    mut out: [&mut [f32]; K],
    mut block: impl FnMut(&Tile, [&mut [f32]; K]),
) {
    for o in out.iter_mut() {
        o.fill(0.0);
    }
    if rows <= ROWS {
        block(&Tile { c, c0: 0, cb: c, r0: 0, r1: rows }, out.each_mut().map(|o| &mut o[..c]));
        return;
    }
    let mut parts = [[0.0f32; COLS]; K];
    for r0 in (0..rows).step_by(ROWS) {
        let r1 = rows.min(r0 + ROWS);
        for c0 in (0..c).step_by(COLS) {
            let tile = Tile { c, c0, cb: COLS.min(c - c0), r0, r1 };
            for p in parts.iter_mut() {
                p[..tile.cb].fill(0.0);
            }
            block(&tile, parts.each_mut().map(|p| &mut p[..tile.cb]));
            for (o, p) in out.iter_mut().zip(&parts) {
                for (t, &v) in o[c0..c0 + tile.cb].iter_mut().zip(&p[..tile.cb]) {
                    *t += v;
                }
            }
        }
    }
}

pub(super) fn moments(s: &Channels, x: &[f32], mean: &mut [f32], m2: &mut [f32]) {
    moments_by(
        s,
        mean,
        m2,
        |t, p| {
            for r in t.r0..t.r1 {
                sum_row(0, t.row(x, r), p);
            }
        },
        |t, mean, p| {
            for r in t.r0..t.r1 {
                m2_row(0, t.row(x, r), mean, p);
            }
        },
    );
}

/// The order of [`moments`] on every path, given its tiles' row loops: `sum(tile, p)` adds the
/// tile's values into `p`, `dev(tile, mean, p)` their squared deviations from the tile's
/// channels of `mean`; blocks of rows as [`blocked_sums`], then `mean = sum/rows`.
#[inline(always)]
pub(super) fn moments_by(
    s: &Channels,
    mean: &mut [f32],
    m2: &mut [f32],
    mut sum: impl FnMut(&Tile, &mut [f32]),
    mut dev: impl FnMut(&Tile, &[f32], &mut [f32]),
) {
    blocked_sums(s.c, s.rows, [&mut *mean], |t, [p]| sum(t, p));
    let inv = 1.0 / s.rows as f32;
    for m in mean.iter_mut() {
        *m *= inv;
    }
    blocked_sums(s.c, s.rows, [&mut *m2], |t, [p]| dev(t, t.cols(mean), p));
}

// The per-row loops below are the specification of one row's channels `from..`; the SIMD
// paths run them for the channels past their last full vector.

/// `mean[ch] += row[ch]` for channels `from..`.
#[inline(always)]
pub(super) fn sum_row(from: usize, row: &[f32], mean: &mut [f32]) {
    for (acc, &v) in mean.iter_mut().zip(row).skip(from) {
        *acc += v;
    }
}

/// `m2[ch] += (row[ch] − mean[ch])²` for channels `from..`.
#[inline(always)]
pub(super) fn m2_row(from: usize, row: &[f32], mean: &[f32], m2: &mut [f32]) {
    for ((acc, &v), &m) in m2.iter_mut().zip(row).zip(mean.iter()).skip(from) {
        let d = v - m;
        *acc += d * d;
    }
}

pub(super) fn merge(na: usize, mean_a: &mut [f32], m2_a: &mut [f32], nb: usize, mean_b: &[f32], m2_b: &[f32]) {
    if na == 0 {
        mean_a.copy_from_slice(mean_b);
        m2_a.copy_from_slice(m2_b);
        return;
    }
    let (fa, fb) = (na as f32, nb as f32);
    let n = fa + fb;
    for (((ma, qa), &mb), &qb) in mean_a.iter_mut().zip(m2_a.iter_mut()).zip(mean_b).zip(m2_b) {
        let delta = mb - *ma;
        *ma += delta * (fb / n);
        *qa += qb + delta * delta * (fa * fb / n);
    }
}

/// Turns `m2_invstd` from M2 into invstd and updates the running statistics.
pub(super) fn finish(
    p: BnParams,
    count: usize,
    mean: &[f32],
    m2_invstd: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    let inv_n = 1.0 / count as f32;
    let keep = p.momentum;
    let take = 1.0 - p.momentum;
    for (((&m, q), rm), rv) in mean.iter().zip(m2_invstd.iter_mut()).zip(running_mean).zip(running_var) {
        let var = *q * inv_n;
        *q = 1.0 / libm::sqrtf(var + p.eps);
        *rm = keep * *rm + take * m;
        *rv = keep * *rv + take * var;
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn apply(
    c: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    act: Act,
    y: &mut [f32],
) {
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        apply_row(0, xr, gamma, beta, mean, invstd, act, yr);
    }
}

/// One row of [`apply`], channels `from..`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn apply_row(
    from: usize,
    xr: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    act: Act,
    yr: &mut [f32],
) {
    for ch in from..xr.len() {
        yr[ch] = act.apply((xr[ch] - mean[ch]) * (gamma[ch] * invstd[ch]) + beta[ch]);
    }
}

/// `dy` passed back through a ReLU whose output is `y`: `dy·[y > 0]` (0 where `y` is NaN), as
/// [`crate::act::relu_bwd`].
#[inline(always)]
pub(super) fn gated(dy: f32, y: f32) -> f32 {
    if y > 0.0 {
        dy
    } else {
        0.0
    }
}

/// `dy` gated by the ReLU after the BN, if any (see [`super::ReluAfter`]): the BN output
/// `(x − μ)·(γ·invstd) + β` recomputed with the operations of [`apply`], then [`gated`].
#[inline(always)]
pub(super) fn gate(relu: Option<&ReluAfter<'_>>, dy: f32, x: f32, mean: f32, invstd: f32, ch: usize) -> f32 {
    match relu {
        None => dy,
        Some(r) => gated(dy, (x - mean) * (r.gamma[ch] * invstd) + r.beta[ch]),
    }
}

/// `relu`: a ReLU after the BN, whose gate applies to `dy` ([`gate`]). Sums in blocks of
/// rows ([`blocked_sums`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd_sums(
    c: usize,
    x: &[f32],
    dy: &[f32],
    relu: Option<&ReluAfter<'_>>,
    mean: &[f32],
    invstd: &[f32],
    sum_dy: &mut [f32],
    sum_dy_xhat: &mut [f32],
) {
    blocked_sums(c, x.len() / c, [sum_dy, sum_dy_xhat], |t, [pd, px]| {
        let (relu, mean, invstd) = (relu.map(|r| t.relu(r)), t.cols(mean), t.cols(invstd));
        for r in t.r0..t.r1 {
            bwd_sums_row(0, t.row(x, r), t.row(dy, r), relu.as_ref(), mean, invstd, pd, px);
        }
    });
}

/// One row of [`bwd_sums`], channels `from..`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn bwd_sums_row(
    from: usize,
    xr: &[f32],
    dyr: &[f32],
    relu: Option<&ReluAfter<'_>>,
    mean: &[f32],
    invstd: &[f32],
    sum_dy: &mut [f32],
    sum_dy_xhat: &mut [f32],
) {
    for ch in from..xr.len() {
        let g = gate(relu, dyr[ch], xr[ch], mean[ch], invstd[ch], ch);
        let xhat = (xr[ch] - mean[ch]) * invstd[ch];
        sum_dy[ch] += g;
        sum_dy_xhat[ch] += g * xhat;
    }
}

/// The per-channel inputs of the backward's apply step.
pub(super) struct BwdSums<'a> {
    pub count: usize,
    pub gamma: &'a [f32],
    pub mean: &'a [f32],
    pub invstd: &'a [f32],
    pub sum_dy: &'a [f32],
    pub sum_dy_xhat: &'a [f32],
}

/// `relu` as in [`bwd_sums`].
pub(super) fn bwd_apply(
    c: usize,
    b: &BwdSums<'_>,
    x: &[f32],
    dy: &[f32],
    relu: Option<&ReluAfter<'_>>,
    dx: &mut [f32],
) {
    let inv_n = 1.0 / b.count as f32;
    for ((dxr, xr), dyr) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
        bwd_apply_row(0, b, inv_n, xr, dyr, relu, dxr);
    }
}

/// One row of [`bwd_apply`], channels `from..` (`inv_n = 1 / b.count`, computed once by the
/// caller).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn bwd_apply_row(
    from: usize,
    b: &BwdSums<'_>,
    inv_n: f32,
    xr: &[f32],
    dyr: &[f32],
    relu: Option<&ReluAfter<'_>>,
    dxr: &mut [f32],
) {
    for ch in from..xr.len() {
        let g = gate(relu, dyr[ch], xr[ch], b.mean[ch], b.invstd[ch], ch);
        let xhat = (xr[ch] - b.mean[ch]) * b.invstd[ch];
        let centred = g - b.sum_dy[ch] * inv_n - xhat * (b.sum_dy_xhat[ch] * inv_n);
        dxr[ch] = b.gamma[ch] * b.invstd[ch] * centred;
    }
}

/// Stored inference statistics.
pub(super) struct Stored<'a, W> {
    pub eps: f32,
    pub gamma: &'a [W],
    pub beta: &'a [W],
    pub mean: &'a [W],
    pub var: &'a [W],
}

/// The per-channel constants of channels `c0..c0 + cb` (`cb ≤ BLOCK`): `γ/√(σ²+ε)`, `μ`, `β`.
pub(super) struct Block {
    pub scale: [f32; BLOCK],
    pub mean: [f32; BLOCK],
    pub beta: [f32; BLOCK],
}

impl Block {
    pub(super) fn of<W: Elem>(st: &Stored<'_, W>, c0: usize, cb: usize) -> Block {
        let mut b = Block { scale: [0.0; BLOCK], mean: [0.0; BLOCK], beta: [0.0; BLOCK] };
        for i in 0..cb {
            let ch = c0 + i;
            b.scale[i] = st.gamma[ch].to_f32() / libm::sqrtf(st.var[ch].to_f32() + st.eps);
            b.mean[i] = st.mean[ch].to_f32();
            b.beta[i] = st.beta[ch].to_f32();
        }
        b
    }
}

/// `y = act((x − μ)·scale + β)` over one row's channels `from..` of a [`Block`] (`xb`, `yb`
/// are the block's channels of the row).
#[inline(always)]
pub(super) fn infer_row(from: usize, k: &Block, xb: &[f32], act: Act, yb: &mut [f32]) {
    for i in from..xb.len() {
        yb[i] = act.apply((xb[i] - k.mean[i]) * k.scale[i] + k.beta[i]);
    }
}

/// Blocks of [`BLOCK`] channels: widen and precompute `γ/√(σ²+ε)` once per channel, then
/// sweep the rows: `y = act((x − μ)·scale + β)`.
pub(super) fn infer<W: Elem>(c: usize, st: &Stored<'_, W>, x: &[f32], act: Act, y: &mut [f32]) {
    let mut c0 = 0;
    while c0 < c {
        let cb = BLOCK.min(c - c0);
        let k = Block::of(st, c0, cb);
        for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let (yb, xb) = (&mut yr[c0..c0 + cb], &xr[c0..c0 + cb]);
            infer_row(0, &k, xb, act, yb);
        }
        c0 += cb;
    }
}
