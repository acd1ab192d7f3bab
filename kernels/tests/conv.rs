//! KxK conv kernels against independent naive loops (forward and both backward passes), f16
//! weight storage, finite-difference gradient checks, and argument errors.

mod common;

use common::{assert_close, dot64, grad_check, projection, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::conv::{conv2d_bwd_input, conv2d_bwd_weight, conv2d_fwd};
use tinykd_kernels::shape::{Conv2d, IM2COL_ROWS};
use tinykd_kernels::{f16, Isa, IsaKind, KernelError};

/// Every ISA path this CPU can run.
fn isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect()
}

/// A (possibly non-square) conv shape.
#[allow(clippy::too_many_arguments)]
const fn conv(
    n: usize,
    h: usize,
    w: usize,
    c_in: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Conv2d {
    Conv2d { n, h, w, c_in, c_out, kh, kw, stride, pad }
}

/// Shapes covering pointwise, strided 1x1, 3x3 s1/s2, 7x7 s2 p3, non-square kernels, inputs
/// smaller than the kernel, odd sizes and channels, and 1..4 im2col tiles (exact and partial).
const SHAPES: &[Conv2d] = &[
    conv(1, 5, 7, 3, 5, 1, 1, 1, 0),    // pointwise
    conv(3, 6, 6, 17, 5, 1, 1, 1, 0),   // pointwise, 108 rows
    conv(2, 5, 7, 17, 5, 1, 1, 2, 0),   // 1x1 stride 2 (ResNet branch1)
    conv(1, 8, 8, 16, 32, 1, 1, 2, 0),  // 1x1 stride 2, even
    conv(1, 5, 7, 3, 5, 3, 3, 1, 1),    // 3x3 s1 p1
    conv(2, 8, 8, 5, 17, 3, 3, 1, 1),   // 128 rows: exactly two tiles
    conv(3, 7, 9, 17, 3, 3, 3, 1, 1),   // 189 rows: partial last tile
    conv(2, 5, 7, 3, 5, 3, 3, 2, 1),    // 3x3 s2 p1, odd input
    conv(3, 9, 11, 5, 17, 3, 3, 2, 1),  // 3x3 s2 p1, 90 rows
    conv(1, 32, 32, 3, 8, 3, 3, 2, 1),  // MobileNet conv1 (fewer channels), 256 rows
    conv(1, 11, 13, 3, 5, 7, 7, 2, 3),  // 7x7 s2 p3 (ResNet stem), odd input
    conv(2, 16, 16, 3, 8, 7, 7, 2, 3),  // 7x7 s2 p3, 128 rows
    conv(1, 5, 7, 3, 5, 3, 3, 1, 0),    // valid (no padding)
    conv(2, 1, 1, 5, 3, 3, 3, 1, 1),    // 1x1 input, only the centre tap is real
    conv(40, 1, 1, 33, 20, 3, 3, 1, 1), // the same over 40 samples: its pointwise GEMM (only_tap)
    conv(70, 1, 1, 9, 17, 3, 3, 2, 1),  // 1x1 input, stride 2, 70 samples (dW not row-blocked)
    conv(3, 1, 1, 4, 5, 5, 5, 1, 2),    // 5x5 on a 1x1 input: tap 12
    conv(2, 1, 1, 3, 4, 3, 3, 1, 2),    // 1x1 input, padding 2: a 3x3 output, every tap used
    conv(1, 1, 2, 3, 2, 3, 3, 1, 2),    // padding 2: windows mostly padding
    conv(1, 6, 6, 3, 4, 2, 2, 2, 0),    // even kernel
    conv(1, 5, 5, 3, 4, 2, 2, 1, 1),    // even kernel with padding
    conv(2, 5, 7, 3, 4, 3, 1, 1, 0),    // 3x1 kernel
    conv(2, 5, 7, 3, 4, 1, 3, 2, 0),    // 1x3 kernel, stride 2
    conv(2, 10, 8, 3, 4, 3, 3, 3, 1),   // stride 3
    conv(1, 9, 9, 3, 32, 3, 3, 2, 1),   // a stem with 32 output channels (MobileNetV1 1.0 conv1)
    conv(2, 6, 5, 4, 31, 3, 3, 1, 1),   // 31 output channels: GEMM edge tiles of 15 columns
    conv(2, 3, 3, 100, 20, 1, 1, 1, 0), // pointwise over 18 pixels, 100 inputs: dW in row blocks
    // Maps of at most 4 output pixels: dW position by position, a GEMM per in-bounds tap.
    conv(3, 2, 2, 24, 20, 3, 3, 1, 1), // 2x2 → 2x2 (ResNet50's res4 at 32x32)
    conv(5, 4, 4, 9, 18, 3, 3, 2, 1),  // 4x4 → 2x2, stride 2
    conv(4, 2, 2, 7, 9, 3, 3, 2, 1),   // 2x2 → 1x1, stride 2: 4 of 9 taps
    conv(3, 3, 3, 5, 6, 1, 1, 2, 0),   // 1x1 stride 2, 3x3 → 2x2
    conv(2, 1, 2, 4, 5, 3, 3, 1, 1),   // 1x2 map: the top and bottom rows of taps read padding
];

/// Output dims computed independently of the crate.
fn out_hw(s: &Conv2d) -> (usize, usize) {
    ((s.h + 2 * s.pad - s.kh) / s.stride + 1, (s.w + 2 * s.pad - s.kw) / s.stride + 1)
}

/// Input index of output `o`, tap `k`, or `None` in the padding.
fn src(o: usize, k: usize, s: &Conv2d, len: usize) -> Option<usize> {
    let i = (o * s.stride + k) as isize - s.pad as isize;
    (0..len as isize).contains(&i).then_some(i as usize)
}

/// Naive 7-loop forward in f64: `y = act(conv(x, w) + b)`.
fn ref_fwd(s: &Conv2d, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let (oh, ow) = out_hw(s);
    let mut y = vec![0.0; s.n * oh * ow * s.c_out];
    for n in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..s.c_out {
                    let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                    for ky in 0..s.kh {
                        for kx in 0..s.kw {
                            let (Some(iy), Some(ix)) = (src(oy, ky, s, s.h), src(ox, kx, s, s.w)) else { continue };
                            for ci in 0..s.c_in {
                                let xv = x[((n * s.h + iy) * s.w + ix) * s.c_in + ci] as f64;
                                let wv = w[((ky * s.kw + kx) * s.c_in + ci) * s.c_out + co] as f64;
                                acc += xv * wv;
                            }
                        }
                    }
                    if relu {
                        acc = acc.max(0.0);
                    }
                    y[((n * oh + oy) * ow + ox) * s.c_out + co] = acc as f32;
                }
            }
        }
    }
    y
}

