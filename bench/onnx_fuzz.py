"""Random ONNX Conv / ConvTranspose nodes run by the tconv CLI and compared exactly
(quarter-integer data) with the operator text's equations, and beside them with onnx's
reference implementation (onnx.reference) and onnxruntime: strides, dilations, groups,
explicit `pads`, `auto_pad` (SAME_UPPER, SAME_LOWER, VALID), ConvTranspose's
`output_padding` and `output_shape`, 1-3-D.

    /work/.venv-peers/bin/python bench/onnx_fuzz.py 2000 2    # calls, seed; needs onnx, onnxruntime, torch

The text (onnx.ai/onnx/operators/onnx__ConvTranspose.html, onnx__Conv.html) is computed by
`text`: PyTorch's forward pass without padding, then a ConvTranspose's full output cropped
by the pads the text's equations derive (`total_padding` split with the odd unit at the end
for SAME_UPPER, at the start otherwise; a negative pad adds outputs no input reaches, which
hold the bias), or a Conv's input padded by them. onnx.reference runs group by group (its
ConvTranspose mishandles groups). Each call is tallied by whether tconv equals the text (or
both refuse) and whether the reference and onnxruntime agree, differ, or fail; VERBOSE=1
prints onnxruntime's departures. Exits 1 on a mismatch with the text or a call tconv
refuses that the text defines.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from framework_fuzz import VERBOSE, arr, compare, refusal, run_tconv, save, start  # noqa: E402


def node_model(op, r, x_shape, w_shape, bias, attrs):
    from onnx import TensorProto, helper

    inputs = ["x", "w"] + (["b"] if bias else [])
    node = helper.make_node(op, inputs, ["y"], **attrs)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
           helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape))]
    if bias:
        ins.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [w_shape[1] * attrs.get("group", 1)
                                                                          if op == "ConvTranspose" else w_shape[0]]))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", ins, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    return model.SerializeToString()


def spec_shape(op, ins, k, s, d, pads, auto_pad, output_padding, output_shape):
    """The output's spatial shape by the operator text (None where it defines none)."""
    out = []
    for a, (i, kk, ss, dd) in enumerate(zip(ins, k, s, d)):
        span = dd * (kk - 1) + 1
        op_ = output_padding[a] if output_padding else 0
        if op == "Conv":
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                n = -(-i // ss)
            elif auto_pad == "VALID":
                n = (i - span) // ss + 1 if i >= span else 0
            else:
                b, e = pads[a], pads[a + len(ins)]
                n = (i + b + e - span) // ss + 1 if i + b + e >= span else 0
        else:
            if output_shape:
                n = output_shape[a]
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                n = i * ss
            elif auto_pad == "VALID":
                n = ss * (i - 1) + op_ + span
            else:
                n = ss * (i - 1) + op_ + span - pads[a] - pads[a + len(ins)]
        out.append(n)
    return out


def spatial(a):
    """An output's spatial shape (None for none)."""
    return None if a is None else list(a.shape[2:])


def split(total, upper):
    """The operator text's split of a total padding: SAME_UPPER puts the odd unit at the end."""
    if upper:
        return total // 2, total - total // 2
    return total - total // 2, total // 2


def text(op, x, w, b, attrs):
    """The node by the operator text's equations, on PyTorch's forward pass (padding 0):
    a ConvTranspose's full output cropped by the pads the text derives (a negative pad adds
    outputs no input reaches, holding the bias); a Conv's input padded by them."""
    import torch
    import torch.nn.functional as F

    r = x.ndim - 2
    s, d, k, g = attrs["strides"], attrs["dilations"], attrs["kernel_shape"], attrs["group"]
    auto = attrs.get("auto_pad", "NOTSET")
    ins = x.shape[2:]
    span = [dd * (kk - 1) + 1 for kk, dd in zip(k, d)]
    xt, wt = torch.tensor(x), torch.tensor(w)
    bt = None if b is None else torch.tensor(b)
    if op == "Conv":
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [split(max((-(-i // ss) - 1) * ss + sp - i, 0), auto == "SAME_UPPER")
                    for i, ss, sp in zip(ins, s, span)]
        elif auto == "VALID":
            pads = [(0, 0)] * r
        else:
            pads = list(zip(attrs["pads"][:r], attrs["pads"][r:]))
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[r]
        xp = F.pad(xt, [v for bb, e in reversed(pads) for v in (bb, e)])
        return conv(xp, wt, bt, stride=s, dilation=d, groups=g).numpy()
    op_pad = attrs.get("output_padding", [0] * r)
    full_len = [ss * (i - 1) + o + sp for i, ss, o, sp in zip(ins, s, op_pad, span)]
    want = attrs.get("output_shape")
    if want is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        want = [i * ss for i, ss in zip(ins, s)]
    if want is not None:
        pads = [split(f - o, auto == "SAME_UPPER") for f, o in zip(full_len, want)]
    elif auto == "VALID":
        pads = [(0, 0)] * r
    else:
        pads = list(zip(attrs["pads"][:r], attrs["pads"][r:]))
    convt = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[r]
    full = convt(xt, wt, None, stride=s, output_padding=op_pad, groups=g, dilation=d).numpy()
    shape = [f - bb - e for f, (bb, e) in zip(full_len, pads)]
    if min(shape) < 1:
        raise ValueError(f"the text's pads {pads} leave output {shape}")
    y = np.zeros(full.shape[:2] + tuple(shape), np.float32)
    src = tuple(slice(max(bb, 0), f - max(e, 0)) for f, (bb, e) in zip(full_len, pads))
    dst = tuple(slice(max(-bb, 0), max(-bb, 0) + (sl.stop - sl.start)) for (bb, _), sl in zip(pads, src))
    y[(slice(None), slice(None), *dst)] = full[(slice(None), slice(None), *src)]
    if b is not None:
        y += b.reshape(1, -1, *([1] * r))
    return y


def reference(op, x, w, b, attrs):
    """The node run by onnx.reference, one group at a time."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    g = attrs["group"]
    cin_g = x.shape[1] // g
    cout = w.shape[1] * g if op == "ConvTranspose" else w.shape[0]
    cout_g = cout // g
    one = dict(attrs, group=1)
    outs = []
    for j in range(g):
        xj = x[:, j * cin_g:(j + 1) * cin_g]
        wj = w[j * cin_g:(j + 1) * cin_g] if op == "ConvTranspose" else w[j * cout_g:(j + 1) * cout_g]
        feed = {"x": np.ascontiguousarray(xj), "w": np.ascontiguousarray(wj)}
        if b is not None:
            feed["b"] = np.ascontiguousarray(b[j * cout_g:(j + 1) * cout_g])
        model = node_model(op, x.ndim - 2, xj.shape, wj.shape, b is not None, one)
        outs.append(ReferenceEvaluator(onnx.load_from_string(model)).run(None, feed)[0])
    return np.concatenate(outs, axis=1)


def main():
    import onnxruntime as ort

    n_calls, seed, rng, tally, tmp = start("tconv-fuzz-onnx-", 300)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    for c in range(n_calls):
        d = os.path.join(tmp, f"c{c}")
        os.makedirs(d)
        op = "ConvTranspose" if rng.random() < 0.7 else "Conv"
        r = int(rng.choice([1, 2, 2, 3]))
        g = int(rng.choice([1, 1, 2, 3]))
        cin, cout = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
        ins = [int(rng.integers(1, 8)) for _ in range(r)]
        k = [int(rng.integers(1, 5)) for _ in range(r)]
        s = [int(rng.choice([1, 1, 2, 3])) for _ in range(r)]
        dl = [int(rng.choice([1, 1, 2])) for _ in range(r)]
        nb = int(rng.integers(1, 3))
        attrs = {"strides": s, "dilations": dl, "group": g, "kernel_shape": k}
        auto_pad = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
        pads = None
        if auto_pad == "NOTSET":
            pads = [int(rng.integers(0, 4)) for _ in range(2 * r)]
            attrs["pads"] = pads
        else:
            attrs["auto_pad"] = auto_pad
        output_padding = output_shape = None
        if op == "ConvTranspose":
            if rng.random() < 0.3:
                output_padding = [int(rng.integers(0, max(a, b))) for a, b in zip(s, dl)]
                attrs["output_padding"] = output_padding
            if rng.random() < 0.3:
                nominal = spec_shape(op, ins, k, s, dl, pads, auto_pad, output_padding, None)
                output_shape = [max(1, m + int(rng.integers(-1, 3))) for m in nominal]
                attrs["output_shape"] = output_shape
        x = arr(rng, nb, cin, *ins)
        w = arr(rng, *((cin, cout // g) if op == "ConvTranspose" else (cout, cin // g)), *k)
        bias = bool(rng.random() < 0.5)
        b = arr(rng, cout) if bias else None
        desc = f"{op}(x{list(x.shape)}, w{list(w.shape)}, bias={bias}, {attrs})"
        model = node_model(op, r, x.shape, w.shape, bias, attrs)
        feed = {"x": x, "w": w, **({"b": b} if bias else {})}
        # The operator's reference implementation (onnx.reference; group by group, as its
        # ConvTranspose mishandles groups), then onnxruntime.
        try:
            ref = {"y": reference(op, x, w, b, attrs)}
        except Exception:  # noqa: BLE001 - it fails on many valid nodes (tallied as such)
            ref = None
        try:
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            rt, oerr = sess.run(None, feed)[0], None
        except Exception as e:  # noqa: BLE001
            rt, oerr = None, refusal(e)
        args = ["conv-transpose" if op == "ConvTranspose" else "conv", "--stride", ",".join(map(str, s)),
                "--dilation", ",".join(map(str, dl)), "--groups", str(g)]
        if pads is not None:
            args += ["--pads", ",".join(map(str, pads))]
        else:
            args += ["--auto-pad", auto_pad.lower().replace("_", "-")]
        if output_padding is not None:
            args += ["--output-padding", ",".join(map(str, output_padding))]
        if output_shape is not None:
            args += ["--output-shape", ",".join(map(str, output_shape))]
        files = save(d, x=x, w=w, **({"b": b} if bias else {}))
        args += ["--input", files["x"], "--weight", files["w"]] + (["--bias", files["b"]] if bias else [])
        out = os.path.join(d, "y_tconv.npy")
        ok, msg, got = run_tconv(args + ["--output", out], {"y": out})
        cmd = "tconv " + " ".join(args)
        try:
            tx, terr = text(op, x, w, b, attrs), None
        except Exception as e:  # noqa: BLE001 - an empty output (PyTorch refuses those)
            tx, terr = None, refusal(e)
        truth = tx if tx is not None else got.get("y")
        same = lambda a: a is not None and truth is not None and a.shape == truth.shape and np.array_equal(a, truth)  # noqa: E731
        r_y = None if ref is None else ref["y"]
        voices = f"reference {'agrees' if same(r_y) else ('fails' if r_y is None else 'differs')}, onnxruntime {'agrees' if same(rt) else ('refuses' if rt is None else 'differs')}"
        if tx is not None and ok:
            if compare(tally, f"{desc}: {voices}\n    {cmd}", {"y": tx}, got, tol=0.0):
                departs = not same(rt) or (r_y is not None and not same(r_y))
                tally.add("tconv = text; " + voices,
                          f"{desc}: text {spatial(tx)}, reference {spatial(r_y)}, onnxruntime {spatial(rt)}"
                          + (f"\n    onnxruntime: {oerr}" if rt is None else "")
                          if VERBOSE and departs else None)
        elif tx is not None:
            tally.add("REFUSED", f"{desc}: text {spatial(tx)}\n    {cmd}\n    {msg}")
        elif ok:
            tally.add("tconv computes what the text's PyTorch form refuses; " + voices,
                      f"{desc}\n    text: {terr}\n    tconv {spatial(got['y'])}" + (f"\n    onnxruntime: {oerr}" if rt is None else ""))
        else:
            tally.add("tconv and the text refuse; " + voices, f"{desc}\n    text: {terr}\n    tconv: {msg}" if VERBOSE else None)
    print(json.dumps({"calls": n_calls, "seed": seed, **tally.counts}, indent=1))
    sys.exit(1 if tally.bad or "REFUSED" in tally.counts else 0)


if __name__ == "__main__":
    main()
