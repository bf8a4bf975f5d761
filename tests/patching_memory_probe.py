"""Run one patching sweep in a fresh process and report, as JSON, the peak resident memory it added.

``python -m tests.patching_memory_probe BUNDLE BUDGET_MB`` (BUDGET_MB "none": max_batch=1). The peak is the
kernel's own high-water mark (VmHWM, reset with /proc/self/clear_refs just before the sweep), so nothing
is sampled or estimated. Used by tests/test_patching_memory.py and to measure by hand.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read())[1]) * 1024


def main(bundle: str, budget: str) -> None:
    from graphlens import HookedTransformer, patching

    model = HookedTransformer(bundle)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, model.cfg.d_vocab, size=(2, model.cfg.n_ctx))
    corrupted = clean.copy()
    corrupted[:, ::3] = rng.integers(0, model.cfg.d_vocab, size=corrupted[:, ::3].shape)
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    kwargs = dict(max_batch=1) if budget == "none" else dict(memory_budget_mb=float(budget))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = _status("VmRSS")
    result = patching.get_act_patch_resid_pre(model, corrupted, cache, lambda logits: logits[:, -1, 7].mean(),
                                              progress=False, **kwargs)
    peak = _status("VmHWM")
    print(json.dumps({"peak_added_mb": (peak - before) / 2**20, "result": result.tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
