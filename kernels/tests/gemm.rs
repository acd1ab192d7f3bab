//! GEMM: every available ISA path against the scalar path and an independent f64 triple loop,
//! over shapes that hit every micro-kernel tail and cross the KC/MC blocking, all four
//! transpose combinations, padded leading dimensions (padding filled with NaN, so reading it
//! would show), α ≠ 1, β ∈ {0, 1, 0.5} (β = 0 over a NaN-filled C) and f16 A and/or B.
//!
//! Tolerance (the contract in `gemm/mod.rs`): `|C − C_exact| ≤ (k+4)·2⁻²⁴·(|α|·Σ|a·b| + |β·C₀|)`
//! against f64, twice that between a SIMD path and the scalar path.

mod common;

use common::Rng;
use tinykd_kernels::gemm::{gemm, gemm_packed_b, pack_b, packed_b_len, GemmShape, Trans};
use tinykd_kernels::{f16, Elem, Isa, IsaKind, KernelError};

/// Every ISA this CPU can run (always including scalar), printed so the log shows which ran.
fn isas() -> Vec<Isa> {
    let v: Vec<Isa> = IsaKind::ALL.iter().filter_map(|&k| Isa::force(k)).collect();
    let names: Vec<&str> = v.iter().map(|i| i.kind().name()).collect();
    let skipped: Vec<&str> = IsaKind::ALL.iter().filter(|k| Isa::force(**k).is_none()).map(|k| k.name()).collect();
    eprintln!("gemm paths tested: {names:?}; unavailable here: {skipped:?}");
    v
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    ta: Trans,
    tb: Trans,
    /// Extra elements at the end of every stored row of A, B and C.
    pad: usize,
    alpha: f32,
    beta: f32,
}

impl Case {
    fn shape(&self) -> GemmShape {
        let (ac, bc) = (self.a_dims().1, self.b_dims().1);
        GemmShape {
            m: self.m,
            n: self.n,
            k: self.k,
            ta: self.ta,
            tb: self.tb,
            lda: ac + self.pad,
            ldb: bc + self.pad,
            ldc: self.n + self.pad,
        }
    }
    fn a_dims(&self) -> (usize, usize) {
        match self.ta {
            Trans::N => (self.m, self.k),
            Trans::T => (self.k, self.m),
        }
    }
    fn b_dims(&self) -> (usize, usize) {
        match self.tb {
            Trans::N => (self.k, self.n),
            Trans::T => (self.n, self.k),
        }
    }
}

/// A stored `rows×cols` matrix with row stride `cols + pad`: values uniform in [-1, 1),
/// padding NaN, exactly the minimum length.
fn stored(rng: &mut Rng, rows: usize, cols: usize, pad: usize) -> Vec<f32> {
    let ld = cols + pad;
    let len = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols };
    (0..len).map(|i| if i % ld < cols { rng.uniform(-1.0, 1.0) } else { f32::NAN }).collect()
}

