"""Compile a declarative intervention spec into a bundle's graph: plain ops at the sites, no extra inputs.

A spec is a list of entries (JSON or YAML file, or Python list)::

    - {hook: blocks.3.hook_resid_pre, op: add, value_file: steer.npy, positions: [-1]}
    - {hook: blocks.2.attn.hook_z, op: zero, heads: [4, 7]}
    - {hook: blocks.1.mlp.hook_post, op: scale, value: 0.5}

``op``: ``set`` (the activation becomes ``value``), ``add``, ``scale`` (multiply), ``zero``.
``positions`` (the position axis; the destination axis of attention patterns; negative counts from
the end) and ``heads`` restrict where it applies; ``value`` (a number or nested list) or
``value_file`` (``.npy``, relative to the spec file) broadcasts against the activation's trailing
dims. Each entry acts on the site's activation before the site's own substitution inputs and hooks,
in spec order, as a permanent hook would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphlens.sites import SYMBOLIC_DIMS, UnknownHookError, kind_of, site_dims
from graphlens.errors import SpecError

OPS = ("set", "add", "scale", "zero")
_KEYS = {"hook", "op", "positions", "heads", "value", "value_file"}
_POS_DIMS = ("pos", "query_pos")
_HEAD_DIMS = ("n_heads", "n_key_value_heads")


@dataclass
class Intervention:
    hook: str
    op: str
    positions: list[int] | None = None
    heads: list[int] | None = None
    value: np.ndarray | None = None

    def describe(self) -> dict:
        """The entry as the manifest records it (the value by shape only)."""
        return {"hook": self.hook, "op": self.op, "positions": self.positions, "heads": self.heads,
                "value_shape": None if self.value is None else list(self.value.shape)}


def load_spec(spec) -> tuple[list[dict], Path]:
    """Entries from a JSON/YAML file path, or a list of dicts; plus the folder value files are relative to."""
    if isinstance(spec, (list, tuple)):
        return list(spec), Path.cwd()
    if not isinstance(spec, (str, os.PathLike)):
        raise SpecError(f"a spec is a JSON/YAML file path or a list of entries, not {type(spec).__name__}")
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"intervention spec {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read the intervention spec {path} ({err})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SpecError(f"{path}: reading a YAML spec needs PyYAML: pip install pyyaml (or write the spec as JSON)") from None
        try:
            entries = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            mark = getattr(err, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise SpecError(f"{path} is not valid YAML{at}: {first}") from None
    else:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{path} is not valid JSON ({err}); YAML specs need a .yaml or .yml name") from None
    if isinstance(entries, dict) and "interventions" in entries:
        entries = entries["interventions"]
    if not isinstance(entries, list):
        raise SpecError(f"{path}: a spec is a list of {{hook, op, ...}} entries (or {{interventions: [...]}})")
    return entries, path.parent


def parse_spec(
    entries: Sequence[dict], hooks: Sequence[str], cfg: dict, dtype: str, base: Path, root: Path | None = None
) -> list[Intervention]:
    """Check each entry against the model's hooks and shapes; ``value_file`` is read from ``base`` and
    must stay inside ``root`` (default: ``base``)."""
    out = []
    for i, entry in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected a mapping {{hook, op, ...}}, got {type(entry).__name__}")
        unknown = set(entry) - _KEYS
        if unknown:
            raise SpecError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        hook, op = entry.get("hook"), entry.get("op")
        if hook not in hooks:
            raise SpecError(f"{where}: {UnknownHookError(str(hook), hooks)}")
        where = f"entry {i} ({hook})"
        if op not in OPS:
            raise SpecError(f"{where}: op must be one of {', '.join(OPS)}; got {op!r}")
        dims = site_dims(hook, cfg)
        value = _value(entry, base, root if root is not None else base, dtype, where)
        if (value is None) != (op == "zero"):
            raise SpecError(f"{where}: op {op!r} " + ("takes no value" if op == "zero" else "needs value or value_file"))
        if value is not None:
            _check_broadcast(value, dims, where)
        positions = _indices(entry.get("positions"), "positions", where)
        heads = _indices(entry.get("heads"), "heads", where)
        if positions is not None:
            if not any(d in _POS_DIMS for d in kind_of(hook).dims):
                raise SpecError(f"{where}: this site has no position axis")
            bad = [p for p in positions if not -cfg["n_ctx"] <= p < cfg["n_ctx"]]
            if bad:
                raise SpecError(f"{where}: positions {bad} are outside the context (n_ctx={cfg['n_ctx']})")
        if heads is not None:
            axis = _axis(kind_of(hook).dims, _HEAD_DIMS)
            if axis is None:
                raise SpecError(f"{where}: this site has no head axis; drop 'heads'")
            bad = [h for h in heads if not 0 <= h < dims[axis]]
            if bad:
                raise SpecError(f"{where}: heads {bad} out of range [0, {dims[axis]})")
        out.append(Intervention(hook, op, positions, heads, value))
    return out


def _value_file(name, base: Path, root: Path, where: str) -> Path:
    """``base / name``, refused unless it (symlinks followed) lies inside ``root``."""
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: value_file must be a file name (a .npy relative to the spec file)")
    file = base / name
    if root.resolve() not in file.resolve().parents:
        raise SpecError(f"{where}: value_file {name!r} leaves the spec's folder {root}; move the file there "
                        f"(or widen the allowed folder: value_root=..., CLI --value-root)")
    if not file.is_file():
        raise SpecError(f"{where}: value_file {file} does not exist")
    return file


def _value(entry: dict, base: Path, root: Path, dtype: str, where: str) -> np.ndarray | None:
    if "value" in entry and "value_file" in entry:
        raise SpecError(f"{where}: give value or value_file, not both")
    if "value_file" in entry:
        file = _value_file(entry["value_file"], base, root, where)
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise SpecError(f"{where}: value_file {file} is not a .npy array ({err})") from None
        if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise SpecError(f"{where}: value_file {file} must hold a numeric array")
        return array.astype(dtype)
    if "value" in entry and entry["value"] is not None:
        try:
            return np.asarray(entry["value"], dtype=dtype)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: value must be a number or a nested list of numbers") from None
    return None


def _indices(values, key: str, where: str) -> list[int] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, int) else values
    if not isinstance(values, list) or not values or not all(isinstance(v, int) for v in values):
        raise SpecError(f"{where}: {key} must be an integer or a non-empty list of integers")
    return values


def _axis(dims: Sequence, names: Sequence[str]) -> int | None:
    return next((i for i, d in enumerate(dims) if d in names), None)


def _check_broadcast(value: np.ndarray, dims: list, where: str) -> None:
    if value.ndim > len(dims):
        raise SpecError(f"{where}: value has {value.ndim} dims; the activation has {len(dims)} ({dims})")
    for v, d in zip(value.shape[::-1], dims[::-1]):
        if v != 1 and not (isinstance(d, str) and d in SYMBOLIC_DIMS) and v != d:
            raise SpecError(f"{where}: value shape {value.shape} does not broadcast to the activation's {dims}")


# ---- graph construction -------------------------------------------------------------------------
class _Builder:
    """Appends nodes and constants for one intervention, with names under ``prefix``."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.constants, self.count = prefix, [], [], 0

    def name(self) -> str:
        self.count += 1
        return f"{self.prefix}.{self.count}"

    def const(self, array: np.ndarray) -> str:
        name = self.name()
        self.constants.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self.name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _mask(b: _Builder, x: str, item: Intervention, dims: list, rank: int) -> str | None:
    masks = []
    if item.positions is not None:
        axis = _axis(kind_of(item.hook).dims, _POS_DIMS)
        seq = b.op("Shape", x, start=axis, end=axis + 1)  # [1]
        positions = b.const(np.array(item.positions, dtype=np.int64))
        normalised = b.op("Where", b.op("Less", positions, b.const(np.array(0, np.int64))),
                          b.op("Add", positions, seq), positions)
        index = b.op("Range", b.const(np.array(0, np.int64)), b.op("Squeeze", seq), b.const(np.array(1, np.int64)))
        hits = b.op("Equal", b.op("Unsqueeze", index, b.const(np.array([1], np.int64))),
                    b.op("Unsqueeze", normalised, b.const(np.array([0], np.int64))))
        any_hit = b.op("ReduceMax", b.op("Cast", hits, to=onnx.TensorProto.INT32), b.const(np.array([1], np.int64)),
                       keepdims=0)
        shape = [1] * rank
        shape[axis] = -1
        masks.append(b.op("Reshape", b.op("Cast", any_hit, to=onnx.TensorProto.BOOL), b.const(np.array(shape, np.int64))))
    if item.heads is not None:
        axis = _axis(kind_of(item.hook).dims, _HEAD_DIMS)
        shape = [1] * rank
        shape[axis] = dims[axis]
        heads = np.zeros(shape, dtype=bool)
        np.put_along_axis(heads, np.array(item.heads).reshape([-1 if i == axis else 1 for i in range(rank)]), True, axis)
        masks.append(b.const(heads))
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else b.op("And", *masks)


