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
    sys.exit(f"torch_crosscheck.py needs torch and numpy ({e}); see scripts/crosscheck.sh")

from crosscheck_common import Table, check_finetune, check_recorded_losses, check_semantics, check_trainable
from crosscheck_common import folded as folded_np
from crosscheck_common import load, load_store_np, main, rel_np


def load_store(d, entry):
    """{name: float64 tensor of its dims} from a blob and its layout."""
    return {k: torch.tensor(v) for k, v in load_store_np(d, entry).items()}


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


def fsp(x, y):
    """G[n, i, j] = (1/(H*W)) sum over h, w of x[n, i, h, w] * y[n, j, h, w] (NCHW)."""
    return torch.einsum("nihw,njhw->nij", x, y) / (x.shape[2] * x.shape[3])


def folded(prog, params, bn, f16):
    """`crosscheck_common.folded` (the exporter's folding and rounding) as torch tensors."""
    return {k: torch.tensor(v) for k, v in folded_np(prog, {k: v.numpy() for k, v in params.items()}, bn, f16).items()}


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
    return rel_np(x.numpy(), ref.numpy())


def check_run(d):
    """Checks the run recorded in `d`; prints its table and returns its failures."""
    m = json.load(open(os.path.join(d, "manifest.json")))
    files, bn, n = m["files"], m["bn"], m["batch"]
    teacher64 = load_store(d, files["teacher"]) if m["teacher"] is not None else {}
    teacher32 = {k: v.float() for k, v in teacher64.items()}
    table, flips = Table("PyTorch"), []
    print(f"{m['title']} ({d})")
    check_semantics(m, d)
    check_trainable(m, d)
    check_recorded_losses(m, d)

    def compare(step, key, ours, r64, r32):
        table.compare(step, key, rel(ours, r64), rel(r32.to(torch.float64), r64))

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

    table.check_flips(flips)
    table.print_groups()
    return len(table.rows), table.failures


def finetune_step(m, p64, t):
    """The fine-tuner's step (`crosscheck_common.check_finetune`) in PyTorch: eval forward of
    the folded model, the tail, cross-entropy, autograd, Momentum with weight decay."""
    prog, bn, opt, n = m["student"], m["bn"], m["optimizer"], m["batch"]
    p64 = {k: torch.tensor(v) for k, v in p64.items()}
    c, c_in, classes = t.c, t.c_in, t.classes
    tdtype = {np.float64: torch.float64, np.float32: torch.float32}

    def step(tail, flat, x, labels, dtype):
        dtype = tdtype[dtype]
        flat, x, labels = torch.tensor(flat), torch.tensor(x), torch.tensor(labels)
        cast = {k: v.to(dtype) for k, v in p64.items()}
        with torch.no_grad():
            vals = run(prog, cast, x.to(dtype), False, bn)
        k = flat.shape[0] // 2
        p0, v0 = flat[:k].to(dtype), flat[k:].to(dtype)
        p = p0.clone().requires_grad_(True)
        parts = list(torch.split(p, t.sizes[tail]))
        if tail == "fc":
            h = vals[t.relu["output"]]
        elif tail == "fc_affine":
            h = F.relu(vals[t.sep_bn["output"]] * parts[2][None, :, None, None] + parts[3][None, :, None, None])
        else:
            w = parts[2].reshape(c_in, c)
            h = F.relu(torch.einsum("nihw,io->nohw", vals[t.sep["inputs"][0]], w) + parts[3][None, :, None, None])
        logits = h.mean(dim=(2, 3)) @ parts[0].reshape(c, classes) + parts[1]
        loss = F.cross_entropy(logits, labels)
        (g,) = torch.autograd.grad(loss, [p])
        with torch.no_grad():
            v = opt["momentum"] * v0 + g + opt["weight_decay"] * p0
            after = p0 - opt["lr"] * v
        return loss.detach().reshape(1).double().numpy(), torch.cat([after, v]).detach().double().numpy()

    return step


if __name__ == "__main__":
    main(__doc__, check_run, lambda d: check_finetune(d, "PyTorch", finetune_step), "PyTorch",
         (RuntimeError, KeyError, ValueError))
