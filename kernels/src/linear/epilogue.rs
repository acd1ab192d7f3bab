//! The output epilogue shared by the dense kernels (linear, pointwise and KxK conv):
//! `y[r][j] = act(y[r][j] + b[j])` over rows of `c_out`, with an f16 bias widened once per
//! chunk of columns (by the ISA's conversion path) rather than once per element; and
//! [`gemm_bias_act`], the GEMM followed by it (fused into the GEMM's tiles on a Cortex-M4F).

use crate::act::Act;
use crate::convert;
use crate::elem::{f16, Elem};
use crate::error::Result;
use crate::gemm::{gemm, GemmShape};
use crate::isa::Isa;
use core::any::TypeId;

/// Bias columns widened per chunk.
const CHUNK: usize = 256;

/// `dst[i] = f32(src[i])` for `i < src.len() ≤ dst.len()`.
fn widen<W: Elem>(isa: Isa, src: &[W], dst: &mut [f32]) {
    let dst = &mut dst[..src.len()];
    if TypeId::of::<W>() == TypeId::of::<f16>() {
        // SAFETY: `W` is `f16`, so the pointer, length and lifetime are unchanged.
        let h = unsafe { core::slice::from_raw_parts(src.as_ptr() as *const f16, src.len()) };
        // Lengths are equal by construction, so this cannot fail.
        let _ = convert::f16_to_f32(isa, h, dst);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

/// `y[r][j] = act(y[r][j] + bias[j])` (no bias: `act(y)`) over the rows of `c_out` in `y`;
/// `bias.len() == c_out` and `y.len()` a multiple of `c_out` (checked by the callers).
pub(crate) fn bias_act<W: Elem>(isa: Isa, c_out: usize, bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    let Some(bias) = bias else {
        if act != Act::None {
            y.iter_mut().for_each(|v| *v = act.apply(*v));
        }
        return;
    };
    let mut bt = [0.0f32; CHUNK];
    for j0 in (0..c_out).step_by(CHUNK) {
        let cols = CHUNK.min(c_out - j0);
        widen(isa, &bias[j0..j0 + cols], &mut bt);
        let bt = &bt[..cols];
        for row in y.chunks_exact_mut(c_out) {
            let row = &mut row[j0..j0 + cols];
            match act {
                Act::None => row.iter_mut().zip(bt).for_each(|(v, b)| *v += b),
                Act::Relu => row.iter_mut().zip(bt).for_each(|(v, b)| *v = Act::Relu.apply(*v + b)),
            }
        }
    }
}

/// `y[r][j] = bias[j]` (no bias: 0) over the rows of `c_out` in `y` (lengths as for
/// [`bias_act`]): the starting C of a product that adds into it.
pub(crate) fn bias_rows<W: Elem>(isa: Isa, c_out: usize, bias: Option<&[W]>, y: &mut [f32]) {
    let Some(bias) = bias else {
        y.fill(0.0);
        return;
    };
    let mut bt = [0.0f32; CHUNK];
    for j0 in (0..c_out).step_by(CHUNK) {
        let cols = CHUNK.min(c_out - j0);
        widen(isa, &bias[j0..j0 + cols], &mut bt);
        for row in y.chunks_exact_mut(c_out) {
            row[j0..j0 + cols].copy_from_slice(&bt[..cols]);
        }
    }
}

/// `y = act(A·B + bias)`: [`gemm`] (`α = 1`, `β = 0`) then [`bias_act`]; `s` is untransposed
/// with `ldc = n` and `y` holds whole rows of `n`. On a Cortex-M4F the scalar path does both
/// in one pass (bias and ReLU on the accumulators, the same bits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bias_act<W: Elem>(
    isa: Isa,
    s: &GemmShape,
    a: &[f32],
    b: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> Result<()> {
    #[cfg(tinykd_m4f)]
    if crate::gemm::m4::gemm_bias_act(isa, s, a, b, bias, act, y) {
        return Ok(());
    }
    gemm(isa, s, 1.0, a, b, 0.0, y)?;
    bias_act(isa, s.n, bias, act, y);
    Ok(())
}
