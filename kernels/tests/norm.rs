//! Batch norm: training forward vs naive f64 loops (Paddle's biased variance), running-stat
//! update by hand, stable moments, gradient checks for x, γ, β, chunked == whole batch,
//! inference (f32/f16 params), folding into a conv, and error cases.
mod common;

use common::{assert_close, dot64, grad_check, projection, Rng};
use tinykd_kernels::act::{add_inplace, relu_bwd, relu_fwd, Act};
use tinykd_kernels::norm::*;
use tinykd_kernels::shape::Channels;
use tinykd_kernels::{f16, Isa, KernelError};

/// Asserts every value is finite: a NaN gradient would slip through `grad_check`'s comparisons.
fn assert_finite(what: &str, v: &[f32]) {
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite value in {v:?}");
}
fn isa() -> Isa {
    Isa::scalar()
}

/// Whole-batch statistics in f64: (mean, biased variance) per channel.
fn naive_stats(s: &Channels, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0.0f64; s.c];
    let mut var = vec![0.0f64; s.c];
    for ch in 0..s.c {
        mean[ch] = (0..s.rows).map(|r| x[r * s.c + ch] as f64).sum::<f64>() / s.rows as f64;
        var[ch] = (0..s.rows).map(|r| (x[r * s.c + ch] as f64 - mean[ch]).powi(2)).sum::<f64>() / s.rows as f64;
    }
    (mean, var)
}

struct Train {
    y: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn train(s: &Channels, p: BnParams, x: &[f32], g: &[f32], b: &[f32], rm0: &[f32], rv0: &[f32]) -> Train {
    let mut t = Train {
        y: vec![f32::NAN; s.len()],
        mean: vec![f32::NAN; s.c],
        invstd: vec![f32::NAN; s.c],
        rm: rm0.to_vec(),
        rv: rv0.to_vec(),
    };
    bn_train_fwd(isa(), s, p, x, g, b, &mut t.rm, &mut t.rv, &mut t.y, &mut t.mean, &mut t.invstd).unwrap();
    t
}

const SHAPES: [Channels; 4] = [Channels::new(1, 3), Channels::new(6, 5), Channels::new(50, 7), Channels::new(17, 33)];

#[test]
fn train_forward_matches_naive() {
    let mut rng = Rng::new(21);
    let p = BnParams::PADDLE;
    for s in SHAPES {
        let x: Vec<f32> = rng.vec(s.len()).iter().map(|v| 3.0 * v + 0.5).collect();
        let (g, b, rm0) = (rng.vec(s.c), rng.vec(s.c), rng.vec(s.c));
        let rv0: Vec<f32> = (0..s.c).map(|_| rng.uniform(0.5, 2.0)).collect();
        let t = train(&s, p, &x, &g, &b, &rm0, &rv0);
        let (mean, var) = naive_stats(&s, &x);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + p.eps as f64).sqrt()).collect();
        let y: Vec<f32> = (0..s.len())
            .map(|i| {
                let ch = i % s.c;
                (g[ch] as f64 * (x[i] as f64 - mean[ch]) * invstd[ch] + b[ch] as f64) as f32
            })
            .collect();
        let m = 0.9f64;
        let rm: Vec<f32> = (0..s.c).map(|c| (m * rm0[c] as f64 + (1.0 - m) * mean[c]) as f32).collect();
        let rv: Vec<f32> = (0..s.c).map(|c| (m * rv0[c] as f64 + (1.0 - m) * var[c]) as f32).collect();
        let name = format!("{s:?}");
        let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        assert_close(&format!("{name} y"), &t.y, &y, 1e-4, 1e-4);
        assert_close(&format!("{name} mean"), &t.mean, &f32s(&mean), 1e-5, 1e-6);
        // rows = 1 has zero variance: invstd = 1/√ε is large, compare relatively.
        assert_close(&format!("{name} invstd"), &t.invstd, &f32s(&invstd), 1e-4, 1e-5);
        assert_close(&format!("{name} running_mean"), &t.rm, &rm, 1e-5, 1e-6);
        assert_close(&format!("{name} running_var"), &t.rv, &rv, 1e-5, 1e-6);
    }
}

