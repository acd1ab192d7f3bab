//! x86_64 AVX2+FMA+F16C depthwise 3x3: pixel-major, channel-vectorised forward (also the
//! stride-1 input gradient, a forward of `dy` with the taps flipped) and weight gradient.
//!
//! The forward visits the output pixels by window class (border rows and columns clip the
//! same taps, so each class has one tap loop without tests; the interior's 3x3 is unrolled)
//! in lines of up to 8 pixels, so 8 FMA chains (pixels × 8-channel blocks: 2 pixels × 32
//! channels, 4 × 16, 8 × 8) hide the FMA latency even in an 8-channel layer, whose single
//! pixel is one 9-FMA chain; the last < 8 channels go through a zero-padded stack copy.
//! Weights are read straight from `w[tap][c]` (F16C widens f16 in the load) once per tap for
//! the line's pixels. Accumulation order per output is bias, then taps in row-major order,
//! fused multiply-adds — the same on every map size and grouping, so no output depends on the
//! batch or map. Measured against the previous pixel-at-a-time loop (border pixels through a
//! tap list; single-call timings, Xeon VM): 16x16x8 1.36 → 0.74 µs, 8x8x32 0.79 → 0.63,
//! 4x4x64 s2 0.17 → 0.12, 2x2x512 0.73 → 0.45, 8x8x128 2.3 → 2.2–2.4.

use super::scalar::input_taps;
use super::{taps, BLOCK};
use crate::act::Act;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::x86_64::*;

/// Channels per chunk of the main loop (4 accumulators of [`BLOCK`]).
const CHUNK: usize = 4 * BLOCK;

/// One in-bounds tap of an output pixel: its input pixel (channel 0) and its weight row
/// `w[tap]` (channel 0).
#[derive(Clone, Copy)]
struct Tap<W> {
    x: *const f32,
    w: *const W,
}

/// One SIMD register of f32 lanes, as the forward loops use it: 8-lane ymm here ([`Ymm`]),
/// 16-lane zmm on AVX-512 (`avx512.rs`). The forward is written once over it.
pub(super) trait Lanes {
    /// The register.
    type V: Copy;
    /// f32 lanes per register.
    const N: usize;
    /// # Safety
    /// `N` f32 readable at `p`; the CPU supports the register's ISA.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `N` weights at `p` widened to f32.
    ///
    /// # Safety
    /// `N` elements readable at `p`; the CPU supports the register's ISA (with F16C).
    unsafe fn load_w<W: Elem>(p: *const W) -> Self::V;
    /// # Safety
    /// The CPU supports the register's ISA.
    unsafe fn zero() -> Self::V;
    /// `a·b + c`, fused.
    ///
    /// # Safety
    /// The CPU supports the register's ISA (with FMA).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Stores `max(v, 0)` (the second operand for NaN, as `Act::Relu`) when `relu`, else `v`.
    ///
    /// # Safety
    /// `N` f32 writable at `p`; the CPU supports the register's ISA.
    unsafe fn store(p: *mut f32, v: Self::V, relu: bool);
}

/// The AVX2 register: 8 lanes.
pub(super) struct Ymm;

impl Lanes for Ymm {
    type V = __m256;
    const N: usize = BLOCK;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: forwarded.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_w<W: Elem>(p: *const W) -> __m256 {
        // SAFETY: forwarded; `W` is f16 (read as 8 halves) or f32, the only other `Elem`.
        unsafe {
            if TypeId::of::<W>() == TypeId::of::<f16>() {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            } else {
                _mm256_loadu_ps(p as *const f32)
            }
        }
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: register work (AVX: caller).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: register work (FMA: caller).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256, relu: bool) {
        // SAFETY: forwarded.
        unsafe { _mm256_storeu_ps(p, if relu { _mm256_max_ps(v, _mm256_setzero_ps()) } else { v }) }
    }
}

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { taps_fwd::<Ymm, W, false>(s, x, w, bias, act, y) }
}

