//! Kernel throughput per family, weight dtype, ISA path and layer shape. Ids are
//! `<family>/<dtype>/<isa>/<shape>` with families `conv`, `dwconv`, `linear`, `bn`, `relu`,
//! `pool`, and `linear-panels` / `conv-panels` (weights packed into 16-column panels, as the
//! engine runs its few-row layers); the throughput unit is FLOP (2 per multiply-add, 1 per add/max/compare), so
//! criterion's "elem/s" reads as FLOP/s. `f16` is the weight storage (activations are f32).
//! Shapes are the batch-1 layers of MobileNetV1 1.0 / ResNet50 at 32x32 (spatial 16x16 down to
//! 1x1), where the late layers are bound by streaming their weights. Shapes ending in `-cold`
//! cycle through copies of the weights totalling 64 MiB (`TINYKD_BENCH_COLD_MB` sets another
//! size: e.g. 13 for MobileNetV1 1.0's whole f32 weight set, which a large L3 holds), as in a
//! whole-model inference, so they measure the memory-bound case f16 storage is for.
//!
//! `cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 2 [filter]`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tinykd::kernels::act::{self, Act};
use tinykd::kernels::linear::panels;
use tinykd::kernels::shape::{Channels, Conv2d, DwConv3x3, Linear, Pool};
use tinykd::kernels::{conv, dwconv, f16, linear, norm, pool, Elem, Isa, IsaKind};

#[path = "../kernels/benches/support/lined.rs"]
mod lined;
use lined::Lined;

/// Deterministic values in [−0.5, 0.5), on a cache line as the engine's tensors are.
fn data<E: Elem>(len: usize, salt: usize) -> Lined<E> {
    let v: Vec<E> = (0..len).map(|i| E::from_f32(((i * 7919 + salt * 104_729) % 1000) as f32 * 1e-3 - 0.5)).collect();
    Lined::from_slice(&v)
}

/// `len` zeros on a cache line.
fn zeros<E: Elem>(len: usize) -> Lined<E> {
    Lined::filled(len, E::from_f32(0.0))
}

/// Every ISA path this CPU can run.
fn isas() -> Vec<Isa> {
    IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect()
}

/// One benchmark `family/dtype/isa/shape` of `flops` per call.
fn run(c: &mut Criterion, id: [&str; 4], flops: usize, mut f: impl FnMut()) {
    let mut g = c.benchmark_group(format!("{}/{}/{}", id[0], id[1], id[2]));
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function(id[3], |b| b.iter(&mut f));
    g.finish();
}

fn conv_one<W: Elem>(c: &mut Criterion, isa: Isa, s: Conv2d) {
    let (x, w, b) = (data::<f32>(s.x_len(), 1), data::<W>(s.w_len(), 2), data::<W>(s.c_out, 3));
    let (mut y, mut scratch) = (zeros::<f32>(s.y_len()), zeros::<f32>(s.scratch_len()));
    let shape = format!("{}x{}x{}-{}k{}s{}", s.h, s.w, s.c_in, s.c_out, s.kh, s.stride);
    run(c, ["conv", W::DTYPE.name(), isa.kind().name(), &shape], 2 * s.macs(), || {
        conv::conv2d_fwd(isa, &s, black_box(&x), &w, Some(&b), Act::Relu, &mut y, &mut scratch).unwrap()
    });
}

/// One copy of the weights (hot), or enough copies to fill 64 MiB or `TINYKD_BENCH_COLD_MB`
/// (cold).
fn weight_copies<W: Elem>(len: usize, cold: bool) -> Vec<Lined<W>> {
    let mib = std::env::var("TINYKD_BENCH_COLD_MB").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(64);
    let copies = if cold { ((mib << 20) / (len * core::mem::size_of::<W>())).max(2) } else { 1 };
    (0..copies).map(|i| data::<W>(len, 2 + i)).collect()
}

