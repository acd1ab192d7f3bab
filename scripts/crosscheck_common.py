"""What `torch_crosscheck.py` and `numpy_crosscheck.py` share: the bounds, reading a recording
of `cargo run --release --example crosscheck -- DIR`, the checks of what DESIGN.md fixes, the
comparison of a tensor with its float64 reference, and the driver over the recorded runs.
Needs numpy only."""
import json
import os
import sys

import numpy as np

FACTOR = 4.0  # tinykd's error may be this many times the reference's own float32 error ...
FLOOR = 1e-4  # ... or this, whichever is larger
FLIP_BOUND = 1e-4  # a ReLU decided otherwise may lie this far from 0 (in RMS of its input), or more

# What DESIGN.md fixes, checked here rather than taken from tinykd's manifest: trainable
# parameter counts, batch norm's eps and momentum, ResNet50 v1.5 (the stride on branch2b).
PARAMS = {"mobilenet_v1 1.0": 3_217_226, "resnet50": 23_528_522}
RUNS = {"distill", "distill_odd", "resnet50", "finetune"}

GROUPS = [
    ("loss", "loss values"),
    ("teacher", "teacher tensors the losses read (eval, BN folded)"),
    ("activation", "student activations (train mode)"),
    ("grad", "student parameter gradients"),
    ("velocity", "momentum buffers after the update"),
    ("after", "change of parameters and statistics in the update"),
    ("engine", "engine logits (f32 and f16 files, BN folded)"),
]


def load(d, name):
    """A recorded blob (little-endian f32) as float64."""
    return np.fromfile(os.path.join(d, name), dtype="<f4").astype(np.float64)


def load_store_np(d, entry):
    """{name: float64 array of its dims} from a blob and its layout."""
    raw = load(d, entry["file"])
    out = {}
    for p in entry["params"]:
        size = int(np.prod(p["dims"]))
        out[p["name"]] = raw[p["offset"] : p["offset"] + size].reshape(p["dims"])
    return out


def rel_np(x, ref):
    """||x - ref|| / ||ref|| (inf when x is not finite; absolute when ref is 0)."""
    x = np.asarray(x, dtype=np.float64).reshape(np.shape(ref))
    if not np.isfinite(x).all():
        return float("inf")
    den = float(np.linalg.norm(ref))
    return float(np.linalg.norm(x - ref)) / (den if den > 0 else 1.0)


def folded(prog, params, bn, f16):
    """Eval-mode parameters as tinykd's exporter writes them: each batch norm folded into the
    conv before it in float32 (scale = gamma / sqrt(var + eps), bias = beta - mean * scale,
    weights * scale, the operations of `kernels::norm::bn_fold`), every tensor rounded to f16
    when `f16`; the batch norm then only adds the bias (scale 1, mean 0, variance 1 - eps)."""
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    rnd = (lambda a: a.astype(np.float16).astype(np.float64)) if f16 else (lambda a: a.astype(np.float64))
    out = {k: rnd(v) for k, v in p32.items()}
    producer = {op["output"]: op for op in prog["ops"]}
    eps = np.float32(bn["eps"])
    for op in prog["ops"]:
        if op["kind"]["op"] != "bn":
            continue
        w = producer[op["inputs"][0]]["params"][0]
        gamma, beta, mean, var = (p32[k] for k in op["params"])
        scale = gamma / np.sqrt(var + eps)
        out[w] = rnd(p32[w] * scale)  # c_out is the last axis (HWIO, depthwise HWC)
        out[op["params"][0]] = np.ones(len(scale))
        out[op["params"][1]] = rnd(beta - mean * scale)
        out[op["params"][2]] = np.zeros(len(scale))
        out[op["params"][3]] = np.full(len(scale), 1.0 - bn["eps"])
    return out


def check_semantics(m, d):
    """Refuses a manifest whose batch norm or architecture is not DESIGN.md's."""
    bn = m["bn"]
    if np.float32(bn["eps"]) != np.float32(1e-5) or abs(bn["momentum"] - 0.9) > 1e-7:
        sys.exit(f"{d}: batch norm eps {bn['eps']} / momentum {bn['momentum']}, not 1e-5 / 0.9")
    for prog in [m["student"], m["teacher"]]:
        if prog is None:
            continue
        names = {op["name"] for op in prog["ops"]}
        if "res5a_branch2b" in names:
            for op in prog["ops"]:
                name = op["name"]
                if op["kind"]["op"] == "conv" and name[:3] == "res" and name[3] in "345" and name[4] == "a":
                    want = 2 if op["name"].endswith("branch2b") or op["name"].endswith("branch1") else 1
                    if op["kind"]["stride"] != want:
                        sys.exit(f"{d}: {op['name']} has stride {op['kind']['stride']}, not {want} (ResNet50 v1.5)")


