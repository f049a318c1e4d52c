"""Random calls of TensorFlow / Keras or JAX convolutions, run by the framework and by
`tconv --convention ...` on the same .npy files, compared (outputs and, for a third of the
calls, gradients; quarter-integer data, so every result must agree exactly).

    /work/.venv-tf/bin/python bench/framework_fuzz.py tf 500 5      # tf.nn and Keras (tensorflow-cpu, keras)
    /work/.venv-peers/bin/python bench/framework_fuzz.py jax 500 5  # jax.lax (jax)

Arguments: the framework, the number of calls (default 200), a seed (default 1); needs a
release build of tconv (`cargo build --release`). Each call is tallied as one of: both agree
(with gradients); both refuse; a framework limit (TensorFlow's CPU kernels refuse dilation
with a stride, NCHW or explicit padding outside 2-D, grouped 3-D convs; tconv computes what
the call means); a framework quirk (its result contradicts its own rule: TensorFlow's oneDNN
transposed conv accepts output_shapes its reference kernel refuses, its grouped conv returns
uninitialised memory where the output is empty); TensorFlow's conv contradicting its
definition (computed here: tconv is compared with that instead); the framework's output empty while tconv
refuses (as PyTorch does); tconv refusing a call the framework runs (printed with tconv's
message, to check against what PyTorch's parameters can express); the framework's gradient
wrong (JAX: where only the gradients differ, they are recomputed from JAX's forward pass
alone, by linearity, and tconv's match those; JAX 0.10's vjp of a conv_transpose padding
the dilated input beyond the kernel's reach returns uninitialised memory for some input
positions, varying from call to call). JAX 0.10's XLA can abort the whole process on a
gradient (a failed check in its algebraic simplifier, "Window dimensions do not match RHS
shape", at `jax 150 3841`): nothing to tally; rerun with another seed. Prints one line per
disagreement (VERBOSE=1: also the refusals) and a summary; exits 1 on a mismatch, a call
tconv runs that the framework refuses for what it means, or a refusal that leaves a file.
KEEP=DIR saves every agreeing call as a case for `bench/port_check.py DIR` (which runs the
PyTorch call `tconv port` prints for it through torch).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCONV = os.path.join(ROOT, "target", "release", "tconv")


def arr(rng, *shape):
    # Quarter integers: every sum here is exact in float32, so results must agree exactly.
    return (rng.integers(-8, 9, size=shape) / 4).astype(np.float32)


# A framework's result that contradicts its own definition of the call.
QUIRK = "framework quirk:"


def conv_definition(x, w, s, d, padding, groups):
    """tf.nn.convolution of channels-last `x` (N, *in, C_in) by `w` (*k, C_in/groups, C_out)
    from its definition, TensorFlow's padding rule (SAME: the total `max((out-1)s +
    (k-1)d + 1 - in, 0)` split with the extra one after), in float64."""
    r = x.ndim - 2
    ins, k = x.shape[1:-1], w.shape[:r]
    sizes = conv_sizes(list(ins), list(k), s, d, padding)
    if isinstance(padding, str):
        pads = []
        for a in range(r):
            total = 0 if padding == "VALID" else max((sizes[a] - 1) * s[a] + (k[a] - 1) * d[a] + 1 - ins[a], 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = [tuple(p) for p in padding]
    xp = np.pad(x.astype(np.float64), [(0, 0), *pads, (0, 0)])
    cin_g, cout = w.shape[r], w.shape[r + 1]
    cout_g = cout // groups
    y = np.zeros((x.shape[0], *[max(m, 0) for m in sizes], cout))
    for o in np.ndindex(*y.shape[1:-1]):
        for t in np.ndindex(*k):
            at = tuple(o[a] * s[a] + t[a] * d[a] for a in range(r))
            v = xp[(slice(None), *at)]  # (N, C_in)
            for gi in range(groups):
                y[(slice(None), *o, slice(gi * cout_g, (gi + 1) * cout_g))] += (
                    v[:, gi * cin_g:(gi + 1) * cin_g] @ w[t].astype(np.float64)[:, gi * cout_g:(gi + 1) * cout_g])
    return y


def conv_sizes(ins, k, s, d, padding):
    """A conv's output extents by TensorFlow's and JAX's rules (<= 0: empty)."""
    out = []
    for a, (i, kk, ss, dd) in enumerate(zip(ins, k, s, d)):
        span = dd * (kk - 1) + 1
        if padding in ("SAME", "SAME_LOWER"):
            out.append(-(-i // ss))
        elif padding == "VALID":
            out.append(-(-(i - span + 1) // ss) if i >= span else 0)
        else:
            b, e = padding[a]
            out.append((i + b + e - span) // ss + 1 if i + b + e >= span else 0)
    return out


def start(prefix, default_calls, first=1):
    """The command line's call count and seed (arguments `first` and `first + 1`), and a
    run's random generator, tally and scratch folder."""
    n = int(sys.argv[first]) if len(sys.argv) > first else default_calls
    seed = int(sys.argv[first + 1]) if len(sys.argv) > first + 1 else 1
    return n, seed, np.random.default_rng(seed), Tally(), tempfile.mkdtemp(prefix=prefix)


def refusal(e):
    """A framework's exception in one line."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def run_tconv(args, files, env=None):
    """tconv with `args` (and the variables of `env` that are not empty); returns (ok,
    message, {name: array}) for the output files asked."""
    full = {k: v for k, v in os.environ.items() if k not in (env or {})}
    full.update({k: v for k, v in (env or {}).items() if v})
    p = subprocess.run([TCONV, *args], capture_output=True, text=True, env=full)
    if p.returncode != 0:
        for f in files.values():
            if os.path.exists(f):
                return False, "tconv failed but wrote " + f, {}
        return False, p.stderr.strip(), {}
    return True, "", {k: np.load(f) for k, f in files.items()}


def flags(op, convention, padding, strides, dilations, extra):
    if isinstance(padding, str):
        fp = padding.lower().replace("_", "-")
    else:
        fp = ",".join(f"{b}:{e}" for b, e in padding)
    return [op, "--convention", convention, f"--framework-padding={fp}",
            "--stride", ",".join(map(str, strides)), "--dilation", ",".join(map(str, dilations)), *extra]


class Tally:
    def __init__(self):
        self.counts = {}
        self.bad = []

    def add(self, kind, line=None):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if line is not None:
            print(f"{kind}: {line}", flush=True)
            if kind in ("MISMATCH", "ACCEPTS-REFUSED", "TCONV-ERROR"):
                self.bad.append(line)


def differ(want, got, tol=1e-4):
    """The first of `want`'s arrays that `got` does not match, as a message (None: all match)."""
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape or g.dtype != w.dtype:
            return f"{name} {None if g is None else (g.shape, g.dtype)} != {(w.shape, w.dtype)}"
        d = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        if d > tol:
            return f"{name} max diff {d}"
    return None


def compare(tally, desc, want, got, oracle=None, tol=1e-4):
    """Whether tconv's arrays `got` match the framework's `want`. Where only gradients
    differ and `oracle` is given, it recomputes them from the framework's forward pass
    alone: tconv matching those, the framework's gradient is tallied as wrong."""
    bad = differ(want, got, tol)
    if bad is None:
        return True
    if oracle is not None and differ({"y": want["y"]}, got, tol) is None:
        recomputed = oracle()
        if recomputed is not None and differ(recomputed, got, tol) is None:
            tally.add("framework's gradient wrong (its forward's linear map gives tconv's)",
                      f"{desc}: {bad} against the framework's vjp" if VERBOSE else None)
            return False
    tally.add("MISMATCH", f"{desc}: {bad}")
    return False


def random_geometry(rng):
    r = int(rng.choice([1, 2, 2, 2, 3]))
    ins = [int(rng.integers(1, 7)) for _ in range(r)]
    k = [int(rng.integers(1, 5)) for _ in range(r)]
    s = [int(rng.choice([1, 1, 2, 2, 3, 4])) for _ in range(r)]
    d = [int(rng.choice([1, 1, 1, 2, 3])) for _ in range(r)]
    return r, ins, k, s, d


def case_dir(tmp, i):
    d = os.path.join(tmp, f"c{i}")
    os.makedirs(d, exist_ok=True)
    return d


def save(d, **arrays):
    paths = {}
    for k, v in arrays.items():
        paths[k] = os.path.join(d, k + ".npy")
        v = np.asarray(v)
        np.save(paths[k], v if v.dtype == np.float64 else v.astype(np.float32))
    return paths


def fuzz_tf(n, rng, tally, tmp):
    import tensorflow as tf
    import keras

    def tf_call(f, x, w, grads):
        """`f(x, w)` under a gradient tape: ({y[, gx, gw]}, gy, None), or the refusal."""
        try:
            xt, wt = tf.constant(x), tf.constant(w)
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(xt)
                tape.watch(wt)
                y = f(xt, wt)
                gy = arr(rng, *y.shape)
                loss = tf.reduce_sum(y * gy)
            want = {"y": y.numpy()}
            if grads and want["y"].size:
                want.update(gx=tape.gradient(loss, xt).numpy(), gw=tape.gradient(loss, wt).numpy())
            return want, gy, None
        except Exception as e:  # noqa: BLE001 - any framework refusal
            return None, None, refusal(e)
    for i in range(n):
        d = case_dir(tmp, i)
        kind = rng.choice(["transpose", "conv", "keras"], p=[0.45, 0.3, 0.25])
        r, ins, k, s, dil = random_geometry(rng)
        if any(b > 1 for b in s) and rng.random() < 0.85:
            dil = [1] * r  # TensorFlow's kernels take no dilation with a stride
        nb = int(rng.integers(1, 3))
        grads = bool(rng.random() < 0.35)
        if kind == "transpose":
            cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            last = bool(rng.random() < 0.8) or r == 1
            pad_kind = rng.choice(["SAME", "VALID", "explicit"])
            if pad_kind == "explicit":
                padding = [(int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(r)]
            else:
                padding = str(pad_kind)
            ek = [dd * (kk - 1) + 1 for kk, dd in zip(k, dil)]
            if padding == "SAME":
                nominal = [a * b for a, b in zip(ins, s)]
            elif padding == "VALID":
                nominal = [(a - 1) * b + e for a, b, e in zip(ins, s, ek)]
            else:
                nominal = [(a - 1) * b + e - pb - pe for a, b, e, (pb, pe) in zip(ins, s, ek, padding)]
            # TensorFlow accepts the sizes whose forward conv gives the input's: s of them
            # from the nominal one up where that is the least; others are refused.
            if rng.random() < 0.7:
                out_sp = [max(1, m + int(rng.integers(-(b - 1), b))) for m, b in zip(nominal, s)]
            else:
                out_sp = [max(1, m + int(rng.integers(-2, b + 2))) for m, b in zip(nominal, s)]
            x = arr(rng, nb, *ins, cin) if last else arr(rng, nb, cin, *ins)
            w = arr(rng, *k, cout, cin)
            out_shape = [nb, *out_sp, cout] if last else [nb, cout, *out_sp]
            fmt = {1: "NWC", 2: "NHWC", 3: "NDHWC"}[r] if last else {2: "NCHW", 3: "NCDHW"}[r]
            tfpad = padding if isinstance(padding, str) else (
                [[0, 0], *[list(p) for p in padding], [0, 0]] if last else [[0, 0], [0, 0], *[list(p) for p in padding]])
            desc = f"tf.nn.conv_transpose(x{list(x.shape)}, w{list(w.shape)}, {out_shape}, strides={s}, padding={tfpad}, data_format={fmt}, dilations={dil})"
            want, gy, ferr = tf_call(lambda xt, wt: tf.nn.conv_transpose(
                xt, wt, out_shape, strides=s, padding=tfpad, data_format=fmt, dilations=dil), x, w, grads)
            # TensorFlow's range of output_shape: the sizes whose forward conv gives `ins`.
            ranges = {"SAME": [((a - 1) * b + 1, a * b) for a, b in zip(ins, s)],
                      "VALID": [(m, m + b - 1) for m, b in zip(nominal, s)]}.get(
                          padding if isinstance(padding, str) else "")
            if want is not None and ranges and any(not lo <= o <= hi for o, (lo, hi) in zip(out_sp, ranges)):
                # Its oneDNN kernel (SAME / VALID) takes sizes its reference kernel (explicit
                # padding) refuses, cropping the full output at the end.
                ferr, want = f"{QUIRK} output_shape {out_sp} outside {ranges} accepted", None
            extra = ["--output-size", ",".join(map(str, out_sp))] + ([] if last else ["--channels-first"])
            convention = "tf"
        elif kind == "conv":
            groups = int(rng.choice([1, 1, 2, 3]))
            cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
            pad_kind = rng.choice(["SAME", "VALID", "explicit"])
            padding = ([(int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(r)]
                       if pad_kind == "explicit" else str(pad_kind))
            x = arr(rng, nb, *ins, cin)
            w = arr(rng, *k, cin // groups, cout)
            tfpad = padding if isinstance(padding, str) else [[0, 0], *[list(p) for p in padding], [0, 0]]
            desc = f"tf.nn.convolution(x{list(x.shape)}, w{list(w.shape)}, strides={s}, padding={tfpad}, dilations={dil})"
            want, gy, ferr = tf_call(lambda xt, wt: tf.nn.convolution(
                xt, wt, strides=s, padding=tfpad, dilations=dil), x, w, grads)
            sizes = conv_sizes(ins, k, s, dil, padding)
            if want is not None and want["y"].shape[1:-1] != tuple(max(m, 0) for m in sizes):
                # TensorFlow's CPU grouped conv returns an array of the input's shape,
                # uninitialised, where the output is empty.
                ferr, want = f"{QUIRK} output {want['y'].shape[1:-1]}, not {sizes}", None
            elif want is not None and differ({"y": conv_definition(x, w, s, dil, padding, groups)},
                                             {"y": want["y"].astype(np.float64)}):
                # TensorFlow's oneDNN conv of a 1-wide input at stride 4 with SAME padding
                # returned stale memory: tconv is compared with the definition instead.
                tally.add("framework's output contradicts its definition (tconv compared with it)",
                          desc if VERBOSE else None)
                want = {"y": conv_definition(x, w, s, dil, padding, groups).astype(np.float32)}
            extra = []
            convention = "tf"
        else:
            cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            padding = str(rng.choice(["same", "valid"]))
            op_ = None if rng.random() < 0.4 else [int(rng.integers(0, max(b, dd))) for b, dd in zip(s, dil)]
            layer_cls = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
                         3: keras.layers.Conv3DTranspose}[r]
            x = arr(rng, nb, *ins, cin)
            w = arr(rng, *k, cout, cin)
            b = arr(rng, cout)
            desc = f"keras.layers.{layer_cls.__name__}({cout}, {k}, strides={s}, padding={padding!r}, output_padding={op_}, dilation_rate={dil}) on x{list(x.shape)}"
            try:
                layer = layer_cls(cout, k, strides=s, padding=padding, output_padding=op_, dilation_rate=dil)
                layer.build(x.shape)
                layer.set_weights([w, b])
                want = {"y": np.asarray(layer(x))}
                ferr = None
            except Exception as e:  # noqa: BLE001
                ferr = refusal(e)
            gy = None  # the layer's output only
            extra = [] if op_ is None else ["--output-padding", ",".join(map(str, op_))]
            convention = "tf"
        args = flags("conv-transpose" if kind != "conv" else "conv", convention, padding, s, dil, extra)
        data = dict(input=x, weight=w, **({"bias": b} if kind == "keras" else {}))
        judge(tally, d, desc, args, data, gy, want if ferr is None else None, ferr)


# Refusals of a framework's implementation, not of what the call means: TensorFlow's CPU
# kernels take no dilation with a stride (nor in a transposed conv with explicit padding),
# explicit padding only in 2-D, NCHW with explicit padding only on a GPU, and no grouped 3-D conv.
VERBOSE = bool(os.environ.get("VERBOSE"))
KEEP = os.environ.get("KEEP")

FRAMEWORK_LIMITS = (
    "not supported in conjunction with",
    "Expected string for argument 'padding'",
    "When padding is a list, it must be of size 4",
    "do not yet support dilation rates larger than 1",
    "only supports NHWC",
    "input and filter must have the same depth",
    "'NoneType' object has no attribute 'decode'",  # TensorFlow's crash on some 3-D convs
)


def keep(d, desc, port_flags, data, y):
    """With KEEP=DIR, an agreeing call saved as a case of `bench/port_check.py DIR`: its
    arrays, the framework's output and the flags `tconv port` takes for it."""
    if not KEEP:
        return
    case = os.path.join(KEEP, os.path.basename(os.path.dirname(d)) + "_" + os.path.basename(d))
    os.makedirs(case, exist_ok=True)
    names = {"input": "x", "weight": "w", "bias": "b"}
    save(case, y=y, **{names[k]: v for k, v in data.items()})
    with open(os.path.join(case, "case.json"), "w") as f:
        json.dump({"call": desc, "port_flags": port_flags}, f)


def judge(tally, d, desc, args, data, gy, want, ferr, oracle=None):
    """Runs tconv on `data` ({flag name: array}, saved in `d`) with `args`, asking for the
    gradients where `want` has them, and tallies the verdict against the framework's
    (`oracle`: see `compare`)."""
    port_flags, args = list(args), list(args)
    for flag, a in data.items():
        args += [f"--{flag}", save(d, **{flag: a})[flag]]
    outs = {"y": os.path.join(d, "y_tconv.npy")}
    if want is not None and "gx" in want:
        outs.update(gx=os.path.join(d, "gx_tconv.npy"), gw=os.path.join(d, "gw_tconv.npy"))
        args += ["--grad-output", save(d, gy=gy)["gy"], "--grad-input", outs["gx"], "--grad-weight", outs["gw"]]
    args += ["--output", outs["y"]]
    ok, msg, got = run_tconv(args, outs)
    cmd = "tconv " + " ".join(args)
    if ferr is None:
        if ok:
            if compare(tally, desc + "\n    " + cmd, want, got, oracle):
                tally.add("agree" + (" with gradients" if "gx" in want else ""))
                keep(d, desc, port_flags, data, want["y"])
        elif "wrote" in msg:
            tally.add("TCONV-ERROR", f"{desc}: {msg}")
        elif any(w.size == 0 for w in want.values()):
            tally.add("framework's output empty, tconv refuses (as PyTorch)")
        else:
            tally.add("tconv refuses a call the framework runs", f"{desc}\n    tconv: {msg}")
    elif ferr.startswith(QUIRK):
        tally.add("framework quirk (its result contradicts its own rule); tconv "
                  + ("computes the rule's" if ok else "refuses"), f"{desc}\n    {ferr}" if VERBOSE else None)
    else:
        if ok and any(m in ferr for m in FRAMEWORK_LIMITS):
            tally.add("framework limit (tconv computes it)")
        elif ok:
            tally.add("ACCEPTS-REFUSED", f"{desc}\n    framework: {ferr}\n    {cmd}")
        else:
            tally.add("both refuse", f"{desc}\n    framework: {ferr}\n    tconv: {msg}" if VERBOSE else None)


def fuzz_jax(n, rng, tally, tmp):
    import jax
    import jax.numpy as jnp
    from jax import lax

    jax.config.update("jax_platforms", "cpu")
    for i in range(n):
        d = case_dir(tmp, i)
        kind = rng.choice(["transpose", "conv"], p=[0.65, 0.35])
        r, ins, k, s, dil = random_geometry(rng)
        nb = int(rng.integers(1, 3))
        grads = bool(rng.random() < 0.35)
        spec = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}[r]
        if kind == "transpose":
            cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            tk = bool(rng.random() < 0.3)
            consistent = bool(rng.random() < 0.25)
            pad_kind = rng.choice(["SAME", "VALID", "explicit"])
            if pad_kind == "explicit":
                lo = 0 if consistent else -3
                padding = [(int(rng.integers(lo, 5)), int(rng.integers(lo, 5))) for _ in range(r)]
            else:
                padding = str(pad_kind)
            x = arr(rng, nb, *ins, cin)
            w = arr(rng, *k, cout, cin) if tk else arr(rng, *k, cin, cout)
            jpad = padding if isinstance(padding, str) else [tuple(p) for p in padding]

            def f(x, w):
                return lax.conv_transpose(x, w, s, jpad, rhs_dilation=dil, dimension_numbers=spec,
                                          transpose_kernel=tk, use_consistent_padding=consistent)

            desc = f"lax.conv_transpose(x{list(x.shape)}, w{list(w.shape)}, {s}, {jpad!r}, rhs_dilation={dil}, transpose_kernel={tk}, use_consistent_padding={consistent})"
            convention = "jax-transpose-kernel" if tk else "jax"
            extra = ["--consistent-padding"] if consistent else []
            op = "conv-transpose"
        else:
            groups = int(rng.choice([1, 1, 2, 3]))
            cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
            pad_kind = rng.choice(["SAME", "SAME_LOWER", "VALID", "explicit"])
            # Negative pairs crop the input (tconv: Convention::lower).
            padding = ([(int(rng.integers(-2, 4)), int(rng.integers(-2, 4))) for _ in range(r)]
                       if pad_kind == "explicit" else str(pad_kind))
            x = arr(rng, nb, *ins, cin)
            w = arr(rng, *k, cin // groups, cout)
            jpad = padding if isinstance(padding, str) else [tuple(p) for p in padding]

            def f(x, w):
                return lax.conv_general_dilated(x, w, s, jpad, rhs_dilation=dil, dimension_numbers=spec,
                                                feature_group_count=groups)

            desc = f"lax.conv_general_dilated(x{list(x.shape)}, w{list(w.shape)}, {s}, {jpad!r}, rhs_dilation={dil}, feature_group_count={groups})"
            convention = "jax"
            extra = ["--groups", str(groups)]
            op = "conv"
        gy = None  # where JAX refuses the call
        try:
            y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
            want = {"y": np.asarray(y)}
            gy = arr(rng, *y.shape)
            if grads and want["y"].size:
                gx, gw = vjp(jnp.asarray(gy))
                want.update(gx=np.asarray(gx), gw=np.asarray(gw))
            ferr = None
        except Exception as e:  # noqa: BLE001
            ferr = refusal(e)
        args = flags(op, convention, padding, s, dil, extra)
        judge(tally, d, desc, args, dict(input=x, weight=w), gy, want if ferr is None else None, ferr,
              lambda: linear_gradients(f, x, w, gy))


def linear_gradients(f, x, w, gy, most=1 << 24):
    """The gradients of `f(x, w)` (bilinear) for `gy` from its forward pass alone: each
    input's unit vectors through `f` (in one vmapped call), contracted with `gy`; in
    float64 sums. None where the unit responses would exceed `most` values (the module's
    docstring says why: JAX's own vjp is wrong for some calls)."""
    import jax
    import jax.numpy as jnp

    if max(x.size, w.size) * gy.size > most:
        return None
    out = {}
    for name, a, call in (("gx", x, lambda e: f(e, jnp.asarray(w))),
                          ("gw", w, lambda e: f(jnp.asarray(x), e))):
        units = np.eye(a.size, dtype=a.dtype).reshape(a.size, *a.shape)
        ys = np.asarray(jax.vmap(call)(jnp.asarray(units)), dtype=np.float64)
        g = ys.reshape(a.size, -1) @ gy.reshape(-1).astype(np.float64)
        out[name] = g.reshape(a.shape).astype(a.dtype)
    return out


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "tf"
    n, seed, rng, tally, tmp = start(f"tconv-fuzz-{which}-", 200, first=2)
    {"tf": fuzz_tf, "jax": fuzz_jax}[which](n, rng, tally, tmp)
    print(json.dumps({"framework": which, "calls": n, "seed": seed, **tally.counts}, indent=1))
    sys.exit(1 if tally.bad else 0)


if __name__ == "__main__":
    main()
