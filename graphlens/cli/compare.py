"""``graphlens compare``."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("bundle_a", type=click.Path(exists=True, file_okay=False))
@click.argument("bundle_b", type=click.Path(exists=True, file_okay=False))
@click.argument("prompts")
@click.option("-n", "--new-tokens", type=click.IntRange(min=0), default=16, show_default=True,
              help="Greedy tokens each bundle generates per prompt (0: no generation).")
@click.option("--names", default=None, help="Only the hooks matching this glob or substring.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="compare.png", show_default=True,
              help="The figure (format from the suffix: .png, .pdf, .svg, ...).")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), help="Also write the numbers as JSON here.")
def compare(bundle_a, bundle_b, prompts, new_tokens, names, output, as_json):
    """Where BUNDLE_B's activations depart from BUNDLE_A's (e.g. int4 against float) on PROMPTS (a text file,
    one prompt per line, or a prompt): per hook the relative error and cosine similarity, per layer in a
    figure, and the greedy tokens both agree on."""
    from graphlens import plot as gplot
    from graphlens.quantize.compare import compare_bundles, read_prompts
    from graphlens.sites import hooks_matching

    gplot.image_format(output)  # a suffix matplotlib cannot write fails before the models run
    names_filter = (lambda name: bool(hooks_matching([name], names))) if names else None
    result = compare_bundles(bundle_a, bundle_b, read_prompts(prompts), new_tokens=new_tokens, names_filter=names_filter)
    if not result.hooks:
        raise click.BadParameter(f"{names!r} matches no hook the bundles share", param_hint="--names")
    click.echo(result.table())
    result.plot(output)
    if as_json:
        with open(as_json, "w", encoding="utf-8") as file:
            json.dump(result.as_dict(), file, indent=1)
    click.echo(str(output))
