//! The depthwise forward written once over a SIMD register type ([`Lanes`]): ymm on AVX2
//! (`avx2.rs`), zmm on AVX-512 (`avx512.rs`), q registers on NEON (`neon.rs`); the stride-1
//! input gradient on x86 is the same loop over `dy` with the taps flipped (`FLIP`).
//!
//! The output pixels are visited by window class (border rows and columns clip the same taps,
//! so each class has one tap loop without tests; the interior's 3x3 is unrolled) in lines of
//! up to 8 pixels, so 8 FMA chains (pixels × channel blocks) hide the FMA latency even in an
//! 8-channel layer, whose single pixel is one 9-FMA chain; the channels a whole register does
//! not cover go pixel by pixel through a zero-padded stack copy ([`pixel`]). Weights are read
//! straight from `w[tap][c]` (f16 widened in the load) once per tap for the line's pixels.
//! Accumulation order per output is bias, then taps in row-major order, fused multiply-adds —
//! the same on every map size, grouping and register width, so no output depends on the batch,
//! the map or the path. Measured against the previous pixel-at-a-time loop (border pixels
//! through a tap list; single-call timings, Xeon VM, AVX2): 16x16x8 1.36 → 0.74 µs, 8x8x32
//! 0.79 → 0.63, 4x4x64 s2 0.17 → 0.12, 2x2x512 0.73 → 0.45, 8x8x128 2.3 → 2.2–2.4. On NEON
//! (guest instructions per batch-1 inference under qemu-user, `scripts/aarch64_insns.sh`) it
//! replaced a pixel-at-a-time loop over 8-channel blocks with pre-widened weights.

use super::scalar::taps;
use crate::act::Act;
use crate::elem::Elem;
use crate::shape::DwConv3x3;

/// Most lanes of a [`Lanes::Tail`] register (the stack rows of [`pixel`]'s last channels).
const MAX_TAIL: usize = 8;

/// One in-bounds tap of an output pixel: its input pixel (channel 0) and its weight row
/// `w[tap]` (channel 0).
#[derive(Clone, Copy)]
pub(super) struct Tap<W> {
    pub x: *const f32,
    pub w: *const W,
}

/// One SIMD register of f32 lanes, as the forward loops use it: 8-lane ymm on AVX2, 16-lane
/// zmm on AVX-512, 4-lane q on NEON. The forward is written once over it.
pub(super) trait Lanes {
    /// The register.
    type V: Copy;
    /// f32 lanes per register.
    const N: usize;
    /// The register a pixel's last channels (fewer than `N`) go through: a narrower one when
    /// there is one (ymm under zmm), else this one; at most [`MAX_TAIL`] lanes.
    type Tail: Lanes;
    /// Layers of fewer channels run every line in spans of the largest size, the last one
    /// moved back over pixels already done ([`line()`]): below it 2 pixels do not give 8
    /// FMA chains (4 registers each). 32 on AVX2 and AVX-512 (measured there), 16 on NEON.
    const OVERLAP_BELOW: usize;
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
    /// Stores `Act::Relu`'s `v > 0 ? v : +0` (so NaN and −0 give +0) when `relu`, else `v`.
    ///
    /// # Safety
    /// `N` f32 writable at `p`; the CPU supports the register's ISA.
    unsafe fn store(p: *mut f32, v: Self::V, relu: bool);
}

/// The forward loop; `FLIP` reads weight row `8 − tap` for tap `tap = 3·ky + kx`.
///
/// The output pixels are visited by window class (the ≤ 3 row runs × ≤ 3 column runs of
/// [`runs`]: border rows and columns clip the same taps), each class as lines of pixels (its
/// rows, or a border column from top to bottom), several pixels at a time ([`line()`]).
///
/// # Safety
/// Lengths as checked by [`super::dwconv3x3_fwd`] (with `FLIP`, by the stride-1
/// [`super::dwconv3x3_bwd_input`]: `x` is `dy`, `y` is `dx`); the CPU supports `L`'s ISA.
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
/// channel blocks) hide the FMA latency at any channel count — a narrow layer's pixel alone
/// (MobileNetV1 ×0.25's first depthwise has 8 channels) is one 9-FMA chain. In a layer of
/// fewer than [`Lanes::OVERLAP_BELOW`] channels a line not a multiple of the span ends with a span moved back to its
/// last pixel (a few pixels computed and stored twice, the same values: fewer chains would
/// wait on the FMA latency as long); wider layers (2 pixels fill the chains) split the rest
/// into smaller spans instead, computing nothing twice.
///
/// # Safety
/// The line's windows' in-bounds taps (pixel `p`: `x + p·xstep + (ky − ky.0)·row + (kx −
/// kx.0)·c`, `c` values) and outputs (`y + p·ystep`, `c` values) are in bounds; the CPU
/// supports `L`'s ISA.
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
    let overlap = k.c < L::OVERLAP_BELOW;
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

