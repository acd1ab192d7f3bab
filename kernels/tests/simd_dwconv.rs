//! Every SIMD depthwise 3x3 forward path against the scalar path (the specification), with
//! f32 and f16 weights, with and without bias and ReLU, on shapes that hit every channel tail
//! (below, equal to, above and not a multiple of the 8-channel block), every border case
//! (1, 2, 5 and 7 pixels per side, so no interior, a one-pixel interior, wide interiors),
//! stride 1 and 2 and batch 1 and 2. Outputs are NaN-prefilled so an unwritten value fails.

mod common;

use common::{assert_close, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::dwconv::dwconv3x3_fwd;
use tinykd_kernels::shape::DwConv3x3;
use tinykd_kernels::{f16, Elem, Isa, IsaKind};

const CHANNELS: [usize; 10] = [1, 7, 8, 9, 15, 16, 17, 33, 64, 70];
const SIDES: [usize; 4] = [1, 2, 5, 7];

/// The SIMD paths this CPU can run (the scalar path is the reference).
fn simd_isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter(|&&k| k != IsaKind::Scalar).filter_map(|&k| Isa::force(k)).collect()
}

/// Runs `isa` on NaN-prefilled output.
fn run<W: Elem>(isa: Isa, s: &DwConv3x3, x: &[f32], w: &[W], b: Option<&[W]>, act: Act) -> Vec<f32> {
    let mut y = vec![f32::NAN; s.y_len()];
    dwconv3x3_fwd(isa, s, x, w, b, act, &mut y).unwrap();
    y
}

fn check_dtype<W: Elem>(isa: Isa, rng: &mut Rng) -> usize {
    let mut cases = 0;
    for &c in &CHANNELS {
        for &h in &SIDES {
            for &wd in &SIDES {
                for stride in [1, 2] {
                    let n = 1 + (c + h + wd + stride) % 2;
                    let s = DwConv3x3::new(n, h, wd, c, stride);
                    let x = rng.vec(s.x_len());
                    let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
                    let b: Vec<W> = rng.vec(c).into_iter().map(W::from_f32).collect();
                    for (bias, act) in [(None, Act::None), (Some(&b[..]), Act::Relu), (Some(&b[..]), Act::None)] {
                        let want = run(Isa::scalar(), &s, &x, &w, bias, act);
                        let got = run(isa, &s, &x, &w, bias, act);
                        let what = format!("{:?} {:?} {s:?} bias {} {act:?}", isa.kind(), W::DTYPE, bias.is_some());
                        assert!(got.iter().all(|v| v.is_finite()), "{what}: unwritten output");
                        // 10 terms of |x·w| ≤ 1: FMA vs separate rounding differ by a few ulps.
                        assert_close(&what, &got, &want, 1e-5, 1e-5);
                        if act == Act::Relu {
                            assert!(got.iter().all(|&v| v >= 0.0), "{what}: ReLU not applied");
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    cases
}

#[test]
fn simd_forward_matches_scalar_f32_weights() {
    let mut rng = Rng::new(11);
    for isa in simd_isas() {
        assert_eq!(check_dtype::<f32>(isa, &mut rng), CHANNELS.len() * SIDES.len() * SIDES.len() * 2 * 3);
    }
}

#[test]
fn simd_forward_matches_scalar_f16_weights() {
    let mut rng = Rng::new(12);
    for isa in simd_isas() {
        assert_eq!(check_dtype::<f16>(isa, &mut rng), CHANNELS.len() * SIDES.len() * SIDES.len() * 2 * 3);
    }
}

#[test]
fn simd_forward_relu_zeroes_nan_like_scalar() {
    // A NaN input reaches some outputs; ReLU maps a NaN sum to 0 on every path (`Act::apply`).
    let s = DwConv3x3::new(1, 5, 5, 17, 1);
    let mut x = Rng::new(13).vec(s.x_len());
    x[(2 * 5 + 2) * 17 + 3] = f32::NAN;
    let w = vec![1.0f32; s.w_len()];
    let want = run(Isa::scalar(), &s, &x, &w, None, Act::Relu);
    assert_eq!(want[(2 * 5 + 2) * 17 + 3], 0.0);
    for isa in simd_isas() {
        let got = run(isa, &s, &x, &w, None, Act::Relu);
        assert_eq!(got, want, "{:?}", isa.kind());
    }
}

#[test]
fn a_simd_path_exists_on_x86_64_and_aarch64() {
    // Guards against the comparison tests passing vacuously on the CI machines.
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert!(!simd_isas().is_empty());
    }
}
