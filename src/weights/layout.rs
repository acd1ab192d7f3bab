//! The version-1 byte layout shared by the reader and the writer: header field offsets, the
//! codes of the enum fields, the checksum rule and model-config validation.

use tinykd_kernels::DType;

use super::{FileKind, WeightError};
use crate::config::{Arch, ModelConfig, Stem};
use crate::crc32::Crc32;

/// Byte offsets of the header fields (see `docs/FORMAT.md`).
pub(super) mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const HEADER_SIZE: usize = 6;
    pub const ARCH: usize = 8;
    pub const STEM: usize = 9;
    pub const SCALE_PERMILLE: usize = 10;
    pub const CLASSES: usize = 12;
    pub const IN_H: usize = 14;
    pub const IN_W: usize = 16;
    pub const IN_C: usize = 18;
    pub const KIND: usize = 20;
    pub const DTYPE: usize = 21;
    pub const RESERVED: usize = 22;
    pub const FILE_LEN: usize = 24;
    pub const TENSOR_COUNT: usize = 32;
    pub const CRC: usize = 36;
}

/// The CRC-32 of `file` with its 4-byte checksum field taken as zero; `None` if `file` is
/// shorter than the header.
pub(super) fn file_crc(file: &[u8]) -> Option<u32> {
    let before = file.get(..at::CRC)?;
    let after = file.get(at::CRC + 4..)?;
    Some(Crc32::new().update(before).update(&[0; 4]).update(after).finish())
}

/// Little-endian `u16` at `pos`, if the bytes are there.
pub(super) fn u16_at(bytes: &[u8], pos: usize) -> Option<u16> {
    let b = bytes.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

/// Little-endian `u32` at `pos`, if the bytes are there.
pub(super) fn u32_at(bytes: &[u8], pos: usize) -> Option<u32> {
    let b = bytes.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Little-endian `u64` at `pos`, if the bytes are there.
pub(super) fn u64_at(bytes: &[u8], pos: usize) -> Option<u64> {
    let b = bytes.get(pos..pos.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

#[cfg(feature = "std")] // only the writer encodes
/// `arch` code: 0 MobileNetV1, 1 ResNet50.
pub(super) const fn arch_code(a: Arch) -> u8 {
    match a {
        Arch::MobileNetV1 => 0,
        Arch::ResNet50 => 1,
    }
}

pub(super) fn arch_from(code: u8) -> Result<Arch, WeightError> {
    match code {
        0 => Ok(Arch::MobileNetV1),
        1 => Ok(Arch::ResNet50),
        _ => Err(WeightError::BadCode { field: "arch", code }),
    }
}

#[cfg(feature = "std")] // only the writer encodes
/// `stem` code: 0 ImageNet, 1 Cifar.
pub(super) const fn stem_code(s: Stem) -> u8 {
    match s {
        Stem::ImageNet => 0,
        Stem::Cifar => 1,
    }
}

pub(super) fn stem_from(code: u8) -> Result<Stem, WeightError> {
    match code {
        0 => Ok(Stem::ImageNet),
        1 => Ok(Stem::Cifar),
        _ => Err(WeightError::BadCode { field: "stem", code }),
    }
}

#[cfg(feature = "std")] // only the writer encodes
/// `kind` code: 0 Params, 1 Inference.
pub(super) const fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::Params => 0,
        FileKind::Inference => 1,
    }
}

pub(super) fn kind_from(code: u8) -> Result<FileKind, WeightError> {
    match code {
        0 => Ok(FileKind::Params),
        1 => Ok(FileKind::Inference),
        _ => Err(WeightError::BadCode { field: "kind", code }),
    }
}

#[cfg(feature = "std")] // only the writer encodes
/// `dtype` code: 0 f32, 1 f16.
pub(super) const fn dtype_code(d: DType) -> u8 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
    }
}

pub(super) fn dtype_from(code: u8) -> Result<DType, WeightError> {
    match code {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        _ => Err(WeightError::BadCode { field: "dtype", code }),
    }
}

/// Rejects configurations no model can have: any zero size or width, and ResNet50 with a
/// width other than 1000‰. (Shared by the reader and the writer so round trips agree.)
pub(super) fn check_config(c: &ModelConfig) -> Result<(), WeightError> {
    let bad = |why| Err(WeightError::BadConfig(why));
    if c.scale_permille == 0 {
        return bad("scale_permille is 0");
    }
    if c.arch == Arch::ResNet50 && c.scale_permille != 1000 {
        return bad("ResNet50 has no width multiplier, its scale_permille must be 1000");
    }
    if c.classes == 0 {
        return bad("classes is 0");
    }
    if c.in_h == 0 || c.in_w == 0 || c.in_c == 0 {
        return bad("an input dimension is 0");
    }
    Ok(())
}

#[cfg(feature = "std")] // only the writer encodes
/// The header of a file with the given fields; the CRC field is left zero.
pub(super) fn encode_header(
    config: &ModelConfig,
    kind: FileKind,
    dtype: DType,
    tensor_count: u32,
    file_len: u64,
) -> [u8; super::HEADER_LEN] {
    let mut h = [0u8; super::HEADER_LEN];
    let mut put = |pos: usize, bytes: &[u8]| {
        if let Some(dst) = h.get_mut(pos..pos + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(at::MAGIC, &super::MAGIC);
    put(at::VERSION, &super::VERSION.to_le_bytes());
    put(at::HEADER_SIZE, &(super::HEADER_LEN as u16).to_le_bytes());
    put(at::ARCH, &[arch_code(config.arch)]);
    put(at::STEM, &[stem_code(config.stem)]);
    put(at::SCALE_PERMILLE, &config.scale_permille.to_le_bytes());
    put(at::CLASSES, &config.classes.to_le_bytes());
    put(at::IN_H, &config.in_h.to_le_bytes());
    put(at::IN_W, &config.in_w.to_le_bytes());
    put(at::IN_C, &config.in_c.to_le_bytes());
    put(at::KIND, &[kind_code(kind)]);
    put(at::DTYPE, &[dtype_code(dtype)]);
    put(at::FILE_LEN, &file_len.to_le_bytes());
    put(at::TENSOR_COUNT, &tensor_count.to_le_bytes());
    h
}
