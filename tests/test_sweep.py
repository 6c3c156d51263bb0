"""`mvcoding sweep`: statistics, spec errors, and a tiny real 2-cell x 2-seed sweep end to end."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from conftest import SYNTHETIC, tiny
from mvcoding import sweep
from mvcoding.cli import main

EVALS = ("linear", "retrieval")
FAST = {"train.max_steps": 2, "eval.linear.epochs": 3, "eval.clips": 1}
CELLS = [
    {"name": "rgb+flow (in-batch)", "group": "views", "overrides": ["objective.negatives=in_batch"]},
    {"name": "random init", "group": "baseline", "pretrain": False},
]
HEAD = "| group | cell | seeds | probe video top-1 (%) | retrieval R@1 (%) | overrides |"  # one eval.views entry


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def record(cell: str, group: str, seed: int, top1: float | None, classes: int = 8, entries=None) -> dict:
    """A cell.json; entries: {entry: (probe video top-1, retrieval R@1)}, the first one's also in "metrics"."""
    metrics = {"video_top1": top1, "clip_top1": None, "retrieval_r1": None, "pretrain_seconds": None}
    rec = {"cell": cell, "group": group, "seed": seed, "num_classes": classes, "metrics": metrics, "overrides": [],
           "pretrain": True, "config": "c.yaml", "run_dir": f"{cell}/seed{seed}"}  # fmt: skip
    if entries is not None:
        rec["entries"] = {e: {"video_top1": v, "clip_top1": None, "retrieval_r1": r} for e, (v, r) in entries.items()}
        first = next(iter(rec["entries"].values()))
        rec["metrics"] |= {"video_top1": first["video_top1"], "retrieval_r1": first["retrieval_r1"]}
    return rec


# ----------------------------------------------------------------------------- pure functions
def test_mean_and_sample_std_against_hand_computed_values():
    assert sweep.mean([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert sweep.sample_std([0.5, 0.7, 0.9]) == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert sweep.sample_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3))  # ddof=1, not sqrt(5 / 4)
    assert sweep.mean([0.3]) == 0.3 and sweep.sample_std([0.3]) is None  # one seed: no std
    assert sweep.mean([]) is None and sweep.mean([None, 0.4]) == 0.4 and sweep.sample_std([None, 0.1, 0.3]) > 0
    assert sweep.format_pm(0.725, 0.031) == "72.5 ± 3.1"
    assert sweep.format_pm(0.5, None) == "50.0 ± n/a" and sweep.format_pm(None, None) == "n/a"


def test_summarize_groups_the_cells_and_averages_over_seeds():
    records = [
        record("A", "g1", 0, 0.5),
        record("B", "g2", 0, 0.1),
        record("A", "g1", 1, 0.7),
        record("C", "g1", 0, 0.3),
    ]
    rows = sweep.summarize(records)
    assert [r["cell"] for r in rows] == ["A", "C", "B"]  # the groups stay together, in order of first appearance
    a, c = rows[0], rows[1]
    assert a["n"] == 2 and a["seeds"] == [0, 1] and a["video_top1"]["values"] == [0.5, 0.7]
    assert a["video_top1"]["mean"] == pytest.approx(0.6) and a["video_top1"]["std"] == pytest.approx(math.sqrt(0.02))
    assert c["n"] == 1 and c["video_top1"]["std"] is None and a["clip_top1"]["mean"] is None
    assert sweep.chance(records) == 0.125 and sweep.chance([*records, record("D", "g3", 0, 0.2, classes=4)]) is None


