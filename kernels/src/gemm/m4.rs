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
//! - 1×16 then 1×8 over the rows left over (m mod 4, and the whole of a batch-1 fc or 1×1-pixel
//!   layer): accumulators s16–s31 (s16–s23), B row loaded into s8–s15 in halves; per two k
//!   steps 41 instructions per 32 MACs (23 per 16);
//! - columns left over (n mod 4, and n mod 8 for leftover rows): plain Rust in the same order.
//!
//! f16 B rows are loaded as packed halves (4-byte aligned: the base and `ldb` must be even,
//! else the portable path runs) and widened in registers with `vcvtb`/`vcvtt.f32.f16`, exact
//! like `half`'s conversion: 4 more instructions per B row of the 4×4 tile, 8 per 8 columns for
//! the 1×8 and 1×16.
//! When several 4-row blocks share B (m ≥ 8) and k ≤ [`PANEL_K`], B is instead widened once
//! per 8 columns into a stack panel and the f32 tiles run on it.
//! With `α = 1, β = 0` (every forward layer) the tile is stored straight from the registers
//! with one `vstmia` per row; otherwise it goes through a stack tile and the α/β epilogue.
//! Transposed operands, f16 A and `k = 0` run the portable path.
//!
//! [`gemm_bias_act`] is the dense forward layers' `y = act(A·B + b)` in one pass: the bias
//! (widened once per 256 columns) is added to the accumulators and the ReLU applied in
//! registers before the store — the same operations `linear::epilogue::bias_act` applies to the
//! stored GEMM result (`acc + b`, then `v > 0 ? v : 0`), so again the same bits.

use super::{scalar, GemmShape, Trans};
use crate::act::Act;
use crate::convert::m4::{widen, widen1, widen_rows8};
use crate::elem::{f16, Elem};
use crate::isa::{Isa, IsaKind};
use core::any::TypeId;
use core::arch::asm;

/// Columns whose bias is widened at a time by [`gemm_bias_act`].
const BIAS_CHUNK: usize = 256;
/// Deepest k for which an f16 B is widened into 8-column f32 panels (4 KiB of stack).
const PANEL_K: usize = 128;

/// What a tile does with its accumulators before storing them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Post {
    /// Store them.
    None,
    /// Add the bias row (`{bias}`, f32) to every row.
    Bias,
    /// Add the bias row, then ReLU.
    BiasRelu,
}

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
    match tiled_kind::<A, B>(s, b) {
        Some(kind) => {
            let epi = Epilogue { alpha, beta, post: Post::None, bias: core::ptr::null() };
            // SAFETY: `A` is f32 and B is stored as `kind` (aligned, see `tiled_kind`); the
            // lengths are the caller's; no bias is read with `Post::None`.
            unsafe { tiles(s, a.as_ptr() as *const f32, b.as_ptr() as *const u8, kind, c.as_mut_ptr(), 0..s.n, &epi) }
        }
        None => scalar::gemm(s, alpha, a, b, beta, c),
    }
}

/// How B is stored if the tiles handle this call (untransposed, f32 A, `k ≥ 1`, f32 B or
/// 4-byte-aligned f16 B with an even `ldb`), else `None`.
fn tiled_kind<A: Elem, B: Elem>(s: &GemmShape, b: &[B]) -> Option<BKind> {
    let untransposed = s.ta == Trans::N && s.tb == Trans::N;
    if !untransposed || s.k == 0 || TypeId::of::<A>() != TypeId::of::<f32>() {
        return None;
    }
    if TypeId::of::<B>() == TypeId::of::<f32>() {
        Some(BKind::F32)
    } else if TypeId::of::<B>() == TypeId::of::<f16>() && (b.as_ptr() as usize) % 4 == 0 && s.ldb % 2 == 0 {
        Some(BKind::F16)
    } else {
        None
    }
}

/// `y = act(A·B + bias)` for the dense forwards (`s` untransposed, `y` dense: `ldc = n`), with
/// the bias and the activation applied in registers (see the module docs). Returns `false`,
/// having written nothing, when this path does not apply (another ISA, an operand the tiles do
/// not take, or a length the GEMM would reject): the caller then runs the GEMM and the
/// epilogue separately.
pub(crate) fn gemm_bias_act<W: Elem>(
    isa: Isa,
    s: &GemmShape,
    a: &[f32],
    b: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) -> bool {
    let fits = s.m > 0
        && s.n > 0
        && s.k > 0
        && s.lda >= s.k
        && s.ldb >= s.n
        && s.ldc == s.n
        && a.len() >= (s.m - 1) * s.lda + s.k
        && b.len() >= (s.k - 1) * s.ldb + s.n
        && y.len() >= s.m * s.n
        && bias.map_or(true, |b| b.len() >= s.n);
    let kind = match tiled_kind::<f32, W>(s, b) {
        Some(kind) if fits && isa.kind() == IsaKind::Scalar => kind,
        _ => return false,
    };
    let post = if act == Act::Relu { Post::BiasRelu } else { Post::Bias };
    let mut bt = [0.0f32; BIAS_CHUNK];
    for j0 in (0..s.n).step_by(BIAS_CHUNK) {
        let cols = BIAS_CHUNK.min(s.n - j0);
        if let Some(bias) = bias {
            widen(&bias[j0..j0 + cols], &mut bt[..cols]);
        }
        // Tile column j reads the bias of column j at `bt[j − j0]`.
        let epi = Epilogue { alpha: 1.0, beta: 0.0, post, bias: bt.as_ptr().wrapping_sub(j0) };
        // SAFETY: `tiled_kind` and the checks above give the operands' types, alignment and
        // lengths; the tiles of columns j0..j0+cols read bias slots j − j0 < cols of `bt`.
        unsafe { tiles(s, a.as_ptr(), b.as_ptr() as *const u8, kind, y.as_mut_ptr(), j0..j0 + cols, &epi) };
    }
    true
}

