"""Bundles that cannot hurt you: no lost files, atomic replacement, nothing outside the folder, damage detected."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphlens import HookedTransformer, intervene
from graphlens.bundle import FORMAT_VERSION, read_manifest, verify_bundle
from graphlens.bundle_write import clean_leftovers, replace_folder, writing_bundle
from graphlens.cli import main
from graphlens.errors import BundleError, BundleWarning, SpecError

TOKENS = np.array([[1, 5, 9, 200, 33, 7]])


def invoke(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


def copy_bundle(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def plain_logits(bundle: Path, tokens=TOKENS) -> np.ndarray:
    """The reference: plain ONNX Runtime on the bundle's model.onnx, no graphlens."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": tokens})[0]


def edit_manifest(bundle: Path, **changes) -> dict:
    manifest = json.loads((bundle / "graphlens.json").read_text())
    manifest.update(changes)
    (bundle / "graphlens.json").write_text(json.dumps(manifest))
    return manifest


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- data loss ---------------------------------------------------------------------------------------
def test_export_refuses_a_folder_that_is_not_a_bundle(small_hf, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    result = invoke("export", small_hf, "-o", folder, "--force", expect=1)
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert "not a graphlens bundle" in result.output
    assert (folder / "notes.txt").read_text() == "x" and sorted(os.listdir(folder)) == ["notes.txt"]


def test_export_refuses_the_current_folder(small_hf, tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("k")
    monkeypatch.chdir(tmp_path)
    assert "current folder" in invoke("export", small_hf, "-o", ".", "--force", expect=1).output
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_a_bundle_with_foreign_files_is_not_replaced(small_bundle, small_hf, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    (bundle / "notes.txt").write_text("mine")
    assert "notes.txt" in invoke("export", small_hf, "-o", bundle, "--force", expect=1).output
    assert (bundle / "notes.txt").read_text() == "mine"


def test_export_and_intervene_replace_a_bundle_only_with_force(small_bundle, small_hf, tmp_path):
    """One rule for both commands: an existing bundle is replaced only with --force."""
    target = copy_bundle(small_bundle, tmp_path / "b")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"hook": "blocks.0.hook_resid_post", "op": "scale", "value": 0.5}]))
    before = (target / "graphlens.json").read_bytes()
    for command in (["export", small_hf], ["intervene", small_bundle, spec]):
        result = invoke(*command, "-o", target, expect=1)
        assert "already holds a graphlens bundle; pass --force" in result.output
        assert (target / "graphlens.json").read_bytes() == before
    invoke("intervene", small_bundle, spec, "-o", target, "--force")
    assert read_manifest(target)["intervention"]["entries"][0]["op"] == "scale"
    # the export replaces the intervened bundle; its only output is its stages, not library warnings
    proc = subprocess.run([sys.executable, "-c", "from graphlens.cli import main; main()", "export", str(small_hf), "-o",
                           str(target), "--force"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    noise = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert noise == [], noise
    assert "intervention" not in read_manifest(target)
    np.testing.assert_array_equal(plain_logits(target), plain_logits(small_bundle))
    with pytest.raises(BundleError, match="pass --force"):
        intervene(small_bundle, json.loads(spec.read_text()), target)


def test_replacing_keeps_one_complete_bundle_when_the_rename_fails(small_bundle, tmp_path, monkeypatch):
    target = copy_bundle(small_bundle, tmp_path / "b")
    new = tmp_path / "new"
    new.mkdir()
    (new / "graphlens.json").write_text("{}")
    real_rename = Path.rename

    def failing(self, to):
        if self == new:
            raise OSError("simulated crash")
        return real_rename(self, to)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="simulated"):
        replace_folder(new, target)
    monkeypatch.undo()
    assert read_manifest(target) == read_manifest(small_bundle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "new"]


def test_leftovers_of_dead_writers_are_cleaned_and_an_old_bundle_is_put_back(small_bundle, tmp_path):
    out = tmp_path / "b"
    dead = dead_pid()
    stale = tmp_path / f".b.tmp-{dead}-abcd"
    stale.mkdir()
    (stale / "model.onnx").write_text("half")
    alive = tmp_path / f".b.tmp-{os.getpid()}-efgh"
    alive.mkdir()
    shutil.copytree(small_bundle, tmp_path / f".b.old-{dead}-ijkl")  # crashed between the two renames
    other = tmp_path / f".c.tmp-{dead}-mnop"
    other.mkdir()
    removed = clean_leftovers(out)
    assert removed == [stale]
    assert read_manifest(out) == read_manifest(small_bundle)
    assert alive.is_dir() and other.is_dir()


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with writing_bundle(tmp_path / "b") as tmp:
            (tmp / "model.onnx").write_text("x")
            raise RuntimeError("exporter failed")
    assert list(tmp_path.iterdir()) == []


# ---- nothing outside the bundle ---------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("tokenizer_files", ["../victim.txt"]),
    ("tokenizer_files", ["/tmp/victim.txt"]),
    ("model_file", "../model.onnx"),
    ("external_data_file", "sub/model.onnx.data"),
    ("decoder", "../decoder.onnx"),
])
def test_manifest_file_names_must_stay_in_the_bundle(small_bundle, tmp_path, field, value):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    manifest = read_manifest(bundle)
    if field == "decoder":
        edit_manifest(bundle, decoder={**manifest["decoder"], "file": value})
        field = "decoder.file"
    else:
        edit_manifest(bundle, **{field: value})
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        HookedTransformer.from_pretrained(bundle)
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        intervene(bundle, [{"hook": "blocks.0.hook_resid_post", "op": "zero"}], tmp_path / "out")
    assert victim.read_text() == "precious" and not (tmp_path / "out").exists()


