#!/usr/bin/env bash
# Alternating rounds of tinykd and its peers on this machine (the machines are shared and noisy:
# compare within a round). Needs onnxruntime (`pip install numpy onnx onnxruntime`) and, for the
# training rows, PyTorch (`python3 -m venv venv && venv/bin/pip install numpy torch torchvision`,
# then TORCH_PY=venv/bin/python). Usage: bash scripts/compare_peers.sh [rounds] [infer|train|all]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WHAT=${2:-all}
PEERS=${PEERS:-../shared/peers}
TORCH_PY=${TORCH_PY:-python3}
cargo build --release -q
B=target/release/tinykd
[ -n "${CARGO_TARGET_DIR:-}" ] && B=$CARGO_TARGET_DIR/release/tinykd
med() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)[sys.argv[1]], 4))' "$1"; }
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  if [ "$WHAT" != train ]; then
    for args in "mobilenet_v1 --iters 2000" "mobilenet_v1 --iters 2000 --dtype f16" \
                "mobilenet_v1 --scale 0.25 --iters 5000" "resnet50 --iters 100" "resnet50 --iters 100 --dtype f16"; do
      # shellcheck disable=SC2086
      echo "tinykd infer $args: $($B bench infer --model $args | med ms_median) ms"
    done
    echo "onnxruntime: $(python3 "$PEERS/ort_bench.py" 1)"
  fi
  if [ "$WHAT" != infer ]; then
    d=$($B bench distill-step --model mobilenet_v1 --threads 2 --iters 8)
    echo "tinykd distill-step: $(echo "$d" | med images_per_s) img/s (teacher forward $(echo "$d" | med teacher_fwd_images_per_s) img/s)"
    echo "tinykd train-step: $($B bench train-step --model mobilenet_v1 --threads 2 --iters 8 | med images_per_s) img/s"
    echo "pytorch: $("$TORCH_PY" "$PEERS/torch_distill.py" 2 2>&1 | tail -1)"
    # The main job's teacher phase: a ResNet50 train step (our peer script, scripts/).
    echo "tinykd train-step resnet50: $($B bench train-step --model resnet50 --threads 2 --iters 6 | med images_per_s) img/s"
    echo "pytorch resnet50: $("$TORCH_PY" scripts/torch_resnet50_train.py 2 5 2>&1 | tail -1)"
  fi
done
