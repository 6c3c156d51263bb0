"""`mvcoding sweep SPEC.yaml`: a grid of cells (config + overrides) x seeds, each pretrained and
evaluated, then one table and one plot of the means and spreads over seeds.

The spec (YAML)::

    name: paper                          # output folder runs/sweep-<name> (default: the spec file's name)
    config: configs/synthetic_bench.yaml # every cell's config unless the cell names its own
    overrides: [train.epochs=30]         # every cell's overrides; a cell's override of the same key wins
    seeds: [0, 1, 2]                     # each cell runs once per seed (seed=<s>); default [0]
    eval: [linear, retrieval]            # default: both
    cells:
      - name: rgb+flow (in-batch)        # unique; its folder is the slug rgb-flow-in-batch
        group: views                     # the claim it tests: the table and the plot group by it
        overrides: [objective.negatives=in_batch]
      - {name: random init, group: baseline, pretrain: false}   # eval.random_init=true, no pretraining

A cell takes the keys name (required), group, config, overrides and pretrain (default true).
Relative config paths resolve against the current directory, then the spec's folder; a config that
is neither is a packaged config's name, as `mvcoding train` takes it (config: synthetic_rgb_flow). The sweep sets
seed, run.dir, resume, checkpoint and eval.random_init itself; a spec that sets them is an error.
Before pretraining, the caches of the cell's views are filled (`mvcoding precompute all` for the
cell's config: every view with a precompute stage, e.g. flow and depth; it skips what is cached);
the evaluations use the encoders of eval.views (default [rgb]), each entry on its own (a view, or
views joined with + whose features are concatenated: eval.views=[rgb,flow,rgb+flow] is three probes).

The output folder::

    spec.yaml                        the spec of the latest run
    <cell-slug>/seed<s>/             the pretraining run.dir (config.yaml, metrics.jsonl, checkpoints/last.pt)
        pretrain.json                {"seconds"}: written when the pretraining finished
        eval-linear/ eval-retrieval/ the evaluations (results.json, ...; see mvcoding.eval)
        cell.json                    written last (atomically), when the cell is complete
    results.csv                      one row per cell and seed (metrics as fractions, as in results.json)
    results.json                     {"name", ..., "entries", "cells": [per cell: mean, std, values],
                                     "runs": [cell.json...]}
    table.md                         one row per cell: mean +- std over seeds, in percent
    results.png                      probe video top-1 (and retrieval R@1) per cell, error bars = std

cell.json: {"cell", "group", "seed", "config", "overrides" (the spec's and the cell's), "cell_overrides"
(the table's column), "pretrain", "eval", "eval_views", "run_dir", "dataset", "num_classes", "finished",
"metrics": {"video_top1", "clip_top1", "retrieval_r1", "pretrain_seconds"},
"entries": {ENTRY: {"video_top1", "clip_top1", "retrieval_r1"}, ...}}.
video_top1 and clip_top1 are the linear probe's test accuracies (video level: mean over eval.clips;
clip level), retrieval_r1 the video-level recall@1; a metric is null when its evaluation was not run
(pretrain_seconds: without pretraining). "metrics" holds the first eval.views entry's numbers,
"entries" every entry's (in eval.views order). pretrain_seconds is the wall time of the sweep's
pretraining call; a resumed pretraining counts from the resume.

Entries in the report. When the runs have one entry name in all (e.g. every cell eval.views=[rgb]),
the table has one probe and one retrieval column, results.csv one column per metric. With more
(eval.views=[rgb,flow,rgb+flow], or cells that evaluate different views) the table has a probe and
a retrieval column per entry (n/a where a cell lacks that entry), results.csv adds the columns
"<metric> <entry>" for every entry, and results.png a bar per entry. A summary row in results.json
carries "entries": {ENTRY: {METRIC: {"mean", "std", "values"}}}.

Resume: a (cell, seed) with a cell.json is skipped; one without is run again, its pretraining with
resume=auto from its own folder (continuing from the last checkpoint; skipped once pretrain.json
exists), then its evaluations. Delete a cell.json to redo that cell's evaluations, its seed folder
to redo it all.

Statistics over seeds: the mean and the sample standard deviation (ddof=1). With one seed the
std is undefined: null in results.json, "n/a" in table.md, no error bar in the plot.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvcoding.errors import UserError
from mvcoding.files import write_text_atomic

log = logging.getLogger(__name__)

SPEC_KEYS = ("name", "config", "overrides", "seeds", "eval", "cells")
CELL_KEYS = ("name", "group", "config", "overrides", "pretrain")
EVALS = ("linear", "retrieval")
METRICS = ("video_top1", "clip_top1", "retrieval_r1", "pretrain_seconds")
ENTRY_METRICS = ("video_top1", "clip_top1", "retrieval_r1")  # each eval.views entry's
# keys the sweep sets itself, and what to write in the spec instead
RESERVED = {
    "seed": "seeds: [...]",
    "run.dir": "the sweep's folders (mvcoding sweep --out DIR)",
    "resume": "nothing: the sweep resumes by itself",
    "checkpoint": "nothing: the sweep evaluates its own checkpoints",
    "eval.random_init": "pretrain: false in the cell",
}


@dataclass(frozen=True)
class Cell:
    name: str
    group: str
    config: Path
    overrides: tuple[str, ...]  # the spec's and the cell's, merged (the cell's win)
    own: tuple[str, ...]  # the cell's own overrides (the table shows these)
    pretrain: bool
    slug: str


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    config: Path | None
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    evals: tuple[str, ...]
    cells: tuple[Cell, ...]


# ----------------------------------------------------------------------------- statistics (pure functions)
def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def sample_std(values: Iterable[float | None]) -> float | None:
    """The sample standard deviation (ddof=1) of the values that are not None; None for fewer than two."""
    vals = [float(v) for v in values if v is not None]
    if len(vals) < 2:
        return None
    m = math.fsum(vals) / len(vals)
    return math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def format_pm(m: float | None, s: float | None, scale: float = 100.0) -> str:
    """'72.5 ± 3.1' (values times `scale`, one decimal); 'n/a' for no mean, '72.5 ± n/a' for no std."""
    if m is None:
        return "n/a"
    return f"{m * scale:.1f} ± " + ("n/a" if s is None else f"{s * scale:.1f}")


def record_entries(record: dict) -> dict[str, dict]:
    """{entry: {ENTRY_METRIC: value}} of a cell.json; one written before entries gives its "metrics"
    under its eval.views joined with + (what it evaluated: their features concatenated)."""
    if isinstance(record.get("entries"), dict):
        return record["entries"]
    return {"+".join(record.get("eval_views") or []): {k: record["metrics"].get(k) for k in ENTRY_METRICS}}


def entry_names(records: Sequence[dict]) -> list[str]:
    """Every entry of the records, in order of first appearance."""
    return list(dict.fromkeys(e for r in records for e in record_entries(r)))


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per cell (groups in order of first appearance, cells in order within a group):
    {"group", "cell", "n", "seeds", "overrides", "pretrain", METRIC: {"mean", "std", "values"},
    "entries": {ENTRY: {ENTRY_METRIC: {"mean", "std", "values"}}}} (values: one per seed, None where a
    seed lacks the entry)."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["cell"], {"group": r["group"], "cell": r["cell"], "seeds": [], "records": []})
        row["seeds"].append(r["seed"])
        row["records"].append(r)
    groups = list(dict.fromkeys(row["group"] for row in rows.values()))
    out = []
    for row in sorted(rows.values(), key=lambda row: groups.index(row["group"])):
        recs = row.pop("records")
        row["n"] = len(recs)
        row["overrides"] = recs[-1].get("cell_overrides", [])
        row["pretrain"] = recs[-1].get("pretrain", True)
        for key in METRICS:
            values = [rec["metrics"].get(key) for rec in recs]
            row[key] = {"mean": mean(values), "std": sample_std(values), "values": values}
        row["entries"] = {}
        for entry in entry_names(recs):
            row["entries"][entry] = {}
            for key in ENTRY_METRICS:
                values = [record_entries(rec).get(entry, {}).get(key) for rec in recs]
                row["entries"][entry][key] = {"mean": mean(values), "std": sample_std(values), "values": values}
        out.append(row)
    return out


def chance(records: Sequence[dict]) -> float | None:
    """1 / classes when every record names the same number of classes, else None."""
    classes = {r.get("num_classes") for r in records}
    if len(classes) != 1 or not next(iter(classes)):
        return None
    return 1.0 / next(iter(classes))


# ----------------------------------------------------------------------------- the spec
def slug(name: str) -> str:
    """A folder name for a cell: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cell"


