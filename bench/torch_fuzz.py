"""Random conv_transpose / conv problems run by PyTorch (with autograd) and by the tconv CLI
on the same .npy files, compared exactly: the data are quarter integers, so every sum is
exact in float32 and any difference is a bug, not rounding. Sizes reach past the unit tests'
(channels up to 64, kernels up to 16 with stride 8) so that the planner's fast paths run, and
each call may force an algorithm (TCONV_ALGORITHM) and an instruction set (TCONV_ISA).

    /work/.venv-peers/bin/python bench/torch_fuzz.py 300 1    # calls, seed; needs torch, numpy

Asymmetric padding (`--pads`, ONNX's) is checked against PyTorch's full output cropped.
Prints one line per mismatch or refusal and a summary; exits 1 on any.
"""
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from framework_fuzz import Tally, arr, compare, run_tconv, save  # noqa: E402


def problem(rng):
    """One random problem: op, shapes and parameters (PyTorch's), valid for PyTorch."""
    while True:
        r = int(rng.choice([1, 2, 2, 2, 3]))
        op = "conv_transpose" if rng.random() < 0.7 else "conv"
        g = int(rng.choice([1, 1, 1, 2, 3, 4]))
        depthwise = rng.random() < 0.12
        big = rng.random() < 0.25  # the planner's fast paths for wide layers
        chans = [32, 64, 128] if big else [1, 2, 3, 4, 5, 8, 16, 24, 32, 64]
        cin_g = 1 if depthwise else int(rng.choice(chans))
        cout_g = 1 if depthwise else int(rng.choice(chans))
        if depthwise:
            g = int(rng.choice([3, 8, 21, 64]))
        if big:
            g = 1
        if rng.random() < 0.15 and r == 1:
            k, s = [16], [8]  # HiFi-GAN's upsampler
        elif rng.random() < 0.15:
            s = [int(rng.choice([2, 2, 3]))] * r
            k = list(s)  # kernel == stride (U-Net)
        else:
            k = [int(rng.integers(1, 6)) for _ in range(r)]
            s = [int(rng.choice([1, 1, 2, 2, 3, 4])) for _ in range(r)]
        d = [int(rng.choice([1, 1, 1, 2, 3])) for _ in range(r)]
        most = {1: 300, 2: 32, 3: 12}[r] if big or depthwise else {1: 40, 2: 20, 3: 8}[r]
        ins = [int(rng.integers(1, most + 1)) for _ in range(r)]
        n = int(rng.integers(1, 4))
        span = [dd * (kk - 1) + 1 for kk, dd in zip(k, d)]
        symmetric = rng.random() < 0.6
        pads = [(int(rng.integers(0, sp)), int(rng.integers(0, sp))) for sp in span]
        if symmetric:
            pads = [(b, b) for b, _ in pads]
        if op == "conv_transpose":
            # output_padding only with PyTorch's symmetric padding (ONNX's pads crop the full
            # output; its output_padding is not checked here).
            full = [(i - 1) * ss + sp for i, ss, sp in zip(ins, s, span)]
            op_pad = [int(rng.integers(0, max(ss, dd))) if symmetric and rng.random() < 0.3 else 0
                      for ss, dd in zip(s, d)]
            if any(b + e >= f + o for (b, e), f, o in zip(pads, full, op_pad)):
                continue
        else:
            op_pad = [0] * r
            if any(i + b + e < sp for i, (b, e), sp in zip(ins, pads, span)):
                continue
        flops = 2 * n * g * cin_g * cout_g * np.prod(ins) * np.prod(k)
        if flops > 1.5e9:
            continue
        return dict(flops=int(flops), op=op, r=r, n=n, g=g, cin=g * cin_g, cout=g * cout_g, ins=ins, k=k, s=s, d=d,
                    pads=pads, output_padding=op_pad, bias=bool(rng.random() < 0.6), symmetric=symmetric)


def torch_run(p, x, w, b, gy_rng, grads):
    import torch
    import torch.nn.functional as F

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    fn = {("conv_transpose", 1): F.conv_transpose1d, ("conv_transpose", 2): F.conv_transpose2d,
          ("conv_transpose", 3): F.conv_transpose3d, ("conv", 1): F.conv1d, ("conv", 2): F.conv2d,
          ("conv", 3): F.conv3d}[(p["op"], p["r"])]
    if p["symmetric"]:
        kw = dict(padding=tuple(b_ for b_, _ in p["pads"]))
        if p["op"] == "conv_transpose":
            kw["output_padding"] = tuple(p["output_padding"])
        y = fn(xt, wt, bt, stride=tuple(p["s"]), dilation=tuple(p["d"]), groups=p["g"], **kw)
    elif p["op"] == "conv_transpose":
        full = fn(xt, wt, bt, stride=tuple(p["s"]), dilation=tuple(p["d"]), groups=p["g"])
        y = full[(slice(None), slice(None), *[slice(b_, full.shape[2 + a] - e) for a, (b_, e) in enumerate(p["pads"])])]
    else:
        flat = [v for b_, e in reversed(p["pads"]) for v in (b_, e)]
        y = fn(F.pad(xt, flat), wt, bt, stride=tuple(p["s"]), dilation=tuple(p["d"]), groups=p["g"])
    want = {"y": y.detach().numpy()}
    gy = None
    if grads:
        gy = arr(gy_rng, *y.shape)
        y.backward(torch.tensor(gy))
        want.update(gx=xt.grad.numpy(), gw=wt.grad.numpy())
        if bt is not None:
            want["gb"] = bt.grad.numpy()
    return want, gy


