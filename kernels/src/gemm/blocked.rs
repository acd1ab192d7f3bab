//! The blocked GEMM loop nest shared by the SIMD paths, and operand packing.
//!
//! Loop order (BLIS-style, adapted to a fixed stack budget):
//!
//! ```text
//! for p0 in k by KC:                      β applies on the first KC block only
//!   for i0 in m by MC:   pack op(A)[i0.., p0..] → MR-row panels    (block stays in L2)
//!     for j0 in n by NR: pack op(B)[p0.., j0..] → one NR-column panel (stays in L1)
//!       for each MR-row panel: micro-kernel MR×NR over kc, α/β epilogue into C
//! ```
//!
//! A k up to the kernel's `sweep_k` with A read in place turns the inner two loops around:
//! B's panels are packed 64 KiB at a time and each MR-row panel runs across them ([`sweep`]).
//!
//! k up to the kernel's `kc_one` is one block (one pass over C); a deeper k is cut into equal
//! KC blocks (at most the kernel's KC, a multiple of 8). MC is as many rows as the A buffer
//! holds at that depth (MC·KC is fixed), so a short k gets a tall A block.
//! Each element of A is packed once — or, for a kernel with `DIRECT_A` (AVX2, AVX-512, NEON) and an
//! f32 A (transposed or not), not at all: the micro-kernel broadcasts it in place, an edge of
//! fewer than MR rows as tiles of 4, 2 and 1 rows (AVX-512 64×64×288 71.1–71.4 → 73.4–76.3 %,
//! MobileNetV1's train step 1630–1736 → 1726–1778 img/s in alternating rounds: the packed
//! 4-row edge of a 64-row im2col tile was ~5 % of its time, the compiled packer storing
//! through `vscatterqps`) — except a transposed A whose stride aliases in L1 ([`aliases`]),
//! copied block by block to a padded stride first; B is packed `⌈m/MC⌉` times, which costs
//! about `1/(2·MC)` of the arithmetic, except an f32 B that already is one panel (n = NR =
//! ldb, untransposed, on a line), read in place (AVX-512 64×64×576, a 3x3 conv's 64-row
//! im2col tile, 72.1–72.5 → 73.5–75.2 %). f16 operands are widened to f32 while packing (by
//! the kernel's [`MicroKernel::widen`], i.e. F16C / NEON `fcvtl`), never in the micro-kernel.
//! Packed panels are zero-padded to MR/NR lanes; a tile's columns past n are cut in the
//! micro-kernel's epilogue, its rows past m by the packed padding or, in place, by a shorter
//! tile.

use super::{scalar, GemmShape, Trans};
use crate::elem::{as_f32, Elem};
use core::mem::MaybeUninit;

/// A 64-byte-aligned buffer of `N` f32, left uninitialised until it is packed (so a call does
/// not pay for zeroing ~150 KB of stack).
#[repr(C, align(64))]
pub(super) struct Buf<const N: usize>(MaybeUninit<[f32; N]>);

impl<const N: usize> Buf<N> {
    /// An uninitialised buffer.
    #[inline(always)]
    pub(super) fn new() -> Self {
        Buf(MaybeUninit::uninit())
    }
    /// Pointer to its first element (64-byte aligned).
    #[inline(always)]
    pub(super) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.0.as_mut_ptr() as *mut f32
    }
}

/// One ISA's register-blocked micro-kernel and its widening routine.
pub(super) trait MicroKernel {
    /// Rows of a tile (lanes of an A panel).
    const MR: usize;
    /// Columns of a tile (lanes of a B panel).
    const NR: usize;

    /// Writes `src[i]` widened to f32 to `dst.add(i)` for every `i < src.len()`.
    ///
    /// # Safety
    /// `dst` is valid for `src.len()` f32 writes and the CPU supports the kernel's ISA.
    unsafe fn widen<E: Elem>(src: &[E], dst: *mut f32);

