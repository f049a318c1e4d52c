#!/usr/bin/env python3
"""Time the backward pass of transposed convolution: PyTorch's `y.backward(gy)` (grad of
input and weight together) beside tconv's (`tconv bench --pass both`: grad_input and
grad_weight alone, and both together, the row compared), layer by layer in one sitting, 1
and 2 threads. Prints a markdown table.

With `--rounds R`, each row is timed R times, tconv and PyTorch alternating, and every
figure is the median over the rounds of each call's median: on a shared machine a burst of
interference then moves one round, not the row.

  .venv-peers/bin/python bench/backward_compare.py --runs 10 --rounds 3 [--layers dcgan3,s1k3]
      [--suite bench/short-reductions.json]  (layers off the suite: batch-1 decoders)
      [--binary PATH]  (another build of tconv)
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

SUITE_FILE = "bench/suite.json"


def torch_layer(layer, dtype=torch.float32):
    """PyTorch's conv_transpose for `layer`, random input and weight needing gradients, and
    the layer's keyword arguments."""
    nd = len(layer["kernel"])
    f = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
         3: torch.nn.functional.conv_transpose3d}[nd]
    g = layer["groups"]
    x = torch.randn(*layer["input"], dtype=dtype, requires_grad=True)
    w = torch.randn(layer["input"][1], layer["c_out"] // g, *layer["kernel"], dtype=dtype,
                    requires_grad=True)
    kw = dict(stride=layer["stride"], padding=layer["padding"], output_padding=layer["output_padding"],
              dilation=layer["dilation"], groups=g)
    return f, x, w, kw


def torch_backward_ms(layer, threads, runs, dtype=torch.float32):
    """Median milliseconds of `y.backward(gy)` (both gradients)."""
    torch.set_num_threads(threads)
    f, x, w, kw = torch_layer(layer, dtype)
    y = f(x, w, **kw)
    gy = torch.randn_like(y)
    times = []
    for i in range(runs + 2):
        y = f(x, w, **kw)
        t = time.perf_counter()
        y.backward(gy)
        if i >= 2:
            times.append((time.perf_counter() - t) * 1e3)
        x.grad = None
        w.grad = None
    return statistics.median(times)


def tconv_ms(name, threads, runs, suite=SUITE_FILE, binary="target/release/tconv"):
    # Let the previous PyTorch call's worker threads stop spinning first: they can hold a
    # core for a while after a parallel region and halve tconv's 2-thread speed.
    time.sleep(0.5)
    out = subprocess.run([binary, "bench", "--suite", suite, "--pass", "both", "--layer", name, "--threads",
                          str(threads), "--runs", str(runs), "--json"], check=True, capture_output=True, text=True).stdout
    rows = {json.loads(l)["name"]: json.loads(l)["median_ms"] for l in out.strip().splitlines()}
    return (rows[name], rows[name + ":grad_input"], rows[name + ":grad_weight"],
            rows[name + ":backward"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--layers", help="only these layers (comma-separated names)")
    ap.add_argument("--suite", default=SUITE_FILE, help="a suite file (as bench/suite.json)")
    ap.add_argument("--binary", default="target/release/tconv")
    a = ap.parse_args()
    suite = json.load(open(a.suite))["layers"]
    wanted = a.layers.split(",") if a.layers else [l["name"] for l in suite]
    print("| layer | threads | tconv forward ms | tconv grad_input ms | tconv grad_weight ms | tconv backward ms | backward / forward | PyTorch backward ms | PyTorch / tconv |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in (l for l in suite if l["name"] in wanted):
        for t in (1, 2):
            rounds = [(tconv_ms(layer["name"], t, a.runs, a.suite, a.binary), torch_backward_ms(layer, t, a.runs))
                      for _ in range(max(a.rounds, 1))]
            fwd, gi, gw, ours = (statistics.median(r[0][i] for r in rounds) for i in range(4))
            tb = statistics.median(r[1] for r in rounds)
            print(f"| {layer['name']} | {t} | {fwd:.2f} | {gi:.2f} | {gw:.2f} | {ours:.2f} | {ours / fwd:.2f} | {tb:.2f} | {tb / ours:.2f}x |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
