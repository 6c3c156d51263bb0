"""The multi-view clip dataset: one time window per item, decoded by every configured view.

    item = {view_name: Tensor, ..., "index": int, "label": int, "video": int}

Augmentation parameters are drawn from a generator seeded by (seed, epoch, item), so an item is the
same whichever worker decodes it, and a resumed run sees exactly the data of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mvcoding.errors import UserError
from mvcoding.files import write_text_atomic
from mvcoding.registry import Clip, View
from mvcoding.transforms import sample_aug
from mvcoding.video import video_info

log = logging.getLogger(__name__)


def lengths_file(cfg) -> Path:
    """<cache.dir>/<dataset>/lengths.json: the video lengths, next to the dataset's caches."""
    from mvcoding.cache import dataset_folder

    return dataset_folder(cfg.cache.dir, cfg.dataset.name, cfg.dataset.root) / "lengths.json"


FRAME_CACHES = ("rgb",)  # caches whose entries hold every frame of their video: their lengths are the videos'


def cached_lengths(folder: Path) -> dict[str, dict]:
    """{video_id: entry attrs (num_frames, fps, source identity)} of the frame caches (FRAME_CACHES: the
    decode-once rgb cache) in a dataset's cache folder, read from the parts' indexes; unreadable parts
    are left out (their videos' lengths are read from the videos)."""
    from mvcoding.cache import part_paths, read_part, read_provenance

    out: dict[str, dict] = {}
    try:
        caches = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    except OSError:
        return out
    for cache in caches:
        try:
            provenance = read_provenance(cache)
        except UserError:
            continue
        if not isinstance(provenance, dict) or provenance.get("cache") not in FRAME_CACHES:
            continue
        for part in part_paths(cache):
            try:
                videos = read_part(part)["videos"]
            except UserError:
                continue
            for vid, attrs in videos.items():
                if isinstance(attrs, dict) and {"num_frames", "fps", "source_path"} <= set(attrs):
                    out.setdefault(vid, attrs)
    return out


def video_lengths(records, cfg) -> dict[str, tuple[int, float]]:
    """{video_id: (num_frames, fps)}, kept in lengths_file(cfg): taken from the entries of a filled rgb
    cache (cached_lengths: training from the cache opens no video file), else read once with decord.

    Entries are keyed by video id and carry the file's identity (path relative to dataset.root, size,
    mtime), like cache entries: an entry of another dataset or of a changed video is read again. A
    cache folder that cannot be written (read-only, full) keeps them in memory, with one log line."""
    from mvcoding.cache import IDENTITY_KEYS, identity_difference, read_json, source_identity

    root = str(cfg.dataset.root)
    path = lengths_file(cfg)
    known = read_json(path, "the video lengths") or {}
    if not isinstance(known, dict) or not all(isinstance(v, dict) for v in known.values()):
        known = {}  # the format before lengths carried their file's identity
    todo = [r for r in records if r.video_id not in known or identity_difference(known[r.video_id], r.path, root)]
    changed = bool(todo)
    if todo:
        cached = cached_lengths(path.parent)
        for r in todo:
            entry = cached.get(r.video_id)
            if entry is not None and identity_difference(entry, r.path, root) is None:
                known[r.video_id] = {
                    **{k: entry[k] for k in IDENTITY_KEYS if k in entry},
                    "num_frames": int(entry["num_frames"]),
                    "fps": float(entry["fps"]),
                }
        todo = [r for r in todo if identity_difference(known.get(r.video_id, {}), r.path, root)]
    if todo:
        log.info("reading the length of %d videos (once; kept in %s)", len(todo), path)

        def read(r):
            n, fps = video_info(r.path)[:2]
            return {**source_identity(r.path, root), "num_frames": n, "fps": fps}

        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for r, entry in zip(todo, pool.map(read, todo), strict=True):
                known[r.video_id] = entry
    if changed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(known))
        except OSError as e:
            log.warning("cannot write %s (%s); the lengths are kept for this run only", path, e.strerror or e)
    return {r.video_id: (int(known[r.video_id]["num_frames"]), float(known[r.video_id]["fps"])) for r in records}


def decode_views(views: dict[str, View], clip: Clip) -> dict[str, torch.Tensor]:
    """{view: view.decode(clip)}, decoding once per source: views with the same View.source (rgb, lab_l,
    lab_ab) share one decode of the item's frames."""
    out, by_source = {}, {}
    for name, view in views.items():
        if view.source is None:
            out[name] = view.decode(clip)
        else:
            if view.source not in by_source:
                by_source[view.source] = view.decode(clip)
            out[name] = by_source[view.source]
    return out


