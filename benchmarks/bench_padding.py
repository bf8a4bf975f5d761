"""The cost of the attention_mask / position_ids inputs: forward with their defaults, with a padding mask,
and (optionally) a bundle exported before they existed, as ratios to plain ONNX Runtime.

    python -m benchmarks.bench_padding [--repeats 15] [--baseline OLD_BUNDLE]

gpt2-small shape, random weights, CPU, batch 4 x 64. The runs are interleaved (one of each per round),
so a busy machine slows them alike; read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

from benchmarks.common import bundle, hf_folder, log, plain_onnx
from graphlens import HookedTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--baseline", help="a bundle of the same model exported without the mask inputs")
    args = parser.parse_args()

    source = hf_folder()
    tokens = np.random.default_rng(0).integers(0, 50257, size=(4, 64))
    mask = np.ones_like(tokens)
    mask[0, :8] = 0  # row 0 left-padded by 8
    log("loading")
    model = HookedTransformer.from_pretrained(bundle(source, decoder=False), device="cpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(plain_onnx(source)), options, providers=["CPUExecutionProvider"])
    runs = {
        "plain ONNX Runtime": lambda: plain.run(["logits"], {"input_ids": tokens}),
        "graphlens forward (default mask inputs)": lambda: model(tokens),
        "graphlens forward, left-padded mask": lambda: model(tokens, attention_mask=mask),
    }
    if args.baseline:
        old = HookedTransformer.from_pretrained(args.baseline, device="cpu")
        runs["graphlens forward, baseline bundle"] = lambda: old(tokens)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn(), fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain ONNX Runtime"])
    print(f"\ngpt2-small shape, batch 4 x 64, median of {args.repeats} interleaved rounds")
    for name, values in times.items():
        print(f"{name:45s} {1000 * statistics.median(values):8.1f} ms  {statistics.median(values) / base:.3f}x")


if __name__ == "__main__":
    main()
