//! The `no_std`, zero-copy reader: [`WeightFile::parse`] validates every byte that matters,
//! then [`Tensors`] decodes table entries into slices of the input on demand.
//!
//! No input can make this code panic: every read goes through `get` or checked arithmetic.

use core::mem::{align_of, size_of};

use tinykd_kernels::{f16, DType};

use super::layout::{self, at};
use super::{Dims, TensorData, TensorRef, WeightError, WeightFile, HEADER_LEN, MAGIC, MAX_NAME_LEN, MAX_RANK, VERSION};
use crate::config::ModelConfig;

impl<'a> WeightFile<'a> {
    /// Validates `bytes` as a complete weight file and returns a view over it.
    ///
    /// Checked, in order: little-endian target; magic; version; header size; length (the
    /// slice must be exactly the file length recorded in the header); CRC-32; reserved bytes;
    /// config codes and values; kind and dtype codes; the slice's address is aligned for the
    /// dtype (else [`WeightError::Misaligned`]); then every table entry — name length, UTF-8,
    /// uniqueness, rank, dims product equal to the element count — and every tensor's data —
    /// offset a multiple of 16, at or after the end of the table and of the previous tensor,
    /// inside the file — and finally that the data ends exactly at the end of the file.
    pub fn parse(bytes: &'a [u8]) -> Result<WeightFile<'a>, WeightError> {
        Self::validate(bytes, Crc::Check)
    }

    /// [`WeightFile::parse`] **without the CRC-32 check**: every other check runs, in the same
    /// order, so the result is just as safe to use — every tensor slice lies inside `bytes`,
    /// is aligned and has the element count of its dims, and no later read can panic. What is
    /// given up is only the detection of corrupted *values* (a flipped bit in a weight, or in a
    /// header field that still passes the structural checks): such a file parses and gives
    /// wrong numbers instead of [`WeightError::Checksum`].
    ///
    /// Meant for a file that is part of the firmware image in flash (`include_bytes!`), whose
    /// integrity the toolchain already ensures: `mcu_assets`/the host wrote it with its CRC and
    /// read it back, and the flasher verifies the programmed image. There the CRC pass is the
    /// bulk of start-up (one table lookup per byte: ~5.2 instructions per byte on a Cortex-M4,
    /// 4.46 M instructions for the 854 KB f32 file of the 0.25 MobileNetV1 student, 2.30 M for
    /// its 428 KB f16 file, measured in QEMU by `examples/mcu/check.sh`), while the structural
    /// checks and binding the engine together cost 0.36 M. Use [`WeightFile::parse`] for
    /// anything read from storage or received over a link, or check the CRC once at a time
    /// that suits (e.g. in the background after boot) by parsing again.
    pub fn parse_unchecked_crc(bytes: &'a [u8]) -> Result<WeightFile<'a>, WeightError> {
        Self::validate(bytes, Crc::Skip)
    }

    /// The checks of [`WeightFile::parse`], with or without the CRC.
    fn validate(bytes: &'a [u8], crc: Crc) -> Result<WeightFile<'a>, WeightError> {
        if cfg!(target_endian = "big") {
            return Err(WeightError::BigEndian);
        }
        let found = bytes.len() as u64;

        // Header fields that can be judged on a prefix come first, so a truncated file of the
        // wrong kind or version says so rather than "truncated".
        let n = bytes.len().min(MAGIC.len());
        if bytes.get(at::MAGIC..at::MAGIC + n) != MAGIC.get(..n) {
            return Err(WeightError::BadMagic);
        }
        if let Some(v) = layout::u16_at(bytes, at::VERSION) {
            if v != VERSION {
                return Err(WeightError::UnsupportedVersion { found: v });
            }
        }
        if let Some(h) = layout::u16_at(bytes, at::HEADER_SIZE) {
            if h as usize != HEADER_LEN {
                return Err(WeightError::BadHeaderSize { found: h });
            }
        }
        let header_len = HEADER_LEN as u64;
        let file_len = match layout::u64_at(bytes, at::FILE_LEN) {
            Some(len) if bytes.len() >= HEADER_LEN => len,
            Some(len) => return Err(WeightError::Truncated { expected: len.max(header_len), found }),
            None => return Err(WeightError::Truncated { expected: header_len, found }),
        };
        if found < file_len {
            return Err(WeightError::Truncated { expected: file_len, found });
        }
        if found > file_len {
            return Err(WeightError::TrailingBytes { expected: file_len, found });
        }

        let header = |pos| layout::u32_at(bytes, pos).unwrap_or(0);
        if crc == Crc::Check {
            let stored = header(at::CRC);
            let computed = layout::file_crc(bytes).unwrap_or(!stored);
            if stored != computed {
                return Err(WeightError::Checksum { stored, computed });
            }
        }

        if layout::u16_at(bytes, at::RESERVED) != Some(0) {
            return Err(WeightError::ReservedNotZero);
        }
        let byte = |pos: usize| bytes.get(pos).copied().unwrap_or(u8::MAX);
        let half = |pos| layout::u16_at(bytes, pos).unwrap_or(0);
        let config = ModelConfig {
            arch: layout::arch_from(byte(at::ARCH))?,
            stem: layout::stem_from(byte(at::STEM))?,
            scale_permille: half(at::SCALE_PERMILLE),
            classes: half(at::CLASSES),
            in_h: half(at::IN_H),
            in_w: half(at::IN_W),
            in_c: half(at::IN_C),
        };
        layout::check_config(&config)?;
        let kind = layout::kind_from(byte(at::KIND))?;
        let dtype = layout::dtype_from(byte(at::DTYPE))?;

        let required = elem_align(dtype);
        let offset = bytes.as_ptr() as usize % required;
        if offset != 0 {
            return Err(WeightError::Misaligned { required, offset });
        }

        let count = usize::try_from(header(at::TENSOR_COUNT)).map_err(|_| WeightError::TooManyTensors)?;
        check_table(bytes, dtype, count)?;
        Ok(WeightFile { bytes, config, kind, dtype, count })
    }
}

/// Whether [`WeightFile::validate`] checks the CRC-32.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crc {
    Check,
    Skip,
}

/// The alignment slices of `dtype` need.
fn elem_align(dtype: DType) -> usize {
    match dtype {
        DType::F32 => align_of::<f32>(),
        DType::F16 => align_of::<f16>(),
    }
}

/// Validates the tensor table and the data placement of a file whose header is valid.
fn check_table(bytes: &[u8], dtype: DType, count: usize) -> Result<(), WeightError> {
    // Pass 1: the entries themselves; finds where the table ends.
    let mut pos = HEADER_LEN;
    for i in 0..count {
        let index = index_u32(i);
        let (entry, next) = read_entry(bytes, pos, index)?;
        if core::str::from_utf8(entry.name).is_err() {
            return Err(WeightError::NameUtf8 { index });
        }
        let mut earlier = HEADER_LEN;
        for j in 0..i {
            let (other, after) = read_entry(bytes, earlier, index_u32(j))?;
            if other.name == entry.name {
                return Err(WeightError::DuplicateName { index, first: index_u32(j) });
            }
            earlier = after;
        }
        let dims_product = entry
            .dims
            .as_slice()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or(WeightError::TooLarge { index })?;
        if dims_product != entry.count {
            return Err(WeightError::CountMismatch { index, dims_product, count: entry.count });
        }
        pos = next;
    }

    // Pass 2: where the data lives.
    let file_len = bytes.len() as u64;
    let elem_size = dtype.size() as u64;
    let mut min = pos as u64;
    let mut pos = HEADER_LEN;
    for i in 0..count {
        let index = index_u32(i);
        let (entry, next) = read_entry(bytes, pos, index)?;
        let offset = entry.offset;
        if offset % super::DATA_ALIGN as u64 != 0 {
            return Err(WeightError::OffsetUnaligned { index, offset });
        }
        if offset < min {
            return Err(WeightError::Overlap { index, offset, min });
        }
        let end = entry
            .count
            .checked_mul(elem_size)
            .and_then(|n| n.checked_add(offset))
            .ok_or(WeightError::TooLarge { index })?;
        if end > file_len {
            return Err(WeightError::OutOfBounds { index, end, file_len });
        }
        min = end;
        pos = next;
    }
    if min != file_len {
        return Err(WeightError::UnusedTail { data_end: min, file_len });
    }
    Ok(())
}

/// A tensor index as stored in errors (`count` came from a `u32`, so this never saturates
/// for a valid index).
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// One decoded tensor-table entry, before its name and data are checked.
struct RawEntry<'a> {
    name: &'a [u8],
    dims: Dims,
    offset: u64,
    count: u64,
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes the table entry at `pos`; returns it and the position of the next entry.
/// Layout: `u8 name_len, name, u8 rank, u32 × rank dims, u64 offset, u64 count`.
fn read_entry(bytes: &[u8], pos: usize, index: u32) -> Result<(RawEntry<'_>, usize), WeightError> {
    let overrun = WeightError::TableOverrun { index };
    let mut c = Cursor { bytes, pos };
    let name_len = c.u8().ok_or(overrun)? as usize;
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(WeightError::NameLength { index, len: name_len });
    }
    let name = c.take(name_len).ok_or(overrun)?;
    let rank = c.u8().ok_or(overrun)? as usize;
    if rank > MAX_RANK {
        return Err(WeightError::Rank { index, rank });
    }
    let mut d = [0u32; MAX_RANK];
    for slot in d.iter_mut().take(rank) {
        *slot = c.u32().ok_or(overrun)?;
    }
    let dims = Dims::new(d.get(..rank).unwrap_or(&[])).ok_or(WeightError::Rank { index, rank })?;
    let offset = c.u64().ok_or(overrun)?;
    let count = c.u64().ok_or(overrun)?;
    Ok((RawEntry { name, dims, offset, count }, c.pos))
}

/// Iterator over the tensors of a [`WeightFile`], in file order.
#[derive(Clone)]
pub struct Tensors<'a> {
    bytes: &'a [u8],
    dtype: DType,
    pos: usize,
    index: usize,
    remaining: usize,
}

