//! Cortex-M4F GEMM (`thumbv7em-none-eabihf`, FPv4-SP with 32 single-precision registers): the
//! portable path's arithmetic, register-blocked in inline assembly. It replaces `scalar.rs` for
//! the scalar [`Isa`](crate::Isa) when the crate is compiled for a little-endian M-profile
//! hard-float target (see the `cfg` in the parent module); the host keeps the portable path.
//!
//! Arithmetic: `vmla.f32` multiplies, rounds, adds and rounds (it is *not* fused), so every
//! output is the same sequence of IEEE operations as in `scalar.rs` — `acc = 0`, `acc += a·b`
//! in k order, then `α·acc + β·C` — and equals the portable path bit for bit. (`vfma.f32`
//! would cost the same one instruction and the same 3 cycles on the M4F, but would round
//! differently from the specification the host computes.)
//!
//! Tiles, for `op(A) = A` and `op(B) = B` (row-major, contiguous k in A, rows of `ldb` in B):
//! - 4×4 over full 4-row blocks: accumulators s16–s31, two k steps of the 4 A rows in s0–s7
//!   (one `vldmia` with writeback per row), one B row in s8–s11 (one `vldmia` and one pointer
//!   add). Per two k steps: 4 + 2·2 + 32 `vmla` + 2 loop instructions = 42 per 32 MACs;
//! - 1×8 over the rows left over (m mod 4, and the whole of a batch-1 fc or 1×1-pixel layer):
//!   accumulators s16–s23, B row in s8–s15; 23 instructions per 16 MACs;
//! - columns left over (n mod 4, and n mod 8 for leftover rows): plain Rust in the same order.
//!
//! f16 B rows are loaded as packed halves (4-byte aligned: the base and `ldb` must be even,
//! else the portable path runs) and widened in registers with `vcvtb`/`vcvtt.f32.f16`, exact
//! like `half`'s conversion: 4 more instructions per B row of the 4×4 tile, 8 for the 1×8.
//! With `α = 1, β = 0` (every forward layer) the tile is stored straight from the registers
//! with one `vstmia` per row; otherwise it goes through a stack tile and the α/β epilogue.
//! Transposed operands, f16 A and `k = 0` run the portable path.

use super::{scalar, GemmShape, Trans};
use crate::convert::m4::widen1;
use crate::elem::{f16, Elem};
use core::any::TypeId;
use core::arch::asm;

/// Sixteen zeros: one `vldmia` from here clears the accumulators.
static ZEROS: [f32; 16] = [0.0; 16];

/// How B's elements are stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BKind {
    /// f32, 4 bytes.
    F32,
    /// f16, 2 bytes, rows 4-byte aligned.
    F16,
}

impl BKind {
    /// Bytes per element.
    const fn size(self) -> usize {
        match self {
            BKind::F32 => 4,
            BKind::F16 => 2,
        }
    }

    /// `f32(b[idx])` of a B stored as `self`.
    ///
    /// # Safety
    /// `b` (bytes) holds at least `idx + 1` elements of this kind and is aligned for them.
    #[inline(always)]
    unsafe fn load(self, b: *const u8, idx: usize) -> f32 {
        // SAFETY: in bounds and aligned by the caller's guarantee.
        unsafe {
            match self {
                BKind::F32 => *(b as *const f32).add(idx),
                BKind::F16 => widen1(*(b as *const u16).add(idx)),
            }
        }
    }
}

/// `C = α·op(A)·op(B) + β·C` (see the module docs); the portable path for what the tiles do
/// not cover.
///
/// # Safety
/// The slices satisfy the length checks of [`super::gemm`] for `s`, and `m, n ≥ 1`.
pub(super) unsafe fn gemm<A: Elem, B: Elem>(s: &GemmShape, alpha: f32, a: &[A], b: &[B], beta: f32, c: &mut [f32]) {
    let kind = if TypeId::of::<B>() == TypeId::of::<f32>() {
        Some(BKind::F32)
    } else if TypeId::of::<B>() == TypeId::of::<f16>() && (b.as_ptr() as usize) % 4 == 0 && s.ldb % 2 == 0 {
        Some(BKind::F16)
    } else {
        None
    };
    let untransposed = s.ta == Trans::N && s.tb == Trans::N;
    match kind {
        Some(kind) if untransposed && s.k > 0 && TypeId::of::<A>() == TypeId::of::<f32>() => {
            // SAFETY: `A` is f32 and B is stored as `kind` (aligned as checked above); the
            // lengths are the caller's.
            unsafe { tiles(s, alpha, a.as_ptr() as *const f32, b.as_ptr() as *const u8, kind, beta, c.as_mut_ptr()) }
        }
        _ => scalar::gemm(s, alpha, a, b, beta, c),
    }
}