def override_key(override: str) -> str:
    """'++views.rgb.width=8' -> 'views.rgb.width'; '~key' -> 'key'."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*lists: Sequence[str]) -> list[str]:
    """The overrides in order, a later one of the same key replacing an earlier one."""
    merged: dict[str, str] = {}
    for o in (o for lst in lists for o in lst):
        merged.pop(override_key(o), None)
        merged[override_key(o)] = o
    return list(merged.values())


def _strings(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where} must be a list of key=value strings, e.g. [train.epochs=30]; got {value!r}")
    for o in value:
        if "=" not in o and not o.startswith("~"):
            raise UserError(f"{where}: {o!r} is not a key=value override")
        if override_key(o) in RESERVED:
            raise UserError(f"{where}: {o!r} is set by the sweep; use {RESERVED[override_key(o)]}")
    return value


def _resolve(path, spec_path: Path, where: str) -> Path:
    """A cell's config: a YAML path (relative to the current directory, then to the spec's folder), else
    a packaged config's name as `mvcoding train` takes it (mvcoding.config.resolve_config)."""
    from mvcoding.config import packaged_configs, resolve_config

    if not isinstance(path, str) or not path:
        raise UserError(
            f"{where} must be a YAML config path or a packaged config's name, e.g. synthetic_rgb_flow "
            f"or configs/synthetic_rgb_flow.yaml; got {path!r}"
        )
    p = Path(path).expanduser()
    tried = [p] if p.is_absolute() else [p, spec_path.parent / p]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    try:
        return resolve_config(path)
    except UserError:
        pass
    raise UserError(
        f"{where}: config {path} not found (looked at {', '.join(map(str, tried))}, and it is not a "
        f"packaged config: {', '.join(packaged_configs())})"
    )


