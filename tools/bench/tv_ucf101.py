"""mvcoding's video-decoding RGB loader against torchvision's UCF101 loader, on the same ffmpeg-encoded files.

What it measures (benchmark only: needs ffmpeg's command line, and torchcodec for torchvision's side):

data     make_encoded_tree: a UCF101-layout tree (tests/fake_trees.py) whose videos are 320x240, 25 fps,
         encoded by ffmpeg with a real inter-frame codec (default: MPEG-4 part 2 tagged XVID in .avi,
         GOP 12, qscale 5, like UCF101's XVID files; "libxvid" and "h264" too), content a blurred random
         texture panning at a per-video speed with a moving square.
rates    16 x 112 x 112 training clips through a DataLoader with the same workers and batch, timed after the
         first max(1, workers) batches: clips per second, CPU milliseconds per clip (main process and
         workers, every thread, over the timed batches) and the CPUs used on average:
           torchvision  torchvision.datasets.UCF101(fold 1, train; VideoClips: a torchcodec VideoDecoder per
                        clip at native 240x320, plus its AudioDecoder attempt) with TvTransform: resize to
                        128x171 (torch, bilinear, antialiased, on uint8), then mvcoding's own train transform
                        (random-resized crop from sample_aug, scale 0.4-1, ratio 3/4-4/3, to 112 bilinear
                        antialiased, flip with p 0.5, float / 255, normalise 0.45 / 0.225) -> (3, 16, 112, 112)
           mvcoding     MultiViewClips(train) over fold 1's train videos with only the rgb view of
                        configs/ucf101_rgb_flow.yaml ('~views.flow'; objective.name=supervised when CMC
                        refuses one view): decord, resize on decode to 128x171, transform_rgb; EpochSampler
                        orders, make_loader
           mvcoding + torchcodec decode   the same with the view's decode replaced by decode_rgb_torchcodec
                        (native-size torchcodec decode, torch resize): the change this benchmark proposes
         Runs alternate (order flipped every round); medians of --rounds. On a shared machine the rates
         depend on the CPU share each loader's threads get; CPU ms per clip does not.
profile  one process, one torch thread, the same clips (video, start, 16 frames) for every variant: per-stage
         wall and CPU milliseconds per clip of mvcoding's path, torchvision's, and decode variants (decord
         at native size + torch resize, dlpack, num_threads=0, readers kept open; torchcodec native, with
         approximate seek, with its decoder-side Resize, decoders kept open), then torchvision's own
         UCF101.__getitem__ end to end.

    python tools/bench/tv_ucf101.py            # 24 videos x 64 frames, 3 rounds (~1.5 min on 2 cores)
    python tools/bench/tv_ucf101.py --videos 48 --rounds 5 --codec h264

tools/bench/loader.py can call: ffmpeg_available, make_encoded_tree, torchvision_available, torchvision_rate,
mvcoding_rate, profile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, default_collate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # fake_trees: the UCF101 layout

from fake_trees import make_ucf101_tree  # noqa: E402
from mvcoding.transforms import crop_resize, normalize, sample_aug  # noqa: E402

CONFIG = ROOT / "configs" / "ucf101_rgb_flow.yaml"
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # views/rgb.py
RESIZE = (128, 171)  # views.rgb.resolution of ucf101_rgb_flow.yaml
CODECS = {  # name -> ffmpeg output options (container .avi, like UCF101)
    "mpeg4": ["-c:v", "mpeg4", "-vtag", "XVID", "-qscale:v", "5"],
    "libxvid": ["-c:v", "libxvid", "-qscale:v", "5"],
    "h264": ["-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p"],
}


# ---- data ----------------------------------------------------------------------------------------


def ffmpeg_available() -> bool:
    """True when the ffmpeg command line runs here."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def texture_frames(seed: int, frames: int, h: int = 240, w: int = 320) -> np.ndarray:
    """(T, H, W, 3) uint8: tools/bench/loader.py's panning texture with a moving square, blurred with sigma 2."""
    from loader import texture_video

    return texture_video(seed, frames, h, w, sigma=2)


