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
//!
//! **Sums over many rows.** Within a chunk, each per-channel sum over rows runs in blocks of
//! 128 rows, each summed from zero and then added to the total, so that its rounding error
//! grows with `128 + rows/128` rather than `rows` (a batch of 64 at 32x32 is 65,536 rows;
//! see `scalar::ROWS`). Every path sums in that order: the results stay bit-identical.

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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 or Avx512 exists only when the CPU has
        // AVX2 (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::moments(s, x, mean, m2) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for Avx2; an `Isa` of kind Neon exists only on aarch64 CPUs with NEON.
        IsaKind::Neon => unsafe { neon::moments(s, x, mean, m2) },
        _ => scalar::moments(s, x, mean, m2),
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
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            scalar::merge(acc_count, acc_mean, acc_m2, count, mean, m2)
        }
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
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            invstd.copy_from_slice(m2);
            scalar::finish(p, count, mean, invstd, running_mean, running_var);
        }
    }
    Ok(())
}

/// Training normalisation with given statistics `y = act(γ·(x − μ)·invstd + β)` over
/// `x[rows][c]`/`y[rows][c]` (any chunk of rows); `gamma`, `beta`, `mean`, `invstd` per channel.
/// With [`Act::Relu`] it is the BN and the ReLU after it in one pass (bit-identical to the two).
#[allow(clippy::too_many_arguments)]
pub fn bn_train_apply(
    isa: Isa,
    s: &Channels,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    act: Act,
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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `bn_partial_moments`.
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::apply(s.c, x, gamma, beta, mean, invstd, act, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for Avx2; an `Isa` of kind Neon exists only on aarch64 CPUs with NEON.
        IsaKind::Neon => unsafe { neon::apply(s.c, x, gamma, beta, mean, invstd, act, y) },
        _ => scalar::apply(s.c, x, gamma, beta, mean, invstd, act, y),
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
    // `save_invstd` holds M2 until `finish` turns it into invstd.
    bn_partial_moments(isa, s, x, save_mean, save_invstd)?;
    scalar::finish(p, s.rows, save_mean, save_invstd, running_mean, running_var);
    bn_train_apply(isa, s, x, gamma, beta, save_mean, save_invstd, Act::None, y)
}

/// The ReLU right after a training batch norm, for a backward that runs through both
/// ([`bn_bwd_partial_sums`], [`bn_bwd_apply`]): `dy` is then the ReLU's output gradient, gated
/// by `[γ·(x − μ)·invstd + β > 0]` — the batch norm's output recomputed from `x` with exactly
/// the operations of [`bn_train_apply`], so, given the `γ`, `β`, `μ`, `invstd` the forward
/// used, the same gate as the ReLU's output `> 0` without reading that output. Bit-identical
/// to running [`crate::act::relu_bwd`] first.
#[derive(Clone, Copy, Debug)]
pub struct ReluAfter<'a> {
    /// The batch norm's scale `γ` (per channel).
    pub gamma: &'a [f32],
    /// Its offset `β` (per channel).
    pub beta: &'a [f32],
}

/// Per-channel backward sums of one chunk of rows: `sum_dy[c] = Σ_r g[r][c]`,
/// `sum_dy_xhat[c] = Σ_r g[r][c]·x̂[r][c]` with `x̂ = (x − μ)·invstd` and `g = dy`, or `dy`
/// gated by a ReLU after the batch norm ([`ReluAfter`]). Over the whole batch these are `dβ`
/// and `dγ`. Outputs overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd_partial_sums(
    isa: Isa,
    s: &Channels,
    x: &[f32],
    dy: &[f32],
    relu: Option<ReluAfter<'_>>,
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
    if let Some(r) = relu {
        check_len("relu.gamma", r.gamma.len(), s.c)?;
        check_len("relu.beta", r.beta.len(), s.c)?;
    }
    let relu = relu.as_ref();
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `bn_partial_moments`.
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe {
            avx2::bwd_sums(s.c, x, dy, relu, mean, invstd, sum_dy, sum_dy_xhat)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for Avx2; an `Isa` of kind Neon exists only on aarch64 CPUs with NEON.
        IsaKind::Neon => unsafe { neon::bwd_sums(s.c, x, dy, relu, mean, invstd, sum_dy, sum_dy_xhat) },
        _ => scalar::bwd_sums(s.c, x, dy, relu, mean, invstd, sum_dy, sum_dy_xhat),
    }
    Ok(())
}

/// Input gradient from whole-batch sums:
/// `dx = γ·invstd·(g − sum_dy/count − x̂·sum_dy_xhat/count)`, `x̂ = (x − μ)·invstd`, over a chunk
/// `x[rows][c]`, where `count` is the WHOLE batch's row count (not the chunk's) and `g` is `dy`
/// gated by `relu` as in [`bn_bwd_partial_sums`]. `dx` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd_apply(
    isa: Isa,
    s: &Channels,
    count: usize,
    x: &[f32],
    dy: &[f32],
    relu: Option<ReluAfter<'_>>,
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
    if let Some(r) = relu {
        check_len("relu.gamma", r.gamma.len(), s.c)?;
        check_len("relu.beta", r.beta.len(), s.c)?;
    }
    let sums = scalar::BwdSums { count, gamma, mean, invstd, sum_dy, sum_dy_xhat };
    let relu = relu.as_ref();
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `bn_partial_moments`.
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::bwd_apply(s.c, &sums, x, dy, relu, dx) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for Avx2; an `Isa` of kind Neon exists only on aarch64 CPUs with NEON.
        IsaKind::Neon => unsafe { neon::bwd_apply(s.c, &sums, x, dy, relu, dx) },
        _ => scalar::bwd_apply(s.c, &sums, x, dy, relu, dx),
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
    bn_bwd_partial_sums(isa, s, x, dy, None, save_mean, save_invstd, dbeta, dgamma)?;
    bn_bwd_apply(isa, s, s.rows, x, dy, None, gamma, save_mean, save_invstd, dbeta, dgamma, dx)
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
        // SAFETY: lengths checked above; an `Isa` of kind Avx2 or Avx512 exists only when the CPU has
        // AVX2 (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::infer(s.c, &stats, x, act, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for Avx2; an `Isa` of kind Neon exists only on aarch64 CPUs with NEON.
        IsaKind::Neon => unsafe { neon::infer(s.c, &stats, x, act, y) },
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
        c_out > 0 && !w.is_empty() && w.len().is_multiple_of(c_out),
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

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
