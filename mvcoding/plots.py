"""Pictures next to the JSON: training curves (more plots live beside the code that makes them)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training(metrics: Path, out: Path) -> None:
    """Loss and MI bound log(K) - L per pair (and the kNN monitor's accuracy per view, when logged) against
    the step, from metrics.jsonl, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    if not rows:
        return
    knn = sorted({k for r in rows for k in r if k.startswith("knn/")})
    titles = ["loss", "MI lower bound log(K) - L (nats)"] + (["kNN top-1 on the test split"] if knn else [])
    fig, axes = plt.subplots(1, len(titles), figsize=(5 * len(titles), 3.5))
    keys = sorted({k for r in rows for k in r if k.startswith(("loss/", "mi/"))})
    for k in keys + knn:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        panel = {"loss": 0, "mi": 1, "knn": 2}[k.split("/", 1)[0]]
        axes[panel].plot(*zip(*pts, strict=True), "o-" if panel == 2 else "-", label=k.split("/", 1)[1])
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]  # kNN records carry no loss
    axes[0].plot(*zip(*losses, strict=True), "k--", label="total")
    if knn:
        axes[2].set_ylim(0, 1)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
