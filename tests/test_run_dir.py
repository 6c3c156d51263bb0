"""The run directory of `mvcoding train`: locked while a run writes it, its settings' history kept, a
resume that would change what is trained refused, and metrics.jsonl holding each step once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SYNTHETIC, tiny
from mvcoding import train as train_module
from mvcoding.cli import main
from mvcoding.config import LOCK, load_config, lock_run_dir
from mvcoding.errors import UserError
from mvcoding.train import train

REPO = Path(__file__).resolve().parent.parent


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_on_a_run_dir_in_use_is_one_line_and_a_dead_runs_lock_blocks_nothing(
    synthetic_root, tmp_path, capsys
):
    """Two runs on one run.dir interleaved their metrics.jsonl. The lock is the kernel's, so kill -9 frees it at
    once, though the killed run's DataLoader worker may live on for seconds (forked children drop the lock)."""
    run = tmp_path / "run"
    args = tiny(
        synthetic_root, **{"run.dir": run, "train.max_steps": 10_000, "train.epochs": 10_000, "data.workers": 1}
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "first.err").open("w"),
    )
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):  # workers started
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.err").read_text()[-2000:]
            time.sleep(0.02)
        assert main(["train", SYNTHETIC, *tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1})]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert (
            err == f"error: run.dir={run} is in use by another training run (pid {first.pid}); wait for it to "
            "end, or choose another run.dir\n"
        )
        assert first.poll() is None  # the first run goes on
        assert (run / LOCK).read_text() == f"{first.pid} training run\n"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert (run / LOCK).is_file()  # a killed run leaves its lock file, but not its lock
    with lock_run_dir(run):
        assert (run / LOCK).read_text() == f"{os.getpid()} run\n"
    assert not (run / LOCK).exists()  # removed by the run that held it


def test_a_run_dir_is_locked_for_the_whole_run_and_released_after_it(synthetic_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    seen = []

    def probe(*a, **k):  # each checkpoint save: another lock on the run directory is refused meanwhile
        with pytest.raises(UserError, match="is in use by another training run"), lock_run_dir(run):
            pass
        seen.append(True)
        return save(*a, **k)

    save = train_module.save_atomic
    monkeypatch.setattr(train_module, "save_atomic", probe)
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1})))
    assert seen and not (run / LOCK).exists()
    with pytest.raises(UserError, match="trained with optim.lr"):  # a failed run releases it too
        train(
            load_config(
                SYNTHETIC,
                tiny(synthetic_root, **{"run.dir": run, "optim.lr": 0.5, "resume": "auto", "train.max_steps": 2}),
            )
        )
    with lock_run_dir(run):
        pass


def test_resume_refuses_a_changed_batch_size_or_learning_rate_and_keeps_the_settings_history(
    synthetic_root, tmp_path, capsys
):
    run = tmp_path / "run"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1})))
    saved = (run / "config.yaml").read_text()
    over = {"run.dir": run, "train.max_steps": 2, "resume": "auto"}
    assert main(["train", SYNTHETIC, *tiny(synthetic_root, **over, **{"train.batch_size": 8, "optim.lr": 0.01})]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "was trained with optim.lr=0.001, train.batch_size=4, not optim.lr=0.01, train.batch_size=8" in err, err
    assert "drop those overrides to continue it, or start a new run in another run.dir (resume=null)" in err
    assert (run / "config.yaml").read_text() == saved and steps(run) == [1]  # nothing written
    for key, value in (("seed", 1), ("objective.tau", 0.2), ("views.rgb.width", 8)):
        with pytest.raises(UserError, match=rf"trained with {key}="):
            train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{key: value})))

    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"data.workers": 1})))  # how long, how: may change
    assert steps(run) == [1, 2]
    assert (run / "config-1.yaml").read_text() == saved  # the first invocation's settings
    now = OmegaConf.load(run / "config.yaml")
    assert now.train.max_steps == 2 and now.data.workers == 1 and now.resume == "auto"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"data.workers": 1})))  # the same again: no copy
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{**over, "train.max_steps": 3})))
    history = [OmegaConf.load(run / f"config-{n}.yaml").train.max_steps for n in (1, 2)]
    assert history == [1, 2] and OmegaConf.load(run / "config.yaml").train.max_steps == 3
    assert not (run / "config-3.yaml").exists() and steps(run) == [1, 2, 3]


def test_resume_after_a_failed_first_save_logs_each_step_once(synthetic_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    over = {"run.dir": run, "train.max_steps": 2, "train.save_every": 1}

    def full_disk(obj, path):
        raise UserError(f"cannot write {path} (No space left on device)")

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_atomic", full_disk)
        with pytest.raises(UserError, match="No space left"):
            train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))
    assert steps(run) == [1] and not (run / "checkpoints" / "last.pt").exists()
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, resume="auto")))  # no checkpoint: from step 0
    assert steps(run) == [1, 2]


@pytest.mark.parametrize("tail", ['{"step": 3, "lo', '{"step": 3, "loss": 1.0}', "\x00\x00\x00"])
def test_a_torn_last_line_of_metrics_is_legitimate_and_the_run_goes_on(synthetic_root, tmp_path, tail):
    """What a kill mid-write leaves: part of a line, no newline (or a block of zeros on some file systems)."""
    run = tmp_path / "run"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 2})))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(tail)
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 3, "resume": "auto"})))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] != 1.0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3


def test_a_run_dir_that_cannot_be_made_is_one_line(synthetic_root, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    run = tmp_path / "a_file" / "run"
    assert main(["train", SYNTHETIC, *tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1})]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot create run.dir={run} (Not a directory); choose another run.dir\n", err


def test_an_evaluation_on_a_run_dir_in_use_is_one_line(synthetic_root, tmp_path, capsys):
    run = tmp_path / "eval"
    with lock_run_dir(run, "training run"):
        code = main(["eval", "linear", SYNTHETIC, *tiny(synthetic_root, **{"run.dir": run}), "eval.random_init=true"])
    assert code == 2
    err = capsys.readouterr().err
    want = f"error: run.dir={run} is in use by another training run (pid {os.getpid()}); wait for it to end"
    assert err == want + ", or choose another run.dir\n"
    assert not (run / "results.json").exists()


def test_a_run_saved_before_a_setting_existed_resumes_only_with_what_it_trained(synthetic_root):
    """objective.negative_grad and objective.positives came after runs were saved without them: such a run
    trained with gradient through in-batch negatives and with bank positives, so only those values match."""
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **{"objective.positives": "bank"}))
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["objective"]["negative_grad"], saved["objective"]["positives"]
    assert train_module.config_differences(saved, cfg, ("objective",)) == []
    fresh = load_config(SYNTHETIC, tiny(synthetic_root, **{"objective.positives": "fresh"}))
    assert train_module.config_differences(saved, fresh, ("objective",)) == [("objective.positives", "(none)", "fresh")]
    constant = load_config(
        SYNTHETIC, tiny(synthetic_root, **{"objective.positives": "bank", "objective.negative_grad": False})
    )
    assert train_module.config_differences(saved, constant, ("objective",)) == [
        ("objective.negative_grad", "(none)", False)
    ]
