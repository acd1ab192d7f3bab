//! # tinykd
//!
//! Knowledge distillation from a host-side training run to a microcontroller: models as named
//! static programs, a memory planner and static arenas, an allocation-free inference engine and
//! weight files (all `no_std`); distillation losses; and, behind the `std` feature, the host
//! trainer, data, checkpoints and the `tinykd` command-line tool.
//!
//! ## The workflow, by module
//!
//! | step | where |
//! |---|---|
//! | a model's program (MobileNetV1 at any width, ResNet50; 32x32x3 in, 10 classes by default) | [`ModelConfig`], [`models::program`], [`models::find_var`] |
//! | its parameters: initialised, loaded, saved | [`params::ParamStore`] (`init`, `from_weight_file`, `save`) |
//! | teacher and student in one name space, teacher frozen, its tensors `teacher_*` | [`dist::merge`] |
//! | losses: cross-entropy, l2 hint, FSP, soft label, your own | [`dist::Loss`] |
//! | Momentum SGD over the student, multi-threaded, deterministic | [`train::Trainer`], [`train::TrainConfig`], [`train::Schedule`] |
//! | data: CIFAR-10 binary files, the built-in dataset | [`host::data`], or your own [`train::DataSource`] |
//! | batch norm folded into the convs, f32 or f16 file | [`fold::export_inference`] |
//! | inference without allocation (also in a firmware) | [`weights::WeightFile`], [`engine::Engine`], [`plan`] |
//! | the exported file's accuracy on a dataset, by that engine | [`host::eval::evaluate`] |
//! | fine-tuning the last layers on the device | [`finetune`] |
//!
//! The `tinykd` command runs the same steps (`tinykd pipeline`); `examples/distill.rs` is
//! PaddleSlim's tutorial (ResNet50 teacher, l2 hint) in code, `examples/mcu` a firmware.
//!
//! ## Example
//!
//! A teacher and a student, a distillation step, the student exported with f16 weights and
//! run on the engine a microcontroller runs (a real teacher is trained first and loaded with
//! [`params::ParamStore::from_weight_file`]):
//!
//! ```
//! # #[cfg(feature = "std")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tinykd::dist::{merge, Loss};
//! use tinykd::engine::Engine;
//! use tinykd::kernels::{DType, Isa};
//! use tinykd::params::ParamStore;
//! use tinykd::train::{Schedule, TrainConfig, Trainer};
//! use tinykd::weights::{AlignedBuf, WeightFile};
//! use tinykd::{fold, models, ModelConfig};
//!
//! // MobileNetV1 ×0.5 teaches MobileNetV1 ×0.25 (widths are given in thousandths).
//! let (tcfg, scfg) = (ModelConfig::mobilenet_v1(500), ModelConfig::mobilenet_v1(250));
//! let (teacher, student) = (models::program(&tcfg)?, models::program(&scfg)?);
//! let (tparams, sparams) = (ParamStore::init(&tcfg, 1)?, ParamStore::init(&scfg, 2)?);
//!
//! // The teacher reads the student's `image`; its tensors are `teacher_<name>`.
//! let merged = merge((&teacher, &tparams), &student, &[("image", "image")], "teacher_")?;
//! let losses = [Loss::ce(), Loss::soft_label("teacher_fc7", "fc7", 4.0, 4.0).weighted(0.5)];
//! let cfg = TrainConfig { batch_size: 4, threads: 1, schedule: Schedule::constant(0.05)?, ..Default::default() };
//! let mut trainer = Trainer::new(merged, sparams, &losses, cfg)?;
//!
//! // One step on a batch of 4 NHWC images (normalised pixels) and their labels.
//! let images: Vec<f32> = (0..4 * 32 * 32 * 3).map(|i| ((i % 255) as f32 - 127.5) / 127.5).collect();
//! let report = trainer.step(&images, &[0, 1, 2, 3])?;
//! println!("loss {:.3}", report.losses.total);
//!
//! // Batch norm folded, f16 weights; the engine takes the file's bytes in place.
//! let bytes = fold::export_inference(trainer.params(), DType::F16)?;
//! let buf = AlignedBuf::from_bytes(&bytes);
//! let file = WeightFile::parse(buf.as_bytes())?;
//! let engine = Engine::new(&scfg, 1, &file)?;
//! let mut arena = vec![0u8; engine.arena_bytes()];
//! let mut logits = [0.0f32; 10];
//! engine.run(Isa::detect(), &images[..32 * 32 * 3], &mut arena, &mut logits)?;
//! assert!(logits.iter().all(|v| v.is_finite()));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "std"))]
//! # fn main() {}
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

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
