"""``graphlens export``."""

from __future__ import annotations

from pathlib import Path

import click

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "shipped" / "pydoc-gpt2"


@click.command()
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Bundle folder (default: models/<name>).")
@click.option("--fold-ln/--no-fold-ln", default=True, show_default=True, help="Fold norm weights into the next weights.")
@click.option("--center-writing-weights/--no-center-writing-weights", default=True, show_default=True)
@click.option("--center-unembed/--no-center-unembed", default=True, show_default=True)
@click.option("--fold-value-biases/--no-fold-value-biases", default=True, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Weights dtype, loaded from the HF weights directly (no float32 copy).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--external-data/--no-external-data", default=None, help="Weights in model.onnx.data, one copy read by model.onnx and decoder.onnx (the default); "
              "--no-external-data: a single-file model.onnx (decoder.onnx then holds its own copy).")
@click.option("--patch-sites", type=click.Choice(["all", "resid", "none"]), default="all", show_default=True,
              help="Sites that get .patch/.patch_mask/.add inputs (resid: the residual stream only).")
@click.option("--quantize", type=click.Choice(["int4", "int8"]), default=None,
              help="Quantize the linear layers' weights (ONNX Runtime: int4 MatMulNBits, int8 dynamic); hooks stay float.")
@click.option("--gradients", is_flag=True, help="Also write backward.onnx: forward + backward, `<hook>_grad` outputs for every hook.")
@click.option("--force", is_flag=True, help="Replace the bundle already in OUTPUT (a folder holding anything else is never replaced).")
def export(model, output, fold_ln, center_writing_weights, center_unembed, fold_value_biases, dtype, opset, external_data,
           patch_sites, quantize, gradients, force):
    """Export MODEL (a hub id such as gpt2, or a local HF folder) to a graphlens bundle.

    Without MODEL, exports the small trained model shipped in models/shipped/pydoc-gpt2.
    """
    from graphlens.export.pipeline import export_bundle
    from graphlens.rewrite.weights import Processing

    if model is None:
        if not (SHIPPED_MODEL / "config.json").is_file():
            raise click.UsageError(f"give a MODEL to export (the shipped model is missing from {SHIPPED_MODEL})")
        model = str(SHIPPED_MODEL)
        output = output or "models/pydoc-gpt2"
        click.echo(f"No MODEL given: exporting the shipped demo model {SHIPPED_MODEL.name}.", err=True)
    processing = Processing(fold_ln, center_writing_weights, center_unembed, fold_value_biases)
    out = export_bundle(model, output, processing=processing, dtype=dtype, opset=opset, external_data=external_data,
                        patch_sites=patch_sites, overwrite=force, quantize=quantize,
                        gradients=gradients)
    click.echo(str(out))

