#!/usr/bin/env python3
"""Re-computes with numpy alone what `cargo run --release --example crosscheck -- DIR` recorded
in DIR, as `torch_crosscheck.py` does with PyTorch, so that CI can run it (numpy is a small
install; PyPI's torch is not): the same four runs, comparisons and bounds, with a reference
written here instead of PyTorch's.

The reference is a plain NHWC implementation of the programs' ops from the manifest, forward
and backward written out by hand (no autograd): convolutions through im2col and one matrix
product (the backward through its transpose and col2im), the depthwise 3x3 tap by tap, batch
norm by its formula (biased batch variance in training, the running statistics updated with
momentum 0.9), ReLU gated where tinykd's recorded outputs say (see below), max pool routed to
the first maximum of each window, the losses (cross-entropy, l2, soft labels with two
temperatures, FSP) and their gradients, Momentum with weight decay (v = mu*v + g + wd*p,
p -= lr*v). Each recorded step is re-run from tinykd's own state before it, in float64 (the
truth) and float32 (the bound: tinykd's relative error on a tensor may be 4x the float32
reference's, and at least 1e-4); the engine's logits against the model folded and rounded as
the exporter does; the fine-tuner's tails from the f16 file. A ReLU whose input is within
rounding of 0 takes tinykd's decision, and each such disagreement must lie within 1e-4 of the
tensor's RMS of 0 (or 10x the float32 reference's error on it). What DESIGN.md fixes is asserted, not read
from the manifest (crosscheck_common.py).

Being independent of PyTorch, it also checks the hand-written backward against the forward:
every gradient of the reference is compared with a central difference of the float64 loss
along that gradient (a wrong backward here would make it fail, not pass).

Usage: python3 scripts/numpy_crosscheck.py DIR   (needs numpy)
"""
import sys

try:
    import numpy as np
except ImportError as e:
    sys.exit(f"numpy_crosscheck.py needs numpy ({e}); on Debian: apt-get install python3-numpy")

from crosscheck_common import load_store_np, main, momentum_update, step_state

# ---------------------------------------------------------------------------------------------
# Ops, NHWC. Each forward returns (y, cache); each backward takes the cache and dy.


def im2col(x, kh, kw, s, p):
    """Rows (n*ho*wo) of kh*kw*c patch values, tap-major then channel (HWIO weights' order)."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    cols = np.empty((n, ho, wo, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :]
    return cols.reshape(n * ho * wo, kh * kw * c), (ho, wo)


def col2im(dcols, shape, kh, kw, s, p, ho, wo):
    n, h, w, c = shape
    dxp = np.zeros((n, h + 2 * p, w + 2 * p, c), dcols.dtype)
    dc = dcols.reshape(n, ho, wo, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :] += dc[:, :, :, i, j, :]
    return dxp[:, p : p + h, p : p + w, :]


def conv_fwd(x, w, s, p):
    kh, kw, ci, co = w.shape
    cols, (ho, wo) = im2col(x, kh, kw, s, p)
    return (cols @ w.reshape(-1, co)).reshape(x.shape[0], ho, wo, co), (x.shape, cols, ho, wo)


def conv_bwd(cache, w, s, p, dy):
    shape, cols, ho, wo = cache
    kh, kw, ci, co = w.shape
    d2 = dy.reshape(-1, co)
    dw = (cols.T @ d2).reshape(w.shape)
    dx = col2im(d2 @ w.reshape(-1, co).T, shape, kh, kw, s, p, ho, wo)
    return dx, dw


def taps(xp, s, ho, wo):
    """The 3x3 taps' input windows of a padded NHWC map: ((i, j), window)."""
    for i in range(3):
        for j in range(3):
            yield (i, j), (slice(None), slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))


def dw_fwd(x, w, s):
    n, h, wd, c = x.shape
    ho, wo = (h - 1) // s + 1, (wd - 1) // s + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, ho, wo, c), x.dtype)
    for (i, j), win in taps(xp, s, ho, wo):
        y += xp[win] * w[i, j]
    return y, (xp, ho, wo)


def dw_bwd(cache, w, s, dy):
    xp, ho, wo = cache
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for (i, j), win in taps(xp, s, ho, wo):
        dw[i, j] = (xp[win] * dy).sum(axis=(0, 1, 2))
        dxp[win] += dy * w[i, j]
    return dxp[:, 1:-1, 1:-1, :], dw


def bn_train_fwd(x, scale, offset, eps):
    m = x.shape[0] * x.shape[1] * x.shape[2]
    mu = x.mean(axis=(0, 1, 2))
    var = ((x - mu) ** 2).mean(axis=(0, 1, 2))
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * inv
    return xhat * scale + offset, (xhat, inv, m, mu, var)


