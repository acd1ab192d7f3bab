//! Weight files: round trips (f32, f16), data alignment, CRC-32 vectors, one typed error per
//! corruption (with the CRC recomputed so the deeper check is reached), misaligned input,
//! atomic writes, and a mutation loop asserting `parse` never panics.

#[path = "../kernels/tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::Rng;
use tinykd::crc32::{crc32, Crc32};
use tinykd::host::atomic::write_atomic;
use tinykd::kernels::{f16, DType};
use tinykd::weights::{
    to_bytes, write_file, Aligned, AlignedBuf, Dims, FileKind, TensorData, TensorOut, WeightError, WeightFile,
};
use tinykd::{Arch, ModelConfig, Stem};

// ---------------------------------------------------------------------------------------------
// Fixtures and an independent decoder of the table layout (docs/FORMAT.md), used to locate the
// fields that corruption tests edit.

/// Owned tensors for building files.
struct Owned {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

fn sample_tensors(rng: &mut Rng) -> Vec<Owned> {
    let shapes: [(&str, &[usize]); 6] = [
        ("conv1.w", &[3, 3, 3, 8]),
        ("conv1.bn.gamma", &[8]),
        ("dw2.w", &[3, 3, 8]),
        ("fc.w", &[8, 10]),
        ("step", &[]),      // rank 0: one element
        ("empty", &[0, 4]), // zero elements
    ];
    shapes
        .iter()
        .map(|(name, dims)| Owned { name: name.to_string(), dims: dims.to_vec(), data: rng.vec(dims.iter().product()) })
        .collect()
}

fn outs(ts: &[Owned]) -> Vec<TensorOut<'_>> {
    ts.iter().map(|t| TensorOut { name: &t.name, dims: &t.dims, data: &t.data }).collect()
}

fn config() -> ModelConfig {
    ModelConfig::mobilenet_v1(500).with_stem(Stem::Cifar).with_classes(100).with_input(24, 28)
}

/// A valid f32 (or f16) file over the sample tensors, and the tensors.
fn sample_file(dtype: DType) -> (Vec<u8>, Vec<Owned>) {
    let ts = sample_tensors(&mut Rng::new(7));
    let bytes = to_bytes(&config(), FileKind::Inference, dtype, &outs(&ts)).unwrap();
    (bytes, ts)
}

fn parse(bytes: &[u8]) -> Result<WeightFile<'_>, WeightError> {
    WeightFile::parse(bytes)
}

