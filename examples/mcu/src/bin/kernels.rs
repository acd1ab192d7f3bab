//! Kernel check and per-layer timing on the Cortex-M4F (QEMU mps2-an386), for the kernels'
//! M4F path (`tinykd_kernels::gemm` / `dwconv` with the scalar `Isa` on this target).
//!
//! 1. Correctness: the public GEMM, depthwise, KxK/pointwise conv and linear kernels on odd
//!    shapes (m, n, k not multiples of the 4×4 / 1×8 tiles, k = 1, n = 1, leading dimensions
//!    larger than the rows, α ≠ 1 and β ≠ 0, transposed operands, f16 B with an odd `ldb` or a
//!    2-byte-aligned base, channels not a multiple of 8, stride 2 and padding edges), f32 and
//!    f16 weights, against independent naive loops in this file written in the portable
//!    specification's order (`acc += a·b` in k order, bias first for the depthwise taps).
//!    The M4F path is not fused, so the comparison is bit for bit.
//! 2. Timing: every layer of the MobileNetV1 student of `assets/model.rs` (stem conv, 13
//!    depthwise, 13 pointwise, fc) through the public kernels, f32 and f16 weights, in SysTick
//!    ticks (`check.sh` converts them to instructions with the calibration).
//!
//! Exits QEMU with 0 when every case matches, 1 otherwise (101 on a panic).
#![no_std]
#![no_main]

#[path = "../ticks.rs"]
mod ticks;

use cortex_m_rt::entry;
use defmt_semihosting as _;
use semihosting as _;
use ticks::Ticks;
use tinykd::kernels::act::Act;
use tinykd::kernels::conv::conv2d_fwd;
use tinykd::kernels::dwconv::dwconv3x3_fwd;
use tinykd::kernels::gemm::{gemm, GemmShape, Trans};
use tinykd::kernels::linear::linear_fwd;
use tinykd::kernels::shape::{Conv2d, DwConv3x3, Linear};
use tinykd::kernels::{f16, Isa};

/// `CFG` (the student's `ModelConfig`) and `N_IMAGES`, written by `mcu_assets`.
#[allow(dead_code)]
mod assets {
    use tinykd::{Arch, ModelConfig, Stem};
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/model.rs"));
}
use assets::CFG;

/// Capacity of the activation, output and scratch buffers, in f32.
const CAP: usize = 1 << 15;
/// Capacity of the weight buffers (the largest pointwise weight at scale 0.5 is 512², 1 MB of
/// f32; a layer with larger operands is skipped by the timing, with a warning).
const CAP_W: usize = 1 << 18;

/// The operand buffers (in .bss; the kernels read and write them through slices).
struct Bufs {
    a: [f32; CAP],
    b: [f32; CAP_W],
    bh: [f16; CAP_W],
    c: [f32; CAP],
    want: [f32; CAP],
    bias: [f32; 1024],
    biash: [f16; 1024],
    scratch: [f32; CAP],
}

/// A small deterministic generator (xorshift32) of values in [−1, 1).
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn fill(&mut self, x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = self.next());
    }
}

/// f16 copies of `src` (rounded), and `src` replaced by their exact f32 values.
fn to_f16(src: &mut [f32], dst: &mut [f16]) {
    for (s, d) in src.iter_mut().zip(dst.iter_mut()) {
        *d = f16::from_f32(*s);
        *s = d.to_f32();
    }
}

/// Bitwise equality of `got` and `want`; logs the first difference.
fn same(case: &str, i: usize, got: &[f32], want: &[f32]) -> bool {
    match got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits()) {
        None => true,
        Some(at) => {
            defmt::error!(
                "{=str} case {=usize}: element {=usize} is {=f32}, reference {=f32}",
                case,
                i,
                at,
                got[at],
                want[at]
            );
            false
        }
    }
}

/// `act(v)` as the portable specification: `v > 0 ? v : 0`.
fn act(relu: bool, v: f32) -> f32 {
    if !relu || v > 0.0 {
        v
    } else {
        0.0
    }
}

