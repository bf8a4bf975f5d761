"""The ``graphlens`` command line: one module per command, registered here."""

from __future__ import annotations

import click

from graphlens.cli.export import export
from graphlens.cli.generate import generate


@click.group()
@click.version_option(package_name="graphlens")
def main() -> None:
    """Mechanistic-interpretability hooks on ONNX: export HF models, then analyse them with ONNX Runtime."""


main.add_command(export)
main.add_command(generate)

if __name__ == "__main__":
    main()
