"""The README walkthrough on the shipped model runs offline and finds a real induction head."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from graphlens.bundle import read_manifest
from graphlens.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "shipped" / "pydoc-gpt2"

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


def test_graphlens_reproduces_the_training_runs_measurements(shipped_bundle):
    """metrics.json was measured in torch (HF eager attention) at training time; graphlens reads the same."""
    import importlib.util
    import json

    import numpy as np

    from graphlens import HookedTransformer

    spec = importlib.util.spec_from_file_location("pydoc_train", SHIPPED / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    metrics = json.loads((SHIPPED / "metrics.json").read_text())["induction"]
    n = train.INDUCTION_N
    probe = train.repeated_random_tokens(2048, n, train.INDUCTION_BATCH, train.EVAL_SEED).numpy()

    model = HookedTransformer.from_pretrained(shipped_bundle)
    _, cache = model.run_with_cache(probe, names_filter=lambda name: name.endswith("hook_pattern"))
    query = np.arange(n + 1, 2 * n + 1)
    scores = [cache["pattern", layer][:, :, query, query - n + 1].mean(axis=(0, 2)) for layer in range(2)]
    np.testing.assert_allclose(scores, metrics["induction_scores"], atol=2e-4)

    layer, head = metrics["best_head"]["layer"], metrics["best_head"]["head"]
    mask = np.zeros((1, 1, model.cfg.n_heads, 1), dtype=bool)
    mask[:, :, head] = True
    z = f"blocks.{layer}.attn.hook_z"
    ablate = {f"{z}.patch": np.zeros((1, 1, model.cfg.n_heads, model.cfg.d_head), np.float32), f"{z}.patch_mask": mask}
    for feeds, key in [(None, "second_half_loss"), (ablate, "second_half_loss_best_head_ablated")]:
        per_token = model.loss_fn(model.run_graph(probe, ["logits"], feeds)["logits"], probe, per_token=True)
        assert abs(float(per_token[:, n + 1:].mean()) - metrics[key]) < 2e-3, key


def test_harvest_example_trains_an_sae_from_the_store(shipped_bundle, tmp_path):
    """README "Harvesting activations": harvest the shipped model over pydoc's topics, then a tiny SAE."""
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "harvest_sae.py"), "--bundle", str(shipped_bundle),
         "--out", str(tmp_path), "--max-tokens", "49152"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "harvested 49152 tokens" in run.stdout and "checks passed" in run.stdout