def test_the_table_has_a_column_per_eval_views_entry(tmp_path):
    """Cells that evaluate the entries rgb, flow and rgb+flow: a probe and a retrieval column per entry,
    mean ± std over seeds of that entry's numbers, n/a where a cell lacks the entry; the CSV and the
    summary carry every entry. With one entry in all, the table keeps its single-entry layout."""
    both = {"rgb": (0.5, 0.4), "flow": (0.3, 0.2), "rgb+flow": (0.7, 0.6)}
    records = [
        record("A", "g", 0, None, entries=both),
        record("A", "g", 1, None, entries={e: (v + 0.1, r + 0.1) for e, (v, r) in both.items()}),
        record("B", "g", 0, None, entries={"rgb": (0.25, 0.125)}),
    ]
    spec = sweep.Spec(tmp_path / "s.yaml", "s", None, (), (0, 1), ("linear", "retrieval"), ())
    rows = sweep.summarize(records)
    assert rows[0]["entries"]["flow"]["video_top1"]["values"] == [0.3, 0.4]
    assert rows[1]["entries"]["rgb"]["retrieval_r1"]["values"] == [0.125] and "flow" not in rows[1]["entries"]
    lines = sweep.table(spec, rows, None).splitlines()
    head = "| group | cell | seeds | probe rgb (%) | probe flow (%) | probe rgb+flow (%) | R@1 rgb (%) | R@1 flow (%) "
    assert head + "| R@1 rgb+flow (%) | overrides |" in lines
    a = next(x for x in lines if x.startswith("| g | A |")).split(" | ")
    assert a[3:9] == ["55.0 ± 7.1", "35.0 ± 7.1", "75.0 ± 7.1", "45.0 ± 7.1", "25.0 ± 7.1", "65.0 ± 7.1"]
    b = next(x for x in lines if x.startswith("| g | B |")).split(" | ")
    assert b[2:9] == ["1/2", "25.0 ± n/a", "n/a", "n/a", "12.5 ± n/a", "n/a", "n/a"]

    sweep.write_report(spec, tmp_path, records)
    rows_csv = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert float(rows_csv[1]["video_top1 rgb+flow"]) == pytest.approx(0.8)
    assert rows_csv[2]["retrieval_r1 rgb"] == "0.125"
    assert rows_csv[2]["video_top1 flow"] == "" and rows_csv[0]["video_top1"] == "0.5"  # the first entry's
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["entries"] == ["rgb", "flow", "rgb+flow"] and summary["cells"][0]["entries"]["rgb+flow"]
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    one = [record("A", "g", 0, 0.5, entries={"rgb": (0.5, 0.4)}), record("B", "g", 0, 0.2)]  # B: before entries
    one[1]["eval_views"] = ["rgb"]
    lines = sweep.table(spec, sweep.summarize(one), None).splitlines()
    assert HEAD in lines and "| g | A | 1/2 | 50.0 ± n/a | 40.0 ± n/a |  |" in lines
    sweep.write_report(spec, tmp_path, one)
    assert next(csv.reader((tmp_path / "results.csv").open()))[3:7] == list(sweep.METRICS)  # no entry columns


def test_overrides_merge_with_the_cells_winning_and_names_become_folders():
    assert sweep.merge_overrides(["a=1", "b=2"], ["++a=3", "c=4"]) == ["b=2", "++a=3", "c=4"]
    assert sweep.slug("rgb+flow (in-batch)") == "rgb-flow-in-batch"


# ----------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize(
    "spec, message",
    [
        (None, "not found"),
        ({"config": SYNTHETIC, "cells": []}, "has no cells"),
        ({"config": SYNTHETIC, "cells": [{"name": "a"}, {"name": "a"}]}, "distinct name"),
        ({"config": SYNTHETIC, "sedes": [0], "cells": [{"name": "a"}]}, "unknown key 'sedes'"),
        ({"config": SYNTHETIC, "cells": [{"name": "a", "overides": []}]}, "unknown key 'overides' in cell 'a'"),
        ({"config": SYNTHETIC, "cells": [{"name": "a", "overrides": ["seed=3"]}]}, "use seeds:"),
        ({"config": "configs/nope.yaml", "cells": [{"name": "a"}]}, "configs/nope.yaml not found"),
        ({"config": SYNTHETIC, "cells": [{"name": "a", "overrides": ["train.epoch=3"]}]}, "train.epoch=3"),
        ({"config": SYNTHETIC, "cells": [{"name": "a", "overrides": ["eval.views=[rgb,rgb+]"]}]}, "has an empty part"),
        ({"config": SYNTHETIC, "cells": [{"name": "a", "overrides": ["eval.views=[rgb,rgb]"]}]}, "lists 'rgb' twice"),
        ({"config": SYNTHETIC, "cells": [{"name": "a", "overrides": ["eval.views=[rgb+dep]"]}]}, "'dep' is not a view"),
    ],
)
def test_a_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, spec, message):
    path = tmp_path / "spec.yaml" if spec is None else write_spec(tmp_path / "spec.yaml", **spec)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_every_cell_with_its_overrides_and_runs_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", config=SYNTHETIC, overrides=["train.epochs=3"], seeds=[0, 1], cells=CELLS)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells x 2 seeds = 4 runs" in out
    assert "[views] rgb+flow (in-batch)" in out and "train.epochs=3 objective.negatives=in_batch seed=<s>" in out
    assert "[baseline] random init" in out and "eval.random_init=true" in out
    assert not (tmp_path / "out").exists()


