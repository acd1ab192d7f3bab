//! Max pool 3x3/s2/p1 and global average pool: forward vs naive loops, gradient checks (inputs
//! without ties), first-max routing and accumulation by hand, length errors.
mod common;

use common::{assert_close, dot64, grad_check, projection, Rng};
use tinykd_kernels::pool::{global_avg_bwd, global_avg_fwd, maxpool3x3s2_bwd, maxpool3x3s2_fwd};
use tinykd_kernels::shape::Pool;
use tinykd_kernels::{Isa, KernelError};

/// Asserts every value is finite: a NaN gradient would slip through `grad_check`'s comparisons.
fn assert_finite(what: &str, v: &[f32]) {
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite value in {v:?}");
}
fn isa() -> Isa {
    Isa::scalar()
}

const SHAPES: [Pool; 5] =
    [Pool::new(1, 1, 1, 1), Pool::new(1, 2, 2, 5), Pool::new(2, 7, 6, 3), Pool::new(3, 8, 8, 4), Pool::new(1, 5, 9, 2)];

/// Distinct values (a shuffled ramp with gaps of 0.01), so no window has a tie.
fn distinct(rng: &mut Rng, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|i| i as f32 * 0.01 - len as f32 * 0.005).collect();
    for i in (1..len).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

fn naive_maxpool(s: &Pool, x: &[f32]) -> Vec<f32> {
    let (oh, ow) = ((s.h + 2 - 3) / 2 + 1, (s.w + 2 - 3) / 2 + 1);
    let mut y = vec![0.0; s.n * oh * ow * s.c];
    for n in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..s.c {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((2 * oy + ky) as isize - 1, (2 * ox + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                m = m.max(x[((n * s.h + iy as usize) * s.w + ix as usize) * s.c + c]);
                            }
                        }
                    }
                    y[((n * oh + oy) * ow + ox) * s.c + c] = m;
                }
            }
        }
    }
    y
}

fn maxpool(s: &Pool, x: &[f32]) -> Vec<f32> {
    let mut y = vec![f32::NAN; s.max_y_len()];
    maxpool3x3s2_fwd(isa(), s, x, &mut y).unwrap();
    y
}

#[test]
fn maxpool_forward_matches_naive() {
    let mut rng = Rng::new(31);
    for s in SHAPES {
        let x = rng.vec(s.x_len());
        assert_eq!(maxpool(&s, &x), naive_maxpool(&s, &x), "{s:?}");
        // All-negative input: the padding (never a candidate) must not produce a 0.
        let neg: Vec<f32> = x.iter().map(|v| -1.5 - v).collect();
        assert_eq!(maxpool(&s, &neg), naive_maxpool(&s, &neg), "{s:?} negative");
    }
}

#[test]
fn maxpool_backward_matches_finite_differences() {
    let mut rng = Rng::new(32);
    for s in SHAPES {
        let x = distinct(&mut rng, s.x_len());
        let y = maxpool(&s, &x);
        let r = projection(&mut rng, y.len());
        let mut dx = vec![f32::NAN; s.x_len()];
        maxpool3x3s2_bwd(isa(), &s, &x, &y, &r, &mut dx).unwrap();
        assert_finite(&format!("{s:?}"), &dx);
        grad_check(&format!("{s:?}"), &x, &dx, 1e-3, 1e-2, 300, |xp| dot64(&r, &maxpool(&s, xp)));
    }
}

