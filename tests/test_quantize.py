"""Quantized bundles (``graphlens quantize``, ``export --quantize``) of a tiny Llama and GPT-2.

References: the float bundle's activations (within tolerances measured on these models), plain ONNX
Runtime fed the same substitution inputs, and ONNX Runtime's own kernels run on the stored blocks
(a one-node MatMulNBits / DequantizeLinear graph) for the dequantised weights.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from transformers import LlamaConfig

from graphlens import HookedTransformer
from graphlens.architectures import architecture_named
from graphlens.bundle import read_manifest, verify_bundle
from graphlens.errors import BundleError, InputError
from graphlens.export.pipeline import export_bundle
from graphlens.quantize import quantize_bundle
from graphlens.schema import validate_manifest
from tests.models import make_causal_lm

# Largest relative error of any hook against the float bundle measured on these models (2 × 12 random
# tokens): int4 0.21 (Llama's hook_mlp_out), int8 0.031; the bounds leave room for other prompts.
TOLERANCE = {"int4": 0.35, "int8": 0.06}
SMALL_LLAMA = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=96, vocab_size=300, max_position_embeddings=64)


@pytest.fixture(scope="module")
def float_bundles(small_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-float")
    folder = make_causal_lm(root / "hf-rms", SMALL_LLAMA)  # no "llama" in the name (see test_architectures)
    return {"gpt2": small_bundle, "rms": export_bundle(str(folder), root / "rms", progress=None)}


@pytest.fixture(scope="module")
def quantized(float_bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    return {(name, method): quantize_bundle(bundle, root / f"{name}-{method}", method)
            for name, bundle in float_bundles.items() for method in ("int4", "int8")}


def _tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 300, (2, 12))


def _relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    finite = np.isfinite(ref)
    assert np.array_equal(np.isfinite(ours), finite)  # masked scores stay -inf, nothing else overflows
    return float(np.linalg.norm(ours[finite] - ref[finite]) / max(np.linalg.norm(ref[finite]), 1e-12))


CASES = [("gpt2", "int4"), ("gpt2", "int8"), ("rms", "int4"), ("rms", "int8")]


@pytest.mark.parametrize("name,method", CASES)
def test_every_hook_close_to_the_float_bundle(float_bundles, quantized, name, method):
    ref = HookedTransformer.from_pretrained(float_bundles[name])
    ours = HookedTransformer.from_pretrained(quantized[name, method])
    tokens = _tokens()
    ref_logits, ref_cache = ref.run_with_cache(tokens)
    logits, cache = ours.run_with_cache(tokens)
    assert list(cache.keys()) == list(ref_cache.keys()) == ours.hook_names
    errors = {k: _relative_error(cache[k], ref_cache[k]) for k in ref_cache.keys()}
    assert max(errors.values()) < TOLERANCE[method], max(errors.items(), key=lambda kv: kv[1])
    # activations before the first quantized layer are the float model's, bit for bit
    for early in ("hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized"):
        assert errors[early] == 0.0
    assert 1e-3 < _relative_error(logits, ref_logits) < TOLERANCE[method]  # quantized, and close


@pytest.mark.parametrize("name", ["gpt2", "rms"])
def test_patch_on_int4_equals_plain_onnxruntime(quantized, name):
    bundle = quantized[name, "int4"]
    model = HookedTransformer.from_pretrained(bundle)
    tokens = _tokens(1)[:1]
    site = "blocks.1.hook_resid_pre"
    value = np.random.default_rng(2).normal(size=(1, tokens.shape[1], model.cfg.d_model)).astype(np.float32)

    def patch(activation, hook):
        activation[:, 3] = value[:, 3]
        return activation

    logits = model.run_with_hooks(tokens, fwd_hooks=[(site, patch)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(bundle / "model.onnx"), options)
    mask = np.zeros((1, tokens.shape[1], 1), bool)
    mask[0, 3] = True
    ref, unpatched = session.run(["logits", "blocks.1.hook_resid_post"], {
        "input_ids": tokens, "attention_mask": np.ones_like(tokens), "position_ids": -np.ones_like(tokens),
        f"{site}.patch": value, f"{site}.patch_mask": mask})
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits, model(tokens), atol=1e-3)  # the patch changed something


def test_manifest_records_the_quantization_and_validates(quantized, float_bundles):
    for (name, method), bundle in quantized.items():
        manifest = read_manifest(bundle)
        assert validate_manifest(manifest)
        assert verify_bundle(bundle)
        q = manifest["quantization"]
        assert (q["method"], q["bits"], q["symmetric"]) == (method, 4 if method == "int4" else 8, True)
        assert q["block_size"] == (32 if method == "int4" else None)
        model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert set(q["ops"]) <= ops and "MatMul" in ops  # attention's products stay float MatMuls
        linear = {w["name"] for w in q["weights"]}
        n_layers = manifest["config"]["n_layers"]
        per_layer = 4 if name == "gpt2" else 7  # c_attn, c_proj, c_fc, c_proj / q, k, v, o, gate, up, down
        assert len(linear) == per_layer * n_layers + 1  # and the unembedding
        assert manifest["hooks"] == read_manifest(float_bundles[name])["hooks"]


def test_both_graphs_read_one_weights_file(quantized):
    bundle = quantized["rms", "int4"]
    refs = {}
    for file in ("model.onnx", "decoder.onnx"):
        proto = onnx.load(str(bundle / file), load_external_data=False)
        refs[file] = {i.name: {e.key: e.value for e in i.external_data} for i in proto.graph.initializer
                      if i.data_location == TensorProto.EXTERNAL}
    assert refs["decoder.onnx"] and refs["decoder.onnx"].items() <= refs["model.onnx"].items()
    assert {r["location"] for r in refs["model.onnx"].values()} == {"model.onnx.data"}


def _ort_weight(record: dict, params: dict, bits: int) -> np.ndarray:
    """ONNX Runtime's own reading of the stored weight, [K, N]: MatMulNBits times the identity, or
    DequantizeLinear of the int8 matrix."""
    inits = [numpy_helper.from_array(params[record[k]], record[k]) for k in ("quantized", "scales", "zero_points")
             if record[k]]
    if record["op"] == "MatMulNBits":
        k, n = record["shape"]
        node = helper.make_node("MatMulNBits", ["x"] + [i.name for i in inits], ["y"], domain="com.microsoft",
                                K=k, N=n, bits=bits, block_size=record["block_size"])
        feeds = {"x": np.eye(k, dtype=np.float32)}
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
        x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])]
    else:
        node = helper.make_node("DequantizeLinear", [i.name for i in inits[:1]] + [inits[1].name]
                                + [i.name for i in inits[2:]], ["y"])
        feeds, opsets, x = {}, [helper.make_opsetid("", 18)], []
    graph = helper.make_graph([node], "w", x, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("name,method", CASES)
def test_weight_properties_are_onnxruntimes_dequantisation(float_bundles, quantized, name, method):
    model = HookedTransformer.from_pretrained(quantized[name, method])
    q = model.manifest["quantization"]
    params = dict(model.graph.weights)
    for init in model.graph.proto.graph.initializer:
        if init.name not in params and init.data_location != TensorProto.EXTERNAL:
            params[init.name] = numpy_helper.to_array(init)
    reference = dict(params)
    for record in q["weights"]:
        w = _ort_weight(record, params, q["bits"])
        if record["columns"]:  # a part of a fused matrix (q/k/v, gate/up)
            w = w[:, record["columns"][0]:record["columns"][1]]
        reference[record["name"]] = w.T if record["transposed"] else w
    expected = architecture_named(model.manifest["architecture"]).read_weights(reference, model.cfg.to_dict())
    ours = model.state_dict()
    assert len(expected) == len(ours)
    for key, value in expected.items():
        grouped = key.replace(".W_K", "._W_K").replace(".W_V", "._W_V").replace(".b_K", "._b_K").replace(".b_V", "._b_V")
        np.testing.assert_allclose(ours.get(key, ours.get(grouped)), value, rtol=1e-6, atol=1e-6, err_msg=key)
    # the properties and module tree read the same dequantised weights, near the float ones
    ref = HookedTransformer.from_pretrained(float_bundles[name])
    np.testing.assert_array_equal(model.blocks[1].attn.W_Q, model.W_Q[1])
    assert 1e-4 < _relative_error(model.W_Q, ref.W_Q) < TOLERANCE[method]
    np.testing.assert_array_equal(model.W_E, ref.W_E)  # the embedding is not quantized


def test_generate_on_int4_uses_the_quantized_decoder(quantized):
    model = HookedTransformer.from_pretrained(quantized["rms", "int4"])
    prompt = _tokens(3)[:1, :6]
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    tokens = prompt
    for _ in range(6):  # greedy without a KV cache, on model.onnx
        tokens = np.concatenate([tokens, model(tokens)[:, -1:].argmax(-1)], axis=1)
    np.testing.assert_array_equal(generated, tokens)


def test_refusals(quantized, tmp_path):
    bundle = quantized["gpt2", "int4"]
    with pytest.raises(InputError, match="quantized already"):
        quantize_bundle(bundle, tmp_path / "again", "int4")
    with pytest.raises(InputError, match="int4, int8"):
        quantize_bundle(bundle, tmp_path / "bad", "int3")
    with pytest.raises(BundleError, match="cannot be"):
        HookedTransformer.from_pretrained(bundle, refactor_factored_attn_matrices=True)


def test_export_quantize_int8_and_the_cli_quantize(small_hf, small_bundle, quantized, tmp_path):
    from graphlens.cli import main

    out = export_bundle(str(small_hf), tmp_path / "int8", quantize="int8", decoder=False, progress=None)
    manifest = read_manifest(out)
    assert manifest["quantization"]["method"] == "int8" and "decoder" not in manifest
    assert manifest["quantization"]["source_bundle"] == f"export of {small_hf}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]  # the float export is gone
    tokens = _tokens()
    ours, ref = HookedTransformer.from_pretrained(out), HookedTransformer.from_pretrained(small_bundle)
    assert 1e-4 < _relative_error(ours(tokens), ref(tokens)) < TOLERANCE["int8"]
    cli = tmp_path / "cli-int4"
    result = CliRunner().invoke(main, ["quantize", str(small_bundle), "-o", str(cli), "--method", "int4"])
    assert result.exit_code == 0, result.output
    same = HookedTransformer.from_pretrained(quantized["gpt2", "int4"])  # quantize_bundle of the same source
    np.testing.assert_array_equal(HookedTransformer.from_pretrained(cli)(tokens), same(tokens))
    inspect = CliRunner().invoke(main, ["inspect", str(cli), "--no-hooks"])
    assert "quantization  int4 (MatMulNBits; block size 32, symmetric)" in inspect.output
    again = CliRunner().invoke(main, ["quantize", str(cli), "-o", str(tmp_path / "again")])
    assert again.exit_code == 1 and again.output.startswith("Error: ") and "quantized already" in again.output


def test_compare_numbers_equal_a_direct_numpy_computation(float_bundles, quantized, tmp_path):
    from graphlens.quantize import compare_bundles

    a = HookedTransformer.from_pretrained(float_bundles["rms"])
    b = HookedTransformer.from_pretrained(quantized["rms", "int4"])
    prompts = ["The quick brown fox jumps", "Hello world! Interpretability researchers read"]
    result = compare_bundles(a, b, prompts, new_tokens=5)
    assert [h.name for h in result.hooks] == a.hook_names
    diff, ref, cos = {}, {}, {}
    for prompt in prompts:
        tokens = a.to_tokens(prompt)
        _, ca = a.run_with_cache(tokens)
        _, cb = b.run_with_cache(tokens)
        for name in a.hook_names:
            x, y = np.nan_to_num(ca[name], neginf=0.0), np.nan_to_num(cb[name], neginf=0.0)
            diff[name] = diff.get(name, 0.0) + float(((y.astype(np.float64) - x) ** 2).sum())
            ref[name] = ref.get(name, 0.0) + float((x.astype(np.float64) ** 2).sum())
            num, den = (x * y).sum(-1), np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
            cos.setdefault(name, []).extend(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0).ravel())
    for h in result.hooks:
        np.testing.assert_allclose(h.relative_error, np.sqrt(diff[h.name] / ref[h.name]), rtol=1e-5, err_msg=h.name)
        np.testing.assert_allclose(h.cosine, np.mean(cos[h.name]), rtol=1e-5, err_msg=h.name)
    assert result.hooks[0].relative_error == 0.0 and result.hooks[-1].relative_error > 1e-3
    for i, prompt in enumerate(prompts):
        tokens = a.to_tokens(prompt)
        ga = a.generate(tokens, max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)[0, tokens.shape[1]:]
        gb = b.generate(tokens, max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)[0, tokens.shape[1]:]
        assert result.matched[i] == int((ga == gb).sum())
        same = ga == gb
        assert result.first_divergence[i] == (5 if same.all() else int(np.argmin(same)))


def test_cli_compare_prints_the_table_and_saves_the_plot(float_bundles, quantized, tmp_path):
    from graphlens.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The quick brown fox\n\nHello world\n")
    figure, numbers = tmp_path / "cmp.png", tmp_path / "cmp.json"
    result = CliRunner().invoke(main, ["compare", str(float_bundles["gpt2"]), str(quantized["gpt2", "int8"]), str(prompts),
                                       "-n", "3", "-o", str(figure), "--json", str(numbers), "--names", "resid_post"])
    assert result.exit_code == 0, result.output
    saved = json.loads(numbers.read_text())
    assert [h["name"] for h in saved["hooks"]] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert len(saved["matched"]) == 2 and saved["new_tokens"] == 3
    assert f"{saved['hooks'][1]['relative_error']:.3e}" in result.output and "greedy tokens:" in result.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(main, ["compare", str(float_bundles["gpt2"]), str(quantized["gpt2", "int8"]), "x", "-o",
                                    str(tmp_path / "cmp.nope")])
    assert bad.exit_code != 0 and "suffix" in bad.output


def test_deployment_of_an_int4_bundle_computes_the_same_logits(quantized, tmp_path):
    from graphlens.deploy import deploy

    bundle = quantized["rms", "int4"]
    site = "blocks.1.hook_resid_pre"
    out = deploy(bundle, tmp_path / "deployed", hooks=["resid_post"], patch=[site])
    assert read_manifest(out)["quantization"] == read_manifest(bundle)["quantization"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out / "model.onnx"), options)
    tokens = _tokens(4)[:1]
    shift = np.random.default_rng(5).normal(size=(1, tokens.shape[1], 64)).astype(np.float32)
    feeds = {"input_ids": tokens, "attention_mask": np.ones_like(tokens), "position_ids": -np.ones_like(tokens),
             f"{site}.patch": np.zeros_like(shift), f"{site}.patch_mask": np.zeros((1, 1, 1), bool), f"{site}.add": shift}
    assert {i.name for i in session.get_inputs()} == set(feeds)
    logits, = session.run(["logits"], feeds)
    model = HookedTransformer.from_pretrained(bundle)
    ref = model.run_graph(tokens, ["logits"], {f"{site}.add": shift})["logits"]
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
