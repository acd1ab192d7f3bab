#!/usr/bin/env python3
"""Re-computes in PyTorch what `cargo run --release --example crosscheck -- DIR` recorded in DIR
(four runs: distillation with every loss, an odd-width CIFAR-stem student, ResNet50 alone, the
on-device fine-tuner's tails), and fails if tinykd's figures are not those of the same math,
computed as accurately as PyTorch computes them in float32.

It rebuilds the programs op by op from the manifest (PyTorch's conv2d, grouped conv2d for the
depthwise convs, batch norm by its formula, max pool, ...; tinykd's HWIO weights turned into
OIHW) and re-runs each recorded step from tinykd's own state before it (the previous step's
parameters, running statistics and momentum buffers): teacher in eval mode, student in train
mode, the manifest's losses, autograd gradients, Momentum with weight decay
(v = mu*v + g + wd*p, p -= lr*v), running statistics updated with the biased batch variance.
Compared per step: the loss values, the teacher tensors they read, every student activation
tinykd kept, every parameter gradient and momentum buffer, and the change of every parameter
and statistic in the update; then the engine's logits (f32 and f16 weight files) against the
model with its batch norms folded into the convs and its weights rounded as the exporter does
(in float32, then to f16 for the f16 file). The fine-tuner's run: its starting state (exactly
the file's values), then per tail and step the loss, the momentum and the parameters' change,
tensor by tensor. What DESIGN.md fixes is asserted, not read from the manifest: batch norm's
eps and momentum, ResNet50 v1.5's strides, the trainable parameter counts, a gradient for
every parameter, the recorded losses against the configured ones.

Each comparison is the relative error ||x - ref|| / ||ref|| of a whole tensor against the
float64 result. The bound is what PyTorch itself reaches in float32 on the same computation,
times 4, and at least 1e-4: some quantities are ill-conditioned sums, which a fixed bound would
either flag or hide everything behind. A ReLU whose input is within rounding of 0 may pass a
value on one side and block it on the other; the float64 reference takes tinykd's decision
there (from its recorded ReLU outputs), and every such disagreement is listed with its distance
from 0, which must be below 1e-4 of the tensor's RMS or 10x the relative error of tinykd's
forward on that tensor, whichever is larger.

Usage: python3 scripts/torch_crosscheck.py DIR   (needs torch and numpy)
"""
import json
import os
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    sys.exit(f"torch_crosscheck.py needs torch and numpy ({e}); see scripts/torch_crosscheck.sh")

FACTOR = 4.0  # tinykd's error may be this many times PyTorch float32's ...
FLOOR = 1e-4  # ... or this, whichever is larger
FLIP_BOUND = 1e-4  # a ReLU decided otherwise may lie this far from 0 (in RMS of its input), or more: check_run


def load(d, name):
    return np.fromfile(os.path.join(d, name), dtype="<f4").astype(np.float64)


def load_store(d, entry):
    """{name: float64 tensor of its dims} from a blob and its layout."""
    raw = load(d, entry["file"])
    out = {}
    for p in entry["params"]:
        size = int(np.prod(p["dims"]))
        out[p["name"]] = torch.tensor(raw[p["offset"] : p["offset"] + size].reshape(p["dims"]))
    return out


def nhwc(t):
    return t.permute(0, 2, 3, 1) if t.dim() == 4 else t


def nchw(t):
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


