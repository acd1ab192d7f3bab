//! Heap bytes aligned to 16, so a weight file read on the host can be parsed in place
//! (`std::fs::read` gives a `Vec<u8>`, whose address is only guaranteed to be 1-aligned).

use std::io;
use std::ops::Deref;
use std::path::Path;
use std::vec::Vec;

/// One 16-byte, 16-aligned unit of storage.
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Block([u8; 16]);

/// An owned byte buffer whose first byte is 16-aligned; derefs to `[u8]`.
///
/// ```ignore
/// let buf = AlignedBuf::read("student.tkd".as_ref())?;
/// let file = WeightFile::parse(&buf)?;
/// ```
#[derive(Clone)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    /// A 16-aligned copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut blocks = vec![Block::default(); bytes.len().div_ceil(16)];
        for (block, chunk) in blocks.iter_mut().zip(bytes.chunks(16)) {
            if let Some(dst) = block.0.get_mut(..chunk.len()) {
                dst.copy_from_slice(chunk);
            }
        }
        AlignedBuf { blocks, len: bytes.len() }
    }

    /// Reads the file at `path` into aligned memory.
    pub fn read(path: &Path) -> io::Result<Self> {
        Ok(Self::from_bytes(&crate::host::read::read_file(path)?))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `blocks` is a contiguous allocation of `blocks.len() * 16` initialised bytes
        // (`Block` is `repr(C)` over `[u8; 16]`, no padding) and `len <= blocks.len() * 16`
        // by construction; the result borrows `self`, so the memory outlives it unmodified.
        unsafe { core::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}
