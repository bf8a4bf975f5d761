"""``graphlens plot``: a figure for a prompt (attention, logit lens, head attribution, HTML attention viewer)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from graphlens.cli._common import check_layer, load_model, prompt_tokens, softmax

KINDS = ("attention", "logit-lens", "head-attribution", "attention-html")


@click.command()
@click.argument("bundle")
@click.argument("prompt")
@click.option("--kind", type=click.Choice(KINDS), default="attention", show_default=True)
@click.option("--layer", type=int, default=0, show_default=True, help="Layer (attention, attention-html).")
@click.option("--head", "heads", type=int, multiple=True, help="Head(s) to show (attention; default all).")
@click.option("--target", help="Token whose logit head-attribution explains (default: the top prediction).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (default: <kind>.png / .html).")
@click.option("--dpi", type=click.IntRange(min=20), default=100, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
def plot(bundle, prompt, kind, layer, heads, target, output, dpi, device):
    """Draw a figure of BUNDLE on PROMPT and save it in the format OUTPUT's suffix names (.png, .jpg, .pdf, .svg, ...;
    .html for attention-html)."""
    from graphlens import plot as gplot

    output = Path(output or f"{kind}.{'html' if kind == 'attention-html' else 'png'}")
    if kind == "attention-html" and output.suffix.lower() not in (".html", ".htm"):
        raise click.BadParameter(f"{output.name}: attention-html writes an HTML page; give a path ending in .html",
                                 param_hint="--output")
    if kind != "attention-html":
        try:
            gplot.image_format(output)  # refuse a suffix matplotlib cannot write before the model runs
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--output") from None
    model = load_model(bundle, device)
    tokens = prompt_tokens(model, prompt)
    str_tokens = model.to_str_tokens(tokens[0])
    if kind in ("attention", "attention-html"):
        check_layer(model, layer)
        for head in heads:
            if not 0 <= head < model.cfg.n_heads:
                raise click.BadParameter(
                    f"head {head} is out of range: the model has {model.cfg.n_heads} heads (0..{model.cfg.n_heads - 1})",
                    param_hint="--head",
                )
        name = f"blocks.{layer}.attn.hook_pattern"
        _, cache = model.run_with_cache(tokens, names_filter=[name], return_type=None)
        pattern = cache[name][0]
        if kind == "attention-html":
            gplot.attention_html(str_tokens, pattern, output, layer=layer)
        else:
            gplot.attention_patterns(pattern, str_tokens, heads=heads or None, layer=layer, path=output, dpi=dpi,
                                     title=f"Attention, layer {layer}")
    elif kind == "logit-lens":
        from graphlens.analysis.lens import logit_lens

        _, cache = model.run_with_cache(tokens)
        lens_logits, labels = logit_lens(cache)
        probs = softmax(lens_logits[:, 0])  # [layer, pos, vocab]
        top = probs.argmax(-1)
        annotations = [[model.to_string(int(t)) for t in row] for row in top]
        gplot.logit_lens(probs.max(-1), str_tokens, labels, annotations, path=output, dpi=dpi,
                         value_label="probability of the top token")
    else:
        from graphlens.analysis.lens import head_logit_attribution

        logits, cache = model.run_with_cache(tokens)
        if target is None:
            token = int(logits[0, -1].argmax())
        else:
            try:
                token = model.to_single_token(target)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--target") from None
        attrs = head_logit_attribution(cache, np.array([token]))[..., 0]
        gplot.head_attribution(attrs, path=output, dpi=dpi,
                               title=f"Direct logit attribution to {model.to_string(token)!r} (last position)")
    click.echo(str(output))