#[test]
fn running_stats_by_hand() {
    // One channel, x = 1, 2, 3, 4: μ = 2.5, biased σ² = 1.25 (unbiased would be 5/3).
    let s = Channels::new(4, 1);
    let t = train(&s, BnParams::PADDLE, &[1.0, 2.0, 3.0, 4.0], &[2.0], &[1.0], &[0.5], &[2.0]);
    assert!((t.rm[0] - (0.9 * 0.5 + 0.1 * 2.5)).abs() < 1e-6, "running mean {}", t.rm[0]);
    assert!((t.rv[0] - (0.9 * 2.0 + 0.1 * 1.25)).abs() < 1e-6, "running var {}", t.rv[0]);
    let invstd = 1.0 / (1.25f32 + 1e-5).sqrt();
    assert!((t.invstd[0] - invstd).abs() < 1e-6);
    assert_eq!(t.mean[0], 2.5);
    let want: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| 2.0 * (x - 2.5) * invstd + 1.0).collect();
    assert_close("y", &t.y, &want, 1e-6, 1e-6);
}

#[test]
fn moments_are_stable_with_a_large_mean() {
    // Mean 1e4, spread 1e-2: a naive Σx² − (Σx)²/n in f32 loses every digit of the variance.
    let mut rng = Rng::new(22);
    let s = Channels::new(1000, 3);
    let x: Vec<f32> = rng.vec(s.len()).iter().map(|v| 1.0e4 + 1.0e-2 * v).collect();
    let (mut mean, mut m2) = (vec![0.0; 3], vec![0.0; 3]);
    bn_partial_moments(isa(), &s, &x, &mut mean, &mut m2).unwrap();
    let (_, var) = naive_stats(&s, &x);
    for ch in 0..3 {
        let got = m2[ch] as f64 / s.rows as f64;
        assert!((got - var[ch]).abs() <= 0.02 * var[ch], "channel {ch}: var {got}, want {}", var[ch]);
    }
}

fn train_loss(s: &Channels, x: &[f32], g: &[f32], b: &[f32], r: &[f32]) -> f64 {
    let c = s.c;
    dot64(r, &train(s, BnParams::PADDLE, x, g, b, &vec![0.0; c], &vec![1.0; c]).y)
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(23);
    for s in [Channels::new(12, 5), Channels::new(37, 3), Channels::new(2, 7)] {
        let x = rng.vec(s.len());
        let g: Vec<f32> = (0..s.c).map(|_| rng.uniform(0.5, 1.5)).collect();
        let b = rng.vec(s.c);
        let r = projection(&mut rng, s.len());
        let t = train(&s, BnParams::PADDLE, &x, &g, &b, &vec![0.0; s.c], &vec![1.0; s.c]);
        let mut dx = vec![f32::NAN; s.len()];
        let (mut dg, mut db) = (vec![f32::NAN; s.c], vec![f32::NAN; s.c]);
        bn_bwd(isa(), &s, &x, &r, &g, &t.mean, &t.invstd, &mut dx, &mut dg, &mut db).unwrap();
        let name = format!("{s:?}");
        assert_finite(&format!("{name} dx"), &dx);
        grad_check(&format!("{name} dx"), &x, &dx, 1e-2, 2e-2, 200, |xp| train_loss(&s, xp, &g, &b, &r));
        assert_finite(&format!("{name} dgamma"), &dg);
        grad_check(&format!("{name} dgamma"), &g, &dg, 1e-2, 1e-2, 200, |gp| train_loss(&s, &x, gp, &b, &r));
        assert_finite(&format!("{name} dbeta"), &db);
        grad_check(&format!("{name} dbeta"), &b, &db, 1e-2, 1e-2, 200, |bp| train_loss(&s, &x, &g, bp, &r));
    }
}

/// Splits rows `0..s.rows` into chunks of the given sizes (the last takes the rest).
fn chunks(s: &Channels, sizes: &[usize]) -> Vec<(usize, Channels)> {
    let mut out = Vec::new();
    let mut r0 = 0;
    for &n in sizes {
        out.push((r0, Channels::new(n, s.c)));
        r0 += n;
    }
    out.push((r0, Channels::new(s.rows - r0, s.c)));
    out
}

