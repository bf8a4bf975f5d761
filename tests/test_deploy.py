"""``graphlens deploy``: required substitution inputs at the chosen sites, nothing overridable left, same numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from graphlens import HookedTransformer
from graphlens.bundle import read_manifest
from graphlens.cli import main
from graphlens.deploy import deploy, deployment_graph
from graphlens.errors import InputError
from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.manifest_io import graph_io, input_defaults
from graphlens.runtime.session import session_options

SITES = ["blocks.0.attn.hook_z", "hook_resid_pre"]


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def _defaults(entries: list[dict]) -> dict[str, np.ndarray]:
    """What a client without anything to feed sends: each required input's manifest default."""
    out = {}
    for entry in entries:
        default = entry["default"]
        values = np.full(default["shape"], default["fill"]) if "fill" in default else np.array(default["values"]).reshape(default["shape"])
        out[entry["name"]] = values.astype(entry["dtype"])
    return out


def _substitution(manifest_section: dict) -> list[dict]:
    return [s for h in manifest_section["hooks"] for s in h["substitution_inputs"].values()]


def _client_feeds(manifest: dict) -> dict[str, np.ndarray]:
    """Every default a client fills: the substitution inputs' and the defaulted graph inputs' (attention_mask, position_ids)."""
    return _defaults(_substitution(manifest) + [i for i in manifest["inputs"] if "default" in i])


@pytest.fixture(scope="module")
def deployed(small_bundle, tmp_path_factory):
    return deploy(small_bundle, tmp_path_factory.mktemp("deploy") / "d", patch=SITES)


def test_the_manifest_lists_exactly_the_inputs_to_feed(deployed):
    manifest = read_manifest(deployed)
    patched = [h["name"] for h in manifest["hooks"] if h["substitution_inputs"]]
    assert patched == ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"]
    assert manifest["deployment"]["patch_sites"] == patched
    for section, file in ((manifest, manifest["model_file"]), (manifest["decoder"], manifest["decoder"]["file"])):
        session = _session(deployed / file)
        assert session.get_overridable_initializers() == []
        listed = [i["name"] for i in section["inputs"]] + [s["name"] for s in _substitution(section)]
        assert sorted(i.name for i in session.get_inputs()) == sorted(listed)
        assert all(s["required"] and "default" in s for s in _substitution(section))
        for s in _substitution(section):
            assert s["default"]["shape"] == [1] * s["rank"] and s["default"]["fill"] in (0, False)
            assert s["dtype"] == ("bool" if s["name"].endswith(".patch_mask") else "float32")


def test_a_deployment_computes_what_the_bundle_computes(small_bundle, deployed):
    model = HookedTransformer.from_pretrained(str(small_bundle))
    manifest = read_manifest(deployed)
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, size=(2, 7))
    session = _session(deployed / "model.onnx")
    hooks = [h["name"] for h in manifest["hooks"]]
    plain = dict(zip(["logits", *hooks], session.run(["logits", *hooks], {"input_ids": tokens, **_client_feeds(manifest)})))
    logits, cache = model.run_with_cache(tokens)
    np.testing.assert_allclose(plain["logits"], logits, atol=1e-5)
    for hook in hooks:
        np.testing.assert_allclose(plain[hook], cache[hook], atol=1e-5, err_msg=hook)

    mask = np.zeros((1, 1, model.cfg.n_heads, 1), bool)
    mask[:, :, 1] = True
    steer = np.random.default_rng(1).standard_normal((1, 1, model.cfg.d_model)).astype(np.float32)
    feeds = {"blocks.0.attn.hook_z.patch": np.zeros((1, 1, model.cfg.n_heads, model.cfg.d_head), np.float32),
             "blocks.0.attn.hook_z.patch_mask": mask, "blocks.1.hook_resid_pre.add": steer}
    patched = session.run(["logits"], {"input_ids": tokens, **_client_feeds(manifest), **feeds})[0]
    expected = model.run_graph(tokens, ["logits"], feeds)["logits"]
    assert np.abs(expected - logits).max() > 1e-2  # the patch matters
    np.testing.assert_allclose(patched, expected, atol=1e-5)


