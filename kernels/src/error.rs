//! The one error type of the kernel crate: every public kernel checks its slice lengths and
//! shape once, up front, and returns one of these instead of panicking.

use core::fmt;

/// Why a kernel refused to run. Nothing has been written to any output when it is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// A slice argument has the wrong length (`scratch` arguments may be longer than needed).
    Len {
        /// The argument's name as written in the kernel signature.
        arg: &'static str,
        /// The length the shape requires.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// The shape itself is invalid (a zero dimension, stride 0, a kernel larger than the
    /// padded input, a label out of range, ...).
    Shape(&'static str),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Len { arg, expected, got } => {
                write!(f, "argument `{arg}` has length {got}, the shape needs {expected}")
            }
            KernelError::Shape(why) => write!(f, "invalid shape: {why}"),
        }
    }
}

#[cfg(feature = "std")]
extern crate std;
#[cfg(feature = "std")]
impl std::error::Error for KernelError {}

/// `Result` with [`KernelError`].
pub type Result<T> = core::result::Result<T, KernelError>;

/// Checks that `got == expected` for an input or output slice.
#[inline]
pub(crate) fn check_len(arg: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Len { arg, expected, got })
    }
}

/// Checks that a scratch slice holds at least `expected` elements.
#[inline]
pub(crate) fn check_scratch(arg: &'static str, got: usize, expected: usize) -> Result<()> {
    if got >= expected {
        Ok(())
    } else {
        Err(KernelError::Len { arg, expected, got })
    }
}

/// Returns `Shape(why)` unless `ok`.
#[inline]
pub(crate) const fn ensure(ok: bool, why: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(KernelError::Shape(why))
    }
}
