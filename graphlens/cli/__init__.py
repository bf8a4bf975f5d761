"""The ``graphlens`` command line: one module per command, registered here."""

from __future__ import annotations

import click

from graphlens.cli.deploy import deploy
from graphlens.cli.export import export
from graphlens.cli.generate import generate
from graphlens.cli.harvest import harvest
from graphlens.cli.inspect import inspect
from graphlens.cli.intervene import intervene
from graphlens.cli.plot import plot
from graphlens.cli.run import run
from graphlens.cli.view import view


@click.group()
@click.version_option(package_name="graphlens")
def main() -> None:
    """Mechanistic-interpretability hooks on ONNX: export HF models, then analyse them with ONNX Runtime."""


main.add_command(export)
main.add_command(generate)
main.add_command(inspect)
main.add_command(run)
main.add_command(plot)
main.add_command(intervene)
main.add_command(harvest)
main.add_command(deploy)
main.add_command(view)

if __name__ == "__main__":
    main()
