"""The manifest's JSON Schema: what export writes validates, broken manifests do not, the README table is generated."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from graphlens.bundle import read_manifest, write_manifest
from graphlens.errors import BundleError
from graphlens.runtime.tokenizer import TokenizerAdapter
from graphlens.schema import field_table, load_schema, validate_manifest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def manifest(small_bundle):
    return read_manifest(small_bundle)


def test_an_exported_manifest_validates(manifest):
    assert manifest["format_version"] == 2
    assert validate_manifest(manifest) is True  # jsonschema is installed: it really checked


def _as_version_1(manifest: dict) -> dict:
    """The manifest as version 1 wrote it: substitution inputs by name only, decoder facts as prose."""
    old = copy.deepcopy(manifest)
    old["format_version"] = 1
    del old["tokenizer"]
    for entry in old["inputs"]:
        entry.pop("required")
    for hook in old["hooks"]:
        del hook["substitution_inputs"]
    decoder = old["decoder"]
    for key in ("layers", "empty_past"):
        del decoder[key]
    decoder["hooks"] = "same names, shapes and patch/add inputs as the model graph, over the new positions"
    for entry in decoder["inputs"]:
        entry.pop("required")
    return old


def test_a_version_1_manifest_validates_as_version_1_only(manifest):
    old = _as_version_1(manifest)
    assert validate_manifest(old)
    with pytest.raises(BundleError, match="tokenizer"):
        validate_manifest({**old, "format_version": 2})


@pytest.mark.parametrize("breaks, where", [
    (lambda m: m.pop("hooks"), "hooks"),
    (lambda m: m["hooks"][0]["substitution_inputs"]["patch"].pop("default"), "hooks/0/substitution_inputs/patch"),
    (lambda m: m["hooks"][0]["substitution_inputs"].update(other={"name": "x", "dtype": "float32", "rank": 3, "required": True}), "hooks/0/substitution_inputs"),
    (lambda m: m["decoder"]["layers"][0].pop("past_key"), "decoder/layers/0"),
    (lambda m: m["inputs"][0].update(dtype="complex64"), "inputs/0/dtype"),
])
def test_a_broken_manifest_names_the_field(manifest, tmp_path, breaks, where):
    broken = copy.deepcopy(manifest)
    breaks(broken)
    with pytest.raises(BundleError, match=re.escape(where)):
        write_manifest(tmp_path, broken)
    assert not (tmp_path / "graphlens.json").exists()


def test_files_sizes_and_hashes_validate(manifest):
    validate_manifest({**manifest, "files": {"model.onnx": {"size": 10, "sha256": "ab" * 32}}})
    # write_manifest records the files itself, so a bad record can only come from elsewhere: the schema refuses it
    with pytest.raises(BundleError, match=re.escape("files/model.onnx/sha256")):
        validate_manifest({**manifest, "files": {"model.onnx": {"size": 3, "sha256": "not hex"}}})


def test_the_manifest_says_what_a_consumer_needs(small_bundle, manifest):
    tok = TokenizerAdapter.from_folder(small_bundle)
    info = manifest["tokenizer"]
    assert (info["bos_token_id"], info["eos_token_id"], info["pad_token_id"], info["prepends_bos"]) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.prepends_bos)
    decoder = manifest["decoder"]
    labels = {d for entry in decoder["inputs"] + decoder["outputs"] for d in entry["shape"] if isinstance(d, str)}
    assert labels == {"batch", "pos", "past", "past + pos"}
    n_kv, d_head = manifest["config"]["n_heads"], manifest["config"]["d_head"]
    assert decoder["empty_past"] == {"dtype": "float32", "shape": ["batch", n_kv, 0, d_head]}
    assert [layer["past_key"] for layer in decoder["layers"]] == [f"past_key_values.{i}.key" for i in range(manifest["config"]["n_layers"])]
    assert [h["name"] for h in decoder["hooks"]] == [h["name"] for h in manifest["hooks"]]


def test_the_readme_field_table_is_generated_from_the_schema():
    text = README.read_text()
    table = re.search(r"<!-- schema-table:begin -->\n(.*?)\n<!-- schema-table:end -->", text, re.S)
    assert table is not None, "README lacks the schema table markers"
    assert table.group(1) == field_table(), "README's manifest table is stale: paste graphlens.schema.field_table()"
    assert set(load_schema()["properties"]) <= set(re.findall(r"^\| `(\w+)` \|", table.group(1), re.M))