    /// `C[..mr][..nr] = α·(Ã·B̃) + β·C` (only written when `β = 0`), where `Ã` is an MR-row
    /// panel `a[p·MR + r]` and `B̃` an NR-column panel `b[p·NR + j]`, both `kc` deep.
    ///
    /// # Safety
    /// `a` is readable for `kc·MR` f32, `b` for `kc·NR` f32 and 32-byte aligned; `c` is
    /// valid for reads and writes at `c.add(r·ldc + j)` for `r < mr ≤ MR`, `j < nr ≤ NR`;
    /// `kc ≥ 1`; the CPU supports the kernel's ISA.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        alpha: f32,
        beta: f32,
    );

    /// Whether the kernel implements [`MicroKernel::tile_direct`]; then the loop nest reads
    /// every tile of an f32 A in place instead of packing it (the broadcasts of a
    /// broadcast-style kernel need no A panel; packing A was ~20 % of a distillation step,
    /// and a transposed A — the weight gradient `Xᵀ·dY` — was packed on every KC block).
    const DIRECT_A: bool = false;

    /// [`MicroKernel::tile`] with A read in place for the `R` rows of the tile: `A[r][p]` at
    /// `a[r·lda + p]`, or at `a[p·lda + r]` when `trans` (op(A) = Aᵀ), `r < R`, for `R` one of
    /// MR, 4, 2, 1 (the loop nest cuts an edge panel so, see [`edge_rows`]). Only called when
    /// [`MicroKernel::DIRECT_A`]; this default (never used) is a plain loop.
    ///
    /// # Safety
    /// As [`MicroKernel::tile`] with `mr = R ∈ {MR, 4, 2, 1}`, and A readable at those
    /// positions for `r < R`, `p < kc` (no row past the tile's may be read).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_direct<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        trans: bool,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        alpha: f32,
        beta: f32,
    ) {
        for r in 0..R {
            for j in 0..nr {
                let mut acc = 0.0f32;
                for p in 0..kc {
                    // SAFETY: r < R, p < kc, j < nr ≤ NR: inside A and the B panel (caller).
                    let ai = if trans { p * lda + r } else { r * lda + p };
                    acc += unsafe { *a.add(ai) * *b.add(p * Self::NR + j) };
                }
                let t = alpha * acc;
                // SAFETY: r < R, j < nr: inside C (caller).
                unsafe {
                    let d = c.add(r * ldc + j);
                    *d = if beta == 0.0 { t } else { t + beta * *d };
                }
            }
        }
    }
}

/// Packs an `L`-lane, `kc`-deep panel of a stored matrix `x` (row stride `ld`) into
/// `dst[p·L + l]`: lane `l < nl` at depth `p` is `x[(d0+p)·ld + lane0+l]` when the lanes are
/// contiguous in memory (`lanes_contig`), else `x[(lane0+l)·ld + d0+p]`. Lanes `≥ nl` are 0.
///
/// # Safety
/// `dst` is valid for `kc·L` f32 writes; every element named above is inside `x` (else this
/// panics); the CPU supports `K`'s ISA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_panel<K: MicroKernel, E: Elem, const L: usize>(
    x: &[E],
    lanes_contig: bool,
    ld: usize,
    lane0: usize,
    nl: usize,
    d0: usize,
    kc: usize,
    dst: *mut f32,
) {
    if let Some(xf) = as_f32(x) {
        // f32 needs no widening: copy with fixed-size moves (`memcpy` calls for these short
        // runs cost more than the copy: they were 18 % of a distillation step).
        // SAFETY: forwarded contract.
        unsafe { pack_panel_f32::<L>(xf, lanes_contig, ld, lane0, nl, d0, kc, dst) };
        return;
    }
    if lanes_contig {
        for p in 0..kc {
            let run = &x[(d0 + p) * ld + lane0..][..nl];
            // SAFETY: p < kc, so `dst.add(p·L)` starts L in-bounds slots; `nl ≤ L` are widened
            // and the rest zeroed.
            unsafe {
                let out = dst.add(p * L);
                K::widen(run, out);
                for l in nl..L {
                    out.add(l).write(0.0);
                }
            }
        }
    } else {
        // Widen CHUNK-deep pieces of the nl rows into `tmp` (rows ≥ nl stay 0), then write
        // them out depth-major so the stores into `dst` are contiguous.
        const CHUNK: usize = 32;
        let mut tmp = [[0.0f32; CHUNK]; L];
        let mut c0 = 0;
        while c0 < kc {
            let len = CHUNK.min(kc - c0);
            for (l, t) in tmp.iter_mut().enumerate().take(nl) {
                let run = &x[(lane0 + l) * ld + d0 + c0..][..len];
                // SAFETY: `len ≤ CHUNK` slots of `t` are written.
                unsafe { K::widen(run, t.as_mut_ptr()) };
            }
            for q in 0..len {
                // SAFETY: c0 + q < kc: the L slots at (c0+q)·L are inside the `kc·L` of `dst`.
                let out = unsafe { dst.add((c0 + q) * L) };
                for (l, t) in tmp.iter().enumerate() {
                    // SAFETY: l < L, see above.
                    unsafe { out.add(l).write(t[q]) };
                }
            }
            c0 += CHUNK;
        }
    }
}

