//! Pointwise conv / fc: forward vs naive loops (f32 and f16 weights, bias, ReLU), gradient
//! checks for input, weight and bias, overwrite semantics and length errors.
mod common;

use common::{assert_close, dot64, grad_check, projection, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::linear::{linear_bwd_input, linear_bwd_weight, linear_fwd};
use tinykd_kernels::shape::Linear;
use tinykd_kernels::{f16, Isa, IsaKind, KernelError};

const SHAPES: [Linear; 4] =
    [Linear::new(1, 1, 1), Linear::new(3, 5, 7), Linear::new(37, 17, 10), Linear::new(8, 33, 2)];

fn naive(s: &Linear, x: &[f32], w: &[f32], b: Option<&[f32]>, act: Act) -> Vec<f32> {
    let mut y = vec![0.0; s.y_len()];
    for r in 0..s.rows {
        for j in 0..s.c_out {
            let mut acc = b.map_or(0.0, |b| b[j] as f64);
            for i in 0..s.c_in {
                acc += x[r * s.c_in + i] as f64 * w[i * s.c_out + j] as f64;
            }
            y[r * s.c_out + j] = if act == Act::Relu { acc.max(0.0) as f32 } else { acc as f32 };
        }
    }
    y
}

/// Asserts every value is finite: a NaN gradient would slip through `grad_check`'s comparisons.
fn assert_finite(what: &str, v: &[f32]) {
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite value in {v:?}");
}

/// Every path this CPU can run (all three passes go through the GEMM, which has per-ISA paths).
fn isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect()
}

#[test]
fn forward_matches_naive_f32() {
    let mut rng = Rng::new(1);
    for s in SHAPES {
        let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
        for act in [Act::None, Act::Relu] {
            for (bias, isa) in [None, Some(&b[..])].into_iter().flat_map(|b| isas().into_iter().map(move |i| (b, i))) {
                let mut y = vec![f32::NAN; s.y_len()];
                linear_fwd(isa, &s, &x, &w, bias, act, &mut y).unwrap();
                assert_close(
                    &format!("{s:?} {act:?} bias {} {:?}", bias.is_some(), isa.kind()),
                    &y,
                    &naive(&s, &x, &w, bias, act),
                    1e-5,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn forward_matches_naive_f16_weights() {
    let mut rng = Rng::new(2);
    for s in SHAPES {
        let x = rng.vec(s.x_len());
        let w16: Vec<f16> = rng.vec(s.w_len()).into_iter().map(f16::from_f32).collect();
        let b16: Vec<f16> = rng.vec(s.c_out).into_iter().map(f16::from_f32).collect();
        let w: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let b: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
        let mut y = vec![f32::NAN; s.y_len()];
        linear_fwd(Isa::scalar(), &s, &x, &w16, Some(&b16), Act::Relu, &mut y).unwrap();
        assert_close(&format!("{s:?}"), &y, &naive(&s, &x, &w, Some(&b), Act::Relu), 1e-5, 1e-5);
    }
}

#[test]
fn relu_epilogue_clamps() {
    let s = Linear::new(1, 1, 2);
    let mut y = [9.0; 2];
    linear_fwd(Isa::scalar(), &s, &[1.0], &[2.0, -3.0], Some(&[0.5, 1.0][..]), Act::Relu, &mut y).unwrap();
    assert_eq!(y, [2.5, 0.0]);
}

fn loss_of(s: &Linear, x: &[f32], w: &[f32], b: &[f32], r: &[f32]) -> f64 {
    let mut y = vec![0.0; s.y_len()];
    linear_fwd(Isa::scalar(), s, x, w, Some(b), Act::None, &mut y).unwrap();
    dot64(r, &y)
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(3);
    for s in SHAPES {
        let (x, w, b) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.c_out));
        let r = projection(&mut rng, s.y_len());
        let mut dx = vec![f32::NAN; s.x_len()];
        let mut dw = vec![f32::NAN; s.w_len()];
        let mut db = vec![f32::NAN; s.c_out];
        linear_bwd_input(Isa::scalar(), &s, &r, &w, &mut dx).unwrap();
        linear_bwd_weight(Isa::scalar(), &s, &x, &r, &mut dw, Some(&mut db)).unwrap();
        let name = format!("{s:?}");
        assert_finite(&format!("{name} dx"), &dx);
        grad_check(&format!("{name} dx"), &x, &dx, 1e-2, 1e-2, 200, |xp| loss_of(&s, xp, &w, &b, &r));
        assert_finite(&format!("{name} dw"), &dw);
        grad_check(&format!("{name} dw"), &w, &dw, 1e-2, 1e-2, 200, |wp| loss_of(&s, &x, wp, &b, &r));
        assert_finite(&format!("{name} db"), &db);
        grad_check(&format!("{name} db"), &b, &db, 1e-2, 1e-2, 200, |bp| loss_of(&s, &x, &w, bp, &r));

        // Without `db`, `dw` is the same.
        let mut dw2 = vec![f32::NAN; s.w_len()];
        linear_bwd_weight(Isa::scalar(), &s, &x, &r, &mut dw2, None).unwrap();
        assert_eq!(dw, dw2);

        // Every other path agrees with the scalar specification.
        for isa in isas() {
            let (mut dx_i, mut dw_i, mut db_i) =
                (vec![f32::NAN; dx.len()], vec![f32::NAN; dw.len()], vec![f32::NAN; s.c_out]);
            linear_bwd_input(isa, &s, &r, &w, &mut dx_i).unwrap();
            linear_bwd_weight(isa, &s, &x, &r, &mut dw_i, Some(&mut db_i)).unwrap();
            let name = format!("{name} {:?}", isa.kind());
            assert_close(&format!("{name} dx"), &dx_i, &dx, 1e-5, 1e-5);
            assert_close(&format!("{name} dw"), &dw_i, &dw, 1e-5, 1e-5);
            assert_close(&format!("{name} db"), &db_i, &db, 1e-5, 1e-5);
        }
    }
}

#[test]
fn wrong_lengths_are_errors_and_write_nothing() {
    let s = Linear::new(2, 3, 4);
    let isa = Isa::scalar();
    let (x, w, b) = (vec![1.0; 6], vec![1.0; 12], vec![1.0; 4]);
    let mut y = vec![7.0; 8];
    let e = linear_fwd(isa, &s, &x[..5], &w, Some(&b), Act::None, &mut y).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "x", expected: 6, got: 5 });
    let e = linear_fwd(isa, &s, &x, &w, Some(&b[..3]), Act::None, &mut y).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "bias", expected: 4, got: 3 });
    let e = linear_fwd(isa, &s, &x, &w, None, Act::None, &mut y[..7]).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "y", expected: 8, got: 7 });
    assert!(y.iter().all(|&v| v == 7.0));

    let mut dx = vec![7.0; 6];
    let e = linear_bwd_input(isa, &s, &y, &w[..11], &mut dx).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "w", expected: 12, got: 11 });
    assert!(dx.iter().all(|&v| v == 7.0));

    let (mut dw, mut db) = (vec![7.0; 12], vec![7.0; 5]);
    let e = linear_bwd_weight(isa, &s, &x, &y, &mut dw, Some(&mut db)).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "db", expected: 4, got: 5 });
    assert!(dw.iter().chain(&db).all(|&v| v == 7.0));

    let zero = Linear::new(0, 3, 4);
    assert!(matches!(linear_fwd(isa, &zero, &[], &w, None, Act::None, &mut []), Err(KernelError::Shape(_))));
}
