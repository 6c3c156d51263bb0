"""tools/bench/gpu.py, the prepared GPU check, runs on the CPU (--quick) so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~40-90 s: the whole prepared GPU script (make test-slow)
def test_the_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO / "tools/bench/gpu.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for run in ("train_cached", "train_cached_workers", "train_video"):
        r = result[run]
        assert r["steps"] == 3 and r["clips_per_s"] > 0 and 0 <= r["data_wait"] <= 1, r
    assert result["loss"]["ms"] > 0 and ("pairs_per_s" in result["raft"] or "skipped" in result["raft"])
    assert "loader" in done.stdout and "goal" in done.stdout
