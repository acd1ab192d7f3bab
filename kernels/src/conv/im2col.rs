//! im2col packing and its adjoint, col2im scatter-add, over a tile of output rows.
//!
//! Row `r` of a tile is output pixel `row0 + r` of the flattened `n·out_h·out_w` grid (NHWC
//! order). Its `K = kh·kw·c_in` columns are ordered `(ky, kx, ci)`, matching the rows of the
//! HWIO weight `w[kh][kw][c_in][c_out]`, so `y_tile = col · w` is a plain row-major GEMM.
//!
//! For one output pixel and one kernel row `ky`, the in-bounds taps `kx_lo..kx_hi` read
//! consecutive input pixels, i.e. one contiguous run of `(kx_hi − kx_lo)·c_in` floats of `x`;
//! padding is the zero runs either side. So both directions are slice copies / adds with no
//! per-element bounds branches.

use crate::shape::Conv2d;

/// The receptive field of one output pixel, clipped to the input.
struct Window {
    /// Offset of image `n` (`x[n][0][0][0]`) in the NHWC input.
    img: usize,
    /// Top-left input row of the field (padded coordinates: input row + `pad`).
    iyp: usize,
    /// Top-left input column of the field (padded coordinates).
    ixp: usize,
    /// First in-bounds kernel row.
    ky_lo: usize,
    /// One past the last in-bounds kernel row.
    ky_hi: usize,
    /// First in-bounds kernel column.
    kx_lo: usize,
    /// One past the last in-bounds kernel column.
    kx_hi: usize,
}

impl Window {
    /// The window of flattened output pixel `g` (`g < n·out_h·out_w`).
    #[inline]
    fn of(s: &Conv2d, g: usize) -> Window {
        Cursor::of(s, g).window(s)
    }

    /// Offset in `x` of input pixel `(ky, kx_lo)` of this window (`ky` in bounds).
    #[inline]
    fn src(&self, s: &Conv2d, ky: usize) -> usize {
        let iy = self.iyp + ky - s.pad;
        let ix = self.ixp + self.kx_lo - s.pad;
        self.img + (iy * s.w + ix) * s.c_in
    }
}

/// An output pixel as (image, row, column), stepped without divisions (three integer
/// divisions per row of a 3-channel stem cost more than copying its 27 values).
struct Cursor {
    n: usize,
    oy: usize,
    ox: usize,
}

impl Cursor {
    /// Flattened output pixel `g`.
    fn of(s: &Conv2d, g: usize) -> Cursor {
        let (oh, ow) = (s.out_h(), s.out_w());
        let rem = g % (oh * ow);
        Cursor { n: g / (oh * ow), oy: rem / ow, ox: rem % ow }
    }

    /// Moves `by` pixels on: one to the right (wrapping rows and images), one image on for
    /// `by` = pixels per image, else through the flattened index.
    #[inline]
    fn advance(&mut self, s: &Conv2d, by: usize) {
        let (oh, ow) = (s.out_h(), s.out_w());
        if by == oh * ow {
            self.n += 1;
        } else if by == 1 {
            self.ox += 1;
            if self.ox == ow {
                self.ox = 0;
                self.oy += 1;
                if self.oy == oh {
                    self.oy = 0;
                    self.n += 1;
                }
            }
        } else {
            *self = Cursor::of(s, (self.n * oh + self.oy) * ow + self.ox + by);
        }
    }

    /// The receptive field of this pixel.
    #[inline]
    fn window(&self, s: &Conv2d) -> Window {
        let (iyp, ixp) = (self.oy * s.stride, self.ox * s.stride);
        let (ky_lo, ky_hi) = clip(iyp, s.pad, s.h, s.kh);
        let (kx_lo, kx_hi) = clip(ixp, s.pad, s.w, s.kw);
        Window { img: self.n * s.h * s.w * s.c_in, iyp, ixp, ky_lo, ky_hi, kx_lo, kx_hi }
    }
}

