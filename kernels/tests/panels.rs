//! Packed-panel weights: the layout of `pack_panels`, and the linear and conv forwards over
//! panels on every ISA (scalar included: the portable path) against the dense scalar
//! forward, for f32 and f16 weights, with and without bias and ReLU, on shapes that hit every
//! row-pass size (1–6 rows and several passes; one-pass blocks of 1–3 rows run 2 or 4 panels
//! at once, partial last panel included), column tails (below, at, above and not a
//! multiple of the 16-column panel), depth tails (not a multiple of the 4 accumulator sets),
//! depths whose panels outlast the L2 prefetch distance (the passes' k loops split there)
//! and, for convs, taps that read only padding, strides and batch > 1. Outputs are
//! NaN-prefilled so an unwritten value fails. The product with a residual in its output
//! (`linear_fwd_panels_residual`) is checked bit for bit against the plain product followed
//! by `act(y + r)` on each path.

mod common;

use common::{assert_close, Rng};
use tinykd_kernels::act::Act;
use tinykd_kernels::conv::{conv2d_bwd_input_panels, conv2d_fwd, conv2d_fwd_panels};
use tinykd_kernels::linear::panels::{pack_panels, pack_panels_both_ways, pack_panels_transposed, panels_len, PANEL};
use tinykd_kernels::linear::{linear_fwd, linear_fwd_panels, linear_fwd_panels_residual};
use tinykd_kernels::shape::{Conv2d, Linear};
use tinykd_kernels::{f16, DType, Elem, Isa, IsaKind, KernelError};

/// Every path this CPU can run.
fn isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect()
}

const EPILOGUES: [(bool, Act); 3] = [(false, Act::None), (true, Act::Relu), (true, Act::None)];

fn packed<W: Elem>(taps: usize, k: usize, n: usize, w: &[W]) -> Vec<W> {
    let mut wp = vec![W::from_f32(f32::NAN); panels_len(taps, k, n)];
    pack_panels(taps, k, n, w, &mut wp).unwrap();
    wp
}

#[test]
fn pack_panels_layout_and_padding() {
    let (taps, k, n) = (2, 3, 21);
    let w: Vec<f32> = (0..taps * k * n).map(|i| i as f32 + 1.0).collect();
    let wp = packed(taps, k, n, &w);
    assert_eq!(wp.len(), taps * k * 32);
    for t in 0..taps {
        for p in 0..k {
            for j in 0..32 {
                let got = wp[t * k * 32 + (j / PANEL) * k * PANEL + p * PANEL + j % PANEL];
                let want = if j < n { w[t * k * n + p * n + j] } else { 0.0 };
                assert_eq!(got, want, "tap {t} row {p} column {j}");
            }
        }
    }
    let mut short = vec![0.0f32; panels_len(taps, k, n) - 1];
    assert!(matches!(pack_panels(taps, k, n, &w, &mut short), Err(KernelError::Len { arg: "wp", .. })));
    assert!(matches!(pack_panels(taps, k, n, &w[1..], &mut vec![0.0; 64]), Err(KernelError::Len { arg: "w", .. })));
}