fn dwconv_one<W: Elem>(c: &mut Criterion, isa: Isa, s: DwConv3x3, cold: bool) {
    let (x, ws, b) = (data::<f32>(s.x_len(), 1), weight_copies::<W>(s.w_len(), cold), data::<W>(s.c, 3));
    let mut y = zeros::<f32>(s.y_len());
    let shape = format!("{}x{}x{}s{}{}", s.h, s.w, s.c, s.stride, if cold { "-cold" } else { "" });
    let mut i = 0;
    run(c, ["dwconv", W::DTYPE.name(), isa.kind().name(), &shape], 2 * s.macs(), || {
        i = (i + 1) % ws.len();
        dwconv::dwconv3x3_fwd(isa, &s, black_box(&x), &ws[i], Some(&b), Act::Relu, &mut y).unwrap()
    });
}

fn linear_one<W: Elem>(c: &mut Criterion, isa: Isa, s: Linear, cold: bool) {
    let (x, ws, b) = (data::<f32>(s.x_len(), 1), weight_copies::<W>(s.w_len(), cold), data::<W>(s.c_out, 3));
    let mut y = zeros::<f32>(s.y_len());
    let shape = format!("{}x{}-{}{}", s.rows, s.c_in, s.c_out, if cold { "-cold" } else { "" });
    let mut i = 0;
    run(c, ["linear", W::DTYPE.name(), isa.kind().name(), &shape], 2 * s.macs(), || {
        i = (i + 1) % ws.len();
        linear::linear_fwd(isa, &s, black_box(&x), &ws[i], Some(&b), Act::None, &mut y).unwrap()
    });
}

/// The linear forward over weights packed into panels (what the engine runs at batch 1).
fn linear_panels_one<W: Elem>(c: &mut Criterion, isa: Isa, s: Linear, cold: bool) {
    let (x, b) = (data::<f32>(s.x_len(), 1), data::<W>(s.c_out, 3));
    let ws: Vec<Lined<W>> = weight_copies::<W>(s.w_len(), cold)
        .iter()
        .map(|w| {
            let mut wp = zeros::<W>(panels::panels_len(1, s.c_in, s.c_out));
            panels::pack_panels(1, s.c_in, s.c_out, w, &mut wp).unwrap();
            wp
        })
        .collect();
    let mut y = zeros::<f32>(s.y_len());
    let shape = format!("{}x{}-{}{}", s.rows, s.c_in, s.c_out, if cold { "-cold" } else { "" });
    let mut i = 0;
    run(c, ["linear-panels", W::DTYPE.name(), isa.kind().name(), &shape], 2 * s.macs(), || {
        i = (i + 1) % ws.len();
        linear::linear_fwd_panels(isa, &s, black_box(&x), &ws[i], Some(&b), Act::None, &mut y).unwrap()
    });
}

/// The KxK conv forward over packed weights (few output pixels).
fn conv_panels_one<W: Elem>(c: &mut Criterion, isa: Isa, s: Conv2d) {
    let (x, w, b) = (data::<f32>(s.x_len(), 1), data::<W>(s.w_len(), 2), data::<W>(s.c_out, 3));
    let mut wp = zeros::<W>(panels::panels_len(s.kh * s.kw, s.c_in, s.c_out));
    panels::pack_panels(s.kh * s.kw, s.c_in, s.c_out, &w, &mut wp).unwrap();
    let (mut y, mut scratch) = (zeros::<f32>(s.y_len()), zeros::<f32>(s.scratch_len()));
    let shape = format!("{}x{}x{}-{}k{}s{}", s.h, s.w, s.c_in, s.c_out, s.kh, s.stride);
    run(c, ["conv-panels", W::DTYPE.name(), isa.kind().name(), &shape], 2 * s.macs(), || {
        conv::conv2d_fwd_panels(isa, &s, black_box(&x), &wp, Some(&b), Act::Relu, &mut y, &mut scratch).unwrap()
    });
}