/// Naive adjoints in f64: `(dx, dw)` for upstream gradient `dy`.
fn ref_bwd(s: &Conv2d, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = out_hw(s);
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    for n in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..s.c_out {
                    let g = dy[((n * oh + oy) * ow + ox) * s.c_out + co] as f64;
                    for ky in 0..s.kh {
                        for kx in 0..s.kw {
                            let (Some(iy), Some(ix)) = (src(oy, ky, s, s.h), src(ox, kx, s, s.w)) else { continue };
                            for ci in 0..s.c_in {
                                let xi = ((n * s.h + iy) * s.w + ix) * s.c_in + ci;
                                let wi = ((ky * s.kw + kx) * s.c_in + ci) * s.c_out + co;
                                dx[xi] += g * w[wi] as f64;
                                dw[wi] += g * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx.iter().map(|&v| v as f32).collect(), dw.iter().map(|&v| v as f32).collect())
}

/// Absolute tolerance for a sum of `terms` products of values in [-1, 1).
fn atol(terms: usize) -> f32 {
    2e-6 * terms as f32 + 1e-6
}

/// Runs the forward with `y` and `scratch` full of NaN (so stale contents would show).
fn run_fwd<W: tinykd_kernels::Elem>(
    isa: Isa,
    s: &Conv2d,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; s.y_len()];
    let mut scratch = vec![f32::NAN; s.scratch_len()];
    conv2d_fwd(isa, s, x, w, bias, act, &mut y, &mut scratch).unwrap();
    y
}

fn run_bwd_input(isa: Isa, s: &Conv2d, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let mut dx = vec![f32::NAN; s.x_len()];
    let mut scratch = vec![f32::NAN; s.scratch_len()];
    conv2d_bwd_input(isa, s, dy, w, &mut dx, &mut scratch).unwrap();
    dx
}

fn run_bwd_weight(isa: Isa, s: &Conv2d, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dw = vec![f32::NAN; s.w_len()];
    let mut scratch = vec![f32::NAN; s.scratch_len()];
    conv2d_bwd_weight(isa, s, x, dy, &mut dw, &mut scratch).unwrap();
    dw
}

#[test]
fn shapes_cover_tiling() {
    let rows = |s: &Conv2d| s.n * out_hw(s).0 * out_hw(s).1;
    assert!(SHAPES.iter().any(|s| !s.is_pointwise() && rows(s) % IM2COL_ROWS == 0 && rows(s) > IM2COL_ROWS));
    assert!(SHAPES.iter().any(|s| !s.is_pointwise() && rows(s) % IM2COL_ROWS != 0 && rows(s) > 2 * IM2COL_ROWS));
    for s in SHAPES {
        assert_eq!((s.out_h(), s.out_w()), out_hw(s), "{s:?}");
    }
}

#[test]
fn forward_matches_naive() {
    let mut rng = Rng::new(1);
    for isa in isas() {
        for s in SHAPES {
            let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
            for (bias, act) in
                [(None, Act::None), (Some(&b[..]), Act::Relu), (Some(&b[..]), Act::None), (None, Act::Relu)]
            {
                let got = run_fwd(isa, s, &x, &w, bias, act);
                let want = ref_fwd(s, &x, &w, bias, act == Act::Relu);
                let what = format!("conv2d_fwd {isa:?} {s:?} bias={} {act:?}", bias.is_some());
                assert_close(&what, &got, &want, 1e-5, atol(s.k()));
            }
        }
    }
}

#[test]
fn relu_clamps_negatives() {
    let s = conv(2, 5, 7, 3, 5, 3, 3, 2, 1);
    let mut rng = Rng::new(2);
    let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
    let y = run_fwd(Isa::scalar(), &s, &x, &w, Some(&b), Act::Relu);
    let lin = run_fwd(Isa::scalar(), &s, &x, &w, Some(&b), Act::None);
    assert!(lin.iter().any(|&v| v < 0.0) && lin.iter().any(|&v| v > 0.0));
    for (&r, &l) in y.iter().zip(&lin) {
        assert_eq!(r, l.max(0.0));
    }
}

#[test]
fn backward_matches_naive() {
    let mut rng = Rng::new(3);
    for isa in isas() {
        for s in SHAPES {
            let (x, w, dy) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.y_len()));
            let (want_dx, want_dw) = ref_bwd(s, &x, &w, &dy);
            let dx = run_bwd_input(isa, s, &dy, &w);
            assert_close(&format!("conv2d_bwd_input {isa:?} {s:?}"), &dx, &want_dx, 1e-5, atol(s.kh * s.kw * s.c_out));
            let dw = run_bwd_weight(isa, s, &x, &dy);
            let (oh, ow) = out_hw(s);
            assert_close(&format!("conv2d_bwd_weight {isa:?} {s:?}"), &dw, &want_dw, 1e-5, atol(s.n * oh * ow));
        }
    }
}

