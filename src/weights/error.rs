//! Why a weight file was rejected (parse) or could not be built (write).

use core::fmt;

/// Every way a weight file can be rejected by [`WeightFile::parse`](super::WeightFile::parse)
/// or refused by the writer. Tensor errors carry the tensor's index in the file's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightError {
    /// This build runs on a big-endian target; the zero-copy reader needs little-endian.
    BigEndian,
    /// The first four bytes are not `TKDW`.
    BadMagic,
    /// The file was written in a format version this build cannot read.
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
    },
    /// The header-size field does not match the version's header size.
    BadHeaderSize {
        /// The header size in the file.
        found: u16,
    },
    /// The file is shorter than its header (or its length field) says.
    Truncated {
        /// Bytes the file should have.
        expected: u64,
        /// Bytes that were given.
        found: u64,
    },
    /// The byte slice is longer than the file length recorded in the header.
    TrailingBytes {
        /// The length recorded in the header.
        expected: u64,
        /// Bytes that were given.
        found: u64,
    },
    /// The stored CRC-32 does not match the file's contents.
    Checksum {
        /// The CRC in the header.
        stored: u32,
        /// The CRC computed over the file.
        computed: u32,
    },
    /// An enum field of the header holds an unknown code.
    BadCode {
        /// The header field (`arch`, `stem`, `kind`, `dtype`).
        field: &'static str,
        /// The code found.
        code: u8,
    },
    /// A header field that must be zero is not.
    ReservedNotZero,
    /// The model configuration is invalid (a zero size, a width not in 1..=1000, ...).
    BadConfig(&'static str),
    /// More tensors than the format can count.
    TooManyTensors,
    /// A tensor-table entry runs past the end of the file.
    TableOverrun {
        /// Tensor index.
        index: u32,
    },
    /// A tensor name is empty or longer than [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes.
    NameLength {
        /// Tensor index.
        index: u32,
        /// The name's length in bytes.
        len: usize,
    },
    /// A tensor name is not valid UTF-8.
    NameUtf8 {
        /// Tensor index.
        index: u32,
    },
    /// Two tensors have the same name.
    DuplicateName {
        /// Index of the later tensor.
        index: u32,
        /// Index of the first tensor with that name.
        first: u32,
    },
    /// A tensor has more than [`MAX_RANK`](super::MAX_RANK) dimensions.
    Rank {
        /// Tensor index.
        index: u32,
        /// The rank found.
        rank: usize,
    },
    /// The product of a tensor's dims differs from its element count (or data length).
    CountMismatch {
        /// Tensor index.
        index: u32,
        /// Product of the dims.
        dims_product: u64,
        /// Element count recorded (parse) or data length given (write).
        count: u64,
    },
    /// A tensor's size overflows the format's or the target's integer types.
    TooLarge {
        /// Tensor index.
        index: u32,
    },
    /// Writing f16: a finite value of a tensor is beyond f16's range (±65504) and would become
    /// an infinity.
    F16Overflow {
        /// Tensor index.
        index: u32,
        /// Position of the first such value in the tensor's data.
        at: u64,
        /// The value's f32 bits.
        bits: u32,
    },
    /// A tensor's data offset is not a multiple of [`DATA_ALIGN`](super::DATA_ALIGN).
    OffsetUnaligned {
        /// Tensor index.
        index: u32,
        /// The offset found.
        offset: u64,
    },
    /// A tensor's data starts before the end of the tensor table or of the previous tensor.
    Overlap {
        /// Tensor index.
        index: u32,
        /// The offset found.
        offset: u64,
        /// The first byte it may start at.
        min: u64,
    },
    /// A tensor's data runs past the end of the file.
    OutOfBounds {
        /// Tensor index.
        index: u32,
        /// One past its last byte.
        end: u64,
        /// The file length.
        file_len: u64,
    },
    /// Bytes after the last tensor's data (the file length must equal the end of the data).
    UnusedTail {
        /// Where the data ends.
        data_end: u64,
        /// The file length.
        file_len: u64,
    },
    /// The byte slice's address is not aligned for the file's dtype.
    Misaligned {
        /// The alignment the dtype needs.
        required: usize,
        /// The slice's address modulo `required`.
        offset: usize,
    },
}

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use WeightError::*;
        match *self {
            BigEndian => write!(f, "weight files can only be read in place on little-endian targets, and this is a big-endian build"),
            BadMagic => write!(f, "not a tinykd weight file: it does not start with the bytes `TKDW`"),
            UnsupportedVersion { found } => write!(
                f,
                "the weight file has format version {found}, this build reads {}",
                super::VERSION
            ),
            BadHeaderSize { found } => write!(
                f,
                "the weight file's header size is {found} bytes, version {} headers are {} bytes",
                super::VERSION,
                super::HEADER_LEN
            ),
            Truncated { expected, found } => write!(
                f,
                "the weight file is truncated: {expected} bytes expected, {found} found"
            ),
            TrailingBytes { expected, found } => write!(
                f,
                "the weight file's header says it is {expected} bytes long but {found} bytes were given (pass exactly the file)"
            ),
            Checksum { stored, computed } => write!(
                f,
                "the weight file is corrupt: its CRC-32 is {computed:#010x}, the header says {stored:#010x}"
            ),
            BadCode { field, code } => write!(f, "the weight file's header has an unknown `{field}` code {code}"),
            ReservedNotZero => write!(f, "the weight file's reserved header bytes (22..24) are not zero"),
            BadConfig(why) => write!(f, "invalid model configuration: {why}"),
            TooManyTensors => write!(f, "too many tensors for one weight file (at most {})", u32::MAX),
            TableOverrun { index } => write!(f, "tensor {index}'s table entry runs past the end of the weight file"),
            NameLength { index, len } => write!(
                f,
                "tensor {index}'s name is {len} bytes long, names must be 1 to {} bytes",
                super::MAX_NAME_LEN
            ),
            NameUtf8 { index } => write!(f, "tensor {index}'s name is not valid UTF-8"),
            DuplicateName { index, first } => {
                write!(f, "tensor {index} has the same name as tensor {first}")
            }
            Rank { index, rank } => write!(
                f,
                "tensor {index} has {rank} dimensions, at most {} are supported",
                super::MAX_RANK
            ),
            CountMismatch { index, dims_product, count } => write!(
                f,
                "tensor {index}'s dims hold {dims_product} elements but it has {count}"
            ),
            TooLarge { index } => write!(f, "tensor {index} is too large for a weight file on this target"),
            F16Overflow { index, at, bits } => write!(
                f,
                "tensor {index}: value {at} is {}, beyond f16's range (±65504); write the file as f32",
                f32::from_bits(bits)
            ),
            OffsetUnaligned { index, offset } => write!(
                f,
                "tensor {index}'s data offset {offset} is not a multiple of {}",
                super::DATA_ALIGN
            ),
            Overlap { index, offset, min } => write!(
                f,
                "tensor {index}'s data at offset {offset} overlaps the tensor table or the previous tensor, which end at {min}"
            ),
            OutOfBounds { index, end, file_len } => write!(
                f,
                "tensor {index}'s data ends at byte {end}, past the end of the {file_len}-byte file"
            ),
            UnusedTail { data_end, file_len } => write!(
                f,
                "the tensor data ends at byte {data_end} but the file is {file_len} bytes long"
            ),
            Misaligned { required, offset } => write!(
                f,
                "the weight bytes start at an address {offset} bytes past a multiple of {required}; \
                 wrap them in `tinykd::weights::Aligned` (e.g. `static W: &Aligned<[u8]> = &Aligned(*include_bytes!(\"m.tkd\"));`) \
                 or, on the host, read them with `tinykd::weights::AlignedBuf`"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WeightError {}