fn elementwise(c: &mut Criterion, isa: Isa) {
    let name = isa.kind().name();
    for (rows, ch) in [(256, 64), (16, 256)] {
        let s = Channels::new(rows, ch);
        let x = data::<f32>(s.len(), 1);
        let p: Vec<Vec<f32>> = (0..4).map(|i| data::<f32>(ch, i + 2).iter().map(|v| v.abs() + 0.5).collect()).collect();
        let mut y = zeros::<f32>(s.len());
        run(c, ["bn", "f32", name, &format!("{rows}x{ch}")], 2 * s.len(), || {
            norm::bn_infer_fwd(isa, &s, 1e-5, black_box(&x), &p[0], &p[1], &p[2], &p[3], Act::Relu, &mut y).unwrap()
        });
        run(c, ["relu", "f32", name, &format!("{rows}x{ch}")], s.len(), || {
            y.copy_from_slice(black_box(&x));
            act::relu_inplace(isa, &mut y)
        });
        run(c, ["relu", "f32", name, &format!("add-{rows}x{ch}")], 2 * s.len(), || {
            y.copy_from_slice(black_box(&x));
            act::add_relu_inplace(isa, &mut y, &x).unwrap()
        });
    }
    let s = Pool::new(1, 16, 16, 64);
    let x = data::<f32>(s.x_len(), 1);
    let mut y = zeros::<f32>(s.max_y_len());
    run(c, ["pool", "f32", name, "max3x3s2-16x16x64"], 8 * s.max_y_len(), || {
        pool::maxpool3x3s2_fwd(isa, &s, black_box(&x), &mut y).unwrap()
    });
    let s = Pool::new(1, 4, 4, 2048);
    let x = data::<f32>(s.x_len(), 1);
    let mut y = zeros::<f32>(s.avg_y_len());
    run(c, ["pool", "f32", name, "avg-4x4x2048"], s.x_len(), || {
        pool::global_avg_fwd(isa, &s, black_box(&x), &mut y).unwrap()
    });
}

fn benches(c: &mut Criterion) {
    let convs = [
        Conv2d::new(1, 32, 32, 3, 64, 7, 2, 3),
        Conv2d::new(1, 8, 8, 64, 64, 3, 1, 1),
        Conv2d::new(1, 2, 2, 256, 256, 3, 1, 1),
        Conv2d::new(1, 1, 1, 512, 512, 3, 1, 1),
    ];
    let dws = [
        DwConv3x3::new(1, 16, 16, 32, 1),
        DwConv3x3::new(1, 8, 8, 128, 1),
        DwConv3x3::new(1, 4, 4, 256, 2),
        DwConv3x3::new(1, 2, 2, 512, 1),
        DwConv3x3::new(1, 1, 1, 1024, 1),
    ];
    let linears =
        [Linear::new(1, 1024, 10), Linear::new(1, 1024, 1024), Linear::new(4, 512, 512), Linear::new(64, 128, 128)];
    for isa in isas() {
        for s in convs {
            conv_one::<f32>(c, isa, s);
            conv_one::<f16>(c, isa, s);
        }
        for (s, cold) in dws.iter().map(|&s| (s, false)).chain([(dws[3], true), (dws[4], true)]) {
            dwconv_one::<f32>(c, isa, s, cold);
            dwconv_one::<f16>(c, isa, s, cold);
        }
        for (s, cold) in linears.iter().map(|&s| (s, false)).chain([(linears[1], true), (linears[2], true)]) {
            linear_one::<f32>(c, isa, s, cold);
            linear_one::<f16>(c, isa, s, cold);
            linear_panels_one::<f32>(c, isa, s, cold);
            linear_panels_one::<f16>(c, isa, s, cold);
        }
        for &s in &convs[2..] {
            conv_panels_one::<f32>(c, isa, s);
            conv_panels_one::<f16>(c, isa, s);
        }
        elementwise(c, isa);
    }
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
