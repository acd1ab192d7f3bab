//! General matrix multiply: `C = α·op(A)·op(B) + β·C`, row-major, f32 accumulation, A and B
//! stored as f32 or f16 (widened while packing).
//!
//! This is the one GEMM every dense kernel (pointwise conv, fc, im2col KxK conv and their
//! backward passes) goes through, so an ISA path added here speeds up all of them.
//!
//! Paths (chosen by the one `match` in [`gemm`]):
//! - scalar (`scalar.rs`): the specification — each output one f32 dot product in k order,
//!   register-blocked 4×4, no packing, no stack buffers;
//! - Cortex-M4F (`m4.rs`, the scalar `Isa` on that target): the same arithmetic in inline
//!   assembly (`vmla.f32`, 4×4 and 1×8 register tiles, f16 widened by `vcvtb`/`vcvtt`), bit-identical;
//! - AVX2+FMA+F16C (`avx2.rs`): 6×16 micro-kernel, KC ≤ 256 (one block up to k = 320), MC·KC =
//!   144·256, 164 KiB of packing buffers on the stack; a C of at most 10 columns with k ≥ 64
//!   and an f32, untransposed A (the fc at batch 64) goes to `narrow.rs` instead: lanes along
//!   k (4 k × 2 columns per vector), so no lanes sit idle past column 10;
//! - AVX-512F (`avx512.rs`): 6×64 micro-kernel on zmm registers, KC 128 (k ≤ 192 in one
//!   block), the AVX2 path's packers; the narrow C in `narrow512.rs` (8 k × 2 columns per zmm);
//! - NEON (`neon.rs`): 8×8 micro-kernel, KC ≤ 256, MC·KC = 128·256, 136 KiB of packing buffers;
//! - the SIMD paths share the loop nest and the f16→f32-widening packers (`blocked.rs`).
//!
//! [`pack_b`] / [`gemm_packed_b`]: op(B) packed once for many calls, where a path reads such a
//! pack ([`packed_b_len`]: the AVX2 narrow path) — the trainer packs an fc's weights once per
//! forward instead of each thread packing them on every call; the same bits as [`gemm`].
//!
//! Accuracy contract: the SIMD paths sum in k order within each KC block (the narrow paths in
//! 4 (AVX2) or 8 (AVX-512) interleaved partial sums over all of k, reduced at the end), fuse multiply-adds and add the KC blocks
//! into C one after another, so they do not match the scalar path bit for bit. Every path satisfies the standard dot-product bound
//! `|C − C_exact| ≤ γ·(|α|·Σ_p |op(A)[i][p]·op(B)[p][j]| + |β·C₀[i][j]|)` with
//! `γ = (k + 4)·2⁻²⁴` (f16 operands are widened exactly, so the bound holds for them too);
//! the tests check each path against an f64 reference with that bound and the SIMD paths
//! against the scalar path with twice it.

mod scalar;

/// Cortex-M4F (`thumbv7em-none-eabihf`; also `thumbv8m.main-none-eabihf`): a little-endian
/// M-profile hard-float target, i.e. an FPU with 32 single-precision registers and f16
/// conversions. Stable Rust exposes no ARM `target_feature` cfg, and the M-profile targets are
/// the ARM ones without 64-bit atomics.
#[cfg(tinykd_m4f)]
pub(crate) mod m4;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod blocked;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod narrow;

#[cfg(target_arch = "x86_64")]
mod narrow512;

#[cfg(target_arch = "aarch64")]
mod neon;

use crate::elem::Elem;
use crate::error::{check_scratch, ensure, KernelError, Result};
use crate::isa::{Isa, IsaKind};
use crate::shape::prod;

/// Whether an operand is used as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trans {
    /// `op(X) = X`.
    N,
    /// `op(X) = Xᵀ`.
    T,
}

