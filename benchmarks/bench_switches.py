"""What ``set_use_attn_result`` / ``set_use_hook_mlp_in`` / ``set_use_split_qkv_input`` / ``set_use_attn_in`` cost,
on a gpt2-small-shaped model, CPU.

    python -m benchmarks.bench_switches [--repeats 9]

Models from one bundle (flags off, then one flag on each), timed in interleaved
rounds so machine noise hits every row alike; ratios against the exported graph's forward. A forward
with a flag on and its sites not asked for is what an export that always had the sites would pay.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import bundle, hf_folder, interleaved_seconds
from graphlens import HookedTransformer


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    args = parser.parse_args()
    tokens = np.random.default_rng(0).integers(0, 50257, size=(args.batch, args.pos))
    path = bundle(hf_folder())
    flags = ("use_attn_result", "use_hook_mlp_in", "use_split_qkv_input", "use_attn_in")
    plain = HookedTransformer.from_pretrained(path, device="cpu")
    switched = {flag: HookedTransformer.from_pretrained(path, device="cpu") for flag in flags}
    rewrites = {f"set_{flag}(True)": _seconds(lambda m=model, f=flag: getattr(m, f"set_{f}")(True))
                for flag, model in switched.items()}
    result, mlp_in = switched["use_attn_result"], switched["use_hook_mlp_in"]
    split, attn_in = switched["use_split_qkv_input"], switched["use_attn_in"]
    ends = lambda suffix: (lambda n: n.endswith(suffix))  # noqa: E731
    rows = {
        "forward, exported graph": lambda: plain(tokens),
        "forward, use_attn_result": lambda: result(tokens),
        "forward, use_hook_mlp_in": lambda: mlp_in(tokens),
        "forward, use_split_qkv_input": lambda: split(tokens),
        "forward, use_attn_in": lambda: attn_in(tokens),
        "run_with_cache(hook_z), exported graph": lambda: plain.run_with_cache(tokens, names_filter=ends("hook_z")),
        "run_with_cache(hook_result)": lambda: result.run_with_cache(tokens, names_filter=ends("hook_result")),
        "run_with_cache(hook_resid_mid), exported": lambda: plain.run_with_cache(tokens, names_filter=ends("resid_mid")),
        "run_with_cache(hook_mlp_in)": lambda: mlp_in.run_with_cache(tokens, names_filter=ends("hook_mlp_in")),
        "run_with_cache(hook_q_input)": lambda: split.run_with_cache(tokens, names_filter=ends("hook_q_input")),
    }
    times = interleaved_seconds(rows, args.repeats)
    base = statistics.median(times["forward, exported graph"])
    print(f"\ngpt2-small shape, fp32, CPU, batch {args.batch} x {args.pos}, median of {args.repeats} interleaved rounds")
    print(f"{'':44s} {'ms':>10s}  ratio vs forward, exported graph")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:44s} {1000 * median:10.1f}  {median / base:6.2f}x")
    for label, seconds in rewrites.items():
        print(f"{label + ' (graph rewrite, once)':44s} {1000 * seconds:10.1f}")


if __name__ == "__main__":
    main()
