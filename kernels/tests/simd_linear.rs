//! The SIMD dense-forward paths against the scalar path: linear (fc / pointwise) and KxK conv
//! forwards with few rows, which take the row-streaming weight path on AVX2, and with many
//! rows (the blocked GEMM), for f32 and f16 weights, with and without bias and ReLU, on shapes
//! that hit every column tail (not a multiple of 8), every depth tail (not a multiple of 4) and,
//! for convs, taps that read only padding (1x1 and 2x2 inputs, stride 2). Outputs are
//! NaN-prefilled so an unwritten value fails.

mod common;

use common::{assert_close, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::conv::conv2d_fwd;
use tinykd_kernels::linear::{linear_fwd, linear_fwd_narrow, narrow_packed_len, pack_narrow};
use tinykd_kernels::shape::{Conv2d, Linear};
use tinykd_kernels::{f16, Elem, Isa, IsaKind, KernelError};

/// The SIMD paths this CPU can run (the scalar path is the reference).
fn simd_isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter(|&&k| k != IsaKind::Scalar).filter_map(|&k| Isa::force(k)).collect()
}

/// Bias/activation variants every shape runs with.
const EPILOGUES: [(bool, Act); 3] = [(false, Act::None), (true, Act::Relu), (true, Act::None)];

fn check_linear<W: Elem>(rng: &mut Rng) {
    for rows in [1, 2, 3, 4, 7, 15, 16, 17, 40] {
        for c_in in [1, 3, 4, 5, 33, 64] {
            for c_out in [1, 7, 8, 9, 17, 70] {
                let s = Linear::new(rows, c_in, c_out);
                let x = rng.vec(s.x_len());
                let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
                let b: Vec<W> = rng.vec(c_out).into_iter().map(W::from_f32).collect();
                for (has_b, act) in EPILOGUES {
                    let bias = has_b.then_some(&b[..]);
                    let mut want = vec![f32::NAN; s.y_len()];
                    linear_fwd(Isa::scalar(), &s, &x, &w, bias, act, &mut want).unwrap();
                    for isa in simd_isas() {
                        let mut got = vec![f32::NAN; s.y_len()];
                        linear_fwd(isa, &s, &x, &w, bias, act, &mut got).unwrap();
                        let what = format!("{:?} {:?} {s:?} bias {has_b} {act:?}", isa.kind(), W::DTYPE);
                        // |x|, |w| < 1: k terms, a few ulps of reordering per term.
                        assert_close(&what, &got, &want, 1e-5, 1e-6 * (c_in as f32 + 1.0));
                    }
                }
            }
        }
    }
}

#[test]
fn linear_forward_matches_scalar_f32_and_f16() {
    let mut rng = Rng::new(21);
    check_linear::<f32>(&mut rng);
    check_linear::<f16>(&mut rng);
}

fn check_conv<W: Elem>(rng: &mut Rng) {
    // (n, h, w, c_in, c_out, k, stride, pad): 1x1, 2x2, 3x3 and 4x4 inputs (1 to 16 output
    // pixels: the streamed path), stride 2 to one pixel, a 7x7 stem-like conv, batch 2, and a
    // larger map that runs the blocked GEMM.
    let shapes = [
        Conv2d::new(1, 1, 1, 9, 17, 3, 1, 1),
        Conv2d::new(1, 2, 2, 5, 8, 3, 1, 1),
        Conv2d::new(1, 2, 2, 33, 9, 3, 2, 1),
        Conv2d::new(1, 3, 3, 7, 70, 3, 1, 1),
        Conv2d::new(2, 2, 2, 4, 7, 3, 1, 1),
        Conv2d::new(1, 4, 4, 3, 16, 3, 1, 1),
        Conv2d::new(1, 4, 4, 3, 10, 7, 2, 3),
        Conv2d::new(1, 4, 4, 16, 24, 1, 1, 0),
        Conv2d::new(1, 3, 3, 16, 24, 1, 2, 0),
        Conv2d::new(1, 9, 7, 6, 17, 3, 1, 1),
    ];
    for s in shapes {
        let x = rng.vec(s.x_len());
        let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
        let b: Vec<W> = rng.vec(s.c_out).into_iter().map(W::from_f32).collect();
        let mut scratch = vec![0.0f32; s.scratch_len()];
        for (has_b, act) in EPILOGUES {
            let bias = has_b.then_some(&b[..]);
            let mut want = vec![f32::NAN; s.y_len()];
            conv2d_fwd(Isa::scalar(), &s, &x, &w, bias, act, &mut want, &mut scratch).unwrap();
            for isa in simd_isas() {
                let mut got = vec![f32::NAN; s.y_len()];
                scratch.fill(f32::NAN);
                conv2d_fwd(isa, &s, &x, &w, bias, act, &mut got, &mut scratch).unwrap();
                let what = format!("{:?} {:?} {s:?} bias {has_b} {act:?}", isa.kind(), W::DTYPE);
                assert_close(&what, &got, &want, 1e-5, 1e-6 * (s.k() as f32 + 1.0));
            }
        }
    }
}

