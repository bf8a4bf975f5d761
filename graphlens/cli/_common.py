"""Helpers shared by the analysis commands (run, plot): loading a bundle, tokenizing a prompt, naming hooks."""

from __future__ import annotations

import click
import numpy as np


def load_model(bundle: str, device: str | None = None):
    """``HookedTransformer.from_pretrained(bundle)`` (graphlens errors become one-line CLI errors in ``cli.main``)."""
    from graphlens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(bundle, device=device)
    except ImportError as err:
        raise click.ClickException(str(err)) from None


def prompt_tokens(model, prompt: str) -> np.ndarray:
    if model.tokenizer is None:
        raise click.ClickException(f"{model.bundle_dir} has no tokenizer, so it cannot read a text prompt")
    try:
        return model.tokens_from(prompt)
    except ValueError as err:
        raise click.ClickException(str(err)) from None


def match_hooks(names: list[str], pattern: str, option: str = "--names") -> list[str]:
    """Hook names matching ``pattern`` (``graphlens.sites.match_hooks``), a miss as a CLI error."""
    from graphlens.errors import InputError
    from graphlens.sites import match_hooks as matching

    try:
        return matching(names, pattern)
    except InputError as err:
        raise click.BadParameter(str(err), param_hint=option) from None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def check_layer(model, layer: int, option: str = "--layer") -> int:
    n = model.cfg.n_layers
    if not 0 <= layer < n:
        raise click.BadParameter(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})", param_hint=option)
    return layer
