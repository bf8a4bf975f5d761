"""The CLI: `Error: <one line>` and a non-zero exit for every bad input, the traceback only with --debug."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from graphlens import HookedTransformer, intervene
from graphlens.cli import main
from graphlens.errors import BundleError, SpecError

PROMPT = "When Mary and John went to the store"


def invoke(*args, expect: int):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def intervened(small_bundle, tmp_path_factory):
    return intervene(small_bundle, [{"hook": "blocks.0.hook_resid_post", "op": "scale", "value": 0.5}],
                     tmp_path_factory.mktemp("iv") / "b")


def test_bad_yaml_spec(small_bundle, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("- {hook: blocks.0.hook_resid_post, op: [zero\n")
    line = one_error_line(invoke("intervene", small_bundle, spec, "-o", tmp_path / "o", expect=1))
    assert "is not valid YAML (line" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["run"], ["generate"], ["plot"], ["verify"]])
def test_missing_path(command, tmp_path):
    args = [*command, tmp_path / "nothing"] + ([] if command == ["verify"] else [PROMPT])
    assert "does not exist" in one_error_line(invoke(*args, expect=1))


def test_inspect_and_run_an_intervened_bundle(intervened, small_bundle):
    out = invoke("inspect", intervened, expect=0).output
    assert "intervention  1 entries compiled in from" in out and "hooks         0" in out
    # run works, and its predictions are those of the hooked source model (the reference)
    ran = invoke("run", intervened, PROMPT, "--last", "--top-k", 1, expect=0).output
    model = HookedTransformer(small_bundle)
    tokens = model.to_tokens(PROMPT)
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0.5)])
    assert repr(model.to_string(int(logits[0, -1].argmax()))) in ran


def test_generate_on_an_intervened_bundle_says_why_it_cannot(intervened):
    line = one_error_line(invoke("generate", intervened, PROMPT, "-n", 2, expect=1))
    assert "graphlens intervene" in line and "source bundle" in line and "export" not in line.split("source")[0]


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "verify", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and isinstance(result.exception, BundleError)
    result = CliRunner().invoke(main, ["--debug", "intervene", str(tmp_path), str(tmp_path / "x.json"), "-o", "o"])
    assert result.exit_code == 2  # click's own usage errors stay usage errors


def test_greedy_with_sampling_options_is_an_error(small_bundle):
    result = invoke("generate", small_bundle, PROMPT, "--greedy", "--temperature", 0.5, "--top-k", 3, expect=2)
    assert "--greedy" in result.output and "--temperature, --top-k" in result.output
    greedy = invoke("generate", small_bundle, PROMPT, "--greedy", "-n", 3, "--no-stop-at-eos", expect=0).output
    model = HookedTransformer(small_bundle)
    expected = model.generate(PROMPT, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    assert greedy.strip() == expected.replace("<|endoftext|>", "").strip()


@pytest.mark.parametrize("suffix, magic", [(".jpg", b"\xff\xd8\xff"), (".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                           (".svg", b"<?xml")])
def test_plot_writes_the_format_its_suffix_names(small_bundle, tmp_path, suffix, magic):
    out = tmp_path / f"a{suffix}"
    invoke("plot", small_bundle, PROMPT, "-o", out, "--dpi", 30, expect=0)
    assert out.read_bytes().startswith(magic)


def test_plot_refuses_a_suffix_it_cannot_write(small_bundle, tmp_path):
    result = invoke("plot", small_bundle, PROMPT, "-o", tmp_path / "a.xyz", expect=2)
    assert "name the image format with the suffix" in result.output
    result = invoke("plot", small_bundle, PROMPT, "--kind", "attention-html", "-o", tmp_path / "a.png", expect=2)
    assert "ending in .html" in result.output
    assert list(tmp_path.iterdir()) == []


def test_spec_errors_are_one_line(small_bundle, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"hook": "blocks.0.hook_resid_post", "op": "add", "value_file": "missing.npy"}]))
    assert "value_file" in one_error_line(invoke("intervene", small_bundle, spec, "-o", tmp_path / "o", expect=1))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))  # a pickle: never loaded
    spec.write_text(json.dumps([{"hook": "blocks.0.hook_resid_post", "op": "add", "value_file": "obj.npy"}]))
    with pytest.raises(SpecError, match="is not a .npy array"):
        intervene(small_bundle, spec, tmp_path / "o")


def test_a_version_1_bundle_gets_a_one_line_warning(small_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(small_bundle, bundle)
    manifest = json.loads((bundle / "graphlens.json").read_text())
    del manifest["files"]
    (bundle / "graphlens.json").write_text(json.dumps({**manifest, "format_version": 1}))
    proc = subprocess.run([sys.executable, "-c", "from graphlens.cli import main; main()", "inspect", str(bundle),
                           "--no-hooks"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Warning: {bundle} is a format-version-1 bundle: it records no file sizes or hashes, so damage cannot be "
        f"detected; export it again"]
    assert "architecture  gpt2" in proc.stdout