def run(prog, params, x, train, bn, stats=None, gates=None, flips=None):
    """The program's forward from NHWC images: every tensor by name (NCHW or NC). In train
    mode the new running statistics go to `stats`. With `gates` (ReLU output name -> tinykd's
    mask of that output > 0) a ReLU passes what tinykd's passed, and `flips` gets where the
    masks disagree: (tensor, count, largest |input| there in RMS of the input)."""
    vals = {prog["input"]: nchw(x)}
    for op in prog["ops"]:
        k, ins = op["kind"], [vals[i] for i in op["inputs"]]
        p = [params[n] for n in op["params"]]
        a = ins[0]
        if k["op"] == "conv":
            y = F.conv2d(a, p[0].permute(3, 2, 0, 1), stride=k["stride"], padding=k["pad"])
        elif k["op"] == "dwconv":
            w = p[0].permute(2, 0, 1).unsqueeze(1)
            y = F.conv2d(a, w, stride=k["stride"], padding=1, groups=w.shape[0])
        elif k["op"] == "bn":
            scale, offset, mean, var = p
            if train:
                mu = a.mean(dim=(0, 2, 3))
                sig2 = a.var(dim=(0, 2, 3), unbiased=False)
                if stats is not None:
                    mom = bn["momentum"]
                    stats[op["params"][2]] = mom * mean + (1 - mom) * mu.detach()
                    stats[op["params"][3]] = mom * var + (1 - mom) * sig2.detach()
            else:
                mu, sig2 = mean, var
            inv = 1.0 / torch.sqrt(sig2 + bn["eps"])
            y = (a - mu[None, :, None, None]) * (inv * scale)[None, :, None, None] + offset[None, :, None, None]
        elif k["op"] in ("relu", "addrelu"):
            if k["op"] == "addrelu":
                a = ins[0] + ins[1]
            if gates is not None and op["output"] in gates:
                mask = gates[op["output"]]
                differ = (a.detach() > 0) != mask
                if differ.any() and flips is not None:
                    rms = a.detach().pow(2).mean().sqrt().item()
                    flips.append((op["output"], int(differ.sum()), a.detach()[differ].abs().max().item() / rms))
                y = a * mask
            else:
                y = F.relu(a)
        elif k["op"] == "maxpool":
            y = F.max_pool2d(a, 3, 2, 1)
        elif k["op"] == "gap":
            y = a.mean(dim=(2, 3))
        elif k["op"] == "fc":
            y = a @ p[0] + p[1]
        else:
            raise ValueError(f"unknown op {k['op']}")
        vals[op["output"]] = y
    return vals


# What DESIGN.md fixes, checked here rather than taken from tinykd's manifest: trainable
# parameter counts, batch norm's eps and momentum, ResNet50 v1.5 (the stride on branch2b).
PARAMS = {"mobilenet_v1 1.0": 3_217_226, "resnet50": 23_528_522}
RUNS = {"distill", "distill_odd", "resnet50", "finetune"}


def check_semantics(m, d):
    """Refuses a manifest whose batch norm, architecture or trainable set is not DESIGN.md's."""
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


def check_trainable(m, d, store_entry, trainable):
    """Every parameter (not statistic) of the starting store has a gradient; known totals."""
    want = [p["name"] for p in store_entry["params"] if p["kind"] == "parameter"]
    if want != trainable:
        missing = sorted(set(want) - set(trainable))
        sys.exit(f"{d}: parameters without a recorded gradient: {missing[:5]} (or another order)")
    total = sum(int(np.prod(p["dims"])) for p in store_entry["params"] if p["kind"] == "parameter")
    title = m["title"]
    key = "resnet50" if title.startswith("ResNet50") else "mobilenet_v1 1.0" if "MobileNetV1 1.0" in title else None
    if key and total != PARAMS[key]:
        sys.exit(f"{d}: {total} trainable values, DESIGN.md has {PARAMS[key]} for {key}")


def fsp(x, y):
    """G[n, i, j] = (1/(H*W)) sum over h, w of x[n, i, h, w] * y[n, j, h, w] (NCHW)."""
    return torch.einsum("nihw,njhw->nij", x, y) / (x.shape[2] * x.shape[3])


def folded(prog, params, bn, f16):
    """Eval-mode parameters as tinykd's exporter writes them: each batch norm folded into the
    conv before it in float32 (scale = gamma / sqrt(var + eps), bias = beta - mean * scale,
    weights * scale, the operations of `kernels::norm::bn_fold`), every tensor rounded to f16
    when `f16`; the batch norm then only adds the bias (scale 1, mean 0, variance 1 - eps)."""
    p32 = {k: v.numpy().astype(np.float32) for k, v in params.items()}
    rnd = (lambda a: a.astype(np.float16).astype(np.float64)) if f16 else (lambda a: a.astype(np.float64))
    out = {k: torch.tensor(rnd(v)) for k, v in p32.items()}
    producer = {op["output"]: op for op in prog["ops"]}
    eps = np.float32(bn["eps"])
    for op in prog["ops"]:
        if op["kind"]["op"] != "bn":
            continue
        w = producer[op["inputs"][0]]["params"][0]
        gamma, beta, mean, var = (p32[k] for k in op["params"])
        scale = gamma / np.sqrt(var + eps)
        out[w] = torch.tensor(rnd(p32[w] * scale))  # c_out is the last axis (HWIO, depthwise HWC)
        out[op["params"][0]] = torch.ones(len(scale), dtype=torch.float64)
        out[op["params"][1]] = torch.tensor(rnd(beta - mean * scale))
        out[op["params"][2]] = torch.zeros(len(scale), dtype=torch.float64)
        out[op["params"][3]] = torch.full((len(scale),), 1.0 - bn["eps"], dtype=torch.float64)
    return out


