//! Peak-FMA calibration: the arithmetic ceiling a kernel's FLOP/s are measured against.
//!
//! [`fma_chains`] runs 12 independent multiply-add chains per call round on the path's widest
//! vectors (enough chains to cover FMA latency × issue width on the cores this targets) with no
//! memory traffic; [`flop_per_round`] is what one round counts (an FMA lane is 2 FLOP). Timed,
//! it gives one core's peak; `benches/peak.rs` and `tinykd bench gemm` use it, the latter in the
//! same run as the GEMM it rates.

use crate::isa::{Isa, IsaKind};

/// Independent accumulator chains.
const CHAINS: usize = 12;

/// FLOP of one round of [`fma_chains`] on `isa`: chains × lanes × 2.
pub const fn flop_per_round(isa: Isa) -> usize {
    let lanes = match isa.kind() {
        IsaKind::Avx2 => 8,
        IsaKind::Avx512 => 16,
        IsaKind::Neon => 4,
        IsaKind::Scalar => 1,
    };
    CHAINS * lanes * 2
}

/// Runs `rounds` rounds of 12 chained `acc = acc·x + y` on `isa`'s widest registers and folds
/// the accumulators into one value (return it to `black_box` so the work is not removed).
/// The scalar path multiplies and adds separately (a fused scalar `mul_add` without hardware
/// FMA is a library call).
pub fn fma_chains(isa: Isa, rounds: usize, x: f32, y: f32) -> f32 {
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind Avx2 exists only when the CPU has AVX2+FMA (isa.rs).
        IsaKind::Avx2 => unsafe { avx2(rounds, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind Avx512 exists only when the CPU has AVX-512F (isa.rs).
        IsaKind::Avx512 => unsafe { avx512(rounds, x, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: an `Isa` of kind Neon exists only on aarch64 CPUs with NEON (isa.rs).
        IsaKind::Neon => unsafe { neon(rounds, x, y) },
        _ => scalar(rounds, x, y),
    }
}

fn scalar(rounds: usize, x: f32, y: f32) -> f32 {
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = *a * x + y;
        }
    }
    acc.iter().sum()
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(rounds: usize, x: f32, y: f32) -> f32 {
    use core::arch::x86_64::*;
    let (vx, vy) = (_mm256_set1_ps(x), _mm256_set1_ps(y));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, vx, vy);
        }
    }
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds 8 f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out.iter().sum()
}

/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(rounds: usize, x: f32, y: f32) -> f32 {
    use core::arch::x86_64::*;
    let (vx, vy) = (_mm512_set1_ps(x), _mm512_set1_ps(y));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, vx, vy);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)))
}

/// # Safety
/// The CPU supports NEON (every aarch64 CPU does).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn neon(rounds: usize, x: f32, y: f32) -> f32 {
    use core::arch::aarch64::*;
    let (vx, vy) = (vdupq_n_f32(x), vdupq_n_f32(y));
    let mut acc = [vdupq_n_f32(1.0); CHAINS];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = vfmaq_f32(vy, *a, vx);
        }
    }
    vaddvq_f32(acc.iter().fold(vdupq_n_f32(0.0), |s, &a| vaddq_f32(s, a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path computes the same chains, one per lane: the sum is
    /// 12·lanes·(xⁿ + y·(1 − xⁿ)/(1 − x)) for acc₀ = 1, with lanes = FLOP per round / 24.
    #[test]
    fn paths_agree_with_the_closed_form() {
        let (x, y, n) = (0.5f32, 0.25f32, 40usize);
        let per_chain = x.powi(n as i32) + y * (1.0 - x.powi(n as i32)) / (1.0 - x);
        for kind in IsaKind::ALL {
            let Some(isa) = Isa::force(kind) else { continue };
            let lanes = flop_per_round(isa) / 24;
            let got = fma_chains(isa, n, x, y);
            let want = (12 * lanes) as f32 * per_chain;
            assert!((got - want).abs() < 1e-5 * want, "{kind:?}: {got} vs {want}");
        }
    }
}
