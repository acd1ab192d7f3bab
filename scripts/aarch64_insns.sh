#!/usr/bin/env bash
# Guest instructions per iteration of a `tinykd bench` command in the aarch64 build, counted
# under qemu-user by a small TCG plugin (scripts/qemu_insns/insns.c, plugin API of QEMU 7.2 as
# Debian 12 ships it): what the NEON paths cost where no aarch64 hardware is at hand.
# Instructions, not cycles (qemu's own timings say little: it emulates fcvtl in software, for
# one). Needs gcc, qemu-user and the aarch64 cross toolchain (.ci/run installs them).
#   usage: scripts/aarch64_insns.sh [infer|train-step|distill-step] ARGS...
#   e.g.   scripts/aarch64_insns.sh --model mobilenet_v1 --scale 1.0 --dtype f16      (infer)
#          scripts/aarch64_insns.sh train-step --model mobilenet_v1 --scale 0.25 --batch 16 --threads 1
# The count of 12 timed iterations minus that of 2 (the same setup and warm-up), over 10.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=infer
case "${1:-}" in infer | train-step | distill-step) bench=$1; shift ;; esac
target=${CARGO_TARGET_DIR:-target}
plugin=$target/qemu-insns/libinsns.so
mkdir -p "$(dirname "$plugin")"
gcc -shared -fPIC -O2 -o "$plugin" scripts/qemu_insns/insns.c
cargo build -q --release --target aarch64-unknown-linux-gnu --bin tinykd
bin=${TINYKD_A64_BIN:-$target/aarch64-unknown-linux-gnu/release/tinykd}
count() {
  qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin "$plugin" "$bin" bench "$bench" "$@" 2>&1 >/dev/null \
    | awk '/^guest instructions:/ { print $3 }'
}
lo=$(count "$@" --iters 2)
hi=$(count "$@" --iters 12)
echo "{\"bench\": \"$bench\", \"args\": \"$*\", \"guest_instructions_per_iter\": $(( (hi - lo) / 10 ))}"