fn check_linear<W: Elem>(rng: &mut Rng) {
    for rows in [1, 2, 3, 4, 5, 6, 7, 13, 16, 17] {
        for c_in in [1, 3, 4, 5, 33, 64, 301] {
            for c_out in [1, 7, 15, 16, 17, 33, 60, 70, 200] {
                let s = Linear::new(rows, c_in, c_out);
                let x = rng.vec(s.x_len());
                let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
                let b: Vec<W> = rng.vec(c_out).into_iter().map(W::from_f32).collect();
                let wp = packed(1, c_in, c_out, &w);
                let r = rng.vec(s.y_len());
                for (has_b, act) in EPILOGUES {
                    let bias = has_b.then_some(&b[..]);
                    let mut want = vec![f32::NAN; s.y_len()];
                    linear_fwd(Isa::scalar(), &s, &x, &w, bias, act, &mut want).unwrap();
                    for isa in isas() {
                        let mut got = vec![f32::NAN; s.y_len()];
                        linear_fwd_panels(isa, &s, &x, &wp, bias, act, &mut got).unwrap();
                        let what = format!("{:?} {:?} {s:?} bias {has_b} {act:?}", isa.kind(), W::DTYPE);
                        assert_close(&what, &got, &want, 1e-5, 1e-6 * (c_in as f32 + 1.0));
                        // With a residual in `y`: the bits of the plain product, then act(y + r).
                        let mut plain = vec![f32::NAN; s.y_len()];
                        linear_fwd_panels(isa, &s, &x, &wp, bias, Act::None, &mut plain).unwrap();
                        let mut got = r.clone();
                        linear_fwd_panels_residual(isa, &s, &x, &wp, bias, act, &mut got).unwrap();
                        for (i, ((g, p), r)) in got.iter().zip(&plain).zip(&r).enumerate() {
                            let want = act.apply(p + r);
                            assert_eq!(g.to_bits(), want.to_bits(), "{what} residual: value {i}: {g} vs {want}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn transposed_packing_is_packing_of_the_transpose() {
    let mut rng = Rng::new(30);
    // Column tails below, at and above one panel; a single row and column; deeper k.
    for (k, n) in [(1, 1), (3, 5), (7, 16), (10, 17), (33, 40), (64, 16), (65, 33), (130, 17)] {
        let wt = rng.vec(n * k);
        let mut b = vec![0.0f32; k * n];
        for j in 0..n {
            for p in 0..k {
                b[p * n + j] = wt[j * k + p];
            }
        }
        let mut got = vec![f32::NAN; panels_len(1, k, n)];
        pack_panels_transposed(k, n, &wt, &mut got).unwrap();
        assert_eq!(got, packed(1, k, n, &b), "k {k} n {n}");
    }
    let mut wp = vec![0.0f32; panels_len(1, 2, 3)];
    let err = pack_panels_transposed(2, 3, &[0.0f32; 5], &mut wp).unwrap_err();
    assert!(matches!(err, KernelError::Len { arg: "wt", .. }), "{err:?}");
    let err = pack_panels_transposed(2, 3, &[0.0f32; 6], &mut wp[1..]).unwrap_err();
    assert!(matches!(err, KernelError::Len { arg: "wp", .. }), "{err:?}");
}

#[test]
fn packing_both_ways_is_the_two_packers_on_every_path() {
    let mut rng = Rng::new(32);
    // Rows and columns below, at, above and not a multiple of the 16-wide tile, a single row or
    // column, and a square of several full tiles.
    let shapes = [(1, 1), (1, 40), (40, 1), (3, 5), (16, 16), (15, 17), (17, 15), (33, 48), (48, 33), (64, 64)];
    for isa in isas() {
        for (k, n) in shapes {
            for taps in [1, 3] {
                let w = rng.vec(taps * k * n);
                let mut want_f = vec![f32::NAN; panels_len(taps, k, n)];
                let mut want_b = vec![f32::NAN; panels_len(taps, n, k)];
                pack_panels(taps, k, n, &w, &mut want_f).unwrap();
                let b_tap = panels_len(1, n, k);
                for (t, wt) in w.chunks_exact(k * n).enumerate() {
                    pack_panels_transposed(n, k, wt, &mut want_b[t * b_tap..(t + 1) * b_tap]).unwrap();
                }
                let mut fwd = vec![f32::NAN; want_f.len()];
                let mut bwd = vec![f32::NAN; want_b.len()];
                pack_panels_both_ways(isa, taps, k, n, &w, &mut fwd, &mut bwd).unwrap();
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&fwd, &want_f), "{:?} taps {taps} k {k} n {n}: fwd panels differ", isa.kind());
                assert!(same(&bwd, &want_b), "{:?} taps {taps} k {k} n {n}: bwd panels differ", isa.kind());
            }
        }
        let (mut f, mut b) = (vec![0.0; panels_len(1, 2, 3)], vec![0.0; panels_len(1, 3, 2)]);
        let err = pack_panels_both_ways(isa, 1, 2, 3, &[0.0; 5], &mut f, &mut b).unwrap_err();
        assert!(matches!(err, KernelError::Len { arg: "w", .. }), "{err:?}");
        let err = pack_panels_both_ways(isa, 1, 2, 3, &[0.0; 6], &mut f[1..], &mut b).unwrap_err();
        assert!(matches!(err, KernelError::Len { arg: "fwd", .. }), "{err:?}");
        let err = pack_panels_both_ways(isa, 1, 2, 3, &[0.0; 6], &mut f, &mut b[1..]).unwrap_err();
        assert!(matches!(err, KernelError::Len { arg: "bwd", .. }), "{err:?}");
    }
}

#[test]
fn linear_panels_match_dense_scalar_f32_and_f16() {
    let mut rng = Rng::new(31);
    check_linear::<f32>(&mut rng);
    check_linear::<f16>(&mut rng);
}

fn check_conv<W: Elem>(rng: &mut Rng) {
    // (n, h, w, c_in, c_out, k, stride, pad): 1 to 16 output pixels with taps that read only
    // padding, stride 2 to one pixel, a 7x7 stem-like conv, batch 2, pointwise with and without
    // stride, a map larger than one im2col tile, batches of small maps, and a tall pointwise.
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
        Conv2d::new(1, 9, 9, 6, 17, 3, 1, 1),
        // Batches of small maps run position by position (and past one im2col tile).
        Conv2d::new(3, 4, 4, 9, 20, 3, 2, 1),
        Conv2d::new(4, 3, 3, 6, 17, 3, 1, 1),
        Conv2d::new(70, 1, 1, 5, 18, 3, 1, 1),
        Conv2d::new(5, 4, 4, 8, 33, 1, 2, 0),
        // Tall and deep enough for several row blocks of the AVX2 path (36 rows at k = 2048),
        // the last one short.
        Conv2d::new(20, 2, 2, 2048, 20, 1, 1, 0),
        // 2x2 maps at batch 1 over several full panels and a partial one (4-row passes).
        Conv2d::new(1, 2, 2, 40, 96, 1, 1, 0),
        Conv2d::new(1, 2, 2, 16, 71, 3, 1, 1),
    ];
    for s in shapes {
        let x = rng.vec(s.x_len());
        let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
        let b: Vec<W> = rng.vec(s.c_out).into_iter().map(W::from_f32).collect();
        let wp = packed(s.kh * s.kw, s.c_in, s.c_out, &w);
        let mut scratch = vec![0.0f32; s.scratch_len()];
        for (has_b, act) in EPILOGUES {
            let bias = has_b.then_some(&b[..]);
            let mut want = vec![f32::NAN; s.y_len()];
            conv2d_fwd(Isa::scalar(), &s, &x, &w, bias, act, &mut want, &mut scratch).unwrap();
            for isa in isas() {
                let mut got = vec![f32::NAN; s.y_len()];
                scratch.fill(f32::NAN);
                conv2d_fwd_panels(isa, &s, &x, &wp, bias, act, &mut got, &mut scratch).unwrap();
                let what = format!("{:?} {:?} {s:?} bias {has_b} {act:?}", isa.kind(), W::DTYPE);
                assert_close(&what, &got, &want, 1e-5, 1e-6 * (s.k() as f32 + 1.0));
            }
        }
    }
}

#[test]
fn conv_panels_match_dense_scalar_f32_and_f16() {
    let mut rng = Rng::new(32);
    check_conv::<f32>(&mut rng);
    check_conv::<f16>(&mut rng);
}

/// Each tap's `w[t]ᵀ` packed, tap after tap (what `conv2d_bwd_input_panels` takes).
fn packed_transposed<W: Elem>(s: &Conv2d, w: &[W]) -> Vec<W> {
    let per_tap = panels_len(1, s.c_out, s.c_in);
    let mut wtp = vec![W::from_f32(f32::NAN); panels_len(s.kh * s.kw, s.c_out, s.c_in)];
    for (t, wt) in w.chunks_exact(s.c_in * s.c_out).enumerate() {
        pack_panels_transposed(s.c_out, s.c_in, wt, &mut wtp[t * per_tap..(t + 1) * per_tap]).unwrap();
    }
    wtp
}

/// The input gradient over transposed panels against the dense scalar one (im2col GEMM,
/// col2im), on the forward's shapes (taps reading only padding, strides, batches of small
/// maps), f32 and f16 weights; with f32 weights each image's bits do not depend on the batch
/// it is in (a batch split across threads changes nothing).
#[test]
fn conv_input_gradient_over_panels_matches_the_dense_one() {
    fn check<W: Elem>(rng: &mut Rng) {
        let shapes = [
            Conv2d::new(1, 1, 1, 9, 17, 3, 1, 1),
            Conv2d::new(1, 2, 2, 5, 8, 3, 1, 1),
            Conv2d::new(1, 2, 2, 33, 9, 3, 2, 1),
            Conv2d::new(1, 3, 3, 7, 70, 3, 1, 1),
            Conv2d::new(3, 2, 2, 40, 7, 3, 1, 1),
            Conv2d::new(1, 4, 4, 3, 10, 7, 2, 3),
            Conv2d::new(2, 4, 4, 16, 24, 1, 1, 0),
            Conv2d::new(5, 3, 3, 16, 24, 1, 2, 0),
            Conv2d::new(3, 4, 4, 9, 20, 3, 2, 1),
            Conv2d::new(9, 2, 2, 17, 33, 3, 1, 1),
            Conv2d::new(7, 1, 1, 5, 18, 3, 1, 1),
        ];
        for s in shapes {
            let dy = rng.vec(s.y_len());
            let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
            let w32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let wtp = packed_transposed(&s, &w);
            let mut scratch = vec![0.0f32; s.scratch_len()];
            let mut want = vec![f32::NAN; s.x_len()];
            tinykd_kernels::conv::conv2d_bwd_input(Isa::scalar(), &s, &dy, &w32, &mut want, &mut scratch).unwrap();
            for isa in isas() {
                let mut got = vec![f32::NAN; s.x_len()];
                conv2d_bwd_input_panels(isa, &s, &dy, &wtp, &mut got).unwrap();
                let what = format!("{:?} {:?} {s:?}", isa.kind(), W::DTYPE);
                assert_close(&what, &got, &want, 1e-5, 1e-6 * (s.kh * s.kw * s.c_out) as f32);
                if W::DTYPE != DType::F32 || s.n == 1 {
                    continue;
                }
                let one = Conv2d { n: 1, ..s };
                for i in 0..s.n {
                    let mut alone = vec![f32::NAN; one.x_len()];
                    let dy_i = &dy[i * one.y_len()..(i + 1) * one.y_len()];
                    conv2d_bwd_input_panels(isa, &one, dy_i, &wtp, &mut alone).unwrap();
                    let in_batch = &got[i * one.x_len()..(i + 1) * one.x_len()];
                    assert!(
                        alone.iter().zip(in_batch).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: image {i} alone differs from the batch"
                    );
                }
            }
        }
        let s = Conv2d::new(1, 2, 2, 3, 4, 3, 1, 1);
        let (dy, wtp) = (vec![0.5f32; s.y_len()], vec![W::from_f32(0.25); panels_len(9, 4, 3)]);
        let mut dx = vec![f32::NAN; s.x_len()];
        let err = conv2d_bwd_input_panels(Isa::scalar(), &s, &dy, &wtp[1..], &mut dx).unwrap_err();
        assert!(matches!(err, KernelError::Len { arg: "wtp", .. }), "{err:?}");
        let err = conv2d_bwd_input_panels(Isa::scalar(), &s, &dy[1..], &wtp, &mut dx).unwrap_err();
        assert!(matches!(err, KernelError::Len { arg: "dy", .. }), "{err:?}");
        assert!(dx.iter().all(|v| v.is_nan()));
    }
    let mut rng = Rng::new(33);
    check::<f32>(&mut rng);
    check::<f16>(&mut rng);
}

#[test]
fn panel_forwards_refuse_wrong_lengths_and_write_nothing() {
    let s = Linear::new(2, 5, 9);
    let (x, wp) = (vec![0.5f32; s.x_len()], vec![0.25f32; panels_len(1, 5, 9)]);
    let mut y = vec![f32::NAN; s.y_len()];
    let err = linear_fwd_panels(Isa::scalar(), &s, &x, &wp[1..], None, Act::None, &mut y).unwrap_err();
    assert!(matches!(err, KernelError::Len { arg: "wp", .. }), "{err:?}");
    // A dense-length weight is not a packed one.
    let err = linear_fwd_panels(Isa::scalar(), &s, &x, &wp[..45], None, Act::None, &mut y).unwrap_err();
    assert!(matches!(err, KernelError::Len { arg: "wp", .. }), "{err:?}");
    assert!(y.iter().all(|v| v.is_nan()));
    let c = Conv2d::new(1, 2, 2, 3, 4, 3, 1, 1);
    let (x, wp) = (vec![0.5f32; c.x_len()], vec![0.25f32; panels_len(9, 3, 4)]);
    let mut y = vec![f32::NAN; c.y_len()];
    let mut scratch = vec![0.0f32; c.scratch_len() - 1];
    let err = conv2d_fwd_panels(Isa::scalar(), &c, &x, &wp, None, Act::None, &mut y, &mut scratch).unwrap_err();
    assert!(matches!(err, KernelError::Len { arg: "scratch", .. }), "{err:?}");
    assert!(y.iter().all(|v| v.is_nan()));
}

/// With f32 weights each output row's bits depend only on that row (not on how many rows the
/// call has, so a batch split across threads gives the same result) and are the same on the
/// AVX2 and AVX-512 paths (each row summed with one accumulator in k order on both).
#[test]
fn f32_panel_rows_are_bit_identical_across_splits_and_simd_paths() {
    let mut rng = Rng::new(33);
    let simd: Vec<Isa> = isas().into_iter().filter(|i| i.kind() != IsaKind::Scalar).collect();
    for (rows, c_in, c_out) in [(40, 64, 70), (29, 200, 33), (13, 2048, 20), (9, 96, 200)] {
        let whole = Linear::new(rows, c_in, c_out);
        let x = rng.vec(whole.x_len());
        let w = rng.vec(whole.w_len());
        let wp = packed(1, c_in, c_out, &w);
        let mut first: Option<Vec<u32>> = None;
        for &isa in &simd {
            let mut all = vec![f32::NAN; whole.y_len()];
            linear_fwd_panels(isa, &whole, &x, &wp, None, Act::None, &mut all).unwrap();
            let bits: Vec<u32> = all.iter().map(|v| v.to_bits()).collect();
            // The same rows in two calls, split where a 12-, 6- or 4-row pass would not be.
            let cut = 7;
            for (r0, r1) in [(0, cut), (cut, rows)] {
                let part = Linear::new(r1 - r0, c_in, c_out);
                let mut y = vec![f32::NAN; part.y_len()];
                linear_fwd_panels(isa, &part, &x[r0 * c_in..r1 * c_in], &wp, None, Act::None, &mut y).unwrap();
                let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, bits[r0 * c_out..r1 * c_out], "{:?} rows {r0}..{r1} of {rows}", isa.kind());
            }
            // Single rows (batch 1: the one-row passes, 8, 4, 2 and 1 panels at a time).
            for r in 0..rows.min(5) {
                let one = Linear::new(1, c_in, c_out);
                let mut y = vec![f32::NAN; c_out];
                linear_fwd_panels(isa, &one, &x[r * c_in..(r + 1) * c_in], &wp, None, Act::None, &mut y).unwrap();
                let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, bits[r * c_out..(r + 1) * c_out], "{:?} row {r} alone", isa.kind());
            }
            match &first {
                None => first = Some(bits),
                Some(f) => assert_eq!(&bits, f, "{:?} differs from {:?}", isa.kind(), simd[0].kind()),
            }
        }
    }
}

/// The panel forwards start C at the bias and apply the ReLU as they store it; that is bit for
/// bit `relu(product + bias)` — one rounding of the product plus the bias, then the ReLU (0 for
/// −0 and NaN; a NaN input row checks the latter) — on every path, pointwise conv and linear
/// alike, f32 and f16 weights.
#[test]
fn panel_forwards_fold_bias_and_relu_bit_exactly() {
    fn check<W: Elem>(rng: &mut Rng) {
        for (rows, c_in, c_out) in [(1, 64, 70), (3, 33, 17), (13, 40, 33), (29, 16, 64)] {
            let s = Linear::new(rows, c_in, c_out);
            let mut x = rng.vec(s.x_len());
            // A NaN input makes its row's products NaN: the ReLU must give 0 there.
            x[(rows - 1) * c_in] = f32::NAN;
            let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
            let b: Vec<W> = rng.vec(c_out).into_iter().map(W::from_f32).collect();
            let wp = packed(1, c_in, c_out, &w);
            let conv = Conv2d::new(1, 1, rows, c_in, c_out, 1, 1, 0);
            let mut scratch = vec![0.0f32; conv.scratch_len()];
            for isa in isas() {
                let run = |bias: Option<&[W]>, act: Act, scratch: &mut Vec<f32>| {
                    let mut y = vec![f32::NAN; s.y_len()];
                    linear_fwd_panels(isa, &s, &x, &wp, bias, act, &mut y).unwrap();
                    let mut yc = vec![f32::NAN; s.y_len()];
                    conv2d_fwd_panels(isa, &conv, &x, &wp, bias, act, &mut yc, scratch).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                    assert_eq!(bits(&y), bits(&yc), "{:?}: linear and pointwise conv differ", isa.kind());
                    y
                };
                let plain = run(None, Act::None, &mut scratch);
                let want: Vec<f32> = plain.iter().enumerate().map(|(i, &v)| v + b[i % c_out].to_f32()).collect();
                let relu: Vec<f32> = want.iter().map(|&v| Act::Relu.apply(v)).collect();
                let what = format!("{:?} {:?} {rows}x{c_in}->{c_out}", isa.kind(), W::DTYPE);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&run(Some(&b), Act::None, &mut scratch)), bits(&want), "{what} bias");
                assert_eq!(bits(&run(Some(&b), Act::Relu, &mut scratch)), bits(&relu), "{what} bias + relu");
                let relu_only: Vec<f32> = plain.iter().map(|&v| Act::Relu.apply(v)).collect();
                assert_eq!(bits(&run(None, Act::Relu, &mut scratch)), bits(&relu_only), "{what} relu");
            }
        }
    }
    let mut rng = Rng::new(34);
    check::<f32>(&mut rng);
    check::<f16>(&mut rng);
}

