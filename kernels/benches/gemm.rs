//! GEMM throughput per ISA path on 256³ and model layer shapes. Ids are
//! `gemm/<weight dtype>/<isa>/<m>x<n>x<k>`; the throughput unit is FLOP (2·m·n·k), so
//! criterion's "elem/s" reads as FLOP/s. `f16` means B (the weights) is stored as f16 and
//! A (activations) as f32, the deployment case. `gemm/packed-b/<isa>/<m>x<n>x<k>`: the fc's
//! shapes (batch 64, its 32-row thread share, the teacher's 2048-deep fc) over op(B) packed
//! once (`gemm_packed_b`), as the trainer runs them, where the ISA has that path.
//!
//! `cargo bench -p tinykd-kernels --bench gemm -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tinykd_kernels::gemm::{gemm, gemm_packed_b, pack_b, packed_b_len, GemmShape};
use tinykd_kernels::{f16, Elem, Isa, IsaKind};

#[path = "support/lined.rs"]
mod lined;
use lined::Lined;

/// (m, n, k): 256³; pointwise convs at batch 64 (m = 64·h·w): 8x8x64→128, 4x4x128→256,
/// 2x2x512→512; the fc (1024 → 10); an im2col tile of a 3x3 conv over 32 channels.
const SHAPES: [(usize, usize, usize); 6] =
    [(256, 256, 256), (4096, 128, 64), (1024, 256, 128), (256, 512, 512), (64, 10, 1024), (64, 64, 9 * 32)];

/// A (`m×k`, f32) and B (`k×n`) of fixed values in [-0.5, 0.5), each on a cache line.
fn operands<B: Elem>(m: usize, n: usize, k: usize) -> (Lined<f32>, Lined<B>) {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
    let b: Vec<B> = (0..k * n).map(|i| B::from_f32(((i * 104_729 % 1000) as f32 - 500.0) * 1e-3)).collect();
    (Lined::from_slice(&a), Lined::from_slice(&b))
}

fn bench_one<B: Elem>(c: &mut Criterion, isa: Isa, m: usize, n: usize, k: usize) {
    let s = GemmShape::nn(m, n, k);
    // A and C on lines, as the trainer's activations are, and B too, as the executor's folded
    // weights are (an f32 B one micro-kernel panel wide is then read in place, not packed).
    let (a, b) = operands::<B>(m, n, k);
    let mut out = Lined::filled(m * n, 0.0f32);
    let mut g = c.benchmark_group(format!("gemm/{}/{}", B::DTYPE.name(), isa.kind().name()));
    g.throughput(Throughput::Elements(s.flops() as u64));
    g.bench_function(format!("{m}x{n}x{k}"), |bench| {
        bench.iter(|| gemm(isa, &s, 1.0, black_box(&a), black_box(&b), 0.0, black_box(&mut out)).unwrap())
    });
    g.finish();
}

/// The fc's shapes benched over a B packed once.
const FC_SHAPES: [(usize, usize, usize); 3] = [(64, 10, 1024), (32, 10, 1024), (64, 10, 2048)];

fn bench_packed(c: &mut Criterion, isa: Isa, m: usize, n: usize, k: usize) {
    let s = GemmShape::nn(m, n, k);
    let Some(len) = packed_b_len(isa, &s) else { return };
    let (a, b) = operands::<f32>(m, n, k);
    let mut bp = Lined::filled(len, 0.0f32);
    pack_b(isa, &s, &b, &mut bp).unwrap();
    let mut out = Lined::filled(m * n, 0.0f32);
    let mut g = c.benchmark_group(format!("gemm/packed-b/{}", isa.kind().name()));
    g.throughput(Throughput::Elements(s.flops() as u64));
    g.bench_function(format!("{m}x{n}x{k}"), |bench| {
        bench.iter(|| gemm_packed_b(isa, &s, 1.0, black_box(&a), black_box(&bp), 0.0, black_box(&mut out)).unwrap())
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    for kind in IsaKind::ALL {
        let Some(isa) = Isa::force(kind) else { continue };
        // The scalar path is ~20x slower: only the headline shape.
        let shapes: &[_] = if kind == IsaKind::Scalar { &SHAPES[..1] } else { &SHAPES };
        for &(m, n, k) in shapes {
            bench_one::<f32>(c, isa, m, n, k);
        }
        for &(m, n, k) in &shapes[..shapes.len().min(2)] {
            bench_one::<f16>(c, isa, m, n, k);
        }
        for (m, n, k) in FC_SHAPES {
            bench_packed(c, isa, m, n, k);
        }
    }
}

criterion_group!(gemm_benches, benches);
criterion_main!(gemm_benches);
