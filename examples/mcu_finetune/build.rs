//! Puts `memory.x` where cortex-m-rt's `link.x` finds it, and checks that the assets exist.

use std::path::PathBuf;
use std::{env, fs};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    for f in ["model.rs", "student_f16.tkd", "train.bin", "train_labels.bin", "heldout.bin", "heldout_labels.bin"] {
        let path = PathBuf::from("assets").join(f);
        println!("cargo:rerun-if-changed={}", path.display());
        assert!(
            path.exists(),
            "{} is missing: generate the assets first with\n  cargo run --example finetune_assets\n(from the repository root)",
            path.display()
        );
    }
}
