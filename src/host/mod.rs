//! Host-side (`std`) parts of tinykd: trainer, data, checkpoints, the command-line tool.

pub mod atomic;