def one_hot_weight_gradient(p, x, wshape, gy, most=4096):
    """The weight gradient from PyTorch's forward pass alone (None for large weights)."""
    if int(np.prod(wshape)) > most:
        return None
    import torch

    out = np.zeros(wshape, np.float32)
    q = dict(p, bias=False)
    for idx in np.ndindex(*wshape):
        e = np.zeros(wshape, np.float32)
        e[idx] = 1
        y, _ = torch_run(q, x, e, None, None, False)
        out[idx] = np.float32(torch.tensor(y["y"], dtype=torch.float64).mul(torch.tensor(gy, dtype=torch.float64)).sum().item())
    return out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = np.random.default_rng(seed)
    tally = Tally()
    tmp = tempfile.mkdtemp(prefix="tconv-fuzz-torch-")
    total_flops = 0
    for i in range(n):
        d = os.path.join(tmp, f"c{i}")
        os.makedirs(d)
        p = problem(rng)
        total_flops += p["flops"]
        x = arr(rng, p["n"], p["cin"], *p["ins"])
        w = arr(rng, *((p["cin"], p["cout"] // p["g"]) if p["op"] == "conv_transpose" else (p["cout"], p["cin"] // p["g"])), *p["k"])
        b = arr(rng, p["cout"]) if p["bias"] else None
        grads = bool(rng.random() < 0.4)
        want, gy = torch_run(p, x, w, b, rng, grads)
        algorithm = str(rng.choice(["", "", "", "direct", "col2im", "winograd"]))
        isa = str(rng.choice(["", "", "avx2", "scalar"]))
        j = ",".join
        args = ["conv-transpose" if p["op"] == "conv_transpose" else "conv",
                "--stride", j(map(str, p["s"])), "--dilation", j(map(str, p["d"])), "--groups", str(p["g"]),
                "--pads", j(str(b_) for b_, _ in p["pads"]) + "," + j(str(e) for _, e in p["pads"])]
        if p["op"] == "conv_transpose":
            args += ["--output-padding", j(map(str, p["output_padding"]))]
        files = save(d, x=x, w=w, **({"b": b} if b is not None else {}))
        args += ["--input", files["x"], "--weight", files["w"]] + (["--bias", files["b"]] if b is not None else [])
        outs = {"y": os.path.join(d, "y_tconv.npy")}
        if grads:
            outs.update({g: os.path.join(d, f"{g}_tconv.npy") for g in ("gx", "gw")})
            args += ["--grad-output", save(d, gy=gy)["gy"], "--grad-input", outs["gx"], "--grad-weight", outs["gw"]]
            if b is not None:
                outs["gb"] = os.path.join(d, "gb_tconv.npy")
                args += ["--grad-bias", outs["gb"]]
        args += ["--output", outs["y"]]
        env = {"TCONV_ALGORITHM": algorithm, "TCONV_ISA": isa}
        ok, msg, got = run_tconv(args, outs, env)
        desc = f"{p} algorithm={algorithm or 'planned'} isa={isa or 'detected'}\n    tconv " + " ".join(args)
        if not ok:
            tally.add("REFUSED", f"{desc}\n    {msg}")
            continue
        if "gw" in want and got["gw"].shape == want["gw"].shape and not np.array_equal(got["gw"], want["gw"]):
            # PyTorch's autograd checked by its own forward pass: the weight gradient is
            # Σ gy · conv_transpose(x, one-hot weight), tap by tap.
            truth = one_hot_weight_gradient(p, x, w.shape, gy)
            if truth is not None and np.array_equal(truth, got["gw"]):
                tally.add("PyTorch's autograd weight gradient wrong (its forward agrees with tconv)", desc)
                want["gw"] = truth
        if compare(tally, desc, want, got, tol=0.0):
            tally.add("agree" + (" with gradients" if grads else ""))
    print(json.dumps({"calls": n, "seed": seed, "gflop": round(total_flops / 1e9, 1), **tally.counts}, indent=1))
    sys.exit(1 if tally.bad or "REFUSED" in tally.counts else 0)


if __name__ == "__main__":
    main()