#[test]
fn chunked_batch_equals_whole_batch() {
    let mut rng = Rng::new(24);
    let s = Channels::new(50, 7);
    let p = BnParams::PADDLE;
    let x: Vec<f32> = rng.vec(s.len()).iter().map(|v| 2.0 * v - 0.7).collect();
    let (g, b, rm0, rv0) = (rng.vec(s.c), rng.vec(s.c), rng.vec(s.c), vec![1.5; s.c]);
    let dy = rng.vec(s.len());
    let whole = train(&s, p, &x, &g, &b, &rm0, &rv0);
    let mut dx_whole = vec![0.0; s.len()];
    let (mut dg_whole, mut db_whole) = (vec![0.0; s.c], vec![0.0; s.c]);
    bn_bwd(isa(), &s, &x, &dy, &g, &whole.mean, &whole.invstd, &mut dx_whole, &mut dg_whole, &mut db_whole).unwrap();

    for sizes in [&[7usize, 13, 1][..], &[25][..], &[1, 1, 1, 1, 1, 1, 1, 1][..]] {
        let parts = chunks(&s, sizes);
        let c = s.c;
        let rows = |r0: usize, cs: &Channels| r0 * c..(r0 + cs.rows) * c;
        // Forward: partial moments per chunk, merged in chunk order.
        let (mut mean, mut m2, mut count) = (vec![0.0; c], vec![0.0; c], 0);
        for (r0, cs) in &parts {
            let (mut pm, mut pq) = (vec![0.0; c], vec![0.0; c]);
            bn_partial_moments(isa(), cs, &x[rows(*r0, cs)], &mut pm, &mut pq).unwrap();
            count = bn_merge_moments(isa(), count, &mut mean, &mut m2, cs.rows, &pm, &pq).unwrap();
        }
        assert_eq!(count, s.rows);
        let (mut rm, mut rv, mut invstd) = (rm0.clone(), rv0.clone(), vec![0.0; c]);
        bn_finish_moments(isa(), p, count, &mean, &m2, &mut rm, &mut rv, &mut invstd).unwrap();
        let mut y = vec![f32::NAN; s.len()];
        for (r0, cs) in &parts {
            let range = rows(*r0, cs);
            bn_train_apply(isa(), cs, &x[range.clone()], &g, &b, &mean, &invstd, Act::None, &mut y[range]).unwrap();
        }
        let name = format!("chunks {sizes:?}");
        assert_close(&format!("{name} mean"), &mean, &whole.mean, 1e-5, 1e-6);
        assert_close(&format!("{name} invstd"), &invstd, &whole.invstd, 1e-5, 1e-6);
        assert_close(&format!("{name} running_mean"), &rm, &whole.rm, 1e-5, 1e-6);
        assert_close(&format!("{name} running_var"), &rv, &whole.rv, 1e-5, 1e-6);
        assert_close(&format!("{name} y"), &y, &whole.y, 1e-5, 1e-5);

        // Backward: partial sums per chunk, added in chunk order, then apply per chunk.
        let (mut sdy, mut sdx) = (vec![0.0; c], vec![0.0; c]);
        for (r0, cs) in &parts {
            let range = rows(*r0, cs);
            let (mut a, mut bsum) = (vec![f32::NAN; c], vec![f32::NAN; c]);
            bn_bwd_partial_sums(
                isa(),
                cs,
                &x[range.clone()],
                &dy[range],
                None,
                &whole.mean,
                &whole.invstd,
                &mut a,
                &mut bsum,
            )
            .unwrap();
            add_inplace(isa(), &mut sdy, &a).unwrap();
            add_inplace(isa(), &mut sdx, &bsum).unwrap();
        }
        let mut dx = vec![f32::NAN; s.len()];
        for (r0, cs) in &parts {
            let range = rows(*r0, cs);
            bn_bwd_apply(
                isa(),
                cs,
                s.rows,
                &x[range.clone()],
                &dy[range.clone()],
                None,
                &g,
                &whole.mean,
                &whole.invstd,
                &sdy,
                &sdx,
                &mut dx[range],
            )
            .unwrap();
        }
        assert_close(&format!("{name} dbeta"), &sdy, &db_whole, 1e-5, 1e-5);
        assert_close(&format!("{name} dgamma"), &sdx, &dg_whole, 1e-5, 1e-5);
        assert_close(&format!("{name} dx"), &dx, &dx_whole, 1e-4, 1e-5);
    }
}