/// The dimensions and strides of one GEMM call (row-major, leading dimensions in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// `op` applied to A.
    pub ta: Trans,
    /// `op` applied to B.
    pub tb: Trans,
    /// Row stride of A as stored.
    pub lda: usize,
    /// Row stride of B as stored.
    pub ldb: usize,
    /// Row stride of C.
    pub ldc: usize,
}

impl GemmShape {
    /// Dense operands with no transposes: `A` is `m×k`, `B` is `k×n`, `C` is `m×n`.
    pub const fn nn(m: usize, n: usize, k: usize) -> Self {
        GemmShape { m, n, k, ta: Trans::N, tb: Trans::N, lda: k, ldb: n, ldc: n }
    }
    /// Dense operands with `op(A) = Aᵀ` (`A` stored `k×m`), `B` is `k×n`.
    pub const fn tn(m: usize, n: usize, k: usize) -> Self {
        GemmShape { m, n, k, ta: Trans::T, tb: Trans::N, lda: m, ldb: n, ldc: n }
    }
    /// Dense operands with `op(B) = Bᵀ` (`B` stored `n×k`), `A` is `m×k`.
    pub const fn nt(m: usize, n: usize, k: usize) -> Self {
        GemmShape { m, n, k, ta: Trans::N, tb: Trans::T, lda: k, ldb: k, ldc: n }
    }
    /// Stored (rows, cols) of A.
    const fn a_dims(&self) -> (usize, usize) {
        match self.ta {
            Trans::N => (self.m, self.k),
            Trans::T => (self.k, self.m),
        }
    }
    /// Stored (rows, cols) of B.
    const fn b_dims(&self) -> (usize, usize) {
        match self.tb {
            Trans::N => (self.k, self.n),
            Trans::T => (self.n, self.k),
        }
    }
    /// Minimum slice length of a stored `rows×cols` matrix with row stride `ld`, saturating at
    /// `usize::MAX` (a stride or size that does not fit fails the length check, see
    /// [`crate::shape::prod`]).
    const fn min_len(rows: usize, cols: usize, ld: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            prod(&[rows - 1, ld]).saturating_add(cols)
        }
    }
    /// Floating-point operations of one call (`2·m·n·k`, saturating).
    pub const fn flops(&self) -> usize {
        prod(&[2, self.m, self.n, self.k])
    }
}

fn check_matrix(arg: &'static str, len: usize, rows: usize, cols: usize, ld: usize) -> Result<()> {
    ensure(ld >= cols || rows <= 1, "gemm: leading dimension smaller than the row length")?;
    let need = GemmShape::min_len(rows, cols, ld);
    if len < need {
        return Err(KernelError::Len { arg, expected: need, got: len });
    }
    Ok(())
}

