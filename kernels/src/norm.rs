//! Batch normalisation over NHWC activations viewed as [`Channels`] `{rows: n·h·w, c}`: training
//! forward and backward (whole-batch, or split into row chunks for several threads), inference
//! with stored statistics, and folding into the preceding conv.
//!
//! **Paddle semantics.** Training normalises with the *biased* batch variance
//! `σ²_B = (1/N) Σ (x − μ_B)²` and updates the running variance with that same biased value
//! (PyTorch would use the unbiased one for the update):
//! `running = momentum·running + (1 − momentum)·batch`, for both mean and variance.
//!
//! **Splitting a batch across threads.** Statistics must cover the whole batch, and the result
//! should not depend on the thread count beyond rounding, and be reproducible run to run. With
//! the batch split into row chunks (any sizes, fixed order):
//! 1. forward: each chunk runs [`bn_partial_moments`] (count, mean, M2 per channel); the chunks
//!    are combined IN CHUNK ORDER with [`bn_merge_moments`] (Chan et al.); [`bn_finish_moments`]
//!    gives `invstd` and updates the running statistics once; each chunk runs
//!    [`bn_train_apply`];
//! 2. backward: each chunk runs [`bn_bwd_partial_sums`] (`Σdy`, `Σdy·x̂`); the chunks' sums are
//!    added in chunk order (e.g. [`crate::act::add_inplace`]) — the totals ARE `dβ` and `dγ`;
//!    each chunk runs [`bn_bwd_apply`] with the whole-batch row count.
//!
//! [`bn_train_fwd`] and [`bn_bwd`] are exactly this with one chunk.

use crate::act::Act;
use crate::elem::Elem;
use crate::error::{check_len, ensure, Result};
use crate::isa::{Isa, IsaKind};
use crate::shape::Channels;

/// Batch-norm hyper-parameters: `eps` added to the variance, `momentum` of the running
/// statistics (`running = momentum·running + (1 − momentum)·batch`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnParams {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Weight of the old running statistics in their update.
    pub momentum: f32,
}

impl BnParams {
    /// Paddle's defaults, used by every BN of both models: `eps = 1e-5`, `momentum = 0.9`.
    pub const PADDLE: BnParams = BnParams { eps: 1e-5, momentum: 0.9 };

    fn validate(&self) -> Result<()> {
        ensure(
            self.eps >= 0.0 && self.eps.is_finite() && self.momentum >= 0.0 && self.momentum <= 1.0,
            "batch norm: eps must be finite and >= 0, momentum in [0, 1]",
        )
    }
}

/// Per-channel moments of one chunk of rows: `mean[c] = (1/rows) Σ_r x[r][c]`,
/// `m2[c] = Σ_r (x[r][c] − mean[c])²` (count = `s.rows`). Two passes (mean first, then squared
/// deviations), so no catastrophic cancellation as with a sum of squares. Outputs overwritten.
pub fn bn_partial_moments(isa: Isa, s: &Channels, x: &[f32], mean: &mut [f32], m2: &mut [f32]) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.len())?;
    check_len("mean", mean.len(), s.c)?;
    check_len("m2", m2.len(), s.c)?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => scalar::moments(s, x, mean, m2),
    }
    Ok(())
}

/// Merges a chunk's moments into an accumulator (Chan, Golub & LeVeque):
/// `δ = mean − acc_mean`, `n = acc_count + count`, `acc_mean += δ·count/n`,
/// `acc_m2 += m2 + δ²·acc_count·count/n`; returns `n`. An empty accumulator (`acc_count = 0`)
/// takes the chunk's values. Merge chunks in a fixed order for run-to-run reproducibility.
#[allow(clippy::too_many_arguments)]
pub fn bn_merge_moments(
    isa: Isa,
    acc_count: usize,
    acc_mean: &mut [f32],
    acc_m2: &mut [f32],
    count: usize,
    mean: &[f32],
    m2: &[f32],
) -> Result<usize> {
    let c = acc_mean.len();
    check_len("acc_m2", acc_m2.len(), c)?;
    check_len("mean", mean.len(), c)?;
    check_len("m2", m2.len(), c)?;
    ensure(acc_count + count > 0, "bn_merge_moments: both counts are zero")?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => scalar::merge(acc_count, acc_mean, acc_m2, count, mean, m2),
    }
    Ok(acc_count + count)
}