#[test]
fn merge_into_empty_accumulator_copies() {
    let (mut m, mut q) = (vec![9.0; 2], vec![9.0; 2]);
    let n = bn_merge_moments(isa(), 0, &mut m, &mut q, 3, &[1.0, 2.0], &[0.5, 0.25]).unwrap();
    assert_eq!((n, m, q), (3, vec![1.0, 2.0], vec![0.5, 0.25]));
    // {0, 2} (mean 1, M2 2) ⊕ {4} (mean 4, M2 0) = {0, 2, 4}: mean 2, M2 = 4 + 0 + 4 = 8.
    let (mut m, mut q) = (vec![1.0], vec![2.0]);
    let n = bn_merge_moments(isa(), 2, &mut m, &mut q, 1, &[4.0], &[0.0]).unwrap();
    assert_eq!(n, 3);
    assert!((m[0] - 2.0).abs() < 1e-6 && (q[0] - 8.0).abs() < 1e-5, "mean {} m2 {}", m[0], q[0]);
}

#[allow(clippy::too_many_arguments)]
fn naive_infer(s: &Channels, eps: f32, x: &[f32], g: &[f32], b: &[f32], m: &[f32], v: &[f32], act: Act) -> Vec<f32> {
    (0..s.len())
        .map(|i| {
            let c = i % s.c;
            let y = g[c] as f64 * (x[i] as f64 - m[c] as f64) / (v[c] as f64 + eps as f64).sqrt() + b[c] as f64;
            act.apply(y as f32)
        })
        .collect()
}

#[test]
fn inference_matches_naive_f32_and_f16() {
    let mut rng = Rng::new(25);
    for s in [Channels::new(5, 3), Channels::new(9, 70), Channels::new(1, 32)] {
        let x = rng.vec(s.len());
        let (g, b, m) = (rng.vec(s.c), rng.vec(s.c), rng.vec(s.c));
        let v: Vec<f32> = (0..s.c).map(|_| rng.uniform(0.1, 2.0)).collect();
        for act in [Act::None, Act::Relu] {
            let mut y = vec![f32::NAN; s.len()];
            bn_infer_fwd(isa(), &s, 1e-5, &x, &g, &b, &m, &v, act, &mut y).unwrap();
            assert_close(
                &format!("{s:?} {act:?} f32"),
                &y,
                &naive_infer(&s, 1e-5, &x, &g, &b, &m, &v, act),
                1e-5,
                1e-5,
            );

            let h = |v: &[f32]| v.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
            let w = |v: &[f16]| v.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
            let (g16, b16, m16, v16) = (h(&g), h(&b), h(&m), h(&v));
            bn_infer_fwd(isa(), &s, 1e-5, &x, &g16, &b16, &m16, &v16, act, &mut y).unwrap();
            let want = naive_infer(&s, 1e-5, &x, &w(&g16), &w(&b16), &w(&m16), &w(&v16), act);
            assert_close(&format!("{s:?} {act:?} f16"), &y, &want, 1e-5, 1e-5);
        }
    }
}

/// Naive NHWC conv, HWIO weights `[k][k][c_in][c_out]`, zero padding, in f64.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    n: usize,
    h: usize,
    wd: usize,
    ci: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let mut y = vec![0.0; n * oh * ow * co];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * stride + ky) as isize - pad as isize,
                                (ox * stride + kx) as isize - pad as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            for i in 0..ci {
                                let xv = x[((b * h + iy as usize) * wd + ix as usize) * ci + i] as f64;
                                acc += xv * w[((ky * k + kx) * ci + i) * co + o] as f64;
                            }
                        }
                    }
                    y[((b * oh + oy) * ow + ox) * co + o] = acc as f32;
                }
            }
        }
    }
    y
}

/// Naive depthwise 3x3, pad 1, HWC weights `[3][3][c]`.
#[allow(clippy::too_many_arguments)]
fn naive_dwconv(
    n: usize,
    h: usize,
    wd: usize,
    c: usize,
    stride: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (oh, ow) = ((h - 1) / stride + 1, (wd - 1) / stride + 1);
    let mut y = vec![0.0; n * oh * ow * c];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = bias.map_or(0.0, |b| b[ch] as f64);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * stride + ky) as isize - 1, (ox * stride + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && iy < h as isize && ix < wd as isize {
                                acc += x[((b * h + iy as usize) * wd + ix as usize) * c + ch] as f64
                                    * w[(ky * 3 + kx) * c + ch] as f64;
                            }
                        }
                    }
                    y[((b * oh + oy) * ow + ox) * c + ch] = acc as f32;
                }
            }
        }
    }
    y
}

