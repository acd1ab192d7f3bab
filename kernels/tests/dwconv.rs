//! Depthwise 3x3 kernels against independent naive loops (forward and both backward passes),
//! f16 weight storage, finite-difference gradient checks, and argument errors.

mod common;

use common::{assert_close, dot64, grad_check, projection, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::dwconv::{dwconv3x3_bwd_input, dwconv3x3_bwd_weight, dwconv3x3_fwd};
use tinykd_kernels::shape::DwConv3x3;
use tinykd_kernels::{f16, Elem, Isa, IsaKind, KernelError};

/// Every ISA path this CPU can run.
fn isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect()
}

const fn dw(n: usize, h: usize, w: usize, c: usize, stride: usize) -> DwConv3x3 {
    DwConv3x3 { n, h, w, c, stride }
}

/// Stride 1 and 2; inputs of 1 pixel, single rows/columns, odd and even sizes; channel counts
/// below, equal to, above and not a multiple of common vector/block widths (4, 8, 16, 32).
const SHAPES: &[DwConv3x3] = &[
    dw(1, 1, 1, 1, 1),
    dw(1, 1, 1, 3, 2),
    dw(2, 5, 7, 3, 1),
    dw(2, 5, 7, 3, 2),
    dw(1, 1, 5, 5, 2),
    dw(1, 6, 1, 3, 1),
    dw(3, 4, 6, 17, 2),
    dw(1, 8, 8, 32, 1),
    dw(1, 8, 8, 32, 2),
    dw(2, 7, 5, 33, 2),
    dw(1, 2, 2, 70, 1),
    dw(1, 3, 3, 64, 2),
    dw(1, 16, 16, 8, 2),
    dw(2, 9, 9, 5, 1),
    // Pixel-major AVX2 chunks: 32 + 8, 3·32 + 4, 32 + 3·8 + 1, and MobileNetV1's small maps.
    dw(1, 3, 4, 40, 1),
    dw(2, 4, 3, 100, 2),
    dw(1, 5, 5, 57, 1),
    dw(1, 2, 2, 512, 2),
    dw(2, 1, 1, 136, 1),
];

/// Output dims computed independently of the crate (pad 1, kernel 3).
fn out_hw(s: &DwConv3x3) -> (usize, usize) {
    ((s.h + 2 - 3) / s.stride + 1, (s.w + 2 - 3) / s.stride + 1)
}

/// Input index of output `o`, tap `k`, or `None` in the padding.
fn src(o: usize, k: usize, stride: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k) as isize - 1;
    (0..len as isize).contains(&i).then_some(i as usize)
}

/// Calls `f(x_index, w_index, y_index)` for every in-bounds (output, tap, channel) triple.
fn naive_taps(s: &DwConv3x3, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = out_hw(s);
    for n in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..s.c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (Some(iy), Some(ix)) = (src(oy, ky, s.stride, s.h), src(ox, kx, s.stride, s.w)) else {
                                continue;
                            };
                            f(
                                ((n * s.h + iy) * s.w + ix) * s.c + c,
                                (ky * 3 + kx) * s.c + c,
                                ((n * oh + oy) * ow + ox) * s.c + c,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Naive forward in f64: `y = act(dwconv(x, w) + b)`.
fn ref_fwd(s: &DwConv3x3, x: &[f32], w: &[f32], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let (oh, ow) = out_hw(s);
    let mut acc = vec![0.0f64; s.n * oh * ow * s.c];
    naive_taps(s, |xi, wi, yi| acc[yi] += x[xi] as f64 * w[wi] as f64);
    if let Some(b) = bias {
        acc.iter_mut().enumerate().for_each(|(i, a)| *a += b[i % s.c] as f64);
    }
    acc.iter().map(|&a| if relu { a.max(0.0) as f32 } else { a as f32 }).collect()
}

/// Naive adjoints in f64: `(dx, dw)` for upstream gradient `dy`.
fn ref_bwd(s: &DwConv3x3, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    naive_taps(s, |xi, wi, yi| {
        dx[xi] += dy[yi] as f64 * w[wi] as f64;
        dw[wi] += dy[yi] as f64 * x[xi] as f64;
    });
    (dx.iter().map(|&v| v as f32).collect(), dw.iter().map(|&v| v as f32).collect())
}

/// Runs the forward with `y` full of NaN (so stale contents would show).
fn run_fwd<W: Elem>(isa: Isa, s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act) -> Vec<f32> {
    let mut y = vec![f32::NAN; s.y_len()];
    dwconv3x3_fwd(isa, s, x, w, bias, act, &mut y).unwrap();
    y
}

fn run_bwd_input(isa: Isa, s: &DwConv3x3, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let mut dx = vec![f32::NAN; s.x_len()];
    dwconv3x3_bwd_input(isa, s, dy, w, &mut dx).unwrap();
    dx
}

fn run_bwd_weight(isa: Isa, s: &DwConv3x3, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dw = vec![f32::NAN; s.w_len()];
    dwconv3x3_bwd_weight(isa, s, x, dy, &mut dw).unwrap();
    dw
}

#[test]
fn output_dims_match_naive() {
    for s in SHAPES {
        assert_eq!((s.out_h(), s.out_w()), out_hw(s), "{s:?}");
    }
}

#[test]
fn forward_matches_naive() {
    let mut rng = Rng::new(11);
    for isa in isas() {
        for s in SHAPES {
            let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c));
            for (bias, act) in
                [(None, Act::None), (Some(&b[..]), Act::Relu), (Some(&b[..]), Act::None), (None, Act::Relu)]
            {
                let got = run_fwd(isa, s, &x, &w, bias, act);
                let want = ref_fwd(s, &x, &w, bias, act == Act::Relu);
                let what = format!("dwconv3x3_fwd {isa:?} {s:?} bias={} {act:?}", bias.is_some());
                assert_close(&what, &got, &want, 1e-5, 1e-5);
            }
        }
    }
}