/// Kernel taps `lo..hi` (of `k`) whose padded position `start + t` lies in
/// `pad..pad + len`, i.e. inside the unpadded input.
#[inline]
fn clip(start: usize, pad: usize, len: usize, k: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(start).min(k);
    let hi = (pad + len).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

/// Packs `col.len() / K` rows starting at output pixel `row0`: `col[r][(ky·kw + kx)·c_in + ci]
/// = x[n][oy·stride + ky − pad][ox·stride + kx − pad][ci]`, zero where that is padding.
/// `col.len()` is a multiple of `K`; lengths are checked by the caller.
pub(super) fn pack(s: &Conv2d, x: &[f32], row0: usize, col: &mut [f32]) {
    pack_strided(s, x, row0, 1, col);
}

/// [`pack`] of the output pixels `row0, row0 + stride, row0 + 2·stride, …` (with `stride` =
/// pixels per image: one output position across images).
pub(super) fn pack_strided(s: &Conv2d, x: &[f32], row0: usize, stride: usize, col: &mut [f32]) {
    let c_in = s.c_in;
    let seg = s.kw * c_in;
    let mut at = Cursor::of(s, row0);
    for (r, row) in col.chunks_exact_mut(s.k()).enumerate() {
        if r > 0 {
            at.advance(s, stride);
        }
        let win = at.window(s);
        let (lo, hi) = (win.kx_lo * c_in, win.kx_hi * c_in);
        zero_run(&mut row[..win.ky_lo * seg]);
        zero_run(&mut row[win.ky_hi * seg..]);
        for ky in win.ky_lo..win.ky_hi {
            let dst = &mut row[ky * seg..(ky + 1) * seg];
            let src = win.src(s, ky);
            zero_run(&mut dst[..lo]);
            copy_run(&mut dst[lo..hi], &x[src..src + (hi - lo)]);
            zero_run(&mut dst[hi..]);
        }
    }
}

/// `dst.copy_from_slice(src)` (equal lengths) in fixed-size moves: a stem conv copies runs of
/// 3–9 floats, where a `memcpy` call per run cost more than the GEMM after it.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    put_run(&mut dst[..n], |at, d| d.copy_from_slice(&src[at..at + d.len()]));
}

/// `dst.fill(0.0)` in fixed-size stores (see [`copy_run`]).
#[inline(always)]
fn zero_run(dst: &mut [f32]) {
    put_run(dst, |_, d| d.fill(0.0));
}

/// Writes `dst` as pieces of 8, 4, 2 or 1 values, each by `put(offset, piece)` with a length
/// known at compile time (the last piece of 8, 4 or 2 overlaps the one before).
#[inline(always)]
fn put_run(dst: &mut [f32], mut put: impl FnMut(usize, &mut [f32])) {
    let n = dst.len();
    let mut piece = |at: usize, len: usize| put(at, &mut dst[at..at + len]);
    if n >= 8 {
        let mut i = 0;
        while i + 8 <= n {
            piece(i, 8);
            i += 8;
        }
        if i < n {
            piece(n - 8, 8);
        }
    } else if n >= 4 {
        piece(0, 4);
        piece(n - 4, 4);
    } else if n >= 2 {
        piece(0, 2);
        piece(n - 2, 2);
    } else if n == 1 {
        piece(0, 1);
    }
}

/// True when kernel tap `(ky, kx)` reads an in-bounds input pixel for at least one of the
/// `rows` output pixels from `row0` (otherwise its im2col columns are all padding).
pub(super) fn tap_used(s: &Conv2d, row0: usize, rows: usize, ky: usize, kx: usize) -> bool {
    (row0..row0 + rows).any(|g| {
        let win = Window::of(s, g);
        (win.ky_lo..win.ky_hi).contains(&ky) && (win.kx_lo..win.kx_hi).contains(&kx)
    })
}

/// The adjoint of [`pack`]: adds every in-bounds column of `col` (rows from output pixel
/// `row0`) into the input position it was read from; padding columns are dropped.
pub(super) fn scatter_add(s: &Conv2d, col: &[f32], row0: usize, dx: &mut [f32]) {
    let c_in = s.c_in;
    let seg = s.kw * c_in;
    for (r, row) in col.chunks_exact(s.k()).enumerate() {
        let win = Window::of(s, row0 + r);
        let (lo, hi) = (win.kx_lo * c_in, win.kx_hi * c_in);
        for ky in win.ky_lo..win.ky_hi {
            let src = &row[ky * seg + lo..ky * seg + hi];
            let at = win.src(s, ky);
            for (d, &v) in dx[at..at + (hi - lo)].iter_mut().zip(src) {
                *d += v;
            }
        }
    }
}