/// [`pack_panel`] for f32 `x`: full panels as one `[f32; L]` move per depth, gathered lanes
/// read straight from their `nl` rows (no staging buffer).
///
/// # Safety
/// As [`pack_panel`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_panel_f32<const L: usize>(
    x: &[f32],
    lanes_contig: bool,
    ld: usize,
    lane0: usize,
    nl: usize,
    d0: usize,
    kc: usize,
    dst: *mut f32,
) {
    if lanes_contig {
        for p in 0..kc {
            let run = &x[(d0 + p) * ld + lane0..][..nl];
            // SAFETY: p < kc, so `dst.add(p·L)` starts L in-bounds slots; a full run is one
            // unaligned `[f32; L]` move, a partial one is copied and zero-padded.
            unsafe {
                let out = dst.add(p * L);
                if nl == L {
                    (out as *mut [f32; L]).write_unaligned((run.as_ptr() as *const [f32; L]).read_unaligned());
                } else {
                    for (l, &v) in run.iter().enumerate() {
                        out.add(l).write(v);
                    }
                    for l in nl..L {
                        out.add(l).write(0.0);
                    }
                }
            }
        }
    } else {
        // Each lane is a row of x from column d0: check the kc elements once, then read them
        // through pointers, depth-major so the stores into `dst` are contiguous.
        let mut rows = [core::ptr::null::<f32>(); L];
        for (l, r) in rows.iter_mut().enumerate().take(nl) {
            *r = x[(lane0 + l) * ld + d0..][..kc].as_ptr();
        }
        for p in 0..kc {
            // SAFETY: p < kc: `dst.add(p·L)` starts L in-bounds slots, and each of the first nl
            // row pointers has kc readable elements (checked above).
            unsafe {
                let out = dst.add(p * L);
                for (l, r) in rows.iter().enumerate() {
                    out.add(l).write(if l < nl { *r.add(p) } else { 0.0 });
                }
            }
        }
    }
}

/// A kernel's cache blocking, in f32 elements.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blocking {
    /// The deepest KC block when k is cut into several.
    pub kc: usize,
    /// A k up to this runs as one block (`≥ kc`): one pass over C, not two short ones.
    pub kc_one: usize,
    /// Rows of an A block at depth `kc` (a multiple of MR); a shallower block takes
    /// proportionally more rows, a deeper one (up to `kc_one`) fewer: `mc·kc` is fixed.
    pub mc: usize,
    /// Bytes of an A block plus the C rows it updates (`rows·(kc + n)·4`) above which a
    /// shallow block takes fewer rows (never fewer than `mc`): A and C then stay in L2 while
    /// every B panel passes over them. `usize::MAX`: no such limit.
    pub ac_bytes: usize,
    /// A k up to this (one block) with A read in place runs row panel by row panel over
    /// blocks of B panels packed side by side ([`SWEEP_LEN`] f32, see [`sweep`]); 0: never.
    pub sweep_k: usize,
}

