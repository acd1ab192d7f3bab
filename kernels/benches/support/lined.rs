//! Bench operands on cache lines, as the trainer's and the engine's tensors are. A large
//! `Vec<f32>` from the system allocator starts 16 bytes past a line, so every other zmm load
//! of it straddles two lines and the AVX-512 paths timed a few percent low on such operands.
//! Shared by `kernels/benches/gemm.rs` and the root crate's `benches/kernels.rs` (`#[path]`).

use std::ops::{Deref, DerefMut};

/// Bytes per cache line.
const LINE: usize = 64;

/// `len` values of `E` whose first one starts a 64-byte line.
pub struct Lined<E> {
    buf: Vec<E>,
    start: usize,
    len: usize,
}

impl<E: Copy> Lined<E> {
    /// `len` copies of `v`.
    pub fn filled(len: usize, v: E) -> Self {
        let pad = LINE / core::mem::size_of::<E>();
        let buf = vec![v; len + pad];
        let start = buf.as_ptr().align_offset(LINE);
        assert!(start <= pad, "a Vec<E> is at least E-aligned, so a line starts within {pad} elements");
        Lined { buf, start, len }
    }

    /// The values of `src`, copied onto a line.
    pub fn from_slice(src: &[E]) -> Self {
        let Some(&first) = src.first() else { return Lined { buf: Vec::new(), start: 0, len: 0 } };
        let mut x = Lined::filled(src.len(), first);
        x.copy_from_slice(src);
        x
    }
}

impl<E> Deref for Lined<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<E> DerefMut for Lined<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        &mut self.buf[self.start..self.start + self.len]
    }
}
