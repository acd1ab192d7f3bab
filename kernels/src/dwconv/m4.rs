//! Cortex-M4F depthwise 3x3 forward (the scalar [`Isa`](crate::Isa) on that target, see the `cfg`
//! in [`crate::gemm`]): the portable path's arithmetic with the accumulators in registers.
//!
//! Channels go in groups of [`G`] = 8. A group's 9 taps and bias are widened to f32 once into
//! a stack tile ([`Tile`], 320 bytes; f16 with `vcvtb`). Per output row, the pixels whose 3
//! kernel columns are all in bounds run in one assembly loop ([`interior`]): per pixel it loads
//! the bias into s16–s23, walks the in-bounds kernel rows with 3 unrolled taps of one `vldmia`
//! of 8 inputs, one of 8 weights and 8 `vmla.f32` (11 instructions for 8 MACs), applies the
//! ReLU in registers and stores with one `vstmia`. The pixels at the left and right edges walk
//! their clipped taps one by one ([`pixel`], 13 instructions per tap). `vmla` is not fused and
//! the taps run in the same `(ky, kx)` order from the bias, so the outputs equal the portable
//! path's bit for bit. Channels past the last full group run the portable loops.

use super::scalar::{self, taps};
use crate::act::Act;
use crate::convert::m4::{widen, widen_rows8};
use crate::elem::Elem;
use crate::shape::DwConv3x3;
use core::arch::asm;

/// Channels per group (one `vldmia` of 8 single-precision registers).
const G: usize = 8;

/// A group's weights widened to f32: row 0 the bias (zeros without one), row `1 + ky·3 + kx`
/// tap `(ky, kx)`.
#[repr(C, align(8))]
struct Tile([[f32; G]; 10]);

/// `y = act(b + Σ_taps x·w)` (see the parent module) for channel groups of 8, the portable
/// path for the rest.
///
/// # Safety
/// `s` is valid and `x`, `w`, `bias`, `y` have the lengths the parent module checks.
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    let c = s.c;
    let full = c - c % G;
    let (oh, ow) = (s.out_h(), s.out_w());
    // Output columns 1..ox_end read all 3 kernel columns in bounds (input columns
    // ox·stride − 1 ..= ox·stride + 1 inside 0..w); column 0 and ox_end.. are clipped.
    let ox_end = if s.w >= 2 { ((s.w - 2) / s.stride + 1).min(ow) } else { 0 };
    let mut tile = Tile([[0.0; G]; 10]);
    for c0 in (0..full).step_by(G) {
        if let Some(b) = bias {
            widen(&b[c0..c0 + G], &mut tile.0[0]);
        }
        // SAFETY: tap t's channels c0..c0+8 ≤ c are inside `w` (9·c values) and the tile's
        // rows 1..10 hold 9·8 f32.
        unsafe { widen_rows8(w.as_ptr().add(c0), c, 9, tile.0[1].as_mut_ptr()) };
        let tp = tile.0.as_ptr() as *const f32;
        for n in 0..s.n {
            for oy in 0..oh {
                let iyp = oy * s.stride;
                let (ky_lo, ky_hi) = taps(iyp, s.h);
                let nky = ky_hi - ky_lo;
                // Input pixel (row iyp + ky_lo − 1, column `ix`) and output pixel `ox`, channel c0.
                let xp = |ix: usize| ((n * s.h + iyp + ky_lo - 1) * s.w + ix) * c + c0;
                let yp = |ox: usize| ((n * oh + oy) * ow + ox) * c + c0;
                let mut ox = 0;
                while ox < ow {
                    if ox == 1 && ox_end > 1 {
                        let walk = Walk {
                            w0: tp.wrapping_add((1 + ky_lo * 3) * G),
                            nky,
                            y_step: c * 4,
                            x_step: (s.stride * c * 4).wrapping_sub(nky * s.w * c * 4),
                        };
                        // SAFETY: output columns 1..ox_end have all 3 kernel columns and the
                        // kernel rows ky_lo..ky_hi (nky ≥ 1: the centre row is in bounds) in
                        // bounds, so every input pixel walked is inside `x` with channels
                        // c0..c0+8 ≤ c; the weight rows walked are inside the tile; the outputs
                        // are inside `y`.
                        unsafe {
                            interior(
                                act,
                                x.as_ptr().add(xp(s.stride - 1)),
                                c * 4,
                                (s.w - 3) * c * 4,
                                tp,
                                &walk,
                                ox_end - 1,
                                y.as_mut_ptr().add(yp(1)),
                            )
                        };
                        ox = ox_end;
                        continue;
                    }
                    let ixp = ox * s.stride;
                    let (kx_lo, kx_hi) = taps(ixp, s.w);
                    let nkx = kx_hi - kx_lo;
                    // SAFETY: the taps are clipped to the input, so the first in-bounds tap's
                    // input pixel and the ones the walk reaches (nkx columns of nky rows, rows
                    // `s.w` pixels apart) are inside `x`, each with channels c0..c0+8 ≤ c; every
                    // output pixel has its centre tap in bounds, so nky, nkx ≥ 1; the weight
                    // rows 1 + ky·3 + kx walked are inside the tile; the output is inside `y`.
                    unsafe {
                        pixel(
                            act,
                            x.as_ptr().add(xp(ixp + kx_lo - 1)),
                            c * 4,
                            (s.w - nkx) * c * 4,
                            tp,
                            tp.add((1 + ky_lo * 3 + kx_lo) * G),
                            (3 - nkx) * G * 4,
                            nkx,
                            nky,
                            y.as_mut_ptr().add(yp(ox)),
                        )
                    };
                    ox += 1;
                }
            }
        }
    }
    if full < c {
        scalar::fwd(s, x, w, bias, act, y, full);
    }
}