/// Parses an aligned copy of `bytes`, returning only the error (or `Ok(len)`).
fn parse_copy(bytes: &[u8]) -> Result<usize, WeightError> {
    let buf = AlignedBuf::from_bytes(bytes);
    WeightFile::parse(&buf).map(|f| f.len())
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the header CRC (bytes 36..40) after an edit: CRC-32 of the file with the field
/// zeroed.
fn reseal(b: &mut [u8]) {
    b[36..40].fill(0);
    let c = crc32(b);
    put_u32(b, 36, c);
}

/// Where one table entry's fields are.
struct Entry {
    name_len_at: usize,
    name_at: usize,
    rank_at: usize,
    dims_at: usize,
    offset_at: usize,
    count_at: usize,
}

/// Walks the table of a valid file: `u8 len, name, u8 rank, u32×rank, u64 offset, u64 count`.
fn entries(b: &[u8]) -> Vec<Entry> {
    let n = rd_u32(b, 32) as usize;
    let mut pos = 40;
    (0..n)
        .map(|_| {
            let name_len = b[pos] as usize;
            let rank_at = pos + 1 + name_len;
            let rank = b[rank_at] as usize;
            let e = Entry {
                name_len_at: pos,
                name_at: pos + 1,
                rank_at,
                dims_at: rank_at + 1,
                offset_at: rank_at + 1 + 4 * rank,
                count_at: rank_at + 1 + 4 * rank + 8,
            };
            pos = e.count_at + 8;
            e
        })
        .collect()
}

fn table_end(b: &[u8]) -> usize {
    entries(b).last().map_or(40, |e| e.count_at + 8)
}

/// Applies `edit` to a copy of `base`, recomputes the CRC and parses it.
fn edited(base: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Result<usize, WeightError> {
    let mut b = base.to_vec();
    edit(&mut b);
    reseal(&mut b);
    parse_copy(&b)
}

fn scratch_dir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("weights-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn dir_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Round trips

fn check_round_trip(dtype: DType, kind: FileKind, cfg: ModelConfig) {
    let ts = sample_tensors(&mut Rng::new(11));
    let bytes = to_bytes(&cfg, kind, dtype, &outs(&ts)).unwrap();
    let buf = AlignedBuf::from_bytes(&bytes);
    let f = parse(&buf).unwrap();
    assert_eq!(f.config(), cfg);
    assert!(format!("{f:?}").contains(&format!("tensors: {}", ts.len())));
    assert_eq!(f.kind(), kind);
    assert_eq!(f.dtype(), dtype);
    assert_eq!(f.len(), ts.len());
    assert!(!f.is_empty());
    assert_eq!(f.iter().len(), ts.len());
    for (i, (t, want)) in f.iter().zip(&ts).enumerate() {
        assert_eq!(t.name, want.name);
        let dims: Vec<usize> = t.dims.as_slice().iter().map(|&d| d as usize).collect();
        assert_eq!(dims, want.dims, "{}", t.name);
        assert_eq!(t.dims.numel(), want.data.len());
        assert_eq!(t.data.len(), want.data.len());
        assert_eq!(t.data.dtype(), dtype);
        match (dtype, t.data) {
            (DType::F32, TensorData::F32(s)) => {
                assert_eq!(
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                )
            }
            (DType::F16, TensorData::F16(s)) => {
                for (k, (&h, &v)) in s.iter().zip(&want.data).enumerate() {
                    // f16 has 10 mantissa bits: rounding to nearest is within half an ulp.
                    let err = (h.to_f32() - v).abs();
                    assert!(err <= v.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{}[{k}]: {} vs {v}", t.name, h.to_f32());
                    assert_eq!(h, f16::from_f32(v));
                }
            }
            _ => panic!("tensor {} has the wrong data variant", t.name),
        }
        // Lookups agree with iteration.
        assert_eq!(f.get(&want.name).unwrap().name, want.name);
        assert_eq!(f.tensor(i).unwrap().name, want.name);
        assert_eq!(f.tensor(i).unwrap().dims, t.dims);
    }
    assert!(f.tensor(ts.len()).is_none());
    assert!(f.get("missing").is_none());
    assert!(f.get("").is_none());
}

#[test]
fn round_trip_f32() {
    check_round_trip(DType::F32, FileKind::Inference, config());
    check_round_trip(DType::F32, FileKind::Params, ModelConfig::resnet50().with_stem(Stem::Cifar));
}

#[test]
fn round_trip_f16() {
    check_round_trip(DType::F16, FileKind::Params, config());
    check_round_trip(DType::F16, FileKind::Inference, ModelConfig::resnet50());
}

#[test]
fn f16_rounds_to_nearest_even() {
    // 1 + 2^-11 is halfway between 1 (even mantissa) and 1 + 2^-10: rounds down to 1.
    // 1 + 3·2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even): rounds up.
    // 1 + 2^-11 + 2^-20 is above halfway: rounds up to 1 + 2^-10.
    // 65519 rounds down to f16's largest, 65504; an infinity stays one.
    let data = [
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-11) + 2f32.powi(-20),
        -2.0,
        65504.0,
        65519.0,
        f32::INFINITY,
    ];
    let want_bits: [u16; 7] = [0x3C00, 0x3C02, 0x3C01, 0xC000, 0x7BFF, 0x7BFF, 0x7C00];
    let bytes =
        to_bytes(&config(), FileKind::Params, DType::F16, &[TensorOut { name: "x", dims: &[7], data: &data }]).unwrap();
    let buf = AlignedBuf::from_bytes(&bytes);
    let f = parse(&buf).unwrap();
    let TensorData::F16(s) = f.get("x").unwrap().data else { panic!("not f16") };
    let bits: Vec<u16> = s.iter().map(|h| h.to_bits()).collect();
    assert_eq!(bits, want_bits);
}

#[test]
fn finite_values_beyond_f16_are_refused_not_made_infinite() {
    // 65520 rounds to +Inf in f16: refused, naming the tensor index, the position and the value.
    for big in [65520.0f32, -1e6] {
        let (a, b) = ([1.0f32; 3], [0.5, 2.0, big, 7.0]);
        let t = [TensorOut { name: "a", dims: &[3], data: &a }, TensorOut { name: "b", dims: &[4], data: &b }];
        let e = to_bytes(&config(), FileKind::Inference, DType::F16, &t).unwrap_err();
        assert_eq!(e, WeightError::F16Overflow { index: 1, at: 2, bits: big.to_bits() });
        assert!(e.to_string().contains("beyond f16's range (±65504); write the file as f32"), "{e}");
        // f32 holds it.
        to_bytes(&config(), FileKind::Inference, DType::F32, &t).unwrap();
    }
}

#[test]
fn empty_file_round_trips() {
    let cfg = ModelConfig::mobilenet_v1(250);
    let bytes = to_bytes(&cfg, FileKind::Params, DType::F32, &[]).unwrap();
    assert_eq!(bytes.len(), 40);
    let buf = AlignedBuf::from_bytes(&bytes);
    let f = parse(&buf).unwrap();
    assert!(f.is_empty());
    assert_eq!(f.len(), 0);
    assert_eq!(f.iter().count(), 0);
    assert_eq!(f.config(), cfg);
}

#[test]
fn header_bytes_match_the_documented_layout() {
    let cfg = ModelConfig::resnet50().with_stem(Stem::Cifar).with_classes(100).with_input(24, 28);
    let ts = sample_tensors(&mut Rng::new(3));
    let b = to_bytes(&cfg, FileKind::Inference, DType::F16, &outs(&ts)).unwrap();
    assert_eq!(&b[0..4], b"TKDW");
    assert_eq!(&b[4..8], &[1, 0, 40, 0]); // version 1, header size 40
    assert_eq!(&b[8..10], &[1, 1]); // arch ResNet50, stem Cifar
    assert_eq!(&b[10..20], &[0xE8, 0x03, 100, 0, 24, 0, 28, 0, 3, 0]); // 1000, 100, 24, 28, 3
    assert_eq!(&b[20..24], &[1, 1, 0, 0]); // kind Inference, dtype f16, reserved
    assert_eq!(rd_u64(&b, 24), b.len() as u64);
    assert_eq!(rd_u32(&b, 32), ts.len() as u32);
    let mut z = b.clone();
    z[36..40].fill(0);
    assert_eq!(rd_u32(&b, 36), crc32(&z));
    // The first entry: name length, name, rank, dims.
    assert_eq!(b[40], 7);
    assert_eq!(&b[41..48], b"conv1.w");
    assert_eq!(b[48], 4);
    assert_eq!(rd_u32(&b, 49), 3);
    assert_eq!(rd_u32(&b, 61), 8);
}

#[test]
fn worked_example_of_format_md() {
    let cfg = ModelConfig::mobilenet_v1(500).with_stem(Stem::Cifar);
    let data = [0.25f32; 432];
    let b = to_bytes(
        &cfg,
        FileKind::Inference,
        DType::F16,
        &[TensorOut { name: "conv1.w", dims: &[3, 3, 3, 16], data: &data }],
    )
    .unwrap();
    assert_eq!(b.len(), 960);
    assert_eq!(rd_u32(&b, 36), 0x8BF5_7E1E);
    assert_eq!(rd_u64(&b, 0x41), 96);
    assert!(b[0x51..0x60].iter().all(|&x| x == 0));
    assert_eq!(&b[0x60..0x64], &[0x00, 0x34, 0x00, 0x34]);
}

#[test]
fn every_data_offset_is_aligned_to_16_and_ordered() {
    for dtype in [DType::F32, DType::F16] {
        let (bytes, ts) = sample_file(dtype);
        let es = entries(&bytes);
        let mut min = table_end(&bytes) as u64;
        for (e, t) in es.iter().zip(&ts) {
            let off = rd_u64(&bytes, e.offset_at);
            let count = rd_u64(&bytes, e.count_at);
            assert_eq!(off % 16, 0, "{}: offset {off}", t.name);
            assert!(off >= min, "{}: offset {off} < {min}", t.name);
            assert_eq!(count, t.data.len() as u64);
            min = off + count * dtype.size() as u64;
        }
        assert_eq!(min, bytes.len() as u64);
        // The slices handed out point at those offsets.
        let buf = AlignedBuf::from_bytes(&bytes);
        let f = parse(&buf).unwrap();
        for (t, e) in f.iter().zip(&es) {
            let p = match t.data {
                TensorData::F32(s) => s.as_ptr() as usize,
                TensorData::F16(s) => s.as_ptr() as usize,
            };
            if !t.data.is_empty() {
                assert_eq!((p - buf.as_ptr() as usize) as u64, rd_u64(&bytes, e.offset_at));
            }
            assert_eq!(p % 16, 0, "{}", t.name);
        }
    }
}

#[test]
fn dims_display_and_numel() {
    let d = Dims::new(&[3, 3, 3, 32]).unwrap();
    assert_eq!(d.to_string(), "[3, 3, 3, 32]");
    assert_eq!(d.numel(), 864);
    assert_eq!(d.rank(), 4);
    assert_eq!(d.as_slice(), &[3, 3, 3, 32]);
    assert_eq!(Dims::new(&[]).unwrap().to_string(), "[]");
    assert_eq!(Dims::new(&[]).unwrap().numel(), 1);
    assert!(Dims::new(&[1, 2, 3, 4, 5]).is_none());
    assert_ne!(Dims::new(&[2, 3]).unwrap(), Dims::new(&[3, 2]).unwrap());
}

#[test]
fn aligned_wrapper_places_bytes_on_16() {
    static A: Aligned<[u8; 3]> = Aligned([1, 2, 3]);
    let unsized_ref: &Aligned<[u8]> = &A;
    assert_eq!(unsized_ref as *const Aligned<[u8]> as *const u8 as usize % 16, 0);
    assert_eq!(&unsized_ref.0, &[1, 2, 3]);

    // A zero-tensor file is exactly 40 bytes, so it fits an array type known at compile time.
    let bytes = to_bytes(&config(), FileKind::Inference, DType::F32, &[]).unwrap();
    let mut boxed = Box::new(Aligned([0u8; 40]));
    boxed.0.copy_from_slice(&bytes);
    let w: &Aligned<[u8]> = &*boxed;
    assert_eq!(WeightFile::parse(&w.0).unwrap().config(), config());
}

// ---------------------------------------------------------------------------------------------
// CRC-32

#[test]
fn crc32_known_vectors() {
    const CHECK: u32 = crc32(b"123456789"); // usable in const context
    assert_eq!(CHECK, 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    assert_eq!(crc32(&[0u8; 32]), 0x190A_55AD);
    assert_eq!(Crc32::new().finish(), 0);
    let mut c = Crc32::new();
    c.update(b"1234").update(b"").update(b"56789");
    assert_eq!(c.finish(), 0xCBF4_3926);
    // Any split agrees with the one-shot CRC.
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    for cut in [0, 1, 17, 150, 299, 300] {
        let mut c = Crc32::default();
        c.update(&data[..cut]).update(&data[cut..]);
        assert_eq!(c.finish(), crc32(&data), "cut {cut}");
    }
    // The run-time form (crc32fast's folding paths under `std`) equals the table
    // specification on long buffers, odd lengths and unaligned starts, whole and in pieces.
    let long: Vec<u8> = (0..100_003u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for (start, end) in [(0, 100_003), (1, 99_999), (3, 4_099), (5, 69), (64, 192)] {
        let part = &long[start..end];
        assert_eq!(Crc32::of(part), crc32(part), "{start}..{end}");
        let mid = start + (end - start) / 3;
        let mut c = Crc32::new();
        c.update(&long[start..mid]).update(&long[mid..end]);
        assert_eq!(c.finish(), crc32(part), "{start}..{mid}..{end}");
    }
}

// ---------------------------------------------------------------------------------------------
// Corruption: each case gives its typed error.

#[test]
fn every_prefix_is_truncated() {
    for dtype in [DType::F32, DType::F16] {
        let (bytes, _) = sample_file(dtype);
        let buf = AlignedBuf::from_bytes(&bytes);
        let len = bytes.len() as u64;
        for n in 0..bytes.len() {
            let got = WeightFile::parse(&buf[..n]).map(|f| f.len());
            let expected = if n < 32 { 40 } else { len };
            assert_eq!(got, Err(WeightError::Truncated { expected, found: n as u64 }), "prefix {n}");
        }
        let msg = WeightFile::parse(&buf[..100]).unwrap_err().to_string();
        assert!(msg.contains(&format!("{len} bytes expected, 100 found")), "{msg}");
    }
}

#[test]
fn wrong_magic() {
    let (bytes, _) = sample_file(DType::F32);
    for i in 0..4 {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        assert_eq!(parse_copy(&b), Err(WeightError::BadMagic));
    }
    assert_eq!(parse_copy(b"TX"), Err(WeightError::BadMagic));
    assert_eq!(parse_copy(b"PK\x03\x04 a zip file, not weights......................."), Err(WeightError::BadMagic));
    assert!(parse_copy(b"").is_err());
}

#[test]
fn future_version_and_header_size() {
    let (bytes, _) = sample_file(DType::F32);
    let e = edited(&bytes, |b| put_u16(b, 4, 2)).unwrap_err();
    assert_eq!(e, WeightError::UnsupportedVersion { found: 2 });
    assert!(e.to_string().contains("version 2, this build reads 1"), "{e}");
    // Even a truncated file of a future version says so.
    let mut b = bytes[..10].to_vec();
    put_u16(&mut b, 4, 7);
    assert_eq!(parse_copy(&b), Err(WeightError::UnsupportedVersion { found: 7 }));
    assert_eq!(edited(&bytes, |b| put_u16(b, 6, 48)), Err(WeightError::BadHeaderSize { found: 48 }));
}

#[test]
fn length_field_must_match_the_slice() {
    let (bytes, _) = sample_file(DType::F32);
    let len = bytes.len() as u64;
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(parse_copy(&longer), Err(WeightError::TrailingBytes { expected: len, found: len + 1 }));
    assert_eq!(
        edited(&bytes, |b| put_u64(b, 24, len + 5)),
        Err(WeightError::Truncated { expected: len + 5, found: len })
    );
    assert_eq!(edited(&bytes, |b| put_u64(b, 24, 0)), Err(WeightError::TrailingBytes { expected: 0, found: len }));
}

#[test]
fn any_flipped_bit_is_detected() {
    for dtype in [DType::F32, DType::F16] {
        let (bytes, _) = sample_file(dtype);
        for i in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let e = parse_copy(&b).expect_err("corrupt file accepted");
                match i {
                    0..=3 => assert_eq!(e, WeightError::BadMagic),
                    4..=5 => assert!(matches!(e, WeightError::UnsupportedVersion { .. })),
                    6..=7 => assert!(matches!(e, WeightError::BadHeaderSize { .. })),
                    24..=31 => assert!(matches!(e, WeightError::Truncated { .. } | WeightError::TrailingBytes { .. })),
                    _ => assert!(matches!(e, WeightError::Checksum { .. }), "byte {i} bit {bit}: {e:?}"),
                }
            }
        }
    }
}

#[test]
fn bad_header_codes_and_config() {
    let (bytes, _) = sample_file(DType::F32);
    assert_eq!(edited(&bytes, |b| b[8] = 7), Err(WeightError::BadCode { field: "arch", code: 7 }));
    assert_eq!(edited(&bytes, |b| b[9] = 2), Err(WeightError::BadCode { field: "stem", code: 2 }));
    assert_eq!(edited(&bytes, |b| b[20] = 5), Err(WeightError::BadCode { field: "kind", code: 5 }));
    assert_eq!(edited(&bytes, |b| b[21] = 3), Err(WeightError::BadCode { field: "dtype", code: 3 }));
    assert_eq!(edited(&bytes, |b| b[23] = 1), Err(WeightError::ReservedNotZero));
    for (at, what) in [(10, "scale"), (12, "classes"), (14, "in_h"), (16, "in_w"), (18, "in_c")] {
        let e = edited(&bytes, |b| put_u16(b, at, 0)).unwrap_err();
        assert!(matches!(e, WeightError::BadConfig(_)), "{what}: {e:?}");
    }
    // ResNet50 with a width multiplier.
    let e = edited(&bytes, |b| b[8] = 1).unwrap_err(); // the sample is MobileNetV1 at 500‰
    assert!(matches!(e, WeightError::BadConfig(_)), "{e:?}");
}

#[test]
fn bad_names() {
    let (bytes, _) = sample_file(DType::F32);
    let es = entries(&bytes);
    assert_eq!(edited(&bytes, |b| b[es[1].name_at + 2] = 0xFF), Err(WeightError::NameUtf8 { index: 1 }));
    // A truncated multi-byte sequence: 0xCE starts a 2-byte character.
    assert_eq!(edited(&bytes, |b| b[es[0].name_at + 6] = 0xCE), Err(WeightError::NameUtf8 { index: 0 }));
    assert_eq!(edited(&bytes, |b| b[es[2].name_len_at] = 0), Err(WeightError::NameLength { index: 2, len: 0 }));
    assert_eq!(edited(&bytes, |b| b[es[0].name_len_at] = 64), Err(WeightError::NameLength { index: 0, len: 64 }));
    // Rename "step" (4) to "fc.w", the name of tensor 3 (same length, so the layout stays).
    assert_eq!(
        edited(&bytes, |b| b[es[4].name_at..es[4].name_at + 4].copy_from_slice(b"fc.w")),
        Err(WeightError::DuplicateName { index: 4, first: 3 })
    );
}

#[test]
fn bad_ranks_and_counts() {
    let (bytes, _) = sample_file(DType::F32);
    let es = entries(&bytes);
    assert_eq!(edited(&bytes, |b| b[es[0].rank_at] = 5), Err(WeightError::Rank { index: 0, rank: 5 }));
    // conv1.w dims [3,3,3,8] -> [3,3,3,9]: product 243 ≠ count 216.
    assert_eq!(
        edited(&bytes, |b| put_u32(b, es[0].dims_at + 12, 9)),
        Err(WeightError::CountMismatch { index: 0, dims_product: 243, count: 216 })
    );
    // fc.w count 80 -> 81.
    assert_eq!(
        edited(&bytes, |b| put_u64(b, es[3].count_at, 81)),
        Err(WeightError::CountMismatch { index: 3, dims_product: 80, count: 81 })
    );
    // Dims whose product overflows u64.
    assert_eq!(
        edited(&bytes, |b| (0..4).for_each(|k| put_u32(b, es[0].dims_at + 4 * k, u32::MAX))),
        Err(WeightError::TooLarge { index: 0 })
    );
    // Consistent dims and count (fc.w [8000, 10]), but the data no longer fits in the file.
    let e = edited(&bytes, |b| {
        put_u32(b, es[3].dims_at, 8000);
        put_u64(b, es[3].count_at, 80_000);
    });
    assert!(matches!(e, Err(WeightError::OutOfBounds { index: 3, .. })), "{e:?}");
}

#[test]
fn bad_offsets() {
    let (bytes, _) = sample_file(DType::F32);
    let es = entries(&bytes);
    let off = |i: usize| rd_u64(&bytes, es[i].offset_at);
    let end = table_end(&bytes) as u64;
    let len = bytes.len() as u64;
    // Unaligned.
    assert_eq!(
        edited(&bytes, |b| put_u64(b, es[1].offset_at, off(1) + 4)),
        Err(WeightError::OffsetUnaligned { index: 1, offset: off(1) + 4 })
    );
    // Overlapping the table.
    assert_eq!(
        edited(&bytes, |b| put_u64(b, es[0].offset_at, 32)),
        Err(WeightError::Overlap { index: 0, offset: 32, min: end })
    );
    // Overlapping the previous tensor (conv1.w: 216 f32 = 864 bytes).
    assert_eq!(
        edited(&bytes, |b| put_u64(b, es[1].offset_at, off(0))),
        Err(WeightError::Overlap { index: 1, offset: off(0), min: off(0) + 864 })
    );
    // Out of bounds (last tensor with data: "step", 4 bytes).
    let far = (len + 16) / 16 * 16;
    assert_eq!(
        edited(&bytes, |b| put_u64(b, es[4].offset_at, far)),
        Err(WeightError::OutOfBounds { index: 4, end: far + 4, file_len: len })
    );
    // An offset so large that offset + size overflows.
    assert_eq!(edited(&bytes, |b| put_u64(b, es[3].offset_at, u64::MAX - 15)), Err(WeightError::TooLarge { index: 3 }));
    // Bytes after the data.
    let e = edited(&bytes, |b| {
        b.extend_from_slice(&[0; 16]);
        put_u64(b, 24, len + 16);
    });
    assert_eq!(e, Err(WeightError::UnusedTail { data_end: len, file_len: len + 16 }));
    // The table itself cut short (file shortened consistently, CRC recomputed).
    let e = edited(&bytes, |b| {
        b.truncate(45);
        put_u64(b, 24, 45);
    });
    assert_eq!(e, Err(WeightError::TableOverrun { index: 0 }));
    // More tensors claimed than the table holds: the extra entry is read from the data.
    assert!(edited(&bytes, |b| put_u32(b, 32, 7)).is_err());
}

#[test]
fn misaligned_input_is_refused_with_advice() {
    for (dtype, required) in [(DType::F32, 4), (DType::F16, 2)] {
        let (bytes, _) = sample_file(dtype);
        for skip in 1..=3usize {
            // The file starts `skip` bytes past a 16-aligned address.
            let mut v = vec![0u8; skip];
            v.extend_from_slice(&bytes);
            let b = AlignedBuf::from_bytes(&v);
            let got = WeightFile::parse(&b[skip..]);
            if skip % required == 0 {
                assert_eq!(got.map(|f| f.len()), Ok(6), "{dtype:?} at +{skip}");
            } else {
                let e = got.unwrap_err();
                assert_eq!(e, WeightError::Misaligned { required, offset: skip % required });
                assert!(e.to_string().contains("weights::Aligned"), "{e}");
            }
        }
    }
    // An f16 file at +2 is readable in place, values intact.
    let (bytes, ts) = sample_file(DType::F16);
    let mut v = vec![0u8; 2];
    v.extend_from_slice(&bytes);
    let b = AlignedBuf::from_bytes(&v);
    let f = WeightFile::parse(&b[2..]).unwrap();
    let t = f.get("fc.w").unwrap();
    assert_eq!(t.data.get(5), Some(f16::from_f32(ts[3].data[5]).to_f32()));
}

#[test]
fn writer_rejects_bad_tensors() {
    const D: [f32; 6] = [0.5; 6];
    fn t<'a>(name: &'a str, dims: &'a [usize]) -> TensorOut<'a> {
        TensorOut { name, dims, data: &D }
    }
    fn write(ts: &[TensorOut]) -> Result<(), WeightError> {
        to_bytes(&config(), FileKind::Params, DType::F32, ts).map(|_| ())
    }
    let cfg = config();
    assert_eq!(write(&[t("", &[6])]), Err(WeightError::NameLength { index: 0, len: 0 }));
    let long = "x".repeat(64);
    assert_eq!(write(&[t("a", &[6]), t(&long, &[6])]), Err(WeightError::NameLength { index: 1, len: 64 }));
    assert_eq!(write(&[t(&long[..63], &[6])]), Ok(()));
    assert_eq!(write(&[t("α.w", &[2, 3])]), Ok(()));
    assert_eq!(
        write(&[t("a", &[6]), t("b", &[6]), t("a", &[6])]),
        Err(WeightError::DuplicateName { index: 2, first: 0 })
    );
    assert_eq!(write(&[t("a", &[1, 1, 1, 2, 3])]), Err(WeightError::Rank { index: 0, rank: 5 }));
    assert_eq!(write(&[t("a", &[2, 2])]), Err(WeightError::CountMismatch { index: 0, dims_product: 4, count: 6 }));
    assert_eq!(write(&[t("a", &[1 << 33, 0])]), Err(WeightError::TooLarge { index: 0 }));
    let bad_cfg = ModelConfig { arch: Arch::ResNet50, scale_permille: 500, ..ModelConfig::resnet50() };
    assert!(matches!(to_bytes(&bad_cfg, FileKind::Params, DType::F32, &[]), Err(WeightError::BadConfig(_))));
    assert!(matches!(
        to_bytes(&cfg.with_classes(0), FileKind::Params, DType::F32, &[]),
        Err(WeightError::BadConfig(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Files on disk

#[test]
fn write_atomic_writes_and_overwrites() {
    let dir = scratch_dir("atomic");
    let p = dir.join("a.bin");
    write_atomic(&p, b"first contents, long").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"first contents, long");
    write_atomic(&p, b"short").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"short");
    write_atomic(&p, b"").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"");
    assert_eq!(dir_names(&dir), ["a.bin"]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_atomic_failure_leaves_no_temp_and_keeps_the_old_file() {
    let dir = scratch_dir("atomic-fail");
    // Missing directory: nothing is created anywhere.
    assert!(write_atomic(&dir.join("missing").join("a.bin"), b"x").is_err());
    assert!(dir_names(&dir).is_empty());
    // The target is a directory: the rename fails after the temp file was written; the temp
    // file is removed and the directory (with its contents) untouched.
    let target = dir.join("taken");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"old").unwrap();
    assert!(write_atomic(&target, b"new contents").is_err());
    assert_eq!(dir_names(&dir), ["taken"]);
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"old");
    // A path without a file name.
    assert!(write_atomic(Path::new("/"), b"x").is_err());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_file_and_read_back() {
    let dir = scratch_dir("write-file");
    let p = dir.join("m.tkd");
    let ts = sample_tensors(&mut Rng::new(5));
    write_file(&p, &config(), FileKind::Params, DType::F16, &outs(&ts)).unwrap();
    let buf = AlignedBuf::read(&p).unwrap();
    let f = WeightFile::parse(&buf).unwrap();
    assert_eq!((f.kind(), f.dtype(), f.len()), (FileKind::Params, DType::F16, ts.len()));
    assert_eq!(f.get("conv1.bn.gamma").unwrap().data.get(3), Some(f16::from_f32(ts[1].data[3]).to_f32()));
    // An invalid tensor list is InvalidInput and leaves the old file in place.
    let old = fs::read(&p).unwrap();
    let bad = [TensorOut { name: "", dims: &[], data: &[1.0] }];
    let e = write_file(&p, &config(), FileKind::Params, DType::F16, &bad).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(fs::read(&p).unwrap(), old);
    assert_eq!(dir_names(&dir), ["m.tkd"]);
    fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Robustness

/// Checks the invariants a successfully parsed file promises: consistent sizes, unique names,
/// and data slices inside the file, after the table, in order and disjoint.
fn check_parsed(f: &WeightFile) {
    let base = f.bytes().as_ptr() as usize;
    let mut min = base + table_end(f.bytes());
    let mut names = Vec::new();
    for t in f.iter() {
        assert_eq!(t.dims.numel(), t.data.len());
        assert!(!t.name.is_empty() && t.name.len() <= 63);
        assert!(!names.contains(&t.name));
        names.push(t.name);
        let (start, len) = match t.data {
            TensorData::F32(s) => (s.as_ptr() as usize, s.len() * 4),
            TensorData::F16(s) => (s.as_ptr() as usize, s.len() * 2),
        };
        assert!(start >= min, "{}: data overlaps the table or the previous tensor", t.name);
        min = start + len;
    }
    assert!(min <= base + f.bytes().len());
    assert_eq!(names.len(), f.len());
}

#[test]
fn mutated_files_never_panic() {
    let mut rng = Rng::new(2024);
    let bases = [sample_file(DType::F32).0, sample_file(DType::F16).0];
    let mut accepted = 0;
    let mut kinds = std::collections::HashSet::new();
    for round in 0..4000 {
        let base = &bases[round % 2];
        let mut b = base.clone();
        let table = table_end(base);
        match rng.below(6) {
            // Random byte changes anywhere (most die at the checksum)...
            0 => (0..1 + rng.below(4)).for_each(|_| {
                let i = rng.below(b.len());
                b[i] = rng.next_u64() as u8;
            }),
            // ...or in the header/table, resealed so the deeper checks run.
            1 | 2 => (0..1 + rng.below(3)).for_each(|_| {
                let i = 8 + rng.below(table - 8);
                b[i] = match rng.below(3) {
                    0 => rng.next_u64() as u8,
                    1 => b[i] ^ (1 << rng.below(8)),
                    _ => [0, 1, 0x7F, 0x80, 0xFF][rng.below(5)],
                };
            }),
            // Truncate or extend, then fix up the length field (resealed).
            3 => {
                let n = rng.below(b.len());
                b.truncate(n.max(40));
                let l = b.len() as u64;
                put_u64(&mut b, 24, l);
            }
            4 => {
                let extra = rng.below(40);
                b.extend((0..extra).map(|_| rng.next_u64() as u8));
                let l = b.len() as u64;
                put_u64(&mut b, 24, l);
            }
            // Arbitrary 64-bit values into a random table field.
            _ => {
                let es = entries(base);
                let e = &es[rng.below(es.len())];
                let at = [e.offset_at, e.count_at, e.dims_at][rng.below(3)];
                let v = [rng.next_u64(), rng.next_u64() % 4096, u64::MAX, 0][rng.below(4)];
                b[at..at + 4].copy_from_slice(&v.to_le_bytes()[..4]);
            }
        }
        if round % 7 != 0 && b.len() >= 40 {
            reseal(&mut b);
        }
        let buf = AlignedBuf::from_bytes(&b);
        // Also a random prefix, and a misaligned view.
        for view in [&buf[..], &buf[..rng.below(buf.len() + 1)]] {
            match WeightFile::parse(view) {
                Ok(f) => {
                    accepted += 1;
                    check_parsed(&f);
                }
                Err(e) => {
                    kinds.insert(std::mem::discriminant(&e));
                }
            }
        }
        let shifted = AlignedBuf::from_bytes(&[&[0u8][..], &b].concat());
        assert!(WeightFile::parse(&shifted[1..]).is_err());
    }
    // Some mutations are harmless (e.g. a changed data byte, resealed), so some files parse;
    // the rest must reach many different checks, not just the checksum.
    assert!(accepted > 0);
    assert!(kinds.len() >= 12, "only {} distinct errors", kinds.len());
}

/// `parse_unchecked_crc` (for files in flash) skips only the CRC: it reads the same tensors as
/// `parse`, accepts a file whose CRC or values are wrong, and still returns every structural
/// error `parse` returns — for every single-bit flip of the sample files, and for structural
/// edits left unsealed (so only the structural check can catch them).
#[test]
fn unchecked_crc_parse_skips_only_the_crc() {
    for dtype in [DType::F32, DType::F16] {
        let (bytes, _) = sample_file(dtype);
        let buf = AlignedBuf::from_bytes(&bytes);
        let (checked, unchecked) = (parse(&buf).unwrap(), WeightFile::parse_unchecked_crc(&buf).unwrap());
        assert_eq!(format!("{checked:?}"), format!("{unchecked:?}"));
        assert_eq!(checked.len(), unchecked.len());
        for (a, b) in checked.iter().zip(unchecked.iter()) {
            assert_eq!((a.name, a.dims, a.data.len()), (b.name, b.dims, b.data.len()));
            assert!((0..a.data.len()).all(|i| a.data.get(i).map(f32::to_bits) == b.data.get(i).map(f32::to_bits)));
        }

        // A flipped bit in a value: parse refuses it, the unchecked parse reads the new value.
        let data_at = rd_u64(&bytes, entries(&bytes)[0].offset_at) as usize;
        let mut b = bytes.clone();
        b[data_at + 1] ^= 0x10;
        assert!(matches!(parse_copy(&b), Err(WeightError::Checksum { .. })));
        let flipped = AlignedBuf::from_bytes(&b);
        let f = WeightFile::parse_unchecked_crc(&flipped).unwrap();
        let (was, now) = (checked.tensor(0).unwrap().data.get(0).unwrap(), f.tensor(0).unwrap().data.get(0).unwrap());
        assert_ne!(was.to_bits(), now.to_bits());
        assert_eq!(f.tensor(0).unwrap().data.get(1), checked.tensor(0).unwrap().data.get(1));

        // Every single-bit flip: the same error as `parse` unless that was the checksum; an
        // accepted file is a consistent view.
        let mut accepted = 0;
        for i in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let b = AlignedBuf::from_bytes(&b);
                match (parse(&b), WeightFile::parse_unchecked_crc(&b)) {
                    (Err(WeightError::Checksum { .. }), Ok(f)) => {
                        accepted += 1;
                        check_parsed(&f);
                    }
                    (Err(WeightError::Checksum { .. }), Err(e)) => {
                        assert!(!matches!(e, WeightError::Checksum { .. }), "byte {i}: {e:?}")
                    }
                    (Err(e), unchecked) => assert_eq!(unchecked.map(|f| f.len()), Err(e), "byte {i} bit {bit}"),
                    (Ok(_), _) => panic!("byte {i} bit {bit}: corrupt file accepted by parse"),
                }
            }
        }
        assert!(accepted > 0, "value and CRC flips parse");

        // Structural edits, CRC left stale: refused for the structure, never for the CRC.
        let es = entries(&bytes);
        let unsealed = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            edit(&mut b);
            WeightFile::parse_unchecked_crc(&AlignedBuf::from_bytes(&b)).map(|f| f.len())
        };
        assert_eq!(unsealed(&|b| b[0] = b'X'), Err(WeightError::BadMagic));
        assert_eq!(unsealed(&|b| b[23] = 1), Err(WeightError::ReservedNotZero));
        assert_eq!(unsealed(&|b| b[21] = 3), Err(WeightError::BadCode { field: "dtype", code: 3 }));
        assert_eq!(unsealed(&|b| b[es[1].name_at] = 0xFF), Err(WeightError::NameUtf8 { index: 1 }));
        let off = rd_u64(&bytes, es[2].offset_at);
        assert_eq!(
            unsealed(&|b| put_u64(b, es[2].offset_at, off + 4)),
            Err(WeightError::OffsetUnaligned { index: 2, offset: off + 4 })
        );
        assert!(matches!(unsealed(&|b| put_u64(b, es[3].count_at, 1 << 40)), Err(WeightError::CountMismatch { .. })));
        assert!(matches!(unsealed(&|b| b.truncate(b.len() - 1)), Err(WeightError::Truncated { .. })));
        // Misaligned slices are refused as well.
        let shifted = AlignedBuf::from_bytes(&[&[0u8][..], &bytes].concat());
        assert!(matches!(WeightFile::parse_unchecked_crc(&shifted[1..]), Err(WeightError::Misaligned { .. })));
    }
}

/// `ParamStore::save` and `ParamStore::from_weight_file` round-trip a store (f32 bit-exact,
/// f16 to f16's precision) and refuse, naming the tensor, an inference file, a file lacking a
/// tensor, other dims and non-finite values.
#[test]
fn a_param_store_round_trips_through_a_params_file_and_bad_files_are_named() {
    use tinykd::params::{ParamStore, ParamsError};
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::mobilenet_v1(250);
    let store = ParamStore::init(&cfg, 5).unwrap();
    let load = |path: &Path| {
        let buf = AlignedBuf::read(path).unwrap();
        ParamStore::from_weight_file(&WeightFile::parse(&buf).unwrap())
    };
    let path = dir.path().join("s.tkd");
    store.save(&path, DType::F32).unwrap();
    assert_eq!(load(&path).unwrap(), store);
    store.save(&path, DType::F16).unwrap();
    let half = load(&path).unwrap();
    for (a, b) in store.params().iter().zip(half.params()) {
        assert!(a.data.iter().zip(&b.data).all(|(x, y)| f16::from_f32(*x).to_f32() == *y), "{}", a.name);
    }
    // A store with a NaN is not written (the loader would refuse the file).
    let mut nan = store.clone();
    nan.get_mut("fc7_weights").unwrap().data[1] = f32::NAN;
    let e = nan.save(&dir.path().join("nan.tkd"), DType::F32).unwrap_err();
    assert!(e.to_string().contains("fc7_weights") && !dir.path().join("nan.tkd").exists(), "{e}");
    // A directory that is not there: the error names the path.
    let e = store.save(&dir.path().join("no/such/dir/s.tkd"), DType::F32).unwrap_err();
    assert!(e.to_string().contains("no/such/dir/s.tkd"), "{e}");

    // A file of `kind` with the store's tensors after `edit`, without tensor `drop`.
    let write = |kind: FileKind, drop: &str, edit: &dyn Fn(&mut ParamStore)| {
        let mut s = store.clone();
        edit(&mut s);
        let tensors: Vec<TensorOut> = s.to_tensors().into_iter().filter(|t| t.name != drop).collect();
        fs::write(&path, to_bytes(&cfg, kind, DType::F32, &tensors).unwrap()).unwrap();
        load(&path)
    };
    assert_eq!(write(FileKind::Inference, "", &|_| {}), Err(ParamsError::Inference));
    assert_eq!(write(FileKind::Params, "fc7_offset", &|_| {}), Err(ParamsError::Missing("fc7_offset".into())));
    let e = write(FileKind::Params, "", &|s| s.get_mut("fc7_weights").unwrap().dims = vec![10, 256]).unwrap_err();
    assert_eq!(e.to_string(), "tensor fc7_weights has dims [10, 256], the model needs [256, 10]");
    let e = write(FileKind::Params, "", &|s| s.get_mut("conv1_bn_mean").unwrap().data[3] = f32::INFINITY).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor conv1_bn_mean has 1 of 8 values not finite (1 +Inf; the first at index 3); it cannot be used"
    );
}
