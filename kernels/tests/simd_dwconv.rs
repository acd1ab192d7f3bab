//! Every SIMD depthwise 3x3 path (forward, and the backward passes where an ISA has them)
//! against the scalar path (the specification), with f32 and f16 weights, with and without
//! bias and ReLU, on shapes that hit every channel tail (below, equal to, above and not a
//! multiple of the 8-channel block), every border case (1, 2, 5 and 7 pixels per side, so no
//! interior, a one-pixel interior, wide interiors), stride 1 and 2 and batch 1 and 2. Outputs
//! are NaN-prefilled so an unwritten value fails.

mod common;

use common::{assert_close, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::dwconv::{dwconv3x3_bwd_input, dwconv3x3_bwd_weight, dwconv3x3_fwd};
use tinykd_kernels::shape::DwConv3x3;
use tinykd_kernels::{f16, Elem, Isa, IsaKind};

const CHANNELS: [usize; 12] = [1, 7, 8, 9, 15, 16, 17, 24, 33, 56, 64, 70];
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

/// Every channel count × side × side × stride, batch 1 or 2.
fn grid() -> impl Iterator<Item = DwConv3x3> {
    CHANNELS.iter().flat_map(|&c| {
        SIDES.iter().flat_map(move |&h| {
            SIDES.iter().flat_map(move |&wd| {
                [1, 2].into_iter().map(move |stride| DwConv3x3::new(1 + (c + h + wd + stride) % 2, h, wd, c, stride))
            })
        })
    })
}

fn check_dtype<W: Elem>(isa: Isa, rng: &mut Rng) -> usize {
    let mut cases = 0;
    for s in grid() {
        let c = s.c;
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
fn avx512_forward_is_the_avx2_forward_bit_for_bit() {
    // The same lanes compute the same sums in the same order on both x86 paths (16-lane zmm
    // blocks, then 8-lane, then the stack-copy tail), with f32 and f16 weights, and so does
    // the stride-1 input gradient.
    let (Some(avx2), Some(avx512)) = (Isa::force(IsaKind::Avx2), Isa::force(IsaKind::Avx512)) else { return };
    let mut rng = Rng::new(14);
    for s in grid() {
        let x = rng.vec(s.x_len());
        let w = rng.vec(s.w_len());
        let b = rng.vec(s.c);
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
        for act in [Act::None, Act::Relu] {
            assert_eq!(run(avx512, &s, &x, &w, Some(&b), act), run(avx2, &s, &x, &w, Some(&b), act), "{s:?} {act:?}");
            assert_eq!(run(avx512, &s, &x, &wh, Some(&bh), act), run(avx2, &s, &x, &wh, Some(&bh), act), "f16 {s:?}");
        }
        if s.stride == 1 {
            let dy = rng.vec(s.y_len());
            let (mut a, mut b2) = (vec![f32::NAN; s.x_len()], vec![f32::NAN; s.x_len()]);
            dwconv3x3_bwd_input(avx512, &s, &dy, &w, &mut a).unwrap();
            dwconv3x3_bwd_input(avx2, &s, &dy, &w, &mut b2).unwrap();
            assert_eq!(a, b2, "dx {s:?}");
        }
    }
}

#[test]
fn a_simd_path_exists_on_x86_64_and_aarch64() {
    // Guards against the comparison tests passing vacuously on the CI machines.
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert!(!simd_isas().is_empty());
    }
}

#[test]
fn simd_backward_matches_scalar() {
    let mut rng = Rng::new(12);
    for isa in simd_isas() {
        let mut cases = 0;
        for s in grid() {
            let n = s.n;
            let (x, w, dy) = (rng.vec(s.x_len()), rng.vec(s.w_len()), rng.vec(s.y_len()));
            let what = format!("{:?} {s:?}", isa.kind());
            let (mut want, mut got) = (vec![f32::NAN; s.x_len()], vec![f32::NAN; s.x_len()]);
            dwconv3x3_bwd_input(Isa::scalar(), &s, &dy, &w, &mut want).unwrap();
            dwconv3x3_bwd_input(isa, &s, &dy, &w, &mut got).unwrap();
            // At most 9 terms of |dy·w| ≤ 1.
            assert_close(&format!("dx {what}"), &got, &want, 1e-5, 1e-5);
            let (mut want, mut got) = (vec![f32::NAN; s.w_len()], vec![f32::NAN; s.w_len()]);
            dwconv3x3_bwd_weight(Isa::scalar(), &s, &x, &dy, &mut want).unwrap();
            dwconv3x3_bwd_weight(isa, &s, &x, &dy, &mut got).unwrap();
            // Sums over up to n·h·w pixels: the tolerance grows with their count.
            let terms = (n * s.out_h() * s.out_w()) as f32;
            assert_close(&format!("dw {what}"), &got, &want, 1e-5 * terms, 1e-6 * terms);
            cases += 1;
        }
        assert_eq!(cases, CHANNELS.len() * SIDES.len() * SIDES.len() * 2);
        // Stride-1 maps of at least 64 pixels (the AVX2 weight gradient sums in registers
        // there, image by image), with every channel tail, batch 1 and 3.
        for (n, h, wd) in [(1, 8, 8), (3, 9, 11), (2, 16, 4)] {
            for c in [1, 7, 8, 9, 17, 40] {
                let s = DwConv3x3::new(n, h, wd, c, 1);
                let (x, dy) = (rng.vec(s.x_len()), rng.vec(s.y_len()));
                let (mut want, mut got) = (vec![f32::NAN; s.w_len()], vec![f32::NAN; s.w_len()]);
                dwconv3x3_bwd_weight(Isa::scalar(), &s, &x, &dy, &mut want).unwrap();
                dwconv3x3_bwd_weight(isa, &s, &x, &dy, &mut got).unwrap();
                let terms = (n * h * wd) as f32;
                assert_close(&format!("dw {:?} {s:?}", isa.kind()), &got, &want, 1e-5 * terms, 1e-6 * terms);
            }
        }
    }
}

/// `act(bias + Σ x·w)` summed as one fused chain per output — the bias first, then the
/// in-bounds taps in row-major order, `x.mul_add(w, acc)` each — the order every SIMD forward
/// promises (so the x86 and NEON paths give the same bits).
fn fused_fwd(s: &DwConv3x3, x: &[f32], w: &[f32], b: Option<&[f32]>, act: Act) -> Vec<f32> {
    let (oh, ow, c) = (s.out_h(), s.out_w(), s.c);
    let mut y = vec![0.0f32; s.y_len()];
    for n in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = b.map_or(0.0, |b| b[ch]);
                    for t in 0..9 {
                        let (iy, ix) = ((oy * s.stride + t / 3) as isize - 1, (ox * s.stride + t % 3) as isize - 1);
                        if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                            let xv = x[((n * s.h + iy as usize) * s.w + ix as usize) * c + ch];
                            acc = xv.mul_add(w[t * c + ch], acc);
                        }
                    }
                    y[((n * oh + oy) * ow + ox) * c + ch] = act.apply(acc);
                }
            }
        }
    }
    y
}

