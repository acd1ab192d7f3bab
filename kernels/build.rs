//! Defines `cfg(tinykd_m4f)`: the target is a bare-metal, little-endian, hard-float Arm
//! M-profile core (e.g. `thumbv7em-none-eabihf`), where the scalar `Isa` runs the Cortex-M4F
//! kernels (`*/m4.rs`). Stable Rust has no cfg for Arm FPU features; having no 64-bit atomics
//! is what separates M-profile from A/R-profile Arm targets.

use std::env::var;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tinykd_m4f)");
    let is = |key: &str, want: &str| var(key).is_ok_and(|v| v == want);
    let atomic64 = var("CARGO_CFG_TARGET_HAS_ATOMIC").is_ok_and(|v| v.split(',').any(|w| w == "64"));
    if is("CARGO_CFG_TARGET_ARCH", "arm")
        && is("CARGO_CFG_TARGET_OS", "none")
        && is("CARGO_CFG_TARGET_ABI", "eabihf")
        && is("CARGO_CFG_TARGET_ENDIAN", "little")
        && !atomic64
    {
        println!("cargo::rustc-cfg=tinykd_m4f");
    }
}
