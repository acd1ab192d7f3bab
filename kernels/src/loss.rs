//! Losses and metrics: softmax cross-entropy (with its gradient), top-k accuracy, and the
//! distillation losses of PaddleSlim's single-distiller API — `l2`, `fsp`, `soft_label` — with
//! exactly its formulas (teacher arguments first, the teacher side gets no gradient).
//!
//! Every loss returns its value and, when the optional gradient slice is given, overwrites it
//! with `∂L/∂(student input)`.

use crate::error::{check_len, check_scratch, ensure, KernelError, Result};
use crate::gemm::{gemm, GemmShape};
use crate::isa::{Isa, IsaKind};
use crate::shape::{Fsp, Logits};

/// Softmax cross-entropy averaged over the batch
/// `L = (1/n) Σ_n [log Σ_k exp(z[n][k]) − z[n][label_n]]`, computed with log-sum-exp (the max is
/// subtracted first); `dlogits = (softmax(z) − onehot(label)) / n` when given (overwritten).
/// `logits[n][classes]`, `labels[n]`; a label `>= classes` is `KernelError::Shape`.
pub fn softmax_ce(isa: Isa, s: &Logits, logits: &[f32], labels: &[u32], dlogits: Option<&mut [f32]>) -> Result<f32> {
    s.validate()?;
    check_len("logits", logits.len(), s.len())?;
    check_len("labels", labels.len(), s.n)?;
    if let Some(d) = &dlogits {
        check_len("dlogits", d.len(), s.len())?;
    }
    check_labels(s, labels)?;
    Ok(match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            scalar::softmax_ce(s, logits, labels, dlogits)
        }
    })
}

/// Number of rows whose label is among the `k` highest logits. Ties are broken
/// deterministically by class index: class `j` ranks ahead of the label `l` iff
/// `z[j] > z[l]`, or `z[j] == z[l]` and `j < l` (a stable descending sort). So with all logits
/// equal, top-k holds classes `0..k`. `k >= 1`; a label `>= classes` is `KernelError::Shape`.
pub fn topk_correct(s: &Logits, logits: &[f32], labels: &[u32], k: usize) -> Result<usize> {
    s.validate()?;
    check_len("logits", logits.len(), s.len())?;
    check_len("labels", labels.len(), s.n)?;
    ensure(k >= 1, "topk_correct: k must be at least 1")?;
    check_labels(s, labels)?;
    let mut correct = 0;
    for (row, &label) in logits.chunks_exact(s.classes).zip(labels) {
        let l = label as usize;
        let zl = row[l];
        let ahead = row.iter().enumerate().filter(|&(j, &z)| z > zl || (z == zl && j < l)).count();
        if ahead < k {
            correct += 1;
        }
    }
    Ok(correct)
}

/// PaddleSlim's `l2_loss(t, s)`: `L = (1/len) Σ (s − t)²` (no ½), teacher `t` first, any layout
/// (both the same); `ds = 2(s − t)/len` when given (overwritten). Empty inputs are an error.
pub fn l2_loss(isa: Isa, t: &[f32], s: &[f32], ds: Option<&mut [f32]>) -> Result<f32> {
    ensure(!s.is_empty(), "l2_loss: empty input")?;
    check_len("t", t.len(), s.len())?;
    if let Some(d) = &ds {
        check_len("ds", d.len(), s.len())?;
    }
    Ok(match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::l2(t, s, ds),
    })
}