/// f32 slots of a block of B panels that the row panels of a short k sweep ([`sweep`]): 64 KiB
/// (8 panels of 16 columns at k = 128, 16 at k = 64), in L2 beside A's rows. Measured on the
/// AMD EPYC VM (`tinykd bench gemm --trans-a`, two alternating rounds): 32 KiB 512×2048×64
/// 78–81 % of the peak, 128×2048×64 74–75; 64 KiB 81–83, 78–79; 128 KiB 81–83, 78–79.
pub(super) const SWEEP_LEN: usize = 16 * 1024;

impl Blocking {
    /// What [`run`] needs of a blocking for `mr`-row panels: `mc` a positive multiple of `mr`,
    /// `1 ≤ kc ≤ kc_one`, and a block of depth `kc_one` still holds one panel, packed or
    /// copied at a padded stride ([`copied_rows`]); a sweep's block holds at least one
    /// `nr`-column panel and its k is one block.
    pub(super) const fn valid(&self, mr: usize, nr: usize) -> bool {
        self.mc > 0
            && self.mc.is_multiple_of(mr)
            && self.kc >= 1
            && self.kc <= self.kc_one
            && self.kc_one * mr <= self.a_len()
            && self.a_len() / self.kc_one >= 32 + mr
            && self.sweep_k <= self.kc_one
            && self.sweep_k * nr <= SWEEP_LEN
    }
    /// f32 slots of the A packing buffer.
    pub(super) const fn a_len(&self) -> usize {
        self.mc * self.kc
    }
    /// f32 slots of the B packing buffer for `nr`-column panels: one panel `kc_one` deep, or
    /// a sweep's block.
    pub(super) const fn b_len(&self, nr: usize) -> usize {
        let one = self.kc_one * nr;
        if self.sweep_k > 0 && SWEEP_LEN > one {
            SWEEP_LEN
        } else {
            one
        }
    }
}

