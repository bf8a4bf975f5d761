"""Cotangents ``C = d metric / d logits`` for common metrics (numpy), to pass as ``logits_grad=C``.

The gradients graphlens computes are those of ``sum(logits * C)``: for a metric linear in the logits
(a logit difference) that is the metric itself; for others (log-probs, the loss) ``C`` is their
gradient at the given logits, so the hook gradients are exact at that point.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jaxtyping import Float, Int

from graphlens.attribution.gradients import loss_weights
from graphlens.errors import InputError


def _rows(value, batch: int, what: str) -> np.ndarray:
    """One token id per batch row (a single id is used for every row)."""
    try:
        return np.broadcast_to(np.asarray(value, dtype=np.int64), (batch,))
    except ValueError:
        raise InputError(f"{what} must be one token id or one per batch row ({batch})") from None


def _check_ids(ids: np.ndarray, d_vocab: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= d_vocab):
        raise InputError(f"{what} token ids must be in [0, {d_vocab}), got {ids.min()}..{ids.max()}")


def logit_diff_grad(
    shape: Sequence[int], answer: int | Sequence[int], wrong: int | Sequence[int], position: int = -1,
    mean: bool = True,
) -> Float[np.ndarray, "batch pos d_vocab"]:
    """C for ``logits[b, position, answer[b]] - logits[b, position, wrong[b]]``, averaged over the batch
    (``mean=False``: summed). ``shape``: the logits' shape ``(batch, pos, d_vocab)``."""
    batch, pos, d_vocab = (int(s) for s in shape)
    answer, wrong = _rows(answer, batch, "answer"), _rows(wrong, batch, "wrong")
    _check_ids(answer, d_vocab, "answer")
    _check_ids(wrong, d_vocab, "wrong")
    if not -pos <= position < pos:
        raise InputError(f"position {position} is outside the {pos} positions")
    c = np.zeros((batch, pos, d_vocab), np.float32)
    scale = 1.0 / batch if mean else 1.0
    rows = np.arange(batch)
    np.add.at(c, (rows, position, answer), scale)
    np.add.at(c, (rows, position, wrong), -scale)
    return c


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def log_prob_grad(
    logits: Float[np.ndarray, "batch pos d_vocab"], token: int | Sequence[int], position: int = -1, mean: bool = True,
) -> Float[np.ndarray, "batch pos d_vocab"]:
    """C for ``log_softmax(logits)[b, position, token[b]]`` (averaged over the batch), at ``logits``."""
    logits = np.asarray(logits)
    batch, pos, d_vocab = logits.shape
    token = _rows(token, batch, "token")
    _check_ids(token, d_vocab, "token")
    probs = np.exp(_log_softmax(logits[:, position]))
    c = np.zeros(logits.shape, np.float64)
    c[:, position] = -probs
    c[np.arange(batch), position, token] += 1.0
    return (c / batch if mean else c).astype(np.float32)


def loss_grad(
    logits: Float[np.ndarray, "batch pos d_vocab"], tokens: Int[np.ndarray, "batch pos"],
    attention_mask: Int[np.ndarray, "batch pos"] | None = None,
) -> Float[np.ndarray, "batch pos d_vocab"]:
    """C for the mean next-token loss (``return_type="loss"``), at ``logits``."""
    logits = np.asarray(logits)
    targets, weights = loss_weights(np.asarray(tokens), attention_mask)
    c = np.exp(_log_softmax(logits))
    c[np.arange(targets.shape[0])[:, None], np.arange(targets.shape[1]), targets] -= 1.0
    return (c * weights[..., None]).astype(np.float32)
