"""Running a graph cut at hooked sites: the parts in order, Python hooks between them, one pass."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from graphlens.rewrite.partition import Plan, plan, pre_hook_tensor
from graphlens.rewrite.specialise import needed_nodes
from graphlens.runtime.graph import BundleGraph

# (site name, activation before the site's hooks) → the site's value after them
HookCaller = Callable[[str, np.ndarray], np.ndarray]


def compiled_plan(
    graph: BundleGraph,
    hooked: Iterable[str],
    outputs: Iterable[str],
    given: Iterable[str] = (),
    fed: Mapping[str, Iterable[str]] | None = None,
    arena: bool = True,
) -> tuple[Plan, list]:
    """The plan for this request and one session per part, cached by hook-site set and outputs.

    A graph split across devices (``graph.split``) is also cut where the device changes; those cuts
    run no hooks (``Plan.passthrough``) and each part's session is on its blocks' device.
    ``arena``: see ``BundleGraph.compile``."""
    hooked, outputs, given = tuple(hooked), tuple(dict.fromkeys(outputs)), tuple(sorted(given))
    fed_key = tuple(sorted((h, tuple(sorted(k))) for h, k in (fed or {}).items()))
    key = ("partition", hooked, outputs, given, fed_key, arena)

    def build():
        cuts = _device_cuts(graph, hooked, outputs, given, dict(fed_key))
        sites = hooked + tuple(s for s in cuts if s not in hooked)
        p = plan(graph.proto, sites, outputs, given, dict(fed_key), graph.types)
        p.passthrough = frozenset(cuts) - set(hooked)
        devices = graph.split.part_devices([part.hooks for part in p.parts], cuts) if cuts else [None] * len(p.parts)
        return p, [graph.compile(part.model, spinning=False, arena=arena, device=device) if part.model is not None else None
                   for part, device in zip(p.parts, devices)]

    return graph.cached(key, build)


def _device_cuts(graph: BundleGraph, hooked: tuple, outputs: tuple, given: tuple, fed: dict) -> dict[str, int]:
    """The device-change sites this run passes through (none past a stop or before a given tensor)."""
    if graph.split is None:
        return {}
    cuts = graph.split.cut_sites(fed)
    wanted = [*outputs, *(pre_hook_tensor(graph.proto.graph, site) for site in hooked)]
    kept, _ = needed_nodes(list(graph.proto.graph.node), wanted, given)
    names = {node.name for node in kept}
    return {site: group for site, group in cuts.items() if f"{site}.where" in names}


def run_partitioned(
    graph: BundleGraph,
    hooked: Iterable[str],
    outputs: Iterable[str],
    feeds: Mapping[str, np.ndarray],
    call_hooks: HookCaller | None,
    given: Mapping[str, np.ndarray] | None = None,
    fed: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``outputs`` with the hooks of ``hooked`` sites applied where the model computes them.

    ``feeds``: graph inputs (input_ids, attention_mask, substitution inputs; unfed defaulted inputs
    get their defaults); ``given``: tensors fed instead of computed (see ``partition.plan``).
    """
    given = dict(given or {})
    the_plan, sessions = compiled_plan(graph, hooked, outputs, given, fed)
    call_hooks = call_hooks or _unchanged
    values = run_parts(graph, the_plan, sessions, {**graph.input_defaults, **feeds, **given}, call_hooks)
    return {name: values[name] for name in the_plan.outputs}


def run_parts(
    graph: BundleGraph, the_plan: Plan, sessions: list, values: dict[str, np.ndarray], call_hooks: HookCaller, start: int = 0
) -> dict[str, np.ndarray]:
    """Run the parts ``start:`` of a compiled plan on ``values`` (updated and returned), with hooks.

    ``values`` holds what those parts read that earlier parts would have computed.
    """
    for part, session in zip(the_plan.parts[start:], sessions[start:]):
        if session is not None:
            results = session.run(part.outputs, {name: values[name] for name in part.inputs})
            graph.session_runs += 1
            values.update(zip(part.outputs, results))
        for site in part.hooks:
            if site in the_plan.passthrough:  # a cut between devices: the value goes on as it is
                values[site] = values[the_plan.pre[site]]
                continue
            activation = values[the_plan.pre[site]]
            if the_plan.pre[site] in the_plan.outputs or not activation.flags.writeable:
                activation = activation.copy()  # hooks may edit in place; the output keeps its own value
            values[site] = np.ascontiguousarray(call_hooks(site, activation))
    return values


def _unchanged(site: str, activation: np.ndarray) -> np.ndarray:
    return activation
