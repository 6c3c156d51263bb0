"""What the defaults that depart from the original CMC cost per training step, side by side in one process.

Each variant is a real run of configs/synthetic_bench.yaml (rgb + flow, the memory bank), built by
mvcoding.train.setup in a temporary run directory; all of them step on the same batch, interleaved
(variant 1, 2, 3, 1, 2, ...), and the script prints median ms per optimiser step and the ratio to the
original. The bank fill (objective.bank_init=fill) is one no-grad forward pass per batch of the
training set before step 0; its row is that pass on the same batch, and "x step" is its cost in
training steps, so the whole fill costs about that fraction of one epoch (data loading aside).

  original        objective.positives=bank objective.head_norm=none objective.tau=0.07
  defaults        objective.positives=fresh objective.head_norm=auto (center with a bank) objective.tau=0.1
  batchnorm head  the defaults with objective.head_norm=batchnorm
  fill batch      the defaults' fill pass on one batch (objective.bank_init=fill)

train.sync_bn is not timed here: it acts only under torchrun with BatchNorm encoders (one all-reduce of
each BatchNorm layer's statistics per step). objective.tau changes no arithmetic.

    python tools/bench/defaults.py [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mvcoding.config import load_config
from mvcoding.train import Position, setup, to_device, train_step

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {
    "original": ["objective.positives=bank", "objective.head_norm=none", "objective.tau=0.07"],
    "defaults": [],
    "batchnorm head": ["objective.head_norm=batchnorm"],
}
BASE = ["~views.depth", "~views.audio", "objective.negatives=memory_bank", "objective.K=587"]


def build(overrides: list[str], run_dir: Path):
    cfg = load_config(
        ROOT / "configs/synthetic_bench.yaml",
        [*BASE, *overrides, f"run.dir={run_dir}", "train.monitor_every=0", "data.workers=0"],
    )
    run, _ = setup(cfg)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: build(o, Path(tmp) / name.replace(" ", "_")) for name, o in VARIANTS.items()}
        first = runs["defaults"]
        batch = to_device(first, next(iter(first.loader)))
        print(f"batch {first.cfg.train.batch_size} clips, views {list(first.views)}, K={first.cfg.objective.K}")
        for n, r in runs.items():
            print(f"  {n}: positives={r.objective.positives} head_norm={r.model.head_norm} tau={r.objective.tau}")

        def fill_once() -> None:
            with torch.no_grad():
                z = first.net(batch)
                first.objective.fill({n: v.float() for n, v in z.items()}, batch["index"])

        steps = {name: (lambda r=r: train_step(r, batch, Position())) for name, r in runs.items()}
        steps["fill batch"] = fill_once
        times: dict[str, list[float]] = {name: [] for name in steps}
        for fn in steps.values():  # one untimed warm-up each
            fn()
        for _ in range(args.rounds):
            for name, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["original"])
    print(f"{'variant':<16}{'ms/step':>10}{'x original':>12}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<16}{1000 * med:>10.1f}{med / base:>12.3f}")
    print(f"medians of {args.rounds} interleaved rounds, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