#[entry]
fn main() -> ! {
    // `#[entry]` turns this into a `&'static mut Bufs` (the function runs once).
    static mut BUFS: Bufs = Bufs {
        a: [0.0; CAP],
        b: [0.0; CAP_W],
        bh: [f16::ZERO; CAP_W],
        c: [0.0; CAP],
        want: [0.0; CAP],
        bias: [0.0; 1024],
        biash: [f16::ZERO; 1024],
        scratch: [0.0; CAP],
    };
    let bufs: &'static mut Bufs = BUFS;
    let cp = cortex_m::Peripherals::take().expect("core peripherals taken once");
    let t = Ticks::start(cp.SYST);
    ticks::calibrate(&t);
    let mut fails = 0;
    fails += check_gemm(bufs);
    fails += check_dwconv(bufs);
    fails += check_conv_linear(bufs);
    defmt::info!("kernels check failures={=u32}", fails);
    time_layers(&t, bufs);
    semihosting::process::exit(if fails == 0 { 0 } else { 1 })
}

/// GEMM cases: (m, n, k, ta, tb, extra lda, extra ldb, extra ldc, α, β, B offset).
#[allow(clippy::type_complexity)]
const GEMM_CASES: [(usize, usize, usize, Trans, Trans, usize, usize, usize, f32, f32, usize); 24] = {
    use Trans::{N, T};
    [
        (1, 1, 1, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (1, 10, 256, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (3, 5, 2, N, N, 1, 2, 3, 1.0, 0.0, 0),
        (4, 4, 1, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (4, 4, 2, N, N, 3, 4, 1, 1.0, 0.0, 0),
        (4, 8, 3, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (5, 9, 7, N, N, 2, 1, 2, 1.0, 0.0, 0),
        (7, 13, 17, N, N, 1, 3, 0, 1.0, 0.0, 0),
        (8, 16, 8, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (9, 6, 33, N, N, 5, 2, 1, 1.0, 0.0, 0),
        (2, 17, 5, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (6, 3, 4, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (13, 12, 1, N, N, 0, 2, 0, 1.0, 0.0, 0),
        (12, 1, 9, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (3, 24, 6, N, N, 0, 0, 0, 1.0, 0.0, 0),
        (5, 9, 7, N, N, 0, 0, 0, 0.5, 0.0, 0),
        (6, 10, 5, N, N, 1, 2, 3, 1.25, 1.5, 0),
        (5, 12, 4, N, N, 0, 0, 0, 1.0, -1.0, 0),
        (5, 9, 7, N, N, 0, 0, 0, 1.0, 0.0, 1),
        (7, 8, 6, N, N, 0, 0, 0, 1.0, 0.0, 1),
        (5, 6, 7, T, N, 1, 0, 0, 1.0, 0.0, 0),
        (6, 5, 4, N, T, 0, 1, 0, 0.5, 2.0, 0),
        (9, 20, 5, N, N, 1, 2, 3, 0.5, 2.0, 0),
        (8, 8, 130, N, N, 0, 0, 0, 1.0, 0.0, 0),
    ]
};

/// Runs [`GEMM_CASES`] with f32 and f16 B; returns the number of mismatches.
fn check_gemm(bufs: &mut Bufs) -> u32 {
    let mut rng = Rng(0x1234_5678);
    let mut fails = 0;
    for (i, &(m, n, k, ta, tb, xa, xb, xc, alpha, beta, boff)) in GEMM_CASES.iter().enumerate() {
        let (ar, ac) = if ta == Trans::N { (m, k) } else { (k, m) };
        let (br, bc) = if tb == Trans::N { (k, n) } else { (n, k) };
        let (lda, ldb, ldc) = (ac + xa, bc + xb, n + xc);
        let s = GemmShape { m, n, k, ta, tb, lda, ldb, ldc };
        let (alen, blen, clen) = ((ar - 1) * lda + ac, boff + (br - 1) * ldb + bc, (m - 1) * ldc + n);
        rng.fill(&mut bufs.a[..alen]);
        rng.fill(&mut bufs.b[..blen]);
        to_f16(&mut bufs.b[..blen], &mut bufs.bh[..blen]);
        let c0: [f32; 256] = core::array::from_fn(|_| rng.next());
        let (a, b) = (&bufs.a[..alen], &bufs.b[boff..blen]);
        // C's elements between its rows (ldc > n) must stay as they were.
        bufs.want[..clen].copy_from_slice(&c0[..clen]);
        for r in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    let av = if ta == Trans::N { a[r * lda + p] } else { a[p * lda + r] };
                    let bv = if tb == Trans::N { b[p * ldb + j] } else { b[j * ldb + p] };
                    acc += av * bv;
                }
                let d = c0[r * ldc + j];
                bufs.want[r * ldc + j] = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * d };
            }
        }
        for f16_b in [false, true] {
            bufs.c[..clen].copy_from_slice(&c0[..clen]);
            let r = if f16_b {
                gemm(Isa::scalar(), &s, alpha, a, &bufs.bh[boff..blen], beta, &mut bufs.c[..clen])
            } else {
                gemm(Isa::scalar(), &s, alpha, a, b, beta, &mut bufs.c[..clen])
            };
            let ok =
                r.is_ok() && same(if f16_b { "gemm f16" } else { "gemm f32" }, i, &bufs.c[..clen], &bufs.want[..clen]);
            fails += !ok as u32;
        }
    }
    defmt::info!("check gemm cases={=usize} (f32 and f16 B)", GEMM_CASES.len());
    fails
}

/// Depthwise cases: (n, h, w, c, stride, bias, relu).
const DW_CASES: [(usize, usize, usize, usize, usize, bool, bool); 10] = [
    (1, 1, 1, 8, 1, true, true),
    (1, 2, 3, 8, 1, true, false),
    (2, 5, 4, 13, 2, true, true),
    (1, 7, 7, 9, 1, false, true),
    (1, 3, 3, 8, 2, true, true),
    (1, 6, 5, 17, 2, false, false),
    (1, 4, 4, 24, 1, true, true),
    (1, 1, 1, 3, 2, true, false),
    (2, 2, 2, 16, 2, true, true),
    (1, 5, 6, 40, 1, true, true),
];

/// Runs [`DW_CASES`] with f32 and f16 weights; returns the number of mismatches.
fn check_dwconv(bufs: &mut Bufs) -> u32 {
    let mut rng = Rng(0x9E37_79B9);
    let mut fails = 0;
    for (i, &(n, h, w, c, stride, has_bias, relu)) in DW_CASES.iter().enumerate() {
        let s = DwConv3x3::new(n, h, w, c, stride);
        let (oh, ow) = (s.out_h(), s.out_w());
        rng.fill(&mut bufs.a[..s.x_len()]);
        rng.fill(&mut bufs.b[..9 * c]);
        to_f16(&mut bufs.b[..9 * c], &mut bufs.bh[..9 * c]);
        rng.fill(&mut bufs.bias[..c]);
        to_f16(&mut bufs.bias[..c], &mut bufs.biash[..c]);
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut acc = if has_bias { bufs.bias[ch] } else { 0.0 };
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((oy * stride + ky) as isize - 1, (ox * stride + kx) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((img * h + iy as usize) * w + ix as usize) * c + ch;
                                acc += bufs.a[xi] * bufs.b[(ky * 3 + kx) * c + ch];
                            }
                        }
                        bufs.want[((img * oh + oy) * ow + ox) * c + ch] = act(relu, acc);
                    }
                }
            }
        }
        let a = if relu { Act::Relu } else { Act::None };
        for f16_w in [false, true] {
            let y = &mut bufs.c[..s.y_len()];
            let r = if f16_w {
                let bias = has_bias.then_some(&bufs.biash[..c]);
                dwconv3x3_fwd(Isa::scalar(), &s, &bufs.a[..s.x_len()], &bufs.bh[..9 * c], bias, a, y)
            } else {
                let bias = has_bias.then_some(&bufs.bias[..c]);
                dwconv3x3_fwd(Isa::scalar(), &s, &bufs.a[..s.x_len()], &bufs.b[..9 * c], bias, a, y)
            };
            let ok = r.is_ok() && same(if f16_w { "dwconv f16" } else { "dwconv f32" }, i, y, &bufs.want[..s.y_len()]);
            fails += !ok as u32;
        }
    }
    defmt::info!("check dwconv cases={=usize} (f32 and f16 weights)", DW_CASES.len());
    fails
}

