#!/usr/bin/env bash
# On-device fine-tuning check (called from .ci/run; about 1-3 minutes, most of it building):
#  1. writes the firmware's inputs and the host's expected results
#     (`cargo run --example finetune_assets`: same tinykd::finetune code, scalar path);
#  2. builds the firmware (release, thumbv7em-none-eabihf) and runs it in QEMU (mps2-an386);
#  3. fails unless the firmware passed (held-out accuracy rose by at least its MIN_RISE), the
#     held-out counts match the host's exactly, and every step's loss and the updated
#     parameters' checksums (sum, sum of |p|, first, last) match the host's within 1e-5
#     (relative to max(1, |host|)).
# Usage: examples/mcu_finetune/check.sh [--features tail-fc|tail-sep]   (from anywhere)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
features=("$@")
tail="fc_affine"
case "${features[*]:-}" in
  *tail-fc*) tail="fc" ;;
  *tail-sep*) tail="fc_sep" ;;
esac

(cd "$root" && CARGO_TARGET_DIR="$target" cargo run -q --example finetune_assets -- --out "$here/assets" > /dev/null)
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
(cd "$here" && CARGO_TARGET_DIR="$target/mcu_finetune" cargo run -q --release "${features[@]}") > "$out" 2>&1 || status=$?
cat "$out"
if [ "$status" -ne 0 ]; then
  echo "check.sh: firmware exited with status $status" >&2
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
