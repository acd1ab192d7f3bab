//! `tinykd data synth` and `tinykd data check`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::ProgressBar;

use super::{emit, UsageError};
use crate::host::data::cifar::{self, NUM_CLASSES};
use crate::host::data::synth;
use crate::host::progress;

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
    /// Output directory, created or replaced as a whole (an existing one may hold only dataset
    /// files): receives data_batch_1.bin.., test_batch.bin, batches.meta.txt.
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

/// `tinykd data synth`: generates the dataset, showing progress on stderr.
fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    if a.out.exists() && !a.out.is_dir() {
        return Err(UsageError(format!("--out {} exists and is not a directory", a.out.display())).into());
    }
    let start = std::time::Instant::now();
    let mut progress = SynthProgress::new(&a, std::io::stderr().is_terminal());
    synth::write_synth_dir_with_progress(&a.out, a.train as usize, a.test as usize, a.seed, &mut |n| {
        progress.advance(n)
    })
    .with_context(|| format!("cannot write the synthetic dataset to {}", a.out.display()))?;
    drop(progress);
    emit(&format!(
        "wrote {} training and {} test images (seed {}) to {} in {:.2} s\n",
        a.train,
        a.test,
        a.seed,
        a.out.display(),
        start.elapsed().as_secs_f64()
    ))
}

/// Progress of `data synth` on stderr, shown from the generator's first report (so a run
/// refused before it starts prints only its error): a bar of images generated when stderr is a
/// terminal, else one line saying what is generated and where. The bar is cleared when dropped.
struct SynthProgress {
    /// What is generated and where.
    what: String,
    /// Images in all.
    total: u64,
    /// Draw a bar (else print one line).
    live: bool,
    /// Whether the run was announced.
    started: bool,
    /// The bar, once drawn.
    bar: Option<ProgressBar>,
}

impl SynthProgress {
    /// A display for the run `a`, with a bar when `live`.
    fn new(a: &SynthArgs, live: bool) -> Self {
        let what = format!(
            "generating {} training and {} test images (seed {}) in {}",
            a.train,
            a.test,
            a.seed,
            a.out.display()
        );
        SynthProgress { what, total: a.train + a.test, live, started: false, bar: None }
    }

    /// Counts `n` more images generated, announcing the run on the first call.
    fn advance(&mut self, n: usize) {
        if !self.started {
            self.started = true;
            self.announce();
        }
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    /// Draws the bar (`live`) or prints the line.
    fn announce(&mut self) {
        if !self.live {
            eprintln!("{}", self.what);
            return;
        }
        let bar = progress::bar(self.total, "{msg} [{bar:30.cyan/blue}] {pos}/{len} eta {eta}");
        bar.set_message(self.what.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }
}

impl Drop for SynthProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `tinykd data check`: loads the directory and prints its counts per class.
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
