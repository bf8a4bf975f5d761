"""Figures for looking at a model: attention patterns, logit lens, head attribution, patching results.

Every function returns a matplotlib ``Figure`` (drawn with the Agg canvas, no pyplot state) and, given
``path=``, saves it as a PNG of ``figsize × dpi`` pixels. ``attention_html`` writes a self-contained HTML
attention viewer. matplotlib is an optional dependency: ``pip install graphlens[plot]``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from jaxtyping import Float
from graphlens.errors import InputError, MissingDependencyError


def _figure(figsize: tuple[float, float], dpi: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("graphlens.plot needs matplotlib: pip install 'graphlens[plot]' (or pip install matplotlib)") from None
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def image_format(path: str | Path) -> str:
    """The image format ``path``'s suffix names (png, jpg, pdf, svg, ...); an InputError for one matplotlib
    cannot write (or no suffix)."""
    _figure((1, 1), 10)  # matplotlib present?
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in supported:
        raise InputError(f"{Path(path).name}: name the image format with the suffix, one of "
                         f"{', '.join('.' + s for s in sorted(supported))}")
    return suffix


def _finish(fig, path: str | Path | None):
    if path is not None:
        fig.savefig(path, dpi=fig.dpi, format=image_format(path))
    return fig


def _check_labels(labels: Sequence[str] | None, n: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise InputError(f"{len(labels)} {what} labels for an axis of {n}: give one label per row/column")
    return labels


def _heatmap(fig, ax, values, x_labels, y_labels, cmap: str, centred: bool, colorbar_label: str | None = None):
    """Draw ``values`` [rows, cols] on ``ax`` with tick labels; ``centred`` puts 0 in the middle of the colours."""
    kwargs = {}
    if centred:
        bound = float(np.nanmax(np.abs(values))) or 1.0
        kwargs = dict(vmin=-bound, vmax=bound)
    image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest", **kwargs)
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90, fontsize=7)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), y_labels, fontsize=7)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        colorbar.set_label(colorbar_label)
    return image


def _matrix(values, ndim: int | None, what: str) -> np.ndarray:
    values = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    if ndim is not None and values.ndim != ndim:
        raise InputError(f"{what} must have {ndim} dimensions; got shape {values.shape}")
    return values


def attention_patterns(
    pattern: Float[np.ndarray, "n_heads query_pos key_pos"],
    tokens: Sequence[str],
    heads: Sequence[int] | None = None,
    layer: int | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    max_cols: int = 4,
    panel_size: float = 3.2,
    dpi: int = 100,
):
    """One heatmap per chosen head: queries down, keys across, both labelled with ``tokens``.

    ``pattern`` is a cache entry without its batch dim (``cache["pattern", L][0]``), or one head ``[q, k]``.
    """
    pattern = _matrix(pattern, None, "pattern")
    if pattern.ndim == 2:
        pattern = pattern[None]
    if pattern.ndim != 3:
        raise InputError(f"pattern must be [n_heads, query_pos, key_pos] (drop the batch dim); got {pattern.shape}")
    n_heads, n_query, n_key = pattern.shape
    heads = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad or not heads:
        raise InputError(f"heads {bad or heads} out of range: the pattern has {n_heads} heads (0..{n_heads - 1})")
    tokens = _check_labels(tokens, n_key, "token")
    if n_query != n_key:
        raise InputError(f"pattern is {n_query} queries × {n_key} keys; give the full square pattern")
    cols = min(max_cols, len(heads))
    rows = -(-len(heads) // cols)
    fig = _figure((panel_size * cols + 0.8, panel_size * rows + 0.6), dpi)
    for i, head in enumerate(heads):
        ax = fig.add_subplot(rows, cols, i + 1)
        _heatmap(fig, ax, pattern[head], tokens, tokens, "Blues", centred=False)
        ax.set_title(f"L{layer}H{head}" if layer is not None else f"head {head}", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def logit_lens(
    values: Float[np.ndarray, "layer pos"],
    tokens: Sequence[str],
    layer_labels: Sequence[str],
    annotations: Sequence[Sequence[str]] | None = None,
    path: str | Path | None = None,
    title: str = "Logit lens",
    value_label: str = "probability",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
):
    """Layer × position heatmap (e.g. the probability of the top or the correct token), optionally annotated."""
    values = _matrix(values, 2, "values")
    n_layers, n_pos = values.shape
    tokens = _check_labels(tokens, n_pos, "token")
    layer_labels = _check_labels(layer_labels, n_layers, "layer")
    fig = _figure(figsize or (max(4.0, 0.7 * n_pos + 2.0), max(3.0, 0.35 * n_layers + 1.5)), dpi)
    ax = fig.add_subplot()
    image = _heatmap(fig, ax, values, tokens, layer_labels, "viridis", centred=False, colorbar_label=value_label)
    if annotations is not None:
        bright = image.norm(values) > 0.6  # dark text on the light end of viridis
        for row in range(n_layers):
            for col in range(n_pos):
                ax.text(col, row, str(annotations[row][col])[:8], ha="center", va="center", fontsize=6,
                        color="black" if bright[row, col] else "white")
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.tight_layout()
    return _finish(fig, path)


def head_attribution(
    values: Float[np.ndarray, "n_layers n_heads"],
    path: str | Path | None = None,
    title: str = "Direct logit attribution per head",
    value_label: str = "logit attribution",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
):
    """Layer × head heatmap of a per-head score (e.g. ``head_logit_attribution``), 0 in the middle."""
    values = _matrix(values, 2, "values")
    n_layers, n_heads = values.shape
    fig = _figure(figsize or (max(5.5, 0.45 * n_heads + 2.0), max(3.0, 0.4 * n_layers + 1.5)), dpi)
    ax = fig.add_subplot()
    _heatmap(fig, ax, values, [f"H{h}" for h in range(n_heads)], [f"L{l}" for l in range(n_layers)], "RdBu",
             centred=True, colorbar_label=value_label)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def patching_results(
    values: Float[np.ndarray, "rows cols"],
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    path: str | Path | None = None,
    title: str = "Activation patching",
    x_title: str = "position",
    y_title: str = "layer",
    value_label: str = "patching metric",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
):
    """Heatmap of patching results, e.g. ``[layer, pos]`` from a residual-stream patching sweep."""
    values = _matrix(values, 2, "values")
    rows, cols = values.shape
    x_labels = _check_labels(x_labels, cols, "x") or [str(c) for c in range(cols)]
    y_labels = _check_labels(y_labels, rows, "y") or [str(r) for r in range(rows)]
    fig = _figure(figsize or (max(4.0, 0.6 * cols + 2.0), max(3.0, 0.4 * rows + 1.5)), dpi)
    ax = fig.add_subplot()
    _heatmap(fig, ax, values, x_labels, y_labels, "RdBu", centred=True, colorbar_label=value_label)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    ax.set_title(title)
    fig.tight_layout()
    return _finish(fig, path)


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.tok{display:inline-block;padding:2px 3px;margin:1px;border-radius:3px;cursor:pointer;white-space:pre;
font-family:monospace;border:1px solid #ddd}
.sel{outline:2px solid #d62728}
#heads button{margin:2px}#heads button.on{background:#1f77b4;color:#fff}
table{border-collapse:collapse;margin-top:1em}td{width:14px;height:14px;padding:0}
</style></head><body>
<h2>__TITLE__</h2>
<div id="heads"></div>
<p>Hover or click a token (the query) to colour every token by how much it attends there (keys).</p>
<div id="tokens"></div>
<table id="grid"></table>
<script>
const TOKENS = __TOKENS__;
const PATTERN = __PATTERN__;  // [head][query][key]
const HEADS = __HEADS__;
let head = 0, query = TOKENS.length - 1;
function colour(v){return `rgba(31,119,180,${Math.min(1, v).toFixed(3)})`;}
function draw(){
  document.querySelectorAll('#heads button').forEach((b,i)=>b.className = i===head ? 'on' : '');
  const row = PATTERN[head][query];
  document.querySelectorAll('.tok').forEach((el,k)=>{
    el.style.background = k <= query ? colour(row[k]) : '#fff';
    el.className = 'tok' + (k===query ? ' sel' : '');
    el.title = `attention ${query} -> ${k}: ${row[k].toFixed(4)}`;
  });
  const grid = document.getElementById('grid'); grid.innerHTML = '';
  PATTERN[head].forEach((r,q)=>{const tr = grid.insertRow();
    r.forEach((v,k)=>{const td = tr.insertCell(); td.style.background = colour(v);
      td.title = `${JSON.stringify(TOKENS[q])} -> ${JSON.stringify(TOKENS[k])}: ${v.toFixed(4)}`;});});
}
HEADS.forEach((name,i)=>{const b = document.createElement('button'); b.textContent = name;
  b.onclick = ()=>{head = i; draw();}; document.getElementById('heads').appendChild(b);});
TOKENS.forEach((t,i)=>{const s = document.createElement('span'); s.textContent = t;
  s.onmouseenter = s.onclick = ()=>{query = i; draw();}; document.getElementById('tokens').appendChild(s);});
draw();
</script></body></html>
"""