def test_a_symlink_that_leaves_the_bundle_is_refused(small_bundle, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle / "tokenizer_config.json", outside)
    (bundle / "tokenizer_config.json").symlink_to(outside)
    with pytest.raises(BundleError, match="tokenizer_files 'tokenizer_config.json' is a symlink that leaves"):
        intervene(bundle, [{"hook": "blocks.0.hook_resid_post", "op": "zero"}], tmp_path / "out")


def test_value_file_is_confined_to_the_spec_folder(small_bundle, tmp_path):
    specs, other = tmp_path / "specs", tmp_path / "other"
    specs.mkdir(), other.mkdir()
    vector = np.random.default_rng(0).normal(size=64).astype(np.float32)
    np.save(other / "v.npy", vector)
    (specs / "link.npy").symlink_to(other / "v.npy")
    for name in ("../other/v.npy", str(other / "v.npy"), "link.npy"):
        spec = specs / "spec.json"
        spec.write_text(json.dumps([{"hook": "blocks.0.hook_resid_post", "op": "add", "value_file": name}]))
        with pytest.raises(SpecError, match="leaves the spec's folder"):
            intervene(small_bundle, spec, tmp_path / "out")
    out = intervene(small_bundle, spec, tmp_path / "out", value_root=tmp_path)  # widened explicitly
    steered = HookedTransformer(out)(TOKENS)
    model = HookedTransformer(small_bundle)
    expected = model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + vector)])
    np.testing.assert_allclose(steered, expected, atol=1e-4)


# ---- damage is detected -----------------------------------------------------------------------------
def test_files_field_records_every_file_with_its_size_and_sha256(small_bundle):
    manifest = read_manifest(small_bundle)
    assert manifest["format_version"] == FORMAT_VERSION == 2
    on_disk = sorted(p.name for p in small_bundle.iterdir() if p.name != "graphlens.json")
    assert sorted(manifest["files"]) == on_disk
    for name, record in manifest["files"].items():
        data = (small_bundle / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_bundle(small_bundle) == sorted(on_disk)


def test_flipped_weight_bytes_are_found_by_verify(small_bundle, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    data = bytearray((bundle / "model.onnx.data").read_bytes())
    at = len(data) // 2 // 64 * 64  # inside the largest weights, whatever the layout
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])  # 64 flipped bytes, same size
    (bundle / "model.onnx.data").write_bytes(bytes(data))
    assert not np.allclose(plain_logits(bundle), plain_logits(small_bundle))  # the damage is real
    HookedTransformer.from_pretrained(bundle)  # sizes agree: loads (hashes are checked on request)
    with pytest.raises(BundleError, match="SHA-256 of model.onnx.data differs"):
        HookedTransformer.from_pretrained(bundle, verify=True)
    result = invoke("verify", bundle, expect=1)
    assert result.output.startswith("Error: ") and "model.onnx.data" in result.output
    assert "match their SHA-256" in invoke("verify", small_bundle).output