def bn_train_bwd(cache, scale, dy):
    xhat, inv, m, _, _ = cache
    dscale = (dy * xhat).sum(axis=(0, 1, 2))
    doffset = dy.sum(axis=(0, 1, 2))
    dx = scale * inv / m * (m * dy - doffset - xhat * dscale)
    return dx, dscale, doffset


def maxpool_fwd(x, arg=None):
    """3x3, stride 2, padding 1 (padding never wins); each output from tap `arg` when given."""
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    wins = np.stack([xp[win] for _, win in taps(xp, 2, ho, wo)])
    arg = wins.argmax(axis=0) if arg is None else arg
    return np.take_along_axis(wins, arg[None], axis=0)[0], (xp.shape, arg, ho, wo)


def maxpool_bwd(cache, dy):
    shape, arg, ho, wo = cache
    dxp = np.zeros(shape, dy.dtype)
    for t, (_, win) in enumerate(taps(dxp, 2, ho, wo)):
        dxp[win] += dy * (arg == t)
    return dxp[:, 1:-1, 1:-1, :]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fsp(x, y):
    """G[n, i, j] = (1/(H*W)) sum over h, w of x[n, h, w, i] * y[n, h, w, j] (NHWC)."""
    hw = x.shape[1] * x.shape[2]
    return np.einsum("nhwi,nhwj->nij", x, y) / hw


# ---------------------------------------------------------------------------------------------
# Programs


def forward(prog, params, x, train, bn, stats=None, gates=None, flips=None, fixed=None):
    """The program's forward from NHWC images: every tensor by name (NHWC or NC) and each op's
    cache for `backward`. In train mode the new running statistics go to `stats`. With `gates`
    (ReLU output name -> tinykd's mask of that output > 0) a ReLU passes what tinykd's passed,
    and `flips` gets where the masks disagree: (tensor, count, largest |input| there in RMS of
    the input). With `fixed` (another forward's caches) every ReLU and max pool decides as
    that forward did, so the result is a smooth function of the parameters."""
    vals, caches = {prog["input"]: x}, {}
    eps = bn["eps"]
    for op in prog["ops"]:
        k, ins = op["kind"], [vals[i] for i in op["inputs"]]
        p = [params[n] for n in op["params"]]
        a, cache = ins[0], None
        if k["op"] == "conv":
            y, cache = conv_fwd(a, p[0], k["stride"], k["pad"])
        elif k["op"] == "dwconv":
            y, cache = dw_fwd(a, p[0], k["stride"])
        elif k["op"] == "bn":
            scale, offset, mean, var = p
            if train:
                y, cache = bn_train_fwd(a, scale, offset, eps)
                if stats is not None:
                    mom = bn["momentum"]
                    stats[op["params"][2]] = mom * mean + (1 - mom) * cache[3]
                    stats[op["params"][3]] = mom * var + (1 - mom) * cache[4]
            else:
                y = (a - mean) / np.sqrt(var + eps) * scale + offset
        elif k["op"] in ("relu", "addrelu"):
            if k["op"] == "addrelu":
                a = ins[0] + ins[1]
            mask = a > 0
            if fixed is not None:
                mask = fixed[op["name"]]
            elif gates is not None and op["output"] in gates:
                differ = mask != gates[op["output"]]
                mask = gates[op["output"]]
                if differ.any() and flips is not None:
                    rms = float(np.sqrt((a**2).mean()))
                    flips.append((op["output"], int(differ.sum()), float(np.abs(a[differ]).max()) / rms))
            y, cache = a * mask, mask
        elif k["op"] == "maxpool":
            y, cache = maxpool_fwd(a, fixed[op["name"]][1] if fixed is not None else None)
        elif k["op"] == "gap":
            y, cache = a.mean(axis=(1, 2)), a.shape
        elif k["op"] == "fc":
            y, cache = a @ p[0] + p[1], a
        else:
            raise ValueError(f"unknown op {k['op']}")
        vals[op["output"]], caches[op["name"]] = y, cache
    return vals, caches


