"""TransformerLens' sampling (``utils.sample_logits``) in numpy, plus HF's ``min_p``.

``filter_logits`` gives the logits whose softmax is the distribution sampled from (filtered tokens are
``-inf``); ``sample_logits`` draws from it with a numpy Generator, so a seed reproduces a generation.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int
from graphlens.errors import InputError, InputTypeError


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_sampling_options(top_k=None, top_p=None, min_p=None, temperature=1.0, freq_penalty=0.0) -> None:
    """Raise an InputError (InputTypeError for a wrong type) for an option sampling cannot use."""
    for name, value in (("temperature", temperature), ("freq_penalty", freq_penalty), ("top_p", top_p), ("min_p", min_p)):
        if value is not None and not _real(value):
            raise InputTypeError(f"{name} must be a number, not {type(value).__name__}")
        if value is not None and not np.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value}")
    if temperature < 0:
        raise InputError(f"temperature must be ≥ 0 (0 is greedy), got {temperature}")
    if top_k is not None:
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, (bool, np.bool_)):
            raise InputTypeError(f"top_k must be an integer, not {type(top_k).__name__}")
        if top_k <= 0:
            raise InputError(f"top_k must be > 0, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise InputError(f"min_p must be in [0, 1], got {min_p}")


def filter_logits(
    final_logits: Float[np.ndarray, "batch d_vocab"],
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Int[np.ndarray, "batch pos"] | None = None,
) -> Float[np.ndarray, "batch d_vocab"]:
    """Temperature, frequency penalty, then top_k or top_p (top_k wins, as in TransformerLens), then min_p.

    float64 out; ``-inf`` marks tokens that cannot be sampled.
    """
    check_sampling_options(top_k, top_p, min_p, temperature, freq_penalty)
    if temperature == 0:
        raise InputError("temperature must be > 0 to sample (got 0); use do_sample=False for greedy")
    logits = np.asarray(final_logits, dtype=np.float64) / temperature
    if freq_penalty > 0:
        if tokens is None or np.ndim(tokens) != 2:
            raise InputError("freq_penalty needs the tokens so far, as a [batch, pos] array")
        counts = np.stack([np.bincount(row, minlength=logits.shape[-1]) for row in np.asarray(tokens)])
        logits = logits - freq_penalty * counts[:, : logits.shape[-1]]
    if top_k is not None:
        k = min(int(top_k), logits.shape[-1])
        kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)  # ties with the k-th logit stay, as torch's topk mask
    elif top_p is not None:
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(_softmax(logits), order, axis=-1)
        cumulative = np.cumsum(sorted_probs, axis=-1)
        # keep the smallest prefix whose mass reaches top_p: a token goes when the mass before it already does
        remove_sorted = np.zeros_like(cumulative, dtype=bool)
        remove_sorted[:, 1:] = cumulative[:, :-1] > top_p
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        logits = np.where(remove, -np.inf, logits)
    if min_p is not None:
        probs = _softmax(logits)
        logits = np.where(probs < min_p * probs.max(-1, keepdims=True), -np.inf, logits)
    return logits


def sampling_probs(final_logits: Float[np.ndarray, "batch d_vocab"], **options) -> Float[np.ndarray, "batch d_vocab"]:
    """The distribution ``sample_logits`` draws from (``options`` as for ``filter_logits``)."""
    return _softmax(filter_logits(final_logits, **options))


def sample_logits(
    final_logits: Float[np.ndarray, "batch d_vocab"],
    rng: np.random.Generator,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Int[np.ndarray, "batch pos"] | None = None,
) -> Int[np.ndarray, "batch"]:
    """One token per row; temperature 0 is greedy (argmax), as in TransformerLens."""
    if temperature == 0.0:
        return np.asarray(final_logits).argmax(-1)
    probs = sampling_probs(final_logits, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
                           freq_penalty=freq_penalty, tokens=tokens)
    cumulative = np.cumsum(probs, axis=-1)
    u = rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
    chosen = (cumulative <= u).sum(-1)
    # a zero-probability token can never be chosen, even when u lands exactly on a cumsum step
    return np.minimum(chosen, probs.shape[-1] - 1)
