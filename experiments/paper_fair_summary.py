"""Per-seed numbers of `mvcoding sweep experiments/paper_fair.yaml` that EXPERIMENTS.md quotes.

    python experiments/paper_fair_summary.py [experiments/results/paper_fair.csv]

For every cell and seed: the probe (video top-1, %) of each eval.views entry, and for cells that
train several views the mean over the single-view entries (the paper's full-graph claim is about
every view, not the anchor); then the CMC / supervised ratios of the 4-view cells (RGB probe over
the supervised RGB encoder's, per seed where both ran). Writes experiments/results/paper_fair_summary.md.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    entries = [k[len("video_top1 ") :] for k in rows[0] if k.startswith("video_top1 ")]
    lines = [
        "| cell | seed | " + " | ".join(f"probe {e}" for e in entries) + " | mean over single views |",
        "|---|---|" + "---|" * (len(entries) + 1),
    ]
    by_cell: dict[str, dict[int, dict]] = {}
    for r in rows:
        values = {e: float(r[f"video_top1 {e}"]) * 100 for e in entries if r.get(f"video_top1 {e}")}
        single = [v for e, v in values.items() if "+" not in e]
        mean = statistics.fmean(single) if len(single) > 1 else None
        by_cell.setdefault(r["cell"], {})[int(r["seed"])] = values | {"mean": mean}
        cells = " | ".join(f"{values[e]:.1f}" if e in values else "" for e in entries)
        lines.append(f"| {r['cell']} | {r['seed']} | {cells} | {'' if mean is None else f'{mean:.1f}'} |")
    supervised = {s: v.get("rgb") for s, v in by_cell.get("supervised rgb", {}).items()}
    lines += ["", "| cell | seed | rgb probe / supervised rgb probe |", "|---|---|---|"]
    for cell, seeds in by_cell.items():
        for s, v in sorted(seeds.items()):
            if cell.startswith("4 views") and supervised.get(s) and "rgb" in v:
                lines.append(f"| {cell} | {s} | {v['rgb'] / supervised[s]:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "experiments" / "results" / "paper_fair.csv"
    text = main(src)
    (ROOT / "experiments" / "results" / "paper_fair_summary.md").write_text(text)
    print(text)
