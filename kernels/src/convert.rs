//! f16 ↔ f32 conversion of whole slices: `dst[i] = f16(src[i])` (round to nearest even, the same
//! bits as `half::f16::from_f32`) and `dst[i] = f32(src[i])` (exact).
//!
//! Paths: scalar (`half`), x86_64 F16C (`vcvtps2ph` / `vcvtph2ps`, 8 lanes, scalar tail) and
//! aarch64 NEON (`fcvtn` / `fcvtl`, 4 lanes, scalar tail). The NEON f16 intrinsics
//! (`vcvt_f16_f32`, `vcvt_f32_f16`) need the unstable `f16` primitive type in Rust 1.95, so the
//! NEON path issues the two instructions through stable inline `asm!` on `uint16x4_t`
//! registers. Both SIMD paths round to nearest even with the default rounding mode (MXCSR /
//! FPCR as Rust programs run) and quiet NaNs the way `half` does, so every path yields the
//! same bits for non-NaN inputs and a NaN for a NaN. On a Cortex-M4F (the `m4` module, see
//! [`crate::gemm`] for the `cfg` that selects it) the scalar f16 → f32 direction uses the FPU's
//! `vcvtb.f32.f16`.

use crate::elem::f16;
use crate::error::{check_len, Result};
use crate::isa::{Isa, IsaKind};