#[test]
fn simd_forward_is_one_fused_chain_per_value_on_every_path() {
    // Bit for bit, on every SIMD path this CPU has (x86: AVX2, AVX-512; aarch64 under qemu:
    // NEON), f32 and f16 weights (widened exactly), every tail and border class of the grid;
    // and the stride-1 input gradient, the same loop over `dy` with the kernel flipped.
    let mut rng = Rng::new(15);
    for isa in simd_isas() {
        for s in grid() {
            let x = rng.vec(s.x_len());
            let w = rng.vec(s.w_len());
            let b = rng.vec(s.c);
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let (wr, br): (Vec<f32>, Vec<f32>) =
                (wh.iter().map(|v| v.to_f32()).collect(), bh.iter().map(|v| v.to_f32()).collect());
            for act in [Act::None, Act::Relu] {
                let what = format!("{:?} {s:?} {act:?}", isa.kind());
                assert_eq!(run(isa, &s, &x, &w, Some(&b), act), fused_fwd(&s, &x, &w, Some(&b), act), "{what}");
                assert_eq!(run(isa, &s, &x, &wh, Some(&bh), act), fused_fwd(&s, &x, &wr, Some(&br), act), "f16 {what}");
            }
            if s.stride == 1 {
                let dy = rng.vec(s.y_len());
                let mut dx = vec![f32::NAN; s.x_len()];
                dwconv3x3_bwd_input(isa, &s, &dy, &w, &mut dx).unwrap();
                let flipped: Vec<f32> = (0..9).flat_map(|t| w[(8 - t) * s.c..(9 - t) * s.c].to_vec()).collect();
                assert_eq!(dx, fused_fwd(&s, &dy, &flipped, None, Act::None), "dx {:?} {s:?}", isa.kind());
            }
        }
    }
}
