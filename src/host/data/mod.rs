//! Image data for training: the CIFAR-10 binary format (reader, writer, normalisation,
//! augmentation), a built-in synthetic dataset in that format, the replacement of a dataset
//! directory as a whole, and the seeded RNG used for shuffling, augmentation and synthesis.

pub mod cifar;
pub mod replace;
pub mod rng;
pub mod synth;

pub use cifar::{load_cifar_dir, load_cifar_test, write_cifar_file, AugDraw, Augment, DataError, Dataset};
pub use rng::Rng;
