"""TransformerLens' tokenization semantics (prepend_bos, padding_side, truncation) on ``tokenizers``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jaxtyping import Int
from tokenizers import Tokenizer

from graphlens.errors import BundleError


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # older tokenizer_config.json: {"content": "<|endoftext|>", ...}
        return value.get("content")
    return value


class TokenizerAdapter:
    """A fast tokenizer plus its special tokens, with ``to_tokens`` as TransformerLens does it."""

    def __init__(self, tokenizer: Tokenizer, bos: str | None, eos: str | None, pad: str | None, padding_side: str):
        self.tokenizer = tokenizer
        self.eos_token = eos or "<|endoftext|>"
        self.pad_token = pad or self.eos_token
        self.bos_token = bos or self.eos_token
        self.padding_side = padding_side
        self.bos_token_id = tokenizer.token_to_id(self.bos_token)
        self.eos_token_id = tokenizer.token_to_id(self.eos_token)
        self.pad_token_id = tokenizer.token_to_id(self.pad_token)
        # as TransformerLens: does encoding an empty string already give a BOS?
        self.prepends_bos = len(tokenizer.encode("", add_special_tokens=True).ids) > 0

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TokenizerAdapter | None":
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            return None
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # the tokenizers library raises plain Exception for a damaged file
            raise BundleError(f"{folder / 'tokenizer.json'} is not a readable tokenizer ({err}); export the bundle again") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        config_file = folder / "tokenizer_config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        except (ValueError, UnicodeDecodeError) as err:
            raise BundleError(f"{config_file} is not valid JSON ({err}); export the bundle again") from None
        if not isinstance(config, dict):
            raise BundleError(f"{config_file} must be a JSON object; export the bundle again")
        return cls(
            tokenizer,
            bos=_token_text(config.get("bos_token")),
            eos=_token_text(config.get("eos_token")),
            pad=_token_text(config.get("pad_token")),
            padding_side=config.get("padding_side") or "right",
        )

    def encode(self, text: str, prepend_bos: bool) -> list[int]:
        return self.encode_many([text], prepend_bos)[0]

    def encode_many(self, texts: list[str], prepend_bos: bool) -> list[list[int]]:
        """Token ids of each text (one ``encode_batch`` call), with or without a leading BOS."""
        rows = []
        for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=self.prepends_bos):
            ids = encoding.ids
            if prepend_bos and not self.prepends_bos:
                ids = [self.bos_token_id, *ids]
            elif not prepend_bos and self.prepends_bos and ids and ids[0] == self.bos_token_id:
                ids = ids[1:]
            rows.append(ids)
        return rows

    def to_tokens(
        self, texts: list[str], prepend_bos: bool, padding_side: str, max_length: int | None
    ) -> Int[np.ndarray, "batch pos"]:
        rows = self.encode_many(list(texts), prepend_bos)
        if max_length is not None:
            rows = [r[:max_length] for r in rows]
        width = max(len(r) for r in rows)
        out = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        for i, row in enumerate(rows):
            if padding_side == "left":
                out[i, width - len(row):] = row
            else:
                out[i, : len(row)] = row
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_each(self, ids) -> list[str]:
        return [self.tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def tokenizer_entry(folder: str | Path) -> dict | None:
    """The manifest's ``tokenizer`` entry: file, special token ids, prepended BOS, padding side (None: no tokenizer)."""
    tok = TokenizerAdapter.from_folder(folder)
    if tok is None:
        return None
    return {
        "file": "tokenizer.json",
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "prepends_bos": tok.prepends_bos,  # does the tokenizer itself add BOS (TransformerLens adds one otherwise)
        "padding_side": tok.padding_side,
    }