/// What the tiles do before storing: `C = α·acc + β·C` with `post = None`, or (`α = 1`,
/// `β = 0`) add the bias of column j at `bias.wrapping_add(j)` and maybe ReLU.
struct Epilogue {
    /// α (1 unless `post` is `None`).
    alpha: f32,
    /// β (0 unless `post` is `None`).
    beta: f32,
    /// Bias / ReLU before the store.
    post: Post,
    /// The bias of column j is at `bias.wrapping_add(j)` (unused with `Post::None`).
    bias: *const f32,
}

/// The tile loops over untransposed operands, columns `cols` of C: A f32 `a[i·lda + p]`, B
/// (bytes, `kind`) `b[p·ldb + j]`, C `c[i·ldc + j]`.
///
/// # Safety
/// `a`, `b`, `c` hold the `m×k`, `k×n`, `m×n` strided matrices of `s` (B 4-byte aligned with
/// even `ldb` when f16); `m, k ≥ 1`; `cols ⊆ 0..n`; with `epi.post ≠ None`, `α = 1`, `β = 0`
/// and `epi.bias.wrapping_add(j)` is readable for every `j` in `cols`.
unsafe fn tiles(
    s: &GemmShape,
    a: *const f32,
    b: *const u8,
    kind: BKind,
    c: *mut f32,
    cols: core::ops::Range<usize>,
    epi: &Epilogue,
) {
    let (j0, nc) = (cols.start, cols.end - cols.start);
    let (m4, n4, n8) = (s.m - s.m % 4, j0 + nc - nc % 4, j0 + nc - nc % 8);
    let esz = kind.size();
    let plain = epi.post != Post::None || (epi.alpha == 1.0 && epi.beta == 0.0);
    let mut tile = [0.0f32; 16];
    // The 4×4 tile at (i, j) with B's columns j..j+4 at `bj` (bytes, rows `ldb_bytes` apart).
    let mut run_4x4 = |i: usize, j: usize, bk: BKind, bj: *const u8, ldb_bytes: usize| {
        // SAFETY: rows i..i+4 < m and columns j..j+4 ≤ n are inside the matrices and `bj`
        // walks k rows of 4 elements of `bk` (the caller's B or a widened panel); the
        // destination is either that C tile (row stride ldc) or the 4×4 stack tile; the bias
        // of columns j..j+4 is readable when `post` reads it.
        unsafe {
            let (dst, ldc) = if plain { (c.add(i * s.ldc + j), s.ldc) } else { (tile.as_mut_ptr(), 4) };
            let out = Out { c: dst, ldc_bytes: ldc * 4, bias: epi.bias.wrapping_add(j) };
            kernel_4x4(bk, epi.post, s.k, a.add(i * s.lda), s.lda, bj, ldb_bytes, &out);
            if !plain {
                alpha_beta(&tile, 4, c.add(i * s.ldc + j), s.ldc, 4, 4, epi.alpha, epi.beta);
            }
        }
    };
    if kind == BKind::F16 && m4 >= 8 && s.k <= PANEL_K {
        // f16 B reused by several row blocks: widen each 8-column panel once (k×8 f32 on the
        // stack) and run the f32 tiles on it, instead of widening per tile.
        let mut panel = [0.0f32; 8 * PANEL_K];
        for j in (j0..n8).step_by(8) {
            // SAFETY: B's rows 0..k hold columns j..j+8 ≤ n; the panel holds k·8 f32.
            unsafe { widen_rows8(b.add(j * esz) as *const f16, s.ldb, s.k, panel.as_mut_ptr()) };
            let pp = panel.as_ptr() as *const u8;
            for i in (0..m4).step_by(4) {
                run_4x4(i, j, BKind::F32, pp, 32);
                run_4x4(i, j + 4, BKind::F32, pp.wrapping_add(16), 32);
            }
        }
        for i in (0..m4).step_by(4) {
            for j in (n8..n4).step_by(4) {
                run_4x4(i, j, kind, b.wrapping_add(j * esz), s.ldb * esz);
            }
            // SAFETY: rows i..i+4 and columns n4..j0+nc are inside the matrices.
            unsafe { edge(s, a, b, kind, c, i..i + 4, n4..j0 + nc, epi) };
        }
    } else {
        for i in (0..m4).step_by(4) {
            for j in (j0..n4).step_by(4) {
                run_4x4(i, j, kind, b.wrapping_add(j * esz), s.ldb * esz);
            }
            // SAFETY: rows i..i+4 and columns n4..j0+nc are inside the matrices.
            unsafe { edge(s, a, b, kind, c, i..i + 4, n4..j0 + nc, epi) };
        }
    }
    let n16 = j0 + nc - nc % 16;
    let mut tile16 = [0.0f32; 16];
    for i in m4..s.m {
        for j in (j0..n16).step_by(16) {
            // SAFETY: row i < m and columns j..j+16 ≤ n are inside the matrices; the
            // destination is that C row piece or the 16-slot stack tile.
            unsafe {
                let dst = if plain { c.add(i * s.ldc + j) } else { tile16.as_mut_ptr() };
                kernel_1x16(
                    kind,
                    epi.post,
                    s.k,
                    a.add(i * s.lda),
                    b.add(j * esz),
                    s.ldb * esz,
                    dst,
                    epi.bias.wrapping_add(j),
                );
                if !plain {
                    alpha_beta(&tile16, 16, c.add(i * s.ldc + j), s.ldc, 1, 16, epi.alpha, epi.beta);
                }
            }
        }
        for j in (n16..n8).step_by(8) {
            // SAFETY: row i < m and columns j..j+8 ≤ n are inside the matrices; the
            // destination is that C row piece or the first 8 slots of the stack tile.
            unsafe {
                let dst = if plain { c.add(i * s.ldc + j) } else { tile.as_mut_ptr() };
                kernel_1x8(
                    kind,
                    epi.post,
                    s.k,
                    a.add(i * s.lda),
                    b.add(j * esz),
                    s.ldb * esz,
                    dst,
                    epi.bias.wrapping_add(j),
                );
                if !plain {
                    alpha_beta(&tile, 8, c.add(i * s.ldc + j), s.ldc, 1, 8, epi.alpha, epi.beta);
                }
            }
        }
        // SAFETY: row i and columns n8..j0+nc are inside the matrices.
        unsafe { edge(s, a, b, kind, c, i..i + 1, n8..j0 + nc, epi) };
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
unsafe fn alpha_beta(acc: &[f32], w: usize, c: *mut f32, ldc: usize, mr: usize, nr: usize, alpha: f32, beta: f32) {
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
/// not fused: Rust does not contract), then the epilogue: the portable arithmetic.
///
/// # Safety
/// As for [`tiles`], with `rows ⊆ 0..m` and `cols` inside the tiles' columns.
#[allow(clippy::too_many_arguments)]
unsafe fn edge(
    s: &GemmShape,
    a: *const f32,
    b: *const u8,
    kind: BKind,
    c: *mut f32,
    rows: core::ops::Range<usize>,
    cols: core::ops::Range<usize>,
    epi: &Epilogue,
) {
    for i in rows {
        for j in cols.clone() {
            let mut acc = 0.0f32;
            for p in 0..s.k {
                // SAFETY: i < m, j < n, p < k: inside A and B.
                acc += unsafe { *a.add(i * s.lda + p) * kind.load(b, p * s.ldb + j) };
            }
            // SAFETY: (i, j) is inside C; the bias of column j is readable when `post` reads it.
            unsafe {
                let d = c.add(i * s.ldc + j);
                match epi.post {
                    Post::None => alpha_beta(&[acc], 1, d, s.ldc, 1, 1, epi.alpha, epi.beta),
                    Post::Bias => *d = acc + *epi.bias.wrapping_add(j),
                    Post::BiasRelu => *d = Act::Relu.apply(acc + *epi.bias.wrapping_add(j)),
                }
            }
        }
    }
}

/// Where a 4×4 tile goes: rows of C `ldc_bytes` apart from `c`, the bias of its 4 columns.
/// Read by the kernel from memory after its k loop, when the A row registers are free.
#[repr(C)]
struct Out {
    c: *mut f32,
    ldc_bytes: usize,
    bias: *const f32,
}

// Assembly pieces, each a macro expanding to a string literal (`asm!` templates must be
// literals); the tile macros take their names.

/// Nothing (no post-processing).
macro_rules! nothing {
    () => {
        ""
    };
}

/// Next f32 B row of 4 into s8–s11, `{b} += {ldb}`.
macro_rules! b4_f32 {
    () => {
        "vldmia {b}, {{s8-s11}}\n add {b}, {b}, {ldb}\n"
    };
}

/// Next f16 B row of 4 (8 bytes) into s10–s11, widened in place into s8–s11 (each source
/// half is read before its register is overwritten), `{b} += {ldb}`.
macro_rules! b4_f16 {
    () => {
        concat!(
            "vldmia {b}, {{s10-s11}}\n add {b}, {b}, {ldb}\n",
            "vcvtb.f32.f16 s8, s10\n vcvtt.f32.f16 s9, s10\n",
            "vcvtb.f32.f16 s10, s11\n vcvtt.f32.f16 s11, s11\n"
        )
    };
}

/// Next f32 B row of 8 into s8–s15, `{b} += {ldb}`.
macro_rules! b8_f32 {
    () => {
        "vldmia {b}, {{s8-s15}}\n add {b}, {b}, {ldb}\n"
    };
}

/// Next f16 B row of 8 (16 bytes) into s12–s15, widened in place into s8–s15.
macro_rules! b8_f16 {
    () => {
        concat!(
            "vldmia {b}, {{s12-s15}}\n add {b}, {b}, {ldb}\n",
            "vcvtb.f32.f16 s8, s12\n vcvtt.f32.f16 s9, s12\n",
            "vcvtb.f32.f16 s10, s13\n vcvtt.f32.f16 s11, s13\n",
            "vcvtb.f32.f16 s12, s14\n vcvtt.f32.f16 s13, s14\n",
            "vcvtb.f32.f16 s14, s15\n vcvtt.f32.f16 s15, s15\n"
        )
    };
}

/// 4×4 tile: the 4 biases at `{bias}` into s0–s3, added to each row of s16–s31.
macro_rules! bias_4x4 {
    () => {
        concat!(
            "vldmia {bias}, {{s0-s3}}\n",
            "vadd.f32 s16, s16, s0\n vadd.f32 s17, s17, s1\n vadd.f32 s18, s18, s2\n vadd.f32 s19, s19, s3\n",
            "vadd.f32 s20, s20, s0\n vadd.f32 s21, s21, s1\n vadd.f32 s22, s22, s2\n vadd.f32 s23, s23, s3\n",
            "vadd.f32 s24, s24, s0\n vadd.f32 s25, s25, s1\n vadd.f32 s26, s26, s2\n vadd.f32 s27, s27, s3\n",
            "vadd.f32 s28, s28, s0\n vadd.f32 s29, s29, s1\n vadd.f32 s30, s30, s2\n vadd.f32 s31, s31, s3\n"
        )
    };
}

/// ReLU of one register as the portable `if v > 0 { v } else { 0 }`: after `vcmp v, #0`, LE
/// holds for v ≤ 0 and for NaN (unordered), which become +0 (s4, cleared from `{n}`, which the
/// k loop leaves at 0).
macro_rules! relu1 {
    ($r:literal) => {
        concat!("vcmp.f32 ", $r, ", #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 ", $r, ", s4\n")
    };
}

/// 4×4 tile: ReLU of s16–s31.
macro_rules! relu_4x4 {
    () => {
        concat!(
            "vmov s4, {n}\n",
            relu1!("s16"),
            relu1!("s17"),
            relu1!("s18"),
            relu1!("s19"),
            relu1!("s20"),
            relu1!("s21"),
            relu1!("s22"),
            relu1!("s23"),
            relu1!("s24"),
            relu1!("s25"),
            relu1!("s26"),
            relu1!("s27"),
            relu1!("s28"),
            relu1!("s29"),
            relu1!("s30"),
            relu1!("s31")
        )
    };
}

/// 1×8 tile: the 8 biases at `{bias}` into s8–s15, added to s16–s23.
macro_rules! bias_1x8 {
    () => {
        concat!(
            "vldmia {bias}, {{s8-s15}}\n",
            "vadd.f32 s16, s16, s8\n vadd.f32 s17, s17, s9\n vadd.f32 s18, s18, s10\n vadd.f32 s19, s19, s11\n",
            "vadd.f32 s20, s20, s12\n vadd.f32 s21, s21, s13\n vadd.f32 s22, s22, s14\n vadd.f32 s23, s23, s15\n"
        )
    };
}

/// 1×8 tile: ReLU of s16–s23 (zero in s4, from `{n}` = 0).
macro_rules! relu_1x8 {
    () => {
        concat!(
            "vmov s4, {n}\n",
            relu1!("s16"),
            relu1!("s17"),
            relu1!("s18"),
            relu1!("s19"),
            relu1!("s20"),
            relu1!("s21"),
            relu1!("s22"),
            relu1!("s23")
        )
    };
}

/// 16 `vmla`: row r of s16–s31 += A value `$a{r}` × B row s8–s11.
macro_rules! mla_4x4 {
    ($a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
        concat!(
            "vmla.f32 s16, ",
            $a0,
            ", s8\n vmla.f32 s17, ",
            $a0,
            ", s9\n vmla.f32 s18, ",
            $a0,
            ", s10\n vmla.f32 s19, ",
            $a0,
            ", s11\n",
            "vmla.f32 s20, ",
            $a1,
            ", s8\n vmla.f32 s21, ",
            $a1,
            ", s9\n vmla.f32 s22, ",
            $a1,
            ", s10\n vmla.f32 s23, ",
            $a1,
            ", s11\n",
            "vmla.f32 s24, ",
            $a2,
            ", s8\n vmla.f32 s25, ",
            $a2,
            ", s9\n vmla.f32 s26, ",
            $a2,
            ", s10\n vmla.f32 s27, ",
            $a2,
            ", s11\n",
            "vmla.f32 s28, ",
            $a3,
            ", s8\n vmla.f32 s29, ",
            $a3,
            ", s9\n vmla.f32 s30, ",
            $a3,
            ", s10\n vmla.f32 s31, ",
            $a3,
            ", s11\n"
        )
    };
}

/// 8 `vmla`: s16–s23 += A value `$a` × B row s8–s15.
macro_rules! mla_1x8 {
    ($a:literal) => {
        concat!(
            "vmla.f32 s16, ",
            $a,
            ", s8\n vmla.f32 s17, ",
            $a,
            ", s9\n vmla.f32 s18, ",
            $a,
            ", s10\n vmla.f32 s19, ",
            $a,
            ", s11\n",
            "vmla.f32 s20, ",
            $a,
            ", s12\n vmla.f32 s21, ",
            $a,
            ", s13\n vmla.f32 s22, ",
            $a,
            ", s14\n vmla.f32 s23, ",
            $a,
            ", s15\n"
        )
    };
}

/// The 4×4 micro-kernel: `$load_b` loads the next B row into s8–s11 and advances `{b}`; the
/// `$post` pieces run on the accumulators before the store. The odd k step runs first (`lsrs`
/// leaves k's low bit in C and `k/2 = 0` in Z; the single step does not touch the flags), then
/// the k/2 double steps. After the loop the A row registers are reused for the [`Out`] fields.
macro_rules! tile_4x4 {
    ($k:expr, $rows:expr, $b:expr, $ldb:expr, $out:expr, $load_b:ident, [$($post:ident),*]) => {
        asm!(
            "vldmia {z}, {{s16-s31}}",
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            "vldmia {a0}!, {{s0}}",
            "vldmia {a1}!, {{s2}}",
            "vldmia {a2}!, {{s4}}",
            "vldmia {a3}!, {{s6}}",
            $load_b!(),
            mla_4x4!("s0", "s2", "s4", "s6"),
            "3:",
            "beq 4f",
            "2:",
            "vldmia {a0}!, {{s0-s1}}",
            "vldmia {a1}!, {{s2-s3}}",
            "vldmia {a2}!, {{s4-s5}}",
            "vldmia {a3}!, {{s6-s7}}",
            $load_b!(),
            mla_4x4!("s0", "s2", "s4", "s6"),
            $load_b!(),
            mla_4x4!("s1", "s3", "s5", "s7"),
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            "ldr {a0}, [{o}]",
            "ldr {a1}, [{o}, #4]",
            "ldr {bias}, [{o}, #8]",
            $($post!(),)*
            "vstmia {a0}, {{s16-s19}}",
            "add {a0}, {a0}, {a1}",
            "vstmia {a0}, {{s20-s23}}",
            "add {a0}, {a0}, {a1}",
            "vstmia {a0}, {{s24-s27}}",
            "add {a0}, {a0}, {a1}",
            "vstmia {a0}, {{s28-s31}}",
            z = in(reg) ZEROS.as_ptr(),
            n = inout(reg) $k => _,
            a0 = inout(reg) $rows[0] => _,
            a1 = inout(reg) $rows[1] => _,
            a2 = inout(reg) $rows[2] => _,
            bias = out(reg) _,
            a3 = inout(reg) $rows[3] => _,
            b = inout(reg) $b => _,
            ldb = in(reg) $ldb,
            o = in(reg) $out as *const Out,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        )
    };
}

/// The 1×8 micro-kernel: `$load_b` loads the next B row into s8–s15 and advances `{b}`; odd k
/// step first, as in [`tile_4x4`]; `$post` pieces before the store.
macro_rules! tile_1x8 {
    ($k:expr, $a:expr, $b:expr, $ldb:expr, $c:expr, $bias:expr, $load_b:ident, [$($post:ident),*]) => {
        asm!(
            "vldmia {z}, {{s16-s23}}",
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            "vldmia {a}!, {{s0}}",
            $load_b!(),
            mla_1x8!("s0"),
            "3:",
            "beq 4f",
            "2:",
            "vldmia {a}!, {{s0-s1}}",
            $load_b!(),
            mla_1x8!("s0"),
            $load_b!(),
            mla_1x8!("s1"),
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            "@ bias row at {bias}",
            $($post!(),)*
            "vstmia {c}, {{s16-s23}}",
            z = in(reg) ZEROS.as_ptr(),
            n = inout(reg) $k => _,
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            ldb = in(reg) $ldb,
            c = in(reg) $c,
            bias = in(reg) $bias,
            out("s0") _, out("s1") _, out("s4") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        )
    };
}

/// First half (columns 0..8) of the next f32 B row of 16 into s8–s15, `{b} += 32`.
macro_rules! b16a_f32 {
    () => {
        "vldmia {b}!, {{s8-s15}}\n"
    };
}

/// Second half (columns 8..16) of the B row into s8–s15, `{b} += {ldb}` (= ldb − 32 bytes).
macro_rules! b16b_f32 {
    () => {
        "vldmia {b}, {{s8-s15}}\n add {b}, {b}, {ldb}\n"
    };
}

/// First half of the next f16 B row of 16 (16 bytes) widened into s8–s15, `{b} += 16`.
macro_rules! b16a_f16 {
    () => {
        concat!(
            "vldmia {b}!, {{s12-s15}}\n",
            "vcvtb.f32.f16 s8, s12\n vcvtt.f32.f16 s9, s12\n vcvtb.f32.f16 s10, s13\n vcvtt.f32.f16 s11, s13\n",
            "vcvtb.f32.f16 s12, s14\n vcvtt.f32.f16 s13, s14\n vcvtb.f32.f16 s14, s15\n vcvtt.f32.f16 s15, s15\n"
        )
    };
}

/// Second half of the f16 B row widened into s8–s15, `{b} += {ldb}` (= ldb − 16 bytes).
macro_rules! b16b_f16 {
    () => {
        concat!(
            "vldmia {b}, {{s12-s15}}\n add {b}, {b}, {ldb}\n",
            "vcvtb.f32.f16 s8, s12\n vcvtt.f32.f16 s9, s12\n vcvtb.f32.f16 s10, s13\n vcvtt.f32.f16 s11, s13\n",
            "vcvtb.f32.f16 s12, s14\n vcvtt.f32.f16 s13, s14\n vcvtb.f32.f16 s14, s15\n vcvtt.f32.f16 s15, s15\n"
        )
    };
}

/// 8 `vmla`: s24–s31 += A value `$a` × B half-row s8–s15.
macro_rules! mla_1x8_hi {
    ($a:literal) => {
        concat!(
            "vmla.f32 s24, ",
            $a,
            ", s8\n vmla.f32 s25, ",
            $a,
            ", s9\n vmla.f32 s26, ",
            $a,
            ", s10\n vmla.f32 s27, ",
            $a,
            ", s11\n",
            "vmla.f32 s28, ",
            $a,
            ", s12\n vmla.f32 s29, ",
            $a,
            ", s13\n vmla.f32 s30, ",
            $a,
            ", s14\n vmla.f32 s31, ",
            $a,
            ", s15\n"
        )
    };
}

/// One k step of the 1×16 tile with A value `$a`: both B halves, 16 `vmla`.
macro_rules! step_1x16 {
    ($a:literal, $load_a:ident, $load_b:ident) => {
        concat!($load_a!(), mla_1x8!($a), $load_b!(), mla_1x8_hi!($a))
    };
}

/// 1×16 tile: the 16 biases at `{bias}` into s8–s15 twice, added to s16–s31.
macro_rules! bias_1x16 {
    () => {
        concat!(
            "vldmia {bias}, {{s8-s15}}\n",
            "vadd.f32 s16, s16, s8\n vadd.f32 s17, s17, s9\n vadd.f32 s18, s18, s10\n vadd.f32 s19, s19, s11\n",
            "vadd.f32 s20, s20, s12\n vadd.f32 s21, s21, s13\n vadd.f32 s22, s22, s14\n vadd.f32 s23, s23, s15\n",
            "add {bias}, {bias}, #32\n",
            "vldmia {bias}, {{s8-s15}}\n",
            "vadd.f32 s24, s24, s8\n vadd.f32 s25, s25, s9\n vadd.f32 s26, s26, s10\n vadd.f32 s27, s27, s11\n",
            "vadd.f32 s28, s28, s12\n vadd.f32 s29, s29, s13\n vadd.f32 s30, s30, s14\n vadd.f32 s31, s31, s15\n"
        )
    };
}

/// 1×16 tile: ReLU of s16–s31 (zero in s4, from `{n}` = 0).
macro_rules! relu_1x16 {
    () => {
        concat!(
            "vmov s4, {n}\n",
            relu1!("s16"),
            relu1!("s17"),
            relu1!("s18"),
            relu1!("s19"),
            relu1!("s20"),
            relu1!("s21"),
            relu1!("s22"),
            relu1!("s23"),
            relu1!("s24"),
            relu1!("s25"),
            relu1!("s26"),
            relu1!("s27"),
            relu1!("s28"),
            relu1!("s29"),
            relu1!("s30"),
            relu1!("s31")
        )
    };
}

/// The 1×16 micro-kernel (a row left over, e.g. a batch-1 fc or a 1×1-pixel layer):
/// accumulators s16–s31, each B row loaded as two halves into s8–s15 (`$load_lo` advances `{b}`
/// past the first half, `$load_hi` to the next row); odd k step first, as in [`tile_4x4`].
macro_rules! tile_1x16 {
    ($k:expr, $a:expr, $b:expr, $ldb_rest:expr, $c:expr, $bias:expr, $load_lo:ident, $load_hi:ident, [$($post:ident),*]) => {
        asm!(
            "vldmia {z}, {{s16-s31}}",
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            "vldmia {a}!, {{s0}}",
            step_1x16!("s0", $load_lo, $load_hi),
            "3:",
            "beq 4f",
            "2:",
            "vldmia {a}!, {{s0-s1}}",
            step_1x16!("s0", $load_lo, $load_hi),
            step_1x16!("s1", $load_lo, $load_hi),
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            "@ bias row at {bias}",
            $($post!(),)*
            "vstmia {c}, {{s16-s31}}",
            z = in(reg) ZEROS.as_ptr(),
            n = inout(reg) $k => _,
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            ldb = in(reg) $ldb_rest,
            c = in(reg) $c,
            bias = inout(reg) $bias => _,
            out("s0") _, out("s1") _, out("s4") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            out("s24") _, out("s25") _, out("s26") _, out("s27") _, out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            options(nostack),
        )
    };
}

/// Stores `C[r][0..4] = post(Σ_p A[r][p]·B[p][0..4])` for `r < 4` (k order, `vmla`).
///
/// # Safety
/// `a` points at A's row 0 with rows `lda` f32 apart, each readable for `k ≥ 1` f32; `b` at
/// B's row 0 (bytes) with rows `ldb_bytes` apart, each readable for 4 elements of `kind`
/// (4-byte aligned); `out.c` is writable at 4 f32 of each of 4 rows `out.ldc_bytes` apart;
/// `out.bias` is readable for 4 f32 unless `post` is `None`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_4x4(
    kind: BKind,
    post: Post,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb_bytes: usize,
    out: &Out,
) {
    // SAFETY: the caller's guarantee covers every address the kernel reads and writes.
    unsafe {
        let rows = [a, a.add(lda), a.add(2 * lda), a.add(3 * lda)];
        match (kind, post) {
            (BKind::F32, Post::None) => tile_4x4!(k, rows, b, ldb_bytes, out, b4_f32, [nothing]),
            (BKind::F32, Post::Bias) => tile_4x4!(k, rows, b, ldb_bytes, out, b4_f32, [bias_4x4]),
            (BKind::F32, Post::BiasRelu) => tile_4x4!(k, rows, b, ldb_bytes, out, b4_f32, [bias_4x4, relu_4x4]),
            (BKind::F16, Post::None) => tile_4x4!(k, rows, b, ldb_bytes, out, b4_f16, [nothing]),
            (BKind::F16, Post::Bias) => tile_4x4!(k, rows, b, ldb_bytes, out, b4_f16, [bias_4x4]),
            (BKind::F16, Post::BiasRelu) => tile_4x4!(k, rows, b, ldb_bytes, out, b4_f16, [bias_4x4, relu_4x4]),
        }
    }
}

/// Stores `C[0..8] = post(Σ_p A[p]·B[p][0..8])` (k order, `vmla`).
///
/// # Safety
/// `a` is readable for `k ≥ 1` f32; `b` points at B's row 0 (bytes) with rows `ldb_bytes`
/// apart, each readable for 8 elements of `kind` (4-byte aligned); `c` is writable for 8 f32;
/// `bias` is readable for 8 f32 unless `post` is `None`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_1x8(
    kind: BKind,
    post: Post,
    k: usize,
    a: *const f32,
    b: *const u8,
    ldb_bytes: usize,
    c: *mut f32,
    bias: *const f32,
) {
    // SAFETY: the caller's guarantee covers every address the kernel reads and writes.
    unsafe {
        match (kind, post) {
            (BKind::F32, Post::None) => tile_1x8!(k, a, b, ldb_bytes, c, bias, b8_f32, [nothing]),
            (BKind::F32, Post::Bias) => tile_1x8!(k, a, b, ldb_bytes, c, bias, b8_f32, [bias_1x8]),
            (BKind::F32, Post::BiasRelu) => tile_1x8!(k, a, b, ldb_bytes, c, bias, b8_f32, [bias_1x8, relu_1x8]),
            (BKind::F16, Post::None) => tile_1x8!(k, a, b, ldb_bytes, c, bias, b8_f16, [nothing]),
            (BKind::F16, Post::Bias) => tile_1x8!(k, a, b, ldb_bytes, c, bias, b8_f16, [bias_1x8]),
            (BKind::F16, Post::BiasRelu) => tile_1x8!(k, a, b, ldb_bytes, c, bias, b8_f16, [bias_1x8, relu_1x8]),
        }
    }
}

/// Stores `C[0..16] = post(Σ_p A[p]·B[p][0..16])` (k order, `vmla`).
///
/// # Safety
/// `a` is readable for `k ≥ 1` f32; `b` points at B's row 0 (bytes) with rows `ldb_bytes`
/// apart, each readable for 16 elements of `kind` (4-byte aligned); `c` is writable for 16
/// f32; `bias` is readable for 16 f32 unless `post` is `None`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_1x16(
    kind: BKind,
    post: Post,
    k: usize,
    a: *const f32,
    b: *const u8,
    ldb_bytes: usize,
    c: *mut f32,
    bias: *const f32,
) {
    // The first half-row load advances `{b}` by 8 elements; the second adds the rest of ldb.
    let rest = ldb_bytes - 8 * kind.size();
    // SAFETY: the caller's guarantee covers every address the kernel reads and writes.
    unsafe {
        match (kind, post) {
            (BKind::F32, Post::None) => tile_1x16!(k, a, b, rest, c, bias, b16a_f32, b16b_f32, [nothing]),
            (BKind::F32, Post::Bias) => tile_1x16!(k, a, b, rest, c, bias, b16a_f32, b16b_f32, [bias_1x16]),
            (BKind::F32, Post::BiasRelu) => {
                tile_1x16!(k, a, b, rest, c, bias, b16a_f32, b16b_f32, [bias_1x16, relu_1x16])
            }
            (BKind::F16, Post::None) => tile_1x16!(k, a, b, rest, c, bias, b16a_f16, b16b_f16, [nothing]),
            (BKind::F16, Post::Bias) => tile_1x16!(k, a, b, rest, c, bias, b16a_f16, b16b_f16, [bias_1x16]),
            (BKind::F16, Post::BiasRelu) => {
                tile_1x16!(k, a, b, rest, c, bias, b16a_f16, b16b_f16, [bias_1x16, relu_1x16])
            }
        }
    }
}