/// `dst[i] = f16(src[i])`, round to nearest even (overflow → ±inf, NaN stays NaN).
/// `dst.len()` must equal `src.len()`.
pub fn f32_to_f16(isa: Isa, src: &[f32], dst: &mut [f16]) -> Result<()> {
    check_len("dst", dst.len(), src.len())?;
    match isa.kind() {
        IsaKind::Scalar => scalar_f32_to_f16(src, dst),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind Avx2 or Avx512 exists only when the CPU has AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { x86::f32_to_f16(src, dst) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: an `Isa` of kind Neon exists only on aarch64 CPUs with NEON (isa.rs).
        IsaKind::Neon => unsafe { arm::f32_to_f16(src, dst) },
        // Kinds of another architecture: no `Isa` of them can exist on this target.
        _ => scalar_f32_to_f16(src, dst),
    }
    Ok(())
}

/// `dst[i] = f32(src[i])`, exact. `dst.len()` must equal `src.len()`.
pub fn f16_to_f32(isa: Isa, src: &[f16], dst: &mut [f32]) -> Result<()> {
    check_len("dst", dst.len(), src.len())?;
    match isa.kind() {
        #[cfg(not(tinykd_m4f))]
        IsaKind::Scalar => scalar_f16_to_f32(src, dst),
        #[cfg(tinykd_m4f)]
        IsaKind::Scalar => m4::f16_to_f32(src, dst),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of kind Avx2 or Avx512 exists only when the CPU has AVX2+FMA+F16C (isa.rs).
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { x86::f16_to_f32(src, dst) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: an `Isa` of kind Neon exists only on aarch64 CPUs with NEON (isa.rs).
        IsaKind::Neon => unsafe { arm::f16_to_f32(src, dst) },
        // Kinds of another architecture: no `Isa` of them can exist on this target.
        _ => scalar_f16_to_f32(src, dst),
    }
    Ok(())
}

/// The specification: `half`'s conversion element by element (`dst.len() == src.len()`).
fn scalar_f32_to_f16(src: &[f32], dst: &mut [f16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// The specification: `half`'s conversion element by element (`dst.len() == src.len()`).
fn scalar_f16_to_f32(src: &[f16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! F16C conversions, 8 lanes at a time.
    use super::{f16, scalar_f32_to_f16};
    use core::arch::x86_64::*;

    /// `dst[i] = f16(src[i])` over `min(src.len(), dst.len())` elements.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let body = n - n % 8;
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 <= n, so 8 f32 are readable at src[i..] and 8 f16 (16 bytes,
            // `f16` is a transparent u16) writable at dst[i..]; unaligned load/store.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            }
            i += 8;
        }
        scalar_f32_to_f16(&src[body..n], &mut dst[body..n]);
    }

    /// `dst[i] = f32(src[i])` over `min(src.len(), dst.len())` elements.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        // SAFETY: `dst` has at least n writable elements; the caller vouches for the CPU.
        unsafe { f16_to_f32_raw(&src[..n], dst.as_mut_ptr()) }
    }

    /// Writes `f32(src[i])` to `dst.add(i)` for every `i < src.len()` (used by GEMM packing,
    /// whose destination is an uninitialised buffer).
    ///
    /// # Safety
    /// `dst` is valid for `src.len()` f32 writes; the CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f16_to_f32_raw(src: &[f16], dst: *mut f32) {
        let n = src.len();
        let body = n - n % 8;
        let mut i = 0;
        while i < body {
            // SAFETY: i + 8 <= n: 16 bytes of f16 readable at src[i..], 8 f32 writable at
            // dst.add(i) (caller); unaligned load/store.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for (j, h) in src[body..].iter().enumerate() {
            // SAFETY: body + j < n, writable by the caller's guarantee.
            unsafe { dst.add(body + j).write(h.to_f32()) };
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod arm {
    //! NEON conversions through `fcvtn` / `fcvtl` (4 lanes), issued with inline `asm!` because
    //! the f16 intrinsics are unstable.
    use super::{f16, scalar_f32_to_f16};
    use core::arch::aarch64::*;
    use core::arch::asm;

    /// One f32 vector from 4 f16 values (`fcvtl`; exact). The one place the kernels widen f16
    /// in NEON registers (GEMM packing, panel products, the depthwise forward).
    ///
    /// # Safety
    /// The CPU must support NEON (the conversion is base ARMv8 floating point).
    #[inline(always)]
    pub(crate) unsafe fn widen4(h: uint16x4_t) -> float32x4_t {
        let v: float32x4_t;
        // SAFETY: a register-only instruction.
        unsafe {
            asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = lateout(vreg) v,
                 options(pure, nomem, nostack, preserves_flags));
        }
        v
    }

    /// Two f32 vectors from 8 f16 values: `fcvtl` (low half) and `fcvtl2` (high half).
    ///
    /// # Safety
    /// The CPU must support NEON.
    #[inline(always)]
    pub(crate) unsafe fn widen8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
        let (lo, hi): (float32x4_t, float32x4_t);
        // SAFETY: register-only instructions; `lo` is an early-clobber output (written before
        // the second instruction reads `h`).
        unsafe {
            asm!("fcvtl {lo:v}.4s, {h:v}.4h", "fcvtl2 {hi:v}.4s, {h:v}.8h", h = in(vreg) h, lo = out(vreg) lo,
                 hi = lateout(vreg) hi, options(pure, nomem, nostack, preserves_flags));
        }
        (lo, hi)
    }

    /// `dst[i] = f16(src[i])` over `min(src.len(), dst.len())` elements.
    ///
    /// # Safety
    /// The CPU must support NEON (every aarch64 CPU does).
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let body = n - n % 4;
        let mut i = 0;
        while i < body {
            // SAFETY: i + 4 <= n: 4 f32 readable at src[i..], 4 f16 (8 bytes) writable at
            // dst[i..]; `fcvtn` only reads and writes the named vector registers.
            unsafe {
                let v = vld1q_f32(src.as_ptr().add(i));
                let h: uint16x4_t;
                asm!("fcvtn {h:v}.4h, {v:v}.4s", v = in(vreg) v, h = lateout(vreg) h,
                     options(pure, nomem, nostack, preserves_flags));
                vst1_u16(dst.as_mut_ptr().add(i) as *mut u16, h);
            }
            i += 4;
        }
        scalar_f32_to_f16(&src[body..n], &mut dst[body..n]);
    }

    /// `dst[i] = f32(src[i])` over `min(src.len(), dst.len())` elements.
    ///
    /// # Safety
    /// The CPU must support NEON (every aarch64 CPU does).
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        // SAFETY: `dst` has at least n writable elements; the caller vouches for the CPU.
        unsafe { f16_to_f32_raw(&src[..n], dst.as_mut_ptr()) }
    }

    /// Writes `f32(src[i])` to `dst.add(i)` for every `i < src.len()` (used by GEMM packing,
    /// whose destination is an uninitialised buffer).
    ///
    /// # Safety
    /// `dst` is valid for `src.len()` f32 writes; the CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn f16_to_f32_raw(src: &[f16], dst: *mut f32) {
        let n = src.len();
        let body = n - n % 4;
        let mut i = 0;
        while i < body {
            // SAFETY: i + 4 <= n: 8 bytes of f16 readable at src[i..], 4 f32 writable at
            // dst.add(i) (caller).
            unsafe { vst1q_f32(dst.add(i), widen4(vld1_u16(src.as_ptr().add(i) as *const u16))) };
            i += 4;
        }
        for (j, h) in src[body..].iter().enumerate() {
            // SAFETY: body + j < n, writable by the caller's guarantee.
            unsafe { dst.add(body + j).write(h.to_f32()) };
        }
    }
}

