//! # tinykd
//!
//! Knowledge distillation from a host-side training run to a microcontroller: models as named
//! static programs, a memory planner and static arenas, an allocation-free inference engine and
//! weight files (all `no_std`); distillation losses; and, behind the `std` feature, the host
//! trainer, data, checkpoints and the `tinykd` command-line tool.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod config;

pub use config::{Arch, ModelConfig, Stem};
pub use tinykd_kernels as kernels;

pub mod crc32;
pub mod weights;

mod arena;
pub mod engine;
pub mod finetune;
#[cfg(feature = "std")]
pub mod fold;
pub mod graph;
pub mod models;
#[cfg(feature = "std")]
pub mod params;
pub mod plan;

#[cfg(feature = "std")]
pub mod dist;
#[cfg(feature = "std")]
pub mod host;
#[cfg(feature = "std")]
pub mod train;
