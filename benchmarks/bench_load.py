"""Bundle load time and resident memory: graphlens vs a plain ONNX Runtime session on the same files.

    python -m benchmarks.bench_load [--bundle DIR] [--rounds 3]

Each measurement is a fresh process (the page cache is warmed once first, so every contender reads
the weights from memory, not disk): the time to a session that can compute ``logits`` and the peak
RSS above the process's RSS after its imports, in units of the weights' bytes (``model.onnx.data``).

- ``plain InferenceSession``: ``ort.InferenceSession("model.onnx")`` (ORT reads the external data itself);
- ``graphlens``: ``HookedTransformer(bundle)`` (weights memory-mapped, ``runtime/mapped_weights.py``)
  plus the logits session;
- ``graphlens, copying load``: the same with the weights first read into the protobuf and copied into
  numpy, as graphlens loaded bundles before the memory map.

Default bundle: the Llama 12 x 768 (vocab 32000) of ``export_memory --shape llama-150m``, exported once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import log

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, onnxruntime as ort
import graphlens
from graphlens.runtime.hooked_transformer import HookedTransformer
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
how, bundle = sys.argv[1], Path(sys.argv[2])
base = rss()
start = time.perf_counter()
if how == "plain":
    options = ort.SessionOptions(); options.log_severity_level = 3
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
else:
    if how == "copying":
        import graphlens.bundle_check as bc
        import graphlens.runtime.hooked_transformer as ht
        from graphlens.runtime.graph import BundleGraph
        load = bc.load_graph
        ht.load_graph = lambda *a, read_weights=True: load(*a, read_weights=True)
    model = HookedTransformer(bundle)
    session = model.graph.session(["logits"])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "above_imports": peak - base, "now": rss() - base}))
"""

HOW = {"plain": "plain InferenceSession", "mapped": "graphlens (memory-mapped)", "copying": "graphlens, copying load"}


def measure(how: str, bundle: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, how, str(bundle)], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.bundle is None:
        from benchmarks.common import bundle
        from benchmarks.export_memory import llama_folder

        source = llama_folder("llama-150m")
        args.bundle = bundle(source, name=f"{source.name}-bundle")
    data = args.bundle / "model.onnx.data"
    weights = data.stat().st_size
    with open(data, "rb") as f:  # warm the page cache once: every contender then reads from memory
        while f.read(1 << 24):
            pass
    runs: dict[str, list[dict]] = {how: [] for how in HOW}
    for round_ in range(args.rounds):
        for how in HOW:  # in turns, so machine load affects all alike
            log(f"round {round_ + 1}: {HOW[how]}")
            runs[how].append(measure(how, args.bundle))
    print(f"\n{args.bundle.name}: weights {weights / 2**20:.0f} MiB; medians of {args.rounds} fresh processes")
    print(f"{'':34s} {'load s':>8s} {'vs plain':>9s} {'peak RSS / weights':>19s} {'after load / weights':>21s}")
    plain = statistics.median(r["seconds"] for r in runs["plain"])
    for how, label in HOW.items():
        seconds = statistics.median(r["seconds"] for r in runs[how])
        peak = statistics.median(r["above_imports"] for r in runs[how]) / weights
        now = statistics.median(r["now"] for r in runs[how]) / weights
        print(f"{label:34s} {seconds:8.2f} {seconds / plain:8.2f}x {peak:19.2f} {now:21.2f}")


if __name__ == "__main__":
    main()