/// Finishes whole-batch statistics: `σ²_B = m2/count` (biased), `invstd = 1/√(σ²_B + ε)`, and
/// updates `running_mean`/`running_var` with `mean`/`σ²_B` (see the module docs). All slices
/// have one value per channel; `invstd` is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_finish_moments(
    isa: Isa,
    p: BnParams,
    count: usize,
    mean: &[f32],
    m2: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    invstd: &mut [f32],
) -> Result<()> {
    p.validate()?;
    let c = mean.len();
    ensure(count > 0 && c > 0, "bn_finish_moments: zero count or no channels")?;
    check_len("m2", m2.len(), c)?;
    check_len("running_mean", running_mean.len(), c)?;
    check_len("running_var", running_var.len(), c)?;
    check_len("invstd", invstd.len(), c)?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => {
            invstd.copy_from_slice(m2);
            scalar::finish(p, count, mean, invstd, running_mean, running_var);
        }
    }
    Ok(())
}

/// Training normalisation with given statistics `y = γ·(x − μ)·invstd + β` over
/// `x[rows][c]`/`y[rows][c]` (any chunk of rows); `gamma`, `beta`, `mean`, `invstd` per channel.
#[allow(clippy::too_many_arguments)]
pub fn bn_train_apply(
    isa: Isa,
    s: &Channels,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    y: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.len())?;
    check_len("gamma", gamma.len(), s.c)?;
    check_len("beta", beta.len(), s.c)?;
    check_len("mean", mean.len(), s.c)?;
    check_len("invstd", invstd.len(), s.c)?;
    check_len("y", y.len(), s.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => scalar::apply(s.c, x, gamma, beta, mean, invstd, y),
    }
    Ok(())
}

/// Training forward `y = γ·(x − μ_B)·invstd + β`, `invstd = 1/√(σ²_B + ε)` over the whole batch
/// `x[rows][c]`; saves `μ_B` and `invstd` (per channel) for [`bn_bwd`] and updates the running
/// statistics (biased variance, see the module docs). `y`, `save_*` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_train_fwd(
    isa: Isa,
    s: &Channels,
    p: BnParams,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) -> Result<()> {
    s.validate()?;
    p.validate()?;
    check_len("x", x.len(), s.len())?;
    check_len("gamma", gamma.len(), s.c)?;
    check_len("beta", beta.len(), s.c)?;
    check_len("running_mean", running_mean.len(), s.c)?;
    check_len("running_var", running_var.len(), s.c)?;
    check_len("y", y.len(), s.len())?;
    check_len("save_mean", save_mean.len(), s.c)?;
    check_len("save_invstd", save_invstd.len(), s.c)?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => {
            // `save_invstd` holds M2 until `finish` turns it into invstd.
            scalar::moments(s, x, save_mean, save_invstd);
            scalar::finish(p, s.rows, save_mean, save_invstd, running_mean, running_var);
            scalar::apply(s.c, x, gamma, beta, save_mean, save_invstd, y);
        }
    }
    Ok(())
}

/// Per-channel backward sums of one chunk of rows: `sum_dy[c] = Σ_r dy[r][c]`,
/// `sum_dy_xhat[c] = Σ_r dy[r][c]·x̂[r][c]` with `x̂ = (x − μ)·invstd`. Over the whole batch
/// these are `dβ` and `dγ`. Outputs overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd_partial_sums(
    isa: Isa,
    s: &Channels,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    sum_dy: &mut [f32],
    sum_dy_xhat: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.len())?;
    check_len("dy", dy.len(), s.len())?;
    check_len("mean", mean.len(), s.c)?;
    check_len("invstd", invstd.len(), s.c)?;
    check_len("sum_dy", sum_dy.len(), s.c)?;
    check_len("sum_dy_xhat", sum_dy_xhat.len(), s.c)?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => {
            scalar::bwd_sums(s.c, x, dy, mean, invstd, sum_dy, sum_dy_xhat)
        }
    }
    Ok(())
}

/// Input gradient from whole-batch sums:
/// `dx = γ·invstd·(dy − sum_dy/count − x̂·sum_dy_xhat/count)`, `x̂ = (x − μ)·invstd`, over a chunk
/// `x[rows][c]`, where `count` is the WHOLE batch's row count (not the chunk's). `dx` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd_apply(
    isa: Isa,
    s: &Channels,
    count: usize,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    sum_dy: &[f32],
    sum_dy_xhat: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    s.validate()?;
    ensure(count >= s.rows, "bn_bwd_apply: count smaller than the chunk's rows")?;
    check_len("x", x.len(), s.len())?;
    check_len("dy", dy.len(), s.len())?;
    check_len("gamma", gamma.len(), s.c)?;
    check_len("mean", mean.len(), s.c)?;
    check_len("invstd", invstd.len(), s.c)?;
    check_len("sum_dy", sum_dy.len(), s.c)?;
    check_len("sum_dy_xhat", sum_dy_xhat.len(), s.c)?;
    check_len("dx", dx.len(), s.len())?;
    let sums = scalar::BwdSums { count, gamma, mean, invstd, sum_dy, sum_dy_xhat };
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => scalar::bwd_apply(s.c, &sums, x, dy, dx),
    }
    Ok(())
}

