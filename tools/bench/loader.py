"""Clips per second of the multi-view loader (RGB from video + flow from the HDF5 cache) beside the bare reads.

loader: the training path: MultiViewClips (train=True: random window, random-resized crop and flip shared
        by the views) over a UCF101-layout dataset, EpochSampler, make_loader; `rgb` decodes with decord,
        `flow` reads the cache filled by tools/precompute_flow.py; 16 x 112 x 112 clips (ucf101_rgb_flow.yaml).
bare:   the same reads and nothing else: decord.VideoReader + get_batch of the same frame indices, and the
        same contiguous HDF5 slice of the flow entry (files kept open), no transforms, no collation.
For workers = 0, 1, 2 (bare: in this process, or the same clips split over 1 or 2 forked processes).
Steady state: the loader's first `workers` batches (1 for workers=0) and each bare process's first two
clips are left out, so process start and file opening are not counted. Runs are interleaved (loader and
bare alternate, their order flips every round) and the table gives medians of --rounds. Then where a
clip's time goes in one process (decode, flow read, transforms, collation).

Data: --videos MJPG videos of --frames frames (a blurred random texture panning at a per-video speed, with
a moving square), written with mvcoding.video.write_video in the UCF101 layout (tests/fake_trees.py) in a
temporary folder (or --data DIR, reused when it already holds them); the flow cache is filled with
`mvcoding precompute flow` on configs/ucf101_rgb_flow.yaml with dataset.root=<that folder>.
Frames are 128x170 (write_video needs an even width) and both views read them at native size;
`--source 240 320 --resolution 128 171` gives UCF101's own sizes (decord resizes on decode).

    python tools/bench/loader.py             # 48 videos x 64 frames, 5 rounds (~2.5 min)
    python tools/bench/loader.py --quick     # 24 videos, 3 rounds (~1 min)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # fake_trees: the UCF101 layout

from fake_trees import make_ucf101_tree  # noqa: E402
from mvcoding.cache import read_parts  # noqa: E402
from mvcoding.config import load_config  # noqa: E402
from mvcoding.data import EpochSampler, MultiViewClips, collate, make_loader, video_lengths  # noqa: E402
from mvcoding.datasets import load_dataset  # noqa: E402
from mvcoding.model import build_views  # noqa: E402
from mvcoding.precompute import main as precompute  # noqa: E402
from mvcoding.transforms import sample_aug  # noqa: E402
from mvcoding.video import write_video  # noqa: E402

CONFIG = ROOT / "configs" / "ucf101_rgb_flow.yaml"


# ---- data ----------------------------------------------------------------------------------------


def texture_video(seed: int, frames: int, h: int, w: int, sigma: float = 3) -> np.ndarray:
    """(T, H, W, 3) uint8: a blurred random texture panning at a per-video velocity, and a moving square."""
    import cv2

    rng = np.random.default_rng(seed)
    vx, vy = rng.uniform(-2, 2, 2)
    pad = int(2 * frames) + 2
    tex = (rng.random((h + 2 * pad, w + 2 * pad, 3)) * 255).astype(np.uint8)
    tex = cv2.GaussianBlur(tex, (9, 9), sigma)
    video = np.empty((frames, h, w, 3), np.uint8)
    side = h // 4
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    for t in range(frames):
        y, x = int(pad + vy * t), int(pad + vx * t)
        video[t] = tex[y : y + h, x : x + w]
        sx = int((w - side) * (0.5 + 0.5 * np.sin(0.15 * t + seed)))
        video[t, h // 3 : h // 3 + side, sx : sx + side] = colour
    return video


def make_data(root: Path, videos: int, frames: int, h: int, w: int) -> None:
    """A UCF101-layout tree (4 classes, 2 clips per group) of about `videos` textured MJPG videos."""
    groups = max(3, -(-videos // 8))
    make_ucf101_tree(root, groups=groups, clips=2, empty=True)  # the layout and split lists
    for i, path in enumerate(sorted((root / "UCF-101").glob("*/*.avi"))):
        write_video(path, texture_video(i, frames, h, w))


def overrides_for(root: Path, resolution) -> list[str]:
    res = "null" if resolution is None else f"[{resolution[0]},{resolution[1]}]"
    return [f"dataset.root={root}", f"views.rgb.resolution={res}", f"views.flow.resolution={res}"]


# ---- the two paths -------------------------------------------------------------------------------


class Epochs(Sampler):
    """`epochs` consecutive epochs of an EpochSampler (one DataLoader pass long enough to time)."""

    def __init__(self, sampler: EpochSampler, epochs: int):
        self.sampler, self.epochs = sampler, epochs

    def orders(self) -> list[int]:
        out = []
        for e in range(self.epochs):
            self.sampler.set_epoch(e)
            out += self.sampler.order()
        return out

    def __iter__(self):
        return iter(self.orders())

    def __len__(self) -> int:
        return len(self.sampler) * self.epochs


def loader_rate(data: MultiViewClips, sampler: Sampler, *, batch: int, workers: int) -> float:
    """Clips per second through make_loader, after the first max(1, workers) batches."""
    loader = make_loader(data, sampler, batch_size=batch, workers=workers, prefetch=2, pin_memory=False, drop_last=True)
    skip = max(1, workers)
    n, t0 = 0, None
    for k, b in enumerate(loader):
        if k == skip - 1:
            t0 = time.perf_counter()
        elif k >= skip:
            n += len(b["index"])
    return n / (time.perf_counter() - t0)


_BARE: dict = {}  # decode size and {video_id: part file}, inherited by the forked bare processes


class Bare:
    """The bare reads of one process: a decord VideoReader per clip, HDF5 part files kept open."""

    def __init__(self):
        self.width, self.height, self.parts, self.files = _BARE["width"], _BARE["height"], _BARE["parts"], {}

    def decode(self, path: str, indices: list[int]) -> np.ndarray:
        import decord

        vr = decord.VideoReader(path, width=self.width, height=self.height, num_threads=1)
        return vr.get_batch(indices).asnumpy()

    def flow(self, vid: str, start: int, stop: int) -> np.ndarray:
        import h5py

        part = self.parts[vid]
        f = self.files.get(part) or self.files.setdefault(part, h5py.File(part, "r", locking=False))
        return f[vid][start:stop]

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def bare_reads(clips: list[tuple], warm: int = 2) -> tuple[int, float, float]:
    """decord get_batch + HDF5 slice of each clip; (clips timed, start, end) on the monotonic clock."""
    bare = Bare()
    t0 = None
    for k, (vid, path, indices, start, stop) in enumerate(clips):
        if k == warm:
            t0 = time.monotonic()
        bare.decode(path, indices)
        bare.flow(vid, start, stop)
    bare.close()
    return len(clips) - warm, t0, time.monotonic()


def bare_rate(clips: list[tuple], workers: int) -> float:
    if workers == 0:
        n, t0, t1 = bare_reads(clips)
        return n / (t1 - t0)
    shares = [clips[i::workers] for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        out = pool.map(bare_reads, shares, 1)
    return sum(n for n, _, _ in out) / (max(t1 for _, _, t1 in out) - min(t0 for _, t0, _ in out))


def clip_plan(data: MultiViewClips, order: list[int], epochs_len: int) -> list[tuple]:
    """The (video_id, path, frame indices, flow start, flow stop) each item of `order` reads."""
    plan = []
    for k, i in enumerate(order):
        rng = np.random.default_rng((data.seed, k // epochs_len, i))
        c = data.clip(i, rng)
        stop = c.start + (c.num_frames - 1) * c.stride + 1
        plan.append((c.video_id, c.path, c.frame_indices, c.start, stop))
    return plan


# ---- where the time goes -------------------------------------------------------------------------


def breakdown(data: MultiViewClips, items: list[int], batch: int) -> list[tuple[str, float]]:
    """Mean milliseconds per clip of each step of MultiViewClips.__getitem__ (and collation), one process."""
    rgb, flow = data.views["rgb"], data.views["flow"]
    names = ["draw window + aug", "rgb decode (view)", "flow read (view)", "rgb transform", "flow transform", "collate"]
    names += ["bare decord get_batch", "bare HDF5 slice"]
    total = dict.fromkeys(names, 0.0)
    bare, done = Bare(), []
    for i in items:
        t = [time.perf_counter()]
        rng = np.random.default_rng((data.seed, 0, i))
        clip = data.clip(i, rng)
        aug = sample_aug(rng, train=True, scale=data.scale, flip=data.flip)
        t.append(time.perf_counter())
        x = rgb.decode(clip)
        t.append(time.perf_counter())
        f = flow.decode(clip)
        t.append(time.perf_counter())
        x = rgb.transform(x, aug)
        t.append(time.perf_counter())
        f = flow.transform(f, aug)
        t.append(time.perf_counter())
        done.append({"rgb": x, "flow": f, "index": i, "label": 0, "video": i})
        if len(done) == batch:
            collate(done)
            done = []
        t.append(time.perf_counter())
        bare.decode(clip.path, clip.frame_indices)
        t.append(time.perf_counter())
        bare.flow(clip.video_id, clip.start, clip.start + (clip.num_frames - 1) * clip.stride + 1)
        t.append(time.perf_counter())
        for name, a, b in zip(names, t[:-1], t[1:], strict=True):
            total[name] += b - a
    bare.close()
    return [(name, 1e3 * s / len(items)) for name, s in total.items()]


def rgb_only(root: Path, cfg, args, tv_ucf101, cached_rgb: dict) -> None:
    """RGB alone (fold 1's train videos, 16 x 112 x 112 train clips): mvcoding decoding the videos, mvcoding
    from the rgb cache with each of `cached_rgb`'s views ({format: rgb view}), and torchvision.datasets.UCF101
    (tools/bench/tv_ucf101.py), interleaved, medians; with the CPU milliseconds each spends per clip (all
    processes and threads), which load does not skew."""
    import copy

    video = tv_ucf101.mvcoding_data(root, frames=cfg.data.frames, stride=cfg.data.stride, size=cfg.data.size)
    datasets = {"video": video}
    for fmt, view in cached_rgb.items():
        datasets[f"cached {fmt}"] = copy.copy(video)
        datasets[f"cached {fmt}"].views = {"rgb": view}
    why_not = tv_ucf101.torchvision_available()
    kinds = [*datasets] + (["torchvision"] if why_not is None else [])
    for wk in args.workers:
        rates = {k: [] for k in kinds}
        cpu = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                st: dict = {}
                if kind == "torchvision":
                    rate = tv_ucf101.torchvision_rate(
                        root,
                        frames=cfg.data.frames,
                        stride=cfg.data.stride,
                        size=cfg.data.size,
                        workers=wk,
                        batch=args.batch,
                        stats=st,
                    )
                else:
                    rate = tv_ucf101.mvcoding_rate(datasets[kind], workers=wk, batch=args.batch, stats=st)
                rates[kind].append(rate)
                cpu[kind].append(st.get("cpu_ms", float("nan")))
        med = {k: statistics.median(v) for k, v in rates.items()}
        cells = "  ".join(f"{k} {med[k]:.1f} clips/s ({statistics.median(cpu[k]):.1f} CPU ms/clip)" for k in kinds)
        cached = [k for k in kinds if k.startswith("cached")]
        ratios = ", ".join(f"{k[7:]}/video {med[k] / med['video']:.2f}" for k in cached)
        if "torchvision" in med:
            ratios += f", video/torchvision {med['video'] / med['torchvision']:.2f}, " + ", ".join(
                f"{k[7:]}/torchvision {med[k] / med['torchvision']:.2f}" for k in cached
            )
        print(f"rgb only, {wk} workers: {cells}; {ratios}")
    if why_not is not None:
        print(f"rgb only: torchvision.datasets.UCF101 skipped ({why_not})")


# ---- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="24 videos, 3 rounds, shorter runs (~1 min)")
    ap.add_argument("--data", type=Path, help="dataset folder to (generate and) reuse; default: a temporary one")
    ap.add_argument("--videos", type=int, default=48, help="rounded up to 4 classes x 2 clips x groups (>= 3)")
    ap.add_argument("--frames", type=int, default=64, help="frames per video")
    ap.add_argument("--source", type=int, nargs=2, default=[128, 170], metavar=("H", "W"), help="video size")
    ap.add_argument(
        "--resolution",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="decode and cache size of both views (default: the videos' own)",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4, help="passes over the videos per timed loader run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument(
        "--encoded",
        action="store_true",
        help="generate 320x240 mpeg4 (XVID-like) videos with ffmpeg, read at 128x171 as UCF101 is, and "
        "compare the RGB loaders with torchvision.datasets.UCF101 (needs ffmpeg and torchcodec)",
    )
    formats = ["jpeg", "raw", "jpeg-device"]
    ap.add_argument(
        "--rgb-cache",
        nargs="*",
        default=formats,
        choices=formats,
        help="also time the loader with RGB read from the decode-once cache in these formats (jpeg-device: "
        "the JPEG cache with jpeg_decode=device: the workers hand over the undecoded bytes, and the "
        "decode, which runs batched on the model's device, is not counted)",
    )
    args = ap.parse_args()
    if args.quick:
        args.videos, args.rounds, args.epochs = min(args.videos, 24), min(args.rounds, 3), min(args.epochs, 3)

    torch.set_num_threads(1)  # workers=0 runs the transforms here: one thread, as in a DataLoader worker
    import cv2

    # OpenCV's thread pool must never start here: precompute forks workers that call cv2.setNumThreads(1),
    # which hangs forever in a child of a process whose pool threads exist (pthread_cond_destroy)
    cv2.setNumThreads(1)
    tmp = None
    root = args.data
    if root is None:
        root = tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t_setup = time.perf_counter()
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import tv_ucf101

        if args.encoded and not tv_ucf101.ffmpeg_available():
            raise SystemExit("--encoded needs ffmpeg (apt-get install ffmpeg)")
        if args.encoded:
            args.source, args.resolution = [240, 320], args.resolution or [128, 171]
        if not (root / "UCF-101").is_dir():
            if args.encoded:
                tv_ucf101.make_encoded_tree(root, args.videos, args.frames)
            else:
                make_data(root, args.videos, args.frames, *args.source)
        overrides = overrides_for(root, args.resolution)
        rc = precompute(["flow", str(CONFIG), *overrides, "precompute.workers=2"])
        if rc != 0:
            raise SystemExit(f"filling the flow cache failed (exit {rc})")
        cfg = load_config(CONFIG, overrides)
        records = load_dataset(cfg.dataset).records("all")
        views = build_views(cfg)
        lengths = video_lengths(records, cfg)
        d = cfg.data
        data = MultiViewClips(
            records,
            views,
            lengths,
            frames=d.frames,
            stride=d.stride,
            train=True,
            scale=d.scale,
            flip=d.flip,
            seed=cfg.seed,
        )
        cached = {}  # format -> MultiViewClips with rgb from the decode-once cache
        for fmt in args.rgb_cache:
            decode = "device" if fmt == "jpeg-device" else "workers"
            over = [
                *overrides,
                "views.rgb.cache=true",
                f"views.rgb.cache_format={fmt.split('-')[0]}",
                f"views.rgb.jpeg_decode={decode}",
                "precompute.workers=2",
            ]
            if precompute(["rgb", str(CONFIG), *over]) != 0:
                raise SystemExit(f"filling the {fmt} rgb cache failed")
            cviews = build_views(load_config(CONFIG, over))
            cached[fmt] = MultiViewClips(
                records,
                cviews,
                lengths,
                frames=d.frames,
                stride=d.stride,
                train=True,
                scale=d.scale,
                flip=d.flip,
                seed=cfg.seed,
            )
            path = cviews["rgb"].cache.path
            size = sum(p.stat().st_size for p in path.glob("part-*.h5"))
            frames = sum(lengths[r.video_id][0] for r in records)
            cached[fmt].bytes_per_frame = size / frames
        cache = views["flow"].cache.path
        parts = {vid: str(cache / f"{name}.h5") for name, info in read_parts(cache).items() for vid in info["videos"]}
        h, w = args.resolution or (-1, -1)
        _BARE.update(width=w, height=h, parts=parts)
        sampler = Epochs(EpochSampler(len(data), seed=cfg.seed, shuffle=True, batch_size=args.batch), args.epochs)
        plan = clip_plan(data, sampler.orders(), len(sampler.sampler))
        setup = time.perf_counter() - t_setup

        size = f"{args.source[0]}x{args.source[1]}"
        read = "native" if args.resolution is None else f"{args.resolution[0]}x{args.resolution[1]}"
        codec = "ffmpeg mpeg4" if args.encoded else "MJPG"
        print(
            f"{len(records)} videos x {args.frames} frames, {size} {codec}, read at {read}; clips {d.frames} x "
            f"{d.size} x {d.size}, stride {d.stride}, train augmentation; flow DIS lzf cache"
        )
        print(
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
            f"1 torch thread per process; batch {args.batch}, {len(plan)} clips per run; setup {setup:.0f} s"
        )

        item = data[0]
        parts = {n: list(item[n].values()) if isinstance(item[n], dict) else [item[n]] for n in views}
        crossing = sum(v.nbytes for n in views for v in parts[n])
        as_float = sum(v.numel() * 4 for n in views for v in parts[n])
        kinds = ", ".join(f"{n} {' + '.join(str(v.dtype) for v in parts[n])}" for n in views)
        print(
            f"bytes per clip from the workers to the main process: {crossing / 2**20:.2f} MiB ({kinds}); as "
            f"float32: {as_float / 2**20:.2f} MiB"
        )
        if "jpeg-device" in cached:
            rgb = cached["jpeg-device"][0]["rgb"]  # {"host_jpeg": (T, L) rows, "host_aug": (5,)}
            print(
                f"rgb bytes per clip with jpeg-device: {sum(v.nbytes for v in rgb.values()) / 2**10:.0f} KiB of JPEG "
                f"rows (the uint8 crops: {item['rgb'].nbytes / 2**10:.0f} KiB)"
            )
        kinds = ["loader", "bare", *(f"cached {fmt}" for fmt in cached)]
        rates = {(kind, wk): [] for wk in args.workers for kind in kinds}
        for r in range(args.rounds):
            for wk in args.workers:
                for kind in kinds if r % 2 == 0 else kinds[::-1]:
                    if kind == "loader":
                        rates[kind, wk].append(loader_rate(data, sampler, batch=args.batch, workers=wk))
                    elif kind == "bare":
                        rates[kind, wk].append(bare_rate(plan, wk))
                    else:
                        rates[kind, wk].append(loader_rate(cached[kind[7:]], sampler, batch=args.batch, workers=wk))
        print(f"\nclips per second, median of {args.rounds} interleaved rounds (min-max)\n")
        head = f"{'workers':>7}  {'loader':>7} {'(min-max)':>13}  {'bare':>7} {'(min-max)':>13}  {'loader/bare':>11}"
        print(head)
        print("-" * len(head))
        for wk in args.workers:
            lo, ba = rates["loader", wk], rates["bare", wk]
            ml, mb = statistics.median(lo), statistics.median(ba)
            print(
                f"{wk:>7}  {ml:>7.1f} {f'({min(lo):.0f}-{max(lo):.0f})':>13}  {mb:>7.1f} "
                f"{f'({min(ba):.0f}-{max(ba):.0f})':>13}  {ml / mb:>11.2f}"
            )
        if cached:
            print("\nthe loader with RGB from the decode-once cache (flow as above), clips per second, median:\n")
            head = f"{'workers':>7}  " + "  ".join(f"{'cached ' + f:>18} {'/loader':>8}" for f in cached)
            print(head)
            print("-" * len(head))
            for wk in args.workers:
                ml = statistics.median(rates["loader", wk])
                cells = [(statistics.median(rates[f"cached {f}", wk])) for f in cached]
                print(f"{wk:>7}  " + "  ".join(f"{c:>18.1f} {c / ml:>8.2f}" for c in cells))
            in_workers = {f: ds for f, ds in cached.items() if f != "jpeg-device"}
            if args.encoded:
                rgb_only(root, cfg, args, tv_ucf101, {f: ds.views["rgb"] for f, ds in in_workers.items()})
            for fmt, ds in in_workers.items():
                print(
                    f"rgb cache {fmt}: {ds.bytes_per_frame / 1024:.1f} KiB per frame on disk "
                    f"({ds.bytes_per_frame * 25 * 3600 / 2**30:.2f} GiB per hour of 25 fps video)"
                )

        n = min(len(data), 48)
        items = [i % len(data) for i in range(2 * n)]
        breakdown(data, items[:4], args.batch)  # warm up
        steps = breakdown(data, items, args.batch)
        print(f"\nwhere a clip's time goes, one process (ms per clip, mean of {len(items)} clips):")
        loader_ms = sum(ms for name, ms in steps if not name.startswith("bare"))
        bare_ms = sum(ms for name, ms in steps if name.startswith("bare"))
        for name, ms in steps:
            share = f"{100 * ms / loader_ms:5.1f} %" if not name.startswith("bare") else ""
            print(f"  {name:<24}{ms:>8.2f}  {share}")
        print(
            f"  {'loader steps, sum':<24}{loader_ms:>8.2f}   (1000 / workers=0 median: "
            f"{1e3 / statistics.median(rates['loader', 0]):.2f})"
            if 0 in args.workers
            else ""
        )
        print(f"  {'bare reads, sum':<24}{bare_ms:>8.2f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