impl<'a> Tensors<'a> {
    pub(super) fn new(bytes: &'a [u8], dtype: DType, count: usize) -> Self {
        Tensors { bytes, dtype, pos: HEADER_LEN, index: 0, remaining: count }
    }

    /// Decodes the next entry; `None` only if the file were invalid, which `parse` rules out.
    fn decode(&mut self) -> Option<TensorRef<'a>> {
        let (entry, next) = read_entry(self.bytes, self.pos, index_u32(self.index)).ok()?;
        self.pos = next;
        self.index += 1;
        let name = core::str::from_utf8(entry.name).ok()?;
        let n = usize::try_from(entry.count).ok()?;
        let start = usize::try_from(entry.offset).ok()?;
        let len = n.checked_mul(self.dtype.size())?;
        let region = self.bytes.get(start..start.checked_add(len)?)?;
        let data = match self.dtype {
            DType::F32 => TensorData::F32(cast_slice::<f32>(region)?),
            DType::F16 => TensorData::F16(cast_slice::<f16>(region)?),
        };
        Some(TensorRef { name, dims: entry.dims, data })
    }
}

impl<'a> Iterator for Tensors<'a> {
    type Item = TensorRef<'a>;

    fn next(&mut self) -> Option<TensorRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let t = self.decode();
        if t.is_none() {
            self.remaining = 0;
        }
        t
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Tensors<'_> {}

/// Marker for element types every bit pattern of which is a valid value.
trait Pod: Copy {}
impl Pod for f32 {}
impl Pod for f16 {}

/// Reinterprets little-endian bytes as elements of `T`; `None` if `bytes` is misaligned for
/// `T` or not a whole number of elements.
fn cast_slice<T: Pod>(bytes: &[u8]) -> Option<&[T]> {
    if !(bytes.as_ptr() as usize).is_multiple_of(align_of::<T>()) || !bytes.len().is_multiple_of(size_of::<T>()) {
        return None;
    }
    // SAFETY: the pointer is non-null (it comes from a slice), aligned for `T` (checked above)
    // and valid for reads of `bytes.len()` bytes = `len / size_of::<T>()` whole elements
    // (checked above) for the lifetime of `bytes`, which the result borrows; `T` is `f32` or
    // `f16` (the sealed `Pod`), for which every bit pattern is a valid value, and the bytes
    // are immutable while borrowed. Byte order: `parse` refuses big-endian targets, so the
    // file's little-endian encoding is the native one.
    Some(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size_of::<T>()) })
}
