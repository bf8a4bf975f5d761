"""Running a graph cut at hooked sites: the parts in order, Python hooks between them, one pass."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from graphlens.rewrite.partition import Plan, plan
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

    ``arena``: see ``BundleGraph.compile``."""
    hooked, outputs, given = tuple(hooked), tuple(dict.fromkeys(outputs)), tuple(sorted(given))
    fed_key = tuple(sorted((h, tuple(sorted(k))) for h, k in (fed or {}).items()))
    key = ("partition", hooked, outputs, given, fed_key, arena)

    def build():
        p = plan(graph.proto, hooked, outputs, given, dict(fed_key), graph.types)
        return p, [graph.compile(part.model, spinning=False, arena=arena) if part.model is not None else None
                   for part in p.parts]

    return graph.cached(key, build)


def run_partitioned(
    graph: BundleGraph,
    hooked: Iterable[str],
    outputs: Iterable[str],
    feeds: Mapping[str, np.ndarray],
    call_hooks: HookCaller,
    given: Mapping[str, np.ndarray] | None = None,
    fed: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``outputs`` with the hooks of ``hooked`` sites applied where the model computes them.

    ``feeds``: graph inputs (input_ids, attention_mask, substitution inputs; unfed defaulted inputs
    get their defaults); ``given``: tensors fed instead of computed (see ``partition.plan``).
    """
    given = dict(given or {})
    the_plan, sessions = compiled_plan(graph, hooked, outputs, given, fed)
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
            activation = values[the_plan.pre[site]]
            if the_plan.pre[site] in the_plan.outputs or not activation.flags.writeable:
                activation = activation.copy()  # hooks may edit in place; the output keeps its own value
            values[site] = np.ascontiguousarray(call_hooks(site, activation))
    return values