def backward(prog, params, caches, seeds):
    """Gradients of every parameter reached from `seeds` ({tensor: dL/dtensor}) through a
    train-mode forward's caches."""
    grads, d = {}, dict(seeds)

    def give(name, g):
        d[name] = d[name] + g if name in d else g

    for op in reversed(prog["ops"]):
        dy = d.pop(op["output"], None)
        if dy is None:
            continue
        k, c, p, names = op["kind"], caches[op["name"]], [params[n] for n in op["params"]], op["params"]
        ins = op["inputs"]
        if k["op"] == "conv":
            dx, grads[names[0]] = conv_bwd(c, p[0], k["stride"], k["pad"], dy)
        elif k["op"] == "dwconv":
            dx, grads[names[0]] = dw_bwd(c, p[0], k["stride"], dy)
        elif k["op"] == "bn":
            dx, grads[names[0]], grads[names[1]] = bn_train_bwd(c, p[0], dy)
        elif k["op"] in ("relu", "addrelu"):
            dx = dy * c
            if k["op"] == "addrelu":
                give(ins[1], dx)
        elif k["op"] == "maxpool":
            dx = maxpool_bwd(c, dy)
        elif k["op"] == "gap":
            n, h, w, ch = c
            dx = np.broadcast_to(dy[:, None, None, :] / (h * w), c).copy()
        elif k["op"] == "fc":
            grads[names[0]], grads[names[1]] = c.T @ dy, dy.sum(axis=0)
            dx = dy @ p[0].T
        if ins[0] != prog["input"]:
            give(ins[0], dx)
    return grads


def losses(m, sv, tv, labels):
    """[(label, weight, value)] of the manifest's losses and their seeds {student tensor: dL}."""
    out, seeds = [], {}

    def seed(name, g):
        seeds[name] = seeds[name] + g if name in seeds else g

    n = len(labels)
    for loss in m["losses"]:
        w = loss["weight"]
        if loss["kind"] == "ce":
            z = sv[m["student"]["output"]]
            pz = softmax(z)
            v = -np.log(pz[np.arange(n), labels]).mean()
            g = pz.copy()
            g[np.arange(n), labels] -= 1
            seed(m["student"]["output"], w * g / n)
        elif loss["kind"] == "l2":
            s, t = sv[loss["student"]], tv[loss["teacher"]]
            v = ((s - t) ** 2).mean()
            seed(loss["student"], w * 2 * (s - t) / s.size)
        elif loss["kind"] == "soft_label":
            s = sv[loss["student"]]
            t = softmax(tv[loss["teacher"]] / loss["tt"])
            z = s / loss["ts"]
            logp = z - z.max(axis=1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
            v = -(t * logp).sum(axis=1).mean()
            seed(loss["student"], w * (softmax(z) - t) / (loss["ts"] * n))
        elif loss["kind"] == "fsp":
            (a, b), (ta, tb) = [sv[k] for k in loss["student"]], [tv[k] for k in loss["teacher"]]
            diff = fsp(a, b) - fsp(ta, tb)
            v = (diff**2).mean()
            dg = w * 2 * diff / diff.size / (a.shape[1] * a.shape[2])
            seed(loss["student"][0], np.einsum("nhwj,nij->nhwi", b, dg))
            seed(loss["student"][1], np.einsum("nhwi,nij->nhwj", a, dg))
        else:
            raise ValueError(f"unknown loss {loss['kind']}")
        out.append((loss, w, v))
    return out, seeds


def step_reference(m, d, teacher, step, dtype, flips=None):
    """Step `step` (from 1) from tinykd's state before it, in `dtype`: {key: float64 result},
    and a function giving the float64 loss at the parameters plus t times the gradients (for
    the check of the backward)."""
    rec, bn, opt = m["steps"][step - 1], m["bn"], m["optimizer"]
    before, velocity, trainable, x, labels, acts, gates = step_state(m, d, step)
    cast = lambda s: {k: v.astype(dtype) for k, v in s.items()}
    before, velocity, x = cast(before), cast(velocity), x.astype(dtype)
    tv = forward(m["teacher"], teacher, x, False, bn)[0] if m["teacher"] is not None else {}
    stats = {}
    sv, caches = forward(m["student"], before, x, True, bn, stats, gates, flips)
    parts, seeds = losses(m, sv, tv, labels)
    out = {f"loss {got['label']}": np.array([v]) for (_, _, v), got in zip(parts, rec["parts"])}
    out["loss total"] = np.array([sum(w * v for _, w, v in parts)])
    for k in load_store_np(d, rec["teacher"]) if "teacher" in rec else []:
        out[f"teacher {k}"] = tv[k]
    for k in acts:
        if k != m["student"]["input"]:
            out[f"activation {k}"] = sv[k]
    all_grads = backward(m["student"], before, caches, seeds)
    grads = {k: all_grads[k] for k in trainable}
    momentum_update(out, grads, before, velocity, stats, opt)

    def loss_along(t, key):
        """The total loss with parameter `key` moved by t times its gradient (every ReLU and
        max pool deciding as in the forward above)."""
        moved = dict(before)
        moved[key] = before[key] + t * grads[key]
        sv2 = forward(m["student"], moved, x, True, bn, fixed=caches)[0]
        return sum(w * v for _, w, v in losses(m, sv2, tv, labels)[0])

    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}, grads, loss_along


