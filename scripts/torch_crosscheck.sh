#!/usr/bin/env bash
# Checks tinykd's training, fine-tuning and inference math against PyTorch: records four runs
# (`cargo run --release --example crosscheck`): two steps of the tutorial's distillation with
# every loss (ResNet50 teacher, MobileNetV1 1.0 student), of an odd-width CIFAR-stem student
# with CE + soft labels, of ResNet50 trained alone, and of the on-device fine-tuner's three
# tails from an f16 file, plus the engine's logits; then `scripts/torch_crosscheck.py`
# re-computes every loss, activation, gradient, update and logit in PyTorch in float64 and
# fails on any tensor further off than PyTorch's own float32 times 4 (or 1e-4, whichever is
# larger), printing a table per run.
#
# Usage: bash scripts/torch_crosscheck.sh [BATCH]   (default 8; 64 is the tutorial's, ~2 min)
# PYTHON: an interpreter with torch and numpy (default python3). KEEP=1 keeps the recording
# (its directory is printed) to inspect a failure. Not part of CI: PyPI's torch is a ~5 GB
# CUDA install; a CPU-only build needs download.pytorch.org.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
  echo "error: $py cannot import torch and numpy; set PYTHON to an interpreter that can" \
    "(e.g. python3 -m venv v && v/bin/pip install torch numpy, then PYTHON=v/bin/python)" >&2
  exit 2
fi
dir=$(mktemp -d)
if [ -n "${KEEP:-}" ]; then
  echo "recording in $dir (kept)"
else
  trap 'rm -rf "$dir"' EXIT
fi
cargo run -q --release --example crosscheck -- "$dir" ${1:+"$1"}
"$py" scripts/torch_crosscheck.py "$dir"
