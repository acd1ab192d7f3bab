//! # tinykd-kernels
//!
//! `#![no_std]`, allocation-free, fixed-shape compute kernels — forward **and** backward — for
//! every layer MobileNetV1 and ResNet50 need, with f32 compute over f32 or f16 storage.
//!
//! Conventions (see `docs/ARCHITECTURE.md` in the repository):
//! - activations are NHWC; weight layouts are given in [`shape`];
//! - every kernel is a safe function over slices plus a small `Copy` shape struct; lengths are
//!   checked once and a mismatch is a [`KernelError`], never a panic;
//! - outputs and scratch are caller-provided; scratch lengths come from `const fn`s;
//! - the ISA path is chosen once ([`Isa::detect`]) and passed explicitly as the first argument;
//!   the scalar path is the specification and every SIMD path is tested against it.
//!
//! Features: `std` (runtime CPU detection; otherwise compile-time `target_feature`).
#![no_std]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod calib;
pub mod elem;
pub mod error;
pub mod gemm;
pub mod isa;
pub mod shape;

pub mod act;
pub mod conv;
pub mod convert;
pub mod dwconv;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod pool;

pub use elem::{f16, DType, Elem};
pub use error::{KernelError, Result};
pub use isa::{Isa, IsaKind};
