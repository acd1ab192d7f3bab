//! `tinykd bench gemm`: single-thread GEMM throughput as a fraction of the core's FMA peak,
//! both measured in the same run.
//!
//! Each round times one sample of the peak loop ([`calib::fma_chains`]) and then one sample of
//! every shape, so a slow spell of a shared machine lowers both sides of a round's ratio
//! instead of one figure; the report gives, per shape, the median over rounds of
//! GFLOP/s and of that ratio. A sample repeats the call until it lasts about `--sample-ms`.

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;

use super::export::DTypeArg;
use super::UsageError;
use crate::kernels::gemm::{gemm, gemm_packed_b, pack_b, packed_b_len, GemmShape};
use crate::kernels::{calib, f16, DType, Elem, Isa, IsaKind};
use crate::train::lines::LineBuf;

/// The default shapes (m, n, k) — those of `kernels/benches/gemm.rs`: 256³; pointwise convs
/// at batch 64 (8x8x64→128, 4x4x128→256, 2x2x512→512); the fc (1024 → 10); an im2col tile of
/// a 3x3 conv over 32 channels.
const SHAPES: [(usize, usize, usize); 6] =
    [(256, 256, 256), (4096, 128, 64), (1024, 256, 128), (256, 512, 512), (64, 10, 1024), (64, 64, 288)];

/// Largest m·k, k·n or m·n accepted (a 4096² operand, 64 MiB of f32).
const MAX_OPERAND: usize = 1 << 24;

/// `--isa`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsaArg {
    /// Portable scalar code.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// x86_64 AVX-512F (with AVX2 + FMA + F16C).
    Avx512,
    /// aarch64 NEON.
    Neon,
}

/// `tinykd bench gemm`.
#[derive(clap::Args, Debug)]
pub struct GemmArgs {
    /// A shape `MxNxK` (C is m×n, the inner dimension k); repeat for several. Default: 256³
    /// and the models' layer shapes of `kernels/benches/gemm.rs`.
    #[arg(long = "shape", value_name = "MxNxK", value_parser = parse_shape)]
    pub shapes: Vec<(usize, usize, usize)>,
    /// A stored transposed (k×m, read as op(A) = Aᵀ), as in a weight gradient `Xᵀ·dY`.
    #[arg(long)]
    pub trans_a: bool,
    /// op(B) packed once before the timing (`gemm_packed_b`), as the trainer packs an fc's
    /// weights once per forward; only shapes the ISA has such a path for (AVX2: n ≤ 10, k ≥ 64).
    #[arg(long, conflicts_with = "trans_a")]
    pub packed_b: bool,
    /// Storage of B (the weights); A and C are f32.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Kernel path (default: the best this CPU runs).
    #[arg(long, value_enum)]
    pub isa: Option<IsaArg>,
    /// Rounds (each: one peak sample, then one sample per shape).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub rounds: u32,
    /// Target length of one sample in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "MS")]
    pub sample_ms: u32,
}

/// Parses `MxNxK` (positive integers; each operand at most 2²⁴ elements).
fn parse_shape(s: &str) -> Result<(usize, usize, usize), String> {
    let dims: Vec<&str> = s.split(['x', 'X']).collect();
    let [m, n, k] = dims[..] else {
        return Err(format!("`{s}`: expected MxNxK, e.g. 256x256x256"));
    };
    let dim = |d: &str| match d.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("`{s}`: `{d}` is not a positive integer")),
    };
    let (m, n, k) = (dim(m)?, dim(n)?, dim(k)?);
    for (what, len) in [("m·k", m.checked_mul(k)), ("k·n", k.checked_mul(n)), ("m·n", m.checked_mul(n))] {
        if !matches!(len, Some(l) if l <= MAX_OPERAND) {
            return Err(format!("`{s}`: {what} is over {MAX_OPERAND} elements"));
        }
    }
    Ok((m, n, k))
}

/// The median of `v` (sorted in place; upper median for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One shape's operands and its timed call.
/// A and C on cache lines, as the trainer's activations are, and B too, as the executor's
/// folded weights are (an f32 B exactly one micro-kernel panel wide, e.g. 64 columns on
/// AVX-512, is then read in place instead of packed: see `gemm/blocked.rs`).
struct Case<B: Elem> {
    s: GemmShape,
    a: LineBuf,
    /// B's `k·n` values from `b[b_start]`, the first on a cache line.
    b: Vec<B>,
    b_start: usize,
    /// op(B) packed once (`--packed-b`).
    bp: Option<LineBuf>,
    c: LineBuf,
    calls: usize,
}