/// Independent reference: `(value, error scale)` per C element, in f64 from the stored
/// (already rounded) operands.
fn reference(cs: &Case, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<(f64, f64)> {
    let s = cs.shape();
    let mut out = Vec::with_capacity(cs.m * cs.n);
    for i in 0..cs.m {
        for j in 0..cs.n {
            let (mut acc, mut mag) = (0.0f64, 0.0f64);
            for p in 0..cs.k {
                let x = match cs.ta {
                    Trans::N => a[i * s.lda + p],
                    Trans::T => a[p * s.lda + i],
                } as f64;
                let y = match cs.tb {
                    Trans::N => b[p * s.ldb + j],
                    Trans::T => b[j * s.ldb + p],
                } as f64;
                acc += x * y;
                mag += (x * y).abs();
            }
            let alpha = cs.alpha as f64;
            let (bc, bmag) = if cs.beta == 0.0 {
                (0.0, 0.0)
            } else {
                let v = cs.beta as f64 * c0[i * s.ldc + j] as f64;
                (v, v.abs())
            };
            out.push((alpha * acc + bc, alpha.abs() * mag + bmag));
        }
    }
    out
}

/// Runs `cs` with A stored as `EA` and B as `EB` on every ISA, checking against f64 and
/// against the scalar path; also that C's row padding is untouched.
fn check_case<EA: Elem, EB: Elem>(isas: &[Isa], rng: &mut Rng, cs: &Case) {
    check_case_at::<EA, EB>(isas, rng, cs, None)
}

/// [`check_case`] with B starting `shift` elements past a 64-byte line when `shift` is given
/// (else wherever the allocator puts it).
fn check_case_at<EA: Elem, EB: Elem>(isas: &[Isa], rng: &mut Rng, cs: &Case, shift: Option<usize>) {
    let s = cs.shape();
    let (ar, ac) = cs.a_dims();
    let (br, bc) = cs.b_dims();
    let a: Vec<EA> = stored(rng, ar, ac, cs.pad).into_iter().map(EA::from_f32).collect();
    let b: Vec<EB> = stored(rng, br, bc, cs.pad).into_iter().map(EB::from_f32).collect();
    let mut b_room = vec![EB::from_f32(0.0); b.len() + 64];
    let b = match shift {
        Some(shift) => {
            let line = b_room.as_ptr().align_offset(64);
            let placed = &mut b_room[line + shift..][..b.len()];
            placed.copy_from_slice(&b);
            &*placed
        }
        None => &b[..],
    };
    let a32: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
    let b32: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    let mut c0 = stored(rng, cs.m, cs.n, cs.pad);
    if cs.beta == 0.0 {
        c0.iter_mut().for_each(|v| *v = f32::NAN);
    }
    // Row padding of C gets a sentinel that must survive.
    for (idx, v) in c0.iter_mut().enumerate() {
        if idx % s.ldc >= cs.n {
            *v = 7.25;
        }
    }
    let want = reference(cs, &a32, &b32, &c0);
    let gamma = (cs.k as f64 + 4.0) * 2f64.powi(-24);
    let tag = format!("{cs:?} A:{:?} B:{:?}", EA::DTYPE, EB::DTYPE);

    let mut spec = c0.clone();
    gemm(Isa::scalar(), &s, cs.alpha, &a, b, cs.beta, &mut spec).unwrap();
    for isa in isas {
        let mut c = c0.clone();
        gemm(*isa, &s, cs.alpha, &a, b, cs.beta, &mut c).unwrap();
        let name = isa.kind().name();
        for i in 0..cs.m {
            for j in 0..cs.n {
                let idx = i * s.ldc + j;
                let (w, mag) = want[i * cs.n + j];
                let tol = gamma * mag + 1e-30;
                let g = c[idx] as f64;
                assert!((g - w).abs() <= tol, "{name} {tag}: C[{i}][{j}] = {g}, f64 reference {w} (tol {tol:e})");
                let sp = spec[idx] as f64;
                assert!(
                    (g - sp).abs() <= 2.0 * tol,
                    "{name} {tag}: C[{i}][{j}] = {g}, scalar path {sp} (tol {:e})",
                    2.0 * tol
                );
            }
            for j in cs.n..s.ldc.min(c.len() - i * s.ldc) {
                assert_eq!(c[i * s.ldc + j], 7.25, "{name} {tag}: C row padding [{i}][{j}] written");
            }
        }
    }
}

/// Dispatches on a storage combination index: 0 f32·f32, 1 f16·f32, 2 f32·f16, 3 f16·f16.
fn check_dtypes(isas: &[Isa], rng: &mut Rng, cs: &Case, dtypes: usize) {
    match dtypes % 4 {
        0 => check_case::<f32, f32>(isas, rng, cs),
        1 => check_case::<f16, f32>(isas, rng, cs),
        2 => check_case::<f32, f16>(isas, rng, cs),
        _ => check_case::<f16, f16>(isas, rng, cs),
    }
}

const TRANS: [(Trans, Trans); 4] =
    [(Trans::N, Trans::N), (Trans::T, Trans::N), (Trans::N, Trans::T), (Trans::T, Trans::T)];
const ALPHAS: [f32; 3] = [1.0, -0.75, 2.5];
const BETAS: [f32; 3] = [0.0, 1.0, 0.5];

/// Every micro-kernel tail: m and n below, at and above MR/NR (6/16 on AVX2, 6/64 on AVX-512
/// with 2- and 4-row and 1–3-vector edge variants, 8/8 on NEON, 4/4 scalar) and their
/// multiples, cycling α, β, padding and dtypes.
#[test]
fn tails_all_transposes() {
    let isas = isas();
    let mut rng = Rng::new(1);
    let dims = [1usize, 2, 3, 5, 6, 7, 8, 9, 12, 13, 15, 16, 17, 31, 32, 33, 48, 63, 65];
    let ks = [1usize, 2, 7, 16, 33];
    let mut idx = 0usize;
    for &m in &dims {
        for &n in &dims {
            for &k in &ks {
                for &(ta, tb) in &TRANS {
                    let cs = Case {
                        m,
                        n,
                        k,
                        ta,
                        tb,
                        pad: [0, 3][idx % 2],
                        alpha: ALPHAS[idx % 3],
                        beta: BETAS[(idx / 3) % 3],
                    };
                    check_dtypes(&isas, &mut rng, &cs, idx / 9);
                    idx += 1;
                }
            }
        }
    }
}

/// Shapes crossing the blocking: k > KC (256; AVX2 runs k ≤ 320 as one block, so 300 and
/// 320 are one block there and 321 two; AVX-512's KC is 128), m > MC (144 AVX2 and 128 NEON at
/// kc = 256, ~MC·256/kc rows at another kc; 288 AVX-512 at kc = 128, which runs k ≤ 192 as
/// one block; AVX2 also caps a shallow block's rows so that A and C fit 256 KiB: 246 rows at
/// 700×200×64), several NR panels, with every β, both pads and all dtype combinations.
#[test]
fn blocking_boundaries() {
    let isas = isas();
    let mut rng = Rng::new(2);
    let shapes = [
        (150, 40, 300),
        (289, 33, 257),
        (100, 257, 64),
        (7, 100, 513),
        (145, 17, 256),
        (40, 70, 192),
        (9, 64, 193),
        (1600, 5, 24),
        (130, 20, 320),
        (118, 35, 321),
        (700, 200, 64),
    ];
    let mut idx = 0usize;
    for &(m, n, k) in &shapes {
        for &(ta, tb) in &TRANS {
            let cs = Case { m, n, k, ta, tb, pad: idx % 2 * 5, alpha: ALPHAS[idx % 3], beta: BETAS[idx % 3] };
            check_dtypes(&isas, &mut rng, &cs, idx);
            idx += 1;
        }
    }
}

/// A narrow C (n ≤ 10) with k ≥ 64, which AVX2 computes with its lanes along k (f32,
/// untransposed A) and AVX-512 with 8 k × 2 columns per vector: every n up to 10 and just past
/// it, k with every remainder mod 8 (the packed groups of 4 and 8 k), on both sides of the
/// 384-deep packed block and with last blocks of 1, 2 and 7 k, odd m (a lone last row) and m
/// past the 128-row chunk, both B layouts, f16 B, α, β, padding (NaN, so an unmasked read of A
/// past k shows).
#[test]
fn narrow_c_along_k() {
    let isas = isas();
    let mut rng = Rng::new(4);
    let mut idx = 0usize;
    for n in 1..=11 {
        for (m, k) in [
            (1, 64),
            (7, 65),
            (4, 202),
            (8, 203),
            (9, 384),
            (3, 385),
            (2, 391),
            (5, 770),
            (6, 1100),
            (131, 390),
            (4, 197),
        ] {
            for tb in [Trans::N, Trans::T] {
                let cs = Case {
                    m,
                    n,
                    k,
                    ta: Trans::N,
                    tb,
                    pad: [0, 3][idx % 2],
                    alpha: ALPHAS[idx % 3],
                    beta: BETAS[(idx / 3) % 3],
                };
                // f32·f32 or f32·f16: the narrow path needs an f32 A.
                check_dtypes(&isas, &mut rng, &cs, [0, 2][(idx / 2) % 2]);
                idx += 1;
            }
        }
    }
}

/// op(B) packed once (`pack_b`) gives `gemm_packed_b` the bits of `gemm` over the unpacked B,
/// on the narrow shapes of [`narrow_c_along_k`] (f32 and f16 B, both layouts, padding, α, β,
/// a pack buffer off its 64-byte line and longer than needed); where an ISA has no packed
/// path both calls are `Shape` errors that write nothing; short buffers are `Len` errors.
#[test]
fn packed_b_same_bits_as_gemm() {
    fn run<EB: Elem>(isa: Isa, rng: &mut Rng, cs: &Case) -> bool {
        let s = cs.shape();
        let (ar, ac) = cs.a_dims();
        let (br, bc) = cs.b_dims();
        let a = stored(rng, ar, ac, cs.pad);
        let b: Vec<EB> = stored(rng, br, bc, cs.pad).into_iter().map(EB::from_f32).collect();
        let c0 = stored(rng, cs.m, cs.n, cs.pad);
        let mut want = c0.clone();
        gemm(isa, &s, cs.alpha, &a, &b, cs.beta, &mut want).unwrap();
        let Some(len) = packed_b_len(isa, &s) else {
            let mut bp = vec![0.0f32; 1 << 16];
            assert!(matches!(pack_b(isa, &s, &b, &mut bp), Err(KernelError::Shape(_))), "{cs:?}");
            assert!(bp.iter().all(|&v| v == 0.0));
            let mut c = c0.clone();
            let e = gemm_packed_b(isa, &s, cs.alpha, &a, &bp, cs.beta, &mut c);
            assert!(matches!(e, Err(KernelError::Shape(_))), "{cs:?}");
            assert_eq!(
                c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                c0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            return false;
        };
        // One element past a line, 5 spare values after the pack.
        let mut room = vec![f32::NAN; len + 32];
        let off = room.as_ptr().align_offset(64) + 1;
        let bp = &mut room[off..off + len + 5];
        pack_b(isa, &s, &b, bp).unwrap();
        let mut c = c0.clone();
        gemm_packed_b(isa, &s, cs.alpha, &a, bp, cs.beta, &mut c).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&c), bits(&want), "{:?} {cs:?}", isa.kind());
        // Short buffers.
        let short = len - 1;
        let e = pack_b(isa, &s, &b, &mut bp[..short]).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "bp", expected: len, got: short });
        let e = gemm_packed_b(isa, &s, cs.alpha, &a, &bp[..short], cs.beta, &mut c).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "bp", expected: len, got: short });
        let e = gemm_packed_b(isa, &s, cs.alpha, &a[..a.len() - 1], bp, cs.beta, &mut c).unwrap_err();
        assert!(matches!(e, KernelError::Len { arg: "a", .. }));
        true
    }
    let isas = isas();
    let mut rng = Rng::new(9);
    let mut packed = vec![0usize; isas.len()];
    let mut idx = 0usize;
    for n in 1..=11 {
        for (m, k) in [(1, 64), (7, 65), (8, 203), (9, 384), (3, 385), (2, 391), (33, 1027), (131, 390), (4, 63)] {
            for tb in [Trans::N, Trans::T] {
                let cs = Case {
                    m,
                    n,
                    k,
                    ta: [Trans::N, Trans::T][usize::from(idx % 7 == 6)],
                    tb,
                    pad: [0, 3][idx % 2],
                    alpha: ALPHAS[idx % 3],
                    beta: BETAS[(idx / 3) % 3],
                };
                for (i, &isa) in isas.iter().enumerate() {
                    let hit = if idx.is_multiple_of(2) {
                        run::<f32>(isa, &mut rng, &cs)
                    } else {
                        run::<f16>(isa, &mut rng, &cs)
                    };
                    packed[i] += usize::from(hit);
                    if isa.kind() == IsaKind::Avx2 {
                        assert_eq!(hit, n <= 10 && k >= 64 && cs.ta == Trans::N, "{cs:?}");
                    }
                }
                idx += 1;
            }
        }
    }
    for (isa, count) in isas.iter().zip(&packed) {
        eprintln!("{}: {count} packed-B cases", isa.kind().name());
    }
}