#[test]
fn scratch_may_be_longer_and_is_not_read() {
    let s = conv(3, 7, 9, 5, 3, 3, 3, 1, 1);
    let mut rng = Rng::new(4);
    let (x, w, dy) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.y_len()));
    let mut scratch = vec![1e30f32; s.scratch_len() + 17];
    let mut y = vec![0.0; s.y_len()];
    conv2d_fwd(Isa::scalar(), &s, &x, &w, None, Act::None, &mut y, &mut scratch).unwrap();
    assert_eq!(y, run_fwd(Isa::scalar(), &s, &x, &w, None, Act::None));
    scratch.fill(-1e30);
    let mut dx = vec![5.0; s.x_len()];
    conv2d_bwd_input(Isa::scalar(), &s, &dy, &w, &mut dx, &mut scratch).unwrap();
    assert_eq!(dx, run_bwd_input(Isa::scalar(), &s, &dy, &w));
    scratch.fill(1e30);
    let mut dw = vec![5.0; s.w_len()];
    conv2d_bwd_weight(Isa::scalar(), &s, &x, &dy, &mut dw, &mut scratch).unwrap();
    assert_eq!(dw, run_bwd_weight(Isa::scalar(), &s, &x, &dy));
}

#[test]
fn pointwise_needs_no_scratch() {
    let s = conv(2, 5, 7, 17, 5, 1, 1, 1, 0);
    assert_eq!(s.scratch_len(), 0);
    let mut rng = Rng::new(5);
    let (x, w, dy) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.y_len()));
    let (mut y, mut dx, mut dw) = (vec![0.0; s.y_len()], vec![0.0; s.x_len()], vec![0.0; s.w_len()]);
    conv2d_fwd(Isa::scalar(), &s, &x, &w, None, Act::None, &mut y, &mut []).unwrap();
    conv2d_bwd_input(Isa::scalar(), &s, &dy, &w, &mut dx, &mut []).unwrap();
    conv2d_bwd_weight(Isa::scalar(), &s, &x, &dy, &mut dw, &mut []).unwrap();
    assert_close("pointwise y", &y, &ref_fwd(&s, &x, &w, None, false), 1e-5, atol(17));
    let (want_dx, want_dw) = ref_bwd(&s, &x, &w, &dy);
    assert_close("pointwise dx", &dx, &want_dx, 1e-5, atol(5));
    assert_close("pointwise dw", &dw, &want_dw, 1e-5, atol(70));
}

