"""Induction heads in the shipped pydoc-gpt2 model, end to end with graphlens (runs offline).

    python examples/induction.py [--bundle models/pydoc-gpt2] [--out examples/out]

1. export the shipped model (models/shipped/pydoc-gpt2) unless the bundle exists;
2. predict next tokens for a prompt;
3. cache a run on a repeated random token sequence and score every head for induction;
4. plot the best head's attention pattern (PNG);
5. zero-ablate that head through its ``hook_z`` patch input and show the loss on the repeated half go up;
6. generate a sentence.

It asserts what it prints (induction score ≥ 0.4, ablation raises the repeated-half loss by ≥ 1 nat),
so it fails if the model or graphlens breaks. CI runs it (tests/test_example.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from graphlens import HookedTransformer
from graphlens.bundle import is_bundle

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "shipped" / "pydoc-gpt2"
SPAN = 50  # length of the random span that is repeated
MIN_INDUCTION_SCORE = 0.4
MIN_ABLATION_LOSS_INCREASE = 1.0  # nats per token on the repeated half


def repeated_tokens(model: HookedTransformer, batch: int, seed: int = 0) -> np.ndarray:
    """``[bos, r_1..r_n, r_1..r_n]`` with ``r`` uniform over the non-special vocabulary."""
    rng = np.random.default_rng(seed)
    bos = np.full((batch, 1), model.tokenizer.bos_token_id)
    span = rng.integers(1, model.cfg.d_vocab, size=(batch, SPAN))
    return np.concatenate([bos, span, span], axis=1)


def induction_scores(pattern_by_layer: list[np.ndarray]) -> np.ndarray:
    """[layer, head]: mean attention from r_i's second copy (position n+i) to r_{i+1} (position i+1)."""
    query = np.arange(SPAN + 1, 2 * SPAN + 1)
    key = query - SPAN + 1
    return np.stack([p[:, :, query, key].mean(axis=(0, 2)) for p in pattern_by_layer])


def second_half_loss(model: HookedTransformer, tokens: np.ndarray, feeds: dict | None = None) -> float:
    logits = model.run_graph(tokens, ["logits"], feeds)["logits"]
    per_token = model.loss_fn(logits, tokens, per_token=True)  # [batch, pos-1]: loss of predicting token t+1
    return float(per_token[:, SPAN + 1 :].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "pydoc-gpt2")
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "out")
    args = parser.parse_args()

    if not is_bundle(args.bundle):
        from graphlens.export.pipeline import export_bundle

        export_bundle(str(SHIPPED), args.bundle)
    model = HookedTransformer.from_pretrained(args.bundle)
    print(model)

    prompt = "The return statement leaves the current function call with the expression"
    logits = model(prompt)
    top = np.argsort(logits[0, -1])[::-1][:5]
    print(f"\nnext token after {prompt!r}: {[model.to_string(t) for t in top]}")

    tokens = repeated_tokens(model, batch=16)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    scores = induction_scores([cache["pattern", layer] for layer in range(model.cfg.n_layers)])
    layer, head = np.unravel_index(scores.argmax(), scores.shape)
    print("\ninduction score per head (rows: layers):\n" + np.array2string(scores, precision=2))
    print(f"best induction head: L{layer}H{head}, score {scores[layer, head]:.3f}")

    from graphlens import plot

    args.out.mkdir(parents=True, exist_ok=True)
    first = tokens[:1, : 2 * 12 + 1]  # a short excerpt keeps the labels readable
    first = np.concatenate([first[:, :13], first[:, 1:13]], axis=1)
    _, short_cache = model.run_with_cache(first, names_filter=f"blocks.{layer}.attn.hook_pattern")
    png = args.out / "induction_head.png"
    plot.attention_patterns(short_cache["pattern", layer][0], model.to_str_tokens(first), heads=[head],
                            layer=int(layer), path=png)
    print(f"attention pattern of L{layer}H{head} on a repeated sequence: {png}")

    z = f"blocks.{layer}.attn.hook_z"
    mask = np.zeros((1, 1, model.cfg.n_heads, 1), dtype=bool)
    mask[..., head, :] = True
    zeros = np.zeros((1, 1, model.cfg.n_heads, model.cfg.d_head), dtype=np.float32)
    clean = second_half_loss(model, tokens)
    ablated = second_half_loss(model, tokens, {f"{z}.patch": zeros, f"{z}.patch_mask": mask})
    print(f"\nloss on the repeated half: {clean:.3f} intact, {ablated:.3f} with L{layer}H{head} ablated "
          f"(uniform guess: {np.log(model.cfg.d_vocab):.3f})")

    text = model.generate("The import statement", max_new_tokens=20, do_sample=False, verbose=False)
    print(f"\ngenerated: {text!r}")

    assert scores[layer, head] >= MIN_INDUCTION_SCORE, f"no induction head: best score {scores.max():.3f}"
    assert ablated - clean >= MIN_ABLATION_LOSS_INCREASE, f"ablation raised the loss by only {ablated - clean:.3f}"
    print("\nchecks passed")


if __name__ == "__main__":
    main()