/// A B of exactly NR columns (16 on AVX2, 64 on AVX-512), untransposed and unpadded, is its
/// own packed panel and is read in place when it starts on a line: on a line and one element
/// past it, with k in one block and in several, A either way, m with edge tiles.
#[test]
fn b_read_in_place_when_it_is_a_panel() {
    let isas = isas();
    let mut rng = Rng::new(6);
    let mut idx = 0usize;
    for n in [16, 64] {
        for k in [7, 200, 330, 700] {
            for m in [1, 5, 64, 301] {
                for ta in [Trans::N, Trans::T] {
                    for shift in [0, 1] {
                        let cs = Case {
                            m,
                            n,
                            k,
                            ta,
                            tb: Trans::N,
                            pad: 0,
                            alpha: ALPHAS[idx % 3],
                            beta: BETAS[(idx / 3) % 3],
                        };
                        check_case_at::<f32, f32>(&isas, &mut rng, &cs, Some(shift));
                        idx += 1;
                    }
                }
            }
        }
    }
}

/// A transposed f32 A whose row stride aliases in L1 (a multiple of 512 f32) is copied block
/// by block to a padded stride before the tiles read it: checked against the scalar path and
/// f64 across the KC/MC blocking and edge tiles, and bit for bit against the same product at a
/// stride that does not alias (read in place); untransposed ones at such strides as controls.
#[test]
fn a_copied_where_its_stride_aliases() {
    let isas = isas();
    let mut rng = Rng::new(7);
    // (m, n, k, ta, pad): lda = 512 or 1024 (untransposed: k + pad; transposed: m + pad).
    let cases = [
        (150, 70, 300, Trans::N, 212),
        (13, 17, 1024, Trans::N, 0),
        (301, 70, 600, Trans::T, 211),
        (700, 33, 130, Trans::T, 324),
        (61, 129, 513, Trans::T, 451),
        (500, 20, 40, Trans::T, 12),
        (1024, 80, 257, Trans::T, 0),
        (7, 65, 321, Trans::T, 505),
    ];
    for (idx, &(m, n, k, ta, pad)) in cases.iter().enumerate() {
        let tb = [Trans::N, Trans::T][idx % 2];
        let cs = Case { m, n, k, ta, tb, pad, alpha: ALPHAS[idx % 3], beta: BETAS[idx % 3] };
        check_case::<f32, f32>(&isas, &mut rng, &cs);
        // The same values at lda + 1 (no aliasing): the same bits on every path.
        let s = cs.shape();
        let (ar, ac) = cs.a_dims();
        let a = stored(&mut rng, ar, ac, pad);
        let mut a_off = vec![f32::NAN; a.len() + ar];
        for r in 0..ar {
            a_off[r * (s.lda + 1)..][..ac].copy_from_slice(&a[r * s.lda..][..ac]);
        }
        let (br, bc) = cs.b_dims();
        let b = stored(&mut rng, br, bc, pad);
        let c0 = stored(&mut rng, m, n, pad);
        let s_off = GemmShape { lda: s.lda + 1, ..s };
        for isa in &isas {
            let (mut c, mut c_off) = (c0.clone(), c0.clone());
            gemm(*isa, &s, cs.alpha, &a, &b, cs.beta, &mut c).unwrap();
            gemm(*isa, &s_off, cs.alpha, &a_off[..(ar - 1) * (s.lda + 1) + ac], &b, cs.beta, &mut c_off).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&c), bits(&c_off), "{} {cs:?}: lda {} vs {}", isa.kind().name(), s.lda, s.lda + 1);
        }
    }
}

