"""How many bank refreshes memory-bank CMC spends at chance, per setting, seed and dataset.

    python experiments/plateau.py                      # every variant x seed x set; rerun to resume
    python experiments/plateau.py --only fill --sets demo --seeds 0
    python experiments/plateau.py --report             # rebuild the table and the picture only
    python experiments/plateau.py --probe --only original fresh   # also the linear probe of each run's encoder

Each run is `mvcoding train` (RGB + flow, core view, memory bank) with the variant's overrides, in
runs/plateau/<set>/<variant>/seed<k>. A bank row is refreshed once per epoch, so the plateau is
counted in epochs: the number of whole epochs before the first epoch whose mean logged loss is
below 0.9 * 2 ln(K + 1) (chance for one pair: two directions of a softmax over K + 1 candidates).
Writes experiments/results/plateau.json (every run), plateau.md (the table) and plateau.png (the
loss curves, each divided by its chance level).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"

# dataset -> (config, overrides that make it a 2-view memory-bank run, K)
SETS = {
    "demo": ("configs/synthetic_rgb_flow.yaml", [], 200),
    "bench": ("configs/synthetic_bench.yaml", ["~views.depth", "~views.audio", "objective.graph=core"], 587),
}
BANK = [
    "objective.negatives=memory_bank",
    "objective.tau=0.07",
    "objective.bank_init=random",
    "objective.positives=bank",
]
VARIANTS = {  # name -> overrides on top of BANK (the original CMC's bank: random rows, tau 0.07, m 0.5)
    "original": [],
    "fill": ["objective.bank_init=fill"],
    "m0": ["objective.momentum=0"],
    "fill+m0": ["objective.bank_init=fill", "objective.momentum=0"],
    "tau0.2": ["objective.tau=0.2"],
    "lr3e-4": ["optim.lr=3e-4"],
    "bn": ["objective.head_norm=batchnorm"],
    "bn+fill": ["objective.head_norm=batchnorm", "objective.bank_init=fill"],
    "fresh": ["objective.positives=fresh"],
    "fresh+fill": ["objective.positives=fresh", "objective.bank_init=fill"],
    "in-batch": ["objective.negatives=in_batch", "objective.tau=0.1"],  # the reference: no bank, no plateau to count
    "fresh+tau0.1": ["objective.positives=fresh", "objective.tau=0.1"],
}
EPOCHS = 10
STEPS_PER_EPOCH = {"demo": 7, "bench": 19}  # 224 and 616 training videos in batches of 32


def threshold(K: int) -> float:
    return 0.9 * 2 * math.log(K + 1)


def plateau_epochs(records: list[dict], K: int) -> int | None:
    """Whole epochs before the first epoch whose mean logged loss is below 0.9 * 2 ln(K+1); None: never."""
    by_epoch: dict[int, list[float]] = {}
    for r in records:
        if "loss" in r:
            by_epoch.setdefault(int(r["epoch"]), []).append(float(r["loss"]))
    for epoch in sorted(by_epoch):
        if statistics.fmean(by_epoch[epoch]) < threshold(K):
            return epoch
    return None


def run_dir(s: str, variant: str, seed: int) -> Path:
    return ROOT / "runs" / "plateau" / s / variant / f"seed{seed}"


def train(s: str, variant: str, seed: int, epochs: int) -> Path:
    config, set_overrides, K = SETS[s]
    out = run_dir(s, variant, seed)
    if (out / "done").is_file():
        return out
    overrides = [
        *set_overrides,
        *BANK,
        f"objective.K={K}",
        *VARIANTS[variant],
        f"seed={seed}",
        f"train.epochs={epochs}",
        "train.log_every=1",
        "train.monitor_every=0",
        "data.workers=1",
        f"run.dir={out}",
        "resume=auto",
    ]
    cmd = [sys.executable, "-m", "mvcoding", "train", config, *overrides]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    (out / "done").write_text("")
    return out


def probe(s: str, variant: str, seed: int) -> None:
    """The linear probe on the run's frozen RGB encoder (video top-1), in <run>/eval-linear."""
    config, set_overrides, _ = SETS[s]
    out = run_dir(s, variant, seed)
    if (out / "eval-linear" / "results.json").is_file():
        return
    ckpt, dest = out / "checkpoints" / "last.pt", out / "eval-linear"
    cmd = [
        sys.executable,
        "-m",
        "mvcoding",
        "eval",
        "linear",
        config,
        *set_overrides,
        f"checkpoint={ckpt}",
        f"run.dir={dest}",
        "data.workers=1",
    ]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})