/// A conv over fixed input: `(weights, optional bias) -> output`.
type ConvFn<'a> = dyn Fn(&[f32], Option<&[f32]>) -> Vec<f32> + 'a;

#[test]
fn folded_conv_equals_conv_then_bn() {
    let mut rng = Rng::new(26);
    let eps = 1e-5;
    let check = |name: &str, c_out: usize, w: &[f32], conv: &ConvFn, rng: &mut Rng| {
        let (g, b, m) = (rng.vec(c_out), rng.vec(c_out), rng.vec(c_out));
        let v: Vec<f32> = (0..c_out).map(|_| rng.uniform(0.05, 3.0)).collect();
        let plain = conv(w, None);
        let s = Channels::new(plain.len() / c_out, c_out);
        let mut want = vec![0.0; plain.len()];
        bn_infer_fwd(isa(), &s, eps, &plain, &g, &b, &m, &v, Act::None, &mut want).unwrap();
        let (mut wf, mut bf) = (vec![f32::NAN; w.len()], vec![f32::NAN; c_out]);
        bn_fold(c_out, eps, w, &g, &b, &m, &v, &mut wf, &mut bf).unwrap();
        let got = conv(&wf, Some(&bf));
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(name, &got, &want, 1e-5, 1e-5 * scale);
    };
    // 3x3 stride 2 pad 1 HWIO conv, batch 2, odd channels.
    let (n, h, wd, ci, co) = (2, 7, 6, 3, 5);
    let x = rng.vec(n * h * wd * ci);
    let w = rng.vec(9 * ci * co);
    check("conv3x3 s2", co, &w, &|w, b| naive_conv(n, h, wd, ci, co, 3, 2, 1, &x, w, b), &mut rng);
    // Pointwise (IO weights) = 1x1 conv.
    let w = rng.vec(ci * co);
    check("pointwise", co, &w, &|w, b| naive_conv(n, h, wd, ci, co, 1, 1, 0, &x, w, b), &mut rng);
    // Depthwise HWC, k = 9.
    let c = 3;
    let w = rng.vec(9 * c);
    check("depthwise s1", c, &w, &|w, b| naive_dwconv(n, h, wd, c, 1, &x, w, b), &mut rng);
}

