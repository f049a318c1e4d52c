"""Random conv_transpose / conv problems run by PyTorch (with autograd) and by the tconv CLI
on the same .npy files, compared exactly: the data are quarter integers, so every sum is
exact in float32 and float64 (a fifth of the problems) and any difference is a bug, not
rounding. Sizes reach past the unit tests' (channels up to 128, HiFi-GAN's k16 s8, kernel ==
stride) so that the planner's fast paths run, and each call may force an algorithm
(TCONV_ALGORITHM) and an instruction set (TCONV_ISA).

    /work/.venv-peers/bin/python bench/torch_fuzz.py 10000 4    # calls, seed; needs torch, numpy

Asymmetric padding (`--pads`, ONNX's) is checked against PyTorch's full output cropped (or
its input padded, for a conv). Where autograd's weight gradient differs from tconv's, it is
recomputed from PyTorch's forward conv alone (`forward_weight_gradient`); a call whose
recomputed gradient equals tconv's is tallied as PyTorch's error. Prints one line per
mismatch or refusal and a summary; exits 1 on any.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from framework_fuzz import arr, compare, run_tconv, save, start  # noqa: E402


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
        gy = arr(gy_rng, *y.shape).astype(x.dtype)
        y.backward(torch.tensor(gy))
        want.update(gx=xt.grad.numpy(), gw=wt.grad.numpy())
        if bt is not None:
            want["gb"] = bt.grad.numpy()
    return want, gy


def forward_weight_gradient(p, x, gy):
    """The weight gradient from PyTorch's conv forward pass alone, in float64: the
    correlation of the (padded) input with the upstream gradient, batch as channels, the
    stride as dilation and the dilation as stride, group by group."""
    import torch
    import torch.nn.functional as F

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[p["r"]]
    x = torch.tensor(x, dtype=torch.float64)
    gy = torch.tensor(gy, dtype=torch.float64)
    if p["op"] == "conv":
        # gw[co, ci, k] = Σ_n Σ_q gy[n, co, q] · x_padded[n, ci, q·s + k·d]
        big = F.pad(x, [v for b, e in reversed(p["pads"]) for v in (b, e)])
        small = gy
    else:
        # gw[ci, co, k] = Σ_n Σ_i x[n, ci, i] · gy_padded[n, co, i·s + k·d], gy padded by
        # the cropping that made it from the full output (negative: output padding cut).
        full = [(i - 1) * s + d * (k - 1) + 1 for i, s, d, k in zip(p["ins"], p["s"], p["d"], p["k"])]
        ends = [f - b - n for f, (b, _), n in zip(full, p["pads"], gy.shape[2:])]
        big = F.pad(gy, [v for (b, _), e in zip(reversed(p["pads"]), reversed(ends)) for v in (b, e)])
        small = x
    g = p["g"]
    cb, cs = big.shape[1] // g, small.shape[1] // g
    parts = []
    for j in range(g):
        inp = big[:, j * cb:(j + 1) * cb].transpose(0, 1)      # (cb, N, *)
        ker = small[:, j * cs:(j + 1) * cs].transpose(0, 1)    # (cs, N, *)
        out = conv(inp, ker, stride=tuple(p["d"]), dilation=tuple(p["s"]))  # (cb, cs, *)
        out = out[(slice(None), slice(None), *[slice(0, k) for k in p["k"]])]
        parts.append(out.transpose(0, 1))  # (cs, cb, *k)
    # conv: (C_out, C_in/g, *k); transposed: (C_in, C_out/g, *k).
    return torch.cat(parts, 0).numpy()


def main():
    n, seed, rng, tally, tmp = start("tconv-fuzz-torch-", 200)
    total_flops = 0
    for i in range(n):
        d = os.path.join(tmp, f"c{i}")
        os.makedirs(d)
        p = problem(rng)
        total_flops += p["flops"]
        dtype = np.float64 if rng.random() < 0.2 else np.float32
        x = arr(rng, p["n"], p["cin"], *p["ins"]).astype(dtype)
        w = arr(rng, *((p["cin"], p["cout"] // p["g"]) if p["op"] == "conv_transpose" else (p["cout"], p["cin"] // p["g"])), *p["k"]).astype(dtype)
        b = arr(rng, p["cout"]).astype(dtype) if p["bias"] else None
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
            # PyTorch's autograd checked by its own forward pass (a conv of the input and
            # the upstream gradient).
            truth = forward_weight_gradient(p, x, gy).astype(w.dtype)
            if np.array_equal(truth, got["gw"]):
                tally.add("PyTorch's autograd weight gradient wrong (its forward agrees with tconv)", desc)
                want["gw"] = truth
        if compare(tally, desc, want, got, tol=0.0):
            tally.add("agree" + (" with gradients" if grads else ""))
    print(json.dumps({"calls": n, "seed": seed, "gflop": round(total_flops / 1e9, 1), **tally.counts}, indent=1))
    sys.exit(1 if tally.bad or "REFUSED" in tally.counts else 0)


if __name__ == "__main__":
    main()