def bank_stats(ckpt: Path) -> dict:
    """Of the final banks (N, D) per view: mean |cos| between RGB and flow rows, and each bank's effective
    rank (sum(s)^2 / sum(s^2) over its singular values s): orthogonal views and a low rank are the plateau."""
    import torch

    banks = torch.load(ckpt, weights_only=True)["objective"]
    rgb, flow = banks.get("banks.rgb"), banks.get("banks.flow")
    if rgb is None or flow is None:
        return {}

    def rank(b):
        sv = torch.linalg.svdvals(b)
        return float(sv.sum() ** 2 / (sv**2).sum())

    return {"cross_view_abs_cos": float((rgb @ flow.T).abs().mean()), "rank_rgb": rank(rgb), "rank_flow": rank(flow)}


def collect(sets, variants, seeds) -> list[dict]:
    rows = []
    for s in sets:
        K = SETS[s][2]
        for v in variants:
            for seed in seeds:
                path = run_dir(s, v, seed) / "metrics.jsonl"
                if not (path.parent / "done").is_file():
                    continue
                records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
                epochs = 1 + max(r["epoch"] for r in records)
                result = path.parent / "eval-linear" / "results.json"
                top1 = json.loads(result.read_text())["metrics"]["video_top1"] if result.is_file() else None
                rows.append(
                    {
                        "set": s,
                        "variant": v,
                        "seed": seed,
                        "K": K,
                        "threshold": threshold(K),
                        "plateau_epochs": plateau_epochs(records, K),
                        "epochs": epochs,
                        "final_loss": losses[-1][1],
                        "losses": losses,
                        "overrides": VARIANTS[v],
                        "probe_video_top1": top1,
                        **bank_stats(path.parent / "checkpoints" / "last.pt"),
                    }
                )
    return rows


def epoch_means(r: dict) -> list[float]:
    """The mean logged loss of each epoch of run r, divided by 2 ln(K+1)."""
    per_epoch: dict[int, list[float]] = {}
    for step, loss in r["losses"]:
        per_epoch.setdefault((step - 1) // STEPS_PER_EPOCH[r["set"]], []).append(loss)
    return [statistics.fmean(per_epoch[e]) / (2 * math.log(r["K"] + 1)) for e in sorted(per_epoch)]


def report(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "plateau.json").write_text(json.dumps(rows, indent=1))
    head = "| set | variant | overrides | plateau (epochs) per seed | last loss / chance | probe top-1 (%) per seed |"
    lines = [head, "|---|---|---|---|---|---|"]
    for s in SETS:
        for v in VARIANTS:
            rs = [r for r in rows if r["set"] == s and r["variant"] == v]
            if not rs:
                continue
            per_seed = ", ".join(
                f">={r['epochs']}" if r["plateau_epochs"] is None else str(r["plateau_epochs"]) for r in rs
            )
            per_seed = "n/a (no bank)" if v == "in-batch" else per_seed
            ratio = statistics.fmean(r["final_loss"] / (2 * math.log(r["K"] + 1)) for r in rs)
            probes = ", ".join(
                "-" if r["probe_video_top1"] is None else f"{100 * r['probe_video_top1']:.1f}" for r in rs
            )
            overrides = " ".join(f"`{o}`" for o in VARIANTS[v]) or "-"
            lines.append(f"| {s} | {v} | {overrides} | {per_seed} | {ratio:.2f} | {probes} |")
    (RESULTS / "plateau.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETS), figsize=(6 * len(SETS), 4), squeeze=False)
    colors = {v: plt.get_cmap("tab20")(i) for i, v in enumerate(VARIANTS)}
    for ax, s in zip(axes[0], SETS, strict=True):
        for v in VARIANTS:
            rs = [r for r in rows if r["set"] == s and r["variant"] == v]
            if not rs or v == "in-batch":  # in-batch has no bank: its chance is 2 ln B, not 2 ln(K+1)
                continue
            curves = [epoch_means(r) for r in rs]  # per seed: mean loss / chance of each epoch
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[e] for c in curves) for e in range(n)]
            ax.plot(range(1, n + 1), mean, color=colors[v], marker="o", ms=3, lw=1.2, label=f"{v} ({len(rs)} seeds)")
        ax.axhline(0.9, color="k", ls="--", lw=0.8)
        ax.set(
            title=f"{s}: K={SETS[s][2]}, mean over seeds",
            xlabel="epoch (bank refreshes)",
            ylabel="epoch-mean loss / 2 ln(K+1)",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "plateau.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--only", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--report", action="store_true", help="only rebuild the table and the picture")
    p.add_argument("--probe", action="store_true", help="also the linear probe of each run's RGB encoder")
    a = p.parse_args()
    if not a.report:
        for s in a.sets:
            for v in a.only:
                for seed in a.seeds:
                    train(s, v, seed, a.epochs)
                    if a.probe:
                        probe(s, v, seed)
    report(collect(list(SETS), list(VARIANTS), [0, 1, 2]))


if __name__ == "__main__":
    main()