def _apply(b: _Builder, x: str, item: Intervention, dims: list, dtype) -> str:
    mask = _mask(b, x, item, dims, len(dims))
    zero = b.const(np.zeros((), dtype=dtype))
    value = b.const(item.value) if item.value is not None else zero
    if item.op in ("set", "zero"):
        target = b.op("Expand", value, b.op("Shape", x)) if mask is None else value
        return target if mask is None else b.op("Where", mask, target, x)
    if item.op == "add":
        return b.op("Add", x, value if mask is None else b.op("Where", mask, value, zero))
    scaled = b.op("Mul", x, value)  # scale
    return scaled if mask is None else b.op("Where", mask, scaled, x)


def apply_interventions(model: onnx.ModelProto, items: Sequence[Intervention], cfg: dict, dtype: str) -> None:
    """Insert each intervention (in place) on the activation its site's ``<hook>.where`` node reads."""
    graph = model.graph
    nodes = list(graph.node)
    for i, item in enumerate(items):
        at = next((k for k, n in enumerate(nodes) if n.name == f"{item.hook}.where"), None)
        if at is None:
            raise SpecError(f"the graph has no site {item.hook}")
        where = nodes[at]
        slot = 2 if where.op_type == "Where" else 0
        b = _Builder(f"{item.hook}.intervention{i}")
        where.input[slot] = _apply(b, where.input[slot], item, site_dims(item.hook, cfg), np.dtype(dtype))
        nodes[at:at] = b.nodes
        graph.initializer.extend(b.constants)
    del graph.node[:]
    graph.node.extend(nodes)
