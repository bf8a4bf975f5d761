"""Shared benchmark setup: a gpt2-small-shaped random model, its bundle and its TransformerLens twin.

Everything is built locally (no hub) and cached under ``benchmarks/.cache`` (ignored by git).
Times are medians of repeated runs; what matters are the ratios printed side by side in one run.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

CACHE = Path(os.environ.get("GRAPHLENS_BENCH_CACHE", Path(__file__).parent / ".cache"))
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hf_folder(name: str = "gpt2-small-random", **config) -> Path:
    """A random GPT-2 saved with save_pretrained (gpt2-small shape unless overridden)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = CACHE / name
    if not (folder / "config.json").is_file():
        log(f"building {name}")
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**{**GPT2_SMALL, **config})).save_pretrained(folder)
    return folder


def bundle(source: Path, name: str | None = None, **export_args) -> Path:
    from graphlens.bundle import is_bundle
    from graphlens.export.pipeline import export_bundle

    out = CACHE / (name or f"{source.name}-bundle")
    if not is_bundle(out):
        export_bundle(str(source), out, **export_args)
    return out


def plain_onnx(source: Path) -> Path:
    """The HF model exported as-is with torch.onnx (dynamo, eager attention, default optimisation)."""
    import torch
    from transformers import GPT2LMHeadModel

    out = CACHE / f"{source.name}-plain.onnx"
    if not out.is_file():
        log("exporting the plain ONNX baseline")
        model = GPT2LMHeadModel.from_pretrained(source, attn_implementation="eager").eval()

        class Logits(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                return self.m(input_ids=input_ids, use_cache=False).logits

        batch, pos = torch.export.Dim("batch"), torch.export.Dim("pos", max=1024)
        program = torch.onnx.export(
            Logits(model), (torch.zeros(2, 8, dtype=torch.long),), dynamo=True, input_names=["input_ids"],
            output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: pos}},
        )
        program.save(str(out))
    return out


def tl_model(source: Path):
    """TransformerLens 3.9 with the same weights and its default processing."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(source).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd, n_layers=c.n_layer,
        n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn=c.activation_function, normalization_type="LN",
        eps=c.layer_norm_epsilon, positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg))
    torch.set_grad_enabled(False)
    return model.eval()


def interleaved_seconds(rows: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Each row's run times over ``repeats`` rounds that run every row once, in turn (after ``warmup`` rounds),
    so that machine noise hits every row alike."""
    times: dict[str, list[float]] = {label: [] for label in rows}
    for round_ in range(repeats + warmup):
        log(f"round {round_ + 1}/{repeats + warmup}")
        for label, fn in rows.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[label].append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def print_table(title: str, rows: list[tuple[str, float]], baseline: str, unit: str = "ms") -> None:
    """Rows of (label, value), with each value's ratio to the ``baseline`` row."""
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'':44s} {unit:>10s}  ratio vs {baseline}")
    for label, value in rows:
        print(f"{label:44s} {value:10.1f}  {value / base:6.2f}x")
