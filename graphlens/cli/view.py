"""``graphlens view``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--port", default=8000, show_default=True, type=int, help="Port to serve the page on (127.0.0.1).")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Write the static page to this folder and exit.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def view(bundle, port, out, force):
    """Open BUNDLE in the browser: a static page that runs it with onnxruntime-web (attention patterns, logit
    lens, head attribution, head ablation), computed client-side with no Python server behind it.
    """
    from graphlens.errors import GraphlensError
    from graphlens.view import build_view, serve

    try:
        if out:
            click.echo(str(build_view(bundle, out, overwrite=force)))
            return
        with tempfile.TemporaryDirectory(prefix="graphlens-view-") as tmp:
            folder = build_view(bundle, Path(tmp) / "page")
            server = serve(folder, port)
            click.echo(f"graphlens view: http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
    except (GraphlensError, FileExistsError, OSError) as err:
        raise click.ClickException(str(err)) from None
