"""The prepared GPU check: is the data path fast enough to keep a GPU busy? One script, a few minutes.

On a UCF101-layout tree it generates (textured MJPG videos, 128x170; ffmpeg-encoded 320x240 mpeg4
when tools/bench/tv_ucf101.py and ffmpeg are present), with the caches filled by `mvcoding precompute`:

  train  two-view (rgb + flow) training of configs/ucf101_rgb_flow.yaml (R3D-18 with GroupNorm, 16x112x112
         clips, bf16 autocast on CUDA, memory bank), through mvcoding.train.train itself, twice:
           cached-device:  RGB from the decode-once JPEG cache (views.rgb.cache=true), the JPEG decoded
                           batched on the device (jpeg_decode=device: nvJPEG), flow from its cache
           cached-workers: the same cache decoded in the DataLoader workers (jpeg_decode=workers)
           video:          RGB decoded from the videos by decord, flow from its cache
         clips/s (median over the logged steps after the first quarter), data-wait fraction (the share
         of wall time the loop waited for the loader), peak GPU memory.
  loss   one CMC loss step (forward, backward to the embeddings, bank update) at K=16384, B=128, D=128.
  raft   RAFT-small flow pairs/s at 128x171, when its weights are in the torch hub cache.

Goals on one H200 with 16 cores: cached data-wait < 10% and >= 1,000 clips/s.

    python tools/bench/gpu.py                         # on the GPU: --device cuda (default when present)
    python tools/bench/gpu.py --device cpu --quick    # a smoke run on the CPU (tests/test_bench_gpu.py)

Prints a table and writes --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # fake_trees: the UCF101 layout
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIG = ROOT / "configs" / "ucf101_rgb_flow.yaml"


def make_data(root: Path, videos: int, frames: int) -> str:
    """The tree; returns how its videos are encoded."""
    try:
        import tv_ucf101

        if tv_ucf101.ffmpeg_available():
            tv_ucf101.make_encoded_tree(root, videos, frames)
            return "ffmpeg mpeg4 320x240"
    except ImportError:
        pass
    from loader import make_data as make_mjpg

    make_mjpg(root, videos, frames, 128, 170)
    return "MJPG 128x170"


def train_run(name: str, root: Path, out: Path, args, extra: list[str]) -> dict:
    """One training run through mvcoding.train.train; its throughput from metrics.jsonl."""
    from mvcoding.config import load_config
    from mvcoding.train import train

    device = torch.device(args.device)
    amp = "bf16" if device.type == "cuda" else "off"
    over = [
        f"dataset.root={root}",
        f"run.dir={out / name}",
        f"device={args.device}",
        f"data.workers={args.workers}",
        f"train.batch_size={args.batch}",
        f"train.max_steps={args.steps}",
        "train.log_every=1",
        "train.save_every=100000",
        "train.monitor_every=0",
        f"train.amp={amp}",
        f"objective.K={args.K}",
        "optim.warmup_steps=0",
        *extra,
    ]
    if args.quick:
        over += ["data.frames=4", "data.size=32", "views.rgb.resolution=[64,86]", "views.flow.resolution=[64,86]"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train(load_config(CONFIG, over))
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steady = rows[len(rows) // 4 :] or rows
    return {
        "clips_per_s": statistics.median(r["clips_per_s"] for r in steady),
        "data_wait": statistics.mean(r["data_wait"] for r in steady),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "steps": len(rows),
        "wall_s": wall,
    }


def loss_step(device: torch.device, K: int, B: int, reps: int) -> dict:
    """Milliseconds per CMC loss step (forward, backward to the embeddings, bank update), 2 views."""
    import torch.nn.functional as F

    from mvcoding.objectives import CMCObjective

    obj = CMCObjective(views=["rgb", "flow"], graph="core", anchor="rgb", n_data=2 * K, K=K, dim=128).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(reps + 2):
        z = {v: F.normalize(torch.randn(B, 128, device=device), dim=1).requires_grad_() for v in ("rgb", "flow")}
        index = torch.randint(0, 2 * K, (B,), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss, _ = obj(z, index, gen)
        loss.backward()
        obj.update({v: t.detach() for v, t in z.items()}, index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {"K": K, "B": B, "ms": 1e3 * statistics.median(times)}


def raft_rate(device: torch.device, pairs: int) -> dict:
    from mvcoding.views.flow import compute_flow, raft_weights_file

    path, url = raft_weights_file("raft_small")
    if not path.is_file():
        return {"skipped": f"weights {path.name} not in the torch hub cache (download {url})"}
    frames = np.random.default_rng(0).integers(0, 256, (pairs + 1, 128, 171, 3), dtype=np.uint8)
    compute_flow(frames[:3], "raft_small", device=str(device), batch=2, iters=12)  # load and warm up
    t0 = time.perf_counter()
    compute_flow(frames, "raft_small", device=str(device), batch=16, iters=12)
    return {"pairs_per_s": pairs / (time.perf_counter() - t0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny data, clips and steps")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--videos", type=int, default=96)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--data", type=Path, help="dataset folder to (generate and) reuse")
    ap.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.workers, args.batch, args.steps, args.videos, args.frames = 1, 2, 3, 16, 24
    device = torch.device(args.device)
    import cv2

    cv2.setNumThreads(1)  # forked precompute workers must not inherit OpenCV's thread pool
    tmp = None
    root = args.data or Path(tmp := tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        encoded = make_data(root, args.videos, args.frames) if not (root / "UCF-101").is_dir() else "reused"
        from mvcoding.precompute import main as precompute

        n_videos = len(list((root / "UCF-101").glob("*/*.avi")))
        args.K = min(16384, n_videos - 1)
        fill = [f"dataset.root={root}", f"precompute.workers={max(1, args.workers)}", "views.rgb.cache=true"]
        if args.quick:
            fill += ["views.rgb.resolution=[64,86]", "views.flow.resolution=[64,86]"]
        if precompute(["all", str(CONFIG), *fill]) != 0:
            raise SystemExit("filling the caches failed")
        out = root / "runs"
        result = {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpus": os.cpu_count(),
            "videos": n_videos,
            "encoded": encoded,
            "workers": args.workers,
            "batch": args.batch,
            "steps": args.steps,
            "quick": args.quick,
        }
        jpeg = ["views.rgb.cache=true", "views.rgb.jpeg_decode"]
        result["train_cached"] = train_run("cached", root, out, args, [jpeg[0], f"{jpeg[1]}=device"])
        result["train_cached_workers"] = train_run("cached-workers", root, out, args, [jpeg[0], f"{jpeg[1]}=workers"])
        result["train_video"] = train_run("video", root, out, args, [])
        result["loss"] = loss_step(
            device, 1024 if args.quick else 16384, 16 if args.quick else 128, 3 if args.quick else 20
        )
        result["raft"] = raft_rate(device, 4 if args.quick else 64)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    c, w, v = result["train_cached"], result["train_cached_workers"], result["train_video"]
    print(
        f"\n{result['device']} {result['gpu'] or ''}; {result['cpus']} CPUs, {args.workers} workers, batch "
        f"{args.batch}; {n_videos} videos ({encoded}); {args.steps} steps per run"
    )
    print(f"{'loader':<15} {'clips/s':>9} {'data wait':>10} {'peak GiB':>9}")
    for name, r in (("cached-device", c), ("cached-workers", w), ("video", v)):
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{name:<15} {r['clips_per_s']:>9.1f} {100 * r['data_wait']:>9.1f}% {peak:>9}")
    print(f"loss step K={result['loss']['K']} B={result['loss']['B']}: {result['loss']['ms']:.2f} ms")
    raft = result["raft"]
    print("raft_small: " + (f"{raft['pairs_per_s']:.1f} pairs/s" if "pairs_per_s" in raft else raft["skipped"]))
    goal = any(r["data_wait"] < 0.10 and r["clips_per_s"] >= 1000 for r in (c, w))
    print(f"goal (a cached loader: data wait < 10%, >= 1000 clips/s): {'met' if goal else 'not met'}")
    result["goal_met"] = goal
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