/// The tile loops over untransposed operands: A f32 `a[i·lda + p]`, B (bytes, `kind`)
/// `b[p·ldb + j]`, C `c[i·ldc + j]`.
///
/// # Safety
/// `a`, `b`, `c` hold the `m×k`, `k×n`, `m×n` strided matrices of `s` (B 4-byte aligned with
/// even `ldb` when f16); `m, n, k ≥ 1`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(s: &GemmShape, alpha: f32, a: *const f32, b: *const u8, kind: BKind, beta: f32, c: *mut f32) {
    let (m4, n4, n8) = (s.m - s.m % 4, s.n - s.n % 4, s.n - s.n % 8);
    let esz = kind.size();
    let plain = alpha == 1.0 && beta == 0.0;
    let mut tile = [0.0f32; 16];
    for i in (0..m4).step_by(4) {
        for j in (0..n4).step_by(4) {
            // SAFETY: rows i..i+4 < m and columns j..j+4 ≤ n are inside the matrices; the
            // destination is either that C tile (row stride ldc) or the 4×4 stack tile.
            unsafe {
                let (dst, ldc) = if plain { (c.add(i * s.ldc + j), s.ldc) } else { (tile.as_mut_ptr(), 4) };
                kernel_4x4(kind, s.k, a.add(i * s.lda), s.lda, b.add(j * esz), s.ldb * esz, dst, ldc);
                if !plain {
                    epilogue(&tile, 4, c.add(i * s.ldc + j), s.ldc, 4, 4, alpha, beta);
                }
            }
        }
        // SAFETY: rows i..i+4 and columns n4..n are inside the matrices.
        unsafe { edge(s, alpha, a, b, kind, beta, c, i..i + 4, n4..s.n) };
    }
    for i in m4..s.m {
        for j in (0..n8).step_by(8) {
            // SAFETY: row i < m and columns j..j+8 ≤ n are inside the matrices; the
            // destination is that C row piece or the first 8 slots of the stack tile.
            unsafe {
                let dst = if plain { c.add(i * s.ldc + j) } else { tile.as_mut_ptr() };
                kernel_1x8(kind, s.k, a.add(i * s.lda), b.add(j * esz), s.ldb * esz, dst);
                if !plain {
                    epilogue(&tile, 8, c.add(i * s.ldc + j), s.ldc, 1, 8, alpha, beta);
                }
            }
        }
        // SAFETY: row i and columns n8..n are inside the matrices.
        unsafe { edge(s, alpha, a, b, kind, beta, c, i..i + 1, n8..s.n) };
    }
}

/// `C[r][j] = α·acc[r·w + j] + β·C[r][j]` (only written when `β = 0`) for `r < mr`, `j < nr`:
/// the portable path's epilogue.
///
/// # Safety
/// `c` is valid for reads and writes at `c.add(r·ldc + j)` for `r < mr`, `j < nr`, and
/// `acc.len() ≥ (mr − 1)·w + nr`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue(acc: &[f32], w: usize, c: *mut f32, ldc: usize, mr: usize, nr: usize, alpha: f32, beta: f32) {
    for r in 0..mr {
        for j in 0..nr {
            // SAFETY: r < mr, j < nr: covered by the caller's guarantee.
            unsafe {
                let d = c.add(r * ldc + j);
                let v = acc[r * w + j];
                *d = if beta == 0.0 { alpha * v } else { alpha * v + beta * *d };
            }
        }
    }
}

/// Rows `rows` × columns `cols` of C, one dot product per output in k order (`acc += a·b`,
/// not fused: Rust does not contract), then the α/β epilogue: the portable arithmetic.
///
/// # Safety
/// As for [`tiles`], with `rows ⊆ 0..m` and `cols ⊆ 0..n`.
#[allow(clippy::too_many_arguments)]
unsafe fn edge(
    s: &GemmShape,
    alpha: f32,
    a: *const f32,
    b: *const u8,
    kind: BKind,
    beta: f32,
    c: *mut f32,
    rows: core::ops::Range<usize>,
    cols: core::ops::Range<usize>,
) {
    for i in rows {
        for j in cols.clone() {
            let mut acc = 0.0f32;
            for p in 0..s.k {
                // SAFETY: i < m, j < n, p < k: inside A and B.
                acc += unsafe { *a.add(i * s.lda + p) * kind.load(b, p * s.ldb + j) };
            }
            // SAFETY: (i, j) is inside C.
            unsafe { epilogue(&[acc], 1, c.add(i * s.ldc + j), s.ldc, 1, 1, alpha, beta) };
        }
    }
}