def encode_video(path: Path, frames: np.ndarray, codec: str = "mpeg4", *, fps: int = 25, gop: int = 12) -> None:
    """Pipe raw RGB frames (T, H, W, 3) into ffmpeg, which writes `path` with `codec` (a key of CODECS)."""
    t, h, w, _ = frames.shape
    cmd = [
        "ffmpeg",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        str(fps),
        "-i",
        "-",
        *CODECS[codec],
        "-g",
        str(gop),
        "-an",
        str(path),
    ]
    done = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {done.stderr.decode(errors='replace').strip()[:300]}")


def make_encoded_tree(root: Path, videos: int, frames: int, codec: str = "mpeg4", *, gop: int = 12) -> None:
    """A UCF101-layout tree (4 classes, 2 clips per group, >= 3 groups: about `videos` videos) of 320x240,
    25 fps videos of `frames` frames encoded by ffmpeg with `codec` (mpeg4 = XVID-tagged MPEG-4 part 2,
    libxvid, h264), keyframe every `gop` frames; split lists as tests/fake_trees.py writes them."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
    root = Path(root)
    groups = max(3, -(-videos // 8))
    make_ucf101_tree(root, groups=groups, clips=2, empty=True)  # the layout and the split lists
    for i, path in enumerate(sorted((root / "UCF-101").glob("*/*.avi"))):
        encode_video(path, texture_frames(i, frames), codec, gop=gop)


# ---- torchvision ---------------------------------------------------------------------------------


def torchvision_available() -> str | None:
    """None when torchvision.datasets.UCF101 can decode here (torchcodec and FFmpeg's libraries), else why."""
    try:
        from torchvision.datasets import UCF101  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is the reason
        return f"torchvision.datasets.UCF101 does not import: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # noqa: BLE001 - torchcodec missing, or FFmpeg's libraries missing
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        return f"torchvision's video datasets need torchcodec, which does not load: {type(e).__name__}: {msg}"
    from mvcoding.video import write_video

    with tempfile.TemporaryDirectory(prefix="tv_check_") as tmp:
        path = Path(tmp) / "check.avi"
        write_video(path, np.zeros((4, 16, 16, 3), np.uint8))
        try:
            VideoDecoder(str(path)).get_frames_at(indices=[0, 1])
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            return f"torchcodec cannot decode a video here: {type(e).__name__}: {msg}"
    return None


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, C, H, W) uint8 -> (T, C, *size) uint8: bilinear, antialiased, channels-last uint8 kernel."""
    x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def train_transform(x: torch.Tensor, rng: np.random.Generator, size: int, scale=(0.4, 1.0)) -> torch.Tensor:
    """(3, T, H, W) uint8 -> (3, T, size, size) float32: mvcoding's transform_rgb with a drawn sample_aug."""
    aug = sample_aug(rng, train=True, scale=scale, flip=True)
    x = crop_resize(x, aug.crop, size).float() / 255
    if aug.flip:
        x = x.flip(-1)
    return normalize(x, MEAN, STD)


class TvTransform:
    """torchvision's video (T, H, W, C) uint8 -> (3, T, size, size) float32, as mvcoding's training path:
    resize to `resize` (torch bilinear antialiased, uint8), then train_transform (random-resized crop,
    flip, float, normalise). Module level and picklable: it runs in DataLoader workers."""

    def __init__(self, size: int = 112, resize: tuple[int, int] = RESIZE):
        self.size, self.resize = size, tuple(resize)
        self.rng = np.random.default_rng()

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        x = resize_uint8(video.permute(0, 3, 1, 2), self.resize)  # (T, 3, h, w)
        return train_transform(x.permute(1, 0, 2, 3), self.rng, self.size)


def _worker_seed(_):
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.rng = np.random.default_rng(info.seed % 2**32)


_TV_METADATA: dict = {}  # str(root) -> VideoClips metadata (the constructor's index of every video)


