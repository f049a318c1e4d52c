#!/usr/bin/env python3
"""Time transposed convolution in float64: tconv (`tconv bench --dtype float64 --pass both`)
beside PyTorch (forward under no_grad, and `y.backward(gy)`, both gradients), layer by layer
in one sitting, 1 and 2 threads. Prints a markdown table.

With `--rounds R`, each row is timed R times, tconv and PyTorch alternating, and every
figure is the median over the rounds of each call's median.

  .venv-peers/bin/python bench/f64_compare.py --runs 10 --rounds 3 [--layers dcgan3,s1k3]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from backward_compare import SUITE, torch_backward_ms, torch_layer


def torch_ms(layer, threads, runs):
    """Median forward and backward milliseconds of PyTorch in float64."""
    torch.set_num_threads(threads)
    f, x, w, kw = torch_layer(layer, torch.float64)
    fwd = []
    with torch.no_grad():
        for i in range(runs + 2):
            t = time.perf_counter()
            f(x, w, **kw)
            if i >= 2:
                fwd.append((time.perf_counter() - t) * 1e3)
    return statistics.median(fwd), torch_backward_ms(layer, threads, runs, torch.float64)


def tconv_ms(name, threads, runs):
    """Median forward and backward (both gradients) milliseconds of tconv in float64."""
    # Let the previous PyTorch call's worker threads stop spinning first.
    time.sleep(0.5)
    out = subprocess.run(["target/release/tconv", "bench", "--dtype", "float64", "--pass", "both",
                          "--layer", name, "--threads", str(threads), "--runs", str(runs), "--json"],
                         check=True, capture_output=True, text=True).stdout
    rows = {json.loads(l)["name"]: json.loads(l) for l in out.strip().splitlines()}
    return rows[name]["median_ms"], rows[name + ":backward"]["median_ms"], rows[name]["algorithm"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--layers", help="only these layers (comma-separated names)")
    a = ap.parse_args()
    wanted = a.layers.split(",") if a.layers else [l["name"] for l in SUITE]
    print("| layer | threads | tconv forward ms | PyTorch forward ms | PyTorch / tconv | tconv backward ms | PyTorch backward ms | PyTorch / tconv | tconv algorithm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in (l for l in SUITE if l["name"] in wanted):
        for t in (1, 2):
            rounds = [(tconv_ms(layer["name"], t, a.runs), torch_ms(layer, t, a.runs))
                      for _ in range(max(a.rounds, 1))]
            ours_f, ours_b = (statistics.median(r[0][i] for r in rounds) for i in range(2))
            theirs_f, theirs_b = (statistics.median(r[1][i] for r in rounds) for i in range(2))
            algo = rounds[0][0][2]
            print(f"| {layer['name']} | {t} | {ours_f:.2f} | {theirs_f:.2f} | {theirs_f / ours_f:.2f}x "
                  f"| {ours_b:.2f} | {theirs_b:.2f} | {theirs_b / ours_b:.2f}x | {algo} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
