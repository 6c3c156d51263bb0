"""`mvcoding report RUN_DIR`: MODEL_CARD.md for a pretraining run.

The card gathers what someone receiving the checkpoint needs: the checkpoint (path, sha256, step),
the configuration that trained it (data, views and encoders, objective, optimiser), the training
curve (training.png and the last logged loss), every evaluation whose results.json names this
checkpoint by its sha256 (searched in the run directory and next to it; one row per eval.views entry,
from results.json's "entries"), and how to use the encoders (`mvcoding export`, `mvcoding.load_encoder`)
and cite the method.
"""

from __future__ import annotations

import json
from pathlib import Path

from mvcoding.errors import UserError
from mvcoding.files import load_safe, write_text_atomic

METRICS = ("video_top1", "clip_top1", "video_r1", "video_r5", "retrieval_r1")


def find_results(run: Path, sha: str) -> list[tuple[Path, dict]]:
    """(path, results.json) of every evaluation of the checkpoint with this sha256, in and beside `run`."""
    found, seen = [], set()
    for base in (run, run.parent):
        for path in sorted(base.glob("**/results.json") if base == run else base.glob("*/results.json")):
            if path in seen:
                continue
            seen.add(path)
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("checkpoint_sha256") != sha:
                continue
            if "entry" in data and "entries" not in data:
                continue  # one entry's own results.json (EVAL/<entry>/): its evaluation's results.json lists it
            found.append((path, data))
    return found


def model_card(run: str | Path) -> Path:
    """Write <run>/MODEL_CARD.md; returns its path."""
    from omegaconf import OmegaConf

    from mvcoding import __version__
    from mvcoding.eval.metrics import sha256_file
    from mvcoding.eval.report import entry_metrics

    run = Path(run)
    ckpt, cfg_path = run / "checkpoints" / "last.pt", run / "config.yaml"
    if not ckpt.is_file() or not cfg_path.is_file():
        raise UserError(f"{run} is not a pretraining run directory (it needs config.yaml and checkpoints/last.pt)")
    sha = sha256_file(ckpt)
    state = load_safe(ckpt)
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    except Exception as e:  # a YAML error, a broken interpolation: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{cfg_path} cannot be read ({first}); is it the config.yaml a training run wrote?") from None
    missing = [k for k in ("dataset", "objective", "optim", "data") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise UserError(f"{cfg_path} is not a training run's config: it has no {', '.join(missing)} section")
    rows = []
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a torn last line of a killed run: the run's other records still count
                continue
    losses = [r for r in rows if isinstance(r, dict) and "loss" in r]
    d, o, opt, data = cfg["dataset"], cfg["objective"], cfg["optim"], cfg["data"]
    lines = [
        f"# Model card: {cfg.get('name', run.name)}",
        "",
        f"Contrastive Multiview Coding encoders trained with mvcoding {__version__}.",
        "",
        "## Checkpoint",
        "",
        f"- file: `{ckpt}`",
        f"- sha256: `{sha}`",
        f"- step {state.get('step')}, epoch {state.get('epoch')}",
        "",
        "## Data",
        "",
        f"- dataset `{d.get('name')}` at `{d.get('root')}`, split {d.get('split')}",
        f"- clips of {data['frames']} frames, stride {data['stride']}, {data['size']} x {data['size']} crops",
        "",
        "## Views and encoders",
        "",
        "| view | encoder | settings |",
        "|---|---|---|",
        *(
            f"| {v} | {(s or {}).get('encoder', '(default)')} | `{json.dumps(s or {}, sort_keys=True)}` |"
            for v, s in (cfg.get("views") or {}).items()
        ),
        "",
        "## Objective and optimisation",
        "",
        f"- objective `{o['name']}`: graph `{o['graph']}` (anchor `{o['anchor']}`), negatives `{o['negatives']}` "
        f"(K {o['K']}), score `{o['score']}`, tau {o['tau']}, embedding size {o['dim']}",
        f"- optimiser `{opt['name']}`, lr {opt['lr']}, schedule `{opt['schedule']}` (warmup {opt['warmup_steps']}), "
        f"batch {cfg['train']['batch_size']}, seed {cfg.get('seed')}",
        "",
        "## Training",
        "",
    ]
    if losses:
        last = losses[-1]
        lines += [f"{len(losses)} logged steps; last: step {last['step']}, loss {last['loss']:.4f}.", ""]
    if (run / "training.png").is_file():
        lines += ["![training curves](training.png)", ""]
    lines += ["## Evaluations of this checkpoint", ""]
    results = find_results(run, sha)
    if results:
        rows = [(path, r, entry, m) for path, r in results for entry, m in entry_metrics(r).items()]
        keys = [k for k in METRICS if any(k in m for *_, m in rows)]
        lines += [
            "| task | views | dataset split | " + " | ".join(keys) + " | results |",
            "|---|---|---|" + "---|" * (len(keys) + 1),
        ]
        for path, r, entry, m in rows:
            views = entry or " & ".join((r.get("protocol") or {}).get("streams") or [])  # fuse: its streams
            cells = " | ".join(f"{100 * m[k]:.1f}%" if k in m else "" for k in keys)
            where = path.relative_to(run) if path.is_relative_to(run) else path
            lines.append(f"| {r.get('task')} | {views} | {r.get('split')} | {cells} | `{where}` |")
        lines.append("")
    else:
        lines += ["None found (results.json naming this checkpoint's sha256, in or beside the run directory).", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        f"mvcoding export {ckpt} --view {next(iter(cfg.get('views') or {'rgb': 0}))} --out encoder.pt",
        "```",
        "",
        f'`mvcoding.load_encoder("{ckpt}", "<view>")` returns an encoder ready for inference.',
        "",
        "## Citation",
        "",
        "Tian, Krishnan and Isola. Contrastive Multiview Coding. ECCV 2020 (see CITATION.cff).",
        "",
    ]
    out = run / "MODEL_CARD.md"
    write_text_atomic(out, "\n".join(lines))
    return out
