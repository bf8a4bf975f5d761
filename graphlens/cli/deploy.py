"""``graphlens deploy``."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the deployment bundle.")
@click.option("--hooks", "hooks", multiple=True, default=("all",), show_default=True,
              help="Hook outputs to keep: a glob, a substring, 'all' or 'none' (repeatable).")
@click.option("--patch", "patch", multiple=True,
              help="Sites whose .patch/.patch_mask/.add become required inputs: a glob, a substring or 'all' (repeatable).")
@click.option("--decoder/--no-decoder", default=True, show_default=True, help="Also deploy the KV-cache decoder graph.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def deploy(bundle, output, hooks, patch, decoder, force):
    """Write a bundle for ONNX Runtime's JavaScript bindings (and any consumer): only the hook outputs asked
    for, the substitution inputs of the --patch sites as required inputs, everything else pruned and folded.
    """
    from graphlens.deploy import deploy as write_deployment
    from graphlens.errors import GraphlensError

    try:
        out = write_deployment(bundle, output, hooks=[] if hooks == ("none",) else hooks, patch=patch,
                               decoder=decoder, overwrite=force)
    except (GraphlensError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(str(out))