def torchvision_dataset(root: Path, *, frames: int, stride: int = 1, size: int = 112):
    """UCF101(fold 1, train) over root/UCF-101 with TvTransform; every video is indexed once per root."""
    from torchvision.datasets import UCF101

    root = Path(root)
    frame_rate = None if stride == 1 else 25 / stride  # a clip of every stride-th frame (25 fps videos)
    ds = UCF101(
        str(root / "UCF-101"),
        str(root / "ucfTrainTestlist"),
        frames_per_clip=frames,
        step_between_clips=1,
        frame_rate=frame_rate,
        fold=1,
        train=True,
        transform=TvTransform(size),
        _precomputed_metadata=_TV_METADATA.get(str(root)),
        num_workers=1,
    )
    _TV_METADATA[str(root)] = ds.metadata
    return ds


def _cpu(pids: list[int]) -> float:
    """CPU seconds so far of this process and of the processes `pids` (all their threads, exited ones too)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _rate(loader, skip: int, stats: dict | None = None) -> float:
    """Clips per second after the first `skip` batches; stats (when given) gets, over the same timed batches,
    cpu_ms: CPU milliseconds per clip of this process and its DataLoader workers (every thread), and cores:
    the CPUs they used on average (rate x cpu_ms / 1000; below the CPU count when they waited, either for
    a CPU that other processes held or for each other)."""
    it = iter(loader)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    last = len(loader) - 1
    n, t0, c0 = 0, None, 0.0
    for k, b in enumerate(it):
        if k == skip - 1:
            t0, c0 = time.perf_counter(), _cpu(pids)
        elif k >= skip:
            n += len(b[0]) if isinstance(b, (list, tuple)) else len(b["index"])
        if k == last:
            t1, c1 = time.perf_counter(), _cpu(pids)
    rate = n / (t1 - t0)
    if stats is not None:
        stats["cpu_ms"] = 1e3 * (c1 - c0) / n
        stats["cores"] = (c1 - c0) / (t1 - t0)
    return rate


def torchvision_rate(
    root: Path,
    *,
    frames: int = 16,
    stride: int = 1,
    size: int = 112,
    workers: int = 2,
    batch: int = 8,
    clips: int = 192,
    seed: int = 0,
    stats: dict | None = None,
) -> float:
    """Clips per second of torchvision.datasets.UCF101 (fold 1, train, TvTransform) in a DataLoader with
    `workers` and `batch`, random clips (every window of every train video, shuffled), `clips` clips
    timed after the first max(1, workers) batches. Indexing the videos (the constructor) is not timed.
    stats, when given, gets cpu_ms and cores: the CPU milliseconds per clip and the CPUs used (see _rate)."""
    ds = torchvision_dataset(root, frames=frames, stride=stride, size=size)
    skip = max(1, workers)
    total = (skip + -(-clips // batch)) * batch
    sampler = RandomSampler(ds, num_samples=total, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        prefetch_factor=2 if workers else None,
        worker_init_fn=_worker_seed if workers else None,
    )
    return _rate(loader, skip, stats)


# ---- where a clip's time goes, one process -------------------------------------------------------


def train_clips(root: Path, n: int, *, frames: int = 16, stride: int = 1, seed: int = 0) -> list[tuple[str, int]]:
    """`n` random (path, start) training clips of fold 1 (the videos torchvision's UCF101(train) reads)."""
    import decord

    root = Path(root)
    lines = (root / "ucfTrainTestlist" / "trainlist01.txt").read_text().split()
    paths = [str(root / "UCF-101" / rel) for rel in lines if rel.endswith(".avi")]
    lengths = {p: len(decord.VideoReader(p, num_threads=1)) for p in paths}
    span = (frames - 1) * stride + 1
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = paths[int(rng.integers(len(paths)))]
        out.append((p, int(rng.integers(0, lengths[p] - span + 1))))
    return out


class Stages:
    """Wall and CPU (this process, all its threads) seconds per named stage, added lap by lap."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        t, c = time.perf_counter(), time.process_time()
        self.wall[name] = self.wall.get(name, 0.0) + t - self.t
        self.cpu[name] = self.cpu.get(name, 0.0) + c - self.c
        self.t, self.c = t, c


def _decord_reader(path: str, resize, threads: int, keep: dict | None):
    import decord

    if keep is not None and path in keep:
        return keep[path]
    h, w = resize if resize else (-1, -1)
    vr = decord.VideoReader(path, width=w, height=h, num_threads=threads)
    if keep is not None:
        keep[path] = vr
    return vr


def _tc_decoder(path: str, keep: dict | None, **kw):
    from torchcodec.decoders import VideoDecoder

    if keep is not None and path in keep:
        return keep[path]
    dec = VideoDecoder(path, **kw)
    if keep is not None:
        keep[path] = dec
    return dec


def _audio_attempt(path: str, start: int, frames: int, fps: float = 25.0) -> torch.Tensor:
    """What torchvision's VideoClips.get_clip does for audio: an AudioDecoder, empty when there is none."""
    from torchcodec.decoders import AudioDecoder

    try:
        return AudioDecoder(path).get_samples_played_in_range(start / fps, (start + frames) / fps).data
    except Exception:  # noqa: BLE001 - torchvision's own fallback
        return torch.empty((1, 0), dtype=torch.float32)


def decode_path(name: str, keep: dict | None):
    """One decode variant: f(path, indices, stages) -> (3, T, 128, 171) uint8, laps named per stage."""

    def decord_path(resize, threads, torch_resize, dlpack=False):
        def run(path, indices, st):
            vr = _decord_reader(path, resize, threads, keep)
            st.lap("open reader")
            nd = vr.get_batch(indices)
            if dlpack:  # zero-copy hand-over to torch (decord.bridge), no asnumpy copy
                from decord.bridge import to_torch

                x = to_torch(nd)
            else:
                x = torch.from_numpy(nd.asnumpy())
            st.lap("decode (get_batch)" + (", resized" if resize else ", native"))
            x = x.permute(0, 3, 1, 2)  # (T, 3, H, W)
            if torch_resize:
                x = resize_uint8(x, RESIZE)
                st.lap("resize in torch")
            return x.permute(1, 0, 2, 3)

        return run

    def tc_path(torch_resize, audio=False, **kw):
        def run(path, indices, st):
            dec = _tc_decoder(path, keep, **kw)
            st.lap("open reader")
            x = dec.get_frames_at(indices=indices).data  # (T, 3, H, W) with NCHW, (T, H, W, 3) with NHWC
            st.lap("decode (get_frames_at)")
            if audio:
                _audio_attempt(path, indices[0], len(indices))
                st.lap("audio attempt")
            if kw.get("dimension_order") == "NHWC":
                x = x.permute(0, 3, 1, 2)
            if torch_resize:
                x = resize_uint8(x, RESIZE)
                st.lap("resize in torch")
            return x.permute(1, 0, 2, 3)

        return run

    from torchcodec.transforms import Resize

    paths = {
        "mvcoding today: decord, resize on decode": decord_path(RESIZE, 1, False),
        DECODES[1]: tc_path(True, audio=True, dimension_order="NHWC"),
        "decord native + torch resize": decord_path(None, 1, True),
        "decord native, dlpack, + torch resize": decord_path(None, 1, True, dlpack=True),
        "decord resize on decode, num_threads=0 (auto)": decord_path(RESIZE, 0, False),
        "torchcodec native + torch resize": tc_path(True),
        "torchcodec native, approximate seek, + torch resize": tc_path(True, seek_mode="approximate"),
        "torchcodec resize on decode (transforms=[Resize])": tc_path(False, transforms=[Resize(RESIZE)]),
    }
    return paths[name]


DECODES = [
    "mvcoding today: decord, resize on decode",
    "torchvision UCF101: torchcodec native, +audio, torch resize",
    "decord native + torch resize",
    "decord native, dlpack, + torch resize",
    "decord resize on decode, num_threads=0 (auto)",
    "torchcodec native + torch resize",
    "torchcodec native, approximate seek, + torch resize",
    "torchcodec resize on decode (transforms=[Resize])",
]
KEPT = ["mvcoding today: decord, resize on decode", "torchcodec native + torch resize"]  # also with readers kept


def _run_path(decode, clips, st: Stages, *, size: int, batch: int, frames: int, stride: int, rng) -> None:
    done = []
    for path, start in clips:
        st.start()
        x = decode(path, [start + i * stride for i in range(frames)], st)
        aug = sample_aug(rng, train=True, scale=(0.4, 1.0), flip=True)
        x = crop_resize(x, aug.crop, size)
        st.lap("crop_resize (uint8)")
        x = x.float() / 255
        if aug.flip:
            x = x.flip(-1)
        x = normalize(x, MEAN, STD)
        st.lap("float, flip, normalise")
        done.append({"rgb": x, "index": 0, "label": 0, "video": 0})
        if len(done) == batch:
            default_collate(done)
            done = []
        st.lap("collate (float32)")


def profile(
    root: Path,
    *,
    frames: int = 16,
    stride: int = 1,
    size: int = 112,
    batch: int = 8,
    clips: int = 48,
    rounds: int = 3,
    seed: int = 0,
    decodes: list[str] | None = None,
    show: bool = True,
) -> dict:
    """Per-stage milliseconds per clip (wall and CPU) of mvcoding's RGB path, torchvision's, and decode variants,
    in this process with one torch thread, on the same `clips` training clips; every variant runs once per
    round, rounds interleaved (order rotated); per stage the median over rounds. Then torchvision's own
    UCF101.__getitem__ on the same clips, end to end. Returns {variant: {stage: (wall_ms, cpu_ms)}} and prints
    the table when `show`."""
    torch.set_num_threads(1)  # as in a DataLoader worker
    plan = train_clips(root, clips, frames=frames, stride=stride, seed=seed)
    names = [*(decodes or DECODES)]
    variants = [(n, False) for n in names] + [(n, True) for n in KEPT if n in names]
    label = {v: v[0] + (", readers kept open" if v[1] else "") for v in variants}
    runs: dict = {label[v]: [] for v in variants}
    tv_runs: list[tuple[float, float]] = []
    tv = torchvision_dataset(root, frames=frames, stride=stride, size=size)
    vc = tv.video_clips
    first = {p: (vc.cumulative_sizes[i - 1] if i else 0) for i, p in enumerate(vc.video_paths)}
    tv_items = [first[p] + s for p, s in plan]
    kw = dict(size=size, batch=batch, frames=frames, stride=stride)
    for v in variants:  # warm up: imports, first opens
        _run_path(decode_path(v[0], {} if v[1] else None), plan[:2], Stages(), rng=np.random.default_rng(0), **kw)
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            st = Stages()
            keep = {} if v[1] else None
            if keep is not None:  # open every reader before timing: a worker's readers stay open
                for p, _ in plan:
                    decode_path(v[0], keep)(p, [0], Stages())
            _run_path(decode_path(v[0], keep), plan, st, rng=np.random.default_rng(r), **kw)
            runs[label[v]].append(st)
        t, c = time.perf_counter(), time.process_time()
        done = []
        for i in tv_items:
            done.append(tv[i])
            if len(done) == batch:
                default_collate(done)
                done = []
        tv_runs.append(((time.perf_counter() - t) / len(plan), (time.process_time() - c) / len(plan)))
    out = {}
    for name, sts in runs.items():
        stages = list(sts[0].wall)
        out[name] = {
            s: (
                1e3 * statistics.median(x.wall[s] for x in sts) / len(plan),
                1e3 * statistics.median(x.cpu[s] for x in sts) / len(plan),
            )
            for s in stages
        }
        out[name]["total"] = (
            1e3 * statistics.median(sum(x.wall.values()) for x in sts) / len(plan),
            1e3 * statistics.median(sum(x.cpu.values()) for x in sts) / len(plan),
        )
    out["torchvision UCF101.__getitem__ + collate (end to end)"] = {
        "total": (1e3 * statistics.median(w for w, _ in tv_runs), 1e3 * statistics.median(c for _, c in tv_runs))
    }
    if show:
        print_profile(out, clips=len(plan), rounds=rounds, frames=frames)
    return out


def print_profile(out: dict, *, clips: int, rounds: int, frames: int) -> None:
    base = out["mvcoding today: decord, resize on decode"]["total"]
    print(
        f"\nwhere a {frames}-frame clip's time goes, one process, one torch thread: ms per clip, wall / CPU "
        f"(CPU: this process, all threads), median of {rounds} interleaved rounds of {clips} clips\n"
    )
    for name, stages in out.items():
        w, c = stages["total"]
        print(f"{name}\n  {'total':<28}{w:>7.2f} / {c:>6.2f}   CPU vs mvcoding today: {c / base[1]:.2f}x")
        for s, (w, c) in stages.items():
            if s != "total":
                print(f"  {s:<28}{w:>7.2f} / {c:>6.2f}")


# ---- mvcoding's loader, and the proposed decode ----------------------------------------------------


def decode_rgb_torchcodec(clip, *, offset: int = 0, resolution=None) -> torch.Tensor:
    """The decode this benchmark proposes for views/rgb.py: the clip's frames as (3, T, H, W) uint8, decoded
    at the video's own size by torchcodec (FFmpeg's unscaled YUV -> RGB conversion), then resized to
    `resolution` by torch (bilinear, antialiased, uint8) instead of by FFmpeg's scaler inside decord."""
    from torchcodec.decoders import VideoDecoder

    indices = [min(i + offset, clip.video_frames - 1) for i in clip.frame_indices]
    x = VideoDecoder(clip.path, seek_mode="approximate").get_frames_at(indices=indices).data  # (T, 3, H, W)
    if resolution:
        x = resize_uint8(x, tuple(resolution))
    return x.permute(1, 0, 2, 3)


def mvcoding_data(root: Path, *, frames: int = 16, stride: int = 1, size: int = 112, decode=None):
    """MultiViewClips(train=True) over fold 1's train videos with only the rgb view of ucf101_rgb_flow.yaml
    (decord, resize on decode to views.rgb.resolution); `decode` replaces the view's decode when given."""
    from dataclasses import replace

    from mvcoding.config import load_config
    from mvcoding.data import MultiViewClips, video_lengths
    from mvcoding.datasets import load_dataset
    from mvcoding.errors import UserError
    from mvcoding.model import build_views

    over = [f"dataset.root={root}", "~views.flow", f"data.frames={frames}", f"data.stride={stride}"]
    over.append(f"data.size={size}")
    try:
        cfg = load_config(CONFIG, over)
    except UserError:  # CMC needs two views: the data path is the same under the one-view objective
        cfg = load_config(CONFIG, [*over, "objective.name=supervised"])
    records = load_dataset(cfg.dataset).records("train")
    views = build_views(cfg)
    if decode is not None:
        views["rgb"] = replace(views["rgb"], decode=partial(decode, resolution=list(cfg.views.rgb.resolution)))
    d = cfg.data
    return MultiViewClips(
        records,
        views,
        video_lengths(records, cfg),
        frames=d.frames,
        stride=d.stride,
        train=True,
        scale=d.scale,
        flip=d.flip,
        seed=cfg.seed,
    )


def mvcoding_rate(
    data, *, workers: int = 2, batch: int = 8, clips: int = 192, seed: int = 0, stats: dict | None = None
) -> float:
    """Clips per second of make_loader over `data` (EpochSampler orders, epoch after epoch), `clips` clips timed
    after the first max(1, workers) batches (as tools/bench/loader.py's loader_rate)."""
    from mvcoding.data import EpochSampler, make_loader

    skip = max(1, workers)
    sampler, order, e = EpochSampler(len(data), seed=seed, shuffle=True, batch_size=batch), [], 0
    while len(order) < (skip + -(-clips // batch)) * batch:
        sampler.set_epoch(e)
        order += sampler.order()
        e += 1
    order = order[: (skip + -(-clips // batch)) * batch]
    loader = make_loader(data, order, batch_size=batch, workers=workers, prefetch=2, pin_memory=False, drop_last=True)
    return _rate(loader, skip, stats)


# ---- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="tree folder to (generate and) reuse; default: a temporary one")
    ap.add_argument("--videos", type=int, default=24, help="rounded up to 4 classes x 2 clips x groups (>= 3)")
    ap.add_argument("--frames", type=int, default=64, help="frames per video")
    ap.add_argument("--codec", default="mpeg4", choices=list(CODECS))
    ap.add_argument("--gop", type=int, default=12, help="frames between keyframes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clips", type=int, default=192, help="clips timed per loader run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile-clips", type=int, default=48)
    args = ap.parse_args()
    if not ffmpeg_available():
        raise SystemExit("this benchmark needs the ffmpeg command line (e.g. apt-get install -y ffmpeg)")
    reason = torchvision_available()
    if reason:
        print(f"torchvision's UCF101 cannot decode here ({reason}): only mvcoding's loader is timed")
    import cv2

    cv2.setNumThreads(1)
    tmp = None
    root = args.data
    if root is None:
        root = tmp = Path(tempfile.mkdtemp(prefix="bench_tv_ucf101_"))
    try:
        t0 = time.perf_counter()
        if not (root / "UCF-101").is_dir():
            make_encoded_tree(root, args.videos, args.frames, args.codec, gop=args.gop)
        videos = sorted((root / "UCF-101").glob("*/*.avi"))
        kib = sum(p.stat().st_size for p in videos) / len(videos) / 1024
        kinds = {"mvcoding": mvcoding_data(root)}
        if reason is None:
            torchvision_dataset(root, frames=16)  # index the videos once, untimed
            kinds = {
                "torchvision": None,
                **kinds,
                "mvcoding + torchcodec decode": mvcoding_data(root, decode=decode_rgb_torchcodec),
            }
        print(
            f"{len(videos)} videos ({len(kinds['mvcoding'])} train) x {args.frames} frames, 320x240 25 fps "
            f"{args.codec} GOP {args.gop}, {kib:.0f} KiB per video ({kib * 8 * 25 / args.frames:.0f} kbit/s); "
            f"16 x 112 x 112 clips, train transform; setup {time.perf_counter() - t0:.0f} s"
        )
        print(
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}; "
            f"{args.workers} workers, batch {args.batch}, {args.clips} clips per run"
        )
        rates = {k: [] for k in kinds}
        cpu = {k: [] for k in kinds}
        cores = {k: [] for k in kinds}
        kw = dict(workers=args.workers, batch=args.batch, clips=args.clips)
        for r in range(args.rounds):
            for k in list(kinds) if r % 2 == 0 else list(kinds)[::-1]:
                st: dict = {}
                if k == "torchvision":
                    rates[k].append(torchvision_rate(root, stats=st, **kw))
                else:
                    rates[k].append(mvcoding_rate(kinds[k], stats=st, **kw))
                cpu[k].append(st["cpu_ms"])
                cores[k].append(st["cores"])
        print(f"\nmedian of {args.rounds} interleaved rounds (min-max); CPU: main process + workers, all threads\n")
        print(
            f"  {'':<30}{'clips/s':>8} {'(min-max)':>11} {'/mvcoding':>10} {'CPU ms/clip':>12} {'/mvcoding':>10}"
            f" {'CPUs used':>10}"
        )
        base, cbase = statistics.median(rates["mvcoding"]), statistics.median(cpu["mvcoding"])
        for k, v in rates.items():
            m, c = statistics.median(v), statistics.median(cpu[k])
            span = f"({min(v):.0f}-{max(v):.0f})"
            print(
                f"  {k:<30}{m:>8.1f} {span:>11} {m / base:>10.2f} {c:>12.2f} {c / cbase:>10.2f}"
                f" {statistics.median(cores[k]):>10.2f}"
            )
        if reason is None:
            profile(root, clips=args.profile_clips, batch=args.batch, rounds=args.rounds)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
