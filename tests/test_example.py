"""The README walkthrough on the shipped model runs offline and finds a real induction head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from graphlens.bundle import read_manifest
from graphlens.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "shipped" / "pydoc-gpt2"

# Issue 7 is open: the training script is in the repo, its weights are not (no run formed an induction head yet).
pytestmark = pytest.mark.skipif(
    not (SHIPPED / "model.safetensors").is_file(),
    reason="issue 7: models/shipped/pydoc-gpt2 has no trained weights yet (see its README, Status)",
)


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    """`graphlens export` with no MODEL exports the shipped model (and says so)."""
    out = tmp_path_factory.mktemp("shipped") / "pydoc-gpt2"
    result = CliRunner().invoke(main, ["export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "shipped demo model" in result.output
    return out


def test_export_without_model_uses_the_shipped_model(shipped_bundle):
    manifest = read_manifest(shipped_bundle)
    assert Path(manifest["source"]["model"]).resolve() == SHIPPED.resolve()
    assert manifest["config"]["n_layers"] == 2


def test_induction_example_passes_its_own_checks(shipped_bundle, tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "induction.py"), "--bundle", str(shipped_bundle), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "checks passed" in run.stdout
    assert (tmp_path / "induction_head.png").stat().st_size > 10_000