/// A strided 1x1 conv over panels is the panel product over its input pixels `(s·oy, s·ox)`,
/// bias and ReLU folded, bit for bit with f32 weights (f16 within the bound): on every path, a map whose output
/// spans several im2col tiles (the last one short) and odd input sizes (pixels past the last
/// stride unread).
#[test]
fn strided_pointwise_panel_conv_is_the_product_over_the_subsampled_input() {
    fn check<W: Elem>(rng: &mut Rng) {
        for s in [
            Conv2d::new(20, 4, 4, 12, 20, 1, 2, 0),
            Conv2d::new(3, 5, 7, 33, 17, 1, 2, 0),
            Conv2d::new(2, 3, 3, 8, 40, 1, 3, 0),
        ] {
            let x = rng.vec(s.x_len());
            let w: Vec<W> = rng.vec(s.w_len()).into_iter().map(W::from_f32).collect();
            let b: Vec<W> = rng.vec(s.c_out).into_iter().map(W::from_f32).collect();
            let wp = packed(1, s.c_in, s.c_out, &w);
            let (oh, ow) = (s.out_h(), s.out_w());
            let mut sub = Vec::with_capacity(s.n * oh * ow * s.c_in);
            for img in 0..s.n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let at = ((img * s.h + oy * s.stride) * s.w + ox * s.stride) * s.c_in;
                        sub.extend_from_slice(&x[at..at + s.c_in]);
                    }
                }
            }
            let lin = Linear::new(s.n * oh * ow, s.c_in, s.c_out);
            let mut scratch = vec![f32::NAN; s.scratch_len()];
            for isa in isas() {
                for (has_b, act) in EPILOGUES {
                    let bias = has_b.then_some(&b[..]);
                    let mut want = vec![f32::NAN; s.y_len()];
                    linear_fwd_panels(isa, &lin, &sub, &wp, bias, act, &mut want).unwrap();
                    let mut got = vec![f32::NAN; s.y_len()];
                    conv2d_fwd_panels(isa, &s, &x, &wp, bias, act, &mut got, &mut scratch).unwrap();
                    let what = format!("{:?} {:?} {s:?} bias {has_b} {act:?}", isa.kind(), W::DTYPE);
                    if W::DTYPE == DType::F32 {
                        assert_eq!(bits(&got), bits(&want), "{what}");
                    } else {
                        // f16 passes of 1–3 rows split their sums on AVX2: how rows group into
                        // calls (im2col tiles here) may change the last bit.
                        assert_close(&what, &got, &want, 1e-5, 1e-6 * (s.c_in as f32 + 1.0));
                    }
                }
            }
        }
    }
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }
    let mut rng = Rng::new(35);
    check::<f32>(&mut rng);
    check::<f16>(&mut rng);
}

