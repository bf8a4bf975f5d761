"""The bundle's gradient graph (``graphlens gradients`` → ``backward.onnx``): read with plain ONNX Runtime,
used by the runtime, against TransformerLens 3.9's backward on the same weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphlens import HookedTransformer
from graphlens.attribution import logit_diff_grad, run_with_grads
from graphlens.attribution.gradients import bundle_backward
from graphlens.cli import main
from graphlens.grad.bundle_file import BACKWARD_FILE
from tests.models import tl_reference
from tests.test_gradients import _tl_loss, assert_grad_close, tl_gradients


@pytest.fixture(scope="module")
def grad_bundle(small_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("grad-bundle") / "g"
    result = CliRunner().invoke(main, ["gradients", str(small_bundle), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference(hf_gpt2_dirs):
    return tl_reference(hf_gpt2_dirs["small"])


def _tokens(seed=0, shape=(2, 9)):
    return np.random.default_rng(seed).integers(1, 300, size=shape)


def test_manifest_lists_the_file_and_shares_the_weights(grad_bundle, small_bundle):
    manifest = json.loads((grad_bundle / "graphlens.json").read_text())
    entry = manifest["backward"]
    assert entry["file"] == BACKWARD_FILE and BACKWARD_FILE in manifest["files"]
    assert [i["name"] for i in entry["inputs"] if i["required"]] == ["input_ids", "logits_grad"]
    assert [g["name"] for g in entry["gradients"]] == [h["name"] + "_grad" for h in manifest["hooks"]]
    # every weight of the backward graph is a reference into model.onnx.data, none is copied
    proto = onnx.load(str(grad_bundle / BACKWARD_FILE), load_external_data=False)
    model = onnx.load(str(grad_bundle / manifest["model_file"]), load_external_data=False)
    external = {i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    assert external and manifest["external_data_file"]
    assert external <= {i.name for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    assert entry["weights"].startswith("shared")
    assert (grad_bundle / BACKWARD_FILE).stat().st_size < (grad_bundle / manifest["external_data_file"]).stat().st_size


def test_file_read_with_plain_onnxruntime_equals_transformer_lens(grad_bundle, reference):
    tokens = _tokens()
    session = ort.InferenceSession(str(grad_bundle / BACKWARD_FILE), providers=["CPUExecutionProvider"])
    hooks = [h["hook"] for h in json.loads((grad_bundle / "graphlens.json").read_text())["backward"]["gradients"]]
    answer, wrong = np.array([3, 4]), np.array([5, 6])
    c = logit_diff_grad((*tokens.shape, 300), answer, wrong)
    names = ["logits"] + [h + "_grad" for h in hooks]
    results = dict(zip(names, session.run(names, {"input_ids": tokens, "logits_grad": c})))
    rows = np.arange(len(tokens))
    metric = lambda logits: (logits[rows, -1, answer] - logits[rows, -1, wrong]).mean()  # noqa: E731
    ref_grads = tl_gradients(reference, tokens, hooks, metric)
    for hook in hooks:
        assert_grad_close(results[hook + "_grad"], ref_grads[hook], hook)
    # the runtime reads the same file (specialised to what is asked) and gives the same gradients
    model = HookedTransformer.from_pretrained(grad_bundle)
    assert bundle_backward(model) is not None
    _, cache = model.run_with_cache(tokens, incl_bwd=True, logits_grad=c, names_filter=hooks[:5])
    assert sorted(k for k in cache.keys() if k.endswith("_grad")) == sorted(h + "_grad" for h in hooks[:5])
    for hook in hooks[:5]:
        np.testing.assert_allclose(cache[hook + "_grad"], results[hook + "_grad"], rtol=1e-5, atol=1e-6)


def test_runtime_loss_and_patches_from_the_file(grad_bundle, small_bundle, reference):
    """The loss variant (its cotangent computed in the graph) and a fed patch, through backward.onnx,
    against TransformerLens and against the graph built lazily from a bundle without the file."""
    tokens = _tokens(1)
    model, plain = HookedTransformer.from_pretrained(grad_bundle), HookedTransformer.from_pretrained(small_bundle)
    assert bundle_backward(plain) is None
    names = ["hook_embed", "blocks.0.attn.hook_z", "blocks.1.hook_resid_pre", "ln_final.hook_normalized"]
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=names)
    ref_grads = tl_gradients(reference, tokens, names, _tl_loss(tokens))
    for name in names:
        assert_grad_close(cache[name + "_grad"], ref_grads[name], name)
    site = "blocks.1.hook_resid_pre"
    mask = np.zeros((1, tokens.shape[1], 1), bool)
    mask[0, 2:5] = True
    patch = np.random.default_rng(0).standard_normal((1, tokens.shape[1], model.cfg.d_model)).astype(np.float32)
    feeds = {f"{site}.patch": patch, f"{site}.patch_mask": mask}
    names.append("blocks.0.hook_resid_post")
    ours = run_with_grads(model, tokens, ["logits"], names, feeds=feeds)
    lazy = run_with_grads(plain, tokens, ["logits"], names, feeds=feeds)
    for name in ["logits"] + [n + "_grad" for n in names]:
        np.testing.assert_allclose(ours[name], lazy[name], rtol=1e-5, atol=1e-6)
    assert np.all(ours["blocks.0.hook_resid_post_grad"][:, 2:5] == 0)  # the patched entries pass nothing back


def test_gradients_command_errors(grad_bundle, tmp_path):
    result = CliRunner().invoke(main, ["gradients", str(grad_bundle), "-o", str(grad_bundle)])
    assert result.exit_code != 0 and "another folder" in result.output
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["gradients", str(grad_bundle), "-o", str(tmp_path / "x")])
    assert result.exit_code != 0 and "not a graphlens bundle" in result.output


def test_export_with_gradients_writes_the_same_file(grad_bundle, hf_gpt2_dirs, tmp_path):
    """``graphlens export --gradients`` (one export, no decoder, one-file model) gives the same gradients."""
    from graphlens.export.pipeline import export_bundle

    out = export_bundle(str(hf_gpt2_dirs["small"]), tmp_path / "e", progress=None, decoder=False, gradients=True)
    entry = json.loads((out / "graphlens.json").read_text())["backward"]
    assert entry["weights"].startswith("own copy")  # no model.onnx.data to share
    tokens = _tokens(2)
    c = logit_diff_grad((*tokens.shape, 300), [1, 2], [3, 4])
    names = ["logits", "hook_embed_grad", "blocks.1.attn.hook_pattern_grad", "unembed.hook_in_grad"]
    results = [ort.InferenceSession(str(folder / BACKWARD_FILE), providers=["CPUExecutionProvider"])
               .run(names, {"input_ids": tokens, "logits_grad": c}) for folder in (out, grad_bundle)]
    for name, ours, ref in zip(names, *results):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_derived_bundles_drop_the_gradient_graph(grad_bundle, tmp_path):
    """A bundle made from one with backward.onnx (here a deployment) rewrites model.onnx: its manifest
    names no backward graph, which would describe the old one."""
    from graphlens.deploy import deploy

    out = deploy(grad_bundle, tmp_path / "d", hooks=["hook_embed"], decoder=False)
    manifest = json.loads((out / "graphlens.json").read_text())
    assert "backward" not in manifest and not (out / BACKWARD_FILE).exists()
