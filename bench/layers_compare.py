#!/usr/bin/env python3
"""Time tconv beside PyTorch on layers off the standard suite, from models people run: a GAN
generator's projection of its latent vector (1x1 -> 4x4), pix2pix's decoder, a
discriminator's last conv, MelGAN's upsamplers, FSRCNN's and FCN-32s's upsamplers, and
so on. Each layer is timed in rounds; in each round PyTorch and then every tconv binary given
(`tconv bench`, the same process a user runs), at 1 and 2 threads, so that drift of this
shared machine hits all of them within seconds. Prints a markdown table of the medians over
the rounds of each call's median.

    .venv-peers/bin/python bench/layers_compare.py target/release/tconv [OLD_BINARY] \
        [--rounds 3] [--layers a,b]

A conv row ("conv" in the op column) is timed by `tconv bench --with-conv` on the transposed
conv whose adjoint it is (the row named NAME:conv), with the conv's own shapes.
"""
import argparse
import json
import statistics
import subprocess
import time

# name: (op, input shape, C_out, kernel, stride, padding, output_padding, groups, note)
LAYERS = {
    "dcgan-proj-64": ("ct", [64, 100, 1, 1], 512, 4, 1, 0, 0, 1, "DCGAN's projection, 1x1 -> 4x4"),
    "dcgan-proj-128": ("ct", [128, 100, 1, 1], 512, 4, 1, 0, 0, 1, "the same, PyTorch tutorial's batch"),
    "gan3d-proj": ("ct", [32, 200, 1, 1, 1], 512, 4, 2, 0, 0, 1, "3D-GAN's projection, 1^3 -> 4^3"),
    "pix2pix-inner": ("ct", [1, 512, 1, 1], 512, 4, 2, 1, 0, 1, "pix2pix's innermost up-conv, 1x1 -> 2x2"),
    "pix2pix-up2": ("ct", [1, 1024, 2, 2], 512, 4, 2, 1, 0, 1, "pix2pix decoder, 2x2 -> 4x4"),
    "pix2pix-up4": ("ct", [1, 1024, 8, 8], 512, 4, 2, 1, 0, 1, "pix2pix decoder, 8x8 -> 16x16"),
    "pix2pix-up6": ("ct", [1, 256, 64, 64], 64, 4, 2, 1, 0, 1, "pix2pix decoder, 64x64 -> 128x128"),
    "dcgan1-b128": ("ct", [128, 512, 4, 4], 256, 4, 2, 1, 0, 1, "dcgan1 at the tutorial's batch"),
    "disc-last": ("conv", [64, 512, 4, 4], 1, 4, 1, 0, 0, 1, "DCGAN discriminator's last conv, 4x4 -> 1x1"),
    "proj-grad-in": ("conv", [64, 512, 4, 4], 100, 4, 1, 0, 0, 1, "the projection's input gradient"),
    "melgan1": ("ct", [1, 512, 200], 256, 16, 8, 4, 0, 1, "MelGAN's first upsampler"),
    "hifigan-b1": ("ct", [1, 512, 256], 256, 16, 8, 4, 0, 1, "HiFi-GAN's first upsampler at batch 1 (inference)"),
    "melgan3": ("ct", [1, 128, 12800], 64, 4, 2, 1, 0, 1, "MelGAN's third upsampler"),
    "fsrcnn": ("ct", [1, 56, 64, 64], 1, 9, 3, 4, 2, 1, "FSRCNN's last layer, x3"),
    "fcn32s": ("ct", [1, 21, 8, 8], 21, 64, 32, 16, 0, 1, "FCN-32s's upsampler"),
    "unet3d": ("ct", [1, 128, 8, 8, 8], 64, 2, 2, 0, 0, 1, "3-D U-Net's up-conv"),
    "s1k3-4x4": ("ct", [8, 256, 4, 4], 256, 3, 1, 1, 0, 1, "stride 1 on small maps"),
    "stylegan2-up": ("ct", [1, 2048, 8, 8], 2048, 3, 2, 0, 0, 4, "StyleGAN2's modulated up-conv, groups = batch 4"),
    "bilinear-dw": ("ct", [1, 256, 64, 64], 256, 4, 2, 1, 0, 256, "depthwise bilinear x2 upsampling"),
    "grouped32": ("ct", [8, 256, 16, 16], 256, 4, 2, 1, 0, 32, "grouped (32) k4 s2 decoder"),
    "dw1d": ("ct", [1, 512, 1000], 512, 16, 8, 4, 0, 512, "depthwise 1-D k16 s8"),
}