/// `dx = Σ_taps shift(dy ⊙ w[tap])` for stride 1 (see [`super::dwconv3x3_bwd_input`]): input
/// pixel `i` gets `dy[i − k + 1]·w[k]` over the taps `k`, i.e. the forward of `dy` with the
/// kernel flipped (`w[2 − ky][2 − kx]`), same padding.
///
/// # Safety
/// `s.stride == 1`, lengths as checked by [`super::dwconv3x3_bwd_input`], and the CPU supports
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bwd_input_s1(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert_eq!(s.stride, 1);
    // SAFETY: at stride 1 `dy` and `dx` both hold n·h·w·c values; forwarded otherwise.
    unsafe { taps_fwd::<Ymm, f32, true>(s, dy, w, None, Act::None, dx) }
}

/// `dx` of a strided depthwise conv as a gather (see [`super::dwconv3x3_bwd_input`]): input
/// pixel `(iy, ix)` gets `Σ dy[oy][ox]·w[ky][kx]` over the taps with `oy·st + ky − 1 = iy`,
/// `ox·st + kx − 1 = ix` in bounds (at stride 2: 1, 2 or 4 of them), found once per pixel and
/// swept over the channels as the forward's border pixels are ([`pixel`]), in `(ky, kx)` order.
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_bwd_input`]; the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bwd_input_gather(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (c, h, wd) = (s.c, s.h, s.w);
    let mut found = [(0usize, 0usize); 9];
    let mut list = [Tap { x: dy.as_ptr(), w: w.as_ptr() }; 9];
    for n in 0..s.n {
        for iy in 0..h {
            for ix in 0..wd {
                let nt = input_taps(s, n, iy, ix, &mut found);
                for (t, &(o, k)) in list.iter_mut().zip(&found[..nt]) {
                    // Output pixel o < n·oh·ow and tap row k < 9: both offsets stay inside
                    // the slices.
                    *t = Tap { x: dy[o * c..].as_ptr(), w: w[k * c..].as_ptr() };
                }
                let out = dx[((n * h + iy) * wd + ix) * c..].as_mut_ptr();
                // SAFETY: every tap's dy pixel and weight row hold `c` values, as does the dx
                // pixel; CPU features vouched for by the caller.
                unsafe { pixel(c, 0, &list[..nt], None, false, out) };
            }
        }
    }
}

/// The forward loop; `FLIP` reads weight row `8 − tap` for tap `tap = 3·ky + kx`.
///
/// The output pixels are visited by window class (the ≤ 3 row runs × ≤ 3 column runs of
/// [`runs`]: border rows and columns clip the same taps), each class as lines of pixels (its
/// rows, or a border column from top to bottom), several pixels at a time ([`line()`]).
///
/// # Safety
/// As [`fwd`].
#[inline(always)]
pub(super) unsafe fn taps_fwd<L: Lanes, W: Elem, const FLIP: bool>(
    s: &DwConv3x3,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    let k = Ctx { c, row: wd * c, w: w.as_ptr(), b: bias.map(|b| b.as_ptr()), relu: act == Act::Relu };
    let (yruns, xruns) = (runs(oh, h, st), runs(ow, wd, st));
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    for n in 0..s.n {
        for yr in yruns.iter().flatten() {
            for xr in xruns.iter().flatten() {
                let win = Window { ky: yr.taps, kx: xr.taps };
                // Pixel (oy, ox)'s window starts (first in-bounds tap) at input pixel (oy·st +
                // ky_lo − 1, ox·st + kx_lo − 1), inside the map by the tap clipping.
                let at = |oy: usize, ox: usize| {
                    let (iy, ix) = (oy * st + win.ky.0 - 1, ox * st + win.kx.0 - 1);
                    (((n * h + iy) * wd + ix) * c, ((n * oh + oy) * ow + ox) * c)
                };
                if xr.hi - xr.lo == 1 && yr.hi - yr.lo > 1 {
                    // A border column: its pixels form one run down the column.
                    let (xo, yo) = at(yr.lo, xr.lo);
                    let run = Line { xstep: st * wd * c, ystep: ow * c, len: yr.hi - yr.lo };
                    // SAFETY: the run's windows and outputs are in bounds (above); CPU
                    // features vouched for by the caller.
                    unsafe { line::<L, W, FLIP>(&k, win, xp.add(xo), yp.add(yo), run) };
                    continue;
                }
                for oy in yr.lo..yr.hi {
                    let (xo, yo) = at(oy, xr.lo);
                    let run = Line { xstep: st * c, ystep: c, len: xr.hi - xr.lo };
                    // SAFETY: as above.
                    unsafe { line::<L, W, FLIP>(&k, win, xp.add(xo), yp.add(yo), run) };
                }
            }
        }
    }
}

/// What every pixel of a forward shares: `c` channels, `row = w·c` (one input row), the
/// weights `w[tap][c]`, the bias and the activation.
struct Ctx<W> {
    c: usize,
    row: usize,
    w: *const W,
    b: Option<*const W>,
    relu: bool,
}

/// The in-bounds taps `ky.0..ky.1` × `kx.0..kx.1` of a class of output pixels.
#[derive(Clone, Copy)]
struct Window {
    ky: (usize, usize),
    kx: (usize, usize),
}

impl Window {
    /// All 9 taps in bounds.
    #[inline(always)]
    fn full(self) -> bool {
        self.ky == (0, 3) && self.kx == (0, 3)
    }
}

/// Output positions `lo..hi` along one axis whose windows clip the same taps.
#[derive(Clone, Copy)]
struct Run {
    lo: usize,
    hi: usize,
    taps: (usize, usize),
}

/// The runs of `out` output positions over an axis of `len` inputs at stride `st`: a window
/// starts at `p = o·st ≤ len − 1`, so only position 0 clips tap 0 and only the last position
/// can clip tap 2 (when `p = len − 1`); the positions between take all three taps.
fn runs(out: usize, len: usize, st: usize) -> [Option<Run>; 3] {
    let first = Run { lo: 0, hi: 1, taps: taps(0, len) };
    if out == 1 {
        return [Some(first), None, None];
    }
    let last = out - 1;
    let end = taps(last * st, len);
    let (mid_hi, end) = if end == (0, 3) { (out, None) } else { (last, Some(Run { lo: last, hi: out, taps: end })) };
    [Some(first), (mid_hi > 1).then_some(Run { lo: 1, hi: mid_hi, taps: (0, 3) }), end]
}

/// `len ≥ 1` output pixels of one window class along a row or down a border column: pixel
/// `p`'s window at `x + p·xstep`, its output at `y + p·ystep`.
#[derive(Clone, Copy)]
struct Line {
    xstep: usize,
    ystep: usize,
    len: usize,
}

/// The pixels of a [`Line`], 8 at a time ([`span`]; then 4, 2, 1): 8 FMA chains (pixels ×
/// 8-channel blocks) hide the FMA latency at any channel count — a narrow layer's pixel alone
/// (MobileNetV1 ×0.25's first depthwise has 8 channels) is one 9-FMA chain. In a layer of
/// fewer than 32 channels a line not a multiple of the span ends with a span moved back to its
/// last pixel (a few pixels computed and stored twice, the same values: fewer chains would
/// wait on the FMA latency as long); wider layers (2 pixels fill the chains) split the rest
/// into smaller spans instead, computing nothing twice.
///
/// # Safety
/// The line's windows' in-bounds taps (pixel `p`: `x + p·xstep + (ky − ky.0)·row + (kx −
/// kx.0)·c`, `c` values) and outputs (`y + p·ystep`, `c` values) are in bounds; the CPU
/// supports AVX2, FMA and F16C.
#[inline(always)]
unsafe fn line<L: Lanes, W: Elem, const FLIP: bool>(k: &Ctx<W>, win: Window, x: *const f32, y: *mut f32, l: Line) {
    /// The largest span of at most `len` pixels.
    fn span_of(len: usize) -> usize {
        match len {
            8.. => 8,
            4..=7 => 4,
            2 | 3 => 2,
            _ => 1,
        }
    }
    let overlap = k.c < CHUNK;
    let mut p = 0;
    while p < l.len {
        let (n, p0) = if overlap {
            let n = span_of(l.len);
            (n, p.min(l.len - n))
        } else {
            (span_of(l.len - p), p)
        };
        // SAFETY: pixels p0..p0 + n ≤ len of the line.
        unsafe {
            let (x, y) = (x.add(p0 * l.xstep), y.add(p0 * l.ystep));
            match n {
                8 => span::<L, W, 8, FLIP>(k, win, x, y, l),
                4 => span::<L, W, 4, FLIP>(k, win, x, y, l),
                2 => span::<L, W, 2, FLIP>(k, win, x, y, l),
                _ => span::<L, W, 1, FLIP>(k, win, x, y, l),
            }
        }
        p = p0 + n;
    }
}

/// All channels of pixels `0..N` (1, 2, 4 or 8) of a line from `x`, `y`: blocks of 32 channels
/// 2 pixels at a time, then 16 channels 4 at a time, then 8 channels all `N` (so up to 8
/// accumulators), then the last < 8 channels pixel by pixel through [`pixel`]. Per output:
/// bias, then the taps in row-major order, fused multiply-adds — the order of [`pixel`], so no
/// output depends on its span or class.
///
/// # Safety
/// As [`line()`] for pixels `0..N`.
#[inline(always)]
unsafe fn span<L: Lanes, W: Elem, const N: usize, const FLIP: bool>(
    k: &Ctx<W>,
    win: Window,
    x: *const f32,
    y: *mut f32,
    l: Line,
) {
    let c = k.c;
    let mut c0 = 0;
    // SAFETY (every call): channels c0..c0 + 8·V ≤ c of pixels q..q + G ≤ N.
    unsafe {
        let n = L::N;
        while c0 + 4 * n <= c {
            if N == 1 {
                block::<L, W, 1, 4, FLIP>(k, win, x, y, l, c0);
            } else {
                for q in (0..N).step_by(2) {
                    block::<L, W, 2, 4, FLIP>(k, win, x.add(q * l.xstep), y.add(q * l.ystep), l, c0);
                }
            }
            c0 += 4 * n;
        }
        if c0 + 2 * n <= c {
            match N {
                1 => block::<L, W, 1, 2, FLIP>(k, win, x, y, l, c0),
                2 => block::<L, W, 2, 2, FLIP>(k, win, x, y, l, c0),
                _ => {
                    for q in (0..N).step_by(4) {
                        block::<L, W, 4, 2, FLIP>(k, win, x.add(q * l.xstep), y.add(q * l.ystep), l, c0);
                    }
                }
            }
            c0 += 2 * n;
        }
        if c0 + n <= c {
            block::<L, W, N, 1, FLIP>(k, win, x, y, l, c0);
            c0 += n;
        }
        // A wider register leaves up to one 8-lane block.
        if n > BLOCK && c0 + BLOCK <= c {
            block::<Ymm, W, N, 1, FLIP>(k, win, x, y, l, c0);
            c0 += BLOCK;
        }
    }
    if c0 < c {
        for p in 0..N {
            let mut list = [Tap { x, w: k.w }; 9];
            let mut nt = 0;
            for ky in win.ky.0..win.ky.1 {
                for kx in win.kx.0..win.kx.1 {
                    // SAFETY: tap (ky, kx) of pixel p's in-bounds window; weight row < 9.
                    list[nt] = unsafe {
                        Tap {
                            x: x.add(p * l.xstep + (ky - win.ky.0) * k.row + (kx - win.kx.0) * c),
                            w: k.w.add(weight_row::<FLIP>(ky * 3 + kx) * c),
                        }
                    };
                    nt += 1;
                }
            }
            // SAFETY: the tail reads and writes channels c0..c of the taps and the pixel.
            unsafe { pixel(c, c0, &list[..nt], k.b, k.relu, y.add(p * l.ystep)) };
        }
    }
}

/// Channels `c0..c0 + 8·V` of pixels `0..G` of a line from `x`, `y`: `G·V` accumulators start
/// at the bias; each tap loads its `V` weight vectors once for the `G` pixels.
///
/// # Safety
/// As [`line()`] for pixels `0..G`, with `c0 + 8·V ≤ c`.
#[inline(always)]
unsafe fn block<L: Lanes, W: Elem, const G: usize, const V: usize, const FLIP: bool>(
    k: &Ctx<W>,
    win: Window,
    x: *const f32,
    y: *mut f32,
    l: Line,
    c0: usize,
) {
    // SAFETY (every load and store): channels c0..c0 + 8·V of in-bounds taps, weight rows,
    // the bias and the outputs (caller).
    unsafe {
        let mut acc = [start::<L, W, V>(k.b, c0); G];
        // An interior window's tap loops get constant bounds (unrolled).
        if win.full() {
            sum_taps::<L, W, G, V, FLIP>(k, Window { ky: (0, 3), kx: (0, 3) }, x, l, c0, &mut acc);
        } else {
            sum_taps::<L, W, G, V, FLIP>(k, win, x, l, c0, &mut acc);
        }
        for (p, a) in acc.iter().enumerate() {
            finish::<L, V>(a, k.relu, y.add(p * l.ystep + c0));
        }
    }
}

/// `acc[p] += Σ_taps x·w` for channels `c0..c0 + 8·V` of pixels `0..G` of a line, in row-major
/// tap order.
///
/// # Safety
/// As [`block`].
#[inline(always)]
unsafe fn sum_taps<L: Lanes, W: Elem, const G: usize, const V: usize, const FLIP: bool>(
    k: &Ctx<W>,
    win: Window,
    x: *const f32,
    l: Line,
    c0: usize,
    acc: &mut [[L::V; V]; G],
) {
    for ky in win.ky.0..win.ky.1 {
        for kx in win.kx.0..win.kx.1 {
            // SAFETY (every load): channels c0..c0 + 8·V of in-bounds taps and weight rows.
            unsafe {
                let xt = x.add((ky - win.ky.0) * k.row + (kx - win.kx.0) * k.c + c0);
                let wp = k.w.add(weight_row::<FLIP>(ky * 3 + kx) * k.c + c0);
                let wv: [L::V; V] = core::array::from_fn(|v| L::load_w(wp.add(v * L::N)));
                for (p, a) in acc.iter_mut().enumerate() {
                    for (v, (s, w)) in a.iter_mut().zip(wv).enumerate() {
                        *s = L::fma(L::load(xt.add(p * l.xstep + v * L::N)), w, *s);
                    }
                }
            }
        }
    }
}

/// The weight row of tap `t` (`8 − t` when the kernel is flipped).
#[inline(always)]
const fn weight_row<const FLIP: bool>(t: usize) -> usize {
    if FLIP {
        8 - t
    } else {
        t
    }
}

/// `dw[tap][c] = Σ_{out} x[in(out, tap)][c]·dy[out][c]` (see [`super::dwconv3x3_bwd_weight`]),
/// summed over the output pixels in order with fused multiply-adds. Maps of at least
/// [`REGISTER_SUMS_PIXELS`] output pixels: per block of 8 channels the 9 tap sums stay in
/// registers over each image (interior pixels take all 9 taps without tests), the images'
/// sums added in order (stride 1 only); stride 2 and smaller
/// maps (few pixels, many channels: the per-block pass over the pixels would not pay) go
/// pixel by pixel, adding into the `dw` rows (L1) 8 channels at a time. The last < 8
/// channels are summed scalar.
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_bwd_weight`]; the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bwd_weight(s: &DwConv3x3, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let c = s.c;
    let full = c / BLOCK * BLOCK;
    dw.fill(0.0);
    let d = dw.as_mut_ptr();
    let in_registers = s.stride == 1 && s.out_h() * s.out_w() >= REGISTER_SUMS_PIXELS;
    if in_registers {
        // Image by image (its pixels stay in L2 while every channel block passes over them),
        // each image's sums added to `dw` in image order.
        for n in 0..s.n {
            for c0 in (0..full).step_by(BLOCK) {
                // SAFETY: image n < s.n, channels c0..c0 + 8 ≤ c; forwarded.
                let acc = unsafe { weight_sums(s, x.as_ptr(), dy.as_ptr(), n, c0) };
                for (t, a) in acc.iter().enumerate() {
                    // SAFETY: row t < 9 of `dw` (9·c values), channels c0..c0 + 8 ≤ c.
                    unsafe {
                        let p = d.add(t * c + c0);
                        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *a));
                    }
                }
            }
        }
    }
    if in_registers && full == c {
        return;
    }
    // The pixel walk of `scalar::for_each_tap`, written out: AVX2 intrinsics inside a closure
    // passed to a function without this `target_feature` are not inlined (each becomes a
    // call; measured 20x slower).
    let (oh, ow) = (s.out_h(), s.out_w());
    let c_lo = if in_registers { full } else { 0 };
    for n in 0..s.n {
        for oy in 0..oh {
            let iyp = oy * s.stride;
            let (ky_lo, ky_hi) = taps(iyp, s.h);
            for ox in 0..ow {
                let ixp = ox * s.stride;
                let (kx_lo, kx_hi) = taps(ixp, s.w);
                let gp = dy[((n * oh + oy) * ow + ox) * c..][..c].as_ptr();
                for ky in ky_lo..ky_hi {
                    let row = (n * s.h + iyp + ky - 1) * s.w;
                    for kx in kx_lo..kx_hi {
                        let xp = x[(row + ixp + kx - 1) * c..][..c].as_ptr();
                        // SAFETY: row ky·3 + kx < 9 of `dw`; channels < c of the input
                        // pixel, the output pixel and the row; CPU features vouched for by the
                        // caller. `d` is the only access to `dw`.
                        unsafe {
                            let a = d.add((ky * 3 + kx) * c);
                            let mut c0 = c_lo;
                            while c0 < full {
                                let v = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(xp.add(c0)),
                                    _mm256_loadu_ps(gp.add(c0)),
                                    _mm256_loadu_ps(a.add(c0)),
                                );
                                _mm256_storeu_ps(a.add(c0), v);
                                c0 += BLOCK;
                            }
                            for ch in full..c {
                                *a.add(ch) += *xp.add(ch) * *gp.add(ch);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stride-1 output maps from this many pixels (8x8) sum the weight gradient in registers (see
/// [`bwd_weight`]). Measured at batch 32 on MobileNetV1's layers against the scalar loop: 16x16
/// × 32 channels 1.85x faster in registers (1.2x adding into `dw`); 8x8 × 128 about even to
/// 1.4x; at 4x4 and below, and at stride 2, adding into `dw` per pixel is faster (1.1–1.3x).
const REGISTER_SUMS_PIXELS: usize = 64;

/// The 9 tap sums of channels `c0..c0 + 8` over the output pixels of image `n`, in order.
///
/// # Safety
/// `x` and `dy` hold the shape's NHWC values, `n < s.n`, `c0 + 8 ≤ c`; the CPU supports AVX2
/// and FMA.
#[inline(always)]
unsafe fn weight_sums(s: &DwConv3x3, x: *const f32, dy: *const f32, n: usize, c0: usize) -> [__m256; 9] {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    // Output columns whose three taps are all in bounds (as in the forward).
    let ox_in_hi = if wd >= 2 { ((wd - 2) / st + 1).min(ow) } else { 0 };
    // SAFETY (every load): pixel indices stay inside the batch by the tap clipping, channels
    // inside c0..c0 + 8 ≤ c (caller).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 9];
        {
            for oy in 0..oh {
                let iyp = oy * st;
                let (ky_lo, ky_hi) = taps(iyp, h);
                let full_rows = ky_lo == 0 && ky_hi == 3;
                for ox in 0..ow {
                    let ixp = ox * st;
                    let g = _mm256_loadu_ps(dy.add(((n * oh + oy) * ow + ox) * c + c0));
                    if full_rows && ox >= 1 && ox < ox_in_hi {
                        let top = x.add(((n * h + iyp - 1) * wd + ixp - 1) * c + c0);
                        for (t, a) in acc.iter_mut().enumerate() {
                            let p = top.add(((t / 3) * wd + t % 3) * c);
                            *a = _mm256_fmadd_ps(_mm256_loadu_ps(p), g, *a);
                        }
                        continue;
                    }
                    let (kx_lo, kx_hi) = taps(ixp, wd);
                    for (t, a) in acc.iter_mut().enumerate() {
                        let (ky, kx) = (t / 3, t % 3);
                        if ky >= ky_lo && ky < ky_hi && kx >= kx_lo && kx < kx_hi {
                            let inp = (n * h + iyp + ky - 1) * wd + ixp + kx - 1;
                            *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(inp * c + c0)), g, *a);
                        }
                    }
                }
            }
        }
        acc
    }
}

/// Channels `c0..c` of one output pixel from its in-bounds taps.
///
/// # Safety
/// Each tap's `x` and `w`, `b` (if any) and `y` point at `c` readable (`y`: writable) values;
/// the CPU supports AVX2, FMA and F16C.
#[inline(always)]
unsafe fn pixel<W: Elem>(c: usize, mut c0: usize, list: &[Tap<W>], b: Option<*const W>, relu: bool, y: *mut f32) {
    // SAFETY (both loops): c0 + V·8 ≤ c, inside every operand.
    while c0 + CHUNK <= c {
        unsafe { chunk::<W, 4>(list, c0, b, relu, y) };
        c0 += CHUNK;
    }
    while c0 + BLOCK <= c {
        unsafe { chunk::<W, 1>(list, c0, b, relu, y) };
        c0 += BLOCK;
    }
    if c0 < c {
        // Fewer than 8 channels left: widen them into zero-padded stack rows, run one chunk
        // there and copy the valid lanes out (nothing past `c` is read or written).
        let cb = c - c0;
        let mut xs = [[0.0f32; BLOCK]; 9];
        let mut ws = [[0.0f32; BLOCK]; 9];
        let mut bs = [0.0f32; BLOCK];
        let mut local = [Tap { x: xs[0].as_ptr(), w: ws[0].as_ptr() }; 9];
        for (t, tap) in list.iter().enumerate() {
            for l in 0..cb {
                // SAFETY: channel c0 + l < c of this tap.
                unsafe {
                    xs[t][l] = *tap.x.add(c0 + l);
                    ws[t][l] = (*tap.w.add(c0 + l)).to_f32();
                }
            }
            local[t] = Tap { x: xs[t].as_ptr(), w: ws[t].as_ptr() };
        }
        if let Some(b) = b {
            for (l, v) in bs.iter_mut().enumerate().take(cb) {
                // SAFETY: channel c0 + l < c of the bias.
                *v = unsafe { *b.add(c0 + l) }.to_f32();
            }
        }
        let mut out = [0.0f32; BLOCK];
        let bp = b.map(|_| bs.as_ptr());
        // SAFETY: the stack rows hold 8 f32 each.
        unsafe { chunk::<f32, 1>(&local[..list.len()], 0, bp, relu, out.as_mut_ptr()) };
        for (l, &v) in out.iter().enumerate().take(cb) {
            // SAFETY: channel c0 + l < c of the output pixel.
            unsafe { *y.add(c0 + l) = v };
        }
    }
}

/// Channels `c0..c0 + 8·V` of one output pixel: `acc = b`, then `acc += x·w` per tap in list
/// order (row-major), then the activation.
///
/// # Safety
/// `8·V` values from `c0` are readable at every tap's `x` and `w` and at `b`, writable at `y`;
/// the CPU supports AVX2, FMA and F16C.
#[inline(always)]
unsafe fn chunk<W: Elem, const V: usize>(list: &[Tap<W>], c0: usize, b: Option<*const W>, relu: bool, y: *mut f32) {
    // SAFETY (every load and store): within the 8·V values from c0 the caller vouches for.
    unsafe {
        let mut acc = start::<Ymm, W, V>(b, c0);
        for tap in list {
            for (v, a) in acc.iter_mut().enumerate() {
                let at = c0 + v * BLOCK;
                *a = Ymm::fma(Ymm::load(tap.x.add(at)), Ymm::load_w(tap.w.add(at)), *a);
            }
        }
        finish::<Ymm, V>(&acc, relu, y.add(c0));
    }
}

/// `V` registers holding the bias of channels `c0..c0 + N·V` (zero without a bias).
///
/// # Safety
/// `N·V` values from `c0` are readable at `b`; the CPU supports the register's ISA.
#[inline(always)]
unsafe fn start<L: Lanes, W: Elem, const V: usize>(b: Option<*const W>, c0: usize) -> [L::V; V] {
    // SAFETY: forwarded.
    unsafe {
        match b {
            Some(b) => core::array::from_fn(|v| L::load_w(b.add(c0 + v * L::N))),
            None => [L::zero(); V],
        }
    }
}

/// Stores `act(acc)` to the `N·V` values at `y`.
///
/// # Safety
/// `N·V` values at `y` are writable; the CPU supports the register's ISA.
#[inline(always)]
unsafe fn finish<L: Lanes, const V: usize>(acc: &[L::V; V], relu: bool, y: *mut f32) {
    for (v, &a) in acc.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe { L::store(y.add(v * L::N), a, relu) };
    }
}