/// PaddleSlim's `fsp_loss(t1, t2, s1, s2)`: with the Gram (FSP) matrix
/// `G(x, y)[n][i][j] = (1/hw) Σ_p x[n][p][i]·y[n][p][j]`,
/// `L = (1/(n·c1·c2)) Σ (G(s1, s2) − G(t1, t2))²`. Maps are NHWC viewed as `x[n][hw][c1]`,
/// `y[n][hw][c2]` (`t1`, `s1` like `x`; `t2`, `s2` like `y`). When given, `ds1`/`ds2`
/// (overwritten) are `∂L/∂s1[n][p][i] = Σ_j D[n][i][j]·s2[n][p][j]/hw` and
/// `∂L/∂s2[n][p][j] = Σ_i D[n][i][j]·s1[n][p][i]/hw` with `D = 2(G(s1,s2) − G(t1,t2))/(n·c1·c2)`.
/// `scratch` holds at least `sh.scratch_len()` f32 (its contents are clobbered). The Gram
/// matrices and gradients go through [`crate::gemm::gemm`].
#[allow(clippy::too_many_arguments)]
pub fn fsp_loss(
    isa: Isa,
    sh: &Fsp,
    t1: &[f32],
    t2: &[f32],
    s1: &[f32],
    s2: &[f32],
    ds1: Option<&mut [f32]>,
    ds2: Option<&mut [f32]>,
    scratch: &mut [f32],
) -> Result<f32> {
    sh.validate()?;
    check_len("t1", t1.len(), sh.x_len())?;
    check_len("t2", t2.len(), sh.y_len())?;
    check_len("s1", s1.len(), sh.x_len())?;
    check_len("s2", s2.len(), sh.y_len())?;
    if let Some(d) = &ds1 {
        check_len("ds1", d.len(), sh.x_len())?;
    }
    if let Some(d) = &ds2 {
        check_len("ds2", d.len(), sh.y_len())?;
    }
    check_scratch("scratch", scratch.len(), sh.scratch_len())?;

    let (gs, rest) = scratch.split_at_mut(sh.gram_len());
    let gt = &mut rest[..sh.gram_len()];
    gram(isa, sh, s1, s2, gs)?;
    gram(isa, sh, t1, t2, gt)?;
    let loss = match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::fsp_diff(gs, gt),
    };
    // `gs` now holds D = 2(G_s − G_t)/(n·c1·c2).
    let (xl, yl, gl) = (sh.hw * sh.c1, sh.hw * sh.c2, sh.c1 * sh.c2);
    let inv_hw = 1.0 / sh.hw as f32;
    if let Some(ds1) = ds1 {
        for b in 0..sh.n {
            let g = GemmShape::nt(sh.hw, sh.c1, sh.c2);
            gemm(isa, &g, inv_hw, &s2[b * yl..][..yl], &gs[b * gl..][..gl], 0.0, &mut ds1[b * xl..][..xl])?;
        }
    }
    if let Some(ds2) = ds2 {
        for b in 0..sh.n {
            let g = GemmShape::nn(sh.hw, sh.c2, sh.c1);
            gemm(isa, &g, inv_hw, &s1[b * xl..][..xl], &gs[b * gl..][..gl], 0.0, &mut ds2[b * yl..][..yl])?;
        }
    }
    Ok(loss)
}

/// `out[n][i][j] = (1/hw) Σ_p x[n][p][i]·y[n][p][j]`, one `Xᵀ·Y` GEMM per batch element.
fn gram(isa: Isa, sh: &Fsp, x: &[f32], y: &[f32], out: &mut [f32]) -> Result<()> {
    let (xl, yl, gl) = (sh.hw * sh.c1, sh.hw * sh.c2, sh.c1 * sh.c2);
    let g = GemmShape::tn(sh.c1, sh.c2, sh.hw);
    for b in 0..sh.n {
        gemm(isa, &g, 1.0 / sh.hw as f32, &x[b * xl..][..xl], &y[b * yl..][..yl], 0.0, &mut out[b * gl..][..gl])?;
    }
    Ok(())
}

/// PaddleSlim's `soft_label_loss(t, s, Tt, Ts)`:
/// `L = (1/n) Σ_n [−Σ_k softmax(t/Tt)[n][k] · log softmax(s/Ts)[n][k]]` — averaged over the
/// batch (not over n·classes), with NO `T²` factor; the teacher gets no gradient.
/// `ds = (softmax(s/Ts) − softmax(t/Tt)) / (Ts·n)` when given (overwritten). Both logits
/// `[n][classes]`; temperatures must be positive and finite.
#[allow(clippy::too_many_arguments)]
pub fn soft_label_loss(
    isa: Isa,
    s: &Logits,
    t_logits: &[f32],
    s_logits: &[f32],
    tt: f32,
    ts: f32,
    ds: Option<&mut [f32]>,
) -> Result<f32> {
    s.validate()?;
    check_len("t_logits", t_logits.len(), s.len())?;
    check_len("s_logits", s_logits.len(), s.len())?;
    if let Some(d) = &ds {
        check_len("ds", d.len(), s.len())?;
    }
    ensure(
        tt > 0.0 && ts > 0.0 && tt.is_finite() && ts.is_finite(),
        "soft_label_loss: temperatures must be positive and finite",
    )?;
    Ok(match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => {
            scalar::soft_label(s, t_logits, s_logits, tt, ts, ds)
        }
    })
}

fn check_labels(s: &Logits, labels: &[u32]) -> Result<()> {
    if labels.iter().any(|&l| l as usize >= s.classes) {
        return Err(KernelError::Shape("label out of range (>= classes)"));
    }
    Ok(())
}

/// Portable paths (the specification). Lengths and labels are checked by the callers.
mod scalar {
    use crate::shape::Logits;

