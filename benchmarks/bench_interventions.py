"""Interventions on a gpt2-small-shaped model, CPU (issue 3's targets).

    python -m benchmarks.bench_interventions [--repeats 5] [--skip-tl]

Prints two tables:
- batch 4 x 64: forward vs run_with_hooks with 1 and with 12 hooked sites, and the same steering
  compiled into a standalone bundle (``graphlens.intervene``). Target: run_with_hooks <= 1.3x forward.
- batch 1 x 20: ``patching.get_act_patch_resid_pre`` over 12 layers x 20 positions, graphlens vs
  TransformerLens (one run each; graphlens cold, i.e. with its session builds, and warm).
  Target: >= 5x faster than TransformerLens. ``--tl-sample N`` times TransformerLens on N of the
  240 indices and scales (each index is one independent forward there).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from benchmarks.common import bundle, hf_folder, log, median_ms, print_table, tl_model
from graphlens import HookedTransformer, intervene, patching


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hooks_table(model, source_bundle, repeats: int, batch: int, pos: int) -> list[tuple[str, float]]:
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, size=(batch, pos))
    vector = np.random.default_rng(1).normal(size=model.cfg.d_model).astype(np.float32)

    def steer(act, hook):
        act += vector  # in place: returns None

    one = [("blocks.6.hook_resid_pre", steer)]
    twelve = [(f"blocks.{layer}.hook_resid_pre", steer) for layer in range(model.cfg.n_layers)]
    rows = [("graphlens forward", median_ms(lambda: model(tokens), repeats))]
    rows.append(("run_with_hooks, 1 site (steer resid_pre 6)", median_ms(lambda: model.run_with_hooks(tokens, fwd_hooks=one), repeats)))
    rows.append(("run_with_hooks, 12 sites (every resid_pre)", median_ms(lambda: model.run_with_hooks(tokens, fwd_hooks=twelve), repeats)))

    with tempfile.TemporaryDirectory() as tmp:
        log("compiling the 12-site steering into a bundle")
        spec = [{"hook": name, "op": "add", "value": vector.tolist()} for name, _ in twelve]
        steered = HookedTransformer(intervene(source_bundle, spec, f"{tmp}/steered"), device="cpu")
        rows.append(("intervened bundle forward (12 sites compiled)", median_ms(lambda: steered(tokens), repeats)))
        np.testing.assert_allclose(steered(tokens), model.run_with_hooks(tokens, fwd_hooks=twelve), atol=1e-3, rtol=1e-3)
        del steered
    return rows


def patching_table(model, source, skip_tl: bool, pos: int, tl_sample: int | None) -> list[tuple[str, float]]:
    rng = np.random.default_rng(2)
    clean = rng.integers(0, model.cfg.d_vocab, size=(1, pos))
    corrupted = clean.copy()
    corrupted[0, pos // 2] = (clean[0, pos // 2] + 1) % model.cfg.d_vocab
    answer, wrong = 100, 200

    def metric(logits):
        return logits[:, -1, answer] - logits[:, -1, wrong]

    _, clean_cache = model.run_with_cache(clean)
    args = (model, corrupted, clean_cache, lambda logits: metric(logits).mean())
    ours = {}
    rows = [("graphlens get_act_patch_resid_pre (cold)", 1000 * seconds(lambda: ours.setdefault("r", patching.get_act_patch_resid_pre(*args))))]
    rows.append(("graphlens get_act_patch_resid_pre (warm)", 1000 * seconds(lambda: patching.get_act_patch_resid_pre(*args))))
    if not skip_tl:
        import pandas as pd
        import transformer_lens.patching as tl_patching

        tl = tl_model(source)
        _, tl_cache = tl.run_with_cache(torch.tensor(clean))
        total = model.cfg.n_layers * pos
        picks = np.linspace(0, total - 1, min(tl_sample or total, total)).astype(int)
        index_df = pd.DataFrame({"layer": picks // pos, "pos": picks % pos})
        log(f"TransformerLens patching, {len(picks)} of {total} indices (one forward each)")
        result = {}
        elapsed = seconds(lambda: result.setdefault("r", tl_patching.generic_activation_patch(
            tl, torch.tensor(corrupted), tl_cache, lambda logits: metric(logits).mean(),
            tl_patching.layer_pos_patch_setter, "resid_pre", index_df=index_df)))
        label = "TransformerLens get_act_patch_resid_pre" + ("" if len(picks) == total else f" (from {len(picks)} indices)")
        rows.append((label, 1000 * elapsed * total / len(picks)))
        np.testing.assert_allclose(ours["r"].reshape(-1)[picks], result["r"].numpy(), atol=1e-3, rtol=1e-3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    parser.add_argument("--patch-pos", type=int, default=20)
    parser.add_argument("--skip-tl", action="store_true", help="Skip TransformerLens' patching run.")
    parser.add_argument("--tl-sample", type=int, default=None,
                        help="Time TransformerLens on this many of the indices (evenly spread) and scale to all of them.")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    source = hf_folder()
    source_bundle = bundle(source)
    model = HookedTransformer.from_pretrained(source_bundle, device="cpu")
    log("hooks")
    hook_rows = hooks_table(model, source_bundle, args.repeats, args.batch, args.pos)
    log("patching")
    patch_rows = patching_table(model, source, args.skip_tl, args.patch_pos, args.tl_sample)

    print(f"\ngpt2-small shape (12 layers, d_model 768, vocab 50257), random weights, fp32, CPU, "
          f"torch threads {torch.get_num_threads()}")
    print_table(f"hooks, batch {args.batch} x {args.pos}, median of {args.repeats}", hook_rows, baseline="graphlens forward")
    print_table(f"activation patching, resid_pre, 12 layers x {args.patch_pos} positions, batch 1, one run each",
                patch_rows, baseline="graphlens get_act_patch_resid_pre (warm)")
    h, p = dict(hook_rows), dict(patch_rows)
    base = h["graphlens forward"]
    print(f"\nrun_with_hooks 1 site / forward:   {h['run_with_hooks, 1 site (steer resid_pre 6)'] / base:.2f}x (target <= 1.3)")
    print(f"run_with_hooks 12 sites / forward: {h['run_with_hooks, 12 sites (every resid_pre)'] / base:.2f}x (target <= 1.3)")
    tl = next((v for k, v in p.items() if k.startswith("TransformerLens")), None)
    if tl is not None:
        print(f"TL patching / graphlens patching:  {tl / p['graphlens get_act_patch_resid_pre (cold)']:.1f}x cold, "
              f"{tl / p['graphlens get_act_patch_resid_pre (warm)']:.1f}x warm (target >= 5)")


if __name__ == "__main__":
    main()
