"""DATA → the harvest's token sequences ``[context_size]``, in order: read, tokenize, cut into windows."""

from __future__ import annotations

from itertools import islice
from typing import Iterator

import numpy as np

from graphlens.errors import DataError
from graphlens.harvest.data import Source
from graphlens.harvest.windows import windows

_DOCS_PER_CALL = 256  # documents per tokenizer call (encode_batch)


def special_token(model, which: str | None) -> int | None:
    """The id of ``"bos"`` / ``"eos"`` (or None for ``None``), from the bundle's tokenizer."""
    if which is None:
        return None
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise DataError(f"{model.bundle_dir} has no tokenizer: give token ids (.npy) instead of text")
    token_id = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}[which]
    if token_id is None:
        raise DataError(f"the tokenizer of {model.bundle_dir} has no {which.upper()} token")
    return int(token_id)


def sequences(
    source: Source, model, context_size: int, prepend_bos: bool, separator: str | None = "bos"
) -> Iterator[np.ndarray]:
    """Every sequence of ``context_size`` tokens the harvest runs, by SAELens' default rule (README)."""
    d_vocab = model.cfg.d_vocab
    if source.kind == "npy":
        array = source.token_array(d_vocab)
        if array.ndim == 2:
            return source.token_rows(array, context_size, d_vocab)
        documents = source.token_documents(array, d_vocab)
        begin = _bos_id(model) if prepend_bos else None
        return windows(documents, context_size, begin, None)
    begin = special_token(model, "bos") if prepend_bos else None
    return windows(_tokenized(source, model), context_size, begin, special_token(model, separator))


def _bos_id(model) -> int:
    if model.tokenizer is not None:
        return special_token(model, "bos")
    raise DataError(f"--prepend-bos needs a BOS token, and {model.bundle_dir} has no tokenizer; use --no-prepend-bos")


def _tokenized(source: Source, model) -> Iterator[np.ndarray]:
    """Each document's token ids, without BOS (as TransformerLens' ``to_tokens(prepend_bos=False)``)."""
    if model.tokenizer is None:
        raise DataError(f"{model.bundle_dir} has no tokenizer: give token ids (.npy) instead of text")
    documents = source.documents()
    while chunk := list(islice(documents, _DOCS_PER_CALL)):
        for ids in model.tokenizer.encode_many(chunk, prepend_bos=False):
            yield np.asarray(ids, dtype=np.int64)
