"""Regression guard: graphlens' speed targets, each measured side by side in one run; exit 1 if one fails.

    python -m benchmarks.guard [--repeats 7] [--gen-repeats 3] [--no-genai] [--slack 0]

1. forward, gpt2-small shape (random weights), fp32, batch 4 x 64: graphlens <= 1.0x the time of ONNX
   Runtime's transformer optimizer output (``optimize_model``, model_type gpt2) of the plain torch.onnx export;
2. run_with_cache (all hooks), same input: >= 2x faster than TransformerLens 3.9's;
3. greedy generation, fp32, a Llama of 12 x 768 (GQA 12/4, MLP 2048, vocab 32000), 32-token prompt + 64
   new tokens: >= 1.1x the tokens/s of onnxruntime-genai's fp32 CPU model (its model builder, run on the
   same folder), at batch 1 and batch 8.

The contenders take turns (``interleaved_seconds``) so a busy machine slows them alike. ``--slack``
loosens every target by that fraction (e.g. 0.05 on a shared machine); the verdict uses the targets as
written unless it is given. Everything is built locally and cached under ``benchmarks/.cache``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.bench_generate import interleaved_seconds
from benchmarks.common import CACHE, bundle, hf_folder, log, plain_onnx, tl_model
from benchmarks.export_memory import llama_folder, measure_genai

PROMPT, NEW = 32, 64


def optimized_onnx(source: Path) -> Path:
    """ONNX Runtime's transformer optimizer (Attention / SkipLayerNorm / FastGelu fusions) on the plain export."""
    out = CACHE / f"{source.name}-plain-optimized.onnx"
    if not out.is_file():
        from onnxruntime.transformers.optimizer import optimize_model

        log("optimizing the plain export with onnxruntime.transformers.optimizer")
        try:
            optimized = optimize_model(str(plain_onnx(source)), model_type="gpt2", num_heads=12, hidden_size=768)
        except IndexError:  # its gpt2 post-processing expects a biased Gemm the dynamo export does not have
            log("the gpt2 optimizer's post-processing fails on this export: using its bert fusions (same passes)")
            optimized = optimize_model(str(plain_onnx(source)), model_type="bert", num_heads=12, hidden_size=768)
        optimized.save_model_to_file(str(out))
    return out


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def forward_targets(repeats: int) -> list[tuple[str, float, str, float]]:
    """(what, measured ratio, comparison, target) for forward and run_with_cache."""
    import torch

    from graphlens import HookedTransformer

    source = hf_folder()
    tokens = np.random.default_rng(0).integers(0, 50257, size=(4, 64))
    tokens_t = torch.tensor(tokens)
    model = HookedTransformer.from_pretrained(bundle(source), device="cpu")
    optimized = _session(optimized_onnx(source))
    tl = tl_model(source)
    log("forward and run_with_cache: graphlens, the optimized export and TransformerLens in turns")
    t = interleaved_seconds({
        "graphlens forward": lambda: model(tokens),
        "optimized export": lambda: optimized.run(["logits"], {"input_ids": tokens}),
        "graphlens run_with_cache": lambda: model.run_with_cache(tokens),
        "TL run_with_cache": lambda: tl.run_with_cache(tokens_t),
    }, {"graphlens forward": repeats, "optimized export": repeats, "graphlens run_with_cache": repeats,
        "TL run_with_cache": max(3, repeats // 2)})
    for name, seconds in t.items():
        print(f"  {name:28s} {1000 * seconds:9.1f} ms")
    return [("forward time / ORT-optimized export's", t["graphlens forward"] / t["optimized export"], "<=", 1.0),
            ("TL run_with_cache time / graphlens'", t["TL run_with_cache"] / t["graphlens run_with_cache"], ">=", 2.0)]


def generation_targets(repeats: int) -> list[tuple[str, float, str, float]]:
    """(what, graphlens tok/s over GenAI's, ">=", 1.1) at batch 1 and 8."""
    import onnxruntime_genai as og

    from graphlens import HookedTransformer

    source = llama_folder("llama-150m")
    genai_dir = CACHE / f"{source.name}-genai-fp32"
    if not (genai_dir / "genai_config.json").is_file():
        log("building the GenAI fp32 model with its model builder")
        measure_genai(source, genai_dir, sys.executable, "fp32")
    genai = og.Model(str(genai_dir))
    model = HookedTransformer.from_pretrained(bundle(source, name=f"{source.name}-bundle"), device="cpu")
    results = []
    for batch in (1, 8):
        ids = np.random.default_rng(batch).integers(3, 32000, size=(batch, PROMPT))
        out = {}

        def genai_generate():
            params = og.GeneratorParams(genai)
            params.set_search_options(max_length=PROMPT + NEW, min_length=PROMPT + NEW, do_sample=False, batch_size=batch)
            generator = og.Generator(genai, params)
            generator.append_tokens(ids.astype(np.int32))
            while not generator.is_done():
                generator.generate_next_token()
            out["GenAI"] = np.stack([np.asarray(generator.get_sequence(i)) for i in range(batch)])

        def ours():
            out["graphlens"] = model.generate(ids, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, verbose=False)

        log(f"generation, batch {batch}: graphlens and GenAI in turns")
        t = interleaved_seconds({"graphlens": ours, "GenAI": genai_generate}, {"graphlens": repeats, "GenAI": repeats})
        rate = {name: batch * NEW / seconds for name, seconds in t.items()}
        same = int((out["graphlens"][:, PROMPT:] == out["GenAI"][:, PROMPT:PROMPT + NEW]).all(0).sum())
        print(f"  batch {batch}: graphlens {rate['graphlens']:.1f} tok/s, GenAI fp32 {rate['GenAI']:.1f} tok/s; "
              f"greedy tokens equal at {same} of {NEW} steps")
        results.append((f"generate tok/s / GenAI fp32's, batch {batch}", rate["graphlens"] / rate["GenAI"], ">=", 1.1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--no-genai", action="store_true", help="skip the generation targets")
    parser.add_argument("--slack", type=float, default=0.0, help="loosen every target by this fraction")
    args = parser.parse_args()
    rows = forward_targets(args.repeats)
    if not args.no_genai:
        rows += generation_targets(args.gen_repeats)
    failed = 0
    print("\ntarget                                            measured   target   verdict")
    for what, value, op, target in rows:
        bound = target * (1 + args.slack) if op == "<=" else target * (1 - args.slack)
        ok = value <= bound if op == "<=" else value >= bound
        failed += not ok
        print(f"{what:48s} {value:8.2f}x  {op} {target:.2f}   {'ok' if ok else 'FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