#[cfg(tinykd_m4f)]
pub(crate) mod m4 {
    //! Cortex-M4F (FPv4-SP) widening with `vcvtb.f32.f16`, one instruction per value instead of
    //! `half`'s bit manipulation; exact, and the same bits as `half` for every non-NaN input
    //! (a NaN stays a NaN, quieted, with its payload: FPSCR.DN is 0 out of reset).
    use super::f16;
    use crate::elem::Elem;
    use core::any::TypeId;
    use core::arch::asm;

    /// `f32(h)` for the binary16 bit pattern `h`.
    #[inline(always)]
    pub(crate) fn widen1(h: u16) -> f32 {
        let v: u32;
        // SAFETY: converts through the scratch register s0 (declared clobbered); touches no
        // memory. (Stable Rust cannot allocate `sreg` operands on this single-precision FPU,
        // whose `vfp2` feature is not enabled, so the value goes through core registers.)
        unsafe {
            asm!("vmov s0, {h}", "vcvtb.f32.f16 s0, s0", "vmov {v}, s0", h = in(reg) h as u32, v = out(reg) v,
                 out("s0") _, options(pure, nomem, nostack, preserves_flags));
        }
        f32::from_bits(v)
    }

    /// `dst[i] = f32(src[i])` over `min(src.len(), dst.len())` elements of either storage
    /// type: 8 at a time with one `vldmia`, one `vstmia` (and 8 `vcvtb`/`vcvtt` for f16, when
    /// the source is 4-byte aligned), the rest one by one.
    pub(crate) fn widen<E: Elem>(src: &[E], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let blocks = n / 8;
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        if TypeId::of::<E>() == TypeId::of::<f16>() {
            let h = sp as *const u16;
            let done = if h as usize % 4 == 0 && blocks > 0 {
                // SAFETY: `E` is f16 (a transparent u16); 8·blocks ≤ n elements are readable
                // from the 4-aligned `h` and writable at `dp`.
                unsafe { widen_blocks_f16(h, dp, blocks) };
                8 * blocks
            } else {
                0
            };
            for i in done..n {
                // SAFETY: i < n, inside both slices; `E` is f16.
                unsafe { *dp.add(i) = widen1(*h.add(i)) };
            }
        } else {
            if blocks > 0 {
                // SAFETY: `E` is f32 (the only other `Elem`); 8·blocks ≤ n elements are readable
                // at `sp` and writable at `dp`.
                unsafe { copy_blocks_f32(sp as *const f32, dp, blocks) };
            }
            for (d, s) in dst[8 * blocks..n].iter_mut().zip(&src[8 * blocks..n]) {
                *d = s.to_f32();
            }
        }
    }