#[test]
fn conv_forward_matches_scalar_f32_and_f16() {
    let mut rng = Rng::new(22);
    check_conv::<f32>(&mut rng);
    check_conv::<f16>(&mut rng);
}

/// An fc's weights packed once (`pack_narrow`) give `linear_fwd_narrow` the bits of
/// `linear_fwd` on every ISA that packs them, at every row count (the few rows that stream
/// `w` and the many that read the pack), with every column count up to 10, depths with every
/// remainder mod 4 and across the 384-deep block, f32 and f16 weights and each epilogue;
/// shapes or ISAs without the path, and short buffers, are errors that write nothing.
fn check_narrow<W: Elem>(rng: &mut Rng) {
    let isas: Vec<Isa> = IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect();
    let mut packed = 0;
    for rows in [1, 2, 16, 17, 33, 64] {
        for c_in in [63, 64, 385, 1027] {
            for c_out in [1, 5, 8, 10, 11] {
                let s = Linear::new(rows, c_in, c_out);
                let x = rng.vec(s.x_len());
                let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
                let b: Vec<W> = rng.vec(c_out).into_iter().map(W::from_f32).collect();
                for isa in &isas {
                    let isa = *isa;
                    let Some(len) = narrow_packed_len(isa, &s) else {
                        let mut wp = vec![0.0f32; 1 << 14];
                        let e = pack_narrow(isa, &s, &w, &mut wp).unwrap_err();
                        assert!(matches!(e, KernelError::Shape(_)), "{:?} {s:?}: {e}", isa.kind());
                        let mut y = vec![f32::NAN; s.y_len()];
                        let e = linear_fwd_narrow(isa, &s, &x, &w, &wp, None, Act::None, &mut y).unwrap_err();
                        assert!(matches!(e, KernelError::Shape(_)), "{:?} {s:?}: {e}", isa.kind());
                        assert!(y.iter().all(|v| v.is_nan()));
                        continue;
                    };
                    packed += 1;
                    let mut wp = vec![f32::NAN; len];
                    pack_narrow(isa, &s, &w, &mut wp).unwrap();
                    for (has_b, act) in EPILOGUES {
                        let bias = has_b.then_some(&b[..]);
                        let mut want = vec![f32::NAN; s.y_len()];
                        linear_fwd(isa, &s, &x, &w, bias, act, &mut want).unwrap();
                        let mut got = vec![f32::NAN; s.y_len()];
                        linear_fwd_narrow(isa, &s, &x, &w, &wp, bias, act, &mut got).unwrap();
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{:?} {:?} {s:?} bias {has_b} {act:?}",
                            isa.kind(),
                            W::DTYPE
                        );
                    }
                    let mut y = vec![f32::NAN; s.y_len()];
                    let e = linear_fwd_narrow(isa, &s, &x, &w, &wp[..len - 1], None, Act::None, &mut y).unwrap_err();
                    assert_eq!(e, KernelError::Len { arg: "wp", expected: len, got: len - 1 });
                    let e = pack_narrow(isa, &s, &w[1..], &mut wp).unwrap_err();
                    assert!(matches!(e, KernelError::Len { arg: "w", .. }), "{e}");
                    assert!(y.iter().all(|v| v.is_nan()));
                }
            }
        }
    }
    if isas.iter().any(|i| i.kind() == IsaKind::Avx2) {
        assert!(packed > 0, "AVX2 packs an fc's weights");
    }
}

#[test]
fn narrow_packed_forward_has_the_bits_of_the_forward() {
    let mut rng = Rng::new(12);
    check_narrow::<f32>(&mut rng);
    check_narrow::<f16>(&mut rng);
}
