"""Pictures next to the JSON: training curves (more plots live beside the code that makes them)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training(metrics: Path, out: Path) -> None:
    """Loss and MI bound log(K) - L per pair against the step, from metrics.jsonl, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    keys = sorted({k for r in rows for k in r if k.startswith(("loss/", "mi/"))})
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        axes[0 if k.startswith("loss/") else 1].plot(*zip(*pts, strict=True), label=k.split("/", 1)[1])
    axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], "k--", label="total")
    for ax, title in zip(axes, ("loss", "MI lower bound log(K) - L (nats)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