    /// The row max `m` of `z·inv_t` and `Σ_k exp(z_k·inv_t − m)`, so that
    /// `logsumexp(z·inv_t) = m + ln(sum)` without overflow.
    fn max_and_sum(row: &[f32], inv_t: f32) -> (f32, f32) {
        let m = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z * inv_t));
        let sum = row.iter().map(|&z| libm::expf(z * inv_t - m)).sum();
        (m, sum)
    }

    pub(super) fn softmax_ce(s: &Logits, logits: &[f32], labels: &[u32], mut d: Option<&mut [f32]>) -> f32 {
        let inv_n = 1.0 / s.n as f32;
        let mut total = 0.0f32;
        for (r, (row, &label)) in logits.chunks_exact(s.classes).zip(labels).enumerate() {
            let (m, sum) = max_and_sum(row, 1.0);
            let lse = m + libm::logf(sum);
            total += lse - row[label as usize];
            if let Some(d) = d.as_deref_mut() {
                let drow = &mut d[r * s.classes..][..s.classes];
                let inv_sum = 1.0 / sum;
                for (k, (g, &z)) in drow.iter_mut().zip(row).enumerate() {
                    let p = libm::expf(z - m) * inv_sum;
                    let onehot = if k == label as usize { 1.0 } else { 0.0 };
                    *g = (p - onehot) * inv_n;
                }
            }
        }
        total * inv_n
    }

    /// Terms per block of a mean of squares: each block is summed in f32 on its own and the
    /// block sums in f64, so that the rounding error grows with the block's length, not the
    /// tensor's. (One f32 sum over FSP's n·c1·c2 terms — 2 M at batch 8 — was 2.8e-3 off the
    /// float64 value, where PyTorch's float32 is 1e-6 off: `scripts/torch_crosscheck.py`.)
    const BLOCK: usize = 256;

    /// The mean of `len` terms from their [`BLOCK`] sums (each in f32), added in f64.
    fn block_mean(len: usize, blocks: impl Iterator<Item = f32>) -> f32 {
        (blocks.map(f64::from).sum::<f64>() / len as f64) as f32
    }

    pub(super) fn l2(t: &[f32], s: &[f32], mut ds: Option<&mut [f32]>) -> f32 {
        let inv = 1.0 / s.len() as f32;
        let blocks = s.chunks(BLOCK).zip(t.chunks(BLOCK)).enumerate().map(|(b, (sb, tb))| {
            let mut part = 0.0f32;
            for (i, (&s, &t)) in sb.iter().zip(tb).enumerate() {
                let d = s - t;
                part += d * d;
                if let Some(ds) = ds.as_deref_mut() {
                    ds[b * BLOCK + i] = 2.0 * d * inv;
                }
            }
            part
        });
        block_mean(s.len(), blocks)
    }

    /// Returns `mean((gs − gt)²)` and leaves `gs = 2(gs − gt)/len`.
    pub(super) fn fsp_diff(gs: &mut [f32], gt: &[f32]) -> f32 {
        let len = gs.len();
        let inv = 1.0 / len as f32;
        let blocks = gs.chunks_mut(BLOCK).zip(gt.chunks(BLOCK)).map(|(sb, tb)| {
            let mut part = 0.0f32;
            for (s, &t) in sb.iter_mut().zip(tb) {
                let d = *s - t;
                part += d * d;
                *s = 2.0 * d * inv;
            }
            part
        });
        block_mean(len, blocks)
    }

    pub(super) fn soft_label(s: &Logits, t: &[f32], z: &[f32], tt: f32, ts: f32, mut ds: Option<&mut [f32]>) -> f32 {
        let (inv_tt, inv_ts) = (1.0 / tt, 1.0 / ts);
        let inv_n = 1.0 / s.n as f32;
        let mut total = 0.0f32;
        for (r, (trow, srow)) in t.chunks_exact(s.classes).zip(z.chunks_exact(s.classes)).enumerate() {
            let (mt, sum_t) = max_and_sum(trow, inv_tt);
            let (ms, sum_s) = max_and_sum(srow, inv_ts);
            let lse_s = ms + libm::logf(sum_s);
            let inv_sum_t = 1.0 / sum_t;
            let mut row_loss = 0.0f32;
            for (k, (&tk, &sk)) in trow.iter().zip(srow).enumerate() {
                let pt = libm::expf(tk * inv_tt - mt) * inv_sum_t;
                let log_ps = sk * inv_ts - lse_s;
                row_loss -= pt * log_ps;
                if let Some(d) = ds.as_deref_mut() {
                    d[r * s.classes + k] = (libm::expf(log_ps) - pt) * inv_ts * inv_n;
                }
            }
            total += row_loss;
        }
        total * inv_n
    }
}
