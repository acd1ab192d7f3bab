//! Portable GEMM: the specification every SIMD path is tested against.

use super::{GemmShape, Trans};
use crate::elem::Elem;

#[inline(always)]
fn at<E: Elem>(x: &[E], t: Trans, ld: usize, r: usize, c: usize) -> f32 {
    match t {
        Trans::N => x[r * ld + c].to_f32(),
        Trans::T => x[c * ld + r].to_f32(),
    }
}

/// `C = α·op(A)·op(B) + β·C`, one dot product per output, f32 accumulation in k order.
/// Lengths are checked by the caller.
pub(super) fn gemm<A: Elem, B: Elem>(s: &GemmShape, alpha: f32, a: &[A], b: &[B], beta: f32, c: &mut [f32]) {
    for i in 0..s.m {
        for j in 0..s.n {
            let mut acc = 0.0f32;
            for p in 0..s.k {
                acc += at(a, s.ta, s.lda, i, p) * at(b, s.tb, s.ldb, p, j);
            }
            let dst = &mut c[i * s.ldc + j];
            *dst = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *dst };
        }
    }
}
