#!/usr/bin/env bash
# Paired timing of tconv binaries, alternating round by round on one machine.
# usage: bench/paired.sh LAYERS THREADS ROUNDS BIN1 BIN2 [BIN...]
#   env RUNS (runs per `tconv bench` call, default 15), PASS (backward|forward, default backward),
#   EXTRA (more `tconv bench` arguments, e.g. "--dtype float64")
# Prints, per row, each binary's median per round and, for each later binary, BIN1's time
# over its time (above 1: faster than BIN1) as two figures: the ratio of the medians and
# the ratio of the minima of each `tconv bench` call, each the median over the rounds.
set -euo pipefail
layers=$1; threads=$2; rounds=$3; shift 3
runs=${RUNS:-15}; pass=${PASS:-backward}; extra=${EXTRA:-}
for _ in $(seq "$rounds"); do
  for b in "$@"; do
    # shellcheck disable=SC2086 # EXTRA is split into arguments
    "$b" bench --pass "$pass" --layer "$layers" --threads "$threads" --runs "$runs" --json $extra |
      python3 -c "
import sys, json
for line in sys.stdin:
    d = json.loads(line)
    print(sys.argv[1], d['name'], d['median_ms'], d['min_ms'])" "$b"
  done
done | python3 -c "
import sys, collections, statistics
times = collections.defaultdict(lambda: collections.defaultdict(list))
order = []
for line in sys.stdin:
    b, name, med, mn = line.split()
    times[name][b].append((float(med), float(mn)))
    if b not in order:
        order.append(b)
for name, per in times.items():
    base = per[order[0]]
    row = '%-22s' % name
    for b in order:
        row += '  %s %s' % (b.rsplit('/', 1)[-1], '/'.join('%.2f' % t[0] for t in per[b]))
    for b in order[1:]:
        r = [x[0] / y[0] for x, y in zip(base, per[b])]
        m = [x[1] / y[1] for x, y in zip(base, per[b])]
        row += '  | %s %.2f/%.2f' % (b.rsplit('/', 1)[-1], statistics.median(r), statistics.median(m))
    print(row)
"