/// `C[m×n] = α·op(A)[m×k]·op(B)[k×n] + β·C`; row-major with strides; when `β = 0`, `C` is
/// only written (NaN in `C` does not propagate). Slices may be longer than needed.
pub fn gemm<A: Elem, B: Elem>(
    isa: Isa,
    s: &GemmShape,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let (ar, ac) = s.a_dims();
    let (br, bc) = s.b_dims();
    check_matrix("a", a.len(), ar, ac, s.lda)?;
    check_matrix("b", b.len(), br, bc, s.ldb)?;
    check_matrix("c", c.len(), s.m, s.n, s.ldc)?;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    match isa.kind() {
        #[cfg(not(tinykd_m4f))]
        IsaKind::Scalar => scalar::gemm(s, alpha, a, b, beta, c),
        #[cfg(tinykd_m4f)]
        // SAFETY: lengths checked above, m, n ≥ 1.
        IsaKind::Scalar => unsafe { m4::gemm(s, alpha, a, b, beta, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above, m, n ≥ 1; an `Isa` of kind Avx2 exists only when the
        // CPU has AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx2 => unsafe { avx2::gemm(s, alpha, a, b, beta, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths checked above, m, n ≥ 1; an `Isa` of kind Avx512 exists only when the
        // CPU has AVX-512F besides AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx512 => unsafe { avx512::gemm(s, alpha, a, b, beta, c) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: lengths checked above, m, n ≥ 1; an `Isa` of kind Neon exists only on
        // aarch64 CPUs with NEON (isa.rs).
        IsaKind::Neon => unsafe { neon::gemm(s, alpha, a, b, beta, c) },
        // Kinds of another architecture: no `Isa` of them can exist on this target.
        _ => scalar::gemm(s, alpha, a, b, beta, c),
    }
    Ok(())
}

/// Why [`pack_b`] and [`gemm_packed_b`] refuse a shape or ISA.
const NO_PACKED_B: KernelError = KernelError::Shape("gemm: this ISA has no packed op(B) for this shape");

/// f32 that op(B) takes packed by [`pack_b`] for [`gemm_packed_b`] on `isa` and shape `s` (its
/// m ignored), or `None` when no path of `isa` reads a packed op(B) for that shape ([`gemm`]
/// then packs per call). Packed: the AVX2 path's narrow C (n ≤ 10, k ≥ 64, A untransposed) —
/// an fc's forward at 32–64 rows, where packing per call is 5–10 % of its time and several
/// threads would each pack the same weights.
pub fn packed_b_len(isa: Isa, s: &GemmShape) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if isa.kind() == IsaKind::Avx2 && narrow::applies(s) {
        return Some(narrow::packed_len(s));
    }
    let _ = (isa, s); // no other path reads a packed op(B)
    None
}

/// Packs op(B) (f32 or f16, widened) into `bp` (at least [`packed_b_len`] f32; 32-byte aligned
/// runs fastest) for [`gemm_packed_b`] calls with the same k, n, op(B) and any m.
///
/// Errors: `Shape` when [`packed_b_len`] is `None`; `Len` for a short `b` or `bp`.
pub fn pack_b<B: Elem>(isa: Isa, s: &GemmShape, b: &[B], bp: &mut [f32]) -> Result<()> {
    let len = packed_b_len(isa, s).ok_or(NO_PACKED_B)?;
    let (br, bc) = s.b_dims();
    check_matrix("b", b.len(), br, bc, s.ldb)?;
    check_scratch("bp", bp.len(), len)?;
    if s.n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `bp` holds packed_len(s) f32 and `b` passed the length check (above); n ≥ 1;
    // packed_b_len is Some only for an `Isa` of kind Avx2 (which exists only when the CPU has
    // AVX2+FMA+F16C, isa.rs) and a shape narrow::applies to.
    unsafe {
        narrow::pack_whole(s, b, bp.as_mut_ptr())
    };
    Ok(())
}

/// [`gemm`] with op(B) packed by [`pack_b`] (for the same k, n, op(B) and `isa`): the same
/// bits as [`gemm`] with the unpacked B, without its per-call packing.
///
/// Errors: `Shape` when [`packed_b_len`] is `None`; `Len` for a short `a`, `bp` or `c`.
pub fn gemm_packed_b(
    isa: Isa,
    s: &GemmShape,
    alpha: f32,
    a: &[f32],
    bp: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let len = packed_b_len(isa, s).ok_or(NO_PACKED_B)?;
    let (ar, ac) = s.a_dims();
    check_matrix("a", a.len(), ar, ac, s.lda)?;
    check_scratch("bp", bp.len(), len)?;
    check_matrix("c", c.len(), s.m, s.n, s.ldc)?;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: lengths checked above, m, n ≥ 1; `bp` holds packed_len(s) f32 (any values: the
    // kernel reads only those); packed_b_len is Some only for an `Isa` of kind Avx2 (which
    // exists only when the CPU has AVX2+FMA+F16C, isa.rs) and a shape narrow::applies to.
    unsafe {
        narrow::gemm_packed(s, alpha, a, bp.as_ptr(), beta, c)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (alpha, a, bp, beta, c); // unreachable: packed_b_len is None here
    Ok(())
}
