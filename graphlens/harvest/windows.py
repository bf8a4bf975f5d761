"""Documents → fixed-size token windows, by SAELens' default rule (``concat_and_batch_sequences``).

Each document is tokenized without a BOS. Windows of ``context_size`` tokens are filled from the
documents in order: a window opens with ``begin`` (BOS when ``prepend_bos``) unless its first token is
already that token; a document that starts inside an open window is preceded by ``separator`` (BOS by
default) unless it already starts with it, and a separator that does not fit ends the window; a document
longer than the rest of the window continues in the next window (which opens with ``begin`` again).
The last incomplete window is dropped.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
from jaxtyping import Int

from graphlens.errors import InputError


def windows(
    documents: Iterable[Int[np.ndarray, "n"]],
    context_size: int,
    begin: int | None,
    separator: int | None,
) -> Iterator[Int[np.ndarray, "context_size"]]:
    """Token windows of exactly ``context_size`` from ``documents`` (1-D token arrays), in order."""
    if context_size < (2 if begin is not None else 1):
        raise InputError(f"context_size must be at least {2 if begin is not None else 1}, got {context_size}")
    parts: list[np.ndarray] | None = None  # the open window's pieces
    filled = 0
    for tokens in documents:
        offset, n = 0, len(tokens)
        while offset < n:
            first = int(tokens[offset])
            if parts is None:
                prefix = [begin] if begin is not None and first != begin else []
                parts, filled = [], 0
            else:
                prefix = [separator] if separator is not None and first != separator else []
            prefix = prefix[: context_size - filled]
            take = max(context_size - filled - len(prefix), 0)
            piece = tokens[offset:offset + take]
            parts += [np.asarray(prefix, dtype=np.int64), np.asarray(piece, dtype=np.int64)]
            filled += len(prefix) + len(piece)
            offset += len(piece)
            if filled == context_size:
                yield np.concatenate(parts)
                parts = None


def batches(
    rows: Iterable[Int[np.ndarray, "context_size"]], batch_size: int, skip: int = 0, limit: int | None = None
) -> Iterator[Int[np.ndarray, "batch context_size"]]:
    """Consecutive ``[batch_size, context_size]`` batches of ``rows`` after the first ``skip``, at most ``limit`` rows."""
    batch: list[np.ndarray] = []
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        if index < skip:
            continue
        batch.append(row)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