def clip_starts(num_frames: int, span: int, clips: int) -> list[int]:
    """Start frames of `clips` windows of `span` frames spread uniformly over a video."""
    last = num_frames - span
    if clips == 1:
        return [last // 2]
    return [round(i * last / (clips - 1)) for i in range(clips)]


class MultiViewClips(Dataset):
    """Clips of `records` decoded by every view in `views`.

    train: one random window per video per epoch, random crop/flip shared by the views.
    eval:  `clips` windows spread uniformly over each video, centre crop; item i is clip i % clips
           of video i // clips.
    """

    def __init__(
        self,
        records,
        views: dict[str, View],
        lengths: dict[str, tuple[int, float]],
        *,
        frames: int,
        stride: int,
        train: bool,
        clips: int = 1,
        scale=(0.4, 1.0),
        flip: bool = True,
        seed: int = 0,
        shared_crop: bool = True,
    ):
        self.records, self.views, self.lengths = list(records), views, lengths
        self.frames, self.stride, self.train, self.clips = frames, stride, train, 1 if train else clips
        self.scale, self.flip, self.seed, self.epoch = tuple(scale), flip, seed, 0
        self.shared_crop = shared_crop
        span = (frames - 1) * stride + 1
        short = [r.video_id for r in self.records if lengths[r.video_id][0] < span]
        if short:
            n = lengths[short[0]][0]
            raise UserError(
                f"a clip of data.frames={frames} x data.stride={stride} needs {span} frames but video {short[0]} "
                f"has {n} ({len(short)} videos too short); lower data.frames or data.stride"
            )

    def __len__(self) -> int:
        return len(self.records) * self.clips

    def clip(self, i: int, rng: np.random.Generator) -> Clip:
        r = self.records[i // self.clips]
        n, fps = self.lengths[r.video_id]
        span = (self.frames - 1) * self.stride + 1
        start = int(rng.integers(0, n - span + 1)) if self.train else clip_starts(n, span, self.clips)[i % self.clips]
        return Clip(r.video_id, r.path, start, self.frames, self.stride, fps, n)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        clip = self.clip(i, rng)
        aug = sample_aug(rng, train=self.train, scale=self.scale, flip=self.flip)
        item = {}
        for name, x in decode_views(self.views, clip).items():
            view = self.views[name]
            item[name] = view.transform(x, aug)
            if not self.shared_crop:  # each view its own crop; the flip stays shared (it mirrors motion)
                aug = replace(sample_aug(rng, train=self.train, scale=self.scale, flip=False), flip=aug.flip)
        r = self.records[i // self.clips]
        return item | {"index": i // self.clips, "label": r.label, "video": i // self.clips}


class EpochSampler(Sampler):
    """A seeded permutation per epoch, cut into global batches of batch_size x world items.

    Rank r takes items [r * batch_size, (r + 1) * batch_size) of every global batch, so a step sees
    the same global batch whatever the number of processes. Incomplete global batches are dropped;
    with pad=True the order is instead completed with its own first items, so every item is visited.
    `set_epoch(epoch, skip)` starts mid-epoch, for resume.
    """

    def __init__(
        self, n: int, *, seed: int, shuffle: bool, rank: int = 0, world: int = 1, batch_size: int = 1, pad: bool = False
    ):
        self.n, self.seed, self.shuffle, self.rank, self.world, self.b = n, seed, shuffle, rank, world, batch_size
        self.pad = pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch `epoch`, skipping the first `skip` items of this rank."""
        self.epoch, self.skip = epoch, skip

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        gb = self.b * self.world
        if self.pad:
            order += (order * gb)[: -len(order) % gb]  # to a whole number of global batches
        return [
            i
            for start in range(0, len(order) - gb + 1, gb)
            for i in order[start + self.rank * self.b : start + (self.rank + 1) * self.b]
        ]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip :])

    def __len__(self) -> int:
        return len(self.order()) - self.skip


def pad_rows(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors that differ only in their last dim (byte rows, e.g. JPEG bytes) zero-padded to the longest."""
    n = max(r.shape[-1] for r in rows)
    return [r if r.shape[-1] == n else torch.nn.functional.pad(r, (0, n - r.shape[-1])) for r in rows]


def collate(values: list):
    """default_collate (tensors stacked, dicts per key, numbers to tensors), except that tensors under
    "host_" keys may differ in their last dim (byte rows of a view's transform): zero-padded to the
    longest first. The DataLoader's collate_fn, and the stacking of eval crops."""
    if isinstance(values[0], dict):
        return {
            k: collate(pad_rows([v[k] for v in values]) if k.startswith("host_") else [v[k] for v in values])
            for k in values[0]
        }
    return default_collate(values)


START_METHODS = ("fork", "spawn", "forkserver")


def loader_options(d, device: torch.device) -> dict:
    """make_loader's settings from a config's data section for a run on `device`: workers, prefetch, the
    start method, and pinned memory (data.pin_memory=auto: on a GPU, where pinned pages let the copy to
    the device overlap the step)."""
    pin = device.type == "cuda" if d.pin_memory == "auto" else bool(d.pin_memory)
    return {"workers": d.workers, "prefetch": d.prefetch, "pin_memory": pin, "start_method": d.start_method}


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    *,
    batch_size: int,
    workers: int,
    prefetch: int,
    pin_memory: bool,
    drop_last: bool,
    start_method: str | None = None,
) -> DataLoader:
    """A DataLoader over `sampler`; each worker opens its own video/HDF5 handles lazily.

    start_method: how worker processes start (fork, spawn or forkserver; None: the platform's default,
    fork on Linux). Under spawn and forkserver a worker gets the dataset pickled, views included, and
    imports the modules it needs afresh."""
    if start_method is not None and start_method not in START_METHODS:
        raise UserError(f"data.start_method={start_method!r} is not valid; choose one of: {', '.join(START_METHODS)}")
    context = multiprocessing.get_context(start_method) if start_method and workers > 0 else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        prefetch_factor=prefetch if workers > 0 else None,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate,
        persistent_workers=False,
        multiprocessing_context=context,
    )