#[test]
fn f16_weights_equal_f32_on_rounded_weights() {
    let mut rng = Rng::new(6);
    for isa in isas() {
        for s in SHAPES {
            let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let b16: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let wr: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
            let br: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
            assert_ne!(w, wr, "test data must not be exactly representable in f16");
            let got = run_fwd(isa, s, &x, &w16, Some(&b16), Act::Relu);
            let want = run_fwd(isa, s, &x, &wr, Some(&br), Act::Relu);
            assert_close(&format!("conv2d_fwd f16 {isa:?} {s:?}"), &got, &want, 1e-6, 1e-6);
        }
    }
}

/// Shapes for the finite-difference checks: stride 2, padding edges, batch > 1, odd channels,
/// several im2col tiles, plus the pointwise and strided-1x1 special cases.
const GRAD_SHAPES: &[Conv2d] = &[
    conv(2, 5, 7, 3, 5, 3, 3, 2, 1),
    conv(3, 11, 9, 5, 3, 3, 3, 2, 1), // 90 rows: two tiles
    conv(3, 9, 7, 3, 5, 3, 3, 1, 1),  // 189 rows: three tiles, partial
    conv(2, 9, 9, 3, 4, 7, 7, 2, 3),
    conv(2, 5, 7, 5, 3, 1, 1, 2, 0),
    conv(2, 5, 7, 17, 5, 1, 1, 1, 0),
    conv(20, 1, 1, 6, 5, 3, 3, 1, 1), // a 1x1 map: the centre tap alone
    conv(3, 2, 2, 6, 5, 3, 3, 1, 1),  // a 2x2 map: dW position by position
];

#[test]
fn grad_input_finite_difference() {
    let mut rng = Rng::new(7);
    for isa in isas() {
        for s in GRAD_SHAPES {
            let (x, w) = (rng.vec(s.x_len()), rng.vec(s.w_len()));
            let r = projection(&mut rng, s.y_len());
            let dx = run_bwd_input(isa, s, &r, &w);
            let loss = |xp: &[f32]| dot64(&r, &run_fwd(isa, s, xp, &w, None, Act::None));
            grad_check(&format!("conv2d dx {isa:?} {s:?}"), &x, &dx, 1e-2, 2e-3, 300, loss);
        }
    }
}

#[test]
fn grad_weight_finite_difference() {
    let mut rng = Rng::new(8);
    for isa in isas() {
        for s in GRAD_SHAPES {
            let (x, w) = (rng.vec(s.x_len()), rng.vec(s.w_len()));
            let r = projection(&mut rng, s.y_len());
            let dw = run_bwd_weight(isa, s, &x, &r);
            let loss = |wp: &[f32]| dot64(&r, &run_fwd(isa, s, &x, wp, None, Act::None));
            grad_check(&format!("conv2d dw {isa:?} {s:?}"), &w, &dw, 1e-2, 2e-3, 300, loss);
        }
    }
}

/// Asserts `err` is a length error for `arg`, expecting `expected`.
fn assert_len_err(r: tinykd_kernels::Result<()>, arg: &str, expected: usize) {
    match r {
        Err(KernelError::Len { arg: a, expected: e, .. }) => {
            assert_eq!((a, e), (arg, expected), "wrong argument blamed");
        }
        other => panic!("expected Len error for `{arg}`, got {other:?}"),
    }
}