def step_reference(m, d, teacher, step, dtype, flips=None):
    """Step `step` (from 1) from tinykd's state before it, in `dtype`: {key: float64 result}."""
    cast = lambda s: {k: v.to(dtype) for k, v in s.items()}
    rec, files, bn, opt, n = m["steps"][step - 1], m["files"], m["bn"], m["optimizer"], m["batch"]
    before = cast(load_store(d, files["student_before1"] if step == 1 else m["steps"][step - 2]["after"]))
    trainable = [p["name"] for p in rec["grads"]["params"]]
    if step == 1:
        velocity = {k: torch.zeros_like(before[k]) for k in trainable}
    else:
        velocity = cast(load_store(d, m["steps"][step - 2]["velocity"]))
    x = torch.tensor(load(d, rec["images"]).reshape(n, 32, 32, 3)).to(dtype)
    labels = torch.tensor(rec["labels"])
    acts = load_store(d, rec["activations"])
    gated = {op["output"] for op in m["student"]["ops"] if op["kind"]["op"] in ("relu", "addrelu")}
    gates = {k: nchw(v) > 0 for k, v in acts.items() if k in gated}
    tv = {}
    if m["teacher"] is not None:
        with torch.no_grad():
            tv = run(m["teacher"], teacher, x, False, bn)
    leaves = {k: v.clone().requires_grad_(k in velocity) for k, v in before.items()}
    stats = {}
    sv = run(m["student"], leaves, x, True, bn, stats, gates, flips)
    out, total = {}, 0
    for loss, got in zip(m["losses"], rec["parts"]):
        if loss["kind"] == "ce":
            v = F.cross_entropy(sv[m["student"]["output"]], labels)
        elif loss["kind"] == "l2":
            v = ((sv[loss["student"]] - tv[loss["teacher"]]) ** 2).mean()
        elif loss["kind"] == "soft_label":
            t = F.softmax(tv[loss["teacher"]] / loss["tt"], dim=1)
            v = -(t * F.log_softmax(sv[loss["student"]] / loss["ts"], dim=1)).sum(dim=1).mean()
        elif loss["kind"] == "fsp":
            v = ((fsp(*(sv[k] for k in loss["student"])) - fsp(*(tv[k] for k in loss["teacher"]))) ** 2).mean()
        else:
            raise ValueError(f"unknown loss {loss['kind']}")
        out[f"loss {got['label']}"] = v.reshape(1)
        total = total + loss["weight"] * v
    out["loss total"] = total.reshape(1)
    for k in load_store(d, rec["teacher"]) if "teacher" in rec else []:
        out[f"teacher {k}"] = nhwc(tv[k])
    for k in acts:
        if k != m["student"]["input"]:
            out[f"activation {k}"] = nhwc(sv[k])
    grads = torch.autograd.grad(total, [leaves[k] for k in trainable])
    with torch.no_grad():
        for k, g in zip(trainable, grads):
            out[f"grad {k}"] = g
            velocity[k] = opt["momentum"] * velocity[k] + g + opt["weight_decay"] * before[k]
            out[f"velocity {k}"] = velocity[k]
            out[f"after {k}"] = before[k] - opt["lr"] * velocity[k]
        for k, v in before.items():
            if f"after {k}" not in out:
                out[f"after {k}"] = stats.get(k, v)
    return {k: v.detach().to(torch.float64) for k, v in out.items()}


def recorded_step(m, d, step):
    """tinykd's figures of step `step`, keyed as `step_reference`'s."""
    rec = m["steps"][step - 1]
    out = {f"loss {p['label']}": torch.tensor([p["value"]]) for p in rec["parts"]}
    out["loss total"] = torch.tensor([rec["total"]])
    for key, entry in [("teacher", "teacher"), ("activation", "activations"), ("grad", "grads"), ("velocity", "velocity"), ("after", "after")]:
        for k, v in (load_store(d, rec[entry]) if entry in rec else {}).items():
            if not (key == "activation" and k == m["student"]["input"]):
                out[f"{key} {k}"] = v
    return out


