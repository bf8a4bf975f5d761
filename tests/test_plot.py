"""graphlens.plot: PNGs of the expected size, token labels on the axes, the HTML viewer, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from graphlens import HookedTransformer, plot  # noqa: E402
from graphlens.analysis.lens import head_logit_attribution, logit_lens  # noqa: E402

PROMPT = "When Mary and John went to the store"


@pytest.fixture(scope="module")
def run(small_bundle):
    model = HookedTransformer.from_pretrained(small_bundle)
    tokens = model.to_tokens(PROMPT)
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, model.to_str_tokens(tokens), logits, cache


def assert_png(path, fig) -> None:
    image = imread(path)
    width, height = fig.get_size_inches() * fig.dpi
    assert image.shape[:2] == (round(height), round(width))
    assert image[..., :3].std() > 0.05, "the image is blank"


def tick_texts(axis_labels) -> list[str]:
    return [t.get_text() for t in axis_labels]


def test_attention_patterns(run, tmp_path):
    model, _, str_tokens, _, cache = run
    fig = plot.attention_patterns(cache["pattern", 1][0], str_tokens, heads=[0, 2, 3], layer=1,
                                  path=tmp_path / "attn.png", dpi=80)
    assert_png(tmp_path / "attn.png", fig)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["L1H0", "L1H2", "L1H3"]
    for ax in axes:
        assert tick_texts(ax.get_xticklabels()) == str_tokens
        assert tick_texts(ax.get_yticklabels()) == str_tokens
        np.testing.assert_allclose(ax.images[0].get_array(), cache["pattern", 1][0, int(ax.get_title()[-1])])


def test_logit_lens_plot(run, tmp_path):
    model, tokens, str_tokens, logits, cache = run
    lens_logits, labels = logit_lens(cache)
    np.testing.assert_allclose(lens_logits[-1], logits, atol=1e-4)  # final_post row is the model's output
    log_probs = lens_logits[:, 0] - np.log(np.exp(lens_logits[:, 0]).sum(-1, keepdims=True))
    top = log_probs.argmax(-1)
    annotations = [[model.to_string(t) for t in row] for row in top]
    fig = plot.logit_lens(np.exp(log_probs.max(-1)), str_tokens, labels, annotations, path=tmp_path / "lens.png")
    assert_png(tmp_path / "lens.png", fig)
    ax = fig.axes[0]
    assert tick_texts(ax.get_xticklabels()) == str_tokens
    assert tick_texts(ax.get_yticklabels()) == labels == ["0_pre", "1_pre", "final_post"]
    assert [t.get_text() for t in ax.texts][: len(str_tokens)] == [a[:8] for a in annotations[0]]


def test_head_attribution_plot(run, tmp_path):
    model, tokens, _, logits, cache = run
    attrs = head_logit_attribution(cache, logits[:, -1].argmax(-1))
    assert attrs.shape == (model.cfg.n_layers, model.cfg.n_heads, 1)
    fig = plot.head_attribution(attrs[..., 0], path=tmp_path / "heads.png")
    assert_png(tmp_path / "heads.png", fig)
    ax = fig.axes[0]
    assert tick_texts(ax.get_xticklabels()) == [f"H{h}" for h in range(model.cfg.n_heads)]
    assert tick_texts(ax.get_yticklabels()) == [f"L{l}" for l in range(model.cfg.n_layers)]
    low, high = ax.images[0].get_clim()
    assert low == -high  # zero is the middle colour


def test_patching_results_plot(tmp_path):
    values = np.random.default_rng(0).standard_normal((3, 5))
    labels = ["<bos>", "a", "b", "c", "d"]
    fig = plot.patching_results(values, x_labels=labels, path=tmp_path / "patch.png", figsize=(6, 4), dpi=50)
    assert_png(tmp_path / "patch.png", fig)
    assert imread(tmp_path / "patch.png").shape[:2] == (200, 300)
    assert tick_texts(fig.axes[0].get_xticklabels()) == labels
    assert tick_texts(fig.axes[0].get_yticklabels()) == ["0", "1", "2"]


def test_figure_without_path_is_not_saved(tmp_path):
    fig = plot.patching_results(np.eye(3))
    assert fig.axes and not list(tmp_path.iterdir())


def test_attention_html(run, tmp_path):
    _, _, str_tokens, _, cache = run
    pattern = cache["pattern", 0][0]
    out = plot.attention_html(str_tokens + [], pattern, tmp_path / "attn.html", layer=0)
    page = out.read_text()
    assert "<script src" not in page and "http" not in page  # self-contained
    data = json.loads(re.search(r"const PATTERN = (.*?);  //", page).group(1))
    np.testing.assert_allclose(data, pattern, atol=1e-5)
    assert json.loads(re.search(r"const TOKENS = (.*?);\n", page).group(1)) == str_tokens
    tricky = plot.attention_html(["</script>", "<b>"], np.full((1, 2, 2), 0.5), tmp_path / "t.html")
    assert "</script>\"" not in tricky.read_text()


@pytest.mark.parametrize("call, message", [
    (lambda: plot.attention_patterns(np.ones((2, 3, 3)), ["a", "b"]), "2 token labels for an axis of 3"),
    (lambda: plot.attention_patterns(np.ones((2, 3, 3)), ["a", "b", "c"], heads=[5]), "out of range"),
    (lambda: plot.attention_patterns(np.ones((1, 2, 3, 3)), ["a", "b", "c"]), "drop the batch dim"),
    (lambda: plot.logit_lens(np.ones((2, 3)), ["a", "b", "c"], ["0"]), "1 layer labels for an axis of 2"),
    (lambda: plot.head_attribution(np.ones(4)), "2 dimensions"),
    (lambda: plot.attention_html(["a"], np.ones((2, 3)), "x.html"), "pos, pos"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