/// KxK / pointwise conv cases (n, h, w, c_in, c_out, k, stride, pad, relu) and linear cases
/// (rows, c_in, c_out) through the public forwards (the M4F direct conv for ≤ 8 input
/// channels and c_out a multiple of 8, else im2col + GEMM; bias and ReLU fused into the
/// tiles); returns the number of mismatches.
fn check_conv_linear(bufs: &mut Bufs) -> u32 {
    /// (n, h, w, c_in, c_out, k, stride, pad, relu).
    type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);
    const CONV: [ConvCase; 7] = [
        (1, 7, 7, 3, 8, 3, 2, 1, true),
        (2, 6, 5, 8, 16, 3, 1, 1, false),
        (1, 5, 5, 1, 8, 5, 2, 2, true),
        (2, 5, 6, 5, 6, 3, 1, 1, false),
        (1, 3, 3, 7, 9, 1, 1, 0, true),
        (1, 3, 3, 5, 27, 1, 1, 0, true),
        (1, 9, 9, 3, 12, 3, 2, 1, true),
    ];
    const LINEAR: [(usize, usize, usize); 4] = [(1, 256, 10), (3, 5, 7), (5, 16, 9), (2, 33, 40)];
    let mut rng = Rng(0x0BAD_5EED);
    let mut fails = 0;
    let cases =
        CONV.iter().map(|&(n, h, w, ci, co, k, st, pad, relu)| (Conv2d::new(n, h, w, ci, co, k, st, pad), relu));
    let lin = LINEAR.iter().map(|&(r, ci, co)| (Conv2d::new(1, 1, r, ci, co, 1, 1, 0), false));
    for (i, (s, relu)) in cases.chain(lin).enumerate() {
        let linear = i >= CONV.len();
        let (oh, ow) = (s.out_h(), s.out_w());
        rng.fill(&mut bufs.a[..s.x_len()]);
        rng.fill(&mut bufs.b[..s.w_len()]);
        to_f16(&mut bufs.b[..s.w_len()], &mut bufs.bh[..s.w_len()]);
        rng.fill(&mut bufs.bias[..s.c_out]);
        to_f16(&mut bufs.bias[..s.c_out], &mut bufs.biash[..s.c_out]);
        for img in 0..s.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..s.c_out {
                        let mut acc = 0.0f32;
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                for ci in 0..s.c_in {
                                    let xi = ((img * s.h + iy as usize) * s.w + ix as usize) * s.c_in + ci;
                                    acc += bufs.a[xi] * bufs.b[((ky * s.kw + kx) * s.c_in + ci) * s.c_out + co];
                                }
                            }
                        }
                        bufs.want[((img * oh + oy) * ow + ox) * s.c_out + co] = act(relu, acc + bufs.bias[co]);
                    }
                }
            }
        }
        let a = if relu { Act::Relu } else { Act::None };
        for f16_w in [false, true] {
            let (x, y, scratch) = (&bufs.a[..s.x_len()], &mut bufs.c[..s.y_len()], &mut bufs.scratch[..]);
            let lin_s = Linear::new(s.w, s.c_in, s.c_out);
            let r = match (f16_w, linear) {
                (false, false) => {
                    conv2d_fwd(Isa::scalar(), &s, x, &bufs.b[..s.w_len()], Some(&bufs.bias[..s.c_out]), a, y, scratch)
                }
                (true, false) => {
                    conv2d_fwd(Isa::scalar(), &s, x, &bufs.bh[..s.w_len()], Some(&bufs.biash[..s.c_out]), a, y, scratch)
                }
                (false, true) => {
                    linear_fwd(Isa::scalar(), &lin_s, x, &bufs.b[..s.w_len()], Some(&bufs.bias[..s.c_out]), a, y)
                }
                (true, true) => {
                    linear_fwd(Isa::scalar(), &lin_s, x, &bufs.bh[..s.w_len()], Some(&bufs.biash[..s.c_out]), a, y)
                }
            };
            let name = if linear { "linear" } else { "conv" };
            let ok = r.is_ok() && same(name, i, y, &bufs.want[..s.y_len()]);
            fails += !ok as u32;
        }
    }
    defmt::info!("check conv cases={=usize} linear cases={=usize} (f32 and f16 weights)", CONV.len(), LINEAR.len());
    fails
}