#[test]
fn errors_leave_outputs_untouched() {
    let s = Channels::new(4, 3);
    let p = BnParams::PADDLE;
    let x = vec![1.0; 12];
    let one = vec![1.0; 3];
    let (mut rm, mut rv, mut y, mut sm, mut si) =
        (vec![7.0; 3], vec![7.0; 3], vec![7.0; 12], vec![7.0; 3], vec![7.0; 2]);
    let e = bn_train_fwd(isa(), &s, p, &x, &one, &one, &mut rm, &mut rv, &mut y, &mut sm, &mut si).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "save_invstd", expected: 3, got: 2 });
    let bad = BnParams { eps: 1e-5, momentum: 1.5 };
    let mut si = vec![7.0; 3];
    assert!(matches!(
        bn_train_fwd(isa(), &s, bad, &x, &one, &one, &mut rm, &mut rv, &mut y, &mut sm, &mut si),
        Err(KernelError::Shape(_))
    ));
    assert!(rm.iter().chain(&rv).chain(&y).chain(&sm).chain(&si).all(|&v| v == 7.0));

    let (mut dx, mut dg, mut db) = (vec![7.0; 12], vec![7.0; 3], vec![7.0; 3]);
    let e = bn_bwd(isa(), &s, &x, &x[..11], &one, &one, &one, &mut dx, &mut dg, &mut db).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "dy", expected: 12, got: 11 });
    let e = bn_bwd_apply(isa(), &s, 3, &x, &x, None, &one, &one, &one, &one, &one, &mut dx).unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)));
    let e = bn_bwd_partial_sums(isa(), &s, &x, &x, None, &one, &one, &mut dg, &mut db[..2]).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "sum_dy_xhat", expected: 3, got: 2 });
    let short = Some(ReluAfter { gamma: &one, beta: &one[..2] });
    let e = bn_bwd_partial_sums(isa(), &s, &x, &x, short, &one, &one, &mut dg, &mut db).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "relu.beta", expected: 3, got: 2 });
    let e = bn_bwd_apply(isa(), &s, 4, &x, &x, short, &one, &one, &one, &one, &one, &mut dx).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "relu.beta", expected: 3, got: 2 });
    assert!(dx.iter().chain(&dg).chain(&db).all(|&v| v == 7.0));

    let e = bn_infer_fwd(isa(), &s, 1e-5, &x, &one, &one, &one, &one[..2], Act::None, &mut y).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "var", expected: 3, got: 2 });
    let e = bn_partial_moments(isa(), &s, &x, &mut sm, &mut rm[..1]).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "m2", expected: 3, got: 1 });
    let e = bn_merge_moments(isa(), 0, &mut sm, &mut rm, 0, &one, &one).unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)));
    let e = bn_finish_moments(isa(), p, 4, &one, &one, &mut rm, &mut rv, &mut si[..2]).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "invstd", expected: 3, got: 2 });
    assert!(rm.iter().chain(&rv).chain(&y).chain(&sm).chain(&si).all(|&v| v == 7.0));

    let (mut wf, mut bf) = (vec![7.0; 10], vec![7.0; 3]);
    assert!(matches!(bn_fold(3, 1e-5, &x[..10], &one, &one, &one, &one, &mut wf, &mut bf), Err(KernelError::Shape(_))));
    let e = bn_fold(3, 1e-5, &x[..9], &one, &one, &one, &one, &mut wf, &mut bf).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "w_out", expected: 9, got: 10 });
    assert!(wf.iter().chain(&bf).all(|&v| v == 7.0));
}

#[test]
fn bn_infer_simd_paths_equal_scalar_bit_for_bit() {
    // Channel counts below, at and above the 8-lane vector and the 32-channel block, rows of
    // them, ReLU or not, f32 and f16 statistics, and NaN/±0 inputs (ReLU maps NaN to 0).
    let mut rng = Rng::new(77);
    for c in [1, 7, 8, 9, 31, 32, 33, 70] {
        let s = Channels::new(5, c);
        let mut x = rng.vec(s.len());
        x[0] = f32::NAN;
        x[s.len() / 2] = -0.0;
        let g = rng.vec(c);
        let b = rng.vec(c);
        let m = rng.vec(c);
        let v: Vec<f32> = rng.vec(c).iter().map(|t| t.abs() + 0.1).collect();
        let h = |t: &[f32]| t.iter().map(|&u| f16::from_f32(u)).collect::<Vec<f16>>();
        for act in [Act::None, Act::Relu] {
            let mut want = vec![0.0f32; s.len()];
            bn_infer_fwd(Isa::scalar(), &s, 1e-5, &x, &g, &b, &m, &v, act, &mut want).unwrap();
            let mut want16 = vec![0.0f32; s.len()];
            bn_infer_fwd(Isa::scalar(), &s, 1e-5, &x, &h(&g), &h(&b), &h(&m), &h(&v), act, &mut want16).unwrap();
            for kind in tinykd_kernels::IsaKind::ALL {
                let Some(simd) = Isa::force(kind) else { continue };
                let mut got = vec![f32::NAN; s.len()];
                bn_infer_fwd(simd, &s, 1e-5, &x, &g, &b, &m, &v, act, &mut got).unwrap();
                let bits = |t: &[f32]| t.iter().map(|u| u.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&got), bits(&want), "{kind:?} c {c} {act:?} f32");
                bn_infer_fwd(simd, &s, 1e-5, &x, &h(&g), &h(&b), &h(&m), &h(&v), act, &mut got).unwrap();
                assert_eq!(bits(&got), bits(&want16), "{kind:?} c {c} {act:?} f16");
            }
        }
    }
}

fn bits(t: &[f32]) -> Vec<u32> {
    t.iter().map(|u| u.to_bits()).collect()
}