/// With f32 weights every SIMD path sums each value as one fused chain in `p` order from zero
/// and then adds the bias (`bias + Σ a·b`, `a.mul_add(b, acc)` per term): checked bit for bit
/// against that sum on each path this CPU has, so the x86 paths and NEON (under qemu in CI)
/// give the same bits. Shapes hit 1–13 rows (every pass size, several passes), column tails,
/// 2-panel one-row passes, 4-row passes over many panels, and depths not a multiple of 4.
#[test]
fn f32_panel_products_are_one_fused_chain_per_value_on_every_simd_path() {
    let mut rng = Rng::new(34);
    let simd: Vec<Isa> = isas().into_iter().filter(|i| i.kind() != IsaKind::Scalar).collect();
    for (rows, c_in, c_out) in [
        (1, 301, 70),
        (2, 64, 33),
        (3, 5, 16),
        (4, 33, 17),
        (5, 96, 40),
        (13, 7, 200),
        (1, 2048, 20),
        (4, 301, 200),
        (4, 64, 48),
        (4, 1027, 100),
    ] {
        let s = Linear::new(rows, c_in, c_out);
        let x = rng.vec(s.x_len());
        let w = rng.vec(s.w_len());
        let b = rng.vec(c_out);
        let wp = packed(1, c_in, c_out, &w);
        let want: Vec<f32> = (0..rows * c_out)
            .map(|o| {
                let (i, j) = (o / c_out, o % c_out);
                let acc = (0..c_in).fold(0.0f32, |acc, p| x[i * c_in + p].mul_add(w[p * c_out + j], acc));
                b[j] + acc
            })
            .collect();
        for &isa in &simd {
            let mut y = vec![f32::NAN; s.y_len()];
            linear_fwd_panels(isa, &s, &x, &wp, Some(&b), Act::None, &mut y).unwrap();
            assert_eq!(y, want, "{:?} {s:?}", isa.kind());
        }
    }
}
