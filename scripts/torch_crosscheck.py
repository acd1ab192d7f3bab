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
from 0, which must be below 1e-4 of the tensor's RMS or 10x the relative error of PyTorch's
float32 forward on that tensor, whichever is larger.

Usage: python3 scripts/torch_crosscheck.py DIR   (needs torch and numpy)
"""
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    sys.exit(f"torch_crosscheck.py needs torch and numpy ({e}); see scripts/crosscheck.sh")

from crosscheck_common import load_store_np, main, momentum_update, step_state


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


def step_reference(m, d, teacher, step, dtype, flips=None):
    """Step `step` (from 1) from tinykd's state before it, in `dtype`: {key: float64 result}."""
    rec, bn, opt = m["steps"][step - 1], m["bn"], m["optimizer"]
    before, velocity, trainable, x, labels, acts, gates = step_state(m, d, step)
    cast = lambda s: {k: torch.tensor(v).to(dtype) for k, v in s.items()}
    before, velocity, x, labels = cast(before), cast(velocity), torch.tensor(x).to(dtype), torch.tensor(labels)
    acts = {k: torch.tensor(v) for k, v in acts.items()}
    gates = {k: nchw(torch.tensor(v)) for k, v in gates.items()}
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
    for k in load_store_np(d, rec["teacher"]) if "teacher" in rec else []:
        out[f"teacher {k}"] = nhwc(tv[k])
    for k in acts:
        if k != m["student"]["input"]:
            out[f"activation {k}"] = nhwc(sv[k])
    grads = torch.autograd.grad(total, [leaves[k] for k in trainable])
    with torch.no_grad():
        momentum_update(out, dict(zip(trainable, grads)), before, velocity, stats, opt)
    return {k: v.detach().to(torch.float64) for k, v in out.items()}


TORCH = {np.float64: torch.float64, np.float32: torch.float32}


class Torch:
    """The PyTorch reference, as `crosscheck_common.check_run` and `check_finetune` take it."""

    name = "PyTorch"

    @staticmethod
    def step(m, d, teacher64, step, dtype, flips, table):
        teacher = {k: torch.tensor(v).to(TORCH[dtype]) for k, v in teacher64.items()}
        return {k: v.numpy() for k, v in step_reference(m, d, teacher, step, TORCH[dtype], flips).items()}

    @staticmethod
    def logits(prog, params, x, bn, dtype):
        cast = {k: torch.tensor(v).to(TORCH[dtype]) for k, v in params.items()}
        with torch.no_grad():
            return run(prog, cast, torch.tensor(x).to(TORCH[dtype]), False, bn)[prog["output"]].double().numpy()

    @staticmethod
    def finetune_step(m, p64, t):
        return finetune_step(m, p64, t)


def finetune_step(m, p64, t):
    """The fine-tuner's step (`crosscheck_common.check_finetune`) in PyTorch: eval forward of
    the folded model, the tail, cross-entropy, autograd, Momentum with weight decay."""
    prog, bn, opt = m["student"], m["bn"], m["optimizer"]
    p64 = {k: torch.tensor(v) for k, v in p64.items()}
    c, c_in, classes = t.c, t.c_in, t.classes

    def step(tail, flat, x, labels, dtype):
        dtype = TORCH[dtype]
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
    main(__doc__, Torch, (RuntimeError, KeyError, ValueError))