def test_a_packaged_config_name_is_taken_as_train_takes_it(tmp_path, capsys, monkeypatch):
    """config: synthetic_rgb_flow (or with .yaml), as `mvcoding train synthetic_rgb_flow` takes it, at the
    top of the spec and in a cell; a name that is neither a file nor packaged is one line."""
    from mvcoding.config import resolve_config

    monkeypatch.chdir(tmp_path)
    cells = [{"name": "a"}, {"name": "b", "config": "synthetic_rgb_flow.yaml"}]
    spec = write_spec(tmp_path / "spec.yaml", config="synthetic_rgb_flow", cells=cells)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    packaged = resolve_config("synthetic_rgb_flow")
    assert [c.config for c in sweep.load_spec(spec).cells] == [packaged, packaged]
    assert f"    {packaged} " in capsys.readouterr().out
    write_spec(tmp_path / "spec.yaml", config="synthetic_rgb_flw", cells=cells)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config synthetic_rgb_flw not found" in err and "synthetic_rgb_flow" in err and "\n" not in err, err


# ----------------------------------------------------------------------------- a real tiny sweep
def assert_cell_is_its_results(rec: dict, folder: Path) -> None:
    """cell.json's metrics and entries are its evaluations' results.json numbers: video_top1 and clip_top1
    the linear probe's video and clip top-1, retrieval_r1 the retrieval's video-level recall@1 (not
    clip_recall@1); "metrics" the first entry's."""
    linear, retrieval = (json.loads((folder / f"eval-{t}" / "results.json").read_text()) for t in EVALS)
    first = {"video_top1": linear["metrics"]["video_top1"], "clip_top1": linear["metrics"]["clip_top1"],
             "retrieval_r1": retrieval["metrics"]["recall@1"]}  # fmt: skip
    assert {k: rec["metrics"][k] for k in first} == first
    assert list(rec["entries"]) == list(linear["entries"]) == list(retrieval["entries"])
    for entry, m in rec["entries"].items():
        lm, rm = linear["entries"][entry]["metrics"], retrieval["entries"][entry]["metrics"]
        assert m == {"video_top1": lm["video_top1"], "clip_top1": lm["clip_top1"], "retrieval_r1": rm["recall@1"]}
    assert rec["entries"][linear["entry"]] == first


def test_cell_json_holds_each_evaluations_numbers_at_their_level(tmp_path, synthetic_root):
    """One random-init cell with 2 clips per video whose video and clip levels differ in its results.json
    (seed 2: probe video top-1 1/8, clip 3/16; retrieval recall@1 2/8, clip 3/16), so a cell.json that
    swapped them, or took recall@1 at clip level, would differ too."""
    over = tiny(synthetic_root, **{"eval.linear.epochs": 3, "eval.clips": 2, "eval.train_clips": 2})
    spec = write_spec(tmp_path / "spec.yaml", config=SYNTHETIC, overrides=over, seeds=[2], cells=[CELLS[1]])
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    folder = out / "random-init" / "seed2"
    rec = json.loads((folder / "cell.json").read_text())
    linear, retrieval = (json.loads((folder / f"eval-{t}" / "results.json").read_text())["metrics"] for t in EVALS)
    assert linear["video_top1"] != linear["clip_top1"] and retrieval["recall@1"] != retrieval["clip_recall@1"]
    assert_cell_is_its_results(rec, folder)
    assert rec["metrics"]["pretrain_seconds"] is None and rec["pretrain"] is False
    assert json.loads((out / "results.json").read_text())["runs"] == [rec]


