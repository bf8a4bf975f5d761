"""``graphlens compare``: where one bundle's activations depart from another's (a quantized bundle
against its float source, typically), hook by hook and layer by layer, and how often greedy decoding
still picks the same tokens.

Per hook, over every prompt (each run alone, so no padding enters): the relative error
``‖B − A‖ / ‖A‖`` (Frobenius norms over all entries that are finite in A; masked attention scores are
``-inf`` in both) and the mean cosine similarity of B's and A's vectors along the activation's last
axis (d_model, d_head, d_mlp, or the key positions of a pattern; non-finite entries count as 0).
Greedy agreement: each bundle continues each prompt by ``new_tokens`` greedy tokens; ``matched`` counts
the positions where they pick the same token, ``first_divergence`` the tokens before they first differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from jaxtyping import Float

from graphlens.errors import InputError

# per-layer hook kinds drawn in the figure, when the bundles have them
PLOTTED_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                 "attn.hook_z", "attn.hook_pattern", "mlp.hook_post")


@dataclass
class HookDifference:
    name: str
    layer: int | None
    kind: str
    relative_error: float
    cosine: float


@dataclass
class Comparison:
    """``hooks``: one row per hook shared by both bundles, in A's order; greedy agreement per prompt."""

    hooks: list[HookDifference]
    matched: list[int] = field(default_factory=list)
    first_divergence: list[int] = field(default_factory=list)
    new_tokens: int = 0

    def agreement(self) -> float:
        """The fraction of greedy positions where both bundles chose the same token."""
        total = self.new_tokens * len(self.matched)
        return sum(self.matched) / total if total else float("nan")

    def table(self) -> str:
        width = max(len(h.name) for h in self.hooks)
        lines = [f"{'hook':<{width}}  {'layer':>5}  {'rel. error':>10}  {'cosine':>8}"]
        for h in self.hooks:
            layer = "" if h.layer is None else str(h.layer)
            lines.append(f"{h.name:<{width}}  {layer:>5}  {h.relative_error:>10.3e}  {h.cosine:>8.5f}")
        if self.new_tokens:
            total = self.new_tokens * len(self.matched)
            lines.append(f"greedy tokens: {sum(self.matched)} of {total} agree ({self.agreement():.1%}); "
                         f"first divergence after {', '.join(map(str, self.first_divergence))} tokens")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"hooks": [vars(h) for h in self.hooks], "new_tokens": self.new_tokens, "matched": self.matched,
                "first_divergence": self.first_divergence, "agreement": self.agreement()}

    def plot(self, path: str | os.PathLike | None = None, dpi: int = 100, title: str | None = None):
        """Relative error (log scale, floored at 1e-8) and cosine similarity against layer, one line per hook kind; returns
        the matplotlib Figure (``graphlens.plot`` conventions: saved to ``path`` in its suffix's format)."""
        from graphlens.plot import _figure, _finish

        fig = _figure((10, 4), dpi)
        error_ax, cosine_ax = fig.subplots(1, 2)
        for kind in PLOTTED_KINDS:
            rows = [h for h in self.hooks if h.kind == kind and h.layer is not None]
            if rows:
                layers = [h.layer for h in rows]
                error_ax.plot(layers, [max(h.relative_error, 1e-8) for h in rows], marker="o", label=kind)
                cosine_ax.plot(layers, [h.cosine for h in rows], marker="o", label=kind)
        from matplotlib.ticker import MaxNLocator

        for ax in (error_ax, cosine_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        error_ax.set_yscale("log")
        error_ax.set(xlabel="layer", ylabel="relative error ‖B − A‖ / ‖A‖")
        cosine_ax.set(xlabel="layer", ylabel="cosine similarity (last axis)")
        error_ax.legend(fontsize=7)
        if title or self.new_tokens:
            fig.suptitle(title or f"greedy tokens agreeing: {self.agreement():.1%}")
        fig.tight_layout()
        return _finish(fig, path)


def _masked(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0).astype(np.float64)


def cosine_along_last_axis(a: Float[np.ndarray, "... d"], b: Float[np.ndarray, "... d"]) -> Float[np.ndarray, "..."]:
    """Cosine similarity of ``a``'s and ``b``'s vectors along the last axis (1 where both are zero)."""
    a, b = _masked(a), _masked(b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    dots = (a * b).sum(-1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


def _greedy(model, tokens: np.ndarray, n: int) -> np.ndarray:
    out = model.generate(tokens, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False)
    return np.asarray(out)[0, tokens.shape[1]:]


def compare_bundles(
    bundle_a, bundle_b, prompts: Sequence[str] | str, new_tokens: int = 16, names_filter=None,
) -> Comparison:
    """Compare bundle (or loaded HookedTransformer) ``bundle_b`` against ``bundle_a`` on ``prompts``:
    per-hook relative error and cosine similarity, and greedy agreement over ``new_tokens`` tokens
    (0: none). Both are fed A's tokens; ``names_filter`` as in ``run_with_cache``."""
    from graphlens import HookedTransformer

    a = bundle_a if isinstance(bundle_a, HookedTransformer) else HookedTransformer.from_pretrained(bundle_a)
    b = bundle_b if isinstance(bundle_b, HookedTransformer) else HookedTransformer.from_pretrained(bundle_b)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("give at least one prompt to compare the bundles on")
    if a.cfg.d_vocab != b.cfg.d_vocab:
        raise InputError(f"the bundles have different vocabularies ({a.cfg.d_vocab} and {b.cfg.d_vocab} tokens): "
                         "compare bundles of one model")
    if not isinstance(new_tokens, int) or new_tokens < 0:
        raise InputError(f"new_tokens must be an integer ≥ 0; got {new_tokens!r}")
    layers = {h["name"]: h["layer"] for h in a.manifest["hooks"]}
    kinds = {h["name"]: h["kind"] for h in a.manifest["hooks"]}
    names = [n for n in a.hook_names if n in set(b.hook_names)]
    sums = {n: np.zeros(4) for n in names}  # squared difference, squared reference, cosine sum, vectors
    result = Comparison([], new_tokens=new_tokens)
    for prompt in prompts:
        tokens = a.to_tokens(prompt)
        _, cache_a = a.run_with_cache(tokens, names_filter=names_filter if names_filter is not None else names,
                                      return_type=None)
        _, cache_b = b.run_with_cache(tokens, names_filter=list(cache_a.keys()), return_type=None)
        for name in cache_a.keys():
            x, y = cache_a[name], cache_b[name]
            finite = np.isfinite(x)
            cosine = cosine_along_last_axis(y, x)
            sums[name] += [np.sum((y[finite].astype(np.float64) - x[finite]) ** 2),
                           np.sum(x[finite].astype(np.float64) ** 2), cosine.sum(), cosine.size]
        if new_tokens:
            ours, theirs = _greedy(a, tokens, new_tokens), _greedy(b, tokens, new_tokens)
            same = ours == theirs
            result.matched.append(int(same.sum()))
            result.first_divergence.append(int(np.argmin(same)) if not same.all() else new_tokens)
    for name, (diff, ref, cos, count) in sums.items():
        if count:
            error = float(np.sqrt(diff / ref)) if ref > 0 else float(np.sqrt(diff))
            result.hooks.append(HookDifference(name, layers.get(name), kinds.get(name, name), error, float(cos / count)))
    return result


def read_prompts(prompts: str) -> list[str]:
    """``prompts`` as a list: the non-empty lines of a text file, or the string itself when no such file exists."""
    path = Path(prompts)
    if path.is_file():
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise InputError(f"{path} holds no prompt (one per line)")
        return lines
    return [prompts]
