//! The model options shared by every command (`--model --scale --classes --stem --input`),
//! parsed by clap from arbitrary argument lists (input split at NUL bytes) and converted with
//! `ModelArgs::to_config`: `Ok` or a usage error, never a panic; an accepted configuration
//! builds its program.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use tinykd::host::cli::model_args::describe;
use tinykd::host::cli::ModelArgs;
use tinykd::models;

#[derive(Parser, Debug)]
#[command(name = "tinykd")]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let argv = std::iter::once("tinykd").chain(text.split('\0'));
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.render().to_string();
            return;
        }
    };
    match args.model.to_config() {
        Ok(cfg) => {
            let _ = describe(&cfg);
            let prog = models::program(&cfg).expect("an accepted configuration builds");
            assert_eq!(prog.config, cfg);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
