#!/usr/bin/env bash
# Checks tinykd's training and inference math against PyTorch: records two steps of the
# tutorial's distillation (ResNet50 teacher, MobileNetV1 student, cross-entropy + L2 hint +
# soft label + FSP, Momentum with weight decay, two threads), two steps of ResNet50 trained
# alone, and the engine's logits (`cargo run --release --example crosscheck`), then
# re-computes every loss, activation, gradient, update and logit in PyTorch in float64
# (`scripts/torch_crosscheck.py`, which prints a table per run and fails on any tensor further
# off than PyTorch's own float32, times 4).
#
# Usage: bash scripts/torch_crosscheck.sh [BATCH]   (default 8; 64 is the tutorial's, ~2 min)
# PYTHON: an interpreter with torch and numpy (default python3). Not part of CI: PyPI's torch
# is a ~5 GB CUDA install; a CPU-only build needs download.pytorch.org.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
  echo "error: $py cannot import torch and numpy; set PYTHON to an interpreter that can" \
    "(e.g. python3 -m venv v && v/bin/pip install torch numpy, then PYTHON=v/bin/python)" >&2
  exit 2
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo run -q --release --example crosscheck -- "$dir" ${1:+"$1"}
"$py" scripts/torch_crosscheck.py "$dir"
