//! Cortex-M4F depthwise 3x3 forward (the scalar [`Isa`](crate::Isa) on that target, see the `cfg`
//! in [`crate::gemm`]): the portable path's arithmetic with the accumulators in registers.
//!
//! Channels go in groups of [`G`] = 8. A group's 9 taps and bias are widened to f32 once into
//! a stack tile ([`Tile`], 320 bytes); then for every output pixel one assembly block loads the
//! bias into s16–s23, walks the pixel's in-bounds taps (rows × columns, clipped as in
//! `scalar.rs`) with one `vldmia` of 8 inputs, one of 8 weights and 8 `vmla.f32` each, applies
//! the ReLU in registers and stores the 8 outputs with one `vstmia`. Per tap that is 13
//! instructions for 8 MACs. `vmla` is not fused and the taps run in the same `(ky, kx)` order
//! from the bias, so the outputs equal the portable path's bit for bit. Channels past the last
//! full group run the portable loops.

use super::scalar::{self, taps};
use crate::act::Act;
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
    let mut tile = Tile([[0.0; G]; 10]);
    for c0 in (0..full).step_by(G) {
        if let Some(b) = bias {
            for (d, v) in tile.0[0].iter_mut().zip(&b[c0..c0 + G]) {
                *d = v.to_f32();
            }
        }
        for t in 0..9 {
            for (d, v) in tile.0[1 + t].iter_mut().zip(&w[t * c + c0..t * c + c0 + G]) {
                *d = v.to_f32();
            }
        }
        let tp = tile.0.as_ptr() as *const f32;
        for n in 0..s.n {
            for oy in 0..oh {
                let iyp = oy * s.stride;
                let (ky_lo, ky_hi) = taps(iyp, s.h);
                for ox in 0..ow {
                    let ixp = ox * s.stride;
                    let (kx_lo, kx_hi) = taps(ixp, s.w);
                    let (nky, nkx) = (ky_hi - ky_lo, kx_hi - kx_lo);
                    let inp = (n * s.h + iyp + ky_lo - 1) * s.w + ixp + kx_lo - 1;
                    let out = (n * oh + oy) * ow + ox;
                    // SAFETY: the taps are clipped to the input, so the first in-bounds tap's
                    // input pixel `inp` and the ones the walk reaches (nkx columns of nky rows,
                    // rows `s.w` pixels apart) are inside `x`, each with channels c0..c0+8 ≤ c;
                    // every output pixel has its centre tap in bounds, so nky, nkx ≥ 1; the
                    // weight rows 1 + ky·3 + kx walked are inside the tile; `out` < n·oh·ow.
                    unsafe {
                        pixel(
                            act,
                            x.as_ptr().add(inp * c + c0),
                            c * 4,
                            (s.w - nkx) * c * 4,
                            tp,
                            tp.add((1 + ky_lo * 3 + kx_lo) * G),
                            (3 - nkx) * G * 4,
                            nkx,
                            nky,
                            y.as_mut_ptr().add(out * c + c0),
                        )
                    };
                }
            }
        }
    }
    if full < c {
        scalar::fwd(s, x, w, bias, act, y, full);
    }
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
            Act::None => pixel_asm!(x, x_col, x_row, bias, w, w_row, nkx, nky, y, []),
            // ReLU as the portable `if v > 0 { v } else { 0 }`: LE holds for v ≤ 0 and for
            // NaN (unordered), which become +0 (s0).
            Act::Relu => pixel_asm!(
                x,
                x_col,
                x_row,
                bias,
                w,
                w_row,
                nkx,
                nky,
                y,
                [
                    "movs {t}, #0",
                    "vmov s0, {t}",
                    "vcmp.f32 s16, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s16, s0",
                    "vcmp.f32 s17, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s17, s0",
                    "vcmp.f32 s18, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s18, s0",
                    "vcmp.f32 s19, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s19, s0",
                    "vcmp.f32 s20, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s20, s0",
                    "vcmp.f32 s21, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s21, s0",
                    "vcmp.f32 s22, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s22, s0",
                    "vcmp.f32 s23, #0", "vmrs APSR_nzcv, fpscr", "it le", "vmovle.f32 s23, s0"
                ]
            ),
        }
    }
}

/// The tap walk of [`pixel`] in assembly; `$post` runs on the accumulators s16–s23 before the
/// store (it may use s0 and `{t}`).
macro_rules! pixel_asm {
    ($x:expr, $x_col:expr, $x_row:expr, $bias:expr, $w:expr, $w_row:expr, $nkx:expr, $nky:expr, $y:expr,
     [$($post:literal),*]) => {
        asm!(
            "vldmia {bias}, {{s16-s23}}",
            "2:",
            "mov {t}, {nkx}",
            "3:",
            "vldmia {x}, {{s0-s7}}",
            "add {x}, {x}, {x_col}",
            "vldmia {w}!, {{s8-s15}}",
            "vmla.f32 s16, s0, s8", "vmla.f32 s17, s1, s9", "vmla.f32 s18, s2, s10", "vmla.f32 s19, s3, s11",
            "vmla.f32 s20, s4, s12", "vmla.f32 s21, s5, s13", "vmla.f32 s22, s6, s14", "vmla.f32 s23, s7, s15",
            "subs {t}, {t}, #1",
            "bne 3b",
            "add {x}, {x}, {x_row}",
            "add {w}, {w}, {w_row}",
            "subs {nky}, {nky}, #1",
            "bne 2b",
            $($post,)*
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
use pixel_asm;
