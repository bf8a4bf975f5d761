"""``HookedTransformer``: TransformerLens' model API over an ONNX Runtime session, in numpy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence, Union

import numpy as np
import onnx
from jaxtyping import Float, Int

from graphlens.architectures import architecture_named
from graphlens.attribution.mixin import GradientsMixin
from graphlens.grad import GRAD_SUFFIX, grad_name
from graphlens.bundle import BundleError, read_manifest, verify_bundle
from graphlens.bundle_check import load_graph, read_external_weights
from graphlens.components import ModulesMixin
from graphlens.facade.kv_forward import KVForwardMixin
from graphlens.facade.switches import SwitchesMixin
from graphlens.saes.facade import SAEsMixin
from graphlens.facade.tl_api import TLFacadeMixin
from graphlens.devices import DeviceSplit
from graphlens.dtypes import dtype_name
from graphlens.resolve import resolve_bundle
from graphlens.rewrite.weights import NO_PROCESSING, Processing
from graphlens.runtime.activation_cache import ActivationCache
from graphlens.runtime.config import Config
from graphlens.runtime.graph import LOGITS, BundleGraph
from graphlens.runtime.embeddings import EmbeddingsMixin
from graphlens.runtime.generation import GenerationMixin
from graphlens.runtime.hook_points import HookPoint
from graphlens.runtime.feeds import checked_feed
from graphlens.runtime.hooks import HooksMixin, site_runs
from graphlens.runtime.layer_bounds import bounded_run
from graphlens.runtime.mapped_weights import MappedWeights
from graphlens.runtime.partitioned import run_partitioned
from graphlens.rewrite.mask_inputs import ATTENTION_MASK, POSITION_IDS
from graphlens.runtime.inputs import as_numpy, attention_mask_for, check_attention_mask, check_tokens
from graphlens.runtime.session import resolve_device
from graphlens.runtime.tokenizer import TokenizerAdapter
from graphlens.runtime.weights import WeightsMixin
from graphlens.sites import UnknownHookError
from graphlens.slicing import Slice
from graphlens.errors import InputError, InputTypeError, NotSupportedError

TextOrTokens = Union[str, Sequence[str], np.ndarray, Sequence[Sequence[int]]]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]


def lm_cross_entropy_loss(
    logits: Float[np.ndarray, "batch pos d_vocab"],
    tokens: Int[np.ndarray, "batch pos"],
    attention_mask: Int[np.ndarray, "batch pos"] | None = None,
    per_token: bool = False,
) -> Float[np.ndarray, ""] | Float[np.ndarray, "batch pos-1"]:
    """Next-token cross-entropy, as TransformerLens' ``utils.lm_cross_entropy_loss``."""
    shifted = logits[:, :-1].astype(np.float64)
    shifted = shifted - shifted.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    predicted = np.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    if attention_mask is not None:
        mask = attention_mask[:, 1:].astype(np.float64) * attention_mask[:, :-1]
        predicted = predicted * mask
        if not per_token:
            return np.asarray(-predicted.sum() / mask.sum(), dtype=logits.dtype)
    if per_token:
        return (-predicted).astype(logits.dtype)
    return np.asarray(-predicted.mean(), dtype=logits.dtype)


