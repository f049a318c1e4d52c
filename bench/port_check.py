"""Check `tconv port` against PyTorch: for every TensorFlow / Keras / JAX golden in
crates/tconv/tests/data/frameworks, run `tconv port` on the case's call, evaluate the
permutations and the PyTorch call it prints with torch, and compare with the framework's
own output.

    /work/.venv-peers/bin/python bench/port_check.py target/release/tconv
    /work/.venv-peers/bin/python bench/port_check.py target/release/tconv DIR   # cases kept by framework_fuzz.py (KEEP=DIR)
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F  # noqa: F401 (the printed calls use it)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "tconv", "tests", "data", "frameworks")


def flags(meta, x_shape, case):
    fw = meta["framework"]
    name = "tf" if fw in ("tensorflow", "keras") else ("jax-transpose-kernel" if meta.get("transpose_kernel") else "jax")
    op = "conv-transpose" if meta["op"] == "conv_transpose" else "conv"
    pad = meta["padding"]
    pad = pad.replace("_", "-") if isinstance(pad, str) else ",".join(f"{b}:{e}" for b, e in pad)
    args = [op, "--convention", name, f"--framework-padding={pad}",
            "--stride", ",".join(map(str, meta["strides"])),
            "--dilation", ",".join(map(str, meta["dilations"])),
            "--input-shape", ",".join(map(str, x_shape)),
            "--weight", os.path.join(case, "w.npy")]
    if meta.get("consistent_padding"):
        args.append("--consistent-padding")
    if meta.get("data_format") == "channels_first":
        args.append("--channels-first")
    if meta.get("groups", 1) != 1:
        args += ["--groups", str(meta["groups"])]
    if fw == "tensorflow" and op == "conv-transpose":
        args += ["--output-size", ",".join(map(str, meta["output_size"]))]
    if fw == "keras" and meta.get("output_padding"):
        args += ["--output-padding", ",".join(map(str, meta["output_padding"]))]
    return args


def main(tconv, root=ROOT):
    failures, checked = [], 0
    for name in sorted(os.listdir(root)):
        case = os.path.join(root, name)
        if not os.path.exists(os.path.join(case, "case.json")):
            continue
        meta = json.load(open(os.path.join(case, "case.json")))
        x = torch.from_numpy(np.load(os.path.join(case, "x.npy")))
        w = torch.from_numpy(np.load(os.path.join(case, "w.npy")))
        b = torch.from_numpy(np.load(os.path.join(case, "b.npy"))) if os.path.exists(os.path.join(case, "b.npy")) else None
        if "port_flags" in meta:  # a case kept by bench/framework_fuzz.py
            port = meta["port_flags"] + ["--input-shape", ",".join(map(str, x.shape)), "--weight", os.path.join(case, "w.npy")]
        else:
            port = flags(meta, list(x.shape), case)
        out = subprocess.run([tconv, "port", *port], capture_output=True, text=True)
        if out.returncode != 0:
            failures.append(f"{name}: {out.stderr.strip()}")
            continue
        text = out.stdout
        perm = lambda what: re.search(rf"^  \w+ +{what} \S.*?-> ({what}\.[^:]*|{what}\.as is):", text, re.M).group(1)
        expr = lambda what, value: value if perm(what).endswith("as is") else eval(perm(what), {what: value})
        xt, wt = expr("x", x), expr("w", w)
        call = re.search(r"^  PyTorch: (.*)$", text, re.M).group(1)
        y = eval(call, {"F": torch.nn.functional, "x": xt, "w": wt, "b": b})
        y = expr("y", y)
        want = np.load(os.path.join(case, "y.npy"))
        diff = float(np.abs(y.numpy() - want).max()) if y.shape == want.shape else None
        checked += 1
        status = "ok" if diff is not None and diff <= 1e-4 else "FAIL"
        print(f"{status:4} {name:28} {call}  max diff {diff}")
        if status != "ok":
            failures.append(name)
    print(f"{checked} cases checked through torch {torch.__version__}; {len(failures)} failed")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/release/tconv", *sys.argv[2:3]))
