"""``graphlens inspect``, ``run`` and ``plot`` through click's CliRunner, checked against TL 3.9 and the files."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from graphlens.bundle import read_manifest, write_manifest
from graphlens.cli import main
from tests.models import tl_reference

PROMPT = "When Mary and John went to the store"


def invoke(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def reference(small_hf):
    ref = tl_reference(small_hf)
    tokens = ref.to_tokens(PROMPT)
    with torch.no_grad():
        logits, cache = ref.run_with_cache(tokens)
    return ref, tokens, logits[0].softmax(-1).numpy(), cache


# ---- inspect -----------------------------------------------------------------------------------------
def test_inspect_lists_config_hooks_io_and_files(small_bundle):
    manifest = read_manifest(small_bundle)
    out = invoke("inspect", small_bundle).output
    for key, value in manifest["config"].items():
        assert re.search(rf"^\s+{key}\s+{re.escape(str(value))}$", out, re.M), key
    for hook in manifest["hooks"]:
        shape = "[" + ", ".join(map(str, hook["shape"])) + "]"
        assert re.search(rf"^\s+{re.escape(hook['name'])}\s+{re.escape(shape)}\s+yes\s+yes\s+yes$", out, re.M), hook
    assert re.search(r"^\s+input_ids\s+int64\s+\[batch, pos\]$", out, re.M)
    assert re.search(r"^\s+logits\s+float32\s+\[batch, pos, 300\]$", out, re.M)
    assert "model.onnx" in out and "total" in out


def test_inspect_json_reports_the_graph_inputs_that_exist(small_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    proto = onnx.load(str(bundle / "model.onnx"))
    gone = "blocks.0.hook_resid_pre.add"
    kept = [i for i in proto.graph.input if i.name != gone]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    onnx.save(proto, str(bundle / "model.onnx"))
    write_manifest(bundle, json.loads((bundle / "graphlens.json").read_text()))  # record the edited file's size and hash
    summary = json.loads(invoke("inspect", bundle, "--json").output)
    flags = {h["name"]: h["inputs"] for h in summary["hooks"]}
    assert flags["blocks.0.hook_resid_pre"] == {"patch": True, "patch_mask": True, "add": False}
    assert all(all(v.values()) for name, v in flags.items() if name != "blocks.0.hook_resid_pre")
    assert [h["name"] for h in summary["hooks"]] == [h["name"] for h in read_manifest(bundle)["hooks"]]
    sizes = {p.name: p.stat().st_size for p in bundle.iterdir()}
    assert summary["files"] == sizes and summary["total_bytes"] == sum(sizes.values())


def test_inspect_errors(tmp_path):
    result = invoke("inspect", tmp_path, expect=1)
    assert "not a graphlens bundle" in result.output


# ---- run ---------------------------------------------------------------------------------------------
LINE = re.compile(r"^\s*(\d+) (.+?)\s+-> (.*)$")
PRED = re.compile(r"(.+?) (\d\.\d{3})(?:  |$)")


def test_run_prints_top_predictions_like_transformer_lens(small_bundle, reference):
    ref, tokens, probs, _ = reference
    out = invoke("run", small_bundle, PROMPT, "--top-k", 4).output
    lines = [LINE.match(line) for line in out.splitlines()]
    assert len(lines) == tokens.shape[1] and all(lines)
    for pos, match in enumerate(lines):
        assert int(match.group(1)) == pos
        assert match.group(2) == repr(ref.to_str_tokens(tokens)[pos])
        preds = PRED.findall(match.group(3))
        expected = np.sort(probs[pos])[::-1][:4]
        assert [p for _, p in preds] == [f"{p:.3f}" for p in expected]
        top = int(np.argmax(probs[pos]))
        if expected[0] - expected[1] > 1e-5:  # no near-tie: the top token is determined
            assert preds[0][0].split("#")[0] == repr(ref.to_string(top))
    last = invoke("run", small_bundle, PROMPT, "--last", "--top-k", 2).output.splitlines()
    assert len(last) == 1 and last[0] == out.splitlines()[-1].rsplit("  ", 2)[0]


@pytest.mark.parametrize("pattern, expected", [
    ("blocks.*.attn.hook_pattern", ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]),
    ("resid_post", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]),
    ("hook_embed", ["hook_embed"]),
])
def test_run_dumps_the_chosen_activations(small_bundle, reference, tmp_path, pattern, expected):
    _, _, _, ref_cache = reference
    path = tmp_path / "cache.npz"
    invoke("run", small_bundle, PROMPT, "--cache", path, "--names", pattern)
    with np.load(path) as saved:
        assert sorted(saved.keys()) == sorted(expected)
        for name in expected:
            np.testing.assert_allclose(saved[name], ref_cache[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_run_dumps_safetensors(small_bundle, reference, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    _, _, _, ref_cache = reference
    path = tmp_path / "cache.safetensors"
    invoke("run", small_bundle, PROMPT, "--cache", path)
    saved = safetensors_numpy.load_file(str(path))
    assert sorted(saved) == sorted(ref_cache.keys())
    for name, value in saved.items():
        np.testing.assert_allclose(value, ref_cache[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_run_errors(small_bundle, tmp_path, monkeypatch):
    assert "no hook name matches 'nothing*'" in invoke("run", small_bundle, "a", "--cache", tmp_path / "c.npz",
                                                        "--names", "nothing*", expect=2).output
    assert "--names selects" in invoke("run", small_bundle, "a", "--names", "resid", expect=2).output
    assert "must end in .npz or .safetensors" in invoke("run", small_bundle, "a", "--cache", tmp_path / "c.pt",
                                                         expect=2).output
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    result = invoke("run", small_bundle, "a", "--cache", tmp_path / "c.safetensors", expect=1)
    assert "needs the safetensors package: pip install safetensors" in result.output


# ---- plot --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, extra", [
    ("attention", ["--layer", "1", "--head", "0", "--head", "3"]),
    ("logit-lens", []),
    ("head-attribution", []),
    ("head-attribution", ["--target", " the"]),
])
def test_plot_writes_pngs(small_bundle, tmp_path, kind, extra):
    imread = pytest.importorskip("matplotlib.image").imread
    out = tmp_path / "figure.png"
    result = invoke("plot", small_bundle, PROMPT, "--kind", kind, "-o", out, "--dpi", 60, *extra)
    assert result.output.strip() == str(out)
    image = imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image[..., :3].std() > 0.05


def test_plot_attention_html(small_bundle, reference, tmp_path):
    _, _, _, ref_cache = reference
    out = tmp_path / "attn.html"
    invoke("plot", small_bundle, PROMPT, "--kind", "attention-html", "--layer", 1, "-o", out)
    data = json.loads(re.search(r"const PATTERN = (.*?);  //", out.read_text()).group(1))
    np.testing.assert_allclose(data, ref_cache["blocks.1.attn.hook_pattern"][0].numpy(), atol=1e-4)


def test_plot_errors(small_bundle, tmp_path):
    out = tmp_path / "x.png"
    assert "layer 2 is out of range: the model has 2 layers" in invoke(
        "plot", small_bundle, "a", "--layer", 2, "-o", out, expect=2).output
    assert "head 4 is out of range" in invoke("plot", small_bundle, "a", "--head", 4, "-o", out, expect=2).output
    assert "not one" in invoke("plot", small_bundle, "a", "--kind", "head-attribution", "--target", " xylophone",
                               "-o", out, expect=2).output
    assert "neither a graphlens bundle" in invoke("plot", tmp_path, "a", "-o", out, expect=1).output
    assert not out.exists()
