"""Loggers are explicit (log.tensorboard, log.wandb): installing a package changes nothing a run writes;
a logger that is asked for but missing is one line; W&B offline writes its files without a network.
Progress: a bar per epoch on a terminal, log lines otherwise."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from conftest import SYNTHETIC, tiny
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.train import train
from test_train import REPO


def test_by_default_a_run_writes_only_its_own_files(synthetic_root, tmp_path):
    run = train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "r", "train.max_steps": 2})))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "training.png"]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_asking_for_a_missing_logger_is_one_line(synthetic_root, tmp_path, capsys):
    over = tiny(synthetic_root, **{"run.dir": tmp_path / "r", "train.max_steps": 1, "log.tensorboard": "true"})
    assert main(["train", SYNTHETIC, *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: log.tensorboard=true needs TensorBoard: pip install 'mvcoding[tensorboard]'"


def test_wandb_offline_logs_every_record_without_a_network(synthetic_root, tmp_path, capsys):
    run = tmp_path / "r"
    over = tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 3, "log.wandb": "offline"})
    env = {**os.environ, "WANDB_SILENT": "true", "HTTPS_PROXY": "http://127.0.0.1:9", "WANDB_MODE": "offline"}
    if importlib.util.find_spec("wandb") is None:
        done = subprocess.run([sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *over], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2 and "log.wandb=offline needs Weights & Biases" in done.stderr
        return
    done = subprocess.run([sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *over], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((run / "wandb").rglob("*"))[:20]
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"clips_per_s" in data and b"loss" in data  # the records went into the offline run


def test_a_terminal_gets_a_progress_bar_and_a_log_file_gets_lines(synthetic_root, tmp_path):
    over = tiny(synthetic_root, **{"train.max_steps": 4, "train.log_every": 1})
    piped = subprocess.run([sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *over, f"run.dir={tmp_path / 'a'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert piped.returncode == 0 and "step=4" in piped.stderr and "epoch 0:" not in piped.stderr
    leader, follower = pty.openpty()  # a terminal for the child's stderr, 120 columns wide
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *over, f"run.dir={tmp_path / 'b'}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=follower)  # fmt: skip
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0
    text = out.decode(errors="replace")
    assert "epoch 0:" in text and "clips_per_s=" in text and "step=4" not in text
    assert [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 3, 4]  # fmt: skip
