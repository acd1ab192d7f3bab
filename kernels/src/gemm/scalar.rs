//! Portable GEMM: the specification every SIMD path is tested against, and what a Cortex-M4F
//! runs.
//!
//! Each output is one dot product accumulated in f32 in k order, `acc += a·b` (never fused:
//! Rust does not contract), then `α·acc + β·C` (`α·acc` alone when `β = 0`). The loops are
//! register-blocked 4×4 (16 accumulators, 4 A and 4 B values live per k step: 24 of the
//! M4F's 32 single-precision registers) with 4×1, 1×4 and 1×1 edge tiles; blocking does not
//! change any output's summation order. No packing and no stack buffers: f16 operands are
//! widened as they are loaded, once per 4 uses.

use super::{GemmShape, Trans};
use crate::elem::Elem;

/// Element strides `(rs, cs)` of a stored matrix: `op(X)[r][c] = x[r·rs + c·cs]`.
#[inline(always)]
const fn strides(t: Trans, ld: usize) -> (usize, usize) {
    match t {
        Trans::N => (ld, 1),
        Trans::T => (1, ld),
    }
}

/// The operands of one call, viewed through their strides.
struct View<'a, A, B> {
    s: &'a GemmShape,
    a: &'a [A],
    b: &'a [B],
    /// `op(A)[i][p] = a[i·ars + p·acs]`.
    ars: usize,
    acs: usize,
    /// `op(B)[p][j] = b[p·brs + j·bcs]`.
    brs: usize,
    bcs: usize,
}

impl<A: Elem, B: Elem> View<'_, A, B> {
    /// The `R×C` tile of `C` at `(i, j)`: `C = α·op(A)·op(B) + β·C`.
    #[inline(always)]
    fn tile<const R: usize, const C: usize>(&self, i: usize, j: usize, alpha: f32, beta: f32, c: &mut [f32]) {
        let mut acc = [[0.0f32; C]; R];
        for p in 0..self.s.k {
            let mut av = [0.0f32; R];
            for (r, v) in av.iter_mut().enumerate() {
                *v = self.a[(i + r) * self.ars + p * self.acs].to_f32();
            }
            let mut bv = [0.0f32; C];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = self.b[p * self.brs + (j + q) * self.bcs].to_f32();
            }
            for (row, &x) in acc.iter_mut().zip(&av) {
                for (o, &y) in row.iter_mut().zip(&bv) {
                    *o += x * y;
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let dst = &mut c[(i + r) * self.s.ldc + j..][..C];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = if beta == 0.0 { alpha * v } else { alpha * v + beta * *d };
            }
        }
    }
}

/// `C = α·op(A)·op(B) + β·C` (see the module docs). Lengths are checked by the caller.
pub(super) fn gemm<A: Elem, B: Elem>(s: &GemmShape, alpha: f32, a: &[A], b: &[B], beta: f32, c: &mut [f32]) {
    let (ars, acs) = strides(s.ta, s.lda);
    let (brs, bcs) = strides(s.tb, s.ldb);
    let v = View { s, a, b, ars, acs, brs, bcs };
    let (m4, n4) = (s.m - s.m % 4, s.n - s.n % 4);
    for i in (0..m4).step_by(4) {
        for j in (0..n4).step_by(4) {
            v.tile::<4, 4>(i, j, alpha, beta, c);
        }
        for j in n4..s.n {
            v.tile::<4, 1>(i, j, alpha, beta, c);
        }
    }
    for i in m4..s.m {
        for j in (0..n4).step_by(4) {
            v.tile::<1, 4>(i, j, alpha, beta, c);
        }
        for j in n4..s.n {
            v.tile::<1, 1>(i, j, alpha, beta, c);
        }
    }
}