#[test]
fn maxpool_backward_routes_to_first_max_and_accumulates() {
    let s = Pool::new(1, 3, 3, 1);
    let dy = [1.0, 2.0, 3.0, 4.0];
    // All equal: each output's window starts at (2oy−1, 2ox−1) clipped, so output (oy, ox) routes
    // to input (oy, ox).
    let x = [5.0; 9];
    let y = maxpool(&s, &x);
    let mut dx = [f32::NAN; 9];
    maxpool3x3s2_bwd(isa(), &s, &x, &y, &dy, &mut dx).unwrap();
    assert_eq!(dx, [1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    // The centre is the max of all four overlapping windows: it receives the sum.
    let x = [0.0, 1.0, 0.0, 1.0, 9.0, 1.0, 0.0, 1.0, 0.0];
    let y = maxpool(&s, &x);
    assert_eq!(y, [9.0; 4]);
    maxpool3x3s2_bwd(isa(), &s, &x, &y, &dy, &mut dx).unwrap();
    assert_eq!(dx, [0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn maxpool_backward_follows_y_and_falls_back_to_first_max() {
    let s = Pool::new(1, 3, 3, 1);
    let x = [0.0, 1.0, 0.0, 1.0, 9.0, 1.0, 0.0, 1.0, 0.0];
    let mut dx = [f32::NAN; 9];
    // A `y` that is not x's max routes to the first element equal to it: 1.0 at (0,1) for the top
    // windows, (1,0) and (1,2) for the bottom ones.
    maxpool3x3s2_bwd(isa(), &s, &x, &[1.0; 4], &[1.0, 2.0, 3.0, 4.0], &mut dx).unwrap();
    assert_eq!(dx, [0.0, 3.0, 0.0, 3.0, 0.0, 4.0, 0.0, 0.0, 0.0]);
    // A `y` equal to nothing in the window routes to the first maximum of x (the centre).
    maxpool3x3s2_bwd(isa(), &s, &x, &[-5.0; 4], &[1.0, 2.0, 3.0, 4.0], &mut dx).unwrap();
    assert_eq!(dx, [0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0]);
}

fn avg(s: &Pool, x: &[f32]) -> Vec<f32> {
    let mut y = vec![f32::NAN; s.avg_y_len()];
    global_avg_fwd(isa(), s, x, &mut y).unwrap();
    y
}

#[test]
fn global_avg_forward_matches_naive_and_backward_matches_finite_differences() {
    let mut rng = Rng::new(33);
    for s in SHAPES {
        let x = rng.vec(s.x_len());
        let hw = s.h * s.w;
        let want: Vec<f32> = (0..s.n * s.c)
            .map(|i| {
                let (n, c) = (i / s.c, i % s.c);
                ((0..hw).map(|p| x[(n * hw + p) * s.c + c] as f64).sum::<f64>() / hw as f64) as f32
            })
            .collect();
        assert_close(&format!("{s:?} fwd"), &avg(&s, &x), &want, 1e-5, 1e-6);
        let r = projection(&mut rng, s.avg_y_len());
        let mut dx = vec![f32::NAN; s.x_len()];
        global_avg_bwd(isa(), &s, &r, &mut dx).unwrap();
        assert_finite(&format!("{s:?} dx"), &dx);
        grad_check(&format!("{s:?} dx"), &x, &dx, 1e-2, 1e-2, 300, |xp| dot64(&r, &avg(&s, xp)));
    }
}

#[test]
fn wrong_lengths_are_errors_and_write_nothing() {
    let s = Pool::new(1, 4, 4, 2);
    let x = vec![1.0; 32];
    let mut y = vec![7.0; 8];
    let mut dx = vec![7.0; 32];
    assert_eq!(
        maxpool3x3s2_fwd(isa(), &s, &x[..31], &mut y),
        Err(KernelError::Len { arg: "x", expected: 32, got: 31 })
    );
    assert_eq!(
        maxpool3x3s2_bwd(isa(), &s, &x, &y, &y[..7], &mut dx),
        Err(KernelError::Len { arg: "dy", expected: 8, got: 7 })
    );
    assert_eq!(global_avg_fwd(isa(), &s, &x, &mut y[..4]), Err(KernelError::Len { arg: "y", expected: 2, got: 4 }));
    assert_eq!(
        global_avg_bwd(isa(), &s, &y[..2], &mut dx[..30]),
        Err(KernelError::Len { arg: "dx", expected: 32, got: 30 })
    );
    assert!(y.iter().chain(&dx).all(|&v| v == 7.0));
    assert!(matches!(global_avg_fwd(isa(), &Pool::new(1, 0, 4, 2), &[], &mut y[..2]), Err(KernelError::Shape(_))));
}

/// Pools for the SIMD-vs-scalar tests: channel counts below, at and above the 8-lane (AVX2)
/// and 4-lane (NEON) vectors, odd and even maps (clipped windows at every edge), each with an
/// input on a coarse grid (ties) holding ±0 and NaN.
fn simd_cases(rng: &mut Rng) -> Vec<(Pool, Vec<f32>)> {
    let mut cases = Vec::new();
    for c in [1, 4, 5, 7, 8, 9, 17, 64] {
        for (h, w) in [(1, 1), (2, 3), (5, 4), (7, 7), (16, 16)] {
            let s = Pool::new(2, h, w, c);
            let mut x: Vec<f32> = rng.vec(s.x_len()).iter().map(|v| (v * 8.0).round() - 4.0).collect();
            x[0] = f32::NAN;
            x[s.x_len() / 3] = -0.0;
            x[s.x_len() / 2] = f32::NAN;
            cases.push((s, x));
        }
    }
    cases
}

fn bits(t: &[f32]) -> Vec<u32> {
    t.iter().map(|u| u.to_bits()).collect()
}

#[test]
fn maxpool_simd_paths_equal_scalar_bit_for_bit() {
    // Ties, ±0 and NaN: a NaN tap never wins; a NaN first tap stays.
    for (s, x) in simd_cases(&mut Rng::new(31)) {
        let mut want = vec![0.0; s.max_y_len()];
        maxpool3x3s2_fwd(Isa::scalar(), &s, &x, &mut want).unwrap();
        for kind in tinykd_kernels::IsaKind::ALL {
            let Some(simd) = Isa::force(kind) else { continue };
            let mut got = vec![f32::NAN; s.max_y_len()];
            maxpool3x3s2_fwd(simd, &s, &x, &mut got).unwrap();
            assert_eq!(bits(&got), bits(&want), "{kind:?} {s:?}");
        }
    }
}

#[test]
fn maxpool_backward_simd_paths_equal_scalar_bit_for_bit() {
    // Ties (the gradient goes to the first equal tap), ±0, NaN inputs (a NaN output finds no
    // equal tap and takes the first-maximum route), and a `y` with outputs no window holds.
    let mut rng = Rng::new(32);
    for (s, x) in simd_cases(&mut rng) {
        let mut y = vec![0.0; s.max_y_len()];
        maxpool3x3s2_fwd(Isa::scalar(), &s, &x, &mut y).unwrap();
        let dy = rng.vec(s.max_y_len());
        let mut stray = y.clone();
        for v in stray.iter_mut().step_by(3) {
            *v += 0.5;
        }
        for y in [&y, &stray] {
            let mut want = vec![f32::NAN; s.x_len()];
            maxpool3x3s2_bwd(Isa::scalar(), &s, &x, y, &dy, &mut want).unwrap();
            for kind in tinykd_kernels::IsaKind::ALL {
                let Some(simd) = Isa::force(kind) else { continue };
                let mut got = vec![f32::NAN; s.x_len()];
                maxpool3x3s2_bwd(simd, &s, &x, y, &dy, &mut got).unwrap();
                assert_eq!(bits(&got), bits(&want), "{kind:?} {s:?}");
            }
        }
    }
}
