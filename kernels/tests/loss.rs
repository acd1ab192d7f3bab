//! Losses: values against hand-computed cases and naive f64 loops, gradient checks for every
//! gradient (softmax CE, l2, fsp ds1/ds2, soft label with temperatures ≠ 1), top-k ties, errors.
mod common;

use common::{grad_check, Rng};
use tinykd_kernels::loss::{fsp_loss, l2_loss, soft_label_loss, softmax_ce, topk_correct};
use tinykd_kernels::shape::{Fsp, Logits};
use tinykd_kernels::{Isa, KernelError};

/// Asserts every value is finite: a NaN gradient would slip through `grad_check`'s comparisons.
fn assert_finite(what: &str, v: &[f32]) {
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite value in {v:?}");
}
fn isa() -> Isa {
    Isa::scalar()
}

fn close(what: &str, got: f32, want: f64, rtol: f64) {
    assert!((got as f64 - want).abs() <= rtol * want.abs().max(1e-6), "{what}: got {got}, want {want}");
}

/// log-softmax of `row/t` in f64.
fn log_softmax(row: &[f32], t: f64) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64 / t));
    let lse = m + row.iter().map(|&z| (z as f64 / t - m).exp()).sum::<f64>().ln();
    row.iter().map(|&z| z as f64 / t - lse).collect()
}

#[test]
fn cross_entropy_of_uniform_logits_is_ln_classes() {
    for classes in [1, 2, 10, 1000] {
        let s = Logits::new(3, classes);
        let logits = vec![0.7; s.len()];
        let labels = [0, (classes - 1) as u32, (classes / 2) as u32];
        let l = softmax_ce(isa(), &s, &logits, &labels, None).unwrap();
        close(&format!("classes {classes}"), l, (classes as f64).ln(), 1e-5);
    }
}

#[test]
fn cross_entropy_matches_naive_and_is_stable() {
    let mut rng = Rng::new(41);
    let s = Logits::new(5, 10);
    // Logits far beyond exp's f32 range: a naive softmax overflows.
    let logits: Vec<f32> = rng.vec(s.len()).iter().map(|v| 200.0 * v).collect();
    let labels: Vec<u32> = (0..s.n).map(|_| rng.below(s.classes) as u32).collect();
    let want: f64 =
        logits.chunks(s.classes).zip(&labels).map(|(row, &l)| -log_softmax(row, 1.0)[l as usize]).sum::<f64>()
            / s.n as f64;
    let mut d = vec![f32::NAN; s.len()];
    let l = softmax_ce(isa(), &s, &logits, &labels, Some(&mut d)).unwrap();
    close("ce", l, want, 1e-5);
    assert!(d.iter().all(|v| v.is_finite()));
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let mut rng = Rng::new(42);
    let s = Logits::new(4, 7);
    let logits: Vec<f32> = rng.vec(s.len()).iter().map(|v| 3.0 * v).collect();
    let labels = [0u32, 6, 3, 3];
    let mut d = vec![f32::NAN; s.len()];
    softmax_ce(isa(), &s, &logits, &labels, Some(&mut d)).unwrap();
    assert_finite("ce dlogits", &d);
    grad_check("ce dlogits", &logits, &d, 1e-2, 1e-2, 100, |z| softmax_ce(isa(), &s, z, &labels, None).unwrap() as f64);
    // Each row of (softmax − onehot)/n sums to zero.
    for row in d.chunks(s.classes) {
        assert!(row.iter().sum::<f32>().abs() < 1e-6);
    }
}

#[test]
fn label_out_of_range_is_a_shape_error_and_writes_nothing() {
    let s = Logits::new(2, 3);
    let mut d = vec![7.0; 6];
    let e = softmax_ce(isa(), &s, &[0.0; 6], &[0, 3], Some(&mut d)).unwrap_err();
    assert!(matches!(e, KernelError::Shape(_)), "{e:?}");
    assert!(d.iter().all(|&v| v == 7.0));
    assert!(matches!(topk_correct(&s, &[0.0; 6], &[5, 0], 1), Err(KernelError::Shape(_))));
    assert_eq!(
        softmax_ce(isa(), &s, &[0.0; 6], &[0], None),
        Err(KernelError::Len { arg: "labels", expected: 2, got: 1 })
    );
    let e = softmax_ce(isa(), &s, &[0.0; 6], &[0, 1], Some(&mut d[..5])).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "dlogits", expected: 6, got: 5 });
}

