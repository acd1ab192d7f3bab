//! Momentum SGD: two steps by hand (with weight decay), the tutorial's plain momentum against a
//! naive loop, the finiteness flag, and length errors.
mod common;

use common::{assert_close, Rng};
use tinykd_kernels::optim::{sgd_momentum, sgd_momentum_stays_finite, Momentum};
use tinykd_kernels::{Isa, KernelError};

#[test]
fn two_steps_by_hand_with_weight_decay() {
    let h = Momentum { lr: 0.1, mu: 0.9, wd: 0.01 };
    let mut p = [1.0f32, -2.0];
    let mut v = [0.0f32, 0.5];
    // Step 1, g = (0.5, 1): v = 0.9·v + g + 0.01·p = (0.51, 1.43); p −= 0.1·v = (0.949, −2.143).
    sgd_momentum(Isa::scalar(), h, &mut p, &[0.5, 1.0], &mut v).unwrap();
    assert_close("v1", &v, &[0.51, 1.43], 1e-6, 1e-7);
    assert_close("p1", &p, &[0.949, -2.143], 1e-6, 1e-7);
    // Step 2, g = (−1, 0): v = (0.459 − 1 + 0.00949, 1.287 + 0 − 0.02143) = (−0.53151, 1.26557);
    // p = (0.949 + 0.053151, −2.143 − 0.126557) = (1.002151, −2.269557).
    sgd_momentum(Isa::scalar(), h, &mut p, &[-1.0, 0.0], &mut v).unwrap();
    assert_close("v2", &v, &[-0.53151, 1.26557], 1e-6, 1e-7);
    assert_close("p2", &p, &[1.002151, -2.269557], 1e-6, 1e-7);
}

#[test]
fn plain_momentum_matches_naive_loop() {
    let mut rng = Rng::new(51);
    let h = Momentum { lr: 0.01, mu: 0.9, wd: 0.0 };
    let (mut p, mut v) = (rng.vec(33), vec![0.0; 33]);
    let (mut pw, mut vw): (Vec<f64>, Vec<f64>) = (p.iter().map(|&x| x as f64).collect(), vec![0.0; 33]);
    for _ in 0..5 {
        let g = rng.vec(33);
        sgd_momentum(Isa::scalar(), h, &mut p, &g, &mut v).unwrap();
        for i in 0..33 {
            vw[i] = 0.9 * vw[i] + g[i] as f64;
            pw[i] -= 0.01 * vw[i];
        }
    }
    let pw: Vec<f32> = pw.iter().map(|&x| x as f32).collect();
    assert_close("p", &p, &pw, 1e-5, 1e-6);
}

#[test]
fn wrong_lengths_are_errors_and_write_nothing() {
    let h = Momentum { lr: 0.1, mu: 0.9, wd: 0.0 };
    let (mut p, mut v) = ([7.0f32; 3], [7.0f32; 3]);
    assert_eq!(
        sgd_momentum(Isa::scalar(), h, &mut p, &[1.0; 2], &mut v),
        Err(KernelError::Len { arg: "g", expected: 3, got: 2 })
    );
    assert_eq!(
        sgd_momentum(Isa::scalar(), h, &mut p, &[1.0; 3], &mut v[..1]),
        Err(KernelError::Len { arg: "v", expected: 3, got: 1 })
    );
    let nan = Momentum { lr: f32::NAN, ..h };
    assert!(matches!(sgd_momentum(Isa::scalar(), nan, &mut p, &[1.0; 3], &mut v), Err(KernelError::Shape(_))));
    assert_eq!((p, v), ([7.0; 3], [7.0; 3]));
    // The read-only check refuses the same arguments.
    assert_eq!(
        sgd_momentum_stays_finite(h, &p, &[1.0; 2], &v),
        Err(KernelError::Len { arg: "g", expected: 3, got: 2 })
    );
    assert_eq!(
        sgd_momentum_stays_finite(h, &p, &[1.0; 3], &v[..1]),
        Err(KernelError::Len { arg: "v", expected: 3, got: 1 })
    );
    assert!(matches!(sgd_momentum_stays_finite(nan, &p, &[1.0; 3], &v), Err(KernelError::Shape(_))));
}

#[test]
fn the_flag_says_whether_gradient_momentum_and_weights_are_all_finite() {
    let h = Momentum { lr: 0.1, mu: 0.9, wd: 0.0 };
    let step = |p: f32, g: f32, v: f32| {
        // The odd element sits past the first vector of 8 and in a scalar tail.
        let (mut ps, mut vs, mut gs) = (vec![1.0f32; 19], vec![0.5f32; 19], vec![0.25f32; 19]);
        (ps[13], gs[13], vs[13]) = (p, g, v);
        // The read-only check (it borrows shared slices) predicts the flag.
        let predicted = sgd_momentum_stays_finite(h, &ps, &gs, &vs).unwrap();
        let finite = sgd_momentum(Isa::scalar(), h, &mut ps, &gs, &mut vs).unwrap();
        assert_eq!(predicted, finite, "the check and the update disagree at p {p}, g {g}, v {v}");
        finite
    };
    assert!(step(1.0, 0.25, 0.5), "all finite");
    assert!(!step(1.0, f32::NAN, 0.5), "a NaN gradient");
    assert!(!step(1.0, f32::INFINITY, 0.5), "an infinite gradient");
    assert!(!step(1.0, 0.25, f32::NEG_INFINITY), "an infinite momentum");
    assert!(!step(f32::NAN, 0.25, 0.5), "a NaN weight");
    // Finite inputs whose update overflows: v = 0.9·3e38 + 3e38 = +Inf.
    assert!(!step(1.0, 3e38, 3e38), "an overflowing momentum");
    // v finite, p − 0.1·v overflows: p = −3.4e38, v = 3e38.
    assert!(!step(-3.4e38, 3e38, 0.0), "an overflowing weight");
}
