//! Batch-1 inference latency of the no_std engine per model and weight dtype, on random
//! BN-folded weights: `infer/<dtype>/<isa>/<model>`. The same measurement as
//! `tinykd bench infer`; the throughput unit is images.
//!
//! `cargo bench --bench infer -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tinykd::engine::Engine;
use tinykd::fold::export_inference;
use tinykd::kernels::{DType, Isa};
use tinykd::params::ParamStore;
use tinykd::weights::{AlignedBuf, WeightFile};
use tinykd::ModelConfig;

fn one(c: &mut Criterion, name: &str, cfg: ModelConfig, dtype: DType) {
    let isa = Isa::detect();
    let params = ParamStore::init(&cfg, 0).unwrap();
    let bytes = AlignedBuf::from_bytes(&export_inference(&params, dtype).unwrap());
    let file = WeightFile::parse(&bytes).unwrap();
    let engine = Engine::new(&cfg, 1, &file).unwrap();
    let input: Vec<f32> = (0..cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize)
        .map(|i| (i * 7919 % 1000) as f32 * 2e-3 - 1.0)
        .collect();
    let mut arena = vec![0u8; engine.arena_bytes()];
    let mut logits = vec![0.0f32; cfg.classes as usize];
    let mut g = c.benchmark_group(format!("infer/{}/{}", dtype.name(), isa.kind().name()));
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| b.iter(|| engine.run(isa, black_box(&input), &mut arena, &mut logits).unwrap()));
    g.finish();
}

fn benches(c: &mut Criterion) {
    let models = [
        ("mobilenet_v1_1.0", ModelConfig::mobilenet_v1(1000)),
        ("mobilenet_v1_0.25", ModelConfig::mobilenet_v1(250)),
        ("resnet50", ModelConfig::resnet50()),
    ];
    for (name, cfg) in models {
        for dtype in [DType::F32, DType::F16] {
            one(c, name, cfg, dtype);
        }
    }
}

criterion_group!(infer, benches);
criterion_main!(infer);