/// All channels of pixels `0..N` (1, 2, 4 or 8) of a line from `x`, `y`: blocks of 4 registers
/// of channels 2 pixels at a time, then 2 registers 4 at a time, then one all `N` (so up to 8
/// accumulators), then (under a wider register) one [`Lanes::Tail`] register all `N`, then
/// the last channels pixel by pixel through [`pixel`]. Per output:
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
    // SAFETY (every call): channels c0..c0 + L::N·V ≤ c of pixels q..q + G ≤ N.
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
        // A wider register leaves up to one block of the narrower one.
        let t = <L::Tail as Lanes>::N;
        if n > t && c0 + t <= c {
            block::<L::Tail, W, N, 1, FLIP>(k, win, x, y, l, c0);
            c0 += t;
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
            unsafe { pixel::<L::Tail, W>(c, c0, &list[..nt], k.b, k.relu, y.add(p * l.ystep)) };
        }
    }
}

/// Channels `c0..c0 + N·V` of pixels `0..G` of a line from `x`, `y`: `G·V` accumulators start
/// at the bias; each tap loads its `V` weight vectors once for the `G` pixels.
///
/// # Safety
/// As [`line()`] for pixels `0..G`, with `c0 + N·V ≤ c`.
#[inline(always)]
unsafe fn block<L: Lanes, W: Elem, const G: usize, const V: usize, const FLIP: bool>(
    k: &Ctx<W>,
    win: Window,
    x: *const f32,
    y: *mut f32,
    l: Line,
    c0: usize,
) {
    // SAFETY (every load and store): channels c0..c0 + N·V of in-bounds taps, weight rows,
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

/// `acc[p] += Σ_taps x·w` for channels `c0..c0 + N·V` of pixels `0..G` of a line, in row-major
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
            // SAFETY (every load): channels c0..c0 + N·V of in-bounds taps and weight rows.
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

/// Channels `c0..c` of one output pixel from its in-bounds taps, on `L` registers (4 at a
/// time, then 1, then the last < `L::N` through zero-padded stack rows).
///
/// # Safety
/// Each tap's `x` and `w`, `b` (if any) and `y` point at `c` readable (`y`: writable) values;
/// the CPU supports `L`'s ISA.
#[inline(always)]
pub(super) unsafe fn pixel<L: Lanes, W: Elem>(
    c: usize,
    mut c0: usize,
    list: &[Tap<W>],
    b: Option<*const W>,
    relu: bool,
    y: *mut f32,
) {
    const { assert!(L::N <= MAX_TAIL) };
    // SAFETY (both loops): c0 + V·N ≤ c, inside every operand.
    while c0 + 4 * L::N <= c {
        unsafe { chunk::<L, W, 4>(list, c0, b, relu, y) };
        c0 += 4 * L::N;
    }
    while c0 + L::N <= c {
        unsafe { chunk::<L, W, 1>(list, c0, b, relu, y) };
        c0 += L::N;
    }
    if c0 < c {
        // Fewer than N channels left: widen them into zero-padded stack rows, run one chunk
        // there and copy the valid lanes out (nothing past `c` is read or written).
        let cb = c - c0;
        let mut xs = [[0.0f32; MAX_TAIL]; 9];
        let mut ws = [[0.0f32; MAX_TAIL]; 9];
        let mut bs = [0.0f32; MAX_TAIL];
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
        let mut out = [0.0f32; MAX_TAIL];
        let bp = b.map(|_| bs.as_ptr());
        // SAFETY: the stack rows hold MAX_TAIL ≥ N f32 each.
        unsafe { chunk::<L, f32, 1>(&local[..list.len()], 0, bp, relu, out.as_mut_ptr()) };
        for (l, &v) in out.iter().enumerate().take(cb) {
            // SAFETY: channel c0 + l < c of the output pixel.
            unsafe { *y.add(c0 + l) = v };
        }
    }
}

/// Channels `c0..c0 + N·V` of one output pixel: `acc = b`, then `acc += x·w` per tap in list
/// order (row-major), then the activation.
///
/// # Safety
/// `N·V` values from `c0` are readable at every tap's `x` and `w` and at `b`, writable at `y`;
/// the CPU supports `L`'s ISA.
#[inline(always)]
unsafe fn chunk<L: Lanes, W: Elem, const V: usize>(
    list: &[Tap<W>],
    c0: usize,
    b: Option<*const W>,
    relu: bool,
    y: *mut f32,
) {
    // SAFETY (every load and store): within the N·V values from c0 the caller vouches for.
    unsafe {
        let mut acc = start::<L, W, V>(b, c0);
        for tap in list {
            for (v, a) in acc.iter_mut().enumerate() {
                let at = c0 + v * L::N;
                *a = L::fma(L::load(tap.x.add(at)), L::load_w(tap.w.add(at)), *a);
            }
        }
        finish::<L, V>(&acc, relu, y.add(c0));
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