def _unknown(d: dict, valid: Sequence[str], where: str) -> None:
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(valid)}")


def load_spec(path: str | Path) -> Spec:
    """Read and check a sweep spec; every problem is a UserError naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec {path} not found; pass a YAML file (see README, Experiments)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).strip().replace("\n", " ")
        raise UserError(f"sweep spec {path} is not valid YAML: {first}") from e
    if not isinstance(raw, dict):
        raise UserError(f"sweep spec {path} must be a mapping with the keys {', '.join(SPEC_KEYS)}")
    _unknown(raw, SPEC_KEYS, f"sweep spec {path}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not slug(name):
        raise UserError(f"sweep spec {path}: name must be a string; got {name!r}")
    config = _resolve(raw["config"], path, f"sweep spec {path}: config") if raw.get("config") is not None else None
    overrides = _strings(raw.get("overrides"), f"sweep spec {path}: overrides")
    seeds = raw.get("seeds", [0])
    ints = isinstance(seeds, list) and all(type(s) is int for s in seeds)
    if not ints or not seeds or len(set(seeds)) < len(seeds):
        raise UserError(f"sweep spec {path}: seeds must be a list of distinct integers, e.g. [0, 1, 2]; got {seeds!r}")
    evals = raw.get("eval", list(EVALS))
    if not isinstance(evals, list) or not evals or not set(evals) <= set(EVALS):
        raise UserError(f"sweep spec {path}: eval must list some of {', '.join(EVALS)}; got {evals!r}")
    raw_cells = raw.get("cells")
    if not isinstance(raw_cells, list) or not raw_cells:
        raise UserError(f"sweep spec {path} has no cells; list them under cells: (each with a name)")
    cells, slugs = [], {}
    for i, c in enumerate(raw_cells):
        where = f"cell {i + 1} of {path}"
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
            raise UserError(f"{where} must be a mapping with a name, e.g. {{name: rgb+flow, overrides: [...]}}")
        where = f"cell {c['name']!r} of {path}"
        _unknown(c, CELL_KEYS, where)
        s = slug(c["name"])
        if s in slugs:
            same = "the same name" if slugs[s] == c["name"] else f"the same folder name {s} as {slugs[s]!r}"
            raise UserError(f"{where} has {same}; give every cell a distinct name")
        slugs[s] = c["name"]
        group = c.get("group", "")
        pretrain = c.get("pretrain", True)
        if not isinstance(group, str) or not isinstance(pretrain, bool):
            raise UserError(f"{where}: group must be a string and pretrain true or false")
        if c.get("config") is not None:
            cfg_path = _resolve(c["config"], path, f"{where}: config")
        elif config is not None:
            cfg_path = config
        else:
            raise UserError(f"{where} has no config; set config: at the top of the spec or in the cell")
        own = _strings(c.get("overrides"), f"{where}: overrides")
        cells.append(Cell(c["name"], group, cfg_path, tuple(merge_overrides(overrides, own)), tuple(own), pretrain, s))
    return Spec(path, name, config, tuple(overrides), tuple(seeds), tuple(evals), tuple(cells))


def select(spec: Spec, only: Sequence[str] | None) -> list[Cell]:
    """The cells whose name contains one of the substrings in `only` (case-insensitive); all when empty."""
    if not only:
        return list(spec.cells)
    cells = [c for c in spec.cells if any(o.lower() in c.name.lower() for o in only)]
    if not cells:
        raise UserError(f"--only {' '.join(only)} matches no cell; cells: {', '.join(c.name for c in spec.cells)}")
    return cells


def cell_dir(out: Path, cell: Cell, seed: int) -> Path:
    return Path(out) / cell.slug / f"seed{seed}"


def _value(path: Path | str) -> str:
    """A path as a Hydra override value: quoted where it holds characters the override grammar reads."""
    s = str(path)
    return s if re.fullmatch(r"[\w./:-]+", s) else "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def validate(cells: Sequence[Cell], seed: int) -> None:
    """Load every cell's config with its overrides, so a misspelt key fails before anything runs."""
    from mvcoding.config import load_config
    from mvcoding.eval.features import parse_entries

    for cell in cells:
        try:
            cfg = load_config(cell.config, [*cell.overrides, f"seed={seed}"])
            parse_entries(list(cfg.eval.views), list(cfg.views or {}))
        except UserError as e:
            raise UserError(f"cell {cell.name!r}: {e}") from e


