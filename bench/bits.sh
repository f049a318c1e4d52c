#!/usr/bin/env bash
# Bit harness: md5 digests of every suite layer's forward outputs and gradients, for
# conv_transpose and the conv it is the transpose of, float32 and float64, on 1 and 2 CPUs
# (`taskset`), under each instruction set and with the direct and Winograd algorithms
# forced. Two binaries give the same bits when their digest files are identical:
#   bench/bits.sh target/release/tconv > new.txt; diff old.txt new.txt
# usage: bench/bits.sh BIN [LAYERS (comma list, default all)]   env PY (python with numpy),
#   SUITE (another suite file, e.g. bench/short-reductions.json; default bench/suite.json)
set -euo pipefail
bin=$(realpath "$1"); layers=${2:-}
py=${PY:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
# Inputs, seeded: x, w, b, gy for each layer (conv: its input is gy's shape, its gy is x's).
"$py" - "${SUITE:-$root/bench/suite.json}" "$dir" "$layers" <<'PY'
import json, sys, numpy as np
suite, out, only = sys.argv[1], sys.argv[2], sys.argv[3]
for i, L in enumerate(json.load(open(suite))["layers"]):
    if only and L["name"] not in only.split(","):
        continue
    n, cin, *sp = L["input"]; k = L["kernel"]; s = L["stride"]; p = L["padding"]
    op = L["output_padding"]; d = L["dilation"]; g = L["groups"]; cout = L["c_out"]
    o = [(a - 1) * st - 2 * pp + dd * (kk - 1) + oo + 1 for a, st, pp, dd, kk, oo in zip(sp, s, p, d, k, op)]
    rng = np.random.default_rng(1000 + i)
    for dt in ("f32", "f64"):
        t = np.float32 if dt == "f32" else np.float64
        arr = lambda *shape: rng.standard_normal(shape).astype(t)
        base = f"{out}/{L['name']}.{dt}"
        np.save(base + ".x.npy", arr(n, cin, *sp))
        np.save(base + ".w.npy", arr(cin, cout // g, *k))
        np.save(base + ".b.npy", arr(cout))
        np.save(base + ".cb.npy", arr(cin))
        np.save(base + ".gy.npy", arr(n, cout, *o))
    args = ["--stride", ",".join(map(str, s)), "--padding", ",".join(map(str, p)),
            "--dilation", ",".join(map(str, d)), "--groups", str(g)]
    open(f"{out}/{L['name']}.args", "w").write(" ".join(args))
    open(f"{out}/{L['name']}.opad", "w").write(",".join(map(str, op)))
PY
run() { # label, env..., -- tconv args (outputs under $dir/out)
  local label=$1; shift
  rm -rf "$dir/out"; mkdir "$dir/out"
  if env "$@" >/dev/null 2>"$dir/err"; then
    (cd "$dir/out" && for f in $(ls); do echo "$label $f $(md5sum < "$f" | cut -c1-32)"; done)
  else
    echo "$label error $(head -c 120 "$dir/err" | tr '\n' ' ')"
  fi
}
for argf in "$dir"/*.args; do
  name=$(basename "$argf" .args); args=$(cat "$argf"); opad=$(cat "$dir/$name.opad")
  for dt in f32 f64; do
    b="$dir/$name.$dt"
    for isa in avx512 avx2 scalar; do
      for cpus in 0 0,1; do
        for alg in "" direct winograd; do
          label="$name.$dt.$isa.cpu$cpus.${alg:-plan}"
          # shellcheck disable=SC2086 # args is split into options
          run "$label.ct" TCONV_ISA=$isa TCONV_ALGORITHM=$alg taskset -c $cpus "$bin" conv-transpose \
            -x "$b.x.npy" -w "$b.w.npy" -b "$b.b.npy" $args --output-padding "$opad" \
            -o "$dir/out/y.npy" --grad-output "$b.gy.npy" --grad-input "$dir/out/gx.npy" \
            --grad-weight "$dir/out/gw.npy" --grad-bias "$dir/out/gb.npy"
          # shellcheck disable=SC2086
          run "$label.conv" TCONV_ISA=$isa TCONV_ALGORITHM=$alg taskset -c $cpus "$bin" conv \
            -x "$b.gy.npy" -w "$b.w.npy" -b "$b.cb.npy" $args \
            -o "$dir/out/y.npy" --grad-output "$b.x.npy" --grad-input "$dir/out/gx.npy" \
            --grad-weight "$dir/out/gw.npy" --grad-bias "$dir/out/gb.npy"
        done
      done
    done
  done
done
