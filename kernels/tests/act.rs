//! ReLU and residual add: forward values, in-place variants, gradient checks, length errors.
mod common;

use common::{assert_close, dot64, grad_check, projection, Rng};
use tinykd_kernels::act::{
    add, add_inplace, add_relu, add_relu_inplace, relu_bwd, relu_bwd_inplace, relu_fwd, relu_inplace, Act,
};
use tinykd_kernels::{Isa, KernelError};

/// The path under test (every path runs the scalar specification today).
fn isa() -> Isa {
    Isa::scalar()
}

/// Values away from 0, so finite differences never straddle the kink.
fn away_from_zero(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.uniform(0.1, 1.0);
            if rng.unit() < 0.5 {
                -v
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn relu_forward_values() {
    let x = [-2.0, -0.0, 0.0, 0.5, 3.0, f32::NEG_INFINITY];
    let want = [0.0, 0.0, 0.0, 0.5, 3.0, 0.0];
    let mut y = [9.0; 6];
    relu_fwd(isa(), &x, &mut y).unwrap();
    assert_eq!(y, want);
    let mut z = x;
    relu_inplace(isa(), &mut z);
    assert_eq!(z, want);
    assert_eq!(Act::Relu.apply(-1.0), 0.0);
    assert_eq!(Act::None.apply(-1.0), -1.0);
}

#[test]
fn relu_backward_uses_output_and_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let x = away_from_zero(&mut rng, 101);
    let r = projection(&mut rng, x.len());
    let mut y = vec![0.0; x.len()];
    relu_fwd(isa(), &x, &mut y).unwrap();
    let mut dx = vec![f32::NAN; x.len()];
    relu_bwd(isa(), &y, &r, &mut dx).unwrap();
    for i in 0..x.len() {
        assert_eq!(dx[i], if x[i] > 0.0 { r[i] } else { 0.0 }, "index {i}");
    }
    grad_check("relu dx", &x, &dx, 1e-3, 1e-2, 200, |xp| {
        let mut y = vec![0.0; xp.len()];
        relu_fwd(isa(), xp, &mut y).unwrap();
        dot64(&r, &y)
    });
    let mut d = r.clone();
    relu_bwd_inplace(isa(), &y, &mut d).unwrap();
    assert_eq!(d, dx);
}

#[test]
fn add_variants_and_gradients() {
    let mut rng = Rng::new(12);
    let (a, b) = (rng.vec(77), rng.vec(77));
    let want: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
    let mut y = vec![f32::NAN; 77];
    add(isa(), &a, &b, &mut y).unwrap();
    assert_eq!(y, want);
    let mut a2 = a.clone();
    add_inplace(isa(), &mut a2, &b).unwrap();
    assert_eq!(a2, want);
    let mut a3 = a.clone();
    add_relu_inplace(isa(), &mut a3, &b).unwrap();
    let relu: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
    assert_close("add_relu_inplace", &a3, &relu, 0.0, 0.0);
    let mut y3 = vec![f32::NAN; 77];
    add_relu(isa(), &a, &b, &mut y3).unwrap();
    assert_eq!(y3.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), a3.iter().map(|v| v.to_bits()).collect::<Vec<_>>());

    // d(a + b)/da = d(a + b)/db = identity: the upstream gradient itself.
    let r = projection(&mut rng, 77);
    let f = |a: &[f32], b: &[f32]| {
        let mut y = vec![0.0; a.len()];
        add(isa(), a, b, &mut y).unwrap();
        dot64(&r, &y)
    };
    grad_check("add da", &a, &r, 1e-2, 1e-2, 100, |ap| f(ap, &b));
    grad_check("add db", &b, &r, 1e-2, 1e-2, 100, |bp| f(&a, bp));
}

#[test]
fn wrong_lengths_are_errors_and_write_nothing() {
    let mut y = [5.0; 3];
    assert_eq!(relu_fwd(isa(), &[1.0; 4], &mut y), Err(KernelError::Len { arg: "y", expected: 4, got: 3 }));
    assert_eq!(relu_bwd(isa(), &[1.0; 3], &[1.0; 2], &mut y), Err(KernelError::Len { arg: "dy", expected: 3, got: 2 }));
    assert_eq!(relu_bwd_inplace(isa(), &[1.0; 4], &mut y), Err(KernelError::Len { arg: "dy", expected: 4, got: 3 }));
    assert_eq!(add(isa(), &[1.0; 3], &[1.0; 2], &mut y), Err(KernelError::Len { arg: "b", expected: 3, got: 2 }));
    assert_eq!(add_inplace(isa(), &mut y, &[1.0; 2]), Err(KernelError::Len { arg: "b", expected: 3, got: 2 }));
    assert_eq!(add_relu_inplace(isa(), &mut y, &[1.0; 4]), Err(KernelError::Len { arg: "b", expected: 3, got: 4 }));
    assert_eq!(
        add_relu(isa(), &[1.0; 3], &[1.0; 3], &mut y[..2]),
        Err(KernelError::Len { arg: "y", expected: 3, got: 2 })
    );
    assert_eq!(y, [5.0; 3]);
}
