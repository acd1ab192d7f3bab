//! Portable depthwise 3x3 loops: the specification every SIMD path is tested against.
//!
//! All three passes walk output pixels in NHWC order and, for each of the (up to) 9 in-bounds
//! taps, run a branch-free loop over contiguous channels. Padding is handled by clipping the
//! tap range per pixel ([`taps`]), never by tests inside the channel loop. Lengths and the
//! shape are checked by the caller.

use crate::act::Act;
use crate::elem::Elem;
use crate::shape::DwConv3x3;

/// Channels per block in the forward pass: the block's 9 taps and bias are widened to f32
/// once into a stack tile (`(9 + 1)·32·4` = 1280 bytes), so f16 weights are never converted in
/// the inner loop.
const CHANNEL_BLOCK: usize = 32;

/// Taps `lo..hi` (of 3) whose input position `p + t − 1` lies in `0..len`, for an output
/// pixel whose window starts at padded position `p = o·stride`.
#[inline]
pub(super) fn taps(p: usize, len: usize) -> (usize, usize) {
    let lo = 1usize.saturating_sub(p);
    let hi = (len + 1).saturating_sub(p).min(3).max(lo);
    (lo, hi)
}

/// The taps that read input pixel `(n, iy, ix)`, in `(ky, kx)` order: `(output pixel, tap)`
/// pairs (flattened `n·out_h·out_w` index, `tap = ky·3 + kx`) with `oy·stride + ky − 1 = iy`,
/// `ox·stride + kx − 1 = ix` in bounds, written to `list`; returns how many (at most 9 at stride
/// 1, 4 at stride 2). The input-gradient gathers of the SIMD paths walk these.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
pub(super) fn input_taps(s: &DwConv3x3, n: usize, iy: usize, ix: usize, list: &mut [(usize, usize); 9]) -> usize {
    let (st, oh, ow) = (s.stride, s.out_h(), s.out_w());
    // The output index o with o·st + k − 1 = i, if any.
    let src = |i: usize, k: usize, len: usize| -> Option<usize> {
        let p = (i + 1).checked_sub(k)?;
        (p % st == 0 && p / st < len).then_some(p / st)
    };
    let mut nt = 0;
    for ky in 0..3 {
        let Some(oy) = src(iy, ky, oh) else { continue };
        for kx in 0..3 {
            let Some(ox) = src(ix, kx, ow) else { continue };
            list[nt] = ((n * oh + oy) * ow + ox, ky * 3 + kx);
            nt += 1;
        }
    }
    nt
}

/// Calls `f(out_pixel, in_pixel, tap)` for every output pixel (flattened `n·out_h·out_w`) and
/// every in-bounds tap (`tap = ky·3 + kx`), with `in_pixel` the flattened input pixel it reads.
#[inline(always)]
pub(super) fn for_each_tap(s: &DwConv3x3, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = (s.out_h(), s.out_w());
    for n in 0..s.n {
        for oy in 0..oh {
            let iyp = oy * s.stride;
            let (ky_lo, ky_hi) = taps(iyp, s.h);
            for ox in 0..ow {
                let ixp = ox * s.stride;
                let (kx_lo, kx_hi) = taps(ixp, s.w);
                let out = (n * oh + oy) * ow + ox;
                for ky in ky_lo..ky_hi {
                    let row = (n * s.h + iyp + ky - 1) * s.w;
                    for kx in kx_lo..kx_hi {
                        f(out, row + ixp + kx - 1, ky * 3 + kx);
                    }
                }
            }
        }
    }
}

/// `y[n][oy][ox][c] = act(b[c] + Σ_taps x[n][oy·s + ky − 1][ox·s + kx − 1][c] · w[ky][kx][c])`
/// for channels `c_lo..c` (0 for the whole layer; a SIMD path passes the tail it leaves over),
/// in blocks of [`CHANNEL_BLOCK`] channels.
pub(super) fn fwd<W: Elem>(
    s: &DwConv3x3,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    act: Act,
    y: &mut [f32],
    c_lo: usize,
) {
    let c = s.c;
    let mut wt = [[0.0f32; CHANNEL_BLOCK]; 9];
    let mut bt = [0.0f32; CHANNEL_BLOCK];
    for c0 in (c_lo..c).step_by(CHANNEL_BLOCK) {
        let cb = CHANNEL_BLOCK.min(c - c0);
        for (t, wt) in wt.iter_mut().enumerate() {
            for (dst, src) in wt.iter_mut().zip(&w[t * c + c0..t * c + c0 + cb]) {
                *dst = src.to_f32();
            }
        }
        match bias {
            Some(b) => bt.iter_mut().zip(&b[c0..c0 + cb]).for_each(|(dst, src)| *dst = src.to_f32()),
            None => bt.fill(0.0),
        }
        for out in 0..s.n * s.out_h() * s.out_w() {
            y[out * c + c0..out * c + c0 + cb].copy_from_slice(&bt[..cb]);
        }
        for_each_tap(s, |out, inp, tap| {
            let acc = &mut y[out * c + c0..out * c + c0 + cb];
            let xv = &x[inp * c + c0..inp * c + c0 + cb];
            for ((a, &xv), &wv) in acc.iter_mut().zip(xv).zip(&wt[tap][..cb]) {
                *a += xv * wv;
            }
        });
        if act != Act::None {
            for out in y.chunks_exact_mut(c) {
                out[c0..c0 + cb].iter_mut().for_each(|v| *v = act.apply(*v));
            }
        }
    }
}

/// `dx[n][iy][ix][c] = Σ dy[n][oy][ox][c] · w[ky][kx][c]` over the taps that read `(iy, ix)`:
/// scatter-add into a zeroed `dx`.
pub(super) fn bwd_input(s: &DwConv3x3, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let c = s.c;
    dx.fill(0.0);
    for_each_tap(s, |out, inp, tap| {
        let acc = &mut dx[inp * c..(inp + 1) * c];
        let g = &dy[out * c..(out + 1) * c];
        for ((a, &g), &wv) in acc.iter_mut().zip(g).zip(&w[tap * c..(tap + 1) * c]) {
            *a += g * wv;
        }
    });
}

/// `dw[ky][kx][c] = Σ_{n,oy,ox} x[n][oy·s + ky − 1][ox·s + kx − 1][c] · dy[n][oy][ox][c]`
/// (padding contributes nothing), accumulated into a zeroed `dw`.
pub(super) fn bwd_weight(s: &DwConv3x3, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let c = s.c;
    dw.fill(0.0);
    for_each_tap(s, |out, inp, tap| {
        let acc = &mut dw[tap * c..(tap + 1) * c];
        let g = &dy[out * c..(out + 1) * c];
        for ((a, &g), &xv) in acc.iter_mut().zip(g).zip(&x[inp * c..(inp + 1) * c]) {
            *a += xv * g;
        }
    });
}