/// `C = α·op(A)·op(B) + β·C` by the loop nest in the module docs, with packing buffers
/// `abuf` ([`Blocking::a_len`] f32) and `bbuf` ([`Blocking::b_len`]`(NR)` f32).
///
/// # Safety
/// The slices satisfy the length checks of [`super::gemm`] for `s`; `m, n ≥ 1`; `abuf` and
/// `bbuf` are valid for reads and writes of the sizes above and 32-byte aligned;
/// `blk.valid(MR, NR)`; the CPU supports `K`'s ISA. (`MR`, `NR` repeat `K::MR`, `K::NR` as const
/// parameters; a mismatch fails to compile.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run<K: MicroKernel, A: Elem, B: Elem, const MR: usize, const NR: usize>(
    s: &GemmShape,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
    abuf: *mut f32,
    blk: Blocking,
    bbuf: *mut f32,
) {
    const { assert!(MR == K::MR && NR == K::NR) };
    debug_assert!(blk.valid(MR, NR));
    if s.k == 0 {
        scalar::gemm(s, alpha, a, b, beta, c);
        return;
    }
    let cp = c.as_mut_ptr();
    // An f32 A is read in place (rows `lda` apart, or columns when transposed; the caller's
    // length check covers them), an edge panel by tiles of fewer rows (`edge_rows`).
    let a_direct = match as_f32(a) {
        Some(af) if K::DIRECT_A => Some(af.as_ptr()),
        _ => None,
    };
    let trans = s.ta == Trans::T;
    // Unless its stride would alias in L1 ([`aliases`]): then each A block is copied into
    // `abuf` at a stride that does not, and read there (not worth it for a block that only
    // one B panel reads).
    let restride = a_direct.is_some() && s.n > NR && aliases(s.lda, trans, MR);
    // An f32, untransposed B of exactly NR columns stored NR apart already is its own panel
    // (row p of a KC block at `b[(p0 + p)·NR ..]`): read in place when line-aligned, as the
    // kernels' aligned loads need. (A 3x3 conv with 64 outputs on AVX-512 repacked its whole
    // weight matrix for every 64-row im2col tile.)
    let b_direct = match as_f32(b) {
        Some(bf) if s.tb == Trans::N && s.n == NR && s.ldb == NR && (bf.as_ptr() as usize).is_multiple_of(64) => {
            Some(bf.as_ptr())
        }
        _ => None,
    };
    // One block up to kc_one, else equal blocks of at most kc (k = 576 runs as 3×192, not
    // 256 + 256 + 64), rounded up to a multiple of 8.
    let kc_blk =
        if s.k <= blk.kc_one { s.k } else { s.k.div_ceil(s.k.div_ceil(blk.kc)).next_multiple_of(8).min(blk.kc) };
    // As many rows as the A buffer holds at that depth: fewer B repacks when k is short.
    let mc_blk = if restride { copied_rows::<MR>(blk.a_len(), kc_blk) } else { (blk.a_len() / kc_blk) / MR * MR };
    // Fewer where an A block and its rows of C would crowd L2 (a short k: ~600 rows), but not
    // below the blocking's MC.
    let mc_blk = mc_blk.min(blk.mc.max(blk.ac_bytes / 4 / (kc_blk + s.n) / MR * MR));
    // The copied block's stride (A stored k×m: a depth holds mc_blk values).
    let ld_copy = padded_stride(mc_blk);
    // A short k with A in place and B to pack: row panels sweep blocks of B panels.
    let sweeps = a_direct.is_some() && b_direct.is_none() && s.k <= blk.sweep_k && s.n > NR;
    let mut p0 = 0;
    while p0 < s.k {
        let kc = kc_blk.min(s.k - p0);
        let beta_p = if p0 == 0 { beta } else { 1.0 };
        let mut i0 = 0;
        while i0 < s.m {
            let mc = mc_blk.min(s.m - i0);
            let panels = mc.div_ceil(MR);
            // Where the tiles read A in place: the block's first element (row i0, depth p0) and
            // its stride, in A itself or in the block's copy at `ld_copy`.
            let a_at = match a_direct {
                Some(ap) if restride => {
                    // SAFETY: the block (depths p0..p0+kc of columns i0..i0+mc of the stored
                    // k×m A) is inside A by the caller's length checks; its copy, `kc·ld_copy`
                    // f32 (kc ≤ kc_blk, mc ≤ mc_blk), fits `abuf` by `copied_rows`.
                    unsafe { copy_block(ap, s.lda, i0, mc, p0, kc, abuf, ld_copy) };
                    Some((abuf as *const f32, ld_copy))
                }
                // SAFETY: element (i0, p0) of op(A) is inside A (caller's length checks).
                Some(ap) => Some((unsafe { ap.add(if trans { p0 * s.lda + i0 } else { i0 * s.lda + p0 }) }, s.lda)),
                None => None,
            };
            // An in-place A packs nothing.
            for ir in (0..panels).filter(|_| a_direct.is_none()) {
                let mr = MR.min(mc - ir * MR);
                // SAFETY: panel `ir` occupies abuf[ir·MR·kc ..][.. MR·kc], inside
                // `a_len()` since ir < ⌈mc/MR⌉ ≤ mc_blk/MR and mc_blk·kc ≤ mc_blk·kc_blk ≤
                // a_len() (kc ≤ kc_blk); the A elements read are inside `a` by the caller's
                // length checks.
                unsafe {
                    pack_panel::<K, A, MR>(a, s.ta == Trans::T, s.lda, i0 + ir * MR, mr, p0, kc, abuf.add(ir * MR * kc))
                };
            }
            if let Some((a_blk, lda)) = a_at.filter(|_| sweeps) {
                let at = InPlace { a: a_blk, lda, trans };
                // SAFETY: a single k block (s.k ≤ sweep_k ≤ kc_one), A read in place at `at`
                // for rows i0..i0+mc (above), `bbuf` holds SWEEP_LEN f32 (b_len) and a
                // sweep_k-deep panel fits it (`valid`), C as the caller checked.
                unsafe { sweep::<K, B, MR, NR>(s, b, at, i0, mc, bbuf, cp, alpha, beta_p) };
                i0 += mc_blk;
                continue;
            }
            let mut j0 = 0;
            while j0 < s.n {
                let nr = NR.min(s.n - j0);
                let bp: *const f32 = match b_direct {
                    // SAFETY: rows p0..p0+kc of B, NR each (n = NR, j0 = 0), inside `b` by the
                    // caller's length checks.
                    Some(bp) => unsafe { bp.add(p0 * NR) },
                    None => {
                        // SAFETY: the B panel takes `kc·NR ≤ kc_one·NR` slots of `bbuf`; the B
                        // elements read are inside `b` by the caller's length checks.
                        unsafe { pack_panel::<K, B, NR>(b, s.tb == Trans::N, s.ldb, j0, nr, p0, kc, bbuf) };
                        bbuf
                    }
                };
                for ir in 0..panels {
                    let mr = MR.min(mc - ir * MR);
                    let row = i0 + ir * MR;
                    // SAFETY: the A panel (`kc·MR` f32) was packed above or A is read in place
                    // (rows < mr); the B panel `bp` holds `kc·NR` f32, 64-byte aligned (`bbuf`,
                    // or B itself, checked); the tile's C elements (row+r)·ldc + j0+j for
                    // r < mr, j < nr are inside `c` because the caller checked
                    // `c.len() ≥ (m−1)·ldc + n`.
                    unsafe {
                        match a_at {
                            Some((a_blk, lda)) => {
                                let ct = cp.add(row * s.ldc + j0);
                                let (at, ab) = (InPlace { a: a_blk, lda, trans }, (alpha, beta_p));
                                direct_tiles::<K, MR>(kc, at, row - i0, mr, bp, ct, s.ldc, nr, ab)
                            }
                            None => K::tile(
                                kc,
                                abuf.add(ir * MR * kc),
                                bp,
                                cp.add(row * s.ldc + j0),
                                s.ldc,
                                mr,
                                nr,
                                alpha,
                                beta_p,
                            ),
                        }
                    };
                }
                j0 += NR;
            }
            i0 += mc_blk;
        }
        p0 += kc_blk;
    }
}

