"""Training under faults and across processes: in-batch negatives over every rank, signals, a full disk,
bad or foreign checkpoints on resume, and metrics that a resume does not duplicate."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.train import train
from test_train import REPO, metrics, torchrun_train


@pytest.mark.slow  # ~13 s; test_train's torchrun test keeps two processes = one in the default suite
def test_torchrun_in_batch_negatives_span_every_rank(synthetic_root, tmp_path):
    """2 gloo processes with batch 2 each train the objective of 1 process with batch 4: the candidates
    of every anchor are the global batch (gathered with gradients), not the rank's own clips."""
    over = {"train.max_steps": 5, "objective.negatives": "in_batch", "objective.tau": 0.1, "device": "cpu",
            "data.workers": 0, "views.rgb.encoder": "small3d_gn", "views.flow.encoder": "small3d_gn"}  # fmt: skip
    single = tmp_path / "single"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"run.dir": single, "train.batch_size": 4})))
    double = tmp_path / "double"
    torchrun_train(tiny(synthetic_root, **over, **{"run.dir": double, "train.batch_size": 2}))
    ours, ref = metrics(double), metrics(single)
    assert sorted(ours) == sorted(ref) == [1, 2, 3, 4, 5]
    for step in ref:
        assert ours[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4), step
        assert ours[step]["mi/rgb-flow"] == pytest.approx(ref[step]["mi/rgb-flow"], rel=1e-3, abs=1e-4), step
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(double / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:  # the same gradients at every step: the same weights after 5 AdamW steps
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)


def cli_train(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_saves_the_current_step_and_resume_continues_without_duplicates(synthetic_root, tmp_path, sig):
    run = tmp_path / "run"
    args = tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 400, "train.epochs": 400,
                                   "train.save_every": 1000, "data.workers": 1})  # fmt: skip
    proc = cli_train(args)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip() and not line[:2].isdigit()]  # not log lines
    assert "Traceback" not in err and lines[-1].startswith(f"stopped by {sig.name} at step "), err[-2000:]
    step = int(lines[-1].split(" at step ")[1].split(":")[0])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == step >= 3  # saved at the step it stopped at, not at the last save_every
    assert processes_mentioning(str(run)) == []  # no DataLoader worker outlives the run
    assert not list((run / "checkpoints").glob(".*tmp*"))

    done = subprocess.run([sys.executable, "-m", "mvcoding", "train", SYNTHETIC,
                           *tiny(synthetic_root, **{"run.dir": run, "train.max_steps": step + 2, "resume": "auto"})],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 3))


def test_metrics_logged_after_the_last_checkpoint_are_not_repeated(synthetic_root, tmp_path):
    run = tmp_path / "run"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 3})))
    with open(run / "metrics.jsonl", "a") as f:  # what a run killed after logging steps 4 and 5 leaves
        f.write('{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n')
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 6, "resume": "auto"})))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[3]["loss"] != 1.0


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(synthetic_root, tmp_path):
    """RLIMIT_FSIZE fails every write past 256 KiB (EFBIG), as a full disk fails with ENOSPC."""
    run = tmp_path / "run"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 2})))
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert len(before) > 256 * 1024
    args = tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 4, "resume": "auto"})
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        from mvcoding.cli import main
        sys.exit(main(["train", {SYNTHETIC!r}, *{args!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and last.startswith("error: cannot write ") and "last.pt" in last, last
    assert "previous file there is intact" in last
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no temporary file left


def test_bad_resume_checkpoints_are_one_line(synthetic_root, tmp_path, capsys):
    good = tmp_path / "good"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": good, "train.max_steps": 1})))
    data = (good / "checkpoints" / "last.pt").read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "cannot read the checkpoint"),
        "text.pt": (b"not a checkpoint at all", "cannot read the checkpoint"),
        "empty.pt": (b"", "cannot read the checkpoint"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")  # someone's plain state_dict
    cases["foreign.pt"] = (None, "is not an mvcoding training checkpoint (it has no 'model')")
    for name, (_, message) in cases.items():
        over = {"run.dir": tmp_path / f"r-{name}", "train.max_steps": 2, "resume": tmp_path / name}
        assert main(["train", SYNTHETIC, *tiny(synthetic_root, **over)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: resume=") and message in err[-1], (name, err[-3:])
        assert "Traceback" not in "\n".join(err)


def test_resume_auto_without_run_dir_takes_only_a_matching_run(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working folder
    first = tmp_path / "runs" / "x-20260101-000000"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"name": "x", "run.dir": first, "train.max_steps": 2})))
    over = {"name": "x", "train.max_steps": 3, "resume": "auto", "run.dir": "null"}
    assert main(["train", SYNTHETIC, *tiny(synthetic_root, **{**over, "objective.K": 4})]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "resume=auto: no earlier run of 'x' matches this config" in err and "objective.K=8, not 4" in err, err
    assert main(["train", SYNTHETIC, *tiny(synthetic_root, **over)]) == 0  # the same config: continues that run
    assert torch.load(first / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.name]


def test_keep_every_keeps_periodic_checkpoints_beside_last(synthetic_root, tmp_path):
    run = tmp_path / "run"
    over = {"run.dir": run, "train.max_steps": 5, "train.keep_every": 2, "train.save_every": 1000}
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.pt", "step-00000002.pt", "step-00000004.pt"]
    steps = {n: torch.load(run / "checkpoints" / n, weights_only=True)["step"] for n in names}
    assert steps == {"last.pt": 5, "step-00000002.pt": 2, "step-00000004.pt": 4}


def test_saving_where_the_folder_is_a_file_is_one_line(tmp_path):
    from mvcoding.errors import UserError
    from mvcoding.files import save_atomic

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"cannot write .*not_a_folder/last.pt"):
        save_atomic({"a": torch.zeros(2)}, blocker / "last.pt")
