"""What a harvest will do, fixed before it starts: hooks, their layouts, batch and shard sizes, limits.

Everything that decides the output's bytes is here and recorded in ``index.json`` (``options``), so a
resumed run can check it continues the same job. Batches never straddle shards: a shard holds a whole
number of batches, so a resumed run (or a Ray worker) runs exactly the batches an uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from graphlens.errors import InputError
from graphlens.harvest.layout import HookLayout, hook_layout
from graphlens.runtime.memory import estimated_run_bytes
from graphlens.sites import select_hooks

DEFAULT_MEMORY_BUDGET_MB = 1024
DTYPES = ("float16", "float32")
SEPARATORS = {"bos": "bos", "eos": "eos", "none": None}


@dataclass(frozen=True)
class Options:
    """The options that decide a harvest's output (recorded in the index; a resume must match them)."""

    data: str
    column: str
    hooks: list[str]
    context_size: int
    batch_size: int
    sequences_per_shard: int
    max_tokens: int | None
    dtype: str
    prepend_bos: bool
    separator: str | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    options: Options
    layouts: list[HookLayout] = field(default_factory=list)

    @property
    def max_sequences(self) -> int | None:
        return None if self.options.max_tokens is None else self.options.max_tokens // self.options.context_size


def bytes_per_sequence(layouts: list[HookLayout], dtype: str, context_size: int) -> int:
    """What one sequence adds to a shard: its tokens (int64) and every hook's activations."""
    return 8 * context_size + sum(int(np.prod(l.shape)) for l in layouts) * np.dtype(dtype).itemsize


def make_plan(
    model, data: str | Path, patterns: list[str], context_size: int, batch_size: int | None = None,
    max_tokens: int | None = None, dtype: str | None = None, prepend_bos: bool = True, separator: str | None = "bos",
    column: str = "text", shard_size: int | None = None, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> Plan:
    """Check the options against the model and size batches and shards to ``memory_budget_mb``.

    The budget covers one batch in the model (its peak, as activation patching estimates it), the
    batches queued between the stages, and a shard being assembled while the previous one is written.
    """
    if not isinstance(context_size, int) or not 1 <= context_size <= model.cfg.n_ctx:
        raise InputError(f"--context-size must be in 1..{model.cfg.n_ctx} (the model's n_ctx), got {context_size}")
    dtype = dtype or model.cfg.dtype
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if separator not in SEPARATORS.values():
        raise InputError(f"separator must be 'bos', 'eos' or None, got {separator!r}")
    if max_tokens is not None and max_tokens < context_size:
        raise InputError(f"--max-tokens {max_tokens} is less than one sequence of --context-size {context_size}")
    if not patterns:
        raise InputError("give at least one hook pattern (--hooks), e.g. 'blocks.*.hook_resid_post'")
    hooks = select_hooks(model.hook_names, patterns)
    layouts = [hook_layout(name, model.cfg.to_dict(), context_size) for name in hooks]
    per_sequence = bytes_per_sequence(layouts, dtype, context_size)
    budget = memory_budget_mb * 2**20
    shard_bytes = budget / 4
    if batch_size is None:
        run_bytes = estimated_run_bytes(model.cfg, 1, context_size)
        batch_size = max(1, int((budget - 2 * shard_bytes) // (run_bytes + 3 * per_sequence)))
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if shard_size is None:
        shard_size = max(1, int(shard_bytes // per_sequence) // batch_size) * batch_size
    if shard_size < 1 or shard_size % batch_size:
        raise InputError(f"the shard size ({shard_size} sequences) must be a multiple of the batch size ({batch_size})")
    options = Options(str(Path(data).resolve()), column, hooks, context_size, batch_size, shard_size, max_tokens,
                      dtype, bool(prepend_bos), separator)
    return Plan(options, layouts)
