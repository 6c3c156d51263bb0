"""Every picture mvcoding draws, next to the JSON: training curves, the evaluations' confusion matrix and
retrieval neighbours, the sweep's bars."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mvcoding.sweep import Spec


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: Path, *, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG.

    Class names label the axes up to 40 classes; beyond that only the colours are drawn.
    """
    plt = _pyplot()
    m = matrix.double()
    rows = m / m.sum(1, keepdim=True).clamp_min(1)
    n = len(classes)
    side = min(14.0, 3.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        color = "white" if rows[i, j] > 0.5 else "black"
                        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_retrieval(
    queries: Sequence, neighbours: Sequence[Sequence], classes: Sequence[str], lengths: dict, path: Path
) -> None:
    """retrieval.png: one row per query video (VideoRecord), its middle frame then its nearest train
    videos' middle frames, best first, titled with class names; a neighbour's border is green when
    its class is the query's, red when not."""
    from mvcoding.video import read_frames

    def frame(r) -> np.ndarray:
        return read_frames(r.path, [lengths[r.video_id][0] // 2])[0]

    plt = _pyplot()
    ncols = 1 + max(len(n) for n in neighbours)
    h, w = frame(queries[0]).shape[:2]
    fig, axes = plt.subplots(
        len(queries), ncols, figsize=(1.9 * ncols, 0.6 + 1.9 * h / w * len(queries)), squeeze=False
    )
    for row, (q, found) in enumerate(zip(queries, neighbours, strict=True)):
        for col in range(ncols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            r = q if col == 0 else found[col - 1] if col - 1 < len(found) else None
            if r is None:
                ax.axis("off")
                continue
            ax.imshow(frame(r))
            color = "black" if col == 0 else "tab:green" if r.label == q.label else "tab:red"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4 if col else 2)
            ax.set_title(
                f"query: {classes[r.label]}" if col == 0 else f"{col}: {classes[r.label]}", fontsize=7, color=color
            )
    fig.suptitle("test videos (left) and their nearest train videos (video-level, cosine similarity)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sweep_stat(row: dict, key: str, entry: str | None) -> dict:
    """{"mean", "std"} of a sweep summary row's metric: the row's own (entry None) or one entry's."""
    if entry is None:
        return row[key]
    return row["entries"].get(entry, {}).get(key) or {"mean": None, "std": None}


def plot_sweep(spec: Spec, rows: Sequence[dict], p: float | None, path: Path) -> None:
    """Horizontal bars per cell (probe video top-1, and retrieval R@1 when run): mean over seeds, error
    bars the sample std, coloured by group, the chance line on the probe panel. With more than one
    eval.views entry in the rows, one bar per entry within each cell's band, told apart by hatching."""
    from matplotlib.patches import Patch

    plt = _pyplot()

    names = list(dict.fromkeys(e for r in rows for e in r.get("entries", {})))
    names = names if len(names) > 1 else [None]  # None: the cell's own (first-entry) numbers
    panels = [("video_top1", "linear probe video top-1 (%)")]
    if any(_sweep_stat(r, "retrieval_r1", e)["mean"] is not None for r in rows for e in names):
        panels.append(("retrieval_r1", "retrieval video R@1 (%)"))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    band = 0.45 * max(1.0, 0.6 * len(names))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.5 * len(panels) + 2.5, band * len(rows) + 1.6), sharey=True, squeeze=False
    )
    ys = range(len(rows))
    height = 0.8 / len(names)
    hatches = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for j, e in enumerate(names):
            offset = (j - (len(names) - 1) / 2) * height
            means = [100 * (_sweep_stat(r, key, e)["mean"] or 0.0) for r in rows]
            errs = [100 * (_sweep_stat(r, key, e)["std"] or 0.0) for r in rows]
            at = [y + offset for y in ys]
            ax.barh(
                at,
                means,
                height=height,
                xerr=errs,
                color=[colors[r["group"]] for r in rows],
                capsize=3,
                hatch=hatches[j % len(hatches)],
                edgecolor="white" if j else None,
            )
            for y, m, err, r in zip(at, means, errs, rows, strict=True):
                if _sweep_stat(r, key, e)["mean"] is not None:
                    ax.text(m + err + 1, y, f"{m:.1f}", va="center", fontsize=7 if len(names) == 1 else 6)
        if key == "video_top1" and p:
            ax.axvline(100 * p, color="grey", linestyle="--", linewidth=1)
            ax.text(100 * p, -0.6, " chance", color="grey", fontsize=7, va="bottom")
        ax.set_xlim(0, 105)
        ax.set_xlabel(title)
    if names != [None]:
        handles = [
            Patch(facecolor="dimgray", hatch=hatches[j % len(hatches)], edgecolor="white") for j in range(len(names))
        ]
        axes[0][-1].legend(handles, [f"eval.views entry {e}" for e in names], loc="lower right", fontsize=6)
    axes[0][0].set_yticks(list(ys), [f"{r['cell']} (n={r['n']})" for r in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    if len(groups) > 1 or groups[0]:
        fig.legend(
            [Patch(color=colors[g]) for g in groups],
            [g or "(no group)" for g in groups],
            loc="lower right",
            fontsize=7,
            ncol=min(4, len(groups)),
        )
    fig.suptitle(f"sweep {spec.name}: mean ± std over seeds", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if len(groups) > 1 or groups[0] else 0, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
