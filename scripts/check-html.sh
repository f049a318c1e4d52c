#!/usr/bin/env bash
# Optional browser-level check of the HTML pages (not part of `cargo test`: it needs Node.js
# and installs jsdom from the npm registry into a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm install --silent jsdom@24 >/dev/null)
cp scripts/check-html.mjs "$tmp/"
cargo build --release --quiet
./target/release/tconv demo --html "$tmp/demo.html" >/dev/null
./target/release/tconv explain conv-transpose --input '[[1,2],[3,4]]' --weight '[[1,2,3],[4,5,6],[7,8,9]]' \
  --stride 2 --padding 1 --output-padding 1 --html "$tmp/explain.html" >/dev/null
for page in "$tmp/demo.html" "$tmp/explain.html"; do
  node "$tmp/check-html.mjs" "$page"
done
