"""Gradients and attribution patching on a gpt2-small-shaped model, CPU (issue 15's targets).

    python -m benchmarks.bench_attribution [--repeats 3] [--batch 4 --pos 64] [--patch-pos 20]

Prints two tables, side by side in one run:
- batch x pos: graphlens forward, gradients of the loss at every hook (``run_with_cache(incl_bwd=True)``)
  and TransformerLens' forward + backward with every hook cached. Target: gradients <= 3x one forward.
- batch 1 x patch-pos: attribution patching of every head (``attn.hook_z``) and every residual position
  (``hook_resid_pre``) with a logit-difference metric: ``graphlens.attribution.attr_patch``, the same in
  TransformerLens (clean forward + backward with hooks, corrupted forward), and graphlens' activation
  patching sweeps of the same sites. Target: attribution >= 2x faster than TransformerLens'.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import bundle, hf_folder, log, median_ms, print_table, tl_model
from graphlens import HookedTransformer, patching
from graphlens.attribution import attr_patch, logit_diff_grad

SITES = ("attn.hook_z", "hook_resid_pre")


def gradient_rows(model, tl, repeats: int, batch: int, pos: int) -> list[tuple[str, float]]:
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, size=(batch, pos))
    t = torch.tensor(tokens)

    def tl_backward():
        with torch.enable_grad():
            tl.run_with_cache(t, return_type="loss", incl_bwd=True)

    rows = [("graphlens forward", median_ms(lambda: model(tokens), repeats))]
    rows.append(("graphlens run_with_cache (every hook)", median_ms(lambda: model.run_with_cache(tokens), repeats)))
    rows.append(("graphlens gradients at every hook (incl_bwd)", median_ms(
        lambda: model.run_with_cache(tokens, return_type="loss", incl_bwd=True), repeats)))
    if tl is not None:
        rows.append(("TransformerLens forward", median_ms(lambda: tl(t), repeats)))
        rows.append(("TransformerLens run_with_cache incl_bwd", median_ms(tl_backward, repeats)))
    return rows


def tl_attribution(tl, clean, corrupted, answer: int, wrong: int) -> dict[str, np.ndarray]:
    """TransformerLens' attribution patching: forward hooks cache the clean activations, backward hooks
    their gradients, one backward of the metric, a cached corrupted forward, then the products."""
    names = lambda n: n.endswith(SITES)  # noqa: E731
    acts, grads = {}, {}
    tl.reset_hooks()
    tl.add_hook(names, lambda a, hook: acts.__setitem__(hook.name, a.detach()), "fwd")
    tl.add_hook(names, lambda g, hook: grads.__setitem__(hook.name, g.detach()), "bwd")
    with torch.enable_grad():
        logits = tl(torch.tensor(clean))
        (logits[:, -1, answer] - logits[:, -1, wrong]).mean().backward()
    tl.reset_hooks()
    with torch.no_grad():
        _, corrupted_cache = tl.run_with_cache(torch.tensor(corrupted), names_filter=names)
    n_layers = tl.cfg.n_layers
    heads = torch.stack([((corrupted_cache[f"blocks.{layer}.attn.hook_z"] - acts[f"blocks.{layer}.attn.hook_z"])
                          * grads[f"blocks.{layer}.attn.hook_z"]).sum((0, 1, 3)) for layer in range(n_layers)])
    resid = torch.stack([((corrupted_cache[f"blocks.{layer}.hook_resid_pre"] - acts[f"blocks.{layer}.hook_resid_pre"])
                          * grads[f"blocks.{layer}.hook_resid_pre"]).sum((0, 2)) for layer in range(n_layers)])
    return {"attn.hook_z": heads.numpy(), "hook_resid_pre": resid.numpy()}


def attribution_rows(model, tl, pos: int) -> tuple[list[tuple[str, float]], dict]:
    rng = np.random.default_rng(2)
    clean = rng.integers(0, model.cfg.d_vocab, size=(1, pos))
    corrupted = clean.copy()
    corrupted[0, pos // 2] = (clean[0, pos // 2] + 1) % model.cfg.d_vocab
    answer, wrong = 100, 200
    c = logit_diff_grad((*clean.shape, model.cfg.d_vocab_out), answer, wrong)
    ours = {}

    def run_ours():
        ours["r"] = attr_patch(model, clean, corrupted, logits_grad=c, sites=SITES)

    def seconds(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    rows = [("graphlens attr_patch (cold)", 1000 * seconds(run_ours))]
    rows.append(("graphlens attr_patch (warm)", 1000 * seconds(run_ours)))
    if tl is not None:
        ref = {}
        rows.append(("TransformerLens attribution (fwd+bwd, hooks)",
                     1000 * seconds(lambda: ref.update(tl_attribution(tl, clean, corrupted, answer, wrong)))))
        for site in SITES:
            np.testing.assert_allclose(ours["r"][site], ref[site], rtol=1e-3, atol=1e-4 * np.abs(ref[site]).max())

    _, clean_cache = model.run_with_cache(clean)
    metric = lambda logits: (logits[:, -1, answer] - logits[:, -1, wrong]).mean()  # noqa: E731
    args = (model, corrupted, clean_cache, metric)
    rows.append(("graphlens activation patching, same sites", 1000 * seconds(lambda: (
        patching.get_act_patch_attn_head_out_all_pos(*args), patching.get_act_patch_resid_pre(*args)))))
    return rows, ours["r"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    parser.add_argument("--patch-pos", type=int, default=20)
    parser.add_argument("--skip-tl", action="store_true", help="Skip TransformerLens.")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    source = hf_folder()
    model = HookedTransformer.from_pretrained(bundle(source), device="cpu")
    tl = None if args.skip_tl else tl_model(source)
    log("gradients")
    grad_rows = gradient_rows(model, tl, args.repeats, args.batch, args.pos)
    log("attribution")
    attr_rows, _ = attribution_rows(model, tl, args.patch_pos)

    print(f"\ngpt2-small shape (12 layers, d_model 768, vocab 50257), random weights, fp32, CPU, "
          f"torch threads {torch.get_num_threads()}")
    print_table(f"gradients of the loss, batch {args.batch} x {args.pos}, median of {args.repeats}", grad_rows,
                baseline="graphlens forward")
    print_table(f"attribution patching, 12 layers x 12 heads + 12 layers x {args.patch_pos} positions, batch 1, "
                "one run each", attr_rows, baseline="graphlens attr_patch (warm)")
    g, a = dict(grad_rows), dict(attr_rows)
    print(f"\ngradients at every hook / forward: {g['graphlens gradients at every hook (incl_bwd)'] / g['graphlens forward']:.2f}x"
          " (target <= 3)")
    if tl is not None:
        tl_time = a["TransformerLens attribution (fwd+bwd, hooks)"]
        print(f"TL attribution / graphlens:        {tl_time / a['graphlens attr_patch (cold)']:.1f}x cold, "
              f"{tl_time / a['graphlens attr_patch (warm)']:.1f}x warm (target >= 2)")


if __name__ == "__main__":
    main()
