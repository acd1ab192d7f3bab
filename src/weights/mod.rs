//! Weight files (`.tkd`): a little-endian, checksummed container of named f32 or f16 tensors
//! plus the [`ModelConfig`] they belong to. The byte layout is specified in `docs/FORMAT.md`.
//!
//! [`WeightFile::parse`] is `no_std` and zero-copy: it validates the whole file (lengths,
//! CRC-32, config, names, dims, offsets, alignment) and then hands out tensors as slices that
//! borrow the input bytes, so weights can live in flash:
//!
//! ```ignore
//! use tinykd::weights::{Aligned, WeightFile};
//! static W: &Aligned<[u8]> = &Aligned(*include_bytes!("student.tkd"));
//! let file = WeightFile::parse(&W.0)?;
//! ```
//!
//! The input must be aligned to the dtype's size (4 for f32, 2 for f16): [`Aligned`] aligns
//! embedded bytes, and on the host `AlignedBuf` (std) reads a file into aligned memory.
//! Writing (`to_bytes`, `write_file`) needs the `std` feature.

use core::fmt;

use tinykd_kernels::{f16, DType};

use crate::config::ModelConfig;

mod error;
mod layout;
mod parse;

#[cfg(feature = "std")]
mod buf;
#[cfg(feature = "std")]
mod write;

pub use error::WeightError;
pub use parse::Tensors;

#[cfg(feature = "std")]
pub use buf::AlignedBuf;
#[cfg(feature = "std")]
pub use write::{to_bytes, write_file, TensorOut};

/// The four bytes every weight file starts with.
pub const MAGIC: [u8; 4] = *b"TKDW";
/// The format version this build reads and writes.
pub const VERSION: u16 = 1;
/// Bytes in the fixed header (the tensor table follows it).
pub const HEADER_LEN: usize = 40;
/// Longest tensor name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 63;
/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 4;
/// Every tensor's data starts at a multiple of this many bytes from the start of the file.
pub const DATA_ALIGN: usize = 16;

/// What the tensors of a file are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Raw trainable parameters plus batch-norm running statistics: what the trainer exports
    /// and loads.
    Params,
    /// Batch norm folded into the convolutions: what the `no_std` engine runs.
    Inference,
}

impl FileKind {
    /// Lower-case name: `params` or `inference`.
    pub const fn name(self) -> &'static str {
        match self {
            FileKind::Params => "params",
            FileKind::Inference => "inference",
        }
    }
}

/// A tensor's shape: up to [`MAX_RANK`] dimensions (outermost first).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Dims {
    rank: u8,
    /// Entries past `rank` are always zero, so derived equality compares shapes.
    dims: [u32; MAX_RANK],
}

impl Dims {
    /// The shape `dims`, or `None` if it has more than [`MAX_RANK`] dimensions.
    pub fn new(dims: &[u32]) -> Option<Dims> {
        if dims.len() > MAX_RANK {
            return None;
        }
        let mut d = [0u32; MAX_RANK];
        for (slot, &v) in d.iter_mut().zip(dims) {
            *slot = v;
        }
        Some(Dims { rank: dims.len() as u8, dims: d })
    }

    /// The dimensions, outermost first.
    pub fn as_slice(&self) -> &[u32] {
        self.dims.get(..self.rank as usize).unwrap_or(&[])
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    /// Number of elements (the product of the dims; 1 for rank 0), saturating at `usize::MAX`.
    pub fn numel(&self) -> usize {
        self.as_slice().iter().fold(1usize, |n, &d| n.saturating_mul(d as usize))
    }
}

impl fmt::Display for Dims {
    /// Formats as `[3, 3, 3, 32]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// A tensor's elements, borrowed from the file bytes in the file's dtype.
#[derive(Clone, Copy, Debug)]
pub enum TensorData<'a> {
    /// IEEE binary32 elements.
    F32(&'a [f32]),
    /// IEEE binary16 elements.
    F16(&'a [f16]),
}

impl TensorData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(s) => s.len(),
            TensorData::F16(s) => s.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
        }
    }

    /// Element `i` widened to f32 (exact), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<f32> {
        match self {
            TensorData::F32(s) => s.get(i).copied(),
            TensorData::F16(s) => s.get(i).map(|h| h.to_f32()),
        }
    }
}

/// One tensor of a [`WeightFile`]: its name, shape and data, all borrowed from the file bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// The tensor's name (1 to [`MAX_NAME_LEN`] bytes of UTF-8, unique within the file).
    pub name: &'a str,
    /// Its shape; `dims.numel() == data.len()`.
    pub dims: Dims,
    /// Its elements, row-major over `dims`.
    pub data: TensorData<'a>,
}

/// Bytes aligned to 16, so `include_bytes!` data can be parsed in place (f32 needs 4, f16 2;
/// 16 also suits SIMD loads of the tensor data, which the format aligns to 16 within the file):
///
/// ```ignore
/// static W: &Aligned<[u8]> = &Aligned(*include_bytes!("m.tkd"));
/// let file = tinykd::weights::WeightFile::parse(&W.0)?;
/// ```
///
/// `&Aligned<[u8; N]>` coerces to `&Aligned<[u8]>`, so the static's type need not name `N`.
#[repr(C, align(16))]
pub struct Aligned<B: ?Sized>(pub B);

/// A validated weight file: a view over the bytes passed to [`WeightFile::parse`].
#[derive(Clone, Copy)]
pub struct WeightFile<'a> {
    bytes: &'a [u8],
    config: ModelConfig,
    kind: FileKind,
    dtype: DType,
    count: usize,
}

impl<'a> WeightFile<'a> {
    /// The model configuration the weights belong to.
    pub fn config(&self) -> ModelConfig {
        self.config
    }

    /// Raw parameters or BN-folded inference weights.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// The storage dtype of every tensor in the file.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The file's bytes (exactly the slice that was parsed).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Tensor `i` in file order (walks the table: O(i)), or `None` if `i >= len()`.
    pub fn tensor(&self, i: usize) -> Option<TensorRef<'a>> {
        self.iter().nth(i)
    }

    /// The tensors in file order.
    pub fn iter(&self) -> Tensors<'a> {
        Tensors::new(self.bytes, self.dtype, self.count)
    }

    /// The tensor named `name` (a linear scan), or `None`.
    pub fn get(&self, name: &str) -> Option<TensorRef<'a>> {
        self.iter().find(|t| t.name == name)
    }
}

impl fmt::Debug for WeightFile<'_> {
    /// The header fields, not the (possibly megabytes of) bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightFile")
            .field("config", &self.config)
            .field("kind", &self.kind)
            .field("dtype", &self.dtype)
            .field("tensors", &self.count)
            .field("file_len", &self.bytes.len())
            .finish()
    }
}

impl<'a> IntoIterator for &WeightFile<'a> {
    type Item = TensorRef<'a>;
    type IntoIter = Tensors<'a>;
    fn into_iter(self) -> Tensors<'a> {
        self.iter()
    }
}