/// Whether reading an f32 A in place at row stride `lda` (`trans`: op(A) = Aᵀ) would make
/// a tile's A lines collide in L1 with each other and with the B panel.
///
/// Transposed (a weight gradient `Xᵀ·dY`, `lda` = the layer's input channels), a tile walks
/// `kc` lines `4·lda` bytes apart; an L1 way is 4 KiB (64 sets of 64-byte lines), so a
/// multiple of 2 KiB keeps them in two sets or one, where they evict each other and the B
/// panel (AVX2 on Zen 2, in place → copied: 1024×256×128 54–55 → 87–89 %, 512×128×512 67–68
/// → 81–83, 512×512×512 66–69 → 77–83). A stride of 1 KiB or less, or an untransposed A
/// (its `MR` rows each stream along a line), measured no better copied (256³ transposed
/// 84–86 → 81–82 %).
fn aliases(lda: usize, trans: bool, mr: usize) -> bool {
    trans && lda >= mr && (lda * core::mem::size_of::<f32>()).is_multiple_of(2048)
}

/// The stride of a copied A block for runs of `len` f32: whole lines, an odd number of them
/// (consecutive runs then start in different L1 sets, 64 of them before one repeats).
fn padded_stride(len: usize) -> usize {
    let lines = len.div_ceil(16);
    (lines | 1) * 16
}

/// Rows of op(A) per block (a multiple of `MR`, at least `MR`) when its `kc_blk`-deep blocks
/// of a transposed A are copied into an `a_len`-f32 buffer: `kc_blk` runs of
/// `padded_stride(mc) ≤ mc + 32` f32 ([`Blocking::valid`] leaves room for `MR` rows).
fn copied_rows<const MR: usize>(a_len: usize, kc_blk: usize) -> usize {
    ((a_len / kc_blk).saturating_sub(32) / MR * MR).max(MR)
}

