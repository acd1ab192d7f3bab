#!/usr/bin/env bash
# Checks tinykd's training, fine-tuning and inference math against an independent float64
# reference: records four runs (`cargo run --release --example crosscheck`): two steps of the
# tutorial's distillation with every loss (ResNet50 teacher, MobileNetV1 1.0 student), of an
# odd-width CIFAR-stem student with CE + soft labels, of ResNet50 trained alone, and of the
# on-device fine-tuner's three tails from an f16 file, plus the engine's logits; then
# re-computes every loss, activation, gradient, update and logit and fails on any tensor
# further off than the reference's own float32 times 4 (or 1e-4, whichever is larger),
# printing a table per run.
#
# Usage: bash scripts/crosscheck.sh torch|numpy [BATCH]   (batch 8 by default; 64 is the
# tutorial's, ~2 min)
#   torch: scripts/torch_crosscheck.py, PyTorch's ops and autograd (PYTHON: an interpreter with
#          torch and numpy, default python3; not in CI: PyPI's torch is a ~5 GB CUDA install).
#   numpy: scripts/numpy_crosscheck.py, the ops' forward and backward written out in numpy (the
#          backward itself checked by central differences); CI runs it.
# KEEP=1 keeps the recording (its directory is printed) to inspect a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
case "${1:-}" in
  torch) mods="torch, numpy" ;;
  numpy) mods="numpy" ;;
  *) echo "usage: bash scripts/crosscheck.sh torch|numpy [BATCH]" >&2; exit 2 ;;
esac
if ! "$py" -c "import $mods" 2>/dev/null; then
  echo "error: $py cannot import $mods; set PYTHON to an interpreter that can" \
    "(torch: python3 -m venv v && v/bin/pip install torch numpy, then PYTHON=v/bin/python;" \
    "numpy: apt-get install python3-numpy)" >&2
  exit 2
fi
dir=$(mktemp -d)
if [ -n "${KEEP:-}" ]; then
  echo "recording in $dir (kept)"
else
  trap 'rm -rf "$dir"' EXIT
fi
cargo run -q --release --example crosscheck -- "$dir" ${2:+"$2"}
"$py" "scripts/$1_crosscheck.py" "$dir"
