//! Row-streaming matrix product for few rows: `C[m×n] += A[m×k]·B[k×n]`, with `B` read once,
//! row after row, in address order.
//!
//! At batch 1 the late layers of both models have 1 to 16 output pixels, so their pointwise,
//! KxK and fc products are `m ≤ 16` rows against a weight matrix of up to 9.4 MB that is not in
//! cache. The blocked GEMM packs `B` in 16-column panels, i.e. reads one 64-byte piece from
//! every row in turn, which with rows 4 KiB apart is one page (and TLB miss) per cache line.
//! This path instead walks `B` in its stored order four rows at a time, keeping a `m × NC`
//! block of `C` in L1, so the hardware prefetchers stream the weights at memory bandwidth;
//! f16 weights are widened in registers as they are loaded (half the bytes to stream).
//!
//! Accuracy: each `C[i][j]` is `C₀ + Σ_p A[i][p]·B[p][j]` summed in `p` order with fused
//! multiply-adds, which satisfies the GEMM's dot-product error bound (see [`crate::gemm`]).

use crate::elem::Elem;
use crate::isa::Isa;
#[cfg(target_arch = "x86_64")]
use crate::isa::IsaKind;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// The most rows for which the streaming path is used.
pub(crate) const MAX_ROWS: usize = 16;

/// A product `C[m×n] += A[m×k]·B[k×n]` over raw strided operands: `A[i][p]` at `a[i·lda + p]`,
/// `B[p][j]` at `b[p·n + j]` (dense rows), `C[i][j]` at `c[i·n + j]`.
pub(crate) struct Product<'a, W> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// A, row stride `lda`.
    pub a: &'a [f32],
    /// Row stride of A.
    pub lda: usize,
    /// B, `k×n` dense.
    pub b: &'a [W],
}

/// True when `isa` has a streaming path and `m` rows are few enough for it to beat the
/// blocked GEMM.
pub(crate) fn applies(isa: Isa, m: usize) -> bool {
    m <= MAX_ROWS && isa.kind().has_avx2() && cfg!(target_arch = "x86_64")
}

/// `C = A·B` on the streaming path (the first `m·n` values of `c` are overwritten); `false`
/// (nothing written) as for [`accumulate`].
pub(crate) fn overwrite<W: Elem>(isa: Isa, p: &Product<'_, W>, c: &mut [f32]) -> bool {
    if !applies(isa, p.m) || c.len() < p.m * p.n {
        return false;
    }
    c[..p.m * p.n].fill(0.0);
    accumulate(isa, p, c)
}

/// `C += A·B` on the streaming path. Returns `false` (and does nothing) when
/// [`applies`]`(isa, p.m)` is false or an operand is too short; the caller then uses the GEMM.
pub(crate) fn accumulate<W: Elem>(isa: Isa, p: &Product<'_, W>, c: &mut [f32]) -> bool {
    let fits = p.m > 0
        && p.n > 0
        && p.k > 0
        && p.a.len() >= (p.m - 1) * p.lda + p.k
        && p.lda >= p.k
        && p.b.len() >= p.k * p.n
        && c.len() >= p.m * p.n;
    if !fits || !applies(isa, p.m) {
        return false;
    }
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 => {
            // SAFETY: operand lengths checked above; an `Isa` of kind Avx2 or Avx512 exists only
            // when the CPU has AVX2+FMA+F16C (isa.rs).
            unsafe { avx2::accumulate(p, c) };
            true
        }
        _ => false,
    }
}
