//! `WeightFile::parse` on arbitrary bytes: it must return `Ok` or `Err`, never panic, and
//! everything an `Ok` file hands out must be consistent and re-writable; then the firmware's
//! path: `Engine::new` over the file's own config (mostly config, program, schedule, plan and
//! tensor-binding checks, as a fuzzed file rarely holds a whole model) and, if it binds and
//! its arena is small, a forward pass.
//!
//! Input: one mode byte, then the file. Mode bit 0 "reseals" the file (writes the real length
//! and CRC-32 into the header) so mutations get past the checksum and reach the table checks;
//! bit 1 also parses a copy placed one byte off alignment, which must be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinykd::crc32::Crc32;
use tinykd::engine::Engine;
use tinykd::kernels::Isa;
use tinykd::weights::{self, AlignedBuf, TensorData, TensorOut, WeightFile, HEADER_LEN};

/// Header offsets of the file length and the CRC (docs/FORMAT.md).
const FILE_LEN_AT: usize = 24;
const CRC_AT: usize = 36;

fn reseal(b: &mut [u8]) {
    if b.len() < HEADER_LEN {
        return;
    }
    let len = b.len() as u64;
    b[FILE_LEN_AT..FILE_LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    b[CRC_AT..CRC_AT + 4].fill(0);
    let crc = Crc32::new().update(b).finish();
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Every tensor is reachable, consistent, and the writer accepts what the reader accepted.
fn exercise(f: &WeightFile) {
    let _ = format!("{f:?}");
    let tensors: Vec<_> = f.iter().collect();
    assert_eq!(tensors.len(), f.len(), "iterator yields every tensor");
    let mut owned = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        assert_eq!(t.dims.numel(), t.data.len(), "dims match data of tensor {i}");
        assert_eq!(t.data.dtype(), f.dtype());
        assert_eq!(f.get(t.name).map(|g| g.data.len()), Some(t.data.len()));
        let _ = t.dims.to_string();
        let values: Vec<f32> = (0..t.data.len()).map(|k| t.data.get(k).expect("in range")).collect();
        assert!(t.data.get(t.data.len()).is_none());
        let dims: Vec<usize> = t.dims.as_slice().iter().map(|&d| d as usize).collect();
        owned.push((t.name, dims, values));
    }
    assert!(f.tensor(f.len()).is_none());
    let outs: Vec<TensorOut> = owned.iter().map(|(name, dims, data)| TensorOut { name, dims, data }).collect();
    let bytes = weights::to_bytes(&f.config(), f.kind(), f.dtype(), &outs).expect("the writer accepts a parsed file");
    let buf = AlignedBuf::from_bytes(&bytes);
    let again = WeightFile::parse(&buf).expect("a rewritten file parses");
    assert_eq!(again.len(), f.len());
    for (a, b) in again.iter().zip(f.iter()) {
        assert_eq!((a.name, a.dims), (b.name, b.dims));
        if let (TensorData::F32(x), TensorData::F32(y)) = (a.data, b.data) {
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "f32 data survives a rewrite");
        }
    }
}

/// Largest arena the forward pass is tried with.
const MAX_ARENA: usize = 64 << 20;

fn engine(f: &WeightFile) {
    let cfg = f.config();
    match Engine::new(&cfg, 1, f) {
        Ok(e) if e.arena_bytes() <= MAX_ARENA => {
            let input = vec![0.0f32; cfg.in_h as usize * cfg.in_w as usize * cfg.in_c as usize];
            let mut arena = vec![0u8; e.arena_bytes()];
            let mut logits = vec![0.0f32; cfg.classes as usize];
            e.run(Isa::detect(), &input, &mut arena, &mut logits).expect("a bound engine runs");
        }
        Ok(_) => {}
        Err(e) => {
            let _ = format!("{e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let mut bytes = body.to_vec();
    if mode & 1 == 1 {
        reseal(&mut bytes);
    }
    let buf = AlignedBuf::from_bytes(&bytes);
    match WeightFile::parse(&buf) {
        Ok(f) => {
            exercise(&f);
            engine(&f);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if mode & 2 == 2 {
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let buf = AlignedBuf::from_bytes(&shifted);
        assert!(WeightFile::parse(&buf[1..]).is_err(), "a misaligned file is refused");
    }
});