/// ReLU of s16–s23 as the portable `if v > 0 { v } else { 0 }`: after `vcmp v, #0`, LE holds
/// for v ≤ 0 and for NaN (unordered), which become +0 (s0, which the caller clears).
macro_rules! relu_8 {
    () => {
        concat!(
            "vcmp.f32 s16, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s16, s0\n",
            "vcmp.f32 s17, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s17, s0\n",
            "vcmp.f32 s18, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s18, s0\n",
            "vcmp.f32 s19, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s19, s0\n",
            "vcmp.f32 s20, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s20, s0\n",
            "vcmp.f32 s21, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s21, s0\n",
            "vcmp.f32 s22, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s22, s0\n",
            "vcmp.f32 s23, #0\n vmrs APSR_nzcv, fpscr\n it le\n vmovle.f32 s23, s0\n"
        )
    };
}

/// One tap: 8 inputs at `{x}` (then `{x} += {x_col}`) times the next 8 weights at `{w}!`.
macro_rules! tap_8 {
    () => {
        concat!(
            "vldmia {x}, {{s0-s7}}\n add {x}, {x}, {x_col}\n vldmia {w}!, {{s8-s15}}\n",
            "vmla.f32 s16, s0, s8\n vmla.f32 s17, s1, s9\n vmla.f32 s18, s2, s10\n vmla.f32 s19, s3, s11\n",
            "vmla.f32 s20, s4, s12\n vmla.f32 s21, s5, s13\n vmla.f32 s22, s6, s14\n vmla.f32 s23, s7, s15\n"
        )
    };
}

/// Nothing (no activation).
macro_rules! nothing {
    () => {
        ""
    };
}

/// The per-row constants of [`interior`], read from memory by its loop.
#[repr(C)]
struct Walk {
    /// The weight row of the first in-bounds kernel row's left tap.
    w0: *const f32,
    /// In-bounds kernel rows, ≥ 1.
    nky: usize,
    /// Bytes from one output pixel to the next.
    y_step: usize,
    /// Bytes from where a pixel's walk ends to the next pixel's first input (wrapping).
    x_step: usize,
}

