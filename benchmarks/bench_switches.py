"""What ``set_use_attn_result`` / ``set_use_hook_mlp_in`` cost, on a gpt2-small-shaped model, CPU.

    python -m benchmarks.bench_switches [--repeats 9]

One run, interleaved rows, ratios against the exported graph's forward: the forward with each flag on
(its sites not asked for: what an export that always had them would pay), run_with_cache of the new
sites, and the one-off rewrite when a flag is set.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import bundle, hf_folder, log, median_ms, print_table
from graphlens import HookedTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    args = parser.parse_args()
    tokens = np.random.default_rng(0).integers(0, 50257, size=(args.batch, args.pos))
    model = HookedTransformer.from_pretrained(bundle(hf_folder()), device="cpu")
    rows, rewrites = [], []

    def timed(label, fn):
        rows.append((label, median_ms(fn, args.repeats)))

    def switch(flag: str, on: bool) -> None:
        start = time.perf_counter()
        getattr(model, f"set_{flag}")(on)
        rewrites.append((f"set_{flag}({on}) (graph rewrite, once)", 1000 * (time.perf_counter() - start)))

    log("flags off")
    timed("forward, exported graph", lambda: model(tokens))
    timed("run_with_cache(hook_z), exported graph", lambda: model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z")))
    log("use_attn_result")
    switch("use_attn_result", True)
    timed("forward, use_attn_result", lambda: model(tokens))
    timed("run_with_cache(hook_result)", lambda: model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result")))
    switch("use_attn_result", False)
    log("use_hook_mlp_in")
    switch("use_hook_mlp_in", True)
    timed("forward, use_hook_mlp_in", lambda: model(tokens))
    timed("run_with_cache(hook_mlp_in)", lambda: model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_mlp_in")))
    switch("use_hook_mlp_in", False)
    timed("forward, exported graph (again)", lambda: model(tokens))
    print_table(f"gpt2-small shape, fp32, CPU, batch {args.batch} x {args.pos}, median of {args.repeats}", rows,
                "forward, exported graph")
    for label, ms in rewrites:
        print(f"{label:44s} {ms:10.1f}")


if __name__ == "__main__":
    main()
