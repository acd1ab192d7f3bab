//! f16 ↔ f32 conversion on every available ISA path against `half` (the specification):
//! all 65536 f16 bit patterns, and f32 → f16 on edge values (±0, subnormals of both types,
//! the f16 range limits, overflow, halfway cases, inf, NaN) and random values, at every
//! length 0..=40 and offset so the SIMD bodies and scalar tails are all exercised.

mod common;

use common::Rng;
use tinykd_kernels::convert::{f16_to_f32, f32_to_f16};
use tinykd_kernels::{f16, Isa, IsaKind, KernelError};

fn isas() -> Vec<Isa> {
    let v: Vec<Isa> = IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect();
    let names: Vec<&str> = v.iter().map(|i| i.kind().name()).collect();
    let skipped: Vec<&str> = IsaKind::ALL.iter().filter(|k| Isa::force(**k).is_none()).map(|k| k.name()).collect();
    eprintln!("convert paths tested: {names:?}; unavailable here: {skipped:?}");
    v
}

/// Same bits, or both NaN (SIMD units and `half` may differ in how they quiet a NaN payload).
fn same_f32(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

fn same_f16(got: f16, want: f16) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

/// Every f16 bit pattern widens like `half` and narrows back to itself (NaNs stay NaN).
#[test]
fn all_f16_patterns_round_trip() {
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    for isa in isas() {
        let name = isa.kind().name();
        let mut wide = vec![0.0f32; all.len()];
        f16_to_f32(isa, &all, &mut wide).unwrap();
        let mut back = vec![f16::ZERO; all.len()];
        f32_to_f16(isa, &wide, &mut back).unwrap();
        for (i, h) in all.iter().enumerate() {
            assert!(
                same_f32(wide[i], h.to_f32()),
                "{name}: f16 {:#06x} → {} (half: {})",
                h.to_bits(),
                wide[i],
                h.to_f32()
            );
            if h.is_nan() {
                assert!(back[i].is_nan(), "{name}: NaN {:#06x} came back as {:#06x}", h.to_bits(), back[i].to_bits());
            } else {
                assert_eq!(back[i].to_bits(), h.to_bits(), "{name}: f16 {:#06x} did not round-trip", h.to_bits());
            }
        }
    }
}

/// f32 values where rounding to f16 is delicate.
fn edge_values() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,   // f16 max
        65519.996, // just below the overflow threshold: rounds to max
        65520.0,   // halfway above max: rounds to inf
        1e10,
        -1e10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        6.103_515_6e-5,              // smallest normal f16
        5.960_464_5e-8,              // smallest subnormal f16
        2.980_232_2e-8,              // half of it: ties to even → 0
        2.980_233e-8,                // just above half: rounds up to the smallest subnormal
        8.940_697e-8,                // 1.5 × smallest subnormal: ties to even → 2 ulp
        f32::MIN_POSITIVE,           // f32 normal far below f16 range
        f32::from_bits(1),           // f32 subnormal
        -f32::from_bits(0x007f_ffff),
        f32::MAX,
    ];
    // Exact halfway cases between neighbouring f16 normals (ties to even, up and down) and
    // the values one f32 ulp either side of them.
    for h in [0x3c00u16, 0x3c01, 0x4500, 0x4501, 0x0400, 0x03ff, 0x7bfe] {
        let lo = f16::from_bits(h).to_f32() as f64;
        let hi = f16::from_bits(h + 1).to_f32() as f64;
        let mid = ((lo + hi) / 2.0) as f32;
        for x in [mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)] {
            v.push(x);
            v.push(-x);
        }
    }
    v
}

/// f32 → f16 and f16 → f32 match `half` for every length 0..=40 at several offsets, over edge
/// and random values (normal, subnormal-range and out-of-range magnitudes).
#[test]
fn every_length_matches_half() {
    let mut rng = Rng::new(11);
    let mut pool = edge_values();
    for _ in 0..400 {
        let scale = [1.0f32, 1e-6, 1e-3, 1e5, 3e4][rng.below(5)];
        pool.push(rng.uniform(-1.0, 1.0) * scale);
        pool.push(f32::from_bits(rng.next_u64() as u32));
    }
    for isa in isas() {
        let name = isa.kind().name();
        for len in 0..=40usize {
            for start in (0..pool.len().saturating_sub(len)).step_by(37) {
                let src = &pool[start..start + len];
                let mut got = vec![f16::from_bits(0x5555); len];
                f32_to_f16(isa, src, &mut got).unwrap();
                for (i, &x) in src.iter().enumerate() {
                    let want = f16::from_f32(x);
                    assert!(
                        same_f16(got[i], want),
                        "{name} len {len}: f32 {x:e} ({:#010x}) → {:#06x}, half {:#06x}",
                        x.to_bits(),
                        got[i].to_bits(),
                        want.to_bits()
                    );
                }
                let mut wide = vec![-7.0f32; len];
                f16_to_f32(isa, &got, &mut wide).unwrap();
                for (i, h) in got.iter().enumerate() {
                    assert!(same_f32(wide[i], h.to_f32()), "{name} len {len}: f16 {:#06x}", h.to_bits());
                }
            }
        }
    }
}

/// A destination of the wrong length is an error and nothing is written.
#[test]
fn length_mismatch_is_error() {
    for isa in isas() {
        let mut h = vec![f16::ONE; 9];
        let e = f32_to_f16(isa, &[2.0; 10], &mut h).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "dst", expected: 10, got: 9 });
        assert!(h.iter().all(|&v| v == f16::ONE));
        let mut w = vec![3.0f32; 11];
        let e = f16_to_f32(isa, &[f16::ONE; 10], &mut w).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "dst", expected: 10, got: 11 });
        assert!(w.iter().all(|&v| v == 3.0));
    }
}