#[test]
fn topk_counts_with_deterministic_ties() {
    let s = Logits::new(4, 4);
    #[rustfmt::skip]
    let logits = [
        0.1, 0.9, 0.3, 0.2, // order 1, 2, 3, 0
        1.0, 1.0, 1.0, 1.0, // all tied: order 0, 1, 2, 3
        0.5, 0.2, 0.5, 0.0, // tie between 0 and 2: 0 first
        -1.0, f32::NEG_INFINITY, -2.0, -3.0,
    ];
    // Ranks of labels (2, 1, 2, 0): 1, 1 (tie, behind class 0), 1 (tie lost to class 0), 0.
    let labels = [2, 1, 2, 0];
    assert_eq!(topk_correct(&s, &logits, &labels, 1).unwrap(), 1);
    assert_eq!(topk_correct(&s, &logits, &labels, 2).unwrap(), 4);
    // Ranks of (0, 3, 0, 1): 3, 3, 0 (tie won by the lower index), 3 (−∞ is last).
    assert_eq!(topk_correct(&s, &logits, &[0, 3, 0, 1], 1).unwrap(), 1);
    assert_eq!(topk_correct(&s, &logits, &[0, 3, 0, 1], 3).unwrap(), 1);
    assert_eq!(topk_correct(&s, &logits, &[0, 3, 0, 1], 4).unwrap(), 4);
    assert!(matches!(topk_correct(&s, &logits, &labels, 0), Err(KernelError::Shape(_))));
}

#[test]
fn l2_by_hand_and_gradient() {
    let mut ds = [f32::NAN; 2];
    // t = (1, 2), s = (2, 4): ((2−1)² + (4−2)²)/2 = 2.5; ds = 2(s − t)/2 = (1, 2).
    let l = l2_loss(isa(), &[1.0, 2.0], &[2.0, 4.0], Some(&mut ds)).unwrap();
    assert_eq!((l, ds), (2.5, [1.0, 2.0]));

    let mut rng = Rng::new(43);
    let (t, s) = (rng.vec(57), rng.vec(57));
    let mut ds = vec![f32::NAN; 57];
    let l = l2_loss(isa(), &t, &s, Some(&mut ds)).unwrap();
    let want = t.iter().zip(&s).map(|(&t, &s)| (s as f64 - t as f64).powi(2)).sum::<f64>() / 57.0;
    close("l2", l, want, 1e-5);
    assert_finite("l2 ds", &ds);
    grad_check("l2 ds", &s, &ds, 1e-2, 1e-2, 100, |sp| l2_loss(isa(), &t, sp, None).unwrap() as f64);

    assert_eq!(l2_loss(isa(), &t[..3], &s, None), Err(KernelError::Len { arg: "t", expected: 57, got: 3 }));
    assert!(matches!(l2_loss(isa(), &[], &[], None), Err(KernelError::Shape(_))));
}

fn fsp(
    sh: &Fsp,
    t1: &[f32],
    t2: &[f32],
    s1: &[f32],
    s2: &[f32],
    ds1: Option<&mut [f32]>,
    ds2: Option<&mut [f32]>,
) -> f32 {
    let mut scratch = vec![f32::NAN; sh.scratch_len()];
    fsp_loss(isa(), sh, t1, t2, s1, s2, ds1, ds2, &mut scratch).unwrap()
}

fn naive_gram(sh: &Fsp, x: &[f32], y: &[f32]) -> Vec<f64> {
    let mut g = vec![0.0; sh.gram_len()];
    for n in 0..sh.n {
        for i in 0..sh.c1 {
            for j in 0..sh.c2 {
                let sum: f64 = (0..sh.hw)
                    .map(|p| x[(n * sh.hw + p) * sh.c1 + i] as f64 * y[(n * sh.hw + p) * sh.c2 + j] as f64)
                    .sum();
                g[(n * sh.c1 + i) * sh.c2 + j] = sum / sh.hw as f64;
            }
        }
    }
    g
}

