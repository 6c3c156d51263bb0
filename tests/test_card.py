"""`mvcoding report RUN_DIR`: the model card of a pretraining run and the evaluations of its checkpoint."""

from __future__ import annotations

import hashlib
import json

from conftest import SYNTHETIC, tiny
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.eval import evaluate
from mvcoding.train import train


def test_the_card_names_the_checkpoint_and_its_evaluations(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 2})))
    ckpt = run / "checkpoints" / "last.pt"
    over = {"checkpoint": ckpt, "eval.linear.epochs": 2, "eval.clips": 1, "eval.views": "[rgb,rgb+flow]"}
    evaluate("linear", load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"run.dir": run / "eval-linear"})))
    other = tmp_path / "other"  # an evaluation of another checkpoint beside the run: not on the card
    evaluate("linear", load_config(SYNTHETIC, tiny(synthetic_root, **{"eval.random_init": "true", "run.dir": other,
                                                                      "eval.linear.epochs": 2})))  # fmt: skip
    assert main(["report", str(run)]) == 0
    card = (run / "MODEL_CARD.md").read_text()
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    entries = json.loads((run / "eval-linear" / "results.json").read_text())["entries"]
    assert f"sha256: `{sha}`" in card and "step 2, epoch" in card
    for entry in ("rgb", "rgb+flow"):  # one row per eval.views entry, split 1 of the dataset
        top1 = entries[entry]["metrics"]["video_top1"]
        assert f"| linear | {entry} | 1 | {100 * top1:.1f}%" in card and "`eval-linear/results.json` |" in card
    assert card.count("| linear |") == 2  # not again from the entries' own folders (eval-linear/rgb/results.json)
    assert str(other) not in card and "![training curves](training.png)" in card
    assert "| rgb | small3d_gn |" in card and "objective `cmc`" in card
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a pretraining run directory" in capsys.readouterr().err


def test_a_broken_config_or_a_torn_metrics_line_is_one_line_or_read_around(tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "epoch": 0, "model": {}}, run / "checkpoints" / "last.pt")
    for text, message in (("a: [1,\n", "cannot be read"), ("seed: 0\n", "has no dataset, objective, optim, data")):
        (run / "config.yaml").write_text(text)
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {run / 'config.yaml'} ") and message in err, err
    cfg = load_config(SYNTHETIC, tiny(tmp_path / "data"))
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo')  # torn by a kill
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
