//! The `tinykd` command line: argument definitions (clap derive), the options shared by every
//! command that names a model, and the entry point that maps errors to exit codes.
//!
//! Exit codes: 0 success; 2 invalid usage (clap's parse errors and [`UsageError`]); 1 any other
//! failure. Every error is printed as one paragraph on stderr, prefixed with `error:`.
//!
//! Public for the binary, its tests and the MCU asset generator, hidden from the API docs: not
//! a library API (its functions return `anyhow` errors and change with the command line).
//! Library code takes [`crate::params`], [`crate::train`], [`crate::dist`], [`crate::fold`] and
//! [`crate::engine`].

pub mod bench;
pub mod bench_gemm;
pub mod data;
pub mod distill;
pub mod eval;
pub mod export;
pub mod fit;
pub mod list_vars;
pub mod model_args;
pub mod paths;
pub mod pipeline;
pub mod summary;
pub mod train;
pub mod weights_io;

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use model_args::{InputSize, ModelArgs, ModelKind, StemArg};

/// `tinykd`: knowledge distillation from host to microcontroller.
#[derive(Parser, Debug)]
#[command(name = "tinykd", version, about, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Datasets in CIFAR-10 binary format: generate the synthetic one, or check a directory.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// List every variable of a model (activations, parameters, statistics) with its shape.
    ListVars(list_vars::Args),
    /// Print a model's parameter and statistic counts, MACs and inference arena size.
    Summary(summary::Args),
    /// Top-1 / top-5 accuracy of weights on a dataset's test split, run by the no_std engine.
    Eval(eval::Args),
    /// Fold batch norm into a params file or checkpoint and write an inference file (f32 or f16).
    Export(export::Args),
    /// Train a model from scratch with cross-entropy (a teacher, or a baseline student).
    Train(train::Args),
    /// Train a student against a frozen teacher on distillation losses.
    Distill(distill::Args),
    /// The main job: synthetic data, teacher, distilled and baseline students, evaluation, export.
    Pipeline(pipeline::Args),
    /// Speed of inference, a training step or a distillation step, as JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Invalid input found after parsing (e.g. an option that does not apply to the model):
/// reported like a clap error, with exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::ListVars(args) => list_vars::run(args),
        Command::Summary(args) => summary::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(args),
        Command::Distill(args) => distill::run(args),
        Command::Pipeline(args) => pipeline::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    if let Err(e) = tinykd_kernels::Isa::from_env() {
        let v = std::env::var("TINYKD_ISA").unwrap_or_default();
        eprintln!("error: {e} (TINYKD_ISA={v:?}; unset it to use the best path the CPU has)");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {e:#}\n\nFor more information, try '--help'.");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The default worker-thread count: every core the process may use.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Writes `text` to stdout; a closed pipe (e.g. `| head`) is not an error.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("cannot write to stdout")),
        _ => Ok(()),
    }
}
