"""Batch-1 latency of tinykd against onnxruntime in short alternating pairs.

The machines are shared: a model's weights drop out of the L3 cache when a neighbour runs,
which moves a batch-1 latency by 30 % from one minute to the next. A round of
`compare_peers.sh` times each side for a few seconds, tens of seconds apart; here each pair
times tinykd (`tinykd bench infer`, a fresh process) and onnxruntime (the session of
PEERS/ort_bench.py, built once, in this process) back to back over about the same number of
runs, alternating which goes first, and reports every pair's ratio (tinykd ÷ onnxruntime,
below 1 is faster) and their median.

Usage: python3 scripts/infer_pairs.py [--pairs N] [--model mobilenet_v1|mobilenet_v1_0.25|resnet50]
       [--dtype f32|f16] [--tinykd PATH] [--peers DIR]
Needs numpy, onnx, onnxruntime; prints one JSON object last.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {
    # name: (tinykd arguments, ort_bench builder arguments, timed runs per side)
    "mobilenet_v1": (["--model", "mobilenet_v1"], ("mobilenet_v1", 1.0), 1000),
    "mobilenet_v1_0.25": (["--model", "mobilenet_v1", "--scale", "0.25"], ("mobilenet_v1", 0.25), 3000),
    "resnet50": (["--model", "resnet50"], ("resnet50", None), 60),
}


def ours(tinykd, model_args, dtype, iters):
    out = subprocess.run(
        [tinykd, "bench", "infer", *model_args, "--dtype", dtype, "--iters", str(iters)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["ms_median"]


def theirs(session, x, iters):
    for _ in range(max(iters // 20, 3)):
        session.run(None, {"image": x})
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--model", choices=sorted(MODELS), default="mobilenet_v1")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(here, "..", "target")
    p.add_argument("--tinykd", default=os.path.join(target, "release", "tinykd"))
    p.add_argument("--peers", default=os.environ.get("PEERS", os.path.join(here, "..", "..", "shared", "peers")))
    a = p.parse_args()
    if a.pairs < 1:
        p.error("--pairs must be at least 1")
    if not os.access(a.tinykd, os.X_OK):
        p.error(f"no tinykd binary at {a.tinykd} (cargo build --release, or --tinykd PATH)")
    if not os.path.isfile(os.path.join(a.peers, "ort_bench.py")):
        p.error(f"no ort_bench.py in {a.peers} (--peers DIR or PEERS=DIR)")
    sys.path.insert(0, a.peers)
    import numpy as np
    import onnxruntime as ort
    import ort_bench

    model_args, (builder, scale), iters = MODELS[a.model]
    np.random.seed(0)
    graph = ort_bench.mobilenet_v1(scale) if builder == "mobilenet_v1" else ort_bench.resnet50()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    x = np.random.randn(1, 3, 32, 32).astype(np.float32)
    rows = []
    for i in range(a.pairs):
        if i % 2 == 0:
            t, o = ours(a.tinykd, model_args, a.dtype, iters), theirs(session, x, iters)
        else:
            o = theirs(session, x, iters)
            t = ours(a.tinykd, model_args, a.dtype, iters)
        rows.append({"tinykd_ms": round(t, 4), "onnxruntime_ms": round(o, 4), "ratio": round(t / o, 3)})
        print(f"pair {i + 1}: tinykd {t:.4f} ms, onnxruntime {o:.4f} ms, ratio {t / o:.3f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    print(
        json.dumps(
            {
                "model": a.model,
                "dtype": a.dtype,
                "onnxruntime": ort.__version__,
                "pairs": rows,
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "tinykd_faster_in": sum(r < 1 for r in ratios),
            }
        )
    )


if __name__ == "__main__":
    main()