/// Training backward over the whole batch: `dx = γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂))`,
/// `dγ = Σ dy·x̂`, `dβ = Σ dy` (means and sums over rows, per channel), with the `save_mean`,
/// `save_invstd` of [`bn_train_fwd`]. `dx`, `dgamma`, `dbeta` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd(
    isa: Isa,
    s: &Channels,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<()> {
    s.validate()?;
    check_len("x", x.len(), s.len())?;
    check_len("dy", dy.len(), s.len())?;
    check_len("gamma", gamma.len(), s.c)?;
    check_len("save_mean", save_mean.len(), s.c)?;
    check_len("save_invstd", save_invstd.len(), s.c)?;
    check_len("dx", dx.len(), s.len())?;
    check_len("dgamma", dgamma.len(), s.c)?;
    check_len("dbeta", dbeta.len(), s.c)?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Neon => {
            scalar::bwd_sums(s.c, x, dy, save_mean, save_invstd, dbeta, dgamma);
            let sums = scalar::BwdSums {
                count: s.rows,
                gamma,
                mean: save_mean,
                invstd: save_invstd,
                sum_dy: dbeta,
                sum_dy_xhat: dgamma,
            };
            scalar::bwd_apply(s.c, &sums, x, dy, dx);
        }
    }
    Ok(())
}

/// Inference `y = act(γ·(x − μ)/√(σ² + ε) + β)` with stored statistics over `x[rows][c]`;
/// `gamma`, `beta`, `mean`, `var` per channel, stored as f32 or f16. `y` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_infer_fwd<W: Elem>(
    isa: Isa,
    s: &Channels,
    eps: f32,
    x: &[f32],
    gamma: &[W],
    beta: &[W],
    mean: &[W],
    var: &[W],
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    s.validate()?;
    ensure(eps >= 0.0 && eps.is_finite(), "bn_infer_fwd: eps must be finite and >= 0")?;
    check_len("x", x.len(), s.len())?;
    check_len("gamma", gamma.len(), s.c)?;
    check_len("beta", beta.len(), s.c)?;
    check_len("mean", mean.len(), s.c)?;
    check_len("var", var.len(), s.c)?;
    check_len("y", y.len(), s.len())?;
    let stats = scalar::Stored { eps, gamma, beta, mean, var };
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 exists only when the CPU has
        // AVX2 (isa.rs).
        IsaKind::Avx2 => unsafe { avx2::infer(s.c, &stats, x, act, y) },
        _ => scalar::infer(s.c, &stats, x, act, y),
    }
    Ok(())
}

/// Folds an inference BN into the conv before it, whose weight is `w[k][c_out]` (HWIO, IO, or
/// depthwise HWC with `k = 9`; `k = w.len()/c_out`): `w' = w·γ/√(σ² + ε)`,
/// `b' = β − μ·γ/√(σ² + ε)`, so `conv(x; w') + b' = BN(conv(x; w))`. `w_out` (same length as
/// `w`) and `b_out[c_out]` are separate outputs, overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_fold(
    c_out: usize,
    eps: f32,
    w: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    w_out: &mut [f32],
    b_out: &mut [f32],
) -> Result<()> {
    ensure(
        c_out > 0 && !w.is_empty() && w.len() % c_out == 0,
        "bn_fold: w.len() must be a positive multiple of c_out",
    )?;
    ensure(eps >= 0.0 && eps.is_finite(), "bn_fold: eps must be finite and >= 0")?;
    check_len("gamma", gamma.len(), c_out)?;
    check_len("beta", beta.len(), c_out)?;
    check_len("mean", mean.len(), c_out)?;
    check_len("var", var.len(), c_out)?;
    check_len("w_out", w_out.len(), w.len())?;
    check_len("b_out", b_out.len(), c_out)?;
    for co in 0..c_out {
        let scale = gamma[co] / libm::sqrtf(var[co] + eps);
        b_out[co] = beta[co] - mean[co] * scale;
        for (o, &v) in w_out.iter_mut().skip(co).step_by(c_out).zip(w.iter().skip(co).step_by(c_out)) {
            *o = v * scale;
        }
    }
    Ok(())
}

