//! Shared test helpers: a deterministic RNG, tolerance comparisons and a central-difference
//! gradient checker. Included by each integration test with `mod common;`.
#![allow(dead_code)]

/// xorshift64* — deterministic, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// A vector of `len` values uniform in [-1, 1).
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform(-1.0, 1.0)).collect()
    }
}

/// Asserts `|a − b| ≤ atol + rtol·|b|` elementwise, naming the first offending index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs();
        assert!(ok, "{what}[{i}]: got {g}, want {w} (rtol {rtol}, atol {atol})");
    }
}

/// Projection weights for turning an output tensor into a scalar loss `L = Σ r·y`,
/// so that `dL/dy = r` is the upstream gradient fed to a backward kernel.
pub fn projection(rng: &mut Rng, len: usize) -> Vec<f32> {
    rng.vec(len)
}

/// `Σ r·y` in f64.
pub fn dot64(r: &[f32], y: &[f32]) -> f64 {
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central-difference gradient check of `analytic = dL/dx` where `loss(x)` evaluates `L`
/// (accumulated in f64). Checks every index when `x` is small, else `max_checks` indices
/// spread over `x` (always including the first and last). Panics naming the worst index.
///
/// Passes when `|a − n| ≤ tol·max(|a|, |n|) + atol` for each checked index, with
/// `atol = tol · (1e-2 + max|analytic|·1e-2)` to absorb f32 rounding on tiny components.
pub fn grad_check(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    eps: f32,
    tol: f64,
    max_checks: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    if let Some(i) = analytic.iter().position(|g| !g.is_finite()) {
        panic!("{what}: analytic gradient[{i}] is {}", analytic[i]);
    }
    let n = x.len();
    let step = if n <= max_checks { 1 } else { n.div_ceil(max_checks) };
    let mut idx: Vec<usize> = (0..n).step_by(step).collect();
    if *idx.last().unwrap() != n - 1 {
        idx.push(n - 1);
    }
    let gmax = analytic.iter().fold(0.0f64, |m, &g| m.max(g.abs() as f64));
    let atol = tol * (1e-2 + gmax * 1e-2);
    let mut xp = x.to_vec();
    let mut worst = (0usize, 0.0f64, 0.0f64, 0.0f64);
    for &i in &idx {
        let orig = xp[i];
        xp[i] = orig + eps;
        let lp = loss(&xp);
        xp[i] = orig - eps;
        let lm = loss(&xp);
        xp[i] = orig;
        let num = (lp - lm) / (2.0 * eps as f64);
        assert!(num.is_finite(), "{what}: numeric gradient at index {i} is {num}");
        let a = analytic[i] as f64;
        let excess = (a - num).abs() - (tol * a.abs().max(num.abs()) + atol);
        if excess > worst.1 || worst.1 == 0.0 && excess > 0.0 {
            worst = (i, excess, a, num);
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: gradient mismatch at index {}: analytic {}, numeric {} (tol {tol})",
        worst.0,
        worst.2,
        worst.3
    );
}