def check_backward(grads, loss_along, failures):
    """The hand-written backward against the forward: for each parameter, the derivative of
    the float64 loss along its own gradient g, by a central difference over a step of 1e-6
    (every ReLU and max pool deciding as in the forward, so the loss is smooth there), must be
    |g|^2 to 1e-5 relative (the recordings reach ~3e-7; a backward that drops a term,
    misplaces a tap or scales by a wrong factor is far off)."""
    worst = 0.0
    for key, g in grads.items():
        g2 = float((g * g).sum())
        if g2 == 0.0:
            continue
        h = 1e-6 / np.sqrt(g2)
        est = (loss_along(h, key) - loss_along(-h, key)) / (2 * h)
        err = abs(est - g2) / g2
        worst = max(worst, err)
        if not err <= 1e-5:
            failures.append(f"reference backward of {key}")
            print(f"  FAIL the reference's backward of {key}: central difference {est:.6e} vs |g|^2 {g2:.6e}")
    return worst


class Numpy:
    """The numpy reference, as `crosscheck_common.check_run` and `check_finetune` take it."""

    name = "numpy"

    @staticmethod
    def step(m, d, teacher64, step, dtype, flips, table):
        teacher = {k: v.astype(dtype) for k, v in teacher64.items()}
        out, grads, loss_along = step_reference(m, d, teacher, step, dtype, flips)
        if step == 1 and dtype == np.float64:
            worst = check_backward(grads, loss_along, table.failures)
            print(f"  the reference's backward against central differences of its forward: {len(grads)} "
                  f"parameters, worst relative error {worst:.1e}")
        return out

    @staticmethod
    def logits(prog, params, x, bn, dtype):
        cast = {k: v.astype(dtype) for k, v in params.items()}
        return forward(prog, cast, x.astype(dtype), False, bn)[0][prog["output"]].astype(np.float64)

    @staticmethod
    def finetune_step(m, p64, t):
        return finetune_step(m, p64, t)


def finetune_step(m, p64, t):
    """The fine-tuner's step (`crosscheck_common.check_finetune`): eval forward of the folded
    model, the tail, cross-entropy, its gradient by hand, Momentum with weight decay."""
    prog, bn, opt, n = m["student"], m["bn"], m["optimizer"], m["batch"]
    c, c_in, classes = t.c, t.c_in, t.classes

    def step(tail, flat, x, labels, dtype):
        cast = {k: v.astype(dtype) for k, v in p64.items()}
        vals = forward(prog, cast, x.astype(dtype), False, bn)[0]
        k = flat.shape[0] // 2
        p0, v0 = flat[:k].astype(dtype), flat[k:].astype(dtype)
        parts = [q for _, q in t.split(tail, p0)]
        wfc, bfc = parts[0].reshape(c, classes), parts[1]
        if tail == "fc":
            h = vals[t.relu["output"]]
        elif tail == "fc_affine":
            pre = vals[t.sep_bn["output"]] * parts[2] + parts[3]
            h = pre * (pre > 0)
        else:
            pre = vals[t.sep["inputs"][0]] @ parts[2].reshape(c_in, c) + parts[3]
            h = pre * (pre > 0)
        pooled = h.mean(axis=(1, 2))
        pz = softmax(pooled @ wfc + bfc)
        loss = -np.log(pz[np.arange(n), labels]).mean()
        dz = pz.copy()
        dz[np.arange(n), labels] -= 1
        dz /= n
        g = [(pooled.T @ dz).ravel(), dz.sum(axis=0)]
        if tail != "fc":
            dpre = np.broadcast_to((dz @ wfc.T)[:, None, None, :] / (h.shape[1] * h.shape[2]), h.shape) * (pre > 0)
            if tail == "fc_affine":
                g += [(dpre * vals[t.sep_bn["output"]]).sum(axis=(0, 1, 2)), dpre.sum(axis=(0, 1, 2))]
            else:
                xin = vals[t.sep["inputs"][0]].reshape(-1, c_in)
                g += [(xin.T @ dpre.reshape(-1, c)).ravel(), dpre.sum(axis=(0, 1, 2))]
        g = np.concatenate(g)
        v = opt["momentum"] * v0 + g + opt["weight_decay"] * p0
        after = p0 - opt["lr"] * v
        return np.array([loss], dtype=np.float64), np.concatenate([after, v]).astype(np.float64)

    return step


if __name__ == "__main__":
    main(__doc__, Numpy, (KeyError, ValueError, IndexError))
