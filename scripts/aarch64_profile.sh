#!/usr/bin/env bash
# Flat profile of a `tinykd bench` command in the aarch64 build under qemu-user: guest
# instructions per function (a TCG plugin counts per translated block,
# scripts/qemu_insns/profile.c; blocks are mapped to symbols with aarch64-linux-gnu-nm). Includes
# the setup (model init, packing), so give the bench enough iterations to dominate it.
#   usage: scripts/aarch64_profile.sh [infer|train-step|distill-step] ARGS...
#   e.g.   scripts/aarch64_profile.sh --model mobilenet_v1 --scale 0.25 --iters 400
set -euo pipefail
cd "$(dirname "$0")/.."
bench=infer
case "${1:-}" in infer | train-step | distill-step) bench=$1; shift ;; esac
target=${CARGO_TARGET_DIR:-target}
plugin=$target/qemu-insns/libprofile.so
mkdir -p "$(dirname "$plugin")"
gcc -shared -fPIC -O2 -o "$plugin" scripts/qemu_insns/profile.c
cargo build -q --release --target aarch64-unknown-linux-gnu --bin tinykd
bin=${TINYKD_A64_BIN:-$target/aarch64-unknown-linux-gnu/release/tinykd}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin "$plugin,out=$out" "$bin" bench "$bench" "$@" >/dev/null
# qemu-user loads a 64-bit PIE guest at 0x5500000000.
python3 - "$bin" "$out" <<'PY'
import bisect, collections, subprocess, sys
binary, prof = sys.argv[1], sys.argv[2]
syms = sorted(
    (int(a, 16), name)
    for a, kind, name in (
        l.split(" ", 2) for l in subprocess.run(
            ["aarch64-linux-gnu-nm", "-C", "--defined-only", binary], capture_output=True, text=True, check=True
        ).stdout.splitlines() if l.count(" ") >= 2
    )
    if kind in "tTwW"
)
addrs = [a for a, _ in syms]
per = collections.Counter()
for line in open(prof):
    v, c = line.split()
    i = bisect.bisect_right(addrs, int(v, 16) - 0x55_0000_0000) - 1
    per[syms[i][1] if i >= 0 else "?"] += int(c)
total = sum(per.values())
for name, c in per.most_common(20):
    print(f"{100 * c / total:5.1f} % {c:>14,} {name[:120]}")
print(f"total {total:,} guest instructions")
PY