/// The loop of [`interior`] in assembly; `{r}` (kernel rows left) is 0 after the tap walk, so
/// it clears s0 for the ReLU and then serves as a scratch register.
macro_rules! interior_asm {
    ($x:expr, $x_col:expr, $x_row:expr, $bias:expr, $walk:expr, $count:expr, $y:expr, $post:ident) => {
        asm!(
            "5:",
            "vldmia {bias}, {{s16-s23}}",
            "ldr {w}, [{p}]",
            "ldr {r}, [{p}, #4]",
            "2:",
            tap_8!(),
            tap_8!(),
            tap_8!(),
            "add {x}, {x}, {x_row}",
            "subs {r}, {r}, #1",
            "bne 2b",
            "vmov s0, {r}",
            $post!(),
            "vstmia {y}, {{s16-s23}}",
            "ldr {r}, [{p}, #8]",
            "add {y}, {y}, {r}",
            "ldr {r}, [{p}, #12]",
            "add {x}, {x}, {r}",
            "subs {n}, {n}, #1",
            "bne 5b",
            bias = in(reg) $bias,
            x = inout(reg) $x => _,
            x_col = in(reg) $x_col,
            x_row = in(reg) $x_row,
            w = out(reg) _,
            r = out(reg) _,
            p = in(reg) $walk as *const Walk,
            n = inout(reg) $count => _,
            y = inout(reg) $y => _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        )
    };
}

/// `count` consecutive output pixels of one row whose 3 kernel columns are all in bounds: for
/// each, `y[0..8] = act(bias[0..8] + Σ x·w)` over `walk.nky` kernel rows of 3 taps, `x`
/// advancing by `x_col` bytes per tap and `x_row` more per row; then `x += walk.x_step`,
/// `y += walk.y_step`.
///
/// # Safety
/// Every address the walk reads (8 f32 at each `x` and weight step, and at `bias`) is readable
/// and 4-byte aligned; each `y` is writable for 8 f32; `count, walk.nky ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn interior(
    act: Act,
    x: *const f32,
    x_col: usize,
    x_row: usize,
    bias: *const f32,
    walk: &Walk,
    count: usize,
    y: *mut f32,
) {
    // SAFETY: the caller's guarantee covers every address read and written.
    unsafe {
        match act {
            Act::None => interior_asm!(x, x_col, x_row, bias, walk, count, y, nothing),
            Act::Relu => interior_asm!(x, x_col, x_row, bias, walk, count, y, relu_8),
        }
    }
}

/// The tap walk of [`pixel`] in assembly; `{nky}` is 0 after it and clears s0 for the ReLU.
macro_rules! pixel_asm {
    ($x:expr, $x_col:expr, $x_row:expr, $bias:expr, $w:expr, $w_row:expr, $nkx:expr, $nky:expr, $y:expr, $post:ident) => {
        asm!(
            "vldmia {bias}, {{s16-s23}}",
            "2:",
            "mov {t}, {nkx}",
            "3:",
            tap_8!(),
            "subs {t}, {t}, #1",
            "bne 3b",
            "add {x}, {x}, {x_row}",
            "add {w}, {w}, {w_row}",
            "subs {nky}, {nky}, #1",
            "bne 2b",
            "vmov s0, {nky}",
            $post!(),
            "vstmia {y}, {{s16-s23}}",
            bias = in(reg) $bias,
            x = inout(reg) $x => _,
            x_col = in(reg) $x_col,
            x_row = in(reg) $x_row,
            w = inout(reg) $w => _,
            w_row = in(reg) $w_row,
            nkx = in(reg) $nkx,
            nky = inout(reg) $nky => _,
            t = out(reg) _,
            y = in(reg) $y,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _, out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            options(nostack),
        )
    };
}

/// One output pixel's 8 channels: `y[0..8] = act(bias[0..8] + Σ x·w)` over `nky` rows of `nkx`
/// taps, `x` advancing by `x_col` bytes per tap and `x_row` more per row, `w` by 32 bytes per
/// tap and `w_row` more per row.
///
/// # Safety
/// Every address the walk reads (8 f32 at each of `x`, `w` steps, and at `bias`) is readable
/// and 4-byte aligned; `y` is writable for 8 f32; `nkx, nky ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pixel(
    act: Act,
    x: *const f32,
    x_col: usize,
    x_row: usize,
    bias: *const f32,
    w: *const f32,
    w_row: usize,
    nkx: usize,
    nky: usize,
    y: *mut f32,
) {
    // SAFETY: the caller's guarantee covers every address read and written.
    unsafe {
        match act {
            Act::None => pixel_asm!(x, x_col, x_row, bias, w, w_row, nkx, nky, y, nothing),
            Act::Relu => pixel_asm!(x, x_col, x_row, bias, w, w_row, nkx, nky, y, relu_8),
        }
    }
}
