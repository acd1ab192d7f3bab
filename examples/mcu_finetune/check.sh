#!/usr/bin/env bash
# On-device fine-tuning check (called from .ci/run; about 1-3 minutes with the tools installed,
# most of it building):
#  0. installs what is missing (examples/firmware_tools.sh, shared with examples/mcu/check.sh:
#     the thumbv7em target, qemu-system-arm, binutils, defmt-print; and python3, which compares);
#  1. writes the firmware's inputs and the host's expected results
#     (`cargo run --example finetune_assets`: same tinykd::finetune code, scalar path);
#  2. builds the firmware (release, thumbv7em-none-eabihf, source paths remapped as for
#     examples/mcu) and runs it in QEMU (mps2-an386) with a timeout; prints its flash sections;
#  3. fails unless the firmware passed (held-out accuracy rose by at least its MIN_RISE), the
#     held-out counts match the host's exactly, and every step's loss and the updated
#     parameters' checksums (sum, sum of |p|, first, last) match the host's within 1e-5
#     (relative to max(1, |host|)).
# Usage: examples/mcu_finetune/check.sh [--features tail-fc|tail-sep]   (from anywhere)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
QEMU_TIMEOUT=${QEMU_TIMEOUT:-120}

usage() { echo "usage: $0 [--features tail-fc|tail-sep]   (default: the fc + affine tail)" >&2; exit "${1:-2}"; }
features=()
tail="fc_affine"
while [ $# -gt 0 ]; do
  case "$1" in
    --features=*) feature="${1#--features=}"; shift ;;
    --features) [ $# -ge 2 ] || usage; feature="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "check.sh: unexpected argument '$1'" >&2; usage ;;
  esac
  case "$feature" in
    tail-fc) tail="fc" ;;
    tail-sep) tail="fc_sep" ;;
    *) echo "check.sh: unknown feature '$feature'" >&2; usage ;;
  esac
  [ ${#features[@]} -eq 0 ] || { echo "check.sh: one --features at most" >&2; usage; }
  features=(--features "$feature")
done

source "$root/examples/firmware_tools.sh"
firmware_tools python3

(cd "$root" && CARGO_TARGET_DIR="$target" cargo run -q --example finetune_assets -- --out "$here/assets" > /dev/null)

fw_target="$target/mcu_finetune"
status=0
(cd "$here" && CARGO_TARGET_DIR="$fw_target" firmware_cargo build -q --release "${features[@]}") || status=$?
if [ "$status" -ne 0 ]; then
  echo "check.sh: the firmware build failed (cargo exit status $status)" >&2
  exit 1
fi
elf="$fw_target/thumbv7em-none-eabihf/release/tinykd-mcu-finetune"
size_of() {
  local hex
  hex=$(readelf -S -W "$elf" | sed -E 's/^ *\[ *[0-9]+\] *//' | awk -v s="$1" '$1 == s { print $5 }')
  echo $(( 16#${hex:-0} ))
}
echo "flash: .vector_table $(size_of .vector_table) B, .text $(size_of .text) B, .rodata $(size_of .rodata) B (mostly the f16 weights and the samples), .data $(size_of .data) B"

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
(cd "$here" && timeout "$QEMU_TIMEOUT" ./qemu-run.sh "$elf") > "$out" 2>&1 || status=$?
cat "$out"
if [ "$status" -ne 0 ]; then
  echo "check.sh: the firmware run failed: exit status $status (1 = the firmware's check failed, 101 = a panic, 124 = timeout after ${QEMU_TIMEOUT}s)" >&2
  exit 1
fi

python3 - "$here/assets/expected_$tail.txt" "$out" <<'PY'
import re, sys
expected, device = (open(p).read() for p in sys.argv[1:3])

def fields(text):
    """key -> list of numbers, for the lines both sides print."""
    out = {}
    for line in text.splitlines():
        line = re.sub(r"^\s*(INFO|ERROR|WARN)\s+", "", line)
        m = re.match(r"^(before|after|params|step \d+|tail)\b(.*)$", line)
        if m:
            out[m.group(1)] = [float(v) for v in re.findall(r"=(-?[0-9.eE+-]+)", m.group(2))]
    return out

want, got = fields(expected), fields(device)
bad = []
for key, w in want.items():
    g = got.get(key)
    if g is None or len(g) < len(w):
        bad.append(f"{key}: missing on the device")
        continue
    exact = key in ("before", "after", "tail")
    for a, b in zip(g, w):
        if (a != b) if exact else abs(a - b) > 1e-5 * max(1.0, abs(b)):
            bad.append(f"{key}: device {g[:len(w)]} host {w}")
            break
if bad:
    print("check.sh: device and host disagree:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"check.sh: device matches host on {len(want)} lines (counts exact, losses and parameters within 1e-5)")
PY
