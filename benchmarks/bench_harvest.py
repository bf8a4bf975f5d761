"""Harvesting two residual hooks of a gpt2-small-shaped model: tokens/s, side by side in one run.

    python -m benchmarks.bench_harvest [--sequences 64] [--context-size 128] [--batch-size 8] [--rounds 3] [--no-ray]

Rows (all on the same pre-tokenized sequences, batch ``--batch-size``, fp32, CPU):
- graphlens forward (logits): the plain forward's tokens/s;
- graphlens run_with_cache of the two hooks, nothing written (the compute the harvest has to do);
- graphlens harvest to sharded safetensors (reading, model and writing overlapped);
- SAELens' activation caching (``CacheActivationsRunner``, on TransformerLens 3.9 with the same weights),
  which caches one hook per run: it gets only the later hook, so its row is the cost of one of the two;
  (these four: the median of ``--rounds`` interleaved rounds)
- ``--ray auto`` with 1 and 2 actors (a Ray instance started once, outside the timing; the actors'
  model loading is inside it).

Targets: harvest ≥ 0.9× the plain forward's tokens/s; ≥ 2× SAELens'.

SAELens is a benchmark-only dependency, not an extra (it brings some twenty packages graphlens does not
need): install it beside the main environment, e.g. ``python3 -m venv /work/venv-saelens``, a ``.pth`` file pointing at the main
environment's site-packages, then ``/work/venv-saelens/bin/pip install sae-lens==6.54.12``, and run this
with that interpreter. Without it the SAELens row is skipped.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bundle, hf_folder, log, tl_model
from graphlens import HookedTransformer
from graphlens.harvest import ActivationStore, harvest

HOOKS = ["blocks.5.hook_resid_post", "blocks.11.hook_resid_post"]


def tokens_per_s(fn, n_tokens: int) -> float:
    start = time.perf_counter()
    fn()
    return n_tokens / (time.perf_counter() - start)


def sae_lens_caching(source: Path, tokens: np.ndarray, batch: int, work: Path):
    """A function that runs SAELens' activation caching once (into a fresh folder), or None without SAELens."""
    try:
        import datasets
        import sae_lens.cache_activations_runner as runner
        from sae_lens.config import CacheActivationsRunnerConfig
    except ImportError:
        log("sae-lens is not installed here: SAELens row skipped (see the docstring)")
        return None
    tl = tl_model(source)
    runner.load_model = lambda *args, **kwargs: tl  # the hub is unreachable: hand it the local model
    n_seq, ctx = tokens.shape
    dataset = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})  # pre-tokenized, as graphlens' .npy
    runs = iter(range(1000))

    def run() -> None:
        cfg = CacheActivationsRunnerConfig(
            dataset_path="local", model_name="gpt2-small-random", model_batch_size=batch, hook_name=HOOKS[-1],
            d_in=tl.cfg.d_model, training_tokens=n_seq * ctx, context_size=ctx, shuffle=False, dtype="float32",
            new_cached_activations_path=str(work / f"sae{next(runs)}"), device="cpu", prepend_bos=False,
            streaming=False, buffer_size_gb=max(batch, n_seq // 4) * ctx * tl.cfg.d_model * 4 / 1e9,  # ~4 shards
        )
        runner.CacheActivationsRunner(cfg, override_dataset=dataset).run()

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    source = hf_folder()
    folder = bundle(source)
    tokens = np.random.default_rng(0).integers(0, 50257, size=(args.sequences, args.context_size))
    n_tokens = tokens.size
    work = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
    np.save(work / "tokens.npy", tokens)
    rows: list[tuple[str, float]] = []
    try:
        model = HookedTransformer.from_pretrained(folder, device="cpu")
        batches = [tokens[i:i + args.batch_size] for i in range(0, len(tokens), args.batch_size)]
        model(batches[0]), model.run_with_cache(batches[0], names_filter=HOOKS, return_type=None)  # warm sessions

        def local(round_: int):
            harvest(model, work / "tokens.npy", HOOKS, args.context_size, work / f"local{round_}",
                    batch_size=args.batch_size, progress=False)

        sae_lens = sae_lens_caching(source, tokens, args.batch_size, work)
        measured: dict[str, list[float]] = {}
        for round_ in range(args.rounds):  # interleaved, so a busy moment of the machine hits every row
            log(f"round {round_ + 1}/{args.rounds}")
            for label, fn in (
                ("graphlens forward (logits)", lambda: [model(b) for b in batches]),
                ("graphlens run_with_cache, 2 hooks, no writing",
                 lambda: [model.run_with_cache(b, names_filter=HOOKS, return_type=None) for b in batches]),
                ("graphlens harvest, 2 hooks -> safetensors", lambda: local(round_)),
                ("SAELens CacheActivationsRunner, 1 hook", sae_lens),
            ):
                if fn is not None:
                    measured.setdefault(label, []).append(tokens_per_s(fn, n_tokens))
        rows += [(label, statistics.median(values)) for label, values in measured.items()]
        assert ActivationStore(work / "local0").n_tokens == n_tokens
        del model, sae_lens
        if not args.no_ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 2**20)
            try:
                for workers in (1, 2):
                    log(f"ray, {workers} worker(s)")
                    out = work / f"ray{workers}"
                    rows.append((f"graphlens harvest --ray, {workers} worker(s)", tokens_per_s(lambda: harvest(
                        folder, work / "tokens.npy", HOOKS, args.context_size, out, batch_size=args.batch_size,
                        ray="auto", workers=workers, progress=False), n_tokens)))
                    same = all((out / p.name).read_bytes() == p.read_bytes() for p in (work / "local0").iterdir())
                    log(f"  same files as the local run: {same}")
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ngpt2-small shape (12 layers, d_model 768), random weights, fp32, CPU; {args.sequences} sequences x "
          f"{args.context_size} tokens, batch {args.batch_size}; hooks {', '.join(HOOKS)}")
    values = dict(rows)
    base = values["graphlens forward (logits)"]
    print(f"{'':48s} {'tokens/s':>10s}  ratio vs forward")
    for label, value in rows:
        print(f"{label:48s} {value:10.0f}  {value / base:6.2f}x")
    harvest_rate = values["graphlens harvest, 2 hooks -> safetensors"]
    print(f"\nharvest / forward:               {harvest_rate / base:.2f}x (target >= 0.9)")
    print(f"harvest / run_with_cache:        {harvest_rate / values['graphlens run_with_cache, 2 hooks, no writing']:.2f}x")
    if "SAELens CacheActivationsRunner, 1 hook" in values:
        print(f"harvest / SAELens:               {harvest_rate / values['SAELens CacheActivationsRunner, 1 hook']:.2f}x "
              f"(target >= 2; SAELens cached 1 hook, graphlens 2)")
    if "graphlens harvest --ray, 2 worker(s)" in values:
        print(f"ray 2 workers / 1 worker:        "
              f"{values['graphlens harvest --ray, 2 worker(s)'] / values['graphlens harvest --ray, 1 worker(s)']:.2f}x")


if __name__ == "__main__":
    main()
