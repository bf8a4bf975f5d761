"""``graphlens verify``: check every file of a bundle against the sizes and SHA-256 its manifest records."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle")
def verify(bundle):
    """Check BUNDLE's files against the SHA-256 and sizes in its graphlens.json; names the damaged file."""
    from graphlens.bundle import verify_bundle

    names = verify_bundle(bundle)
    click.echo(f"{bundle}: {len(names)} files match their SHA-256 ({', '.join(names)})")
