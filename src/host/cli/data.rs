//! `tinykd data synth` and `tinykd data check`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{emit, UsageError};
use crate::host::data::cifar::{self, NUM_CLASSES};
use crate::host::data::synth;

/// Largest synthetic split accepted (3 GB of pixels).
const MAX_SYNTH_IMAGES: u64 = 1_000_000;

/// `tinykd data ...`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Generate the built-in synthetic 10-class dataset in CIFAR-10 binary format.
    Synth(SynthArgs),
    /// Load a CIFAR-10 binary directory and print its image counts per class.
    Check(CheckArgs),
}

/// `tinykd data synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output directory (created if needed); receives data_batch_1.bin.., test_batch.bin, batches.meta.txt.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Training images (1..=1000000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_SYNTH_IMAGES), value_name = "N")]
    pub train: u64,
    /// Test images (1..=1000000).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=MAX_SYNTH_IMAGES), value_name = "N")]
    pub test: u64,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
}

/// `tinykd data check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The dataset directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

/// Runs a `data` subcommand.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Synth(a) => run_synth(a),
        DataCommand::Check(a) => run_check(a),
    }
}

fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    if a.out.exists() && !a.out.is_dir() {
        return Err(UsageError(format!("--out {} exists and is not a directory", a.out.display())).into());
    }
    let start = std::time::Instant::now();
    synth::write_synth_dir(&a.out, a.train as usize, a.test as usize, a.seed)
        .with_context(|| format!("cannot write the synthetic dataset to {}", a.out.display()))?;
    emit(&format!(
        "wrote {} training and {} test images (seed {}) to {} in {:.2} s\n",
        a.train,
        a.test,
        a.seed,
        a.out.display(),
        start.elapsed().as_secs_f64()
    ))
}

fn run_check(a: CheckArgs) -> anyhow::Result<()> {
    let (train, test) = cifar::load_cifar_dir(&a.data)?;
    let (tc, ec) = (train.class_counts(), test.class_counts());
    let width = train.class_names.iter().map(String::len).max().unwrap_or(5).max(5);
    let mut s = String::new();
    let _ = writeln!(s, "{}: {} training images, {} test images", a.data.display(), train.len(), test.len());
    let _ = writeln!(s, "{:>5}  {:<width$}  {:>8}  {:>8}", "label", "class", "train", "test");
    for k in 0..NUM_CLASSES {
        let _ = writeln!(s, "{k:>5}  {:<width$}  {:>8}  {:>8}", train.class_names[k], tc[k], ec[k]);
    }
    emit(&s)
}