/// A short k (AVX2: k ≤ 128) with an f32 A read in place: each row panel sweeps a block of up
/// to 64 KiB of packed B panels (16 panels at k = 64, 8 at k = 128, so wider n take several
/// blocks), transposed A at an aliasing stride too (copied first). Against f64 and the scalar
/// path with f32 and f16 B, and bit for bit against the same product computed 16 columns at a
/// time (calls whose n = 16 take the column-panel order: the same tiles, so the same bits).
#[test]
fn short_k_sweeps_blocks_of_b() {
    let isas = isas();
    let mut rng = Rng::new(9);
    // (m, n, k, ta, tb, pad); the fourth: lda = 61 + 451 = 512, transposed (aliases). Each n
    // leaves 0 or more than 10 columns past its last 16 (a last slice of ≤ 10 columns with k ≥
    // 64 would take the narrow path, another order).
    let cases = [
        (13, 300, 64, Trans::T, Trans::N, 0),
        (7, 267, 128, Trans::N, Trans::T, 3),
        (145, 526, 100, Trans::T, Trans::N, 0),
        (61, 139, 128, Trans::T, Trans::T, 451),
        (300, 45, 64, Trans::N, Trans::N, 1),
        (5, 1000, 16, Trans::T, Trans::N, 0),
        (20, 256, 64, Trans::T, Trans::N, 2),
    ];
    for (idx, &(m, n, k, ta, tb, pad)) in cases.iter().enumerate() {
        let cs = Case { m, n, k, ta, tb, pad, alpha: ALPHAS[idx % 3], beta: BETAS[idx % 3] };
        check_case::<f32, f32>(&isas, &mut rng, &cs);
        check_case::<f32, f16>(&isas, &mut rng, &cs);
        let s = cs.shape();
        let (ar, ac) = cs.a_dims();
        let (br, bc) = cs.b_dims();
        let (a, b) = (stored(&mut rng, ar, ac, pad), stored(&mut rng, br, bc, pad));
        let c0 = stored(&mut rng, m, n, pad);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for isa in &isas {
            let mut whole = c0.clone();
            gemm(*isa, &s, cs.alpha, &a, &b, cs.beta, &mut whole).unwrap();
            let mut sliced = c0.clone();
            for j0 in (0..n).step_by(16) {
                let w = 16.min(n - j0);
                // Columns j0.. of op(B): B's columns when untransposed, its rows when transposed.
                let b_at = match tb {
                    Trans::N => &b[j0..],
                    Trans::T => &b[j0 * s.ldb..],
                };
                let sj = GemmShape { n: w, ..s };
                gemm(*isa, &sj, cs.alpha, &a, b_at, cs.beta, &mut sliced[j0..]).unwrap();
            }
            assert_eq!(bits(&whole), bits(&sliced), "{} {cs:?}: one call vs 16 columns at a time", isa.kind().name());
        }
    }
}

