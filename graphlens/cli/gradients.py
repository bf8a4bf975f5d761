"""``graphlens gradients``."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the new bundle.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def gradients(bundle, output, force):
    """Write BUNDLE with backward.onnx added: forward + backward in one graph, `<hook>_grad` outputs for
    every hook (the gradients of sum(logits * logits_grad)), weights shared with model.onnx.data.
    """
    from graphlens.errors import GraphlensError
    from graphlens.grad.bundle_file import add_gradients

    try:
        out = add_gradients(bundle, output, overwrite=force)
    except (GraphlensError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(str(out))