#[test]
fn forward_rejects_bad_lengths_without_writing() {
    let s = conv(2, 5, 7, 3, 5, 3, 3, 2, 1);
    let isa = Isa::scalar();
    let (x, w, b) = (vec![0.5; s.x_len()], vec![0.5; s.w_len()], vec![0.5; s.c_out]);
    let mut y = vec![7.0; s.y_len()];
    let mut sc = vec![7.0; s.scratch_len()];
    let (yl, sl) = (s.y_len(), s.scratch_len());
    assert_len_err(conv2d_fwd(isa, &s, &x[1..], &w, Some(&b), Act::Relu, &mut y, &mut sc), "x", s.x_len());
    assert_len_err(conv2d_fwd(isa, &s, &x, &w[1..], Some(&b), Act::Relu, &mut y, &mut sc), "w", s.w_len());
    assert_len_err(conv2d_fwd(isa, &s, &x, &w, Some(&b[1..]), Act::Relu, &mut y, &mut sc), "bias", s.c_out);
    assert_len_err(conv2d_fwd(isa, &s, &x, &w, Some(&b), Act::Relu, &mut y[1..], &mut sc), "y", yl);
    let mut y_long = vec![7.0; yl + 1];
    assert_len_err(conv2d_fwd(isa, &s, &x, &w, Some(&b), Act::Relu, &mut y_long, &mut sc), "y", yl);
    assert_len_err(conv2d_fwd(isa, &s, &x, &w, Some(&b), Act::Relu, &mut y, &mut sc[1..]), "scratch", sl);
    let w16 = vec![f16::from_f32(0.5); s.w_len() + 1];
    assert_len_err(conv2d_fwd(isa, &s, &x, &w16, None, Act::None, &mut y, &mut sc), "w", s.w_len());
    assert!(y.iter().chain(&sc).chain(&y_long).all(|&v| v == 7.0), "output written on error");
    conv2d_fwd(isa, &s, &x, &w, Some(&b), Act::Relu, &mut y, &mut sc).unwrap();
    assert!(y.iter().any(|&v| v != 7.0));
}

#[test]
fn backward_rejects_bad_lengths_without_writing() {
    let s = conv(2, 5, 7, 3, 5, 3, 3, 2, 1);
    let isa = Isa::scalar();
    let (x, w, dy) = (vec![0.5; s.x_len()], vec![0.5; s.w_len()], vec![0.5; s.y_len()]);
    let mut dx = vec![7.0; s.x_len()];
    let mut dw = vec![7.0; s.w_len()];
    let mut sc = vec![7.0; s.scratch_len()];
    let (xl, wl, sl) = (s.x_len(), s.w_len(), s.scratch_len());
    assert_len_err(conv2d_bwd_input(isa, &s, &dy[1..], &w, &mut dx, &mut sc), "dy", s.y_len());
    assert_len_err(conv2d_bwd_input(isa, &s, &dy, &w[1..], &mut dx, &mut sc), "w", wl);
    assert_len_err(conv2d_bwd_input(isa, &s, &dy, &w, &mut dx[1..], &mut sc), "dx", xl);
    assert_len_err(conv2d_bwd_input(isa, &s, &dy, &w, &mut dx, &mut sc[1..]), "scratch", sl);
    assert_len_err(conv2d_bwd_weight(isa, &s, &x[1..], &dy, &mut dw, &mut sc), "x", xl);
    assert_len_err(conv2d_bwd_weight(isa, &s, &x, &dy[1..], &mut dw, &mut sc), "dy", s.y_len());
    assert_len_err(conv2d_bwd_weight(isa, &s, &x, &dy, &mut dw[1..], &mut sc), "dw", wl);
    assert_len_err(conv2d_bwd_weight(isa, &s, &x, &dy, &mut dw, &mut sc[1..]), "scratch", sl);
    assert!(dx.iter().chain(&dw).chain(&sc).all(|&v| v == 7.0), "output written on error");
}

#[test]
fn invalid_shapes_are_rejected_without_writing() {
    let good = conv(2, 5, 7, 3, 5, 3, 3, 2, 1);
    let bad = [
        Conv2d { stride: 0, ..good },
        Conv2d { pad: 3, ..good },
        Conv2d { h: 1, pad: 0, ..good },
        Conv2d { n: 0, ..good },
        Conv2d { c_in: 0, ..good },
        Conv2d { c_out: 0, ..good },
        Conv2d { kw: 0, ..good },
    ];
    let isa = Isa::scalar();
    for s in bad {
        // Buffers sized for the valid shape: the shape check must come first regardless.
        let (x, w, dy) = (vec![0.5; good.x_len()], vec![0.5; good.w_len()], vec![0.5; good.y_len()]);
        let mut out = vec![7.0; good.x_len() + good.w_len() + good.y_len()];
        let mut sc = vec![7.0; good.scratch_len()];
        let shape_err =
            |r: tinykd_kernels::Result<()>| assert!(matches!(r, Err(KernelError::Shape(_))), "{s:?}: {r:?}");
        shape_err(conv2d_fwd(isa, &s, &x, &w, None, Act::None, &mut out[..good.y_len()], &mut sc));
        shape_err(conv2d_bwd_input(isa, &s, &dy, &w, &mut out[..good.x_len()], &mut sc));
        shape_err(conv2d_bwd_weight(isa, &s, &x, &dy, &mut out[..good.w_len()], &mut sc));
        assert!(out.iter().chain(&sc).all(|&v| v == 7.0), "{s:?}: written on error");
    }
}

