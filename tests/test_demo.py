"""`mvcoding demo` end to end: tiny (default suite) and full size (slow: the >= 15 point claim)."""

from __future__ import annotations

import json

import pytest

from conftest import tiny
from mvcoding.cli import main


def test_demo_writes_the_summary_contract(tmp_path, capsys):
    run = tmp_path / "demo"
    overrides = tiny(tmp_path / "data", **{"run.dir": run, "train.max_steps": 3, "eval.linear.epochs": 5,
                                           "eval.clips": 2})  # fmt: skip
    assert main(["demo", *overrides]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("cmc", "random_init"):
        assert set(summary[key]) >= {"video_top1", "clip_top1"}
        assert 0.0 <= summary[key]["video_top1"] <= 1.0
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.jsonl").is_file()
    assert (run / "eval-cmc" / "results.json").is_file() and (run / "eval-random" / "confusion.png").is_file()
    out = capsys.readouterr().out
    assert "CMC (RGB+flow)" in out and "random init" in out


@pytest.mark.slow
def test_full_demo_pretraining_beats_random_init_by_15_points(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", f"dataset.root={tmp_path / 'data'}", f"run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cmc"]["video_top1"] >= summary["random_init"]["video_top1"] + 0.15, summary
