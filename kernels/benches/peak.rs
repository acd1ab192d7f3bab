//! Peak f32 FMA throughput of one core, to calibrate the GEMM numbers: 12 independent FMA
//! chains (enough to cover FMA latency × issue width), no memory traffic. Id `peak/fma/<isa>`;
//! the throughput unit is FLOP (an FMA lane counts 2), so "elem/s" reads as FLOP/s.
//!
//! `cargo bench -p tinykd-kernels --bench peak -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

/// Inner iterations per measured call.
const ITERS: usize = 100_000;
/// Independent accumulator chains.
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
mod chains {
    use super::CHAINS;
    use core::arch::x86_64::*;

    /// Name and FLOP per iteration (12 chains × 8 lanes × 2).
    pub const NAME: &str = "avx2";
    pub const FLOP_PER_ITER: usize = CHAINS * 8 * 2;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Runs `iters` rounds of 12 ymm FMAs and folds the result to one float.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run(iters: usize, x: f32, y: f32) -> f32 {
        let (vx, vy) = (_mm256_set1_ps(x), _mm256_set1_ps(y));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, vx, vy);
            }
        }
        let mut out = [0.0f32; 8];
        let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        // SAFETY: `out` holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
}

#[cfg(target_arch = "aarch64")]
mod chains {
    use super::CHAINS;
    use core::arch::aarch64::*;

    /// Name and FLOP per iteration (12 chains × 4 lanes × 2).
    pub const NAME: &str = "neon";
    pub const FLOP_PER_ITER: usize = CHAINS * 4 * 2;

    pub fn available() -> bool {
        true
    }

    /// Runs `iters` rounds of 12 q-register FMAs and folds the result to one float.
    ///
    /// # Safety
    /// The CPU must support NEON (every aarch64 CPU does).
    #[target_feature(enable = "neon")]
    pub unsafe fn run(iters: usize, x: f32, y: f32) -> f32 {
        let (vx, vy) = (vdupq_n_f32(x), vdupq_n_f32(y));
        let mut acc = [vdupq_n_f32(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = vfmaq_f32(vy, *a, vx);
            }
        }
        vaddvq_f32(acc.iter().fold(vdupq_n_f32(0.0), |s, &a| vaddq_f32(s, a)))
    }
}

fn peak(c: &mut Criterion) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if chains::available() {
        let mut g = c.benchmark_group("peak/fma");
        g.throughput(Throughput::Elements((chains::FLOP_PER_ITER * ITERS) as u64));
        g.bench_function(chains::NAME, |b| {
            // SAFETY: `available()` checked the CPU features.
            b.iter(|| unsafe { chains::run(black_box(ITERS), black_box(0.999_999), black_box(1e-7)) })
        });
        g.finish();
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = (c, black_box(ITERS), CHAINS);
}

criterion_group!(peak_benches, peak);
criterion_main!(peak_benches);