def check_trainable(m, d):
    """Every parameter (not statistic) of the starting store has a gradient; known totals."""
    store_entry = m["files"]["student_before1"]
    trainable = [p["name"] for p in m["steps"][0]["grads"]["params"]]
    want = [p["name"] for p in store_entry["params"] if p["kind"] == "parameter"]
    if want != trainable:
        missing = sorted(set(want) - set(trainable))
        sys.exit(f"{d}: parameters without a recorded gradient: {missing[:5]} (or another order)")
    total = sum(int(np.prod(p["dims"])) for p in store_entry["params"] if p["kind"] == "parameter")
    title = m["title"]
    key = "resnet50" if title.startswith("ResNet50") else "mobilenet_v1 1.0" if "MobileNetV1 1.0" in title else None
    if key and total != PARAMS[key]:
        sys.exit(f"{d}: {total} trainable values, DESIGN.md has {PARAMS[key]} for {key}")


def check_recorded_losses(m, d):
    """The losses tinykd recorded at every step are the manifest's, with its weights."""
    for step in m["steps"]:
        kinds = [p["label"].split(":")[0] for p in step["parts"]]
        want = [{"soft_label": "soft"}.get(l["kind"], l["kind"]) for l in m["losses"]]
        weights = [p["weight"] for p in step["parts"]]
        if kinds != want or any(abs(w - l["weight"]) > 1e-6 * abs(l["weight"]) for w, l in zip(weights, m["losses"])):
            sys.exit(f"{d}: recorded losses {list(zip(kinds, weights))} are not the manifest's {m['losses']}")


class Table:
    """Comparisons of one run: each is (step, key, tinykd's error, the reference's float32
    error, bound); a failure is printed as it is found."""

    def __init__(self, ref_name):
        self.rows, self.failures, self.ref_name = [], [], ref_name

    def compare(self, step, key, err, err32, bound=None):
        limit = bound if bound is not None else max(FACTOR * err32, FLOOR)
        self.rows.append((step, key, err, err32, limit))
        if not err <= limit:
            self.failures.append(f"step {step} {key}" if step else key)
            print(f"  FAIL {'step %d ' % step if step else ''}{key}: relative error {err:.2e} > {limit:.1e} "
                  f"({self.ref_name} float32: {err32:.2e})")

    def check_flips(self, flips):
        """A ReLU decided otherwise: allowed within rounding of 0, i.e. FLIP_BOUND of the
        input's RMS, or 10x the relative error the reference's own float32 forward reaches on
        that tensor (deep in ResNet50 both tinykd and a float32 reference are ~2e-4 off the
        float64 values). The reference's error, not tinykd's: a bound that grew with tinykd's
        own error would excuse a less accurate forward twice."""
        err_of = {(r[0], r[1]): r[3] for r in self.rows}
        for step, name, count, dist in flips:
            limit = max(FLIP_BOUND, 10 * err_of.get((step, f"activation {name}"), 0.0))
            ok = dist <= limit
            print(f"  {'' if ok else 'FAIL '}step {step} ReLU {name}: {count} value(s) gated otherwise than "
                  f"the float64 reference would, at most {dist:.1e} x RMS from 0 (bound {limit:.1e})")
            if not ok:
                self.failures.append(f"step {step} gates of {name}")

    def print_groups(self):
        print(f"  {'compared (relative error to float64)':52} {'tensors':>7} {'tinykd':>8} "
              f"{self.ref_name + ' f32':>11}  closest to its bound")
        for prefix, title in GROUPS:
            sel = [r for r in self.rows if r[1].startswith(prefix)]
            if not sel:
                continue
            worst = max(sel, key=lambda r: r[2] / r[4])
            where = f"step {worst[0]} {worst[1]}" if worst[0] else worst[1]
            print(f"  {title:52} {len(sel):7} {max(r[2] for r in sel):8.1e} {max(r[3] for r in sel):11.1e}  {where}")


