"""``graphlens inspect``: what a bundle holds: config, hooks with shapes and substitution inputs, files."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def graph_inputs(model_file: Path) -> set[str]:
    """Names of the ONNX graph's inputs (without loading external weight data)."""
    import onnx

    from graphlens.errors import BundleError

    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception as err:  # protobuf DecodeError, OSError: not a model
        raise BundleError(f"{model_file} is not a readable ONNX model ({type(err).__name__}); export the bundle again") from err
    return {i.name for i in proto.graph.input}


def bundle_summary(bundle: Path) -> dict:
    """The manifest's facts plus which substitution inputs the graph really has and the file sizes."""
    from graphlens.bundle import read_manifest
    from graphlens.bundle_files import inside

    manifest = read_manifest(bundle)
    inputs = graph_inputs(inside(bundle, manifest["model_file"], "model_file"))
    hooks = [
        {"name": h["name"], "shape": h["shape"], "dtype": h["dtype"],
         "inputs": {kind: name in inputs for kind, name in h["inputs"].items()}}
        for h in manifest["hooks"]
    ]
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
    return {
        "bundle": str(bundle),
        "architecture": manifest["architecture"],
        "source": manifest.get("source", {}),
        "format_version": manifest["format_version"],
        "intervention": manifest.get("intervention"),
        "quantization": {k: v for k, v in manifest["quantization"].items() if k != "weights"}
        if manifest.get("quantization") else None,
        "graphlens_version": manifest.get("graphlens_version"),
        "dtype": manifest["dtype"],
        "opset": manifest.get("opset"),
        "processing": manifest["processing"],
        "config": manifest["config"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "hooks": hooks,
        "files": files,
        "total_bytes": sum(files.values()),
    }


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--hooks/--no-hooks", default=True, show_default=True, help="List every hook.")
def inspect(bundle, as_json, hooks):
    """Show what BUNDLE holds: config, hooks (shapes, patch/add inputs), graph inputs/outputs, file sizes."""
    summary = bundle_summary(Path(bundle))
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    source = summary["source"]
    click.echo(f"bundle        {summary['bundle']}")
    click.echo(f"architecture  {summary['architecture']} ({', '.join(source.get('hf_architectures') or [])})")
    click.echo(f"source        {source.get('model')}")
    click.echo(f"format        v{summary['format_version']}, graphlens {summary['graphlens_version']}, "
               f"opset {summary['opset']}, {summary['dtype']}")
    done = [k for k, v in summary["processing"].items() if v]
    click.echo(f"processing    {', '.join(done) or 'none'}")
    if summary["quantization"]:
        q = summary["quantization"]
        click.echo(f"quantization  {q['method']} ({', '.join(q['ops'])}; block size {q['block_size']}, "
                   f"{'symmetric' if q['symmetric'] else 'asymmetric'})")
    click.echo("config")
    width = max(map(len, summary["config"]))
    for key, value in summary["config"].items():
        click.echo(f"  {key:<{width}}  {value}")
    for title in ("inputs", "outputs"):
        click.echo(title)
        for io in summary[title]:
            click.echo(f"  {io['name']}  {io['dtype']}  {_shape(io['shape'])}")
    if summary["intervention"]:
        entries = summary["intervention"].get("entries") or []
        click.echo(f"intervention  {len(entries)} entries compiled in from {summary['intervention'].get('source_bundle')}")
    click.echo(f"hooks         {len(summary['hooks'])}")
    if hooks and summary["hooks"]:
        name_w = max(len(h["name"]) for h in summary["hooks"])
        shape_w = max(len(_shape(h["shape"])) for h in summary["hooks"])
        click.echo(f"  {'name':<{name_w}}  {'shape':<{shape_w}}  patch  patch_mask  add")
        for h in summary["hooks"]:
            flags = [("yes" if h["inputs"].get(k) else "-").ljust(len(k)) for k in ("patch", "patch_mask", "add")]
            click.echo(f"  {h['name']:<{name_w}}  {_shape(h['shape']):<{shape_w}}  {'  '.join(flags)}".rstrip())
    click.echo("files")
    for name, size in summary["files"].items():
        click.echo(f"  {name:<30}  {_size(size):>9}")
    click.echo(f"  {'total':<30}  {_size(summary['total_bytes']):>9}")