def rel(x, ref):
    x = x.reshape(ref.shape)
    if not bool(torch.isfinite(x).all()):
        return float("inf")
    den = ref.norm().item()
    return (x - ref).norm().item() / (den if den > 0 else 1.0)


GROUPS = [
    ("loss", "loss values"),
    ("teacher", "teacher tensors the losses read (eval, BN folded)"),
    ("activation", "student activations (train mode)"),
    ("grad", "student parameter gradients"),
    ("velocity", "momentum buffers after the update"),
    ("after", "change of parameters and statistics in the update"),
    ("engine", "engine logits (f32 and f16 files, BN folded)"),
]


def check_run(d):
    """Checks the run recorded in `d`; prints its table and returns its failures."""
    m = json.load(open(os.path.join(d, "manifest.json")))
    files, bn, n = m["files"], m["bn"], m["batch"]
    teacher64 = load_store(d, files["teacher"]) if m["teacher"] is not None else {}
    teacher32 = {k: v.float() for k, v in teacher64.items()}
    rows, failures, flips = [], [], []
    print(f"{m['title']} ({d})")
    check_semantics(m, d)
    check_trainable(m, d, files["student_before1"], [p["name"] for p in m["steps"][0]["grads"]["params"]])
    for step in m["steps"]:
        kinds = [p["label"].split(":")[0] for p in step["parts"]]
        want = [{"soft_label": "soft"}.get(l["kind"], l["kind"]) for l in m["losses"]]
        weights = [p["weight"] for p in step["parts"]]
        if kinds != want or any(abs(w - l["weight"]) > 1e-6 * abs(l["weight"]) for w, l in zip(weights, m["losses"])):
            sys.exit(f"{d}: recorded losses {list(zip(kinds, weights))} are not the manifest's {m['losses']}")

    def compare(step, key, ours, r64, r32, bound=None):
        err, err32 = rel(ours, r64), rel(r32.to(torch.float64), r64)
        limit = bound if bound is not None else max(FACTOR * err32, FLOOR)
        rows.append((step, key, err, err32, limit))
        if not err <= limit:
            failures.append(f"step {step} {key}" if step else key)
            print(f"  FAIL {'step %d ' % step if step else ''}{key}: relative error {err:.2e} > {limit:.1e} "
                  f"(PyTorch float32: {err32:.2e})")

    for step in range(1, len(m["steps"]) + 1):
        found = []
        r64 = step_reference(m, d, teacher64, step, torch.float64, found)
        flips += [(step, *f) for f in found]
        r32 = step_reference(m, d, teacher32, step, torch.float32)
        ours = recorded_step(m, d, step)
        missing = set(r64) ^ set(ours)
        if missing:
            sys.exit(f"step {step}: the recording and the reference differ in what they hold: {sorted(missing)}")
        # Parameters and statistics by their change: they dwarf one step's update, which a
        # comparison of the values would hide under the bound.
        before = load_store(d, files["student_before1"] if step == 1 else m["steps"][step - 2]["after"])
        for key in r64:
            if key.startswith("after "):
                b = before[key[len("after "):]]
                compare(step, key, ours[key] - b, r64[key] - b, r32[key] - b)
            else:
                compare(step, key, ours[key], r64[key], r32[key])

    # The engine: the student after the last step (and the teacher), eval mode, first batch,
    # from the weights as the exporter folds (and for f16 rounds) them.
    final64 = load_store(d, m["steps"][-1]["after"])
    x64 = torch.tensor(load(d, m["steps"][0]["images"]).reshape(n, 32, 32, 3))
    engines = [("engine student f32", m["student"], final64, False), ("engine student f16", m["student"], final64, True)]
    if m["teacher"] is not None:
        engines.append(("engine teacher f32", m["teacher"], teacher64, False))
    with torch.no_grad():
        for key, prog, params, f16 in engines:
            p64 = folded(prog, params, bn, f16)
            r64 = run(prog, p64, x64, False, bn)[prog["output"]]
            r32 = run(prog, {k: v.float() for k, v in p64.items()}, x64.float(), False, bn)[prog["output"]]
            compare(0, key, torch.tensor(load(d, files[key.replace(" ", "_")])), r64, r32)

    # A ReLU decided otherwise: allowed within rounding of 0, i.e. FLIP_BOUND of the input's
    # RMS, or 10x the relative error tinykd's forward reached on that tensor (deep in ResNet50
    # both tinykd and PyTorch's float32 are ~2e-4 off the float64 activations).
    err_of = {(r[0], r[1]): r[2] for r in rows}
    for step, name, count, dist in flips:
        limit = max(FLIP_BOUND, 10 * err_of.get((step, f"activation {name}"), 0.0))
        ok = dist <= limit
        print(f"  {'' if ok else 'FAIL '}step {step} ReLU {name}: {count} value(s) gated otherwise than "
              f"PyTorch's float64 would, at most {dist:.1e} x RMS from 0 (bound {limit:.1e})")
        if not ok:
            failures.append(f"step {step} gates of {name}")

    print(f"  {'compared (relative error to float64)':52} {'tensors':>7} {'tinykd':>8} {'PyTorch f32':>11}  "
          "closest to its bound")
    for prefix, title in GROUPS:
        sel = [r for r in rows if r[1].startswith(prefix)]
        if not sel:
            continue
        worst = max(sel, key=lambda r: r[2] / r[4])
        where = f"step {worst[0]} {worst[1]}" if worst[0] else worst[1]
        print(f"  {title:52} {len(sel):7} {max(r[2] for r in sel):8.1e} {max(r[3] for r in sel):11.1e}  {where}")
    return len(rows), failures