def step_state(m, d, step):
    """What step `step` (from 1) starts from, as tinykd recorded it (float64 arrays): the
    student's parameters and statistics, the momentum buffers (zeros before step 1), the
    trainable parameters' names, the images (NHWC), the labels, the activations tinykd kept,
    and the ReLU gates (output name -> tinykd's output > 0) of the ReLUs among them."""
    rec, files, n = m["steps"][step - 1], m["files"], m["batch"]
    before = load_store_np(d, files["student_before1"] if step == 1 else m["steps"][step - 2]["after"])
    trainable = [p["name"] for p in rec["grads"]["params"]]
    if step == 1:
        velocity = {k: np.zeros_like(before[k]) for k in trainable}
    else:
        velocity = load_store_np(d, m["steps"][step - 2]["velocity"])
    x = load(d, rec["images"]).reshape(n, 32, 32, 3)
    acts = load_store_np(d, rec["activations"])
    gated = {op["output"] for op in m["student"]["ops"] if op["kind"]["op"] in ("relu", "addrelu")}
    gates = {k: v > 0 for k, v in acts.items() if k in gated}
    return before, velocity, trainable, x, np.array(rec["labels"]), acts, gates


def momentum_update(out, grads, before, velocity, stats, opt):
    """The update into `out` (keyed as `recorded_step`): per trainable parameter, in the order
    of `grads` ({name: gradient}), its gradient, v = mu*v + g + wd*p and p - lr*v; the other
    entries of `before` (statistics) take their new value from `stats` (or keep theirs).
    Arithmetic only, so numpy arrays and torch tensors alike."""
    for k, g in grads.items():
        out[f"grad {k}"] = g
        velocity[k] = opt["momentum"] * velocity[k] + g + opt["weight_decay"] * before[k]
        out[f"velocity {k}"] = velocity[k]
        out[f"after {k}"] = before[k] - opt["lr"] * velocity[k]
    for k, v in before.items():
        if f"after {k}" not in out:
            out[f"after {k}"] = stats.get(k, v)


def recorded_step(m, d, step):
    """tinykd's figures of step `step`: {"loss <label>", "loss total", "teacher <tensor>",
    "activation <tensor>", "grad <param>", "velocity <param>", "after <param or statistic>":
    float64 array}."""
    rec = m["steps"][step - 1]
    out = {f"loss {p['label']}": np.array([p["value"]]) for p in rec["parts"]}
    out["loss total"] = np.array([rec["total"]])
    for key, entry in [("teacher", "teacher"), ("activation", "activations"), ("grad", "grads"), ("velocity", "velocity"), ("after", "after")]:
        for k, v in (load_store_np(d, rec[entry]) if entry in rec else {}).items():
            if not (key == "activation" and k == m["student"]["input"]):
                out[f"{key} {k}"] = v
    return out


def check_run(d, ref):
    """Checks the training run recorded in `d` against the reference `ref`; prints its table
    and returns (tensors compared, failures). `ref.step(m, d, teacher, step, dtype, flips,
    table)` re-computes step `step` (from 1) from tinykd's state before it in `dtype`
    (np.float64 or np.float32; `teacher`: the teacher's float64 parameters), keyed as
    `recorded_step` (float64 arrays), listing disagreeing ReLU gates in `flips` when given;
    `ref.logits(prog, params, images, dtype)` is the eval-mode output of `prog`."""
    m = json.load(open(os.path.join(d, "manifest.json")))
    files, bn, n = m["files"], m["bn"], m["batch"]
    teacher64 = load_store_np(d, files["teacher"]) if m["teacher"] is not None else {}
    table, flips = Table(ref.name), []
    print(f"{m['title']} ({d})")
    check_semantics(m, d)
    check_trainable(m, d)
    check_recorded_losses(m, d)

    def compare(step, key, ours, r64, r32):
        table.compare(step, key, rel_np(ours, r64), rel_np(r32, r64))

    for step in range(1, len(m["steps"]) + 1):
        found = []
        r64 = ref.step(m, d, teacher64, step, np.float64, found, table)
        flips += [(step, *f) for f in found]
        r32 = ref.step(m, d, teacher64, step, np.float32, None, table)
        ours = recorded_step(m, d, step)
        missing = set(r64) ^ set(ours)
        if missing:
            sys.exit(f"step {step}: the recording and the reference differ in what they hold: {sorted(missing)}")
        # Parameters and statistics by their change: they dwarf one step's update, which a
        # comparison of the values would hide under the bound.
        before = load_store_np(d, files["student_before1"] if step == 1 else m["steps"][step - 2]["after"])
        for key in r64:
            if key.startswith("after "):
                b = before[key[len("after ") :]]
                compare(step, key, ours[key] - b, r64[key] - b, r32[key] - b)
            else:
                compare(step, key, ours[key], r64[key], r32[key])

    # The engine: the student after the last step (and the teacher), eval mode, first batch,
    # from the weights as the exporter folds (and for f16 rounds) them.
    final64 = load_store_np(d, m["steps"][-1]["after"])
    x64 = load(d, m["steps"][0]["images"]).reshape(n, 32, 32, 3)
    engines = [("engine student f32", m["student"], final64, False), ("engine student f16", m["student"], final64, True)]
    if m["teacher"] is not None:
        engines.append(("engine teacher f32", m["teacher"], teacher64, False))
    for key, prog, params, f16 in engines:
        p64 = folded(prog, params, bn, f16)
        r64, r32 = (ref.logits(prog, p64, x64, bn, t) for t in (np.float64, np.float32))
        compare(0, key, load(d, files[key.replace(" ", "_")]), r64, r32)

    table.check_flips(flips)
    table.print_groups()
    return len(table.rows), table.failures


