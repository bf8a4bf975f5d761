"""Forward and run_with_cache on a gpt2-small-shaped model, CPU, batch 4 x 64 (issue 2's targets).

    python benchmarks/bench_forward.py [--repeats 7]

Prints one table: TransformerLens forward and run_with_cache (all hooks), HF forward, plain ONNX
Runtime on a plain torch.onnx export, graphlens forward and run_with_cache (all hooks).
Targets: graphlens forward ≤ 1.10x plain ONNX Runtime; graphlens run_with_cache ≥ 2x faster than TL's.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import torch
from transformers import GPT2LMHeadModel

from benchmarks.common import bundle, hf_folder, log, median_ms, plain_onnx, print_table, tl_model
from graphlens import HookedTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    args = parser.parse_args()

    source = hf_folder()
    tokens = np.random.default_rng(0).integers(0, 50257, size=(args.batch, args.pos))
    tokens_t = torch.tensor(tokens)
    rows = []

    log("graphlens")
    model = HookedTransformer.from_pretrained(bundle(source), device="cpu")
    rows.append(("graphlens forward", median_ms(lambda: model(tokens), args.repeats)))
    rows.append(("graphlens run_with_cache (all hooks)", median_ms(lambda: model.run_with_cache(tokens), args.repeats)))
    del model

    log("plain ONNX Runtime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(plain_onnx(source)), options, providers=["CPUExecutionProvider"])
    rows.append(("plain ONNX Runtime (torch.onnx export)", median_ms(lambda: plain.run(["logits"], {"input_ids": tokens}), args.repeats)))
    del plain

    log("Hugging Face")
    torch.set_grad_enabled(False)
    hf = GPT2LMHeadModel.from_pretrained(source, attn_implementation="eager").eval()
    rows.append(("HF forward (eager attention)", median_ms(lambda: hf(tokens_t), args.repeats)))
    del hf

    log("TransformerLens")
    tl = tl_model(source)
    rows.append(("TransformerLens forward", median_ms(lambda: tl(tokens_t), args.repeats)))
    rows.append(("TransformerLens run_with_cache (all hooks)", median_ms(lambda: tl.run_with_cache(tokens_t), args.repeats)))

    print(f"\ngpt2-small shape (12 layers, d_model 768), random weights, fp32, CPU, batch {args.batch} x {args.pos} tokens, "
          f"median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print_table("forward / run_with_cache", rows, baseline="plain ONNX Runtime (torch.onnx export)")
    values = dict(rows)
    print(f"\ngraphlens forward / plain ORT:                  {values['graphlens forward'] / values['plain ONNX Runtime (torch.onnx export)']:.2f}x (target <= 1.10)")
    print(f"TL run_with_cache / graphlens run_with_cache:   "
          f"{values['TransformerLens run_with_cache (all hooks)'] / values['graphlens run_with_cache (all hooks)']:.2f}x (target >= 2)")


if __name__ == "__main__":
    main()
