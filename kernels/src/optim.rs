//! Optimizers: SGD with momentum and L2 weight decay (Paddle's `Momentum` with an `L2Decay`
//! regularizer), in place over flat parameter slices.

use crate::error::{check_len, ensure, Result};
use crate::isa::{Isa, IsaKind};

/// Momentum SGD hyper-parameters (`wd = 0` is the tutorial's plain `Momentum(lr 0.01, 0.9)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Momentum {
    /// Learning rate.
    pub lr: f32,
    /// Momentum `μ`.
    pub mu: f32,
    /// L2 weight decay, added to the gradient as `wd·p`.
    pub wd: f32,
}

/// One momentum step `v = μ·v + g + wd·p; p −= lr·v`, elementwise over `p`, `g`, `v` (same
/// length); `p` and `v` updated in place. Returns whether every `g` and every updated `v` and
/// `p` is finite, found in the same pass (a trainer's divergence check then need not read the
/// gradients, weights and momentum again: 3 × 94 MB per ResNet50 step).
pub fn sgd_momentum(isa: Isa, h: Momentum, p: &mut [f32], g: &[f32], v: &mut [f32]) -> Result<bool> {
    check_args(h, p, g, v)?;
    Ok(match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::sgd_momentum(h, p, g, v),
    })
}

/// Whether [`sgd_momentum`] with these arguments would find every `g` and every updated `v`
/// and `p` finite, computed by the same arithmetic without writing anything: a caller with no
/// earlier state to fall back to (on-device fine-tuning) checks first and updates only then.
pub fn sgd_momentum_stays_finite(h: Momentum, p: &[f32], g: &[f32], v: &[f32]) -> Result<bool> {
    check_args(h, p, g, v)?;
    Ok(p.iter().zip(g).zip(v).fold(true, |finite, ((&p, &g), &v)| finite & scalar::next(h, p, g, v).2))
}

/// Both updates' argument checks: `g` and `v` as long as `p`, finite hyper-parameters.
fn check_args(h: Momentum, p: &[f32], g: &[f32], v: &[f32]) -> Result<()> {
    check_len("g", g.len(), p.len())?;
    check_len("v", v.len(), p.len())?;
    ensure(h.lr.is_finite() && h.mu.is_finite() && h.wd.is_finite(), "sgd_momentum: hyper-parameters must be finite")
}

/// Portable path (the specification). Lengths are checked by the caller.
mod scalar {
    use super::Momentum;

    /// `(v', p', finite)` for one element: `v' = μ·v + g + wd·p`, `p' = p − lr·v'`, and
    /// whether `g`, `v'` and `p'` are all finite.
    #[inline(always)]
    pub(super) fn next(h: Momentum, p: f32, g: f32, v: f32) -> (f32, f32, bool) {
        let v = h.mu * v + g + h.wd * p;
        let p = p - h.lr * v;
        (v, p, g.is_finite() & v.is_finite() & p.is_finite())
    }

    pub(super) fn sgd_momentum(h: Momentum, p: &mut [f32], g: &[f32], v: &mut [f32]) -> bool {
        let mut finite = true;
        for ((p, &g), v) in p.iter_mut().zip(g).zip(v) {
            let ok;
            (*v, *p, ok) = next(h, *p, g, *v);
            // No early exit: the loop stays one vectorised pass.
            finite &= ok;
        }
        finite
    }
}
