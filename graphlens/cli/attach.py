"""``graphlens attach``."""

from __future__ import annotations

import click

from graphlens.errors import InputError


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        hook, sep, path = value.partition("=")
        if not sep or not hook or not path:
            raise InputError(f"{option} takes HOOK=PATH (e.g. {option} blocks.3.hook_resid_pre=./sae), got {value!r}")
        if hook in pairs:
            raise InputError(f"{option} names {hook} twice; give one per hook")
        pairs[hook] = path
    return pairs


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--sae", "saes", multiple=True, metavar="HOOK=FOLDER",
              help="An SAELens SAE folder (cfg.json + sae_weights.safetensors) read at HOOK; repeatable.")
@click.option("--error-term", is_flag=True, help="Add each SAE's error back (hook_sae_error): the model's output is unchanged.")
@click.option("--probe", "probes", multiple=True, metavar="HOOK=FILE.npz",
              help="A linear probe (arrays W [d, n] and b [n]) on HOOK, output <HOOK>.probe.<file stem>; repeatable.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the new bundle.")
@click.option("--force", is_flag=True, help="Replace the bundle already in OUTPUT (a folder holding anything else is never replaced).")
def attach(bundle, saes, error_term, probes, output, force):
    """Write BUNDLE with SAEs, transcoders and probes spliced into its graphs to OUTPUT; their hooks are named
    as SAELens' HookedSAETransformer names them (HOOK.hook_sae_acts_post, ...)."""
    from graphlens.saes import attach as attach_bundle

    out = attach_bundle(bundle, _pairs(saes, "--sae"), output, use_error_term=error_term,
                        probes=_pairs(probes, "--probe"), overwrite=force)
    click.echo(str(out))