impl<B: Elem> Case<B> {
    fn new(isa: Isa, (m, n, k): (usize, usize, usize), a: &GemmArgs, sample_s: f64) -> Result<Self, UsageError> {
        let s = if a.trans_a { GemmShape::tn(m, n, k) } else { GemmShape::nn(m, n, k) };
        let packed = a.packed_b;
        let mut a = LineBuf::zeros(m * k);
        for (i, v) in a.iter_mut().enumerate() {
            *v = ((i * 7919 % 1000) as f32 - 500.0) * 1e-3;
        }
        // A Vec<B> is B-aligned: a line starts within its first 64 / size_of::<B>() values.
        let pad = 64 / core::mem::size_of::<B>();
        let b: Vec<B> = (0..k * n + pad).map(|i| B::from_f32(((i * 104_729 % 1000) as f32 - 500.0) * 1e-3)).collect();
        let b_start = b.as_ptr().align_offset(64);
        let bp = if packed {
            let len = packed_b_len(isa, &s).ok_or_else(|| {
                UsageError(format!(
                    "--packed-b: the {} path has no packed op(B) for {m}x{n}x{k} (AVX2: n ≤ 10, k ≥ 64)",
                    isa.kind().name()
                ))
            })?;
            let mut bp = LineBuf::zeros(len);
            pack_b(isa, &s, &b[b_start..b_start + k * n], &mut bp).expect("B and its pack are sized for the shape");
            Some(bp)
        } else {
            None
        };
        let mut case = Case { s, a, b, b_start, bp, c: LineBuf::zeros(m * n), calls: 1 };
        // Warm the caches and size the sample from one timed call.
        case.run(isa);
        let t = case.sample(isa);
        case.calls = ((sample_s / t.max(1e-9)).ceil() as usize).clamp(1, 1 << 20);
        Ok(case)
    }
    fn run(&mut self, isa: Isa) {
        if let Some(bp) = &self.bp {
            gemm_packed_b(isa, &self.s, 1.0, black_box(&self.a), black_box(bp), 0.0, black_box(&mut self.c))
                .expect("operands are sized for the shape");
            return;
        }
        gemm(
            isa,
            &self.s,
            1.0,
            black_box(&self.a),
            black_box(&self.b[self.b_start..self.b_start + self.s.k * self.s.n]),
            0.0,
            black_box(&mut self.c),
        )
        .expect("operands are sized for the shape");
    }
    /// Seconds per call over one sample.
    fn sample(&mut self, isa: Isa) -> f64 {
        let start = Instant::now();
        for _ in 0..self.calls {
            self.run(isa);
        }
        start.elapsed().as_secs_f64() / self.calls as f64
    }
}

/// Runs `bench gemm`.
pub fn run(a: GemmArgs) -> anyhow::Result<serde_json::Value> {
    let isa = match a.isa {
        None => Isa::detect(),
        Some(arg) => {
            let kind = match arg {
                IsaArg::Scalar => IsaKind::Scalar,
                IsaArg::Avx2 => IsaKind::Avx2,
                IsaArg::Avx512 => IsaKind::Avx512,
                IsaArg::Neon => IsaKind::Neon,
            };
            Isa::force(kind).ok_or_else(|| UsageError(format!("--isa {}: this CPU cannot run it", kind.name())))?
        }
    };
    match DType::from(a.dtype) {
        DType::F32 => measure::<f32>(isa, &a),
        DType::F16 => measure::<f16>(isa, &a),
    }
}

fn measure<B: Elem>(isa: Isa, a: &GemmArgs) -> anyhow::Result<serde_json::Value> {
    let shapes = if a.shapes.is_empty() { SHAPES.to_vec() } else { a.shapes.clone() };
    let sample_s = f64::from(a.sample_ms) * 1e-3;
    // The peak loop: rounds per sample sized like the shapes' calls.
    let peak_flop = |rounds: usize| (calib::flop_per_round(isa) * rounds) as f64;
    let peak_sample = |rounds: usize| {
        let start = Instant::now();
        black_box(calib::fma_chains(isa, black_box(rounds), black_box(0.999_999), black_box(1e-7)));
        peak_flop(rounds) / start.elapsed().as_secs_f64().max(1e-9)
    };
    let probe = 10_000;
    let probe_s = peak_flop(probe) / peak_sample(probe);
    let peak_rounds = ((probe as f64 * sample_s / probe_s) as usize).max(probe);
    let mut cases: Vec<Case<B>> = shapes.iter().map(|&sh| Case::new(isa, sh, a, sample_s)).collect::<Result<_, _>>()?;
    let mut peak = Vec::new();
    let mut gflops = vec![Vec::new(); cases.len()];
    let mut ratio = vec![Vec::new(); cases.len()];
    for _ in 0..a.rounds {
        let p = peak_sample(peak_rounds);
        peak.push(p * 1e-9);
        for (i, case) in cases.iter_mut().enumerate() {
            let f = case.s.flops() as f64 / case.sample(isa);
            gflops[i].push(f * 1e-9);
            ratio[i].push(f / p);
        }
    }
    let rows: Vec<serde_json::Value> = cases
        .iter()
        .zip(gflops.iter_mut().zip(&mut ratio))
        .map(|(case, (g, r))| {
            let best = g.iter().copied().fold(0.0, f64::max);
            let med = median(g);
            json!({
                "m": case.s.m,
                "n": case.s.n,
                "k": case.s.k,
                "gflops_median": med,
                "gflops_best": best,
                "of_peak_median": median(r),
                "us_per_call_median": case.s.flops() as f64 / med * 1e-3,
            })
        })
        .collect();
    Ok(json!({
        "bench": "gemm",
        "isa": isa.kind().name(),
        "dtype_b": B::DTYPE.name(),
        "trans_a": a.trans_a,
        "packed_b": a.packed_b,
        "threads": 1,
        "rounds": a.rounds,
        "peak_gflops_median": median(&mut peak),
        "shapes": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn shapes_parse_and_bad_ones_say_why() {
        assert_eq!(parse_shape("256x512x64"), Ok((256, 512, 64)));
        assert_eq!(parse_shape("1X2x3"), Ok((1, 2, 3)));
        for (bad, says) in [
            ("256x256", "expected MxNxK"),
            ("0x4x4", "not a positive integer"),
            ("4xax4", "not a positive integer"),
            ("100000x100000x1", "m·n is over"),
        ] {
            let e = parse_shape(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
