#!/usr/bin/env python3
"""Time tconv beside PyTorch and onnxruntime on the standard suite, layer by layer in one
sitting, and print a markdown table of medians and ratios.

Setup once (see ../shared/bench/peers_bench.py):
  python3 -m venv .venv-peers && .venv-peers/bin/pip install numpy onnx onnxruntime torch
Run from the repository root:
  cargo build --release
  .venv-peers/bin/python bench/compare.py --peers ../shared/bench/peers_bench.py --runs 20

For each layer the peers script (PyTorch and onnxruntime interleaved, 1 and 2 threads) runs
first, then `tconv bench` at 1 and 2 threads, so that drift of this shared machine hits all
of them within seconds of each other.

With `--tune`, each round also times `tconv bench --tune` (plans whose register tile was
measured on this machine rather than modelled: PlanOptions::tune), and the table gains its
columns.

With `--rounds R`, each layer is timed so R times over (peers, then tconv), and every
figure is the median over the rounds of each call's median: a burst of interference then
moves one round, not the row (one call of dcgan1 at 2 threads read 4.09 ms against
2.2 in the sittings around it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

LAYERS = ["dcgan1", "dcgan2", "dcgan3", "dcgan4", "unet", "s1k3", "dilated", "fcn_dw", "hifigan1d", "vnet3d"]


def tconv(layer, threads, runs, binary, tune=False):
    out = subprocess.run(
        [binary, "bench", "--layer", layer, "--threads", str(threads), "--runs", str(runs), "--json"]
        + (["--tune"] if tune else []),
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default="../shared/bench/peers_bench.py")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--binary", default="target/release/tconv")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tune", action="store_true", help="also time tuned plans (tconv bench --tune)")
    a = ap.parse_args()
    rows = []
    for layer in a.layers.split(","):
        rounds = []
        for _ in range(max(a.rounds, 1)):
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "peers.json")
                subprocess.run(
                    [sys.executable, a.peers, "--no-jax", "--no-gemm", "--runs", str(a.runs), "--layers", layer, "--out", path],
                    check=True, capture_output=True, text=True,
                )
                peers = json.load(open(path))["layers"][layer]["peers"]
            ours = {t: tconv(layer, t, a.runs, a.binary) for t in (1, 2)}
            if a.tune:
                ours.update({-t: tconv(layer, t, a.runs, a.binary, tune=True) for t in (1, 2)})
            rounds.append((peers, ours))
        ours1 = rounds[0][1][1]
        row = {"layer": layer, "gflop": ours1["gflop"], "algorithm": ours1["algorithm"], "rounds": len(rounds)}
        for t in (1, 2):
            row[f"tconv-{t}t"] = statistics.median(o[t]["median_ms"] for _, o in rounds)
            row[f"torch-{t}t"] = statistics.median(p[f"torch-{t}t"]["median_ms"] for p, _ in rounds)
            row[f"ort-{t}t"] = statistics.median(p[f"ort-{t}t"]["median_ms"] for p, _ in rounds)
            if a.tune:
                row[f"tuned-{t}t"] = statistics.median(o[-t]["median_ms"] for _, o in rounds)
                row[f"tuned-algorithm-{t}t"] = [o[-t]["algorithm"] for _, o in rounds]
        rows.append(row)
        print(f"{layer}: done", file=sys.stderr)
    if a.json_out:
        json.dump(rows, open(a.json_out, "w"), indent=1)
    tuned = " tconv tuned ms | fastest peer / tuned |" if a.tune else ""
    print(f"| layer | GFLOP | threads | tconv ms | PyTorch ms | onnxruntime ms | fastest peer / tconv | tconv GFLOP/s |{tuned}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if a.tune else ""))
    prod = {1: 1.0, 2: 1.0, -1: 1.0, -2: 1.0}
    for r in rows:
        for t in (1, 2):
            best = min(r[f"torch-{t}t"], r[f"ort-{t}t"])
            ratio = best / r[f"tconv-{t}t"]
            prod[t] *= ratio
            line = (f"| {r['layer']} | {r['gflop']:.3f} | {t} | {r[f'tconv-{t}t']:.2f} | {r[f'torch-{t}t']:.2f} | "
                    f"{r[f'ort-{t}t']:.2f} | {ratio:.2f}x | {r['gflop'] / r[f'tconv-{t}t'] * 1e3:.1f} |")
            if a.tune:
                prod[-t] *= best / r[f"tuned-{t}t"]
                line += f" {r[f'tuned-{t}t']:.2f} | {best / r[f'tuned-{t}t']:.2f}x |"
            print(line)
    for t in (1, 2):
        print(f"\nGeometric mean of (fastest peer / tconv) at {t} thread(s): {prod[t] ** (1 / len(rows)):.2f}x")
        if a.tune:
            print(f"Geometric mean of (fastest peer / tconv tuned) at {t} thread(s): {prod[-t] ** (1 / len(rows)):.2f}x")


if __name__ == "__main__":
    main()
