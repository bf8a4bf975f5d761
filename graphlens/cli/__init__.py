"""The ``graphlens`` command line: one module per command, registered here.

Every graphlens error (and a missing or unreadable file) is printed as ``Error: <one line>`` with a
non-zero exit status; ``graphlens --debug COMMAND`` shows the traceback instead.
"""

from __future__ import annotations

import warnings

import click

from graphlens.cli.attach import attach
from graphlens.cli.compare import compare
from graphlens.cli.deploy import deploy
from graphlens.cli.gradients import gradients
from graphlens.cli.export import export
from graphlens.cli.generate import generate
from graphlens.cli.harvest import harvest
from graphlens.cli.inspect import inspect
from graphlens.cli.intervene import intervene
from graphlens.cli.plot import plot
from graphlens.cli.quantize import quantize
from graphlens.cli.run import run
from graphlens.cli.view import view
from graphlens.cli.verify import verify
from graphlens.errors import BundleWarning, GraphlensError


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return text


class _Group(click.Group):
    """Turns graphlens errors into ``Error: <one line>`` (exit 1) unless ``--debug`` was given."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GraphlensError, OSError) as err:
            if ctx.params.get("debug"):
                raise
            if isinstance(err, OSError) and not isinstance(err, GraphlensError):
                where = f"{err.filename}: " if getattr(err, "filename", None) else ""
                raise click.ClickException(f"{where}{err.strerror or one_line(err)}") from None
            raise click.ClickException(one_line(err)) from None


_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """graphlens' own warnings as ``Warning: <message>`` (others as Python prints them)."""
    if issubclass(category, BundleWarning):
        return f"Warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


@click.group(cls=_Group)
@click.version_option(package_name="graphlens")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """Mechanistic-interpretability hooks on ONNX: export HF models, then analyse them with ONNX Runtime."""
    warnings.formatwarning = _one_line_warning


main.add_command(export)
main.add_command(generate)
main.add_command(inspect)
main.add_command(run)
main.add_command(plot)
main.add_command(intervene)
main.add_command(harvest)
main.add_command(deploy)
main.add_command(gradients)
main.add_command(view)
main.add_command(verify)
main.add_command(quantize)
main.add_command(compare)
main.add_command(attach)

if __name__ == "__main__":
    main()