/// The kinds of timed layers.
#[derive(Clone, Copy, defmt::Format)]
enum Kind {
    Stem,
    Dw,
    Pw,
    Fc,
}

/// Times every layer of the student (batch 1) through the public kernels, f32 then f16
/// weights: logs `layer dtype=.. kind=.. index=.. macs=.. ticks=..`.
fn time_layers(t: &Ticks, bufs: &mut Bufs) {
    /// MobileNetV1's separable blocks before scaling: (pointwise output channels, stride).
    const BLOCKS: [(usize, usize); 13] = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    ];
    let scaled = |c: usize| c * CFG.scale_permille as usize / 1000;
    let stem_stride = match CFG.stem {
        tinykd::Stem::ImageNet => 2,
        tinykd::Stem::Cifar => 1,
    };
    let mut rng = Rng(0x5EED_0001);
    rng.fill(&mut bufs.a[..]);
    rng.fill(&mut bufs.b[..]);
    rng.fill(&mut bufs.bias[..]);
    to_f16(&mut bufs.b[..], &mut bufs.bh[..]);
    to_f16(&mut bufs.bias[..], &mut bufs.biash[..]);
    for f16_w in [false, true] {
        let dtype = if f16_w { "f16" } else { "f32" };
        let (mut h, mut w, mut c) = (CFG.in_h as usize, CFG.in_w as usize, CFG.in_c as usize);
        let stem = Conv2d::new(1, h, w, c, scaled(32), 3, stem_stride, 1);
        let mut layers: [(Kind, Conv2d); 28] = [(Kind::Fc, stem); 28];
        layers[0] = (Kind::Stem, stem);
        (h, w, c) = (stem.out_h(), stem.out_w(), stem.c_out);
        for (i, &(c_out, stride)) in BLOCKS.iter().enumerate() {
            let dw = Conv2d::new(1, h, w, c, c, 3, stride, 1);
            (h, w) = (dw.out_h(), dw.out_w());
            layers[1 + 2 * i] = (Kind::Dw, dw);
            layers[2 + 2 * i] = (Kind::Pw, Conv2d::new(1, h, w, c, scaled(c_out), 1, 1, 0));
            c = scaled(c_out);
        }
        layers[27] = (Kind::Fc, Conv2d::new(1, 1, 1, c, CFG.classes as usize, 1, 1, 0));
        for (i, (kind, s)) in layers.iter().enumerate() {
            // A depthwise layer is described by a Conv2d with c_in = c_out; its weights are 9·c.
            let w_need = if matches!(kind, Kind::Dw) { 9 * s.c_in } else { s.w_len() };
            let scratch_need = if matches!(kind, Kind::Dw) { 0 } else { s.scratch_len() };
            if s.x_len() > CAP || s.y_len() > CAP || w_need > CAP_W || scratch_need > CAP || s.c_out > 1024 {
                defmt::warn!("layer {=usize} skipped: its operands exceed the buffers", i);
                continue;
            }
            let (x, y, scratch) = (&bufs.a[..s.x_len()], &mut bufs.c[..s.y_len()], &mut bufs.scratch[..]);
            let (wl, co) = (s.w_len(), s.c_out);
            let t0 = t.now();
            let r = match (kind, f16_w) {
                (Kind::Dw, false) => {
                    let d = DwConv3x3::new(1, s.h, s.w, s.c_in, s.stride);
                    dwconv3x3_fwd(Isa::scalar(), &d, x, &bufs.b[..9 * co], Some(&bufs.bias[..co]), Act::Relu, y)
                }
                (Kind::Dw, true) => {
                    let d = DwConv3x3::new(1, s.h, s.w, s.c_in, s.stride);
                    dwconv3x3_fwd(Isa::scalar(), &d, x, &bufs.bh[..9 * co], Some(&bufs.biash[..co]), Act::Relu, y)
                }
                (Kind::Fc, false) => linear_fwd(
                    Isa::scalar(),
                    &Linear::new(1, s.c_in, co),
                    x,
                    &bufs.b[..wl],
                    Some(&bufs.bias[..co]),
                    Act::None,
                    y,
                ),
                (Kind::Fc, true) => linear_fwd(
                    Isa::scalar(),
                    &Linear::new(1, s.c_in, co),
                    x,
                    &bufs.bh[..wl],
                    Some(&bufs.biash[..co]),
                    Act::None,
                    y,
                ),
                (_, false) => {
                    conv2d_fwd(Isa::scalar(), s, x, &bufs.b[..wl], Some(&bufs.bias[..co]), Act::Relu, y, scratch)
                }
                (_, true) => {
                    conv2d_fwd(Isa::scalar(), s, x, &bufs.bh[..wl], Some(&bufs.biash[..co]), Act::Relu, y, scratch)
                }
            };
            let dt = t.now() - t0;
            if let Err(e) = r {
                defmt::error!("layer {=usize}: {}", i, defmt::Display2Format(&e));
            }
            let macs = match kind {
                Kind::Dw => s.out_h() * s.out_w() * 9 * s.c_in,
                _ => s.out_h() * s.out_w() * s.k() * s.c_out,
            };
            defmt::info!(
                "layer dtype={=str} kind={} index={=usize} hw={=usize}x{=usize} c_in={=usize} c_out={=usize} macs={=usize} ticks={=u64}",
                dtype,
                kind,
                i,
                s.h,
                s.w,
                s.c_in,
                s.c_out,
                macs,
                dt
            );
        }
    }
}
