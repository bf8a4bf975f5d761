"""Harvest the shipped model's residual stream over the standard library's documentation, then train a
tiny sparse autoencoder on it from the ``ActivationStore`` (numpy only).

    graphlens export                                   # the shipped model → models/pydoc-gpt2
    python examples/harvest_sae.py [--bundle models/pydoc-gpt2] [--out examples/out/harvest] [--max-tokens N]

It asserts what it prints: the SAE explains most of the variance of held-out activations with few
active features per token.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from pydoc_data.topics import topics

from graphlens.harvest import ActivationStore, harvest

HOOK = "blocks.0.hook_resid_post"


def write_docs(path: Path) -> Path:
    """pydoc's topic pages as JSON Lines, one document per topic."""
    path.write_text("".join(json.dumps({"text": topics[name]}) + "\n" for name in sorted(topics)))
    return path


def train_sae(store: ActivationStore, n_features: int, l1: float, epochs: int, lr: float, seed: int = 0):
    """ReLU SAE, x ≈ relu((x - b_dec) W_enc + b_enc) W_dec + b_dec, plain Adam on MSE + l1·|f|₁."""
    rng = np.random.default_rng(seed)
    d = store.hooks[HOOK]["d"]
    scale = float(np.sqrt(store.stats(HOOK)["variance"].sum()))  # train on unit-norm-ish inputs
    params = {"W_enc": rng.normal(0, d ** -0.5, (d, n_features)), "b_enc": np.zeros(n_features),
              "W_dec": None, "b_dec": store.stats(HOOK)["mean"] / scale}
    params["W_dec"] = params["W_enc"].T.copy()
    params = {k: v.astype(np.float32) for k, v in params.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    step = 0
    for epoch in range(epochs):  # the last shard is held out
        for x in store.batches(HOOK, 512, shuffle=True, seed=seed + epoch, drop_last=True,
                                 shards=range(len(store.shards) - 1)):
            x = x / scale
            pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            f = np.maximum(pre, 0)
            err = f @ params["W_dec"] + params["b_dec"] - x
            g = 2 * err / len(x)  # d(mean over the batch of |err|²) / d x_hat
            gf = (g @ params["W_dec"].T + l1 / len(x)) * (pre > 0)
            grads = {"W_dec": f.T @ g, "b_dec": g.sum(0) - (gf @ params["W_enc"].T).sum(0),
                     "W_enc": (x - params["b_dec"]).T @ gf, "b_enc": gf.sum(0)}
            step += 1
            for k, grad in grads.items():  # Adam
                m, v = moments[k]
                m[:] = 0.9 * m + 0.1 * grad
                v[:] = 0.999 * v + 0.001 * grad ** 2
                params[k] -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
            params["W_dec"] /= np.linalg.norm(params["W_dec"], axis=1, keepdims=True)
    return params, scale


def evaluate(store: ActivationStore, params: dict, scale: float) -> tuple[float, float]:
    """Fraction of variance explained and mean active features per token, on the held-out last shard."""
    x = store.layout(HOOK).flat(store.shard(len(store.shards) - 1, [HOOK])[HOOK]) / scale
    f = np.maximum((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"], 0)
    x_hat = f @ params["W_dec"] + params["b_dec"]
    fve = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    return float(fve), float((f > 0).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", default="models/pydoc-gpt2")
    parser.add_argument("--out", default="examples/out/harvest")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    docs = write_docs(out / "pydoc.jsonl")
    store = ActivationStore(harvest(args.bundle, docs, [HOOK], 128, out / "acts", max_tokens=args.max_tokens,
                                    shard_size=64, batch_size=16))
    print(f"harvested {store.n_tokens} tokens of {HOOK} in {len(store.shards)} shards; "
          f"max norm {store.stats(HOOK)['max_norm']:.1f}")
    params, scale = train_sae(store, n_features=512, l1=0.1, epochs=args.epochs, lr=1e-3)
    fve, l0 = evaluate(store, params, scale)
    print(f"SAE, 512 features: held-out variance explained {fve:.3f}, {l0:.1f} active features per token")
    assert fve > 0.7 and l0 < 128, "the SAE should reconstruct held-out activations with sparse codes"
    print("checks passed")


if __name__ == "__main__":
    main()