def attention_html(
    tokens: Sequence[str],
    pattern: Float[np.ndarray, "n_heads query_pos key_pos"],
    path: str | Path,
    layer: int | None = None,
    title: str | None = None,
) -> Path:
    """Write a self-contained HTML attention viewer (no server, no external scripts); returns its path."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{Path(path).name}: the attention viewer is an HTML page; give a path ending in .html")
    pattern = _matrix(pattern, None, "pattern")
    if pattern.ndim == 2:
        pattern = pattern[None]
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise InputError(f"pattern must be [n_heads, pos, pos] (drop the batch dim); got shape {pattern.shape}")
    tokens = _check_labels(tokens, pattern.shape[-1], "token")
    prefix = f"L{layer}" if layer is not None else ""
    heads = [f"{prefix}H{h}" for h in range(pattern.shape[0])]
    title = title or (f"Attention, layer {layer}" if layer is not None else "Attention")

    def js(value) -> str:  # JSON that cannot close the script element
        return json.dumps(value).replace("</", "<\\/")

    page = (
        _HTML.replace("__TITLE__", html.escape(title))
        .replace("__TOKENS__", js(tokens))
        .replace("__PATTERN__", js(np.round(pattern, 5).tolist()))
        .replace("__HEADS__", js(heads))
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["attention_html", "attention_patterns", "head_attribution", "logit_lens", "patching_results"]
