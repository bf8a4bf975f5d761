"""Caching every feature of an SAE at one site over a batch: graphlens vs SAELens, gpt2-small shape, CPU.

    python -m benchmarks.bench_saes [--repeats 7] [--batch 4] [--pos 64] [--layer 6] [--d-sae 24576]

The same random model (TransformerLens 3.9 with its default processing, wrapped as SAELens'
HookedSAETransformer, vs the graphlens bundle of the same HF weights) and the same random standard SAE
on ``blocks.L.hook_resid_pre`` (saved with SAELens' ``save_model``, read by graphlens from the folder).
Rows, timed in interleaved rounds so machine noise hits every row alike:

- ``run_with_cache_with_saes(names_filter=acts_post)`` as a user calls it (the logits are computed too);
- the same features without the logits: graphlens ``return_type=None`` (the graph is pruned after the
  site), SAELens ``stop_at_layer=L+1`` (its fastest way to stop after the site).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from benchmarks.common import CACHE, bundle, hf_folder, interleaved_seconds, log, tl_model
from graphlens import HookedTransformer


def _sae(d_model: int, d_sae: int, hook: str):
    import torch
    from sae_lens.saes import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_enc.add_(0.1 * torch.randn(d_sae))
    folder = CACHE / f"sae-{hook}-{d_sae}"
    sae.save_model(folder)
    return sae.eval(), folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=64)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-sae", type=int, default=24576)
    args = parser.parse_args()
    import torch
    from sae_lens import HookedSAETransformer

    torch.set_grad_enabled(False)
    source = hf_folder()
    ours = HookedTransformer.from_pretrained(bundle(source, progress=None), device="cpu")
    tl = tl_model(source)
    ref = HookedSAETransformer(tl.cfg)
    ref.load_state_dict(tl.state_dict())
    ref.eval()
    del tl
    hook = f"blocks.{args.layer}.hook_resid_pre"
    sae, folder = _sae(ours.cfg.d_model, args.d_sae, hook)
    feature_hook = f"{hook}.hook_sae_acts_post"
    tokens = np.random.default_rng(0).integers(0, ours.cfg.d_vocab, size=(args.batch, args.pos))
    tokens_t = torch.tensor(tokens)

    _, theirs = ref.run_with_cache_with_saes(tokens_t, saes=[sae], names_filter=feature_hook)
    _, mine = ours.run_with_cache_with_saes(tokens, saes=[folder], names_filter=feature_hook)
    gap = float(np.abs(mine[feature_hook] - theirs[feature_hook].numpy()).max())
    log(f"features agree to {gap:.2e}")
    rows = {
        "SAELens run_with_cache_with_saes": lambda: ref.run_with_cache_with_saes(
            tokens_t, saes=[sae], names_filter=feature_hook),
        "graphlens run_with_cache_with_saes": lambda: ours.run_with_cache_with_saes(
            tokens, saes=[folder], names_filter=feature_hook),
        "SAELens, features only (stop_at_layer)": lambda: ref.run_with_cache_with_saes(
            tokens_t, saes=[sae], names_filter=feature_hook, stop_at_layer=args.layer + 1),
        "graphlens, features only (return_type=None)": lambda: ours.run_with_cache_with_saes(
            tokens, saes=[folder], names_filter=feature_hook, return_type=None),
    }
    times = interleaved_seconds(rows, args.repeats)
    print(f"\ngpt2-small shape, fp32, CPU, batch {args.batch} x {args.pos}, standard SAE d_sae={args.d_sae} at {hook}, "
          f"median of {args.repeats} interleaved rounds (features agree to {gap:.1e})")
    print(f"{'':46s} {'ms':>10s}  speed-up of graphlens")
    labels = list(rows)
    for theirs_label, ours_label in zip(labels[::2], labels[1::2]):
        t, o = statistics.median(times[theirs_label]), statistics.median(times[ours_label])
        print(f"{theirs_label:46s} {1000 * t:10.1f}")
        print(f"{ours_label:46s} {1000 * o:10.1f}  {t / o:6.2f}x")


if __name__ == "__main__":
    main()