def test_a_tiny_sweep_writes_every_file_and_reruns_only_what_is_missing(tmp_path, synthetic_root, caplog):
    caplog.set_level(logging.INFO, logger="mvcoding.sweep")
    overrides = tiny(synthetic_root, **FAST)
    cells = [CELLS[0] | {"overrides": [*CELLS[0]["overrides"], "eval.views=[rgb,rgb+flow]"]}, CELLS[1]]
    spec = write_spec(
        tmp_path / "spec.yaml", name="tiny", config=SYNTHETIC, overrides=overrides, seeds=[0, 1], cells=cells
    )
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0

    cells = {(c, s): out / c / f"seed{s}" / "cell.json" for c in ("rgb-flow-in-batch", "random-init") for s in (0, 1)}
    for (c, s), path in cells.items():
        rec = json.loads(path.read_text())
        assert rec["seed"] == s and rec["num_classes"] == 8 and rec["pretrain"] == (c != "random-init")
        # every eval.views entry's numbers, those of its evaluations' results.json; the first also in "metrics"
        assert_cell_is_its_results(rec, path.parent)
        assert list(rec["entries"]) == (["rgb", "rgb+flow"] if c != "random-init" else ["rgb"])
        assert (rec["metrics"]["pretrain_seconds"] is None) == (c == "random-init")
        assert (path.parent / "checkpoints" / "last.pt").is_file() == (c != "random-init")
        assert (path.parent / "eval-linear" / "results.json").is_file()
        assert (path.parent / "eval-retrieval" / "results.json").is_file()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["cell"], r["seed"]) for r in rows] == [
        ("rgb+flow (in-batch)", "0"),
        ("rgb+flow (in-batch)", "1"),
        ("random init", "0"),
        ("random init", "1"),
    ]
    summary = json.loads((out / "results.json").read_text())
    assert [(c["cell"], c["n"]) for c in summary["cells"]] == [("rgb+flow (in-batch)", 2), ("random init", 2)]
    assert summary["chance"] == 0.125
    table = (out / "table.md").read_text().splitlines()
    head = "| group | cell | seeds | probe rgb (%) | probe rgb+flow (%) | R@1 rgb (%) | R@1 rgb+flow (%) | overrides |"
    assert head in table  # a column per eval.views entry
    body = [line for line in table if line.startswith("| views") or line.startswith("| baseline")]
    assert len(body) == 2 and all("| 2 |" in line and " ± " in line for line in body)
    random_init = body[1].split(" | ")
    assert random_init[4] == random_init[6] == "n/a" and " ± " in random_init[3]  # it evaluates rgb only
    assert "objective.negatives=in_batch" in body[0] and "eval.random_init=true" in body[1]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum("sweep 4/4: random init seed 1 ..." in r.getMessage() for r in caplog.records) == 1

    # a rerun skips every finished cell; without one cell.json, only that cell runs again
    stamps = {k: p.stat().st_mtime_ns for k, p in cells.items()}
    caplog.clear()
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert {k: p.stat().st_mtime_ns for k, p in cells.items()} == stamps
    assert sum(r.getMessage().endswith("skipped") for r in caplog.records) == 4
    cells["rgb-flow-in-batch", 1].unlink()
    caplog.clear()
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    changed = {k for k, p in cells.items() if p.stat().st_mtime_ns != stamps.get(k)}
    assert changed == {("rgb-flow-in-batch", 1)}
    assert sum(r.getMessage().endswith("skipped") for r in caplog.records) == 3

    (out / "table.md").unlink()
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    assert (out / "table.md").read_text().splitlines() == table
