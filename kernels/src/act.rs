//! Activations and elementwise ops: the fused-epilogue [`Act`], ReLU forward/backward, residual
//! add. All elementwise, so layout-agnostic.

/// An activation fused into a kernel's output epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Act {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
}

impl Act {
    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => {
                if v > 0.0 {
                    v
                } else {
                    0.0
                }
            }
        }
    }
}

use crate::error::{check_len, Result};
use crate::isa::{Isa, IsaKind};

/// ReLU forward `y = max(x, 0)`, elementwise over any layout; `y.len() == x.len()`.
pub fn relu_fwd(isa: Isa, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("y", y.len(), x.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::relu_fwd(x, y),
    }
    Ok(())
}

/// ReLU in place `x = max(x, 0)` (what inference runs after a BN folded into a conv).
pub fn relu_inplace(isa: Isa, x: &mut [f32]) {
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::relu_inplace(x),
    }
}

/// ReLU backward `dx = dy·[y > 0]`, from the ReLU *output* `y` (so it also works after
/// [`relu_inplace`], whose input is gone); all slices the same length.
pub fn relu_bwd(isa: Isa, y: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len("dy", dy.len(), y.len())?;
    check_len("dx", dx.len(), y.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::relu_bwd(y, dy, dx),
    }
    Ok(())
}

/// ReLU backward in place `dy = dy·[y > 0]`, from the ReLU output `y`.
pub fn relu_bwd_inplace(isa: Isa, y: &[f32], dy: &mut [f32]) -> Result<()> {
    check_len("dy", dy.len(), y.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::relu_bwd_inplace(y, dy),
    }
    Ok(())
}

/// Residual add `y = a + b`, elementwise; all slices the same length. Its backward is the
/// identity on both inputs.
pub fn add(isa: Isa, a: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("b", b.len(), a.len())?;
    check_len("y", y.len(), a.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::add(a, b, y),
    }
    Ok(())
}

/// Accumulating add `a += b`, elementwise (also merges per-chunk partial sums).
pub fn add_inplace(isa: Isa, a: &mut [f32], b: &[f32]) -> Result<()> {
    check_len("b", b.len(), a.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::add_inplace(a, b),
    }
    Ok(())
}

/// Residual add then ReLU `y = max(a + b, 0)` in one pass (bit-identical to [`add`] then
/// [`relu_inplace`]); all slices the same length.
pub fn add_relu(isa: Isa, a: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("b", b.len(), a.len())?;
    check_len("y", y.len(), a.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::add_relu(a, b, y),
    }
    Ok(())
}

/// Residual add then ReLU in place `a = max(a + b, 0)` (the end of a ResNet block); the
/// backward is [`relu_bwd`] on the result, then the identity on both inputs.
pub fn add_relu_inplace(isa: Isa, a: &mut [f32], b: &[f32]) -> Result<()> {
    check_len("b", b.len(), a.len())?;
    match isa.kind() {
        IsaKind::Scalar | IsaKind::Avx2 | IsaKind::Avx512 | IsaKind::Neon => scalar::add_relu_inplace(a, b),
    }
    Ok(())
}

/// Portable paths (the specification). Lengths are checked by the callers.
mod scalar {
    use super::Act;

    pub(super) fn relu_fwd(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = Act::Relu.apply(x);
        }
    }

    pub(super) fn relu_inplace(x: &mut [f32]) {
        for v in x {
            *v = Act::Relu.apply(*v);
        }
    }

    pub(super) fn relu_bwd(y: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
            *dx = if y > 0.0 { dy } else { 0.0 };
        }
    }

    pub(super) fn relu_bwd_inplace(y: &[f32], dy: &mut [f32]) {
        for (dy, &y) in dy.iter_mut().zip(y) {
            if y <= 0.0 || y.is_nan() {
                *dy = 0.0;
            }
        }
    }

    pub(super) fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a + b;
        }
    }

    pub(super) fn add_inplace(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a += b;
        }
    }

    pub(super) fn add_relu(a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = Act::Relu.apply(a + b);
        }
    }

    pub(super) fn add_relu_inplace(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a = Act::Relu.apply(*a + b);
        }
    }
}