/// Copies columns `i0..i0+mc` of depths `p0..p0+kc` of a stored k×m A (row stride `lda`) into
/// `dst`, depth `p` at `dst[p·ld ..][..mc]`.
///
/// # Safety
/// `a[(p0+p)·lda + i0 + r]` is readable for `p < kc`, `r < mc`; `dst` is valid for `kc·ld`
/// f32 writes, `mc ≤ ld`, and does not overlap A.
#[allow(clippy::too_many_arguments)]
unsafe fn copy_block(a: *const f32, lda: usize, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut f32, ld: usize) {
    for p in 0..kc {
        // SAFETY: depth p's run is `mc` readable f32 of A and `mc ≤ ld` writable ones of `dst`
        // (caller).
        unsafe { core::ptr::copy_nonoverlapping(a.add((p0 + p) * lda + i0), dst.add(p * ld), mc) };
    }
}

/// An f32 A read in place from a tile's first row: `A[r][p]` at `a[r·lda + p]`, or at
/// `a[p·lda + r]` when `trans`.
#[derive(Clone, Copy)]
struct InPlace {
    a: *const f32,
    lda: usize,
    trans: bool,
}

/// `C[r][j] = α·Σ_p A[r0+r][p]·B̃[p][j] + β·C[r][j]` for `r < mr ≤ MR`, `j < nr`: the in-place
/// tiles ([`edge_rows`]) of rows `r0..r0+mr` of the block `at` against the B panel `bp`, into
/// C from `c` (the panel's first row and column).
///
/// # Safety
/// As [`MicroKernel::tile_direct`] for each tile: A readable at rows `r0..r0+mr`, depths
/// `< kc`; `bp` holds `kc·NR` f32, 32-byte aligned; C rows `< mr` (stride `ldc`) hold `nr`
/// values from `c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn direct_tiles<K: MicroKernel, const MR: usize>(
    kc: usize,
    at: InPlace,
    r0: usize,
    mr: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    (alpha, beta): (f32, f32),
) {
    let InPlace { a, lda, trans } = at;
    for (t0, rows) in edge_rows::<MR>(mr) {
        let r = r0 + t0;
        // SAFETY: row r of op(A) from the block's depth 0, C row t0 of the panel (caller).
        unsafe {
            let a = a.add(if trans { r } else { r * lda });
            let c = c.add(t0 * ldc);
            match rows {
                1 => K::tile_direct::<1>(kc, a, lda, trans, bp, c, ldc, nr, alpha, beta),
                2 => K::tile_direct::<2>(kc, a, lda, trans, bp, c, ldc, nr, alpha, beta),
                4 => K::tile_direct::<4>(kc, a, lda, trans, bp, c, ldc, nr, alpha, beta),
                _ => K::tile_direct::<MR>(kc, a, lda, trans, bp, c, ldc, nr, alpha, beta),
            }
        }
    }
}