#[test]
fn fsp_by_hand() {
    // 1x1: G_t = 2·3 = 6, G_s = 1·4 = 4, L = (4 − 6)² = 4; ds1 = 2(−2)·4 = −16, ds2 = 2(−2)·1 = −4.
    let sh = Fsp::new(1, 1, 1, 1);
    let (mut d1, mut d2) = ([0.0], [0.0]);
    let l = fsp(&sh, &[2.0], &[3.0], &[1.0], &[4.0], Some(&mut d1), Some(&mut d2));
    assert_eq!((l, d1, d2), (4.0, [-16.0], [-4.0]));
    // hw = 2 averages over positions: G_s = (1·2 + 3·4)/2 = 7, G_t = 0, L = 49.
    let sh = Fsp::new(1, 2, 1, 1);
    let l = fsp(&sh, &[0.0, 0.0], &[0.0, 0.0], &[1.0, 3.0], &[2.0, 4.0], None, None);
    assert_eq!(l, 49.0);
}

#[test]
fn fsp_matches_naive_and_gradients_match_finite_differences() {
    let mut rng = Rng::new(44);
    let sh = Fsp::new(2, 5, 3, 4);
    let (t1, t2, s1, s2) = (rng.vec(sh.x_len()), rng.vec(sh.y_len()), rng.vec(sh.x_len()), rng.vec(sh.y_len()));
    let (gs, gt) = (naive_gram(&sh, &s1, &s2), naive_gram(&sh, &t1, &t2));
    let want = gs.iter().zip(&gt).map(|(s, t)| (s - t).powi(2)).sum::<f64>() / sh.gram_len() as f64;
    let (mut d1, mut d2) = (vec![f32::NAN; sh.x_len()], vec![f32::NAN; sh.y_len()]);
    let l = fsp(&sh, &t1, &t2, &s1, &s2, Some(&mut d1), Some(&mut d2));
    close("fsp", l, want, 1e-5);
    assert_finite("fsp ds1", &d1);
    grad_check("fsp ds1", &s1, &d1, 1e-2, 1e-2, 100, |p| fsp(&sh, &t1, &t2, p, &s2, None, None) as f64);
    assert_finite("fsp ds2", &d2);
    grad_check("fsp ds2", &s2, &d2, 1e-2, 1e-2, 100, |p| fsp(&sh, &t1, &t2, &s1, p, None, None) as f64);
    // Asking for one gradient gives the same values.
    let mut only2 = vec![f32::NAN; sh.y_len()];
    assert_eq!(fsp(&sh, &t1, &t2, &s1, &s2, None, Some(&mut only2)), l);
    assert_eq!(only2, d2);
}

#[test]
fn fsp_errors() {
    let sh = Fsp::new(1, 2, 2, 3);
    let (x, y) = (vec![1.0; 4], vec![1.0; 6]);
    let mut scratch = vec![0.0; sh.scratch_len() - 1];
    let mut d1 = vec![7.0; 4];
    let e = fsp_loss(isa(), &sh, &x, &y, &x, &y, Some(&mut d1), None, &mut scratch).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "scratch", expected: 12, got: 11 });
    let mut scratch = vec![0.0; sh.scratch_len() + 5];
    let e = fsp_loss(isa(), &sh, &x, &y[..5], &x, &y, Some(&mut d1), None, &mut scratch).unwrap_err();
    assert_eq!(e, KernelError::Len { arg: "t2", expected: 6, got: 5 });
    assert!(d1.iter().all(|&v| v == 7.0));
    assert!(fsp_loss(isa(), &sh, &x, &y, &x, &y, Some(&mut d1), None, &mut scratch).is_ok());
}

#[test]
fn soft_label_with_equal_logits() {
    // Uniform teacher and student: L = ln(classes), zero gradient, for any temperatures.
    let s = Logits::new(2, 5);
    let mut ds = vec![f32::NAN; s.len()];
    let l = soft_label_loss(isa(), &s, &[0.3; 10], &[-1.0; 10], 2.0, 4.0, Some(&mut ds)).unwrap();
    close("uniform", l, 5f64.ln(), 1e-5);
    assert!(ds.iter().all(|v| v.abs() < 1e-7), "{ds:?}");
    // Student == teacher at the same temperature: L = the teacher's entropy.
    let z = [1.0, 2.0, 0.5, -1.0, 3.0, 0.0, 0.0, 1.0, 2.0, -2.0];
    let l = soft_label_loss(isa(), &s, &z, &z, 1.5, 1.5, Some(&mut ds)).unwrap();
    let entropy: f64 =
        z.chunks(5).map(|r| -log_softmax(r, 1.5).iter().map(|lp| lp.exp() * lp).sum::<f64>()).sum::<f64>() / 2.0;
    close("entropy", l, entropy, 1e-5);
    assert!(ds.iter().all(|v| v.abs() < 1e-7), "{ds:?}");
}

