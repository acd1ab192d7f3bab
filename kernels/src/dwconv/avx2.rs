//! x86_64 AVX2+FMA+F16C depthwise 3x3: pixel-major, channel-vectorised forward (also the
//! stride-1 input gradient, a forward of `dy` with the taps flipped) and weight gradient.
//!
//! For each output pixel the in-bounds taps are found once (padding clips the list, no tests
//! in the channel loop); the channels are then swept in chunks of 32 (4 independent ymm
//! accumulators, so the FMA latency is hidden), then 8, then a last chunk of fewer than 8
//! through a zero-padded stack copy. Weights are read straight from `w[tap][c]` (F16C widens
//! f16 in the load); a layer's weights are at most 9·c values, so they stay in L1/L2 across
//! pixels. Accumulation order per output is bias, then taps in row-major order, fused
//! multiply-adds — the same on every map size, so no output depends on the batch or map.

use super::scalar::input_taps;
use super::{taps, BLOCK};
use crate::act::Act;
use crate::elem::{f16, Elem};
use crate::shape::DwConv3x3;
use core::any::TypeId;
use core::arch::x86_64::*;

/// Channels per chunk of the main loop (4 accumulators of [`BLOCK`]).
const CHUNK: usize = 4 * BLOCK;

/// Interior pixels computed together in layers narrower than [`CHUNK`] (MobileNetV1 ×0.25's
/// first depthwise has 8 channels: 3.1 → see docs/ARCHITECTURE.md).
const GROUP_PIXELS: usize = 4;

/// One in-bounds tap of an output pixel: its input pixel (channel 0) and its weight row
/// `w[tap]` (channel 0).
#[derive(Clone, Copy)]
struct Tap<W> {
    x: *const f32,
    w: *const W,
}

/// 8 weights at `p` widened to f32.
///
/// # Safety
/// 8 elements at `p` are readable; the CPU supports AVX and F16C.
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

/// `y = act(dwconv3x3(x, w) + b)` (see [`super::dwconv3x3_fwd`]).
///
/// # Safety
/// Lengths are as checked by [`super::dwconv3x3_fwd`] and the CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fwd<W: Elem>(s: &DwConv3x3, x: &[f32], w: &[W], bias: Option<&[W]>, act: Act, y: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { taps_fwd::<W, false>(s, x, w, bias, act, y) }
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
    unsafe { taps_fwd::<f32, true>(s, dy, w, None, Act::None, dx) }
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
/// # Safety
/// As [`fwd`].
#[inline(always)]
unsafe fn taps_fwd<W: Elem, const FLIP: bool>(
    s: &DwConv3x3,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
) {
    let (c, st, h, wd) = (s.c, s.stride, s.h, s.w);
    let (oh, ow) = (s.out_h(), s.out_w());
    let relu = act == Act::Relu;
    let b = bias.map(|b| b.as_ptr());
    let mut list = [Tap { x: x.as_ptr(), w: w.as_ptr() }; 9];
    // Output columns whose three taps are all in bounds: ox·st ≥ 1 and ox·st + 1 ≤ w − 1.
    let ox_in_hi = if wd >= 2 { ((wd - 2) / st + 1).min(ow) } else { 0 };
    for n in 0..s.n {
        for oy in 0..oh {
            let iyp = oy * st;
            let (ky_lo, ky_hi) = taps(iyp, h);
            let full_rows = ky_lo == 0 && ky_hi == 3;
            let mut ox = 0;
            while ox < ow {
                let ixp = ox * st;
                let out = y[((n * oh + oy) * ow + ox) * c..].as_mut_ptr();
                if full_rows && ox >= 1 && ox < ox_in_hi {
                    // Interior: input pixels (iyp − 1 + ky, ixp − 1 + kx), all in bounds.
                    let top = ((n * h + iyp - 1) * wd + ixp - 1) * c;
                    let rows = [x[top..].as_ptr(), x[top + wd * c..].as_ptr(), x[top + 2 * wd * c..].as_ptr()];
                    // Narrow layers: several interior pixels at once (one FMA chain each).
                    let g = if c < CHUNK && c % BLOCK == 0 { (ox_in_hi - ox).min(GROUP_PIXELS) } else { 1 };
                    // SAFETY: the windows' 3×3 input pixels are in bounds (interior, for all g
                    // pixels), `w` holds 9 rows of `c`, `out` g pixels of `c`; CPU features
                    // vouched for by the caller.
                    unsafe {
                        match g {
                            4 => interior_group::<W, 4, FLIP>(c, st, rows, w.as_ptr(), b, relu, out),
                            3 => interior_group::<W, 3, FLIP>(c, st, rows, w.as_ptr(), b, relu, out),
                            2 => interior_group::<W, 2, FLIP>(c, st, rows, w.as_ptr(), b, relu, out),
                            _ => interior::<W, FLIP>(c, rows, w.as_ptr(), b, relu, out),
                        }
                    }
                    ox += g;
                    continue;
                }
                ox += 1;
                let (kx_lo, kx_hi) = taps(ixp, wd);
                let mut nt = 0;
                for ky in ky_lo..ky_hi {
                    let row = (n * h + iyp + ky - 1) * wd;
                    for kx in kx_lo..kx_hi {
                        // Input pixel row + ixp + kx − 1 < n·h·w by the tap clipping; tap
                        // row ky·3 + kx < 9 of `w`: both offsets stay inside the slices.
                        list[nt] = Tap {
                            x: x[(row + ixp + kx - 1) * c..].as_ptr(),
                            w: w[weight_row::<FLIP>(ky * 3 + kx) * c..].as_ptr(),
                        };
                        nt += 1;
                    }
                }
                // SAFETY: every tap's input pixel and weight row hold `c` values, as do the
                // bias and the output pixel; CPU features vouched for by the caller.
                unsafe { pixel(c, 0, &list[..nt], b, relu, out) };
            }
        }
    }
}