#[test]
fn relu_clamps_negatives() {
    let s = dw(2, 5, 7, 33, 2);
    let mut rng = Rng::new(12);
    let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c));
    let y = run_fwd(Isa::scalar(), &s, &x, &w, Some(&b), Act::Relu);
    let lin = run_fwd(Isa::scalar(), &s, &x, &w, Some(&b), Act::None);
    assert!(lin.iter().any(|&v| v < 0.0) && lin.iter().any(|&v| v > 0.0));
    for (&r, &l) in y.iter().zip(&lin) {
        assert_eq!(r, l.max(0.0));
    }
}

#[test]
fn backward_matches_naive() {
    let mut rng = Rng::new(13);
    for isa in isas() {
        for s in SHAPES {
            let (x, w, dy) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.y_len()));
            let (want_dx, want_dw) = ref_bwd(s, &x, &w, &dy);
            let dx = run_bwd_input(isa, s, &dy, &w);
            assert_close(&format!("dwconv3x3_bwd_input {isa:?} {s:?}"), &dx, &want_dx, 1e-5, 1e-5);
            let dw = run_bwd_weight(isa, s, &x, &dy);
            let terms = s.y_len() / s.c;
            assert_close(
                &format!("dwconv3x3_bwd_weight {isa:?} {s:?}"),
                &dw,
                &want_dw,
                1e-5,
                2e-6 * terms as f32 + 1e-6,
            );
        }
    }
}

#[test]
fn f16_weights_equal_f32_on_rounded_weights() {
    let mut rng = Rng::new(14);
    for isa in isas() {
        for s in SHAPES {
            let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c));
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let b16: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let wr: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
            let br: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
            assert_ne!(w, wr, "test data must not be exactly representable in f16");
            let got = run_fwd(isa, s, &x, &w16, Some(&b16), Act::Relu);
            let want = run_fwd(isa, s, &x, &wr, Some(&br), Act::Relu);
            assert_close(&format!("dwconv3x3_fwd f16 {isa:?} {s:?}"), &got, &want, 1e-6, 1e-6);
        }
    }
}

/// Shapes for the finite-difference checks: stride 1 and 2, odd sizes (padding on every edge,
/// stride-2 windows that do and do not reach the last row), batch > 1, odd channel counts, and
/// a channel count that crosses a block boundary.
const GRAD_SHAPES: &[DwConv3x3] = &[dw(2, 5, 7, 3, 1), dw(3, 5, 7, 17, 2), dw(2, 8, 6, 33, 2), dw(2, 6, 5, 5, 2)];

#[test]
fn grad_input_finite_difference() {
    let mut rng = Rng::new(15);
    for isa in isas() {
        for s in GRAD_SHAPES {
            let (x, w) = (rng.vec(s.x_len()), rng.vec(s.w_len()));
            let r = projection(&mut rng, s.y_len());
            let dx = run_bwd_input(isa, s, &r, &w);
            let loss = |xp: &[f32]| dot64(&r, &run_fwd(isa, s, xp, &w, None, Act::None));
            grad_check(&format!("dwconv3x3 dx {isa:?} {s:?}"), &x, &dx, 1e-2, 2e-3, 400, loss);
        }
    }
}