def check_finetune(d):
    """Checks the fine-tuner's steps recorded in `d` (each tail, each step from its recorded
    state): the loss, the momentum after the step and the parameters' change."""
    m = json.load(open(os.path.join(d, "manifest.json")))
    prog, bn, opt, n = m["student"], m["bn"], m["optimizer"], m["batch"]
    print(f"{m['title']} ({d})")
    # The last ops: the pointwise conv, its batch norm (folded: adds the bias), ReLU, pool, fc.
    sep, sep_bn, relu, _, fc = prog["ops"][-5:]
    assert (sep["kind"]["op"], sep_bn["kind"]["op"], fc["kind"]["op"]) == ("conv", "bn", "fc"), "not MobileNetV1"
    p64 = folded(prog, load_store(d, m["params"]), bn, True)
    c_in, c = p64[sep["params"][0]].shape[2:]
    classes = p64[fc["params"][1]].shape[0]
    rows, failures = [], []

    def tail_step(tail, flat, x, labels, dtype):
        """The tail's loss, then its parameters and momentum after one step, from `flat`."""
        cast = {k: v.to(dtype) for k, v in p64.items()}
        with torch.no_grad():
            vals = run(prog, cast, x.to(dtype), False, bn)
        k = flat.shape[0] // 2
        p0, v0 = flat[:k].to(dtype), flat[k:].to(dtype)
        sizes = [c * classes, classes] + ([] if tail == "fc" else [c_in * c if tail == "fc_sep" else c, c])
        p = p0.clone().requires_grad_(True)
        parts = list(torch.split(p, sizes))
        if tail == "fc":
            h = vals[relu["output"]]
        elif tail == "fc_affine":
            h = F.relu(vals[sep_bn["output"]] * parts[2][None, :, None, None] + parts[3][None, :, None, None])
        else:
            w = parts[2].reshape(c_in, c)
            h = F.relu(torch.einsum("nihw,io->nohw", vals[sep["inputs"][0]], w) + parts[3][None, :, None, None])
        logits = h.mean(dim=(2, 3)) @ parts[0].reshape(c, classes) + parts[1]
        loss = F.cross_entropy(logits, labels)
        (g,) = torch.autograd.grad(loss, [p])
        with torch.no_grad():
            v = opt["momentum"] * v0 + g + opt["weight_decay"] * p0
            after = p0 - opt["lr"] * v
        return loss.detach().reshape(1), torch.cat([after, v]).detach()

    def split(tail, flat):
        """The parameter half of a state by tensor: fc weights, fc bias, then the tail's two."""
        sizes = [c * classes, classes] + ([] if tail == "fc" else [c_in * c if tail == "fc_sep" else c, c])
        names = ["fc weights", "fc bias"] + ([] if tail == "fc" else ["tail weights", "tail bias"])
        return list(zip(names, torch.split(flat[: sum(sizes)], sizes)))

    for t in m["tails"]:
        # The starting state: the file's fc (and pointwise conv) widened from f16, the affine at
        # identity, momentum 0 — rebuilt here from the folded, f16-rounded parameters.
        state0 = torch.tensor(load(d, t["state"]))
        k = state0.shape[0] // 2
        want = [p64[fc["params"][0]].flatten(), p64[fc["params"][1]]]
        if t["tail"] == "fc_affine":
            want += [torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)]
        elif t["tail"] == "fc_sep":
            want += [p64[sep["params"][0]].flatten(), p64[sep_bn["params"][1]]]
        want = torch.cat(want + [torch.zeros(k, dtype=torch.float64)])
        if want.shape != state0.shape or (state0 - want).abs().max().item() > 0:
            failures.append(f"{t['tail']} starting state")
            print(f"  FAIL {t['tail']} starting state: not the file's f16 values (+ identity affine, zero momentum)")
        for i, st in enumerate(t["steps"], start=1):
            before = torch.tensor(load(d, t["state"] if i == 1 else t["steps"][i - 2]["state"]))
            x = torch.tensor(load(d, st["images"]).reshape(n, 32, 32, 3))
            labels = torch.tensor(st["labels"])
            r64 = tail_step(t["tail"], before, x, labels, torch.float64)
            r32 = tail_step(t["tail"], before, x, labels, torch.float32)
            # The momentum (the gradient plus decay) as it is; the parameters by their change,
            # which they dwarf (so that change is compared at the state's f32 rounding).
            k = before.shape[0] // 2
            after = torch.tensor(load(d, st["state"]))
            r32 = (r32[0], r32[1].to(torch.float64))
            cmp = [("loss", torch.tensor([st["loss"]]), r64[0], r32[0])]
            for (part, o), (_, a), (_, b) in zip(split(t["tail"], after[k:]), split(t["tail"], r64[1][k:]),
                                                 split(t["tail"], r32[1][k:])):
                cmp.append((f"momentum after, {part}", o, a, b))
            change = [split(t["tail"], x[:k] - before[:k]) for x in (after, r64[1], r32[1])]
            for (part, o), (_, a), (_, b) in zip(*change):
                cmp.append((f"parameter change, {part}", o, a, b))
            for what, o, a, b in cmp:
                err, err32 = rel(o, a), rel(b.to(torch.float64), a)
                limit = max(FACTOR * err32, FLOOR)
                rows.append((t["tail"], what, err, err32))
                if not err <= limit:
                    failures.append(f"{t['tail']} step {i} {what}")
                    print(f"  FAIL {t['tail']} step {i} {what}: relative error {err:.2e} > {limit:.1e} "
                          f"(PyTorch float32: {err32:.2e})")
    print(f"  {'compared (relative error to float64)':52} {'tensors':>7} {'tinykd':>8} {'PyTorch f32':>11}")
    for tail in [t["tail"] for t in m["tails"]]:
        for what in ["loss", "momentum after", "parameter change"]:
            sel = [r for r in rows if r[0] == tail and r[1].startswith(what)]
            print(f"  {tail + ': ' + what:52} {len(sel):7} {max(r[2] for r in sel):8.1e} {max(r[3] for r in sel):11.1e}")
    return len(rows), failures


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
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
            count, failed = check_finetune(d) if kind == "finetune" else check_run(d)
        except (RuntimeError, KeyError, ValueError) as e:
            # A reference that cannot even run on the recording (a shape that does not fit, a
            # tensor the manifest does not name) is a failure of the run, not a crash.
            print(f"  FAIL {os.path.basename(d)}: the reference cannot run on this recording: {type(e).__name__}: {e}")
            count, failed = 0, ["the reference cannot run on the recording"]
        total += count
        failures += [f"{os.path.basename(d)}: {f}" for f in failed]
    if failures:
        sys.exit(f"FAILED: {len(failures)} checks: {', '.join(failures[:8])}")
    print(f"tinykd matches PyTorch on all {total} compared tensors of {len(runs)} runs")


if __name__ == "__main__":
    main()