/// Model layer shapes: pointwise conv (m = n·h·w), fc, an im2col tile, 256³ with f16 weights.
#[test]
fn model_shapes() {
    let isas = isas();
    let mut rng = Rng::new(3);
    let shapes = [(256, 64, 32), (64, 10, 1024), (64, 64, 9 * 32), (256, 256, 256)];
    for (idx, &(m, n, k)) in shapes.iter().enumerate() {
        for dtypes in [0, 2] {
            let cs = Case { m, n, k, ta: Trans::N, tb: Trans::N, pad: 0, alpha: 1.0, beta: 0.0 };
            check_dtypes(&isas, &mut rng, &cs, dtypes + idx % 2);
        }
    }
}

/// `k = 0` gives `C = β·C` (zeros for β = 0, even over NaN).
#[test]
fn empty_k_scales_c() {
    for isa in isas() {
        for beta in [0.0f32, 0.5] {
            let s = GemmShape::nn(3, 5, 0);
            let mut c = vec![if beta == 0.0 { f32::NAN } else { 2.0 }; 15];
            gemm::<f32, f32>(isa, &s, 1.5, &[], &[], beta, &mut c).unwrap();
            let want = if beta == 0.0 { 0.0 } else { 1.0 };
            assert!(c.iter().all(|&v| v == want), "{:?} β={beta}: {c:?}", isa.kind());
        }
    }
}

/// Short slices and a leading dimension below the row length are errors, and C is untouched.
#[test]
fn bad_arguments_are_errors() {
    for isa in isas() {
        let s = GemmShape::nn(4, 5, 6);
        let (a, b) = (vec![1.0f32; 24], vec![1.0f32; 30]);
        let mut c = vec![9.0f32; 20];
        let e = gemm(isa, &s, 1.0, &a[..23], &b, 0.0, &mut c).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "a", expected: 24, got: 23 });
        let e = gemm(isa, &s, 1.0, &a, &b[..29], 0.0, &mut c).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "b", expected: 30, got: 29 });
        let e = gemm(isa, &s, 1.0, &a, &b, 0.0, &mut c[..19]).unwrap_err();
        assert_eq!(e, KernelError::Len { arg: "c", expected: 20, got: 19 });
        let bad = GemmShape { ldc: 4, ..s };
        assert!(matches!(gemm(isa, &bad, 1.0, &a, &b, 0.0, &mut c), Err(KernelError::Shape(_))));
        assert!(c.iter().all(|&v| v == 9.0));
    }
}
