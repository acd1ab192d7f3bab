//! The `std` writer: builds a complete version-1 file in memory ([`to_bytes`]) and writes it
//! crash-safely ([`write_file`]).

use std::io;
use std::path::Path;
use std::vec::Vec;

use tinykd_kernels::{f16, DType};

use super::layout::{self, at};
use super::{FileKind, WeightError, DATA_ALIGN, HEADER_LEN, MAX_NAME_LEN, MAX_RANK};
use crate::config::ModelConfig;
use crate::host::atomic::write_atomic;

/// One tensor to write: f32 values, converted to the file's dtype by the writer.
#[derive(Clone, Copy, Debug)]
pub struct TensorOut<'a> {
    /// Unique name, 1 to [`MAX_NAME_LEN`] bytes of UTF-8.
    pub name: &'a str,
    /// Shape, outermost first, at most [`MAX_RANK`] dims; their product must be `data.len()`.
    pub dims: &'a [usize],
    /// Row-major values.
    pub data: &'a [f32],
}

/// Serialises a complete weight file: header, tensor table, then each tensor's data at the
/// next multiple of 16 bytes, converted to `dtype` (f16: round to nearest even).
///
/// Rejects an invalid config, empty, over-long or duplicate names, rank > 4, dims whose
/// product differs from `data.len()`, sizes the format cannot record, and (f16) finite values
/// beyond f16's range, which would become infinities.
pub fn to_bytes(
    config: &ModelConfig,
    kind: FileKind,
    dtype: DType,
    tensors: &[TensorOut],
) -> Result<Vec<u8>, WeightError> {
    layout::check_config(config)?;
    let count = u32::try_from(tensors.len()).map_err(|_| WeightError::TooManyTensors)?;

    // Validate every tensor and size the table.
    let mut table_end = HEADER_LEN as u64;
    for (i, t) in tensors.iter().enumerate() {
        let index = i as u32; // i < count, a u32
        check_tensor(index, t, tensors.get(..i).unwrap_or(&[]))?;
        let entry_len = 1 + t.name.len() + 1 + 4 * t.dims.len() + 8 + 8;
        table_end += entry_len as u64;
    }

    // Place the data.
    let too_large = |index| WeightError::TooLarge { index };
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut end = table_end;
    for (i, t) in tensors.iter().enumerate() {
        let index = i as u32;
        let offset = align_up(end).ok_or(too_large(index))?;
        let bytes = (t.data.len() as u64).checked_mul(dtype.size() as u64).ok_or(too_large(index))?;
        end = offset.checked_add(bytes).ok_or(too_large(index))?;
        offsets.push(offset);
    }
    let file_len = end;
    let len = usize::try_from(file_len).map_err(|_| too_large(count.saturating_sub(1)))?;

    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&layout::encode_header(config, kind, dtype, count, file_len));
    for (t, &offset) in tensors.iter().zip(&offsets) {
        buf.push(t.name.len() as u8);
        buf.extend_from_slice(t.name.as_bytes());
        buf.push(t.dims.len() as u8);
        for &d in t.dims {
            buf.extend_from_slice(&(d as u32).to_le_bytes());
        }
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
    }
    for (i, (t, &offset)) in tensors.iter().zip(&offsets).enumerate() {
        buf.resize(offset as usize, 0);
        match dtype {
            DType::F32 => t.data.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            DType::F16 => {
                for (at, &v) in t.data.iter().enumerate() {
                    let h = f16::from_f32(v);
                    if h.is_infinite() && v.is_finite() {
                        let (index, at, bits) = (i as u32, at as u64, v.to_bits());
                        return Err(WeightError::F16Overflow { index, at, bits });
                    }
                    buf.extend_from_slice(&h.to_bits().to_le_bytes());
                }
            }
        }
    }
    debug_assert_eq!(buf.len(), len);

    let crc = layout::file_crc(&buf).unwrap_or(0);
    if let Some(field) = buf.get_mut(at::CRC..at::CRC + 4) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
    Ok(buf)
}

/// The smallest multiple of [`DATA_ALIGN`] that is `>= x`, or `None` on overflow.
fn align_up(x: u64) -> Option<u64> {
    let a = DATA_ALIGN as u64;
    x.checked_add(a - 1).map(|v| v / a * a)
}

/// Checks one tensor against the format's rules and the tensors before it.
fn check_tensor(index: u32, t: &TensorOut, earlier: &[TensorOut]) -> Result<(), WeightError> {
    let len = t.name.len();
    if len == 0 || len > MAX_NAME_LEN {
        return Err(WeightError::NameLength { index, len });
    }
    if let Some(first) = earlier.iter().position(|e| e.name == t.name) {
        return Err(WeightError::DuplicateName { index, first: first as u32 });
    }
    if t.dims.len() > MAX_RANK {
        return Err(WeightError::Rank { index, rank: t.dims.len() });
    }
    let mut dims_product = 1u64;
    for &d in t.dims {
        let d = u32::try_from(d).map_err(|_| WeightError::TooLarge { index })?;
        dims_product = dims_product.checked_mul(d as u64).ok_or(WeightError::TooLarge { index })?;
    }
    let count = t.data.len() as u64;
    if dims_product != count {
        return Err(WeightError::CountMismatch { index, dims_product, count });
    }
    Ok(())
}

/// [`to_bytes`], then [`write_atomic`]: `path` ends up holding either its old contents or the
/// complete new file. A [`WeightError`] is returned as [`io::ErrorKind::InvalidInput`].
pub fn write_file(
    path: &Path,
    config: &ModelConfig,
    kind: FileKind,
    dtype: DType,
    tensors: &[TensorOut],
) -> io::Result<()> {
    let bytes = to_bytes(config, kind, dtype, tensors).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    write_atomic(path, &bytes)
}