/// One chunk's training BN forward and backward on `isa`: (mean, m2, y, sum_dy, sum_dy_xhat,
/// dx), with `act` after the BN (the backward gated by the forward's output when ReLU).
fn train_pass(isa: Isa, s: &Channels, x: &[f32], g: &[f32], b: &[f32], dy: &[f32], act: Act) -> [Vec<f32>; 6] {
    let c = s.c;
    let (mut mean, mut m2) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    bn_partial_moments(isa, s, x, &mut mean, &mut m2).unwrap();
    let invstd: Vec<f32> = m2.iter().map(|q| 1.0 / (q / s.rows as f32 + 1e-5).sqrt()).collect();
    let mut y = vec![f32::NAN; s.len()];
    bn_train_apply(isa, s, x, g, b, &mean, &invstd, act, &mut y).unwrap();
    let gate = (act == Act::Relu).then_some(ReluAfter { gamma: g, beta: b });
    let (mut sdy, mut sdx) = (vec![f32::NAN; c], vec![f32::NAN; c]);
    bn_bwd_partial_sums(isa, s, x, dy, gate, &mean, &invstd, &mut sdy, &mut sdx).unwrap();
    let mut dx = vec![f32::NAN; s.len()];
    bn_bwd_apply(isa, s, s.rows + 3, x, dy, gate, g, &mean, &invstd, &sdy, &sdx, &mut dx).unwrap();
    [mean, m2, y, sdy, sdx, dx]
}

#[test]
fn bn_train_simd_paths_equal_scalar_bit_for_bit() {
    // Moments, apply (+ ReLU), backward sums and apply (gated or not) on channel counts below,
    // at and above the 8-lane vector, with ±0 and values at the ReLU's edge.
    // 300 rows: several blocks of the per-channel sums; 530 channels: two chunks of them.
    let mut rng = Rng::new(78);
    let more = [(300, 9), (300, 70), (300, 530), (100, 530)];
    for (rows, c) in [1, 7, 8, 9, 16, 31, 33, 70].map(|c| (6, c)).into_iter().chain(more) {
        let s = Channels::new(rows, c);
        let mut x: Vec<f32> = rng.vec(s.len()).iter().map(|v| 3.0 * v - 1.0).collect();
        x[s.len() / 2] = -0.0;
        let (g, b) = (rng.vec(c), rng.vec(c).iter().map(|v| v - 0.5).collect::<Vec<f32>>());
        let dy = rng.vec(s.len());
        for act in [Act::None, Act::Relu] {
            let want = train_pass(Isa::scalar(), &s, &x, &g, &b, &dy, act);
            for kind in tinykd_kernels::IsaKind::ALL {
                let Some(simd) = Isa::force(kind) else { continue };
                let got = train_pass(simd, &s, &x, &g, &b, &dy, act);
                for (k, name) in ["mean", "m2", "y", "sum_dy", "sum_dy_xhat", "dx"].iter().enumerate() {
                    assert_eq!(bits(&got[k]), bits(&want[k]), "{kind:?} rows {rows} c {c} {act:?} {name}");
                }
            }
        }
    }
}