/// Rows `i0..i0+mc` of `C = α·op(A)·op(B) + β·C` for a k that is one short block (`k ≤`
/// [`Blocking::sweep_k`]), A read in place at `at` (from row i0, depth 0): B's panels are
/// packed [`SWEEP_LEN`] f32 at a time, side by side in `bbuf`, and each MR-row panel runs its
/// tiles across them. With few FMAs per C value the tiles' stores weigh: in the column-panel
/// order of [`run`] an A block's rows each take one line per panel (144 scattered rows per
/// panel), here an A panel's 6 rows are written in runs of up to 256 columns, and the A panel
/// stays in L1 while the B block stays in L2. The same tiles over the same k: the same bits.
/// Measured on the AMD EPYC VM (two alternating rounds of `tinykd bench gemm --trans-a`):
/// 512×2048×64 72–79 → 84 % of the peak, 1024×512×64 79–82 → 84, 4096×128×64 (not transposed)
/// 83–88 → 86, 512×256×256 (deeper than `sweep_k`: a sweep there was 84–86 → 81) unchanged;
/// the ResNet50 train step's whole-batch weight gradients 36–38 → 30–32 thread-ms.
///
/// # Safety
/// `s.k ≤ kc_one`; op(A) rows `i0..i0+mc` are readable in place through `at` for all of k;
/// `bbuf` is valid for [`SWEEP_LEN`] f32 writes, 32-byte aligned, and `s.k·NR ≤ SWEEP_LEN`;
/// `b` and `c` satisfy the length checks of [`super::gemm`] for `s`; the CPU supports `K`'s
/// ISA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sweep<K: MicroKernel, B: Elem, const MR: usize, const NR: usize>(
    s: &GemmShape,
    b: &[B],
    at: InPlace,
    i0: usize,
    mc: usize,
    bbuf: *mut f32,
    c: *mut f32,
    alpha: f32,
    beta: f32,
) {
    let kc = s.k;
    let per = SWEEP_LEN / (kc * NR);
    let mut j0 = 0;
    while j0 < s.n {
        let np = (s.n - j0).div_ceil(NR).min(per);
        for q in 0..np {
            let jq = j0 + q * NR;
            // SAFETY: panel q takes bbuf[q·kc·NR ..][.. kc·NR], inside SWEEP_LEN as q < per;
            // the B elements read are inside `b` (caller's length checks).
            unsafe {
                pack_panel::<K, B, NR>(b, s.tb == Trans::N, s.ldb, jq, NR.min(s.n - jq), 0, kc, bbuf.add(q * kc * NR))
            };
        }
        for r in (0..mc).step_by(MR) {
            let mr = MR.min(mc - r);
            for q in 0..np {
                let jq = j0 + q * NR;
                // SAFETY: rows i0+r..i0+r+mr < m of op(A) in place (caller), the packed panel q
                // (kc·NR f32, 32-byte aligned: kc·NR·4 is a multiple of 64), C's rows and
                // columns jq..jq+nr ≤ n inside `c` (caller's length checks).
                unsafe {
                    let bp = bbuf.add(q * kc * NR);
                    let ct = c.add((i0 + r) * s.ldc + jq);
                    direct_tiles::<K, MR>(kc, at, r, mr, bp, ct, s.ldc, NR.min(s.n - jq), (alpha, beta));
                }
            }
        }
        j0 += np * NR;
    }
}

/// The in-place tiles that cover a panel of `mr ≤ MR` rows: `(first row, rows)` with rows
/// MR for a full panel, else 4, 2 and 1 (5 = 4 + 1, 3 = 2 + 1), so that no tile reads a row
/// of A past the panel's last.
pub(super) fn edge_rows<const MR: usize>(mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut r0 = 0;
    core::iter::from_fn(move || {
        let left = mr - r0;
        let rows = match left {
            0 => return None,
            _ if left == MR => MR,
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        r0 += rows;
        Some((r0 - rows, rows))
    })
}

/// The α/β epilogue of an edge tile, from an accumulator tile `acc[r·NR + j]`:
/// `C[r][j] = α·acc + β·C` for `r < mr`, `j < nr` (C only written when `β = 0`).
///
/// # Safety
/// `c` is valid for reads and writes at `c.add(r·ldc + j)` for `r < mr`, `j < nr`, and
/// `acc.len() ≥ mr·NR`, `nr ≤ NR`.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn edge_epilogue<const NR: usize>(
    acc: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    for r in 0..mr {
        for j in 0..nr {
            let t = alpha * acc[r * NR + j];
            // SAFETY: r < mr and j < nr, covered by the caller's guarantee on `c`.
            unsafe {
                let d = c.add(r * ldc + j);
                *d = if beta == 0.0 { t } else { t + beta * *d };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::edge_rows;

    /// The tiles of a panel cover its rows in order, each of MR (a full panel only), 4, 2 or 1.
    #[test]
    fn edge_rows_cover_the_panel() {
        for mr in 1..=6 {
            let mut next = 0;
            for (r0, rows) in edge_rows::<6>(mr) {
                assert_eq!(r0, next, "mr {mr}");
                assert!(matches!(rows, 1 | 2 | 4) || (rows == 6 && mr == 6), "mr {mr}: a tile of {rows}");
                next += rows;
            }
            assert_eq!(next, mr, "mr {mr}");
        }
        assert!(edge_rows::<6>(5).eq([(0, 4), (4, 1)]));
        assert!(edge_rows::<6>(3).eq([(0, 2), (2, 1)]));
    }
}
