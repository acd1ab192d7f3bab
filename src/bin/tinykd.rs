//! The `tinykd` command-line tool; everything lives in [`tinykd::host::cli`].

fn main() -> std::process::ExitCode {
    tinykd::host::cli::main()
}
