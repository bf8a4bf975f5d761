"""``graphlens intervene``."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the new bundle.")
@click.option("--keep-hooks/--no-keep-hooks", default=False, show_default=True,
              help="Keep every hook as a graph output (default: only the model's own outputs, as an unhooked export).")
@click.option("--force", is_flag=True, help="Replace the bundle already in OUTPUT (a folder holding anything else is never replaced).")
@click.option("--value-root", type=click.Path(exists=True, file_okay=False),
              help="Folder value_file entries may come from (default: the spec's folder).")
def intervene(bundle, spec, output, keep_hooks, force, value_root):
    """Compile the intervention SPEC (JSON/YAML list of {hook, op: set|add|scale|zero, positions, heads,
    value | value_file}) into BUNDLE, writing a standalone bundle with no extra inputs to OUTPUT.
    """
    from graphlens.intervention import intervene as compile_bundle

    out = compile_bundle(bundle, spec, output, keep_hooks=keep_hooks, overwrite=force, value_root=value_root)
    click.echo(str(out))
