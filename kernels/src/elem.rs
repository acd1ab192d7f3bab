//! Storage element types. Compute is always f32; weights (and optionally activations) may be
//! *stored* as IEEE binary16 and are widened while packing, never inside an inner loop.

pub use half::f16;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// The storage dtypes a kernel accepts for weights: `f32` and `f16`.
pub trait Elem: Copy + Default + PartialEq + core::fmt::Debug + sealed::Sealed + 'static {
    /// The dtype tag (used by weight files and benchmark names).
    const DTYPE: DType;
    /// Widen to f32 (exact for both types).
    fn to_f32(self) -> f32;
    /// Narrow from f32 (round to nearest even for f16).
    fn from_f32(v: f32) -> Self;
}

/// A storage dtype tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
    /// Lower-case name: `f32` or `f16`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// `Some(x as &[T])` when `E` is `T` (the same type: no conversion), else `None`.
#[inline(always)]
fn same<E: Elem, T: Elem>(x: &[E]) -> Option<&[T]> {
    if core::any::TypeId::of::<E>() == core::any::TypeId::of::<T>() {
        // SAFETY: `E` is `T` itself, so the pointer, length and lifetime are unchanged.
        Some(unsafe { core::slice::from_raw_parts(x.as_ptr() as *const T, x.len()) })
    } else {
        None
    }
}

/// `Some(x as &[f16])` when `E` is `f16`.
#[inline(always)]
pub(crate) fn as_f16<E: Elem>(x: &[E]) -> Option<&[f16]> {
    same(x)
}

/// `Some(x as &[f32])` when `E` is `f32`.
#[inline(always)]
pub(crate) fn as_f32<E: Elem>(x: &[E]) -> Option<&[f32]> {
    same(x)
}
