//! Host-side (`std`) parts of tinykd: trainer, data, checkpoints, the command-line tool.

pub mod atomic;
pub mod checkpoint;
// The command's implementation: not a library API (see its module docs).
#[doc(hidden)]
pub mod cli;
pub mod data;
pub mod eval;
pub mod metrics;
pub mod progress;
pub mod read;
