//! AVX2 one-pass packing of a `k×n` matrix `w` both ways ([`super::pack_panels_both_ways`]):
//! `fwd[j/16][p][j%16] = w[p][j]` and `bwd[p/16][j][p%16] = w[p][j]`, in 16×16 tiles. A tile's
//! 16 rows are loaded once (32 ymm loads), stored as they are to `fwd` (its 16 lines are one
//! kilobyte there) and, after four 8×8 register transposes (24 shuffles each), to `bwd` (16
//! lines, consecutive over the tiles of a band of 16 rows). Tiles at the edges (fewer than 16
//! rows or columns) are first copied into a zero-padded 16×16 block; only the lines that exist
//! are stored, so both outputs' padding lanes come out 0 as the specification's.
//!
//! Measured (scratch loop over 6 matrices in L3, Xeon VM, alternating): 1024×1024 the two
//! separate scalar packers 1.7–2.2 ms, this pass 1.0–1.3 ms; 512×512 0.34–0.44 → 0.21–0.25
//! ms. In L2 (128×256) 17 → 6 µs: out of L2 the pass is bound by the memory traffic (one
//! read, two writes). In MobileNetV1 1.0's train step (seven layers, 2.9 M weights, packed on
//! 2 threads at every train forward) 3.0–3.1 → 1.6–1.8 ms; `tinykd bench train-step`
//! 1822–1915 → 1876–1928 img/s, `distill-step` 914–923 → 929–940 (alternating builds).

use super::PANEL;
use core::arch::x86_64::*;

/// Packs `w` (`k×n`, row-major, `k, n ≥ 1`) into `fwd` and `bwd` (see the module docs).
///
/// # Safety
/// `w.len() == k·n`, `fwd.len() == panels_len(1, k, n)`, `bwd.len() == panels_len(1, n, k)`,
/// and the CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack(k: usize, n: usize, w: &[f32], fwd: &mut [f32], bwd: &mut [f32]) {
    debug_assert!(w.len() == k * n && fwd.len() == k * n.div_ceil(PANEL) * PANEL);
    debug_assert!(bwd.len() == n * k.div_ceil(PANEL) * PANEL);
    let (src, fp, bp) = (w.as_ptr(), fwd.as_mut_ptr(), bwd.as_mut_ptr());
    for p0 in (0..k).step_by(PANEL) {
        let rows = PANEL.min(k - p0);
        for j0 in (0..n).step_by(PANEL) {
            let cols = PANEL.min(n - j0);
            // SAFETY: rows p0..p0+rows and columns j0..j0+cols are inside w; the tile's fwd lines
            // are panel j0/16's rows p0..p0+rows and its bwd lines panel p0/16's rows
            // j0..j0+cols, inside the lengths the caller guarantees.
            unsafe {
                let at = src.add(p0 * n + j0);
                let f = fp.add((j0 / PANEL * k + p0) * PANEL);
                let b = bp.add((p0 / PANEL * n + j0) * PANEL);
                if rows == PANEL && cols == PANEL {
                    tile(at, n, PANEL, PANEL, f, b);
                } else {
                    let mut pad = [0.0f32; PANEL * PANEL];
                    for r in 0..rows {
                        core::ptr::copy_nonoverlapping(at.add(r * n), pad.as_mut_ptr().add(r * PANEL), cols);
                    }
                    tile(pad.as_ptr(), PANEL, rows, cols, f, b);
                }
            }
        }
    }
}

/// One 16×16 tile read from `src` (row stride `lds`, 16 rows of 16 readable): its first
/// `rows` rows stored to the fwd lines at `f`, its first `cols` columns to the bwd lines at
/// `b` (both 16 floats apart).
///
/// # Safety
/// As stated, and the CPU supports AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile(src: *const f32, lds: usize, rows: usize, cols: usize, f: *mut f32, b: *mut f32) {
    for half in 0..2 {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
        for r in 0..8 {
            let row = half * 8 + r;
            // SAFETY: 16 readable floats per row (caller); fwd line `row` exists when row < rows.
            unsafe {
                lo[r] = _mm256_loadu_ps(src.add(row * lds));
                hi[r] = _mm256_loadu_ps(src.add(row * lds + 8));
                if row < rows {
                    _mm256_storeu_ps(f.add(row * PANEL), lo[r]);
                    _mm256_storeu_ps(f.add(row * PANEL + 8), hi[r]);
                }
            }
        }
        // SAFETY: register-only shuffles (AVX2 by the caller).
        let (tl, th) = unsafe { (transpose8(lo), transpose8(hi)) };
        for c in 0..8 {
            // SAFETY: bwd line `c` (or `8 + c`) exists when it is below `cols`; its half `half`
            // holds this half's 8 rows.
            unsafe {
                if c < cols {
                    _mm256_storeu_ps(b.add(c * PANEL + half * 8), tl[c]);
                }
                if 8 + c < cols {
                    _mm256_storeu_ps(b.add((8 + c) * PANEL + half * 8), th[c]);
                }
            }
        }
    }
}

/// The transpose of an 8×8 block held as 8 row vectors: `out[c][i] = r[i][c]`.
///
/// # Safety
/// The CPU supports AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}