class HookedTransformer(ModulesMixin, TLFacadeMixin, SAEsMixin, SwitchesMixin, KVForwardMixin, WeightsMixin,
                        GradientsMixin, HooksMixin, GenerationMixin, EmbeddingsMixin):
    """A bundle loaded for analysis: ``model(tokens)``, ``run_with_cache``, tokenizer helpers, ``cfg``."""

    def __init__(self, bundle: str | os.PathLike, device: str | None = None, processing: Processing | None = None):
        self.bundle_dir = Path(bundle)
        self.manifest = read_manifest(self.bundle_dir)
        self.architecture = architecture_named(self.manifest["architecture"])
        device = resolve_device(device)
        proto = load_graph(self.bundle_dir, self.manifest, self.manifest["model_file"], "model_file",
                           [h["name"] for h in self.manifest["hooks"]], read_weights=False)
        fields = self._apply_missing_processing(proto, processing)
        # the activations' dtype: a bfloat16 bundle computes in float32 (graphlens.devices.bfloat16)
        activations = "float32" if self.manifest["dtype"] == "bfloat16" else self.manifest["dtype"]
        self.cfg = Config({**fields, "device": device, "dtype": activations})
        self.mapped_weights = MappedWeights(self.bundle_dir)  # model.onnx.data mapped once, for every graph
        self.graph = BundleGraph(proto, device, mapped=self.mapped_weights)
        self.tokenizer = TokenizerAdapter.from_folder(self.bundle_dir)
        if self.tokenizer is not None:
            self.cfg.tokenizer_prepends_bos = self.tokenizer.prepends_bos
        self.hook_names: list[str] = [h["name"] for h in self.manifest["hooks"]]
        self.hook_dict: dict[str, HookPoint] = {name: HookPoint(name) for name in self.hook_names}
        self.mod_dict = self.hook_dict

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name: str | os.PathLike,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
        device: str | None = None,
        n_devices: int = 1,
        dtype: object = None,
        default_prepend_bos: bool | None = None,
        default_padding_side: Literal["left", "right"] | None = None,
        verify: bool = False,
        **kwargs,
    ) -> "HookedTransformer":
        """Load a bundle folder, or export an HF folder / hub id into the cache on first use.

        Processing flags mean what they mean in TransformerLens. A bundle that has less processing
        than asked gets the missing steps applied at load; one that has more cannot be undone.
        ``default_padding_side`` (default: the bundle tokenizer's) and ``default_prepend_bos``
        (default: the config's) set the defaults ``to_tokens`` and ``forward`` use.
        File sizes are always checked; ``verify=True`` also checks every file's SHA-256.
        ``n_devices``: split the blocks across ``cuda:0 … cuda:N-1`` (from ``device``'s index) as
        TransformerLens does, one session per block range (on CPU: N CPU sessions); see ``graphlens.devices``.
        ``dtype``: a name ("float16"), a torch dtype or a numpy dtype; the bundle must hold that dtype.
        """
        if kwargs:
            raise InputTypeError(f"unexpected arguments: {', '.join(kwargs)}")
        if default_padding_side not in (None, "left", "right"):
            raise InputError(f"default_padding_side must be 'left' or 'right', got {default_padding_side!r}")
        processing = Processing(fold_ln, center_writing_weights, center_unembed, fold_value_biases,
                                refactor_factored_attn_matrices)
        dtype = dtype_name(dtype) if dtype is not None else None  # "float16", torch.float16, np.float16
        bundle = resolve_bundle(model_name, processing, dtype)
        if verify:
            verify_bundle(bundle)
        manifest = read_manifest(bundle)
        if dtype is not None and dtype != manifest["dtype"]:
            raise BundleError(
                f"{bundle} holds {manifest['dtype']} weights, not {dtype}; "
                f"export again with `graphlens export SOURCE --dtype {dtype}`"
            )
        model = cls(bundle, device=device, processing=processing)
        model.split_across_devices(n_devices)
        if default_prepend_bos is not None:
            model.cfg.default_prepend_bos = bool(default_prepend_bos)
        if default_padding_side is not None and model.tokenizer is not None:
            model.tokenizer.padding_side = default_padding_side
        return model

    def split_across_devices(self, n_devices: int) -> None:
        """Run the blocks on ``n_devices`` devices from now on (TransformerLens' ``n_devices``; 1: one session)."""
        split = DeviceSplit.even(self.cfg.n_layers, n_devices, self.cfg.device)
        for graph in (self.graph, self.__dict__.get("_decoder_graph")):
            if graph is not None:
                graph.split_across(split)
        self.cfg.n_devices = split.n_devices

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str | os.PathLike, **kwargs) -> "HookedTransformer":
        return cls.from_pretrained(
            model_name, fold_ln=False, center_writing_weights=False, center_unembed=False,
            fold_value_biases=False, **kwargs,
        )

    def _apply_missing_processing(self, proto: onnx.ModelProto, wanted: Processing | None) -> dict:
        have = Processing(**self.manifest["processing"])
        fields = dict(self.manifest["config"])
        if wanted is None or wanted == have:
            return fields
        extra = {k: v for k, v in wanted.as_dict().items() if v and not getattr(have, k)}
        undone = [k for k, v in have.as_dict().items() if v and not getattr(wanted, k)]
        if undone:
            flags = " ".join(f"--no-{k.replace('_', '-')}" for k in undone)
            raise BundleError(
                f"{self.bundle_dir} was exported with {', '.join(undone)} applied, which cannot be undone; "
                f"export again with `graphlens export {self.manifest['source']['model']} {flags}`"
            )
        if not extra:
            return fields
        if self.manifest.get("quantization"):
            flags = " ".join(f"--{k.replace('_', '-')}" for k in extra)
            raise BundleError(f"{self.bundle_dir} is quantized: {', '.join(extra)} cannot be applied to its weights at "
                              f"load; export the float bundle with {flags}, then quantize it")
        import onnx_graphsurgeon as gs

        from graphlens.rewrite.apply_weights import apply_processing

        read_external_weights(proto, self.bundle_dir)  # rewritten here: the graph holds its own processed copy
        # fold_ln moves ln biases into b_V, so value biases are folded again after it
        steps = Processing(**{**NO_PROCESSING.as_dict(), **extra, "fold_value_biases": wanted.fold_value_biases})
        graph = gs.import_onnx(proto)
        fields = apply_processing(graph, self.architecture, fields, steps)
        inputs = list(proto.graph.input)
        proto.CopyFrom(gs.export_onnx(graph))
        # graphsurgeon imports an input that has an initializer as a constant: declare the patch inputs again
        kept = {i.name for i in proto.graph.input}
        proto.graph.input.extend(i for i in inputs if i.name not in kept)
        self.manifest = {**self.manifest, "processing": wanted.as_dict(), "config": fields}
        return fields

    # ---- tokenizer helpers (TransformerLens semantics) ---------------------------------------------
    def _need_tokenizer(self) -> TokenizerAdapter:
        if self.tokenizer is None:
            raise InputError(f"bundle {self.bundle_dir} has no tokenizer: pass token ids instead of strings")
        return self.tokenizer

    def to_tokens(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[np.ndarray, "batch pos"]:
        tok = self._need_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        side = padding_side or tok.padding_side
        if side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {side!r}")
        return tok.to_tokens(texts, prepend, side, self.cfg.n_ctx if truncate else None)

    def to_string(self, tokens) -> str | list[str]:
        tokens = as_numpy(tokens)
        tok = self._need_tokenizer()
        if tokens.ndim == 0:
            tokens = tokens[None]
        if tokens.ndim == 1:
            return tok.decode(tokens)
        return [tok.decode(row) for row in tokens]

    def to_str_tokens(
        self, input, prepend_bos: bool | None = None, padding_side: str | None = None
    ) -> list[str] | list[list[str]]:
        tok = self._need_tokenizer()
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos, padding_side) for s in input]
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)[0]
        else:
            tokens = as_numpy(input)
            if tokens.ndim == 2:
                if tokens.shape[0] != 1:
                    raise InputError(f"to_str_tokens takes one sequence; got a batch of {tokens.shape[0]}")
                tokens = tokens[0]
            tokens = np.atleast_1d(tokens)
        return tok.decode_each(tokens)

    def to_single_token(self, string: str) -> int:
        tokens = self.to_tokens(string, prepend_bos=False)[0]
        if tokens.shape[0] != 1:
            raise InputError(f"{string!r} is {tokens.shape[0]} tokens, not one: {self.to_str_tokens(tokens)}")
        return int(tokens[0])

    def get_token_position(self, single_token, input, mode: str = "first", prepend_bos=None, padding_side=None) -> int:
        tokens = input if not isinstance(input, str) else self.to_tokens(input, prepend_bos, padding_side)
        tokens = np.atleast_2d(as_numpy(tokens))
        if tokens.shape[0] != 1:
            raise InputError("get_token_position needs a single sequence")
        token = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        where = np.nonzero(tokens[0] == token)[0]
        if where.size == 0:
            raise InputError(f"token {single_token!r} is not in the input")
        if mode not in ("first", "last"):
            raise InputError(f"mode must be 'first' or 'last', got {mode!r}")
        return int(where[0] if mode == "first" else where[-1])

    def tokens_from(self, input: TextOrTokens, prepend_bos=None, padding_side=None) -> Int[np.ndarray, "batch pos"]:
        """Token ids from a string, a list of strings or ids; checked against d_vocab and n_ctx."""
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        else:
            tokens = as_numpy(input)
        return check_tokens(tokens, self.cfg.d_vocab, self.cfg.n_ctx)

    def padding_mask(
        self, tokens: Int[np.ndarray, "batch pos"], attention_mask=None, prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> Int[np.ndarray, "batch pos"] | None:
        """The attention mask TransformerLens' ``forward`` uses for ``tokens``; None: nothing is masked.

        The ``attention_mask`` given, else, when the padding side (``padding_side`` or the tokenizer's) is
        left, the leading pad tokens (``utils.get_attention_mask``); right padding is not masked.
        """
        if attention_mask is not None:
            return check_attention_mask(attention_mask, tokens)
        tok = self.tokenizer
        if tok is None or (padding_side or tok.padding_side) != "left":
            return None
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        return attention_mask_for(tokens, tok.pad_token_id, tok.bos_token_id, prepend, "left")

    def model_feeds(self, tokens: Int[np.ndarray, "batch pos"], attention_mask=None, position_ids=None) -> dict[str, np.ndarray]:
        """The graph's own inputs for a run: ``input_ids``, plus ``attention_mask`` when it masks anything
        and ``position_ids`` when given (else the graph derives them from the mask)."""
        feeds = {"input_ids": tokens}
        if attention_mask is not None and not attention_mask.all():
            feeds[ATTENTION_MASK] = attention_mask  # else the default mask: the graph a plain export runs
        if position_ids is not None:
            feeds[POSITION_IDS] = np.asarray(position_ids, dtype=np.int64)
        missing = [name for name in feeds if name not in self.graph.input_names]
        if missing:
            raise BundleError(
                f"{self.bundle_dir} has no {' / '.join(missing)} input (exported before padding masks were supported); "
                f"export it again with `graphlens export {self.manifest['source']['model']}`"
            )
        return feeds

    # ---- hooks by name -----------------------------------------------------------------------------
    def hook_names_matching(self, names_filter: NamesFilter) -> list[str]:
        """Resolve a TransformerLens ``names_filter`` to hook names; unknown names raise with suggestions."""
        if names_filter is None:
            return list(self.hook_names)
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_names if names_filter(n)]
        names = list(names_filter)
        for name in names:
            if name not in self.hook_dict:
                raise UnknownHookError(name, self.hook_names)
        return [n for n in self.hook_names if n in set(names)]

    # ---- running -----------------------------------------------------------------------------------
    def run_graph(
        self,
        tokens: Int[np.ndarray, "batch pos"],
        outputs: Iterable[str],
        feeds: dict[str, np.ndarray] | None = None,
        given: dict[str, np.ndarray] | None = None,
        hooked: Sequence[str] | None = None,
        attention_mask: Int[np.ndarray, "batch pos"] | None = None,
        position_ids: Int[np.ndarray, "batch pos"] | None = None,
    ) -> dict[str, np.ndarray]:
        """One pass: ``outputs`` (hook names, "logits") with optional substitution ``feeds``.

        ``feeds`` maps graph input names (``<hook>.patch``, ``.patch_mask``, ``.add``) to arrays.
        ``given`` maps graph tensors to arrays fed instead of computed (``start_at_layer``). Python
        hooks of the ``hooked`` sites (default: every site with hooks) run where the model computes them.
        ``attention_mask`` (1 = token, 0 = padding; None: nothing masked) masks padded keys and offsets
        positions as TransformerLens does (see ``padding_mask``); ``position_ids`` override the positions.
        """
        tokens = check_tokens(tokens, self.cfg.d_vocab, self.cfg.n_ctx)
        hooked = self.hooked_sites() if hooked is None else list(hooked)
        outputs = self._checked_outputs(outputs, allow_empty=bool(hooked))
        feeds, fed = self.checked_feeds(tokens, feeds)
        if attention_mask is not None:
            attention_mask = check_attention_mask(attention_mask, tokens)
        feeds = {**self.model_feeds(tokens, attention_mask, position_ids), **feeds}
        if not hooked and not given and set(outputs) <= set(self.graph.output_names):
            return self.graph.run(outputs, feeds, fed)
        return run_partitioned(self.graph, hooked, outputs, feeds, self.call_hooks, given, fed)

    def checked_feeds(
        self, tokens: Int[np.ndarray, "batch pos"], feeds: dict[str, np.ndarray] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, set[str]]]:
        """Substitution ``feeds`` checked against ``tokens`` and the bundle, and the kinds fed per site."""
        if feeds is not None and not isinstance(feeds, dict):
            raise InputTypeError(f"feeds must be a dict of input name → array, not {type(feeds).__name__}")
        feeds = dict(feeds or {})
        fed: dict[str, set[str]] = {}
        for name in list(feeds):
            hook, feeds[name] = checked_feed(name, feeds[name], tokens, self)
            fed.setdefault(hook, set()).add("add" if name.endswith(".add") else "patch")
            if "patch" in fed[hook] and not {f"{hook}.patch", f"{hook}.patch_mask"} <= set(feeds):
                raise InputError(f"feed both {hook}.patch and {hook}.patch_mask (True where the patch applies)")
        return feeds, fed

    def _checked_outputs(self, outputs, allow_empty: bool) -> list[str]:
        """``run_graph``'s ``outputs``: hook names, graph outputs ("logits") or other tensors of the graph;
        empty only when hooks run (they are then what the run is for)."""
        outputs = [outputs] if isinstance(outputs, str) else outputs
        try:
            outputs = list(outputs)
        except TypeError:
            raise InputTypeError(f"outputs must be a list of names, not {type(outputs).__name__}") from None
        if not outputs and not allow_empty:
            raise InputError(f"outputs is empty: name what to compute, e.g. [{LOGITS!r}] or hook names")
        for name in outputs:
            if not isinstance(name, str):
                raise InputTypeError(f"output names are strings, not {type(name).__name__}")
            if name not in self.graph.tensor_names:
                raise UnknownHookError(name, [LOGITS, *self.hook_names])
        return outputs

    def forward(
        self,
        input: TextOrTokens,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        start_at_layer: int | None = None,
        tokens: Int[np.ndarray, "batch pos"] | None = None,
        shortformer_pos_embed: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache=None,
        logits_grad: np.ndarray | None = None,
    ):
        """Logits ``[batch, pos, d_vocab_out]``, loss, both, or None, as TransformerLens' ``forward``.

        ``start_at_layer=L``: ``input`` is the residual stream before block L ``[batch, pos, d_model]``
        (``tokens`` only for the loss). ``stop_at_layer=L``: returns the residual stream before block L.
        Only the layers in between are computed. Active hooks run. ``past_kv_cache``: a
        ``graphlens.KeyValueCache``; only the new tokens run (see ``graphlens.facade.kv_forward``).
        Active backward hooks are called with the gradients of the loss (``return_type="loss"``) or of
        ``sum(logits * logits_grad)`` (graphlens only; see ``graphlens.attribution``).
        """
        if shortformer_pos_embed is not None:
            raise NotSupportedError("shortformer_pos_embed: graphlens has no shortformer models")
        if logits_grad is not None or self.bwd_hooked_sites():
            return self._grad_run(input, [], return_type, loss_per_token, logits_grad, prepend_bos, padding_side,
                                  attention_mask, start_at_layer, stop_at_layer, past_kv_cache, tokens)[0]
        if past_kv_cache is not None:
            step = self._kv_step(input, past_kv_cache, [], prepend_bos, padding_side, attention_mask,
                                 start_at_layer, stop_at_layer, tokens)
            if stop_at_layer is not None:
                return step.residual
            if return_type in ("loss", "both") and step.tokens is None:
                raise InputError("tokens must be passed (tokens=...) for return_type 'loss' or 'both' with start_at_layer")
            return self._format_output(step.logits, step.tokens, return_type, loss_per_token)
        outputs = [LOGITS] if return_type is not None and stop_at_layer is None else []
        run = bounded_run(self, input, outputs, start_at_layer, stop_at_layer,
                          tokens, prepend_bos, padding_side, attention_mask)
        if stop_at_layer is not None:
            return run.residual
        if return_type in ("loss", "both") and run.tokens is None:
            raise InputError("tokens must be passed (tokens=...) for return_type 'loss' or 'both' with start_at_layer")
        return self._format_output(run.results.get(LOGITS), run.tokens, return_type, loss_per_token, run.attention_mask)

    __call__ = forward

    def _format_output(self, logits, tokens, return_type, loss_per_token, attention_mask=None):
        if return_type is None:
            return None
        if return_type == "logits":
            return logits
        if return_type not in ("loss", "both"):
            raise InputError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def loss_fn(self, logits, tokens, attention_mask=None, per_token: bool = False):
        return lm_cross_entropy_loss(as_numpy(logits), as_numpy(tokens), attention_mask, per_token)

    def run_with_cache(
        self,
        input: TextOrTokens,
        names_filter: NamesFilter = None,
        device: str | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice=None,
        return_cache_object: bool = True,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        start_at_layer: int | None = None,
        tokens: Int[np.ndarray, "batch pos"] | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache=None,
        attention_mask: np.ndarray | None = None,
        logits_grad: np.ndarray | None = None,
    ):
        """``(output, cache)`` from a single run that also returns every hook ``names_filter`` selects.

        Active hooks run first: the cache holds the values after them. With ``stop_at_layer`` the
        output is the residual stream there; the cache holds the sites the bounded run computes.
        With ``past_kv_cache`` the cache holds the new positions. ``incl_bwd=True``: the cache also
        holds ``<hook>_grad``, the gradient of the mean loss (``return_type="loss"``) or of
        ``sum(logits * logits_grad)``, summed over all uses of the hook (see ``graphlens.attribution``).
        """
        names = [n for n in self.hook_names_matching(names_filter)
                 if site_runs(n, self.cfg.n_layers, start_at_layer, stop_at_layer)]
        outputs = names + ([LOGITS] if return_type is not None and stop_at_layer is None else [])
        if incl_bwd or logits_grad is not None or self.bwd_hooked_sites():
            output, results = self._grad_run(input, names, return_type, loss_per_token, logits_grad, prepend_bos,
                                             padding_side, attention_mask, start_at_layer, stop_at_layer,
                                             past_kv_cache, tokens)
            names = names + [grad_name(n) for n in names] if incl_bwd else names
            return self._cache_result(output, {name: results[name] for name in names}, pos_slice, remove_batch_dim,
                                      return_cache_object)
        if past_kv_cache is not None:
            step = run = self._kv_step(input, past_kv_cache, self._decoder_hook_names(names), prepend_bos, padding_side,
                                       attention_mask, start_at_layer, stop_at_layer, tokens)
            names = list(step.hooks)
            results, tokens = {LOGITS: step.logits, **step.hooks}, step.tokens
        else:
            run = bounded_run(self, input, outputs, start_at_layer, stop_at_layer, tokens, prepend_bos, padding_side,
                              attention_mask)
            results, tokens = run.results, run.tokens
        if reset_hooks_end and clear_contexts:  # as TransformerLens' caching-hooks context on exit
            self.clear_contexts()
        output = run.residual if stop_at_layer is not None else self._format_output(
            results.get(LOGITS), tokens, return_type, loss_per_token, run.attention_mask)
        return self._cache_result(output, {name: results[name] for name in names}, pos_slice, remove_batch_dim,
                                  return_cache_object)

    def _cache_result(self, output, cache_dict: dict[str, np.ndarray], pos_slice, remove_batch_dim: bool,
                      return_cache_object: bool):
        if pos_slice is not None:
            cache_dict = {n: _slice_positions(n, v, Slice.unwrap(pos_slice)) for n, v in cache_dict.items()}
        if remove_batch_dim:
            cache_dict = {n: v[0] for n, v in cache_dict.items()}
        if not return_cache_object:
            return output, cache_dict
        return output, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def __repr__(self) -> str:
        return f"HookedTransformer({str(self.bundle_dir)!r}, {self.cfg.n_layers} layers, device={self.cfg.device!r})"


def _slice_positions(name: str, value: np.ndarray, pos_slice: Slice) -> np.ndarray:
    # the position axis: third from last for per-head vectors, second from last otherwise (as TransformerLens)
    name = name.removesuffix(GRAD_SUFFIX)
    pos_dim = -3 if name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k")) else -2
    return pos_slice.apply(value, dim=pos_dim) if value.ndim >= -pos_dim else value