# ----------------------------------------------------------------------------- one cell
def fill_caches(cell: Cell, views: Iterable[str]) -> None:
    """`mvcoding precompute all` for the cell's config when one of `views` has a precompute stage; it
    skips what is already cached."""
    from mvcoding.config import load_config
    from mvcoding.model import build_views
    from mvcoding.precompute import main

    cfg = load_config(cell.config, cell.overrides)
    if any(v.precompute is not None for v in build_views(cfg, list(views)).values()):
        if main(["all", str(cell.config), *cell.overrides]) != 0:
            raise UserError(f"cell {cell.name!r}: the precompute failed; see the lines above")


def pretrain(cell: Cell, seed: int, folder: Path) -> float:
    """Pretrain into `folder` (resuming from its last checkpoint); returns the seconds it took."""
    from mvcoding.config import load_config
    from mvcoding.train import train

    marker = folder / "pretrain.json"
    if marker.is_file() and (folder / "checkpoints" / "last.pt").is_file():
        return json.loads(marker.read_text())["seconds"]
    cfg = load_config(cell.config, [*cell.overrides, f"seed={seed}", f"run.dir={_value(folder)}", "resume=auto"])
    t0 = time.perf_counter()
    train(cfg)
    seconds = round(time.perf_counter() - t0, 1)
    if not (folder / "checkpoints" / "last.pt").is_file():
        raise UserError(f"cell {cell.name!r} seed {seed}: pretraining wrote no {folder}/checkpoints/last.pt")
    write_text_atomic(marker, json.dumps({"seconds": seconds}) + "\n")
    return seconds


