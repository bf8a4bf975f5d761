"""Property-based fuzz (tests/fuzz_driver.py) in a subprocess: only graphlens errors escape, and nothing crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

# The driver's example counts keep it near a minute here; the timeout bounds it in CI whatever the machine.
TIMEOUT_S = 240


def test_only_graphlens_errors_escape(small_bundle):
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.fuzz_driver", str(small_bundle)], capture_output=True,
                              text=True, cwd=Path(__file__).parents[1], timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the fuzz run took over {TIMEOUT_S}s; lower its example counts:\n{err.stdout}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("ok ") == 6, proc.stdout
