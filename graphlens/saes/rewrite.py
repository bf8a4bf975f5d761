"""An SAE, transcoder or linear probe spliced into an instrumented graph at its site.

For an SAE at site ``h`` (a transcoder reads ``h_in`` and writes ``h``), the graph computes what
SAELens' ``HookedSAETransformer`` computes, each step a ``graphlens.Site`` marker that
``rewrite.instrument.instrument_sites`` turns into a hook with ``.patch``/``.patch_mask``/``.add`` inputs::

    h.hook_sae_input     = flatten(h_in)                 [batch, pos, d_in] (hook_z: heads flattened)
    h.hook_sae_acts_pre  = norm_in(input) - b_dec @ W_enc + b_enc     (gated: the magnitude path)
    h.hook_sae_acts_post = activation(acts_pre)          [batch, pos, d_sae]
    h.hook_sae_recons    = acts_post @ W_dec + b_dec     [batch, pos, d_out]
    h.hook_sae_error     = h - (the same, with no substitution at the SAE's hooks)   (error term only)
    h.hook_sae_output    = unflatten(norm_out(recons)) (+ error)   the site's shape

and every reader of ``h`` reads ``h.hook_sae_output`` instead. A probe ``<hook>.probe.<name>`` is
``flatten(hook) @ W + b`` ``[batch, pos, n]``, a plain output beside the model's.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from jaxtyping import Float

from graphlens.errors import InputError, UnknownHookError
from graphlens.rewrite.instrument import MARKER_DOMAIN, MARKER_OP, instrument_sites, instrumented_model
from graphlens.saes.reader import SAEWeights
from graphlens.sites import PROBE_INFIX, SAE_DIMS, kind_of, sae_dim_label

_LN_EPS = 1e-5  # SAELens' layer_norm normalisation


class _Ops:
    """Appends nodes to ``graph`` with unique names under ``prefix`` (never ``.where``/``.add``: those
    names mark substitution nodes to ``rewrite.specialise``)."""

    def __init__(self, graph: gs.Graph, prefix: str, dtype):
        self.graph, self.prefix, self.dtype, self.count = graph, prefix, dtype, 0

    def _name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}.{what}_{self.count}"

    def const(self, what: str, value) -> gs.Constant:
        value = np.asarray(value)
        value = value.astype(self.dtype) if value.dtype.kind == "f" else value
        return gs.Constant(self._name(what), value)

    def __call__(self, op: str, *inputs, dtype=None, outputs: int = 1, **attrs):
        name = self._name(op.lower())
        outs = [gs.Variable(f"{name}.out{i}", dtype=dtype or self.dtype) for i in range(outputs)]
        self.graph.nodes.append(gs.Node(op, name=name, inputs=list(inputs), outputs=outs, attrs=attrs))
        return outs[0] if outputs == 1 else outs

    def mark(self, x: gs.Variable, hook: str) -> gs.Variable:
        out = gs.Variable(f"{hook}.marked", dtype=x.dtype)
        self.graph.nodes.append(gs.Node(MARKER_OP, name=f"{hook}.marker", domain=MARKER_DOMAIN, attrs={"name": hook},
                                        inputs=[x], outputs=[out]))
        return out

    def sum_last(self, x):
        return self("ReduceSum", x, self.const("axis", np.array([-1], dtype=np.int64)), keepdims=1)


def _site(tensors: dict, hook: str, graph_outputs: set[str]) -> gs.Variable:
    if hook not in graph_outputs or hook not in tensors:
        raise UnknownHookError(hook, sorted(graph_outputs))
    return tensors[hook]


def _flat(ops: _Ops, x: gs.Variable, rank: int) -> gs.Variable:
    return ops("Reshape", x, ops.const("flat", np.array([0, 0, -1], dtype=np.int64))) if rank > 3 else x


class _SAEPath:
    """Builds the SAE's computation from its (flattened) input; ``mark``: with hooks (else the clean copy
    SAELens computes the error term from)."""

    def __init__(self, ops: _Ops, sae: SAEWeights, hook: str):
        self.ops, self.sae, self.hook = ops, sae, hook
        p = dict(sae.params)
        if sae.architecture == "gated":
            p["W_mag"] = p["W_enc"] * np.exp(p["r_mag"])
        if sae.rescale_acts_by_decoder_norm:
            norms = np.linalg.norm(p["W_dec"], axis=-1)
            p["dec_norm"], p["W_dec"] = norms, p["W_dec"] / norms[:, None]
        self.c = {name: ops.const(name, value) for name, value in p.items() if name != "r_mag"}

    def _maybe_mark(self, x, suffix: str, mark: bool):
        return self.ops.mark(x, f"{self.hook}.{suffix}") if mark else x

    def _normalise(self, x):
        """``(normalised x, undo)`` as SAELens' ``run_time_activation_norm_fn_in``/``_out``."""
        ops, how, d = self.ops, self.sae.normalize_activations, self.sae.d_in
        if how == "layer_norm":
            mean = ops("Div", ops.sum_last(x), ops.const("d", float(d)))
            centred = ops("Sub", x, mean)
            var = ops("Div", ops.sum_last(ops("Mul", centred, centred)), ops.const("d_1", float(d - 1)))  # unbiased
            std = ops("Sqrt", var)
            return ops("Div", centred, ops("Add", std, ops.const("eps", _LN_EPS))), \
                lambda y: ops("Add", ops("Mul", y, std), mean)
        if how == "constant_norm_rescale":
            coeff = ops("Div", ops.const("sqrt_d", float(d) ** 0.5), ops("Sqrt", ops.sum_last(ops("Mul", x, x))))
            return ops("Mul", x, coeff), lambda y: ops("Div", y, coeff)
        return x, lambda y: y

    def _activation(self, pre, sae_in, mark: bool):
        ops, c, arch = self.ops, self.c, self.sae.architecture
        if arch == "gated":
            gate = ops("Add", ops("MatMul", sae_in, c["W_enc"]), c["b_gate"])
            active = ops("Cast", ops("Greater", gate, ops.const("zero", 0.0), dtype=np.bool_), to=_onnx_type(ops.dtype))
            return ops("Mul", active, ops("Relu", pre))
        if arch in ("jumprelu", "jumprelu_transcoder"):
            keep = ops("Cast", ops("Greater", pre, c["threshold"], dtype=np.bool_), to=_onnx_type(ops.dtype))
            return ops("Mul", ops("Relu", pre), keep)
        if arch == "topk":
            ranked = ops("Mul", pre, c["dec_norm"]) if self.sae.rescale_acts_by_decoder_norm else pre
            values, indices = ops("TopK", ranked, ops.const("k", np.array([self.sae.k], dtype=np.int64)), outputs=2,
                                  axis=-1, largest=1, sorted=0)
            indices.dtype = np.int64
            zeros = ops("ConstantOfShape", ops("Shape", ranked, dtype=np.int64),
                        value=onnx.numpy_helper.from_array(np.zeros(1, dtype=ops.dtype)))
            return ops("ScatterElements", zeros, indices, ops("Relu", values), axis=-1)
        return ops("Relu", pre)

    def build(self, x, mark: bool):
        """``(recons after norm_out, the hooked recons)`` for flattened input ``x``."""
        ops, c, sae = self.ops, self.c, self.sae
        x = self._maybe_mark(x, "hook_sae_input", mark)
        sae_in, undo = self._normalise(x)
        if sae.apply_b_dec_to_input:
            sae_in = ops("Sub", sae_in, c["b_dec"])
        w, b = (c["W_mag"], c["b_mag"]) if sae.architecture == "gated" else (c["W_enc"], c["b_enc"])
        pre = self._maybe_mark(ops("Add", ops("MatMul", sae_in, w), b), "hook_sae_acts_pre", mark)
        acts = self._maybe_mark(self._activation(pre, sae_in, mark), "hook_sae_acts_post", mark)
        recons = self._maybe_mark(ops("Add", ops("MatMul", acts, c["W_dec"]), c["b_dec"]), "hook_sae_recons", mark)
        return (recons if sae.is_transcoder else undo(recons)), recons  # a transcoder's decode has no norm_out