/// The walk of [`segmented_1x8`] in assembly: accumulators s16–s23 cleared from `{t}` = 0,
/// one A value and one B row per step; `{n}` (segments left) is 0 when `$post` runs.
macro_rules! segmented_1x8 {
    ($a:expr, $b:expr, $ldb:expr, $seg:expr, $nky:expr, $c:expr, $bias:expr, [$($post:ident),*]) => {
        asm!(
            "movs {t}, #0",
            "vmov s16, s17, {t}, {t}",
            "vmov s18, s19, {t}, {t}",
            "vmov s20, s21, {t}, {t}",
            "vmov s22, s23, {t}, {t}",
            "2:",
            "ldr {t}, [{p}]",
            "3:",
            "vldmia {a}!, {{s0}}",
            "vldmia {b}, {{s8-s15}}",
            "add {b}, {b}, {ldb}",
            mla_1x8!("s0"),
            "subs {t}, {t}, #1",
            "bne 3b",
            "ldr {t}, [{p}, #4]",
            "add {a}, {a}, {t}",
            "ldr {t}, [{p}, #8]",
            "add {b}, {b}, {t}",
            "subs {n}, {n}, #1",
            "bne 2b",
            $($post!(),)*
            "vstmia {c}, {{s16-s23}}",
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            ldb = in(reg) $ldb,
            p = in(reg) $seg as *const Segments,
            n = inout(reg) $nky => _,
            t = out(reg) _,
            c = in(reg) $c,
            bias = in(reg) $bias,
            out("s0") _, out("s4") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        )
    };
}