/// AVX2 inference BN (a frozen teacher runs it on every activation of every step).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::scalar::{Block, Stored, BLOCK};
    use crate::act::Act;
    use crate::elem::Elem;
    use core::arch::x86_64::*;

    /// [`super::scalar::infer`] 8 channels per instruction: the same subtract, multiply, add
    /// (no fused multiply-add) and ReLU as `max(v, 0)` (0 for NaN, as `Act::apply`), so the
    /// result is bit-identical.
    ///
    /// # Safety
    /// `x` and `y` hold whole rows of `c` channels, the stored statistics `c` each; the CPU
    /// supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn infer<W: Elem>(c: usize, st: &Stored<'_, W>, x: &[f32], act: Act, y: &mut [f32]) {
        let relu = act == Act::Relu;
        let mut c0 = 0;
        while c0 < c {
            let cb = BLOCK.min(c - c0);
            let k = Block::of(st, c0, cb);
            let full = cb / 8 * 8;
            for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                let (yb, xb) = (&mut yr[c0..c0 + cb], &xr[c0..c0 + cb]);
                let mut i = 0;
                while i < full {
                    // SAFETY: i + 8 ≤ cb: inside the row block and the constant arrays.
                    unsafe {
                        let v =
                            _mm256_sub_ps(_mm256_loadu_ps(xb.as_ptr().add(i)), _mm256_loadu_ps(k.mean.as_ptr().add(i)));
                        let v = _mm256_add_ps(
                            _mm256_mul_ps(v, _mm256_loadu_ps(k.scale.as_ptr().add(i))),
                            _mm256_loadu_ps(k.beta.as_ptr().add(i)),
                        );
                        let v = if relu { _mm256_max_ps(v, _mm256_setzero_ps()) } else { v };
                        _mm256_storeu_ps(yb.as_mut_ptr().add(i), v);
                    }
                    i += 8;
                }
                for i in full..cb {
                    yb[i] = act.apply((xb[i] - k.mean[i]) * k.scale[i] + k.beta[i]);
                }
            }
            c0 += cb;
        }
    }
}

/// Portable paths (the specification). Lengths are checked by the callers; every loop walks
/// rows of `c` channels in memory order.
mod scalar {
    use super::BnParams;
    use crate::act::Act;
    use crate::elem::Elem;
    use crate::shape::Channels;

    /// Channels per block of precomputed inference scales (stack arrays, no scratch).
    pub(super) const BLOCK: usize = 32;

    pub(super) fn moments(s: &Channels, x: &[f32], mean: &mut [f32], m2: &mut [f32]) {
        mean.fill(0.0);
        for row in x.chunks_exact(s.c) {
            for (acc, &v) in mean.iter_mut().zip(row) {
                *acc += v;
            }
        }
        let inv = 1.0 / s.rows as f32;
        for m in mean.iter_mut() {
            *m *= inv;
        }
        m2.fill(0.0);
        for row in x.chunks_exact(s.c) {
            for ((acc, &v), &m) in m2.iter_mut().zip(row).zip(mean.iter()) {
                let d = v - m;
                *acc += d * d;
            }
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

    pub(super) fn apply(c: usize, x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], invstd: &[f32], y: &mut [f32]) {
        for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for ch in 0..c {
                yr[ch] = (xr[ch] - mean[ch]) * (gamma[ch] * invstd[ch]) + beta[ch];
            }
        }
    }

    pub(super) fn bwd_sums(
        c: usize,
        x: &[f32],
        dy: &[f32],
        mean: &[f32],
        invstd: &[f32],
        sum_dy: &mut [f32],
        sum_dy_xhat: &mut [f32],
    ) {
        sum_dy.fill(0.0);
        sum_dy_xhat.fill(0.0);
        for (xr, dyr) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
            for ch in 0..c {
                let xhat = (xr[ch] - mean[ch]) * invstd[ch];
                sum_dy[ch] += dyr[ch];
                sum_dy_xhat[ch] += dyr[ch] * xhat;
            }
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

    pub(super) fn bwd_apply(c: usize, b: &BwdSums<'_>, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let inv_n = 1.0 / b.count as f32;
        for ((dxr, xr), dyr) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
            for ch in 0..c {
                let xhat = (xr[ch] - b.mean[ch]) * b.invstd[ch];
                let centred = dyr[ch] - b.sum_dy[ch] * inv_n - xhat * (b.sum_dy_xhat[ch] * inv_n);
                dxr[ch] = b.gamma[ch] * b.invstd[ch] * centred;
            }
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

    /// Blocks of [`BLOCK`] channels: widen and precompute `γ/√(σ²+ε)` once per channel, then
    /// sweep the rows: `y = act((x − μ)·scale + β)`.
    pub(super) fn infer<W: Elem>(c: usize, st: &Stored<'_, W>, x: &[f32], act: Act, y: &mut [f32]) {
        let mut c0 = 0;
        while c0 < c {
            let cb = BLOCK.min(c - c0);
            let k = Block::of(st, c0, cb);
            for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                let (yb, xb) = (&mut yr[c0..c0 + cb], &xr[c0..c0 + cb]);
                for i in 0..cb {
                    yb[i] = act.apply((xb[i] - k.mean[i]) * k.scale[i] + k.beta[i]);
                }
            }
            c0 += cb;
        }
    }
}
