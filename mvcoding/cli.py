"""The `mvcoding` command.

mvcoding train CONFIG.yaml [key=value ...]
mvcoding eval {linear,finetune,retrieval} CONFIG.yaml checkpoint=PATH [key=value ...]
mvcoding eval fuse RESULT_A RESULT_B [--out DIR]
mvcoding demo [--record] [key=value ...]
mvcoding sweep SPEC.yaml [--only CELL ...] [--dry-run | --report] [--out DIR]
mvcoding precompute VIEW|all CONFIG.yaml [key=value ...]
mvcoding cache status CONFIG.yaml [key=value ...]
mvcoding report RUN_DIR
mvcoding extract CONFIG.yaml checkpoint=PATH [split=train|test|all] [out=FILE.pt|.npy] [key=value ...]
mvcoding views
mvcoding export CHECKPOINT --view NAME --out FILE
mvcoding config CONFIG [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from mvcoding.errors import Stopped, UserError


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mvcoding", description="Contrastive Multiview Coding for video.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="pretrain encoders with CMC")
    t.add_argument("config", help="YAML config path, e.g. configs/synthetic_rgb_flow.yaml")
    t.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    e = sub.add_parser("eval", help="transfer to action recognition")
    tasks = e.add_subparsers(dest="task", required=True, metavar="{linear,finetune,retrieval,fuse}")
    for task, text in (
        ("linear", "linear probe on the frozen encoders"),
        ("finetune", "fine-tune one encoder"),
        ("retrieval", "nearest train videos of the test videos"),
    ):
        k = tasks.add_parser(task, help=text)
        k.add_argument("config", help="YAML config path")
        k.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    u = tasks.add_parser("fuse", help="two-stream late fusion of two linear/finetune results")
    u.add_argument("result_a", metavar="RESULT_A", help="the first results.json (or its folder)")
    u.add_argument("result_b", metavar="RESULT_B", help="the second results.json (or its folder)")
    u.add_argument("--out", default=None, metavar="DIR", help="the output folder (default runs/fuse-<timestamp>)")
    d = sub.add_parser("demo", help="synthetic data -> flow cache -> CMC pretraining -> linear probe, on the CPU")
    d.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    d.add_argument("--record", action="store_true", help="also write experiments/results/demo.json (README numbers)")
    sub.add_parser("views", help="list the registered views, where they come from, and which are cached")
    g = sub.add_parser("config", help="print the resolved configuration (YAML) that train would run")
    g.add_argument("config", help="a packaged config's name (e.g. synthetic_rgb_flow) or a YAML path")
    g.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    sub.add_parser("precompute", help="fill the HDF5 cache of a view's precompute stage (see its --help)")
    f = sub.add_parser("extract", help="frozen features per video and clip to a .pt or .npy file with an index")
    f.add_argument("config", help="YAML config path or packaged name")
    f.add_argument("overrides", nargs="*", help="checkpoint=PATH [split=train|test|all] [out=FILE] and Hydra overrides")
    r = sub.add_parser("report", help="MODEL_CARD.md for a pretraining run directory")
    r.add_argument("run", help="the run directory (config.yaml, checkpoints/last.pt)")
    c = sub.add_parser("cache", help="what the caches of a config's views hold")
    c.add_argument("action", choices=["status"])
    c.add_argument("config", help="YAML config path")
    c.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    s = sub.add_parser("sweep", help="cells (config + overrides) x seeds: pretrain, evaluate, table and plot")
    s.add_argument("spec", help="sweep spec YAML (format: mvcoding/sweep.py, README 'Experiments')")
    s.add_argument("--only", nargs="+", action="extend", metavar="CELL", help="cells whose name contains CELL")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the cells and validate their configs")
    mode.add_argument("--report", action="store_true", help="only rebuild the table and the plot")
    s.add_argument("--out", default=None, metavar="DIR", help="the sweep folder (default runs/sweep-<name>)")
    x = sub.add_parser("export", help="write a view's encoder as a plain state_dict and FILE.json describing it")
    x.add_argument("checkpoint", help="a training checkpoint (.pt) or a run directory")
    x.add_argument("--view", required=True, help="the view whose encoder to export, e.g. rgb")
    x.add_argument("--out", required=True, metavar="FILE", help="the state_dict file (FILE.json goes beside it)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from mvcoding.config import load_config

    if args.command == "views":
        from mvcoding.registry import has_precompute, list_views, view_settings, view_source

        for name in list_views():
            settings = ", ".join(f"{k}={v}" for k, v in view_settings(name).items())
            print(f"{name:10s} {'cached' if has_precompute(name) else '':6s} {view_source(name):28s} {settings}")
    elif args.command == "config":
        from omegaconf import OmegaConf

        from mvcoding.model import build_encoder_of, build_views

        cfg = load_config(args.config, args.overrides)
        for name, view in build_views(cfg).items():  # the views' and encoders' checks, as train runs them first
            build_encoder_of(name, view)
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    elif args.command == "extract":
        from mvcoding.extract import extract

        own = {k: v for k, _, v in (o.partition("=") for o in args.overrides) if k in ("split", "out")}
        rest = [o for o in args.overrides if o.partition("=")[0] not in ("split", "out")]
        extract(load_config(args.config, rest), split=own.get("split", "all"), out=own.get("out"))
    elif args.command == "report":
        from mvcoding.card import model_card

        print(model_card(args.run))
    elif args.command == "cache":
        from mvcoding.precompute import print_status

        print_status(load_config(args.config, args.overrides))
    elif args.command == "train":
        from mvcoding.train import train

        train(load_config(args.config, args.overrides))
    elif args.command == "eval":
        from mvcoding.eval import evaluate, fuse

        if args.task == "fuse":
            fuse(args.result_a, args.result_b, out=Path(args.out) if args.out else None)
        else:
            evaluate(args.task, load_config(args.config, args.overrides))
    elif args.command == "demo":
        from mvcoding.demo import demo

        demo(args.overrides, record=args.record)
    elif args.command == "sweep":
        from mvcoding.sweep import sweep

        sweep(args.spec, only=args.only, dry_run_only=args.dry_run, report_only=args.report, out=args.out)
    elif args.command == "export":
        from mvcoding.export import export

        for path in export(args.checkpoint, args.view, args.out):
            print(path)


def out_of_memory(e: BaseException) -> str:
    """What an allocation that failed asked for ("tried to allocate 3.0 PiB"), or "" for another error: a
    MemoryError, torch's CPU allocator refusing ("can't allocate memory") or CUDA's OutOfMemoryError."""
    text = str(e)
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text):
        return ""
    size = re.search(r"allocate (\d+) bytes", text)
    if size:
        n, units = float(size.group(1)), ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        while n >= 1024 and len(units) > 1:
            n, units = n / 1024, units[1:]
        return f"tried to allocate {n:.1f} {units[0]}"
    size = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", text)  # CUDA's message
    return f"tried to allocate {size.group(1)}" if size else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["precompute"]:  # its own parser: `mvcoding precompute --help` shows it
        from mvcoding.precompute import main as precompute

        return precompute(argv[1:])
    args = parse(argv)
    try:
        run(args)
    except UserError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        # raised in a DataLoader worker, the message carries the worker's traceback: keep the cause
        prefix = f"{type(e).__module__}.{type(e).__qualname__}: "  # torch re-raises the worker's own class
        message = lines[-1].split("UserError: ", 1)[-1].removeprefix(prefix) if len(lines) > 1 else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return e.code
    except (MemoryError, RuntimeError) as e:  # a size no machine holds (objective.K=1e14): one line, not a trace
        if not out_of_memory(e):
            raise
        print(
            f"error: out of memory ({out_of_memory(e)}); lower train.batch_size, data.size, data.frames, "
            "objective.K or objective.dim, or use a machine with more memory",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        hint = "rerun the same command to resume" if args.command == "sweep" else "rerun with resume=auto to continue"
        print(f"interrupted; {hint}", file=sys.stderr)
        return 130
    return 0