#[test]
fn grad_weight_finite_difference() {
    let mut rng = Rng::new(16);
    for isa in isas() {
        for s in GRAD_SHAPES {
            let (x, w) = (rng.vec(s.x_len()), rng.vec(s.w_len()));
            let r = projection(&mut rng, s.y_len());
            let dw = run_bwd_weight(isa, s, &x, &r);
            let loss = |wp: &[f32]| dot64(&r, &run_fwd(isa, s, &x, wp, None, Act::None));
            grad_check(&format!("dwconv3x3 dw {isa:?} {s:?}"), &w, &dw, 1e-2, 2e-3, 400, loss);
        }
    }
}

/// Asserts `r` is a length error for `arg`, expecting `expected`.
fn assert_len_err(r: tinykd_kernels::Result<()>, arg: &str, expected: usize) {
    match r {
        Err(KernelError::Len { arg: a, expected: e, .. }) => {
            assert_eq!((a, e), (arg, expected), "wrong argument blamed");
        }
        other => panic!("expected Len error for `{arg}`, got {other:?}"),
    }
}

#[test]
fn rejects_bad_lengths_without_writing() {
    let s = dw(2, 5, 7, 3, 2);
    let isa = Isa::scalar();
    let (x, w, b, dy) = (vec![0.5; s.x_len()], vec![0.5; s.w_len()], vec![0.5; s.c], vec![0.5; s.y_len()]);
    let (xl, wl, yl) = (s.x_len(), s.w_len(), s.y_len());
    let mut y = vec![7.0; yl];
    let mut dx = vec![7.0; xl];
    let mut dwt = vec![7.0; wl];
    assert_len_err(dwconv3x3_fwd(isa, &s, &x[1..], &w, Some(&b), Act::Relu, &mut y), "x", xl);
    assert_len_err(dwconv3x3_fwd(isa, &s, &x, &w[1..], Some(&b), Act::Relu, &mut y), "w", wl);
    assert_len_err(dwconv3x3_fwd(isa, &s, &x, &w, Some(&b[1..]), Act::Relu, &mut y), "bias", s.c);
    assert_len_err(dwconv3x3_fwd(isa, &s, &x, &w, Some(&b), Act::Relu, &mut y[1..]), "y", yl);
    let w16 = vec![f16::from_f32(0.5); wl + 1];
    assert_len_err(dwconv3x3_fwd(isa, &s, &x, &w16, None, Act::None, &mut y), "w", wl);
    assert_len_err(dwconv3x3_bwd_input(isa, &s, &dy[1..], &w, &mut dx), "dy", yl);
    assert_len_err(dwconv3x3_bwd_input(isa, &s, &dy, &w[1..], &mut dx), "w", wl);
    assert_len_err(dwconv3x3_bwd_input(isa, &s, &dy, &w, &mut dx[1..]), "dx", xl);
    assert_len_err(dwconv3x3_bwd_weight(isa, &s, &x[1..], &dy, &mut dwt), "x", xl);
    assert_len_err(dwconv3x3_bwd_weight(isa, &s, &x, &dy[1..], &mut dwt), "dy", yl);
    assert_len_err(dwconv3x3_bwd_weight(isa, &s, &x, &dy, &mut dwt[1..]), "dw", wl);
    let mut y_long = vec![7.0; yl + 1];
    assert_len_err(dwconv3x3_fwd(isa, &s, &x, &w, None, Act::None, &mut y_long), "y", yl);
    assert!(y.iter().chain(&dx).chain(&dwt).chain(&y_long).all(|&v| v == 7.0), "output written on error");
}

#[test]
fn invalid_shapes_are_rejected_without_writing() {
    let good = dw(2, 5, 7, 3, 2);
    let bad = [
        DwConv3x3 { stride: 3, ..good },
        DwConv3x3 { stride: 0, ..good },
        DwConv3x3 { n: 0, ..good },
        DwConv3x3 { h: 0, ..good },
        DwConv3x3 { c: 0, ..good },
    ];
    let isa = Isa::scalar();
    for s in bad {
        let (x, w, dy) = (vec![0.5; s.x_len()], vec![0.5; s.w_len()], vec![0.5; s.y_len()]);
        let mut y = vec![7.0; s.y_len()];
        let mut dx = vec![7.0; s.x_len()];
        let mut dwt = vec![7.0; s.w_len()];
        let shape_err =
            |r: tinykd_kernels::Result<()>| assert!(matches!(r, Err(KernelError::Shape(_))), "{s:?}: {r:?}");
        shape_err(dwconv3x3_fwd(isa, &s, &x, &w, None, Act::None, &mut y));
        shape_err(dwconv3x3_bwd_input(isa, &s, &dy, &w, &mut dx));
        shape_err(dwconv3x3_bwd_weight(isa, &s, &x, &dy, &mut dwt));
        assert!(y.iter().chain(&dx).chain(&dwt).all(|&v| v == 7.0), "{s:?}: written on error");
    }
}
