"""Portable steering: patch_sites export option, .add fed by plain onnxruntime, compiled interventions."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from graphlens import HookedTransformer, intervene
from graphlens.bundle import read_manifest
from graphlens.cli import main
from graphlens.rewrite.intervene import SpecError
from tests.models import tl_reference
from tests.test_equivalence import assert_close


@pytest.fixture(scope="module")
def model(small_bundle):
    return HookedTransformer(small_bundle)


@pytest.fixture(scope="module")
def tokens(model):
    return np.random.default_rng(5).integers(0, model.cfg.d_vocab, size=(2, 6))


@pytest.fixture(scope="module")
def vector(model):
    return np.random.default_rng(1).normal(size=model.cfg.d_model).astype(np.float32)


def test_add_input_in_plain_onnxruntime_equals_a_transformer_lens_hook(small_bundle, small_hf, tokens, vector):
    manifest = read_manifest(small_bundle)
    entry = next(h for h in manifest["hooks"] if h["name"] == "blocks.1.hook_resid_pre")
    session = ort.InferenceSession(str(small_bundle / manifest["model_file"]))
    logits = session.run(["logits"], {"input_ids": tokens, entry["inputs"]["add"]: vector[None, None]})[0]
    ref = tl_reference(small_hf)
    with torch.no_grad():
        ref_logits = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[
            ("blocks.1.hook_resid_pre", lambda act, hook: act + torch.from_numpy(vector))])
    assert_close(logits, ref_logits, "steered logits")
    assert not np.allclose(logits, session.run(["logits"], {"input_ids": tokens})[0], atol=1e-3)


SPEC = [
    {"hook": "blocks.1.hook_resid_pre", "op": "add", "value_file": "steer.npy", "positions": [-1, 2]},
    {"hook": "blocks.0.attn.hook_z", "op": "zero", "heads": [1, 3]},
    {"hook": "blocks.1.mlp.hook_post", "op": "scale", "value": 0.5},
    {"hook": "blocks.0.attn.hook_pattern", "op": "set", "value": 0.1, "heads": 2, "positions": [3]},
    {"hook": "blocks.0.hook_mlp_out", "op": "set", "value": 0.25},
]


def spec_hooks(vector):
    """The same interventions as TransformerLens-style hooks."""

    def add(act, hook):
        act[:, [-1, 2]] += vector

    def zero(act, hook):
        act[:, :, [1, 3]] = 0

    def set_pattern(act, hook):
        act[:, 2, 3] = 0.1

    return [("blocks.1.hook_resid_pre", add), ("blocks.0.attn.hook_z", zero),
            ("blocks.1.mlp.hook_post", lambda act, hook: act * np.float32(0.5)),
            ("blocks.0.attn.hook_pattern", set_pattern), ("blocks.0.hook_mlp_out", lambda act, hook: np.full_like(act, 0.25))]


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_compiled_spec_equals_the_same_hooks(model, small_bundle, tokens, vector, tmp_path, form):
    np.save(tmp_path / "steer.npy", vector)
    if form == "yaml":
        import yaml

        spec = tmp_path / "spec.yaml"
        spec.write_text(yaml.safe_dump(SPEC))
    else:
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"interventions": SPEC}))
    out = intervene(small_bundle, spec, tmp_path / "steered", keep_hooks=True)
    compiled = HookedTransformer(out)
    session = ort.InferenceSession(str(out / "model.onnx"))
    # the model's own inputs only (attention_mask / position_ids keep their defaults): no substitution inputs
    assert [i.name for i in session.get_inputs() + session.get_overridable_initializers()] == [
        "input_ids", "attention_mask", "position_ids"]
    assert [i["name"] for i in read_manifest(out)["inputs"]] == ["input_ids", "attention_mask", "position_ids"]
    assert read_manifest(out)["inputs"][1]["default"] == {"shape": [1, 1], "fill": 1}

    with model.hooks(fwd_hooks=spec_hooks(vector)):
        ref_logits, ref_cache = model.run_with_cache(tokens)
    logits, cache = compiled.run_with_cache(tokens)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for name in ref_cache.keys():
        np.testing.assert_allclose(cache[name], ref_cache[name], atol=1e-5, rtol=1e-5, err_msg=name)
    assert not np.allclose(logits, model(tokens), atol=1e-3)
    assert read_manifest(out)["intervention"]["entries"][0]["value_shape"] == [model.cfg.d_model]


def test_compiled_bundle_without_hooks_is_a_plain_graph(model, small_bundle, tokens, vector, tmp_path):
    out = intervene(small_bundle, [{"hook": "blocks.1.hook_resid_pre", "op": "add", "value": vector.tolist()}],
                    tmp_path / "plain")
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    steered = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: a + vector)])
    np.testing.assert_allclose(session.run(None, {"input_ids": tokens})[0], steered, atol=1e-5, rtol=1e-5)
    assert read_manifest(out)["hooks"] == [] and "decoder" not in read_manifest(out)


def test_cli_intervene(small_bundle, tmp_path, vector):
    np.save(tmp_path / "v.npy", vector)
    (tmp_path / "spec.json").write_text(json.dumps([{"hook": "blocks.0.hook_resid_post", "op": "add", "value_file": "v.npy"}]))
    result = CliRunner().invoke(main, ["intervene", str(small_bundle), str(tmp_path / "spec.json"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "o")["intervention"]["entries"][0]["hook"] == "blocks.0.hook_resid_post"
    (tmp_path / "bad.json").write_text(json.dumps([{"hook": "blocks.0.hook_resid_pots", "op": "add", "value": 1}]))
    result = CliRunner().invoke(main, ["intervene", str(small_bundle), str(tmp_path / "bad.json"), "-o", str(tmp_path / "p")])
    assert result.exit_code != 0 and "blocks.0.hook_resid_post" in result.output


@pytest.mark.parametrize("entry,message", [
    ({"hook": "blocks.0.hook_resid_pre", "op": "multiply", "value": 2}, "op must be one of"),
    ({"hook": "blocks.0.hook_resid_pre", "op": "add", "value": [1.0, 2.0]}, "does not broadcast"),
    ({"hook": "blocks.0.hook_resid_pre", "op": "add"}, "needs value"),
    ({"hook": "blocks.0.hook_resid_pre", "op": "zero", "heads": [0]}, "no head axis"),
    ({"hook": "blocks.0.attn.hook_z", "op": "zero", "heads": [9]}, "out of range"),
    ({"hook": "blocks.0.hook_resid_pre", "op": "zero", "positions": [99]}, "outside the context"),
    ({"hook": "blocks.0.hook_resid_pre", "op": "zero", "where": 1}, "unknown keys"),
])
def test_spec_errors(small_bundle, tmp_path, entry, message):
    with pytest.raises(SpecError, match=message):
        intervene(small_bundle, [entry], tmp_path / "x")


def test_patch_sites_option(small_hf, small_bundle, tokens, vector, tmp_path):
    from graphlens.export.pipeline import export_bundle

    with pytest.raises(ValueError, match="patch_sites"):
        export_bundle(str(small_hf), tmp_path / "bad", patch_sites="some", progress=None)
    out = export_bundle(str(small_hf), tmp_path / "resid", patch_sites="resid", decoder=False, progress=None)
    manifest = read_manifest(out)
    with_inputs = [h["name"] for h in manifest["hooks"] if h["inputs"]]
    assert with_inputs and all("hook_resid_" in name for name in with_inputs)
    assert all(h["inputs"] == {} for h in manifest["hooks"] if "hook_resid_" not in h["name"])
    session = ort.InferenceSession(str(out / "model.onnx"))
    graph_inputs = {i.name for i in session.get_inputs() + session.get_overridable_initializers()}
    model_inputs = {"input_ids", "attention_mask", "position_ids"}
    assert graph_inputs == model_inputs | {v for h in manifest["hooks"] for v in h["inputs"].values()}

    resid, full = HookedTransformer(out), HookedTransformer(small_bundle)
    feeds = {"blocks.1.hook_resid_mid.add": vector[None, None]}
    np.testing.assert_allclose(resid.run_graph(tokens, ["logits"], feeds)["logits"],
                               full.run_graph(tokens, ["logits"], feeds)["logits"], atol=1e-5)
    hooks = [("blocks.0.attn.hook_q", lambda a, hook: a * 2)]
    np.testing.assert_allclose(resid.run_with_hooks(tokens, fwd_hooks=hooks), full.run_with_hooks(tokens, fwd_hooks=hooks), atol=1e-5)
    with pytest.raises(ValueError, match="--patch-sites all"):
        resid.run_graph(tokens, ["logits"], {"blocks.0.attn.hook_q.add": np.zeros((1, 1, 1, 1), np.float32)})
