"""`mvcoding demo` end to end: tiny (default suite) and full size (slow: the >= 15 point claim)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.eval import features as eval_features
from mvcoding.eval.features import EvalClips
from mvcoding.eval.metrics import sha256_file


def test_demo_writes_the_summary_contract(tmp_path, capsys):
    """The tiny demo: its summary is the two probes' results; the CMC probe reads the run's checkpoint
    (its features are that encoder's, by hand), the baseline a random encoder; each probe fits its
    training features (chance 1/8) and its accuracies are those of its saved probabilities."""
    run = tmp_path / "demo"
    overrides = tiny(tmp_path / "data", **{"run.dir": run, "train.max_steps": 3, "eval.linear.epochs": 5,
                                           "eval.clips": 2})  # fmt: skip
    assert main(["demo", *overrides]) == 0
    summary = json.loads((run / "summary.json").read_text())
    checkpoint = run / "checkpoints" / "last.pt"
    folders = {"cmc": run / "eval-cmc", "random_init": run / "eval-random"}
    results = {k: json.loads((d / "results.json").read_text()) for k, d in folders.items()}
    for key, r in results.items():
        assert summary[key] == pytest.approx(r["metrics"], abs=1e-6), key
        saved = torch.load(folders[key] / "probs.pt", weights_only=True)
        hits = sum(int(p.argmax() == y) for p, y in zip(saved["probs"], saved["labels"], strict=True))
        assert r["metrics"]["video_top1"] == round(hits / len(saved["labels"]), 6), key
    gain = summary["cmc"]["video_top1"] - summary["random_init"]["video_top1"]
    assert summary["gain_video_top1"] == pytest.approx(gain, abs=1e-6)
    cmc, rand = results["cmc"], results["random_init"]
    assert cmc["checkpoint"] == str(checkpoint) and cmc["checkpoint_sha256"] == sha256_file(checkpoint)
    assert not cmc["protocol"]["random_init"] and rand["checkpoint"] is None and rand["protocol"]["random_init"]
    for folder in folders.values():
        log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert log[-1]["epoch"] == 5 and log[-1]["train_top1"] >= 0.75, (folder, log[-1])

    # the CMC probe's features are the pretrained rgb encoder on the test clips; the baseline's are not
    cfg = load_config(run / "config.yaml")
    s = eval_features.prepare(cfg, checkpoint, random_init=False)
    clips = EvalClips(s.index.test, s.views, s.lengths, frames=4, stride=1, clips=2, crops=1)
    weights = torch.load(checkpoint, weights_only=True)["model"]
    encoder = s.views["rgb"].build_encoder()
    encoder.load_state_dict({k.removeprefix("encoders.rgb."): v for k, v in weights.items()
                             if k.startswith("encoders.rgb.")})  # fmt: skip
    cmc = torch.load(run / "eval-cmc" / "features.pt", weights_only=True)["test"]["x"]
    random = torch.load(run / "eval-random" / "features.pt", weights_only=True)["test"]["x"]
    with torch.no_grad():
        for i in (0, 9):
            expected = encoder.eval()(s.views["rgb"].device_transform(clips[i]["rgb"]))  # (crops, C, T, H, W)
            torch.testing.assert_close(cmc[i], expected, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(random[i], expected, rtol=1e-2, atol=1e-3)

    assert (run / "metrics.jsonl").is_file() and (run / "eval-random" / "confusion.png").is_file()
    out = capsys.readouterr().out
    assert "CMC (RGB+flow)" in out and "random init" in out


@pytest.mark.slow
def test_full_demo_pretraining_beats_random_init_by_15_points(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", f"dataset.root={tmp_path / 'data'}", f"run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cmc"]["video_top1"] >= summary["random_init"]["video_top1"] + 0.15, summary
