#!/usr/bin/env bash
# Does a model of MIB MiB of weights open in headless Chromium with onnxruntime-web? Prints the result and
# the renderer's peak resident memory. Usage (repository root, venv active): js/bench/browser-size/probe.sh 1536
set -euo pipefail
mib=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
cp "$here/index.html" "$here"/../../node_modules/onnxruntime-web/dist/{ort.wasm.min.mjs,ort-wasm-simd-threaded.mjs,ort-wasm-simd-threaded.wasm} "$work"
(cd "$work" && python "$here/make.py" "$mib")
python -m http.server 8766 --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 & server=$!
sleep 2
node "$here/probe.mjs" "$mib" > "$work/result" & probe=$!
peak=0
while kill -0 $probe 2>/dev/null; do
  r=$(ps -C chromium -o rss= 2>/dev/null | sort -n | tail -1 || true)
  [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
  sleep 0.3
done
echo "$(cat "$work/result")  peak renderer RSS $((peak / 1024)) MiB"