def torch_ms(spec, threads, runs):
    import torch
    import torch.nn.functional as F
    op, xs, cout, k, s, p, op_pad, g, _ = spec
    torch.set_num_threads(threads)
    nd = len(xs) - 2
    x = torch.randn(*xs)
    if op == "ct":
        w = torch.randn(xs[1], cout // g, *([k] * nd))
        f = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]

        def call():
            return f(x, w, stride=s, padding=p, output_padding=op_pad, groups=g)
    else:
        w = torch.randn(cout, xs[1] // g, *([k] * nd))
        f = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]

        def call():
            return f(x, w, stride=s, padding=p, groups=g)
    with torch.inference_mode():
        for _ in range(3):
            call()
        ts = []
        for _ in range(runs):
            time.sleep(0.01)
            t = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def tconv_ms(binary, spec, threads, runs):
    op, xs, cout, k, s, p, op_pad, g, _ = spec
    nd = len(xs) - 2
    if op == "ct":
        shape, c_out, extra = xs, cout, []
    else:
        # The transposed conv this conv is the adjoint of: its input is the conv's output.
        out = [(e + 2 * p - k) // s + 1 for e in xs[2:]]
        shape, c_out, extra = [xs[0], cout] + out, xs[1], ["--with-conv"]
    cmd = [binary, "bench", "--input", ",".join(map(str, shape)), "--c-out", str(c_out),
           "--kernel", ",".join([str(k)] * nd), "--stride", ",".join([str(s)] * nd),
           "--padding", ",".join([str(p)] * nd), "--groups", str(g),
           "--threads", str(threads), "--runs", str(runs), "--json"] + extra
    if op == "ct":
        cmd += ["--output-padding", ",".join([str(op_pad)] * nd)]
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split("\n")
    rows = [json.loads(line) for line in lines if line.strip()]
    row = rows[-1] if op == "conv" else rows[0]
    return row["median_ms"], row["algorithm"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+", help="tconv binaries (the first is 'now')")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--layers", default=",".join(LAYERS))
    a = ap.parse_args()
    rows = []
    for name in a.layers.split(","):
        spec = LAYERS[name]
        for t in (1, 2):
            torch_t, ours, alg = [], [[] for _ in a.binaries], None
            for _ in range(a.rounds):
                torch_t.append(torch_ms(spec, t, a.runs))
                for i, b in enumerate(a.binaries):
                    ms, label = tconv_ms(b, spec, t, a.runs)
                    ours[i].append(ms)
                    if i == 0:
                        alg = label
            rows.append((name, t, [statistics.median(o) for o in ours], statistics.median(torch_t), alg))
    cols = ["layer", "op", "threads", "tconv ms"]
    cols += [f"tconv ({i + 1}) ms" for i in range(1, len(a.binaries))]
    cols += ["PyTorch ms", "PyTorch / tconv"]
    cols += ["(2) / tconv"] if len(a.binaries) > 1 else []
    cols += ["plan"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name, t, ours, torch_med, alg in rows:
        cells = [name, LAYERS[name][0], str(t)] + [f"{o:.2f}" for o in ours]
        cells += [f"{torch_med:.2f}", f"{torch_med / ours[0]:.2f}x"]
        cells += [f"{ours[1] / ours[0]:.2f}x"] if len(ours) > 1 else []
        cells += [alg]
        print("| " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