def test_a_truncated_or_missing_file_fails_the_load(small_bundle, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    with open(bundle / "decoder.onnx", "r+b") as f:
        f.truncate(100)
    with pytest.raises(BundleError, match="decoder.onnx has 100 bytes, the manifest records"):
        HookedTransformer.from_pretrained(bundle)
    (bundle / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="decoder.onnx is missing"):
        HookedTransformer.from_pretrained(bundle)


def test_version_1_bundles_load_with_a_warning(small_bundle, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    manifest = read_manifest(bundle)
    del manifest["files"]
    (bundle / "graphlens.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.warns(BundleWarning, match="no file sizes or hashes"):
        model = HookedTransformer.from_pretrained(bundle)
    np.testing.assert_allclose(model(TOKENS), plain_logits(small_bundle), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BundleWarning)
        with pytest.raises(BundleError, match="no hashes to check"):
            verify_bundle(bundle)


def test_a_graph_from_another_bundle_is_refused(gpt2_bundles, tmp_path):
    """model.onnx + weights of another model (files record updated, as a careless copy would): refused at load."""
    bundle = copy_bundle(gpt2_bundles["small", True], tmp_path / "b")
    other = gpt2_bundles["heads8", True]
    files = read_manifest(bundle)["files"]
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy2(other / name, bundle / name)
    files.update({n: read_manifest(other)["files"][n] for n in ("model.onnx", "model.onnx.data")})
    edit_manifest(bundle, files=files)
    with pytest.raises(BundleError, match="does not match"):
        HookedTransformer.from_pretrained(bundle)


def test_a_listed_hook_missing_from_the_graph_is_refused(small_bundle, tmp_path):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    manifest = read_manifest(bundle)
    extra = {**manifest["hooks"][0], "name": "blocks.0.hook_resid_pre_x"}
    edit_manifest(bundle, hooks=manifest["hooks"] + [extra])
    with pytest.raises(BundleError, match="hooks listed but not graph outputs: blocks.0.hook_resid_pre_x"):
        HookedTransformer.from_pretrained(bundle)


def _set(path: str, value):
    def edit(manifest: dict) -> None:
        *parents, leaf = path.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        target[leaf] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    ("{not json", "is not valid JSON"),
    (json.dumps([1, 2]), "not a graphlens manifest"),
    (_set("config.n_layers", "2"), "field config.n_layers must be int"),
    (_set("hooks", {"a": 1}), "field hooks must be list"),
    (_set("decoder.n_layers", 3), "decoder.n_layers=3 but config.n_layers=2"),
    (_set("config.d_model", 96), "output hook_embed has shape"),
])
def test_a_damaged_manifest_is_one_clear_error(small_bundle, tmp_path, edit, message):
    bundle = copy_bundle(small_bundle, tmp_path / "b")
    if isinstance(edit, str):
        text = edit
    else:
        manifest = read_manifest(bundle)
        edit(manifest)
        text = json.dumps(manifest)
    (bundle / "graphlens.json").write_text(text)
    with pytest.raises(BundleError, match=message):
        HookedTransformer.from_pretrained(bundle)
    if "shape" not in message:  # inspect reads the manifest, not the graph
        result = invoke("inspect", bundle, expect=1)
        assert result.output.startswith("Error: ") and message.split()[-1] in result.output


def test_from_pretrained_on_an_hf_folder_prints_only_the_export_stages(small_hf, small_bundle, tmp_path):
    """Loading an HF folder exports it into the cache with the same quiet stages as `graphlens export`."""
    code = (f"from graphlens import HookedTransformer; m = HookedTransformer.from_pretrained({str(small_hf)!r}); "
            f"print(m.cfg.n_layers)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          env={**os.environ, "GRAPHLENS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(read_manifest(small_bundle)["config"]["n_layers"])
    stages = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    noise = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert stages and noise == [], proc.stderr  # the export ran, and said nothing but its stages
