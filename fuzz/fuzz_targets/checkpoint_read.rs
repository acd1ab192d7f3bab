//! `Checkpoint::from_bytes` on arbitrary bytes: `Ok` or `Err`, never a panic or an
//! allocation the input's size does not justify; an `Ok` checkpoint re-serialises to a
//! fixed point.
//!
//! Input: one mode byte, then the file. Mode bit 0 "reseals" it (magic, version, payload
//! length and trailing CRC-32 made right) so mutations reach the payload parser.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tinykd::crc32::crc32;
use tinykd::host::checkpoint::{Checkpoint, MAGIC, VERSION};

/// Magic, version and payload length.
const HEADER_LEN: usize = 20;

fn reseal(body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    if b.len() < HEADER_LEN {
        b.resize(HEADER_LEN, 0);
    }
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let payload = (b.len() - HEADER_LEN) as u64;
    b[12..20].copy_from_slice(&payload.to_le_bytes());
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let bytes = if mode & 1 == 1 { reseal(body) } else { body.to_vec() };
    let path = Path::new("fuzz.ckpt");
    match Checkpoint::from_bytes(&bytes, path) {
        Ok(c) => {
            let _ = c.tensor("conv1_weights");
            let out = c.to_bytes().expect("a parsed checkpoint serialises");
            let back = Checkpoint::from_bytes(&out, path).expect("a re-serialised checkpoint parses");
            assert_eq!(back.to_bytes().expect("serialises"), out, "serialisation is a fixed point");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
