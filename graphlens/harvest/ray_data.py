"""``harvest(..., ray=...)``: the same harvest on Ray Data (``pip install 'graphlens[ray]'``).

read → tokenize (one read task streaming the plan's token batches, so windows and batches are exactly
the local run's) → ``map_batches`` on a pool of actors, each holding one ONNX Runtime model → the
driver writes the shards in order (``preserve_order``), through the same writer as a local run.
BUNDLE and DATA must be readable at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from graphlens.bundle import read_manifest
from graphlens.errors import HarvestError
from graphlens.harvest.plan import Plan
from graphlens.harvest.shards import TOKENS
from graphlens.runtime.session import THREADS_ENV

OBJECT_STORE_BYTES = 512 * 2**20  # of a local instance started with ray="auto" (spills to disk beyond)


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise HarvestError("--ray needs Ray Data: pip install 'graphlens[ray]'") from None
    return ray


def _tokenizer_only(bundle_dir: Path) -> SimpleNamespace:
    """What reading and tokenizing need of a model (no ONNX graph loaded in the read task)."""
    from graphlens.runtime.tokenizer import TokenizerAdapter

    manifest = read_manifest(bundle_dir)
    return SimpleNamespace(bundle_dir=bundle_dir, tokenizer=TokenizerAdapter.from_folder(bundle_dir),
                           cfg=SimpleNamespace(d_vocab=manifest["config"]["d_vocab"]))


def _datasource(bundle_dir: Path, plan: Plan, skip: int):
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    from graphlens.harvest.run import token_batches

    def read():
        for tokens in token_batches(_tokenizer_only(bundle_dir), plan, skip):
            yield BlockAccessor.batch_to_block({TOKENS: tokens})

    class TokenBatches(Datasource):
        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(read, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))]

        def estimate_inmemory_data_size(self):
            return None

        def get_name(self):
            return "GraphlensTokenBatches"

    return TokenBatches()


class _Harvester:
    """A Ray actor: one model (one ONNX Runtime session per request) running token batches."""

    def __init__(self, bundle_dir: str, plan: Plan, device: str | None, threads: int):
        os.environ[THREADS_ENV] = str(threads)
        from graphlens import HookedTransformer

        self.model = HookedTransformer.from_pretrained(bundle_dir, device=device)
        self.plan = plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from graphlens.harvest.run import run_batch

        return run_batch(self.model, np.ascontiguousarray(batch[TOKENS], dtype=np.int64), self.plan)


def run_on_ray(bundle_dir: Path, plan: Plan, skip: int, writer, bar, address: str, workers: int | None,
               device: str | None) -> None:
    """Run the plan's batches after ``skip`` sequences on Ray; hand each result to ``writer`` in order."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address == "auto":  # a fresh local instance, stopped at the end
            ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=OBJECT_STORE_BYTES, **options)
        else:
            ray.init(address=address, **options)
        started = True
    try:
        workers = workers or 1
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per_worker = max(cpus / workers, 0.01) if cpus >= workers else 1.0
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = ray.data.read_datasource(_datasource(Path(bundle_dir).resolve(), plan, skip), override_num_blocks=1,
                                           num_cpus=0)  # the read task is light: the CPUs go to the actors
        dataset = dataset.map_batches(
            _Harvester, fn_constructor_args=(str(Path(bundle_dir).resolve()), plan, device, max(1, int(per_worker))),
            batch_size=plan.options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=per_worker,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            writer.add(batch)
            bar.advance(batch[TOKENS].size)
    finally:
        if started:
            ray.shutdown()
