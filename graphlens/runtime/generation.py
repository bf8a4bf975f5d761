"""``model.generate``: TransformerLens' ``generate`` on the bundle's KV-cache decoder graph.

Each step runs only the new positions (the prompt first, then one token per step), so hook outputs,
patch/add feeds and steering see the new positions, as TransformerLens' hooks do with its KV cache.
Padding follows TransformerLens: batches of strings are left-padded, padding is never attended and
positions count from each row's first real token.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence, Union

import numpy as np
from jaxtyping import Float, Int

from graphlens.runtime.activation_cache import ActivationCache
from graphlens.runtime.embeddings import as_embeds, embed_input
from graphlens.runtime.inputs import as_numpy, attention_mask_for, check_tokens, offset_position_ids
from graphlens.runtime.kv_decoder import KVDecoder, load_decoder_graph
from graphlens.runtime.sampling import check_sampling_options, sample_logits
from graphlens.runtime.feeds import feed_site
from graphlens.sites import kind_of, site_dims
from graphlens.errors import InputError, InputTypeError

Seed = Union[None, int, np.random.Generator]


def _concat_steps(name: str, steps: list[np.ndarray]) -> np.ndarray:
    """Join per-step hook outputs along positions; attention scores/patterns are padded to all keys."""
    dims = kind_of(name).dims
    if "query_pos" not in dims:
        return np.concatenate(steps, axis=dims.index("pos"))
    total = steps[-1].shape[-1]
    fill = -np.inf if name.endswith("attn_scores") else 0.0  # what a full forward has above the diagonal
    padded = [np.pad(s, [(0, 0)] * (s.ndim - 1) + [(0, total - s.shape[-1])], constant_values=fill) for s in steps]
    return np.concatenate(padded, axis=dims.index("query_pos"))


@dataclass(frozen=True)
class GenerateOutput:
    """``generate(..., output_logits=True)``: as the HF ModelOutput TransformerLens returns, in numpy."""

    sequences: Int[np.ndarray, "batch pos"]  # prompt + new tokens (only the new ones for embeddings input)
    logits: tuple[Float[np.ndarray, "batch d_vocab"], ...]  # the next-token logits of each step

    def __getitem__(self, key: str):
        return getattr(self, key)


class GenerationMixin:
    """``generate`` for HookedTransformer (needs a bundle with a decoder graph)."""

    def _kv_decoder(self, batch: int) -> KVDecoder:
        cfg = self.cfg
        n_kv = cfg.n_key_value_heads or cfg.n_heads
        return KVDecoder(self._kv_decoder_graph(), cfg.n_layers, n_kv, cfg.d_head, batch, np.dtype(cfg.dtype))

    def _generation_feeds(self, feeds: Mapping[str, np.ndarray] | None) -> tuple[dict, dict]:
        """Check substitution feeds and give each the rank of its site (a [d_model] vector works)."""
        if feeds is not None and not isinstance(feeds, Mapping):
            raise InputTypeError(f"feeds must be a dict of input name → array, not {type(feeds).__name__}")
        arrays, fed = {}, {}
        for name, value in (feeds or {}).items():
            hook, kind, array = feed_site(name, value, self)
            dims = site_dims(hook, self.cfg.to_dict())
            if array.ndim > len(dims):
                raise InputError(f"feed {name!r} has {array.ndim} dims; {hook} has {len(dims)}")
            array = array.reshape((1,) * (len(dims) - array.ndim) + array.shape)
            # every step runs a batch of the prompt's size over the new positions: only fixed dims are known here
            if any(a != 1 and isinstance(d, int) and a != d for a, d in zip(array.shape, dims)):
                raise InputError(f"feed {name!r} has shape {array.shape}, which does not broadcast to {hook}'s {dims}")
            arrays[name] = array
            fed.setdefault(hook, set()).add("add" if kind == "add" else "patch")
        for hook, kinds in fed.items():
            if "patch" in kinds and not {f"{hook}.patch", f"{hook}.patch_mask"} <= set(arrays):
                raise InputError(f"feed both {hook}.patch and {hook}.patch_mask (True where the patch applies)")
        return arrays, fed

    def _generation_tokens(self, input, prepend_bos, padding_side) -> tuple[np.ndarray, np.ndarray, str]:
        """Prompt tokens, their attention mask and the input type ("str", "tokens" or "embeds").

        Embeddings get placeholder tokens (zeros, never embedded) and no padding mask, as TransformerLens.
        """
        embeds = as_embeds(input, self.cfg.d_model, self.cfg.dtype)
        if embeds is not None:
            if embeds.shape[1] > self.cfg.n_ctx:
                raise InputError(f"{embeds.shape[1]} embedded positions exceed the context n_ctx={self.cfg.n_ctx}; shorten them")
            placeholder = np.zeros(embeds.shape[:2], dtype=np.int64)
            return placeholder, np.ones_like(placeholder), "embeds"
        tok = self.tokenizer
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        side = padding_side or (tok.padding_side if tok is not None else "right")
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            if isinstance(input, (list, tuple)) and len(input) > 1:
                side = "left"  # as TransformerLens: batched prompts end flush right, so logits[:, -1] is the next token
            tokens = check_tokens(self.to_tokens(input, prepend_bos=prepend, padding_side=side), self.cfg.d_vocab, self.cfg.n_ctx)
            kind = "str"
        else:
            tokens = check_tokens(as_numpy(input), self.cfg.d_vocab, self.cfg.n_ctx)
            kind = "tokens"
        if tok is None:
            return tokens, np.ones_like(tokens), kind
        return tokens, attention_mask_for(tokens, tok.pad_token_id, tok.bos_token_id, prepend, side), kind

    def _stop_tokens(self, stop_at_eos: bool, eos_token_id) -> tuple[list[int], int]:
        if not stop_at_eos:
            return [], 0
        tok_eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        if eos_token_id is None:
            if tok_eos is None:
                raise InputError("stop_at_eos needs an eos_token_id: pass eos_token_id=... or stop_at_eos=False")
            eos_token_id = tok_eos
        if isinstance(eos_token_id, (int, np.integer)):
            return [int(eos_token_id)], int(eos_token_id)
        stops = [int(t) for t in eos_token_id]
        return stops, tok_eos if tok_eos is not None else stops[0]

    def generate(
        self,
        input: Union[str, Sequence[str], np.ndarray] = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        return_type: Literal["input", "str", "tokens"] | None = "input",
        verbose: bool = True,
        seed: Seed = None,
        feeds: Mapping[str, np.ndarray] | None = None,
        return_cache: bool = False,
        names_filter=None,
        on_token: Callable[[Int[np.ndarray, "batch"]], None] | None = None,
        output_logits: bool = False,
        **generation_kwargs,
    ):
        """Sample up to ``max_new_tokens`` tokens, as TransformerLens' ``generate`` (string in → string out).

        graphlens additions: ``seed`` (int or ``np.random.Generator``) makes sampling reproducible;
        ``min_p`` keeps tokens with probability ≥ min_p × the top probability (as HF); ``feeds``
        (``{"<hook>.add": array, ...}``, broadcast over the new positions of every step) patch or steer
        while generating; ``return_cache=True`` also returns an ActivationCache of the prompt and the
        generated tokens (``names_filter`` as in run_with_cache), collected from the steps' hook outputs;
        ``on_token(tokens)`` is called with each step's tokens (streaming). Active hooks (``add_hook``,
        ``hooks()``) run at every step on the new positions, as TransformerLens' hooks with its KV cache.

        As TransformerLens: ``input`` may be token embeddings ``[batch, pos, d_model]`` (float; then
        "tokens"/"str" return only the new tokens); ``return_type="embeds"`` returns the embeddings of
        prompt and new tokens; ``output_logits=True`` returns a ``GenerateOutput`` (``.sequences``,
        ``.logits``: one ``[batch, d_vocab]`` array per step).
        """
        _drop_hf_kwargs(generation_kwargs)
        _check_generation_options(self, max_new_tokens, eos_token_id, seed, on_token)
        if do_sample:
            check_sampling_options(top_k, top_p, min_p, temperature, freq_penalty)
        if return_type not in ("input", "str", "tokens", "embeds"):
            raise InputError(f"return_type must be 'input', 'str', 'tokens' or 'embeds', got {return_type!r}")
        tokens, mask, input_type = self._generation_tokens(input, prepend_bos, padding_side)
        if return_type == "input":
            return_type = input_type
        # embeddings are tracked only when they go in or out (W_E[token] per step)
        embeds = as_embeds(input, self.cfg.d_model, self.cfg.dtype) if input_type == "embeds" else (
            self.embed(tokens) if return_type == "embeds" else None)
        embed_at = embed_input(self._kv_decoder_graph()) if input_type == "embeds" else None
        if return_type == "str" and self.tokenizer is None:
            raise InputError("return_type='str' needs a tokenizer; this bundle has none: use return_type='tokens'")
        if tokens.shape[1] + max_new_tokens > self.cfg.n_ctx:
            raise InputError(f"{tokens.shape[1]} prompt tokens + max_new_tokens={max_new_tokens} exceed the "
                             f"context n_ctx={self.cfg.n_ctx}; generate fewer tokens or shorten the prompt")
        stop_tokens, eos_pad = self._stop_tokens(stop_at_eos, eos_token_id)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        feed_arrays, fed = self._generation_feeds(feeds)
        cache_names = self.hook_names_matching(names_filter) if return_cache else []
        batch = tokens.shape[0]
        decoder = self._kv_decoder(batch)
        collected: dict[str, list[np.ndarray]] = {name: [] for name in cache_names}

        def forward(all_tokens: np.ndarray, all_mask: np.ndarray, all_embeds: np.ndarray | None) -> np.ndarray:
            if not use_past_kv_cache:
                decoder.reset()
                for steps in collected.values():
                    steps.clear()
            start = decoder.past_length
            # embeddings input: the decoder reads the embeddings where it would embed the tokens
            given = {embed_at: all_embeds[:, start:]} if embed_at is not None else None
            logits, hooks = decoder.step(all_tokens[:, start:], all_mask, offset_position_ids(all_mask)[:, start:],
                                         cache_names, feed_arrays, fed, self.hooked_sites(), self.call_hooks, given)
            for name, value in hooks.items():
                collected[name].append(value)
            return logits[:, -1]

        finished = np.zeros(batch, dtype=bool)
        sampled: list[np.ndarray] = []
        step_logits: list[np.ndarray] = []
        all_tokens, all_mask, all_embeds = tokens, mask, embeds
        progress = _progress(max_new_tokens, verbose)
        for _ in range(max_new_tokens):
            logits = forward(all_tokens, all_mask, all_embeds)
            if output_logits:
                step_logits.append(logits)
            if do_sample:  # as TransformerLens, no frequency penalty for embeddings input (no tokens)
                new = sample_logits(logits, rng, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature,
                                    freq_penalty=freq_penalty if input_type != "embeds" else 0.0,
                                    tokens=all_tokens if input_type != "embeds" else None)
            else:
                new = logits.argmax(-1)
            new = new.astype(np.int64)
            if stop_at_eos:
                new[finished] = eos_pad
                finished |= np.isin(new, stop_tokens)
            sampled.append(new)
            all_tokens = np.concatenate([all_tokens, new[:, None]], axis=1)
            all_mask = np.concatenate([all_mask, np.ones((batch, 1), dtype=all_mask.dtype)], axis=1)
            if all_embeds is not None:
                all_embeds = np.concatenate([all_embeds, self.embed(new[:, None])], axis=1)
            progress.update(1)
            if on_token is not None:
                on_token(new)
            if stop_at_eos and finished.all():
                break
        progress.close()

        # for embeddings input, TransformerLens returns only the new tokens
        out_tokens = all_tokens[:, tokens.shape[1]:] if input_type == "embeds" else all_tokens
        result = all_embeds if return_type == "embeds" else self._generation_output(out_tokens, return_type)
        if output_logits:
            result = GenerateOutput(out_tokens, tuple(step_logits))
        if not return_cache:
            return result
        if sampled:  # the last token has not been through the model yet
            forward(all_tokens, all_mask, all_embeds)
        cache = {name: _concat_steps(name, steps) for name, steps in collected.items()}
        return result, ActivationCache(cache, self)

    def _kv_decoder_graph(self):
        if getattr(self, "_decoder_graph", None) is None:
            self._decoder_graph = load_decoder_graph(self)
        return self._decoder_graph

    def _generation_output(self, tokens: np.ndarray, return_type: str):
        if return_type == "tokens":
            return tokens
        texts = [self.tokenizer.tokenizer.decode([int(t) for t in row], skip_special_tokens=True) for row in tokens]
        return texts[0] if len(texts) == 1 else texts


def _drop_hf_kwargs(kwargs: dict) -> None:
    """As TransformerLens: HF generation kwargs are warned about and ignored (return_dict_in_generate silently)."""
    unsupported = [k for k in kwargs if k != "return_dict_in_generate"]
    if unsupported:
        warnings.warn(f"HookedTransformer.generate received unsupported generation kwargs; ignoring: {unsupported}",
                      UserWarning, stacklevel=3)


def _check_generation_options(model, max_new_tokens, eos_token_id, seed, on_token) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, (bool, np.bool_)):
        raise InputTypeError(f"max_new_tokens must be an integer, not {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else eos_token_id
        try:
            ids = list(ids)
        except TypeError:
            raise InputTypeError(f"eos_token_id must be an int or a list of ints, not {type(eos_token_id).__name__}") from None
        vocab = model.cfg.d_vocab_out
        if not ids or any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < vocab for i in ids):
            raise InputError(f"eos_token_id must be token ids in [0, {vocab}); got {eos_token_id!r}")
    if seed is not None and not isinstance(seed, np.random.Generator):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise InputError(f"seed must be a non-negative int or a numpy Generator, got {seed!r}")
    if on_token is not None and not callable(on_token):
        raise InputTypeError(f"on_token must be callable, not {type(on_token).__name__}")


def _progress(total: int, verbose: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not verbose)