def run_cell(spec: Spec, cell: Cell, seed: int, folder: Path) -> dict:
    """Caches, pretraining and evaluations of one (cell, seed) in `folder`; writes and returns its cell.json."""
    from mvcoding.config import load_config
    from mvcoding.eval.features import entry_views, parse_entries
    from mvcoding.eval.linear import linear_probe
    from mvcoding.eval.report import entry_metrics
    from mvcoding.eval.retrieval import retrieval

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(cell.config, [*cell.overrides, f"seed={seed}"])
    evaluated = entry_views(parse_entries(list(cfg.eval.views), list(cfg.views or {})))
    fill_caches(cell, list(cfg.views or {}) if cell.pretrain else evaluated)
    metrics: dict = dict.fromkeys(METRICS)
    if cell.pretrain:
        metrics["pretrain_seconds"] = pretrain(cell, seed, folder)
        source = f"checkpoint={_value(folder / 'checkpoints' / 'last.pt')}"
    else:
        source = "eval.random_init=true"
    cfg = load_config(cell.config, [*cell.overrides, f"seed={seed}", source])
    entries: dict[str, dict] = {}
    if "linear" in spec.evals:
        m = linear_probe(cfg, cfg.checkpoint, folder / "eval-linear", random_init=not cell.pretrain)
        metrics["video_top1"], metrics["clip_top1"] = m["video_top1"], m["clip_top1"]
        for entry, m in entry_metrics(json.loads((folder / "eval-linear" / "results.json").read_text())).items():
            entries.setdefault(entry, dict.fromkeys(ENTRY_METRICS)).update(
                video_top1=m["video_top1"], clip_top1=m["clip_top1"]
            )
    if "retrieval" in spec.evals:
        metrics["retrieval_r1"] = retrieval(cfg, folder / "eval-retrieval")["recall@1"]
        for entry, m in entry_metrics(json.loads((folder / "eval-retrieval" / "results.json").read_text())).items():
            entries.setdefault(entry, dict.fromkeys(ENTRY_METRICS))["retrieval_r1"] = m["recall@1"]
    results = json.loads((folder / f"eval-{spec.evals[-1]}" / "results.json").read_text())  # dataset, classes
    record = {
        "cell": cell.name,
        "group": cell.group,
        "seed": seed,
        "config": str(cell.config),
        "overrides": list(cell.overrides),
        "cell_overrides": list(cell.own) + ([] if cell.pretrain else ["eval.random_init=true"]),
        "pretrain": cell.pretrain,
        "eval": list(spec.evals),
        "eval_views": list(cfg.eval.views),
        "run_dir": str(folder),
        "dataset": results.get("dataset"),
        "num_classes": results.get("num_classes"),
        "metrics": metrics,
        "entries": entries,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_text_atomic(folder / "cell.json", json.dumps(record, indent=2) + "\n")
    return record


def read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); delete it to rerun that cell") from e


def collect(spec: Spec, out: Path) -> list[dict]:
    """The cell.json records of the spec's (cell, seed) pairs that have finished, in spec order."""
    paths = [cell_dir(out, c, s) / "cell.json" for c in spec.cells for s in spec.seeds]
    return [read_record(p) for p in paths if p.is_file()]


