"""`mvcoding demo`: synthetic data -> flow cache -> RGB+flow CMC pretraining -> linear probes.

Compares the linear probe on the CMC-pretrained RGB encoder with the same probe on a randomly
initialised RGB encoder and writes summary.json ({"cmc": {...}, "random_init": {...}, timings,
"machine": {...}, "config"}). `mvcoding demo --record` (`make demo-record`) also writes the numbers the
README quotes to RECORD (experiments/results/demo.json; tests/test_demo.py checks the README against it).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

from omegaconf import OmegaConf

from mvcoding.config import CONFIG_DIR, load_config, run_dir
from mvcoding.errors import UserError

log = logging.getLogger(__name__)
RECORD = Path("experiments") / "results" / "demo.json"


def demo(overrides: list[str], record: bool = False) -> Path:
    from mvcoding.eval.linear import linear_probe
    from mvcoding.precompute import main as precompute
    from mvcoding.train import train

    if record and not RECORD.parent.is_dir():
        raise UserError(f"--record writes {RECORD}: run it from the repository root")
    config = CONFIG_DIR / "synthetic_rgb_flow.yaml"
    cfg = load_config(config, ["name=demo", *overrides])
    out = run_dir(cfg)
    given, overrides = overrides, [f"run.dir={out}", "name=demo", *overrides]
    cfg = load_config(config, overrides)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    log.info("demo 1/4: synthetic dataset and flow cache (%s)", cfg.dataset.root)
    if precompute(["flow", str(config), *overrides]) != 0:
        raise UserError("the flow precompute failed; see the lines above")
    t_data = time.perf_counter()
    log.info("demo 2/4: CMC pretraining of RGB + flow encoders")
    train(cfg)
    t_train = time.perf_counter()
    log.info("demo 3/4: linear probe on the pretrained RGB encoder")
    cmc = linear_probe(cfg, str(out / "checkpoints" / "last.pt"), out / "eval-cmc")
    log.info("demo 4/4: the same probe on a randomly initialised RGB encoder")
    rand = linear_probe(cfg, None, out / "eval-random", random_init=True)
    summary = {
        "cmc": cmc,
        "random_init": rand,
        "gain_video_top1": cmc["video_top1"] - rand["video_top1"],
        "classes": cfg.dataset.generate.classes,
        "seconds": round(time.perf_counter() - t0, 1),
        "data_seconds": round(t_data - t0, 1),
        "pretrain_seconds": round(t_train - t_data, 1),
        "machine": machine(load_start, os.getloadavg()),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(out, summary)
    if record:
        write_record(summary, out, given)
        print(f"recorded: {RECORD.resolve()}")
    return out


def print_table(out: Path, summary: dict) -> None:
    cmc, rand = summary["cmc"], summary["random_init"]
    rows = [
        ("encoder", "clip top-1", "video top-1"),
        ("CMC (RGB+flow)", cmc["clip_top1"], cmc["video_top1"]),
        ("random init", rand["clip_top1"], rand["video_top1"]),
    ]
    print(f"\nLinear probe on the frozen RGB encoder, synthetic test split ({out}):")
    for name, clip, video in rows:
        fmt = "{:<16s} {:>10s} {:>11s}" if isinstance(clip, str) else "{:<16s} {:>10.1%} {:>11.1%}"
        print(fmt.format(name, clip, video))
    print(f"summary: {out / 'summary.json'}  ({summary['seconds']:.0f} s)")


def machine(load_start: tuple[float, ...], load_end: tuple[float, ...]) -> dict:
    """The facts that make a wall time comparable: usable CPUs, versions, and the 1/5/15-minute load
    averages when the demo started and ended (near 0 at the start: the machine was idle)."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": cpus,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in load_end],
    }


def git(*args: str) -> str | None:
    """`git args` in the working folder, its stripped output; None outside a repository or without git."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def write_record(summary: dict, out: Path, overrides: list[str]) -> None:
    """RECORD: the summary's numbers, the machine, the commit (dirty: tracked files differed from it) and
    the command; `make demo` on such a machine reproduces them."""
    status = git("status", "--porcelain", "--untracked-files=no")
    record = {
        "command": " ".join(["mvcoding", "demo", *overrides]),
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": str(out),
        **summary,
    }
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
