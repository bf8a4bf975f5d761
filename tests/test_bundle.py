"""The exported file on its own: plain onnxruntime, substitution inputs, manifest, external data, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from click.testing import CliRunner

from graphlens import HookedTransformer
from graphlens.bundle import FORMAT_VERSION, read_manifest
from graphlens.cli import main
from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import Processing
from tests.models import tl_reference
from tests.test_equivalence import assert_close


def plain_session(bundle) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])


def test_plain_onnxruntime_reads_every_hook(small_bundle, small_hf):
    """No graphlens at run time: the bundle's model.onnx alone gives TransformerLens' activations."""
    session = plain_session(small_bundle)
    ref = tl_reference(small_hf)
    tokens = np.random.default_rng(3).integers(0, 300, size=(2, 7))
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {"input_ids": tokens})))
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    assert set(names) == set(ref_cache.keys()) | {"logits"}
    for name in ref_cache.keys():
        assert_close(values[name], ref_cache[name], name)
    assert_close(values["logits"], ref_logits, "logits")


def test_patch_inputs_equal_a_transformer_lens_hook(small_bundle, small_hf):
    """Feeding <hook>.patch / .patch_mask writes the activation exactly as a TL hook that sets it."""
    session = plain_session(small_bundle)
    ref = tl_reference(small_hf)
    tokens = np.random.default_rng(4).integers(0, 300, size=(2, 6))
    hook = "blocks.0.attn.hook_z"
    patch = np.random.default_rng(5).normal(size=(2, 6, 4, 16)).astype(np.float32)
    mask = np.zeros((1, 6, 4, 1), dtype=bool)
    mask[0, 2:4, 1] = True  # positions 2-3 of head 1, every batch row

    def tl_hook(z, hook):
        z[:, 2:4, 1] = torch.tensor(patch[:, 2:4, 1])
        return z

    with torch.no_grad():
        ref_logits = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(hook, tl_hook)])
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    logits, patched_z, resid = session.run(
        ["logits", hook, "blocks.1.hook_resid_pre"],
        {"input_ids": tokens, f"{hook}.patch": patch, f"{hook}.patch_mask": mask},
    )
    assert_close(logits, ref_logits, "patched logits")
    expected_z = ref_cache[hook].numpy().copy()
    expected_z[:, 2:4, 1] = patch[:, 2:4, 1]
    assert_close(patched_z, expected_z, "hook output shows the patched value")
    assert not np.allclose(resid, ref_cache["blocks.1.hook_resid_pre"].numpy(), atol=1e-4)  # the patch propagated


def test_add_input_steers_like_a_transformer_lens_hook(small_bundle, small_hf):
    session = plain_session(small_bundle)
    ref = tl_reference(small_hf)
    tokens = np.random.default_rng(6).integers(0, 300, size=(2, 5))
    vector = np.random.default_rng(7).normal(size=(1, 1, 64)).astype(np.float32)
    with torch.no_grad():
        ref_logits = ref.run_with_hooks(
            torch.tensor(tokens), fwd_hooks=[("blocks.1.hook_resid_mid", lambda x, hook: x + torch.tensor(vector))]
        )
    (logits,) = session.run(["logits"], {"input_ids": tokens, "blocks.1.hook_resid_mid.add": vector})
    assert_close(logits, ref_logits, "steered logits")


def test_manifest_describes_every_hook(small_bundle):
    manifest = read_manifest(small_bundle)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["processing"] == Processing().as_dict()
    model = onnx.load(str(small_bundle / "model.onnx"), load_external_data=False)
    outputs = {o.name: o for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "position_ids"]
    assert [o["name"] for o in manifest["outputs"]] == ["logits"]
    for hook in manifest["hooks"]:
        dims = outputs[hook["name"]].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == hook["shape"]
        assert set(hook["inputs"].values()) <= inputs
    pattern = next(h for h in manifest["hooks"] if h["name"] == "blocks.1.attn.hook_pattern")
    assert pattern["shape"] == ["batch", 4, "query_pos", "key_pos"] and pattern["layer"] == 1


def test_weights_are_stored_once_or_in_a_single_file(small_hf, tmp_path, small_bundle):
    # default: model.onnx.data holds the weights, and decoder.onnx points into it (no second copy)
    manifest = read_manifest(small_bundle)
    data = (small_bundle / "model.onnx.data").stat().st_size
    assert manifest["external_data_file"] == "model.onnx.data" and manifest["decoder"]["weights"].startswith("shared")
    assert (small_bundle / "model.onnx").stat().st_size < data / 2
    assert (small_bundle / "decoder.onnx").stat().st_size < data / 2
    # --no-external-data: a single-file model.onnx; the decoder then carries its own copy
    single = export_bundle(str(small_hf), tmp_path / "single", external_data=False, progress=None)
    manifest = read_manifest(single)
    assert manifest["external_data_file"] is None and not (single / "model.onnx.data").exists()
    assert (single / "decoder.onnx").stat().st_size > data
    tokens = np.random.default_rng(8).integers(0, 300, size=(2, 5))
    shared_model, single_model = HookedTransformer.from_pretrained(small_bundle), HookedTransformer.from_pretrained(single)
    np.testing.assert_allclose(single_model(tokens), shared_model(tokens), atol=1e-6)
    (plain,) = plain_session(single).run(["logits"], {"input_ids": tokens})
    np.testing.assert_allclose(plain, shared_model(tokens), atol=1e-6)
    np.testing.assert_array_equal(single_model.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False),
                                  shared_model.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False))


def test_from_pretrained_exports_an_hf_folder_once(small_hf, tmp_path, monkeypatch, small_bundle):
    monkeypatch.setenv("GRAPHLENS_CACHE", str(tmp_path / "cache"))
    model = HookedTransformer.from_pretrained(str(small_hf))
    tokens = np.arange(6)[None]
    np.testing.assert_allclose(model(tokens), HookedTransformer.from_pretrained(small_bundle)(tokens), atol=1e-6)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    mtime = (cached[0] / "model.onnx").stat().st_mtime
    HookedTransformer.from_pretrained(str(small_hf))
    assert (cached[0] / "model.onnx").stat().st_mtime == mtime  # reused, not exported again
    raw = HookedTransformer.from_pretrained_no_processing(str(small_hf))
    assert raw.cfg.normalization_type == "LN" and len(list((tmp_path / "cache").iterdir())) == 2


def test_cli_export_flags(small_hf, tmp_path):
    result = CliRunner().invoke(
        main, ["export", str(small_hf), "-o", str(tmp_path / "b"), "--no-fold-ln", "--no-center-unembed"]
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "b")
    assert manifest["processing"] == dict(fold_ln=False, center_writing_weights=True, center_unembed=False,
                                          fold_value_biases=True)
    assert manifest["config"]["normalization_type"] == "LN"
    assert not list(tmp_path.glob(".b.*")), "temporary export folder left behind"


def test_float16_export_runs_close_to_float32(small_hf, tmp_path, small_bundle):
    out = export_bundle(str(small_hf), tmp_path / "fp16", dtype="float16", progress=None)
    model = HookedTransformer.from_pretrained(out, dtype="float16")
    tokens = np.random.default_rng(9).integers(0, 300, size=(2, 6))
    logits = model(tokens)
    assert logits.dtype == np.float16
    np.testing.assert_allclose(logits, HookedTransformer.from_pretrained(small_bundle)(tokens), atol=5e-2)


def test_runtime_imports_no_torch(small_bundle):
    code = (
        "import sys, numpy as np; from graphlens import HookedTransformer; "
        f"m = HookedTransformer.from_pretrained({str(small_bundle)!r}); m.run_with_cache(np.arange(4)[None]); "
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_forward_runs_the_graph_without_hook_machinery(small_bundle):
    """model(tokens) gets a specialised graph: no substitution inputs, no hook outputs, no Where per site."""
    model = HookedTransformer.from_pretrained(small_bundle)
    session = model.graph.session(["logits"])
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    from graphlens.rewrite.specialise import specialise

    full = model.graph.proto
    lean = specialise(full, ["logits"])
    sites = len(read_manifest(small_bundle)["hooks"])
    assert sum(n.op_type == "Where" for n in full.graph.node) - sum(n.op_type == "Where" for n in lean.graph.node) == sites


def test_bundle_files_get_the_usual_permissions(small_bundle):
    """The temporary folder is owner-only; the finished bundle has what the umask gives any new file."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert small_bundle.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in small_bundle.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