/// All `c` channels of an interior output pixel: `rows[ky]` is its window's input pixel
/// `(ky, 0)`, tap `(ky, kx)` reads `rows[ky] + kx·c` and weight row `w + (3·ky + kx)·c`.
///
/// # Safety
/// The 3 pixels from each of `rows`, the 9 weight rows and `b` (if any) hold `c` readable
/// values, `y` `c` writable ones; the CPU supports AVX2, FMA and F16C.
#[inline(always)]
unsafe fn interior<W: Elem, const FLIP: bool>(
    c: usize,
    rows: [*const f32; 3],
    w: *const W,
    b: Option<*const W>,
    relu: bool,
    y: *mut f32,
) {
    let mut c0 = 0;
    // SAFETY (both loops): c0 + V·8 ≤ c, inside every operand.
    while c0 + CHUNK <= c {
        unsafe { chunk9::<W, 4, FLIP>(c, rows, w, c0, b, relu, y) };
        c0 += CHUNK;
    }
    while c0 + BLOCK <= c {
        unsafe { chunk9::<W, 1, FLIP>(c, rows, w, c0, b, relu, y) };
        c0 += BLOCK;
    }
    if c0 < c {
        let list: [Tap<W>; 9] = core::array::from_fn(|t| Tap {
            // SAFETY: as the caller vouches, pixel t % 3 from row t / 3 and weight row t.
            x: unsafe { rows[t / 3].add(t % 3 * c) },
            w: unsafe { w.add(weight_row::<FLIP>(t) * c) },
        });
        // SAFETY: the tail handling reads and writes only channels c0..c.
        unsafe { pixel(c, c0, &list, b, relu, y) };
    }
}

/// `G` consecutive interior pixels of a layer of fewer than [`CHUNK`] channels, a multiple of
/// [`BLOCK`]: per block of 8 channels one accumulator per pixel, so `G` FMA chains overlap
/// (one pixel's 9 taps alone form a single chain, latency-bound). Pixel `p`'s window starts
/// `p·st` pixels right of `rows`; the same bias-then-taps order as [`chunk9`], so the same bits.
///
/// # Safety
/// As [`interior`] for each of the `G` pixels (outputs `y + p·c`), and `c % 8 == 0`.
#[inline(always)]
unsafe fn interior_group<W: Elem, const G: usize, const FLIP: bool>(
    c: usize,
    st: usize,
    rows: [*const f32; 3],
    w: *const W,
    b: Option<*const W>,
    relu: bool,
    y: *mut f32,
) {
    for c0 in (0..c).step_by(BLOCK) {
        // SAFETY (every load and store): channels c0..c0 + 8 ≤ c of the G windows' pixels,
        // the weight rows, the bias and the G output pixels.
        unsafe {
            let mut acc = [start::<W, 1>(b, c0)[0]; G];
            for (ky, row) in rows.iter().enumerate() {
                for kx in 0..3 {
                    let wv = load_w(w.add(weight_row::<FLIP>(ky * 3 + kx) * c + c0));
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(row.add((p * st + kx) * c + c0)), wv, *a);
                    }
                }
            }
            for (p, a) in acc.iter().enumerate() {
                finish(&[*a], relu, y.add(p * c + c0));
            }
        }
    }
}

/// [`chunk`] of an interior pixel (all 9 taps, addressed from its 3 window rows).
///
/// # Safety
/// As [`interior`], with `c0 + 8·V ≤ c`.
#[inline(always)]
unsafe fn chunk9<W: Elem, const V: usize, const FLIP: bool>(
    c: usize,
    rows: [*const f32; 3],
    w: *const W,
    c0: usize,
    b: Option<*const W>,
    relu: bool,
    y: *mut f32,
) {
    // SAFETY (every load and store): within the 8·V values from c0 of each operand.
    unsafe {
        let mut acc = start::<W, V>(b, c0);
        for (ky, row) in rows.iter().enumerate() {
            for kx in 0..3 {
                let (xp, wp) = (row.add(kx * c + c0), w.add(weight_row::<FLIP>(ky * 3 + kx) * c + c0));
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(v * BLOCK)), load_w(wp.add(v * BLOCK)), *a);
                }
            }
        }
        finish(&acc, relu, y.add(c0));
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
        let mut acc = start::<W, V>(b, c0);
        for tap in list {
            for (v, a) in acc.iter_mut().enumerate() {
                let at = c0 + v * BLOCK;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(tap.x.add(at)), load_w(tap.w.add(at)), *a);
            }
        }
        finish(&acc, relu, y.add(c0));
    }
}

/// `V` accumulators holding the bias of channels `c0..c0 + 8·V` (zero without a bias).
///
/// # Safety
/// `8·V` values from `c0` are readable at `b`; the CPU supports AVX and F16C.
#[inline(always)]
unsafe fn start<W: Elem, const V: usize>(b: Option<*const W>, c0: usize) -> [__m256; V] {
    // SAFETY: forwarded.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); V];
        if let Some(b) = b {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = load_w(b.add(c0 + v * BLOCK));
            }
        }
        acc
    }
}

/// Stores `act(acc)` to the `8·V` values at `y`.
///
/// # Safety
/// `8·V` values at `y` are writable; the CPU supports AVX.
#[inline(always)]
unsafe fn finish<const V: usize>(acc: &[__m256; V], relu: bool, y: *mut f32) {
    for (v, a) in acc.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe {
            let r = if relu { _mm256_max_ps(*a, _mm256_setzero_ps()) } else { *a };
            _mm256_storeu_ps(y.add(v * BLOCK), r);
        }
    }
}