/// Stores `C[r][0..4] = Σ_p A[r][p]·B[p][0..4]` for `r < 4` (k order, `vmla`).
///
/// # Safety
/// `a` points at A's row 0 with rows `lda` f32 apart, each readable for `k ≥ 1` f32; `b` at
/// B's row 0 (bytes) with rows `ldb_bytes` apart, each readable for 4 elements of `kind`
/// (4-byte aligned); `c` is writable at `c.add(r·ldc + j)` for `r, j < 4`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_4x4(
    kind: BKind,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb_bytes: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the caller's guarantee covers every address the kernel reads and writes.
    unsafe {
        let rows = [a, a.add(lda), a.add(2 * lda), a.add(3 * lda)];
        match kind {
            BKind::F32 => tile_4x4!(k, rows, b, ldb_bytes, c, ldc * 4, ["vldmia {b}, {{s8-s11}}", "add {b}, {b}, {ldb}"]),
            BKind::F16 => tile_4x4!(
                k,
                rows,
                b,
                ldb_bytes,
                c,
                ldc * 4,
                [
                    "vldmia {b}, {{s10-s11}}",
                    "add {b}, {b}, {ldb}",
                    "vcvtb.f32.f16 s8, s10",
                    "vcvtt.f32.f16 s9, s10",
                    "vcvtb.f32.f16 s10, s11",
                    "vcvtt.f32.f16 s11, s11"
                ]
            ),
        }
    }
}

/// Stores `C[0..8] = Σ_p A[p]·B[p][0..8]` (k order, `vmla`).
///
/// # Safety
/// `a` is readable for `k ≥ 1` f32; `b` points at B's row 0 (bytes) with rows `ldb_bytes`
/// apart, each readable for 8 elements of `kind` (4-byte aligned); `c` is writable for 8 f32.
#[inline(always)]
unsafe fn kernel_1x8(kind: BKind, k: usize, a: *const f32, b: *const u8, ldb_bytes: usize, c: *mut f32) {
    // SAFETY: the caller's guarantee covers every address the kernel reads and writes.
    unsafe {
        match kind {
            BKind::F32 => tile_1x8!(k, a, b, ldb_bytes, c, ["vldmia {b}, {{s8-s15}}", "add {b}, {b}, {ldb}"]),
            BKind::F16 => tile_1x8!(
                k,
                a,
                b,
                ldb_bytes,
                c,
                [
                    "vldmia {b}, {{s12-s15}}",
                    "add {b}, {b}, {ldb}",
                    "vcvtb.f32.f16 s8, s12",
                    "vcvtt.f32.f16 s9, s12",
                    "vcvtb.f32.f16 s10, s13",
                    "vcvtt.f32.f16 s11, s13",
                    "vcvtb.f32.f16 s12, s14",
                    "vcvtt.f32.f16 s13, s14",
                    "vcvtb.f32.f16 s14, s15",
                    "vcvtt.f32.f16 s15, s15"
                ]
            ),
        }
    }
}