def main(doc, ref, errors):
    """Checks every run recorded in the directory given on the command line (all of RUNS must
    be there) against the reference `ref` ([`check_run`]; `ref.finetune_step` for
    [`check_finetune`]); exits non-zero on any failure. `errors`: the exceptions that mean the
    reference cannot run on a recording (a shape that does not fit, a tensor the manifest does
    not name), a failure of that run rather than a crash."""
    if len(sys.argv) != 2:
        sys.exit(doc)
    if not os.path.isdir(sys.argv[1]):
        sys.exit(f"{sys.argv[1]}: not a directory (write one with `cargo run --release --example crosscheck -- DIR`)")
    runs = sorted(e.path for e in os.scandir(sys.argv[1]) if os.path.isfile(os.path.join(e.path, "manifest.json")))
    missing = RUNS - {os.path.basename(r) for r in runs}
    if missing:
        sys.exit(f"{sys.argv[1]}: missing recorded runs {sorted(missing)} (the example writes {sorted(RUNS)})")
    total, failures = 0, []
    for d in runs:
        kind = json.load(open(os.path.join(d, "manifest.json"))).get("kind")
        try:
            count, failed = check_finetune(d, ref.name, ref.finetune_step) if kind == "finetune" else check_run(d, ref)
        except errors as e:
            print(f"  FAIL {os.path.basename(d)}: the reference cannot run on this recording: {type(e).__name__}: {e}")
            count, failed = 0, ["the reference cannot run on the recording"]
        total += count
        failures += [f"{os.path.basename(d)}: {f}" for f in failed]
    if failures:
        sys.exit(f"FAILED: {len(failures)} checks: {', '.join(failures[:8])}")
    print(f"tinykd matches {ref.name} on all {total} compared tensors of {len(runs)} runs")


class Tail:
    """The ops and sizes of the fine-tuner's tails of a MobileNetV1 program, from its folded
    parameters `p64`: the last pointwise conv, its batch norm (folded: adds the bias), ReLU,
    pool and fc; a tail's trainable parameters, in the state's order, are the fc's weights and
    bias, then (fc_affine) a per-channel scale and shift after the batch norm, or (fc_sep) the
    pointwise conv's weights and bias."""

    def __init__(self, prog, p64):
        self.sep, self.sep_bn, self.relu, _, self.fc = prog["ops"][-5:]
        kinds = (self.sep["kind"]["op"], self.sep_bn["kind"]["op"], self.fc["kind"]["op"])
        assert kinds == ("conv", "bn", "fc"), "not MobileNetV1"
        self.c_in, self.c = p64[self.sep["params"][0]].shape[2:]
        self.classes = p64[self.fc["params"][1]].shape[0]
        c, k = self.c, self.c * self.classes
        self.sizes = {"fc": [k, self.classes], "fc_affine": [k, self.classes, c, c],
                      "fc_sep": [k, self.classes, self.c_in * c, c]}

    def split(self, tail, flat):
        """The parameter half of a state by tensor: fc weights, fc bias, then the tail's two."""
        names = ["fc weights", "fc bias", "tail weights", "tail bias"]
        sizes = self.sizes[tail]
        return list(zip(names, np.split(flat[: sum(sizes)], np.cumsum(sizes)[:-1])))


