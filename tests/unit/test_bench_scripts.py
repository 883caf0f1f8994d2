"""The benchmarks are not run by the suite (no timing in tests), but they must keep importing and
parsing their options as the code under them moves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["launch.py", "pull.py", "pynamic.py", "pfs_ops.py", "slurm_steps.py",
                                    "gateway.py", "lookup.py"])
def test_bench_script_starts(script: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