#[test]
fn bn_relu_in_one_pass_equals_the_two_passes_bit_for_bit() {
    // Forward: apply(Relu) == relu(apply(None)); backward: the sums and apply gated by the
    // recomputed BN output == the ReLU backward (from the ReLU's output) first, then the
    // ungated ones. Inputs include a BN output exactly 0 (the ReLU's edge) and negatives.
    let mut rng = Rng::new(79);
    let s = Channels::new(9, 19);
    let c = s.c;
    let mut x: Vec<f32> = rng.vec(s.len()).iter().map(|v| 2.0 * v - 1.0).collect();
    let (g, b) = (rng.vec(c), rng.vec(c).iter().map(|v| v - 0.5).collect::<Vec<f32>>());
    let mut dy = rng.vec(s.len());
    dy[3] = -2.5;
    let (mut mean, invstd) = (rng.vec(c), rng.vec(c).iter().map(|v| v + 0.5).collect::<Vec<f32>>());
    // Channel 0: β = 0 and x = μ at row 0, so its output is exactly 0.
    mean[0] = 0.25;
    x[0] = 0.25;
    let mut b = b;
    b[0] = 0.0;
    for kind in tinykd_kernels::IsaKind::ALL {
        let Some(isa) = Isa::force(kind) else { continue };
        let mut fused = vec![0.0; s.len()];
        bn_train_apply(isa, &s, &x, &g, &b, &mean, &invstd, Act::Relu, &mut fused).unwrap();
        let mut bn = vec![0.0; s.len()];
        bn_train_apply(isa, &s, &x, &g, &b, &mean, &invstd, Act::None, &mut bn).unwrap();
        let mut two = vec![0.0; s.len()];
        relu_fwd(isa, &bn, &mut two).unwrap();
        assert_eq!(bits(&fused), bits(&two), "{kind:?} forward");
        assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0), "both sides of the ReLU");
        assert_eq!(bn[0], 0.0, "an output exactly at the ReLU's edge");

        let relu = Some(ReluAfter { gamma: &g, beta: &b });
        let mut g_dy = vec![0.0; s.len()];
        relu_bwd(isa, &fused, &dy, &mut g_dy).unwrap();
        let (mut s1, mut q1, mut s2, mut q2) = (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        bn_bwd_partial_sums(isa, &s, &x, &dy, relu, &mean, &invstd, &mut s1, &mut q1).unwrap();
        bn_bwd_partial_sums(isa, &s, &x, &g_dy, None, &mean, &invstd, &mut s2, &mut q2).unwrap();
        assert_eq!((bits(&s1), bits(&q1)), (bits(&s2), bits(&q2)), "{kind:?} sums");
        let (mut d1, mut d2) = (vec![0.0; s.len()], vec![0.0; s.len()]);
        bn_bwd_apply(isa, &s, 40, &x, &dy, relu, &g, &mean, &invstd, &s1, &q1, &mut d1).unwrap();
        bn_bwd_apply(isa, &s, 40, &x, &g_dy, None, &g, &mean, &invstd, &s2, &q2, &mut d2).unwrap();
        assert_eq!(bits(&d1), bits(&d2), "{kind:?} dx");
        let mut ungated = vec![0.0; s.len()];
        bn_bwd_apply(isa, &s, 40, &x, &dy, None, &g, &mean, &invstd, &s1, &q1, &mut ungated).unwrap();
        assert_ne!(bits(&d1), bits(&ungated), "{kind:?}: the gate must matter");
    }
}

#[test]
fn sums_over_many_rows_stay_accurate() {
    // 65,536 rows (a batch of 64 at 32x32): one f32 running sum per channel drifts by ~n·ε;
    // the blocked sums stay within a few roundings of the f64 values, on every path.
    let mut rng = Rng::new(80);
    let s = Channels::new(1 << 16, 3);
    let x: Vec<f32> = rng.vec(s.len()).iter().map(|v| 1.0 + v).collect();
    let dy: Vec<f32> = rng.vec(s.len()).iter().map(|v| 0.5 + v).collect();
    let (mean64, var64) = naive_stats(&s, &x);
    for kind in tinykd_kernels::IsaKind::ALL {
        let Some(isa) = Isa::force(kind) else { continue };
        let (mut mean, mut m2) = (vec![0.0; s.c], vec![0.0; s.c]);
        bn_partial_moments(isa, &s, &x, &mut mean, &mut m2).unwrap();
        let invstd: Vec<f32> = m2.iter().map(|q| 1.0 / (q / s.rows as f32 + 1e-5).sqrt()).collect();
        let (mut sdy, mut sdx) = (vec![0.0; s.c], vec![0.0; s.c]);
        bn_bwd_partial_sums(isa, &s, &x, &dy, None, &mean, &invstd, &mut sdy, &mut sdx).unwrap();
        for ch in 0..s.c {
            let rel = |got: f32, want: f64| (got as f64 - want).abs() / want.abs();
            assert!(rel(mean[ch], mean64[ch]) < 1e-6, "{kind:?} mean {} vs {}", mean[ch], mean64[ch]);
            let var = m2[ch] as f64 / s.rows as f64;
            assert!(rel(m2[ch] / s.rows as f32, var64[ch]) < 1e-5, "{kind:?} variance {var} vs {}", var64[ch]);
            let want_dy: f64 = (0..s.rows).map(|r| dy[r * s.c + ch] as f64).sum();
            assert!(rel(sdy[ch], want_dy) < 1e-6, "{kind:?} sum_dy {} vs {want_dy}", sdy[ch]);
        }
    }
}
