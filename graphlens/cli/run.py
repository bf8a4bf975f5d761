"""``graphlens run``: top next-token predictions for a prompt, optionally dumping the activations."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from graphlens.cli._common import load_model, match_hooks, prompt_tokens, softmax


def save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as .npz, or as .safetensors when that package is installed."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".safetensors":
        try:
            from safetensors.numpy import save_file
        except ImportError:
            raise click.ClickException(
                "writing .safetensors needs the safetensors package: pip install safetensors (or use a .npz path)"
            ) from None
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    else:
        raise click.BadParameter(f"{path.name}: the cache file must end in .npz or .safetensors", param_hint="--cache")


def _token_text(model, token: int) -> str:
    text = model.to_string(token)
    # a lone byte of a multi-byte character decodes to U+FFFD: show the id so predictions stay distinguishable
    return f"{text!r}#{token}" if "\ufffd" in text else repr(text)


@click.command()
@click.argument("bundle")
@click.argument("prompt")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Predictions shown per position.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), help="Write the activations to .npz or .safetensors.")
@click.option("--names", "pattern", help="Only hooks matching this glob or substring go into --cache (default: all).")
@click.option("--last", is_flag=True, help="Show only the last position.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
def run(bundle, prompt, top_k, cache_path, pattern, last, device):
    """Run PROMPT through BUNDLE: the top next-token predictions at each position."""
    if pattern and not cache_path:
        raise click.UsageError("--names selects the hooks --cache writes; add --cache out.npz")
    if cache_path and Path(cache_path).suffix not in (".npz", ".safetensors"):
        raise click.BadParameter(f"{cache_path}: the cache file must end in .npz or .safetensors", param_hint="--cache")
    model = load_model(bundle, device)
    tokens = prompt_tokens(model, prompt)
    if cache_path:
        names = match_hooks(model.hook_names, pattern) if pattern else None
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    else:
        logits = model(tokens)
    probs = softmax(logits[0])
    k = min(top_k, probs.shape[-1])
    str_tokens = model.to_str_tokens(tokens[0])
    positions = [len(str_tokens) - 1] if last else range(len(str_tokens))
    for pos in positions:
        top = np.argsort(-probs[pos], kind="stable")[:k]
        preds = "  ".join(f"{_token_text(model, int(t))} {probs[pos, t]:.3f}" for t in top)
        click.echo(f"{pos:>4} {str_tokens[pos]!r:<16} -> {preds}")
    if cache_path:
        save_cache(Path(cache_path), dict(cache.items()))
        click.echo(f"wrote {len(cache)} activations to {cache_path}", err=True)
