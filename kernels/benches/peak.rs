//! Peak f32 FMA throughput of one core, to calibrate the GEMM numbers: [`calib::fma_chains`]
//! (12 independent FMA chains, no memory traffic) on every available path. Id
//! `peak/fma/<isa>`; the throughput unit is FLOP (an FMA lane counts 2), so "elem/s" reads as
//! FLOP/s. `tinykd bench gemm` measures the same loop in the same run as the GEMM it rates.
//!
//! `cargo bench -p tinykd-kernels --bench peak -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tinykd_kernels::{calib, Isa, IsaKind};

/// Rounds per measured call.
const ROUNDS: usize = 100_000;

fn peak(c: &mut Criterion) {
    let mut g = c.benchmark_group("peak/fma");
    for kind in IsaKind::ALL {
        let Some(isa) = Isa::force(kind) else { continue };
        g.throughput(Throughput::Elements((calib::flop_per_round(isa) * ROUNDS) as u64));
        g.bench_function(kind.name(), |b| {
            b.iter(|| calib::fma_chains(isa, black_box(ROUNDS), black_box(0.999_999), black_box(1e-7)))
        });
    }
    g.finish();
}

criterion_group!(peak_benches, peak);
criterion_main!(peak_benches);