def _onnx_type(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _rewire(old: gs.Variable, new: gs.Variable, consumers: list[gs.Node]) -> None:
    for node in consumers:
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new


def _check_fits(sae: SAEWeights, cfg: dict, in_shape: list, out_shape: list, where: str) -> None:
    def width(shape):
        return int(np.prod([d for d in shape[2:]])) if all(isinstance(d, int) for d in shape[2:]) else None

    if width(in_shape) != sae.d_in:
        raise InputError(f"{where}: the SAE's d_in is {sae.d_in}, the site {sae.hook_name} has width {width(in_shape)} "
                         f"(shape {in_shape}); attach it to the site it was trained on")
    if width(out_shape) != sae.d_out:
        raise InputError(f"{where}: the SAE's output width {sae.d_out} does not fit {sae.hook_name_out} {out_shape}")
    if sae.is_transcoder and len(out_shape) != 3:
        raise InputError(f"{where}: a transcoder writes a [batch, pos, d] site, not {sae.hook_name_out} {out_shape}")
    if len(in_shape) > 3 and not sae.reshape_hook_z and not sae.is_transcoder:
        raise InputError(f"{where}: {sae.hook_name} has heads {in_shape}; the SAE must flatten them "
                         f"(reshape_activations='hook_z')")


def sae_dims(saes: Mapping[str, SAEWeights], probes: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:
    """The config's ``sae_dims`` entries for ``saes`` (output site → SAE) and ``probes`` (probe hook → W)."""
    dims = {}
    for site, sae in saes.items():
        dims.update({sae_dim_label(site, w): getattr(sae, w) for w in ("d_in", "d_sae", "d_out")})
    for hook, (weight, _) in (probes or {}).items():
        dims[sae_dim_label(hook, "d_out")] = int(weight.shape[1])
    return dims


def add_sae(graph: gs.Graph, sae: SAEWeights, cfg: dict, use_error_term: bool = False, tag: str = "") -> list[str]:
    """Splice ``sae`` into ``graph`` (an instrumented bundle graph) as markers; returns its hook names.

    ``tag`` goes into the names of its weights (``<site>.sae<tag>.W_enc_1`` …): SAEs that differ get
    different names where graphs sharing weights by name hold several."""
    tensors, outputs = graph.tensors(), {o.name for o in graph.outputs}
    x_in = _site(tensors, sae.hook_name, outputs)
    x_out = _site(tensors, sae.hook_name_out, outputs)
    in_shape = [int(cfg[d]) if isinstance(d, str) and d in cfg else d for d in kind_of(sae.hook_name).dims]
    out_shape = [int(cfg[d]) if isinstance(d, str) and d in cfg else d for d in kind_of(sae.hook_name_out).dims]
    hook = sae.hook_name_out
    _check_fits(sae, cfg, in_shape, out_shape, f"SAE at {hook}")
    dtype = x_out.dtype if x_out.dtype is not None else np.float32
    readers = list(x_out.outputs)
    ops = _Ops(graph, f"{hook}.sae{tag}", dtype)
    path = _SAEPath(ops, sae, hook)
    flat_in = _flat(ops, x_in, len(in_shape))
    recons, _ = path.build(flat_in, mark=True)
    shape = ops("Shape", x_out, dtype=np.int64)
    output = ops("Reshape", recons, shape) if len(out_shape) > 3 else recons
    names = ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons"]
    if use_error_term:
        clean, _ = path.build(flat_in, mark=False)
        clean = ops("Reshape", clean, shape) if len(out_shape) > 3 else clean
        error = ops.mark(ops("Sub", x_out, clean), f"{hook}.hook_sae_error")
        output = ops("Sum", output, error)
        names.append("hook_sae_error")
    output = ops.mark(output, f"{hook}.hook_sae_output")
    _rewire(x_out, output, readers)
    return [f"{hook}.{n}" for n in names + ["hook_sae_output"]]


def probe_name(hook: str, name: str) -> str:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"probe name {name!r} must be letters, digits, '_' or '-'")
    return f"{hook}{PROBE_INFIX}{name}"


def add_probe(graph: gs.Graph, hook: str, name: str, weight: Float[np.ndarray, "d_in n"], bias: np.ndarray,
              cfg: dict) -> str:
    """Add ``<hook>.probe.<name> = flatten(hook) @ weight + bias`` ``[batch, pos, n]`` as a marker."""
    tensors, outputs = graph.tensors(), {o.name for o in graph.outputs}
    x = _site(tensors, hook, outputs)
    dims = kind_of(hook).dims
    if tuple(dims[:2]) != ("batch", "pos"):
        raise InputError(f"probe on {hook}: a probe reads a [batch, pos, ...] site, not {dims}")
    out = probe_name(hook, name)
    ops = _Ops(graph, out, x.dtype if x.dtype is not None else np.float32)
    logits = ops("Add", ops("MatMul", _flat(ops, x, len(dims)), ops.const("W", weight)), ops.const("b", bias))
    ops.mark(logits, out)
    return out


def check_probe(hook: str, name: str, probe, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W [width, n], b [n])`` float32 from ``probe`` (``(W, b)``; a 1-D W is one output), checked."""
    if not (isinstance(probe, (tuple, list)) and len(probe) == 2):
        raise InputError(f"probe {name!r} on {hook}: give (W, b), W of shape [d, n] (or [d]) and b of shape [n]")
    weight, bias = (np.asarray(v, dtype=np.float32) for v in probe)
    weight = weight[:, None] if weight.ndim == 1 else weight
    bias = bias.reshape(-1)
    if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (weight.shape[1],):
        raise InputError(f"probe {name!r} on {hook}: W {weight.shape} and b {bias.shape} do not fit the site's width "
                         f"{width} (W must be [{width}, n], b [n])")
    return weight, bias


def with_saes(proto: onnx.ModelProto, saes: Mapping[str, tuple[SAEWeights, bool]], cfg: dict,
              probes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
              tags: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` with ``saes`` (output site → (SAE, use_error_term)) and ``probes`` (probe hook → (W, b)).

    ``cfg`` must hold the ``sae_dims`` of them all (``sae_dims``). ``tags``: weight names unique to each
    SAE object (``add_sae``'s ``tag``). Returns the new graph and its new hooks.
    """
    if SAE_DIMS not in cfg:
        raise InputError("the config lacks sae_dims (graphlens.saes.rewrite.sae_dims) for the attached SAEs")
    graph = gs.import_onnx(proto)
    hooks = []
    for sae, use_error_term in saes.values():
        hooks += add_sae(graph, sae, cfg, use_error_term, tag=f"_{id(sae):x}" if tags else "")
    if probes:
        instrument_sites(graph, cfg, "all")  # the SAE hooks become outputs a probe may read
    for name, (weight, bias) in (probes or {}).items():
        hook, _, probe = name.partition(PROBE_INFIX)
        hooks.append(add_probe(graph, hook, probe, weight, bias, cfg))
    return instrumented_model(graph, proto, cfg), hooks