# ----------------------------------------------------------------------------- the report
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def write_report(spec: Spec, out: Path, records: Sequence[dict]) -> None:
    """results.csv, results.json, table.md and results.png in `out` (each written atomically)."""
    rows = summarize(records)
    p = chance(records)
    names = entry_names(records)
    per_entry = [(e, k) for e in names for k in ENTRY_METRICS] if len(names) > 1 else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = [f"{k} {e}" for e, k in per_entry]
    w.writerow(["group", "cell", "seed", *METRICS, *extra, "pretrain", "config", "overrides", "run_dir"])
    for r in records:
        m, em = r["metrics"], record_entries(r)
        values = ["" if m.get(k) is None else m[k] for k in METRICS]
        values += ["" if em.get(e, {}).get(k) is None else em[e][k] for e, k in per_entry]
        overrides = " ".join(r["overrides"])
        w.writerow([r["group"], r["cell"], r["seed"], *values, r["pretrain"], r["config"], overrides, r["run_dir"]])
    write_text_atomic(out / "results.csv", buf.getvalue())
    summary = {
        "name": spec.name,
        "spec": str(spec.path),
        "config": str(spec.config) if spec.config else None,
        "overrides": list(spec.overrides),
        "seeds": list(spec.seeds),
        "eval": list(spec.evals),
        "entries": names,
        "chance": p,
        "statistics": "mean and sample std (ddof=1) over seeds; std null for one seed; metrics as fractions",
        "cells": rows,
        "runs": list(records),
    }
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "table.md", table(spec, rows, p))
    from mvcoding.plots import plot_sweep

    plot_sweep(spec, rows, p, out / "results.png")