#[test]
fn soft_label_matches_naive_and_gradient_matches_finite_differences() {
    let mut rng = Rng::new(45);
    let s = Logits::new(3, 10);
    let t: Vec<f32> = rng.vec(s.len()).iter().map(|v| 4.0 * v).collect();
    let z: Vec<f32> = rng.vec(s.len()).iter().map(|v| 4.0 * v).collect();
    for (tt, ts) in [(1.0, 1.0), (2.0, 3.0), (0.5, 4.0)] {
        let want: f64 = t
            .chunks(s.classes)
            .zip(z.chunks(s.classes))
            .map(|(tr, sr)| {
                let (lt, ls) = (log_softmax(tr, tt as f64), log_softmax(sr, ts as f64));
                -lt.iter().zip(&ls).map(|(a, b)| a.exp() * b).sum::<f64>()
            })
            .sum::<f64>()
            / s.n as f64;
        let mut ds = vec![f32::NAN; s.len()];
        let l = soft_label_loss(isa(), &s, &t, &z, tt, ts, Some(&mut ds)).unwrap();
        close(&format!("Tt {tt} Ts {ts}"), l, want, 1e-5);
        assert_finite(&format!("soft label ds Tt {tt} Ts {ts}"), &ds);
        grad_check(&format!("soft label ds Tt {tt} Ts {ts}"), &z, &ds, 1e-2, 1e-2, 100, |zp| {
            soft_label_loss(isa(), &s, &t, zp, tt, ts, None).unwrap() as f64
        });
    }
}

#[test]
fn soft_label_errors() {
    let s = Logits::new(1, 3);
    let mut ds = vec![7.0; 3];
    assert!(matches!(
        soft_label_loss(isa(), &s, &[0.0; 3], &[0.0; 3], 0.0, 1.0, Some(&mut ds)),
        Err(KernelError::Shape(_))
    ));
    assert_eq!(
        soft_label_loss(isa(), &s, &[0.0; 2], &[0.0; 3], 1.0, 1.0, Some(&mut ds)),
        Err(KernelError::Len { arg: "t_logits", expected: 3, got: 2 })
    );
    assert!(ds.iter().all(|&v| v == 7.0));
}

#[test]
fn l2_and_fsp_values_stay_accurate_over_millions_of_terms() {
    // One f32 running sum over n·c1·c2 terms drifts (2.8e-3 off at 2 M terms, found by
    // `scripts/torch_crosscheck.py`); the blocked sum stays within a few f32 roundings.
    let mut rng = Rng::new(45);
    let (t, s) = (rng.vec(1 << 21), rng.vec(1 << 21));
    let want = s.iter().zip(&t).map(|(&s, &t)| (s as f64 - t as f64).powi(2)).sum::<f64>() / s.len() as f64;
    close("l2 over 2 M terms", l2_loss(isa(), &t, &s, None).unwrap(), want, 1e-6);
    // The tutorial's hint pair shape at batch 8: 1x1 maps, 512 x 512 Gram matrices.
    let sh = Fsp::new(8, 1, 512, 512);
    let (t1, t2, s1, s2) = (rng.vec(sh.x_len()), rng.vec(sh.y_len()), rng.vec(sh.x_len()), rng.vec(sh.y_len()));
    let (gs, gt) = (naive_gram(&sh, &s1, &s2), naive_gram(&sh, &t1, &t2));
    let want = gs.iter().zip(&gt).map(|(s, t)| (s - t).powi(2)).sum::<f64>() / sh.gram_len() as f64;
    close("fsp over 2 M terms", fsp(&sh, &t1, &t2, &s1, &s2, None, None), want, 1e-6);
}
