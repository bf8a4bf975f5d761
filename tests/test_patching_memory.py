"""patching's memory_budget_mb bounds the peak resident memory a sweep adds (within 1.2×), measured by the kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphlens import HookedTransformer, patching
from graphlens.errors import InputError
from graphlens.export.pipeline import export_bundle
from tests.models import make_gpt2

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peaks")


@pytest.fixture(scope="module")
def wide_vocab_bundle(tmp_path_factory):
    """A model whose logits dominate a variant's memory (20000 tokens × 64 positions), so budgets are visible."""
    root = tmp_path_factory.mktemp("memory")
    hf = make_gpt2(root / "hf", tokenizer=False, n_layer=2, n_embd=64, n_head=4, vocab_size=20000, n_positions=64,
                   bos_token_id=0, eos_token_id=0)
    return export_bundle(str(hf), root / "bundle", progress=None, decoder=False)


def probe(bundle: Path, budget: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.patching_memory_probe", str(bundle), budget],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("budget", [100, 250])
def test_the_budget_bounds_the_measured_peak(wide_vocab_bundle, budget):
    reference = probe(wide_vocab_bundle, "none")  # one variant per run
    run = probe(wide_vocab_bundle, str(budget))
    assert run["peak_added_mb"] <= 1.2 * budget, run["peak_added_mb"]
    assert run["peak_added_mb"] > reference["peak_added_mb"]  # the budget is used, not ignored
    np.testing.assert_allclose(run["result"], reference["result"], atol=1e-5)


def test_a_budget_below_one_variant_says_the_minimum(wide_vocab_bundle):
    model = HookedTransformer(wide_vocab_bundle)
    clean = np.random.default_rng(0).integers(0, 20000, size=(2, 64))
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    with pytest.raises(InputError, match=r"memory_budget_mb=2 is below what one patched variant needs .*give at least \d+"):
        patching.get_act_patch_resid_pre(model, clean, cache, lambda logits: logits[:, -1, 0].mean(), progress=False,
                                         memory_budget_mb=2)