def table(spec: Spec, rows: Sequence[dict], p: float | None) -> str:
    """The Markdown table: one row per cell, mean ± std over seeds in percent; with more than one
    eval.views entry in the rows, a probe and a retrieval column per entry."""
    esc = lambda s: str(s).replace("|", "\\|")
    common = " ".join(spec.overrides) or "none"
    names = list(dict.fromkeys(e for r in rows for e in r.get("entries", {})))
    if len(names) > 1:
        heads = [f"probe {esc(e)} (%)" for e in names] + [f"R@1 {esc(e)} (%)" for e in names]
        probe = "Probe <entry>: linear probe on the frozen encoder(s) of that eval.views entry (views joined with + "
        probe += "concatenated), video-level top-1 on the test split. R@1 <entry>: video-level recall@1"
    else:
        heads = ["probe video top-1 (%)", "retrieval R@1 (%)"]
        probe = "Probe: linear probe on the frozen encoder(s) of eval.views, video-level top-1 on the test split. "
        probe += "Retrieval: video-level recall@1"
    lines = [
        f"# Sweep {spec.name}",
        "",
        f"Spec `{spec.path}`; config `{spec.config}`; overrides of every cell: `{common}`; seeds "
        f"{', '.join(map(str, spec.seeds))}.",
        f"Mean ± sample std (ddof=1) over seeds, in percent (n/a: one seed). {probe} "
        "(test videos query the train videos)." + (f" Chance {100 * p:.1f}% ({round(1 / p)} classes)." if p else ""),
        "",
        "| group | cell | seeds | " + " | ".join(heads) + " | overrides |",
        "|---|---|---|" + "---|" * len(heads) + "---|",
    ]
    for r in rows:
        n = str(r["n"]) if r["n"] == len(spec.seeds) else f"{r['n']}/{len(spec.seeds)}"
        if len(names) > 1:
            stats = [r["entries"].get(e, {}).get(k) for k in ("video_top1", "retrieval_r1") for e in names]
        else:
            stats = [r["video_top1"], r["retrieval_r1"]]
        cells = " | ".join("n/a" if v is None else format_pm(v["mean"], v["std"]) for v in stats)
        own = " ".join(f"`{esc(o)}`" for o in r["overrides"])
        lines.append(f"| {esc(r['group'])} | {esc(r['cell'])} | {n} | {cells} | {own} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the command
def dry_run(spec: Spec, cells: Sequence[Cell], out: Path) -> None:
    print(
        f"sweep {spec.name}: {len(cells)} cells x {len(spec.seeds)} seeds = {len(cells) * len(spec.seeds)} runs "
        f"in {out} (eval: {', '.join(spec.evals)}); every config loads"
    )
    for cell in cells:
        done = [s for s in spec.seeds if (cell_dir(out, cell, s) / "cell.json").is_file()]
        print(
            f"[{cell.group or '-'}] {cell.name}  ({'pretrain' if cell.pretrain else 'random init'}; "
            f"{len(done)}/{len(spec.seeds)} seeds done) -> {out / cell.slug}/seed<s>"
        )
        extra = "seed=<s>" + ("" if cell.pretrain else " eval.random_init=true")
        print(f"    {cell.config} {' '.join(cell.overrides)} {extra}")


def sweep(
    spec_path: str | Path,
    *,
    only: Sequence[str] | None = None,
    dry_run_only: bool = False,
    report_only: bool = False,
    out: str | Path | None = None,
) -> Path:
    """Run (or with dry_run_only: list and validate; with report_only: tabulate) the sweep; returns its folder."""
    spec = load_spec(spec_path)
    out = Path(out) if out else Path("runs") / f"sweep-{slug(spec.name)}"
    if report_only:
        records = collect(spec, out)
        if not records:
            raise UserError(f"no finished cells (cell.json) under {out}; run mvcoding sweep {spec.path} first")
        write_report(spec, out, records)
        log.info("sweep %s: %d runs tabulated in %s", spec.name, len(records), out / "table.md")
        return out
    cells = select(spec, only)
    validate(cells, spec.seeds[0])
    if dry_run_only:
        dry_run(spec, cells, out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "spec.yaml", spec.path.read_text())
    jobs = [(c, s) for s in spec.seeds for c in cells]  # seed-major: a whole table with one seed comes first
    for i, (cell, seed) in enumerate(jobs, 1):
        folder = cell_dir(out, cell, seed)
        head = f"sweep {i}/{len(jobs)}: {cell.name} seed {seed}"
        if (folder / "cell.json").is_file():
            old = read_record(folder / "cell.json")
            if old.get("overrides") != list(cell.overrides) or old.get("config") != str(cell.config):
                was = f"{old.get('config')} {' '.join(old.get('overrides', []))}"
                log.warning("%s: its cell.json was made with other settings (%s); delete it to rerun", head, was)
            log.info("%s: done before (%s), skipped", head, folder / "cell.json")
            continue
        log.info("%s ... (%s)", head, folder)
        t0 = time.perf_counter()
        try:
            m = run_cell(spec, cell, seed, folder)["metrics"]
        except KeyboardInterrupt:
            log.info("%s: interrupted; rerun the same command to resume it", head)
            raise
        except Exception:
            log.error("%s: failed; finished cells are kept, rerun the same command to resume", head)
            raise
        pre = "none" if m["pretrain_seconds"] is None else f"{m['pretrain_seconds']:.0f} s"
        probe, clip, r1 = (_pct(m[k]) for k in ("video_top1", "clip_top1", "retrieval_r1"))
        seconds = time.perf_counter() - t0
        log.info(
            "%s: probe video top-1 %s (clip %s), retrieval R@1 %s; pretraining %s, cell %.0f s",
            head,
            probe,
            clip,
            r1,
            pre,
            seconds,
        )
        write_report(spec, out, collect(spec, out))
    records = collect(spec, out)
    if records:
        write_report(spec, out, records)
    total = len(spec.cells) * len(spec.seeds)
    log.info(
        "sweep %s: %d/%d runs finished; table %s, plot %s",
        spec.name,
        len(records),
        total,
        out / "table.md",
        out / "results.png",
    )
    return out
