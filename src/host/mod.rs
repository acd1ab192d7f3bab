//! Host-side (`std`) parts of tinykd: trainer, data, checkpoints, the command-line tool.

pub mod atomic;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod metrics;
pub mod progress;
pub mod read;
