"""Greedy generation tokens/s on a gpt2-small-shaped random model, CPU: graphlens vs HF vs TransformerLens.

    python -m benchmarks.bench_generate [--repeats 3] [--tl-repeats 1] [--batches 1 8]

Batch 1 and batch 8, a 32-token prompt, 64 new tokens (stop_at_eos off, so every run makes 64).
Targets (issue 4): at batch 1, graphlens ≥ 1.5x HF generate and ≥ 3x TransformerLens generate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
from transformers import GPT2LMHeadModel

from benchmarks.common import bundle, hf_folder, log
from graphlens import HookedTransformer

PROMPT, NEW = 32, 64


def interleaved_seconds(runs: dict[str, Callable[[], object]], repeats: dict[str, int], cold: tuple[str, ...] = ()
                        ) -> dict[str, float]:
    """Median seconds per run; the runs take turns, so a busy machine slows them alike.

    Each run is warmed up once (sessions, caches) untimed, except those named in ``cold``.
    """
    for name, fn in runs.items():
        if name not in cold:
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(max(repeats.values())):
        for name, fn in runs.items():
            if i < repeats[name]:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def agreement(ours: np.ndarray, ref: np.ndarray) -> str:
    """'all' or the first new-token step where greedy choices differ (near-ties in a random model)."""
    new_ours, new_ref = ours[:, PROMPT:], ref[:, PROMPT:]
    differ = np.nonzero((new_ours != new_ref).any(0))[0]
    return "all" if differ.size == 0 else f"first {differ[0]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tl-repeats", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    source = hf_folder()
    model = HookedTransformer.from_pretrained(bundle(source, name=f"{source.name}-bundle-decoder"), device="cpu")
    torch.set_grad_enabled(False)
    hf = GPT2LMHeadModel.from_pretrained(source).eval()  # HF's default attention (sdpa)
    from benchmarks.common import tl_model

    tl = tl_model(source)
    eos = hf.config.eos_token_id
    results = []
    for batch in args.batches:
        tokens = np.random.default_rng(batch).integers(0, eos, size=(batch, PROMPT))
        tokens_t = torch.tensor(tokens)
        outputs = {}

        def ours():
            outputs["graphlens"] = model.generate(tokens, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                                  verbose=False)

        def hf_generate():
            outputs["HF"] = hf.generate(tokens_t, attention_mask=torch.ones_like(tokens_t), max_new_tokens=NEW,
                                        min_new_tokens=NEW, do_sample=False, pad_token_id=eos).numpy()

        def tl_generate():
            outputs["TL"] = tl.generate(tokens_t, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                        verbose=False).numpy()

        log(f"batch {batch}: graphlens, HF and TransformerLens in turns")
        t = interleaved_seconds({"graphlens": ours, "HF": hf_generate, "TL": tl_generate},
                                {"graphlens": args.repeats, "HF": args.repeats, "TL": args.tl_repeats}, cold=("TL",))
        same = {k: agreement(outputs["graphlens"], v) for k, v in outputs.items() if k != "graphlens"}
        results.append((batch, t["graphlens"], t["HF"], t["TL"], same))

    print(f"\nGreedy generation, gpt2-small shape (12 layers, d_model 768, vocab 50257), random weights, fp32, CPU, "
          f"{PROMPT}-token prompt + {NEW} new tokens, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} (TL: {args.tl_repeats})")
    print(f"{'batch':>5} {'graphlens tok/s':>16} {'HF tok/s':>10} {'TL tok/s':>10} {'vs HF':>7} {'vs TL':>7}  same tokens as")
    for batch, t_ours, t_hf, t_tl, same in results:
        rate = lambda t: batch * NEW / t
        print(f"{batch:5d} {rate(t_ours):16.1f} {rate(t_hf):10.1f} {rate(t_tl):10.1f} {t_hf / t_ours:6.2f}x "
              f"{t_tl / t_ours:6.2f}x  {same}")
    print("targets at batch 1: >= 1.5x HF, >= 3x TL")


if __name__ == "__main__":
    main()
