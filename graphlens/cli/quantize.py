"""``graphlens quantize``."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the quantized bundle.")
@click.option("--method", type=click.Choice(["int4", "int8"]), default="int4", show_default=True,
              help="int4: MatMulNBits, symmetric blocks (GenAI's CPU int4); int8: dynamic MatMulInteger.")
@click.option("--block-size", type=int, default=32, show_default=True, help="int4 block size along the input axis.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=4, show_default=True,
              help="MatMulNBits' accuracy_level (4: int8 activations inside the kernel, as GenAI's CPU models).")
@click.option("--force", is_flag=True, help="Replace the bundle already in OUTPUT.")
def quantize(bundle, output, method, block_size, accuracy_level, force):
    """Write a copy of BUNDLE with its linear layers' weights quantized; every hook and substitution input stays."""
    from graphlens.quantize.bundle import quantize_bundle

    out = quantize_bundle(bundle, output, method, overwrite=force, block_size=block_size, accuracy_level=accuracy_level,
                          progress=lambda message: click.echo(message, err=True))
    click.echo(str(out))