/// The 4×4 micro-kernel in assembly; `$load_b` loads the next B row into s8–s11 and advances
/// `{b}` by `{ldb}`. The odd k step runs first (`lsrs` leaves k's low bit in C and `k/2 = 0`
/// in Z; the single step does not touch the flags), then the k/2 double steps.
macro_rules! tile_4x4 {
    ($k:expr, $rows:expr, $b:expr, $ldb:expr, $c:expr, $ldc_bytes:expr, [$($load_b:literal),*]) => {
        asm!(
            "vldmia {z}, {{s16-s31}}",
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            "vldmia {a0}!, {{s0}}",
            "vldmia {a1}!, {{s2}}",
            "vldmia {a2}!, {{s4}}",
            "vldmia {a3}!, {{s6}}",
            $($load_b,)*
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s0, s9", "vmla.f32 s18, s0, s10", "vmla.f32 s19, s0, s11",
            "vmla.f32 s20, s2, s8", "vmla.f32 s21, s2, s9", "vmla.f32 s22, s2, s10", "vmla.f32 s23, s2, s11",
            "vmla.f32 s24, s4, s8", "vmla.f32 s25, s4, s9", "vmla.f32 s26, s4, s10", "vmla.f32 s27, s4, s11",
            "vmla.f32 s28, s6, s8", "vmla.f32 s29, s6, s9", "vmla.f32 s30, s6, s10", "vmla.f32 s31, s6, s11",
            "3:",
            "beq 4f",
            "2:",
            "vldmia {a0}!, {{s0-s1}}",
            "vldmia {a1}!, {{s2-s3}}",
            "vldmia {a2}!, {{s4-s5}}",
            "vldmia {a3}!, {{s6-s7}}",
            $($load_b,)*
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s0, s9", "vmla.f32 s18, s0, s10", "vmla.f32 s19, s0, s11",
            "vmla.f32 s20, s2, s8", "vmla.f32 s21, s2, s9", "vmla.f32 s22, s2, s10", "vmla.f32 s23, s2, s11",
            "vmla.f32 s24, s4, s8", "vmla.f32 s25, s4, s9", "vmla.f32 s26, s4, s10", "vmla.f32 s27, s4, s11",
            "vmla.f32 s28, s6, s8", "vmla.f32 s29, s6, s9", "vmla.f32 s30, s6, s10", "vmla.f32 s31, s6, s11",
            $($load_b,)*
            "vmla.f32 s16, s1, s8", "vmla.f32 s17, s1, s9", "vmla.f32 s18, s1, s10", "vmla.f32 s19, s1, s11",
            "vmla.f32 s20, s3, s8", "vmla.f32 s21, s3, s9", "vmla.f32 s22, s3, s10", "vmla.f32 s23, s3, s11",
            "vmla.f32 s24, s5, s8", "vmla.f32 s25, s5, s9", "vmla.f32 s26, s5, s10", "vmla.f32 s27, s5, s11",
            "vmla.f32 s28, s7, s8", "vmla.f32 s29, s7, s9", "vmla.f32 s30, s7, s10", "vmla.f32 s31, s7, s11",
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            "vstmia {c}, {{s16-s19}}",
            "add {c}, {c}, {ldc}",
            "vstmia {c}, {{s20-s23}}",
            "add {c}, {c}, {ldc}",
            "vstmia {c}, {{s24-s27}}",
            "add {c}, {c}, {ldc}",
            "vstmia {c}, {{s28-s31}}",
            z = in(reg) ZEROS.as_ptr(),
            n = inout(reg) $k => _,
            a0 = inout(reg) $rows[0] => _,
            a1 = inout(reg) $rows[1] => _,
            a2 = inout(reg) $rows[2] => _,
            a3 = inout(reg) $rows[3] => _,
            b = inout(reg) $b => _,
            ldb = in(reg) $ldb,
            c = inout(reg) $c => _,
            ldc = in(reg) $ldc_bytes,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        )
    };
}
use tile_4x4;

/// The 1×8 micro-kernel in assembly; `$load_b` loads the next B row into s8–s15 and advances
/// `{b}` by `{ldb}`. Odd k step first, as in [`tile_4x4`].
macro_rules! tile_1x8 {
    ($k:expr, $a:expr, $b:expr, $ldb:expr, $c:expr, [$($load_b:literal),*]) => {
        asm!(
            "vldmia {z}, {{s16-s23}}",
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            "vldmia {a}!, {{s0}}",
            $($load_b,)*
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s0, s9", "vmla.f32 s18, s0, s10", "vmla.f32 s19, s0, s11",
            "vmla.f32 s20, s0, s12", "vmla.f32 s21, s0, s13", "vmla.f32 s22, s0, s14", "vmla.f32 s23, s0, s15",
            "3:",
            "beq 4f",
            "2:",
            "vldmia {a}!, {{s0-s1}}",
            $($load_b,)*
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s0, s9", "vmla.f32 s18, s0, s10", "vmla.f32 s19, s0, s11",
            "vmla.f32 s20, s0, s12", "vmla.f32 s21, s0, s13", "vmla.f32 s22, s0, s14", "vmla.f32 s23, s0, s15",
            $($load_b,)*
            "vmla.f32 s16, s1, s8", "vmla.f32 s17, s1, s9", "vmla.f32 s18, s1, s10", "vmla.f32 s19, s1, s11",
            "vmla.f32 s20, s1, s12", "vmla.f32 s21, s1, s13", "vmla.f32 s22, s1, s14", "vmla.f32 s23, s1, s15",
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            "vstmia {c}, {{s16-s23}}",
            z = in(reg) ZEROS.as_ptr(),
            n = inout(reg) $k => _,
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            ldb = in(reg) $ldb,
            c = in(reg) $c,
            out("s0") _, out("s1") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        )
    };
}
use tile_1x8;