    /// `dst[r·8 + i] = f32(src[r·stride + i])` for `r < rows`, `i < 8`: rows of 8 values
    /// `stride` elements apart (e.g. one channel group of each depthwise tap), one `vldmia` and
    /// one `vstmia` per row (plus 8 conversions for f16 when the rows are 4-byte aligned).
    ///
    /// # Safety
    /// Each row `src.add(r·stride)` is readable for 8 elements and `dst` writable for `8·rows`
    /// f32; `rows ≥ 1`.
    pub(crate) unsafe fn widen_rows8<E: Elem>(src: *const E, stride: usize, rows: usize, dst: *mut f32) {
        let stride_bytes = stride * core::mem::size_of::<E>();
        if TypeId::of::<E>() == TypeId::of::<f16>() {
            if src as usize % 4 == 0 && stride_bytes % 4 == 0 {
                // SAFETY: `E` is f16; the rows are 4-byte aligned and in bounds (caller).
                unsafe {
                    asm!(
                        "2:",
                        "vldmia {s}, {{s4-s7}}",
                        "add {s}, {s}, {st}",
                        "vcvtb.f32.f16 s8, s4", "vcvtt.f32.f16 s9, s4", "vcvtb.f32.f16 s10, s5", "vcvtt.f32.f16 s11, s5",
                        "vcvtb.f32.f16 s12, s6", "vcvtt.f32.f16 s13, s6", "vcvtb.f32.f16 s14, s7", "vcvtt.f32.f16 s15, s7",
                        "vstmia {d}!, {{s8-s15}}",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        s = inout(reg) src => _,
                        st = in(reg) stride_bytes,
                        d = inout(reg) dst => _,
                        n = inout(reg) rows => _,
                        out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s8") _, out("s9") _, out("s10") _,
                        out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
                        options(nostack),
                    );
                }
            } else {
                let h = src as *const u16;
                for r in 0..rows {
                    for i in 0..8 {
                        // SAFETY: row r, element i < 8: in bounds (caller); `E` is f16.
                        unsafe { *dst.add(r * 8 + i) = widen1(*h.add(r * stride + i)) };
                    }
                }
            }
        } else {
            // SAFETY: `E` is f32 (the only other `Elem`); the rows are in bounds (caller).
            unsafe {
                asm!(
                    "2:",
                    "vldmia {s}, {{s0-s7}}",
                    "add {s}, {s}, {st}",
                    "vstmia {d}!, {{s0-s7}}",
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    s = inout(reg) src => _,
                    st = in(reg) stride_bytes,
                    d = inout(reg) dst => _,
                    n = inout(reg) rows => _,
                    out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
                    options(nostack),
                );
            }
        }
    }

    /// Widens `8·blocks` f16 from `src` to `dst`.
    ///
    /// # Safety
    /// `src` is 4-byte aligned and readable for `8·blocks` u16, `dst` writable for as many f32;
    /// `blocks ≥ 1`.
    unsafe fn widen_blocks_f16(src: *const u16, dst: *mut f32, blocks: usize) {
        // SAFETY: reads and writes exactly the ranges the caller vouches for.
        unsafe {
            asm!(
                "2:",
                "vldmia {s}!, {{s4-s7}}",
                "vcvtb.f32.f16 s8, s4", "vcvtt.f32.f16 s9, s4", "vcvtb.f32.f16 s10, s5", "vcvtt.f32.f16 s11, s5",
                "vcvtb.f32.f16 s12, s6", "vcvtt.f32.f16 s13, s6", "vcvtb.f32.f16 s14, s7", "vcvtt.f32.f16 s15, s7",
                "vstmia {d}!, {{s8-s15}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                s = inout(reg) src => _,
                d = inout(reg) dst => _,
                n = inout(reg) blocks => _,
                out("s4") _, out("s5") _, out("s6") _, out("s7") _, out("s8") _, out("s9") _, out("s10") _,
                out("s11") _, out("s12") _, out("s13") _, out("s14") _, out("s15") _,
                options(nostack),
            );
        }
    }

    /// Copies `8·blocks` f32 from `src` to `dst` (no library call for short runs).
    ///
    /// # Safety
    /// `src` is readable and `dst` writable for `8·blocks` f32; `blocks ≥ 1`.
    unsafe fn copy_blocks_f32(src: *const f32, dst: *mut f32, blocks: usize) {
        // SAFETY: reads and writes exactly the ranges the caller vouches for.
        unsafe {
            asm!(
                "2:",
                "vldmia {s}!, {{s0-s7}}",
                "vstmia {d}!, {{s0-s7}}",
                "subs {n}, {n}, #1",
                "bne 2b",
                s = inout(reg) src => _,
                d = inout(reg) dst => _,
                n = inout(reg) blocks => _,
                out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _, out("s7") _,
                options(nostack),
            );
        }
    }

    /// `dst[i] = f32(src[i])` over `min(src.len(), dst.len())` elements.
    pub(crate) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        widen(src, dst);
    }
}