def test_patch_sites_resid_reaches_the_decoder(small_hf, tmp_path):
    bundle = export_bundle(str(small_hf), tmp_path / "resid", patch_sites="resid", progress=None)
    manifest = read_manifest(bundle)
    model_inputs = {s["name"] for s in _substitution(manifest)}
    decoder_inputs = {s["name"] for s in _substitution(manifest["decoder"])}
    in_graph = {i.name for i in onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.input}
    assert len(model_inputs) == 3 * 3 * manifest["config"]["n_layers"]  # resid_pre/mid/post × patch/mask/add
    assert decoder_inputs == model_inputs == {n for n in in_graph if n.rsplit(".", 1)[-1] in ("patch", "patch_mask", "add")}
    with pytest.raises(InputError, match="--patch-sites all"):
        deploy(bundle, tmp_path / "d", patch=["blocks.0.attn.hook_z"])


def test_bad_patterns_are_one_line_errors(small_bundle, tmp_path):
    with pytest.raises(InputError, match="matches no hook"):
        deploy(small_bundle, tmp_path / "d", patch=["hook_nothing"])
    first = deploy(small_bundle, tmp_path / "first", hooks=[], decoder=False)
    with pytest.raises(InputError, match="a deployment already"):
        deploy(first, tmp_path / "d")
    result = CliRunner().invoke(main, ["deploy", str(small_bundle), "-o", str(tmp_path / "d"), "--hooks", "no_such"])
    assert result.exit_code == 1 and result.output.startswith("Error: --hooks 'no_such' matches no hook")
    assert not (tmp_path / "d").exists()


def test_cli_deploy_keeps_only_the_hooks_asked_for(small_bundle, tmp_path):
    out = tmp_path / "d"
    result = CliRunner().invoke(main, ["deploy", str(small_bundle), "-o", str(out), "--hooks", "blocks.*.attn.hook_pattern",
                                       "--patch", "blocks.1.hook_resid_post", "--no-decoder"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    site = "blocks.1.hook_resid_post"  # a patch site is an output too: its entry lists its inputs
    assert [h["name"] for h in manifest["hooks"]] == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", site]
    assert "decoder" not in manifest and not (out / "decoder.onnx").exists()
    session = _session(out / "model.onnx")
    assert sorted(o.name for o in session.get_outputs()) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", site, "logits"]
    inputs = {f"{site}.add", f"{site}.patch", f"{site}.patch_mask"}
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask", "position_ids"} | inputs
    assert set(manifest["hooks"][2]["inputs"].values()) == inputs


def test_any_overridable_initializer_becomes_a_required_input_with_its_default():
    """Generic over graph inputs with a default (e.g. position_ids), not only substitution inputs."""
    x = helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "pos"])
    positions = helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, [1, 3])
    out = helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, ["batch", "pos"])
    graph = helper.make_graph([helper.make_node("Add", ["input_ids", "position_ids"], ["logits"])], "g", [x, positions], [out],
                              initializer=[onnx.numpy_helper.from_array(np.array([[0, 1, 2]], np.int64), "position_ids")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    deployed = deployment_graph(proto, ["logits"], [])
    assert [i.name for i in deployed.graph.initializer] == []
    io = graph_io(deployed, input_defaults(proto))
    assert io["inputs"][1] == {"name": "position_ids", "dtype": "int64", "shape": [1, 3], "required": True,
                               "default": {"shape": [1, 3], "values": [0, 1, 2]}}
    session = ort.InferenceSession(deployed.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "position_ids"]
    assert session.run(None, {"input_ids": np.ones((1, 3), np.int64), **_defaults(io["inputs"][1:])})[0].tolist() == [[1, 2, 3]]


def test_graphlens_sessions_print_no_initializer_warnings(small_bundle):
    """ONNX Runtime warns once per overridable initializer and session; graphlens' sessions do not show it."""
    import subprocess
    import sys

    warning = "appears in graph inputs"
    ours = ("import numpy as np; from graphlens import HookedTransformer; "
            f"m = HookedTransformer.from_pretrained({str(small_bundle)!r}); t = np.array([[1, 2, 3]]); "
            "m(t); m.run_with_cache(t); m.generate(t, max_new_tokens=2, verbose=False)")
    plain = f"import onnxruntime as ort; ort.InferenceSession({str(small_bundle / 'model.onnx')!r})"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300) for code in (ours, plain)]
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    assert warning not in runs[0].stderr
    assert warning in runs[1].stderr  # without the log level, ONNX Runtime does print them