def check_finetune(d, ref_name, make_step):
    """Checks the fine-tuner's steps recorded in `d` (each tail, each step from its recorded
    state): the loss, the momentum after the step and the parameters' change.
    `make_step(m, p64, tail)` gives the reference's step: `step(tail_name, state, images,
    labels, dtype)` -> (loss as a 1-array, the state after the step), numpy in and out, in
    `dtype` (np.float64 or np.float32)."""
    m = json.load(open(os.path.join(d, "manifest.json")))
    prog, bn, n = m["student"], m["bn"], m["batch"]
    print(f"{m['title']} ({d})")
    p64 = folded(prog, load_store_np(d, m["params"]), bn, True)
    t_ = Tail(prog, p64)
    tail_step = make_step(m, p64, t_)
    rows, failures = [], []
    for t in m["tails"]:
        # The starting state: the file's fc (and pointwise conv) widened from f16, the affine at
        # identity, momentum 0 — rebuilt here from the folded, f16-rounded parameters.
        state0 = load(d, t["state"])
        k = state0.shape[0] // 2
        want = [p64[t_.fc["params"][0]].ravel(), p64[t_.fc["params"][1]]]
        if t["tail"] == "fc_affine":
            want += [np.ones(t_.c), np.zeros(t_.c)]
        elif t["tail"] == "fc_sep":
            want += [p64[t_.sep["params"][0]].ravel(), p64[t_.sep_bn["params"][1]]]
        want = np.concatenate(want + [np.zeros(k)])
        if want.shape != state0.shape or np.abs(state0 - want).max() > 0:
            failures.append(f"{t['tail']} starting state")
            print(f"  FAIL {t['tail']} starting state: not the file's f16 values (+ identity affine, zero momentum)")
        for i, st in enumerate(t["steps"], start=1):
            before = load(d, t["state"] if i == 1 else t["steps"][i - 2]["state"])
            x = load(d, st["images"]).reshape(n, 32, 32, 3)
            labels = np.array(st["labels"])
            r64 = tail_step(t["tail"], before, x, labels, np.float64)
            r32 = [np.asarray(r, dtype=np.float64) for r in tail_step(t["tail"], before, x, labels, np.float32)]
            # The momentum (the gradient plus decay) as it is; the parameters by their change,
            # which they dwarf (so that change is compared at the state's f32 rounding).
            k = before.shape[0] // 2
            after = load(d, st["state"])
            cmp = [("loss", np.array([st["loss"]]), r64[0], r32[0])]
            split = lambda flat: t_.split(t["tail"], flat)
            for (part, o), (_, a), (_, b) in zip(split(after[k:]), split(r64[1][k:]), split(r32[1][k:])):
                cmp.append((f"momentum after, {part}", o, a, b))
            change = [split(y[:k] - before[:k]) for y in (after, r64[1], r32[1])]
            for (part, o), (_, a), (_, b) in zip(*change):
                cmp.append((f"parameter change, {part}", o, a, b))
            for what, o, a, b in cmp:
                err, err32 = rel_np(o, a), rel_np(b, a)
                limit = max(FACTOR * err32, FLOOR)
                rows.append((t["tail"], what, err, err32))
                if not err <= limit:
                    failures.append(f"{t['tail']} step {i} {what}")
                    print(f"  FAIL {t['tail']} step {i} {what}: relative error {err:.2e} > {limit:.1e} "
                          f"({ref_name} float32: {err32:.2e})")
    print(f"  {'compared (relative error to float64)':52} {'tensors':>7} {'tinykd':>8} {ref_name + ' f32':>11}")
    for tail in [t["tail"] for t in m["tails"]]:
        for what in ["loss", "momentum after", "parameter change"]:
            sel = [r for r in rows if r[0] == tail and r[1].startswith(what)]
            print(f"  {tail + ': ' + what:52} {len(sel):7} {max(r[2] for r in sel):8.1e} {max(r[3] for r in sel):11.1e}")
    return len(rows), failures