/// Where a [`segmented_1x8`] product walks: `nky` segments of `len` A values and B rows.
#[repr(C)]
pub(crate) struct Segments {
    /// A values (and B rows) per segment, ≥ 1.
    pub len: usize,
    /// Bytes from the end of one A segment to the start of the next.
    pub a_skip: usize,
    /// Bytes from the end of one B segment (`len` rows) to the start of the next.
    pub b_skip: usize,
}

/// Stores `c[0..8] = act(Σ_p a_p·B[p][0..8] + bias[0..8])`, with `p` running over `nky`
/// segments of `seg.len` consecutive A values and B rows (`ldb_bytes` apart), the pointers
/// jumping by `seg.a_skip` / `seg.b_skip` bytes between segments: one output pixel of a direct
/// KxK conv (segments = in-bounds kernel rows). Same arithmetic as the GEMM (`vmla` in p order
/// from 0, then `+ bias`, then ReLU).
///
/// # Safety
/// Every A value and every 8-f32 B row the walk reaches is readable, `bias` is readable and
/// `c` writable for 8 f32, all 4-byte aligned; `nky ≥ 1`, `seg.len ≥ 1`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn segmented_1x8(
    relu: bool,
    a: *const f32,
    b: *const f32,
    ldb_bytes: usize,
    seg: &Segments,
    nky: usize,
    c: *mut f32,
    bias: *const f32,
) {
    // SAFETY: the caller's guarantee covers every address read and written.
    unsafe {
        if relu {
            segmented_1x8!(a, b, ldb_bytes, seg, nky, c, bias, [bias_1x8, relu_1x8])
        } else {
            segmented_1x8!(a, b, ldb_bytes, seg, nky, c, bias, [bias_1x8])
        }
    }
}