/// A scratch longer than the minimum makes the tiles taller (whole multiples of
/// `IM2COL_ROWS` rows, as many as it holds): forward, input gradient and weight gradient keep
/// their bits on every path (the weight gradient still sums `IM2COL_ROWS` rows per GEMM).
#[test]
fn taller_tiles_from_a_longer_scratch_change_no_bit() {
    let mut rng = Rng::new(77);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    // Several tiles at the minimum (the last partial), and the stem-like ones.
    let shapes =
        [conv(3, 7, 9, 17, 3, 3, 3, 1, 1), conv(1, 32, 32, 3, 8, 3, 3, 2, 1), conv(4, 16, 16, 3, 8, 7, 7, 2, 3)];
    for s in shapes {
        let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
        let dy = rng.vec(s.y_len());
        for isa in isas() {
            let run = |extra: usize| {
                let mut scratch = vec![f32::NAN; s.scratch_len() * extra + extra * 5];
                let mut y = vec![f32::NAN; s.y_len()];
                conv2d_fwd(isa, &s, &x, &w, Some(&b), Act::Relu, &mut y, &mut scratch).unwrap();
                let mut dx = vec![f32::NAN; s.x_len()];
                conv2d_bwd_input(isa, &s, &dy, &w, &mut dx, &mut scratch).unwrap();
                let mut dw = vec![f32::NAN; s.w_len()];
                conv2d_bwd_weight(isa, &s, &x, &dy, &mut dw, &mut scratch).unwrap();
                (bits(&y), bits(&dx), bits(&dw))
            };
            let base = run(1);
            for extra in [2, 3, 4] {
                assert_eq!(run(extra), base, "{:?} {s:?}: scratch ×{extra}", isa.kind());
            }
        }
    }
}

/// The direct forward of a conv with few input channels (the stem: AVX2, AVX-512 and NEON)
/// sums each output as one fused chain over its in-bounds `(ky, kx, ci)` in order from zero,
/// then adds the bias and applies the activation: checked bit for bit on every SIMD path this
/// CPU has (the same bits on x86 and NEON), on stem-like shapes with borders, strides and
/// output channels below, at and past a multiple of 8.
#[test]
fn direct_few_channel_forward_is_one_fused_chain_per_value() {
    let simd: Vec<Isa> = isas().into_iter().filter(|i| i.kind() != IsaKind::Scalar).collect();
    let mut rng = Rng::new(21);
    for s in [
        conv(1, 32, 32, 3, 8, 3, 3, 2, 1),
        conv(2, 9, 11, 3, 20, 3, 3, 2, 1),
        conv(1, 7, 5, 4, 33, 3, 3, 1, 1),
        conv(1, 6, 6, 3, 5, 2, 2, 2, 0),
        conv(1, 1, 2, 3, 2, 3, 3, 1, 2),
    ] {
        let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
        let (oh, ow) = out_hw(&s);
        for act in [Act::None, Act::Relu] {
            let mut want = vec![0.0f32; s.y_len()];
            for n in 0..s.n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for co in 0..s.c_out {
                            let mut acc = 0.0f32;
                            for ky in 0..s.kh {
                                for kx in 0..s.kw {
                                    let (Some(iy), Some(ix)) = (src(oy, ky, &s, s.h), src(ox, kx, &s, s.w)) else {
                                        continue;
                                    };
                                    for ci in 0..s.c_in {
                                        let xv = x[((n * s.h + iy) * s.w + ix) * s.c_in + ci];
                                        acc = xv.mul_add(w[((ky * s.kw + kx) * s.c_in + ci) * s.c_out + co], acc);
                                    }
                                }
                            }
                            want[((n * oh + oy) * ow + ox) * s.c_out + co] = act.apply(acc + b[co]);
                        }
                    }
                }
            }
            for &isa in &simd {
                assert_eq!(run_fwd(isa, &s, &x, &w, Some(&b[..]), act), want, "{:?} {s:?} {act:?}", isa.kind());
            }
        }
    }
}
