"""``graphlens harvest``: a dataset's activations at chosen hooks, into sharded safetensors."""

from __future__ import annotations

import click

from graphlens.errors import GraphlensError


@click.command()
@click.argument("bundle")
@click.argument("data", type=click.Path(exists=False))
@click.option("--hooks", "patterns", multiple=True, required=True,
              help="Hook names, globs or substrings (repeat, or separate with commas), e.g. 'blocks.*.hook_resid_post'.")
@click.option("--context-size", type=int, required=True, help="Tokens per sequence.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per model run (default: from --memory-budget-mb).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Stop after this many tokens (whole sequences).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None, help="Stored dtype (default: the bundle's).")
@click.option("--prepend-bos/--no-prepend-bos", default=True, show_default=True, help="Begin every sequence with BOS.")
@click.option("--separator", type=click.Choice(["bos", "eos", "none"]), default="bos", show_default=True,
              help="Token between documents joined in one sequence.")
@click.option("--column", default="text", show_default=True, help="Text column of JSON Lines, Parquet or datasets DATA.")
@click.option("--resume", is_flag=True, help="Continue an interrupted harvest in OUT (same options).")
@click.option("--ray", "ray_address", default=None, help="'auto' (a local Ray instance) or a cluster address.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Ray actors running the model (default 1).")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Sequences per shard (a multiple of the batch size).")
@click.option("--memory-budget-mb", type=float, default=1024, show_default=True, help="Sizes batches and shards.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def harvest(bundle, data, patterns, context_size, out, batch_size, max_tokens, dtype, prepend_bos, separator, column,
            resume, ray_address, workers, shard_size, memory_budget_mb, device, quiet):
    """Run BUNDLE over DATA (text, .jsonl, .parquet, a datasets folder or .npy token ids) and store the activations."""
    from graphlens.harvest import harvest as run_harvest

    hooks = [p.strip() for value in patterns for p in value.split(",") if p.strip()]
    try:
        path = run_harvest(bundle, data, hooks, context_size, out, batch_size=batch_size, max_tokens=max_tokens,
                           dtype=dtype, prepend_bos=prepend_bos, separator=None if separator == "none" else separator,
                           column=column, resume=resume, ray=ray_address, workers=workers, shard_size=shard_size,
                           memory_budget_mb=memory_budget_mb, progress=not quiet, device=device)
    except (GraphlensError, OSError) as err:
        raise click.ClickException(str(err)) from None
    from graphlens.harvest import ActivationStore

    store = ActivationStore(path)
    click.echo(f"wrote {store.n_tokens} tokens × {len(store.hooks)} hooks in {len(store.shards)} shards to {path}", err=True)
