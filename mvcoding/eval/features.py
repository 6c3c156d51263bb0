"""What every evaluation shares: multi-clip, multi-crop eval data, the setup (dataset, views, encoders
with the checkpoint's weights), forward passes over the eval clips and the cached frozen features."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, SequentialSampler

from mvcoding.data import MultiViewClips, collate, decode_views, loader_options, make_loader, video_lengths
from mvcoding.datasets import DatasetIndex, load_dataset
from mvcoding.errors import UserError
from mvcoding.eval.metrics import sha256_file
from mvcoding.files import find_checkpoint, load_safe, save_atomic
from mvcoding.model import build_encoder_of, build_views
from mvcoding.registry import Aug, View, to_model

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- multi-clip, multi-crop data
def crop_boxes(crops: int) -> list:
    """Eval crops (mvcoding.transforms.crop_box): 1 -> [None] (the centre square); 3 -> three squares along
    the long side (left/top, centre, right/bottom). Named without the frame size, so each view places
    them on its own frames (and a view that decodes on the device, e.g. JPEG, needs no size in the workers)."""
    if crops == 1:
        return [None]
    if crops != 3:
        raise UserError(f"eval.crops={crops} is not valid; choose 1 (centre) or 3 (along the long side)")
    return [(0.0,), (0.5,), (1.0,)]


class EvalClips(Dataset):
    """The eval clips of `records` (item i = clip i % clips of video i // clips), each decoded once
    and transformed into `crops` spatial crops: {view: (K, ...), "label", "video", "clip"}."""

    def __init__(self, records, views: dict[str, View], lengths, *, frames: int, stride: int, clips: int, crops: int):
        self.base = MultiViewClips(records, views, lengths, frames=frames, stride=stride, train=False, clips=clips)
        self.crops = crops

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        clip = self.base.clip(i, np.random.default_rng(0))  # eval windows are fixed; the generator is unused
        item = {}
        for name, x in decode_views(self.base.views, clip).items():  # one decode per source (rgb, lab_*)
            view = self.base.views[name]
            item[name] = collate([view.transform(x, Aug(train=False, crop=box)) for box in crop_boxes(self.crops)])
        video = i // self.base.clips
        return item | {"label": self.base.records[video].label, "video": video, "clip": i % self.base.clips}


# ----------------------------------------------------------------------------- eval.views entries
def parse_entries(entries, views) -> dict[str, tuple[str, ...]]:
    """eval.views -> {entry: its views in order}: "rgb" -> ("rgb",), "rgb+flow" -> ("rgb", "flow").

    Each entry is evaluated on its own; an entry joining views with + has their features concatenated
    in its order. `views`: the config's view names. An empty list, an empty part ("rgb+"), a view that
    is not in `views` or is named twice in an entry, and an entry listed twice are UserErrors.
    """
    known = list(views)
    if isinstance(entries, str) or not entries:
        raise UserError(
            f"eval.views={entries!r} must be a non-empty list of views; set eval.views=[rgb] "
            "(or e.g. [rgb,flow,rgb+flow]: each entry evaluated on its own)"
        )
    parsed: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise UserError(f"eval.views entry {entry!r} is not a view name; write a view or views joined with +")
        parts = tuple(p.strip() for p in entry.split("+"))
        if not all(parts):
            raise UserError(f"eval.views entry {entry!r} has an empty part; join view names with one +, e.g. rgb+flow")
        for p in parts:
            if p not in known:
                raise UserError(
                    f"eval.views entry {entry!r}: {p!r} is not a view of the config; eval.views must "
                    f"name views of the config (views: {known}), e.g. eval.views=[rgb]"
                )
            if parts.count(p) > 1:
                raise UserError(f"eval.views entry {entry!r} names {p} twice; name each view once in an entry")
        key = "+".join(parts)
        if key in parsed:
            raise UserError(f"eval.views lists {key!r} twice; list each entry once")
        parsed[key] = parts
    return parsed


def entry_views(entries: dict[str, tuple[str, ...]]) -> list[str]:
    """Every view of the entries once, in order of first appearance: their features are extracted once."""
    return list(dict.fromkeys(v for parts in entries.values() for v in parts))


def entry_features(x: torch.Tensor, dims: dict[str, int], parts) -> torch.Tensor:
    """One entry's features (..., sum of its views' D): the slices of `parts` out of x (..., sum of dims),
    which holds the views of `dims` ({view: D}) concatenated in dims' order, joined in the entry's order."""
    bounds, start = {}, 0
    for name, d in dims.items():
        bounds[name], start = (start, start + d), start + d
    if start != x.shape[-1]:
        raise ValueError(f"features of width {x.shape[-1]} do not hold the views {dims} (width {start})")
    return torch.cat([x[..., bounds[p][0] : bounds[p][1]] for p in parts], dim=-1)


# ----------------------------------------------------------------------------- setup
@dataclass
class EvalSetup:
    cfg: DictConfig
    device: torch.device
    index: DatasetIndex
    entries: dict[str, tuple[str, ...]]  # eval.views entry -> its views, in order (parse_entries)
    views: dict[str, View]  # every view of the entries, once
    encoders: dict[str, nn.Module]
    lengths: dict
    checkpoint: str | None  # None: random init
    sha256: str | None
    dataset: dict | None = None  # dataset_identity(index, lengths): what the evaluation's data is


def dataset_identity(index: DatasetIndex, lengths: dict | None = None) -> dict:
    """What an evaluation's data is, for keys of what is reused and for `eval fuse`'s check:

    root:           the dataset root, resolved (links followed): another dataset with the same names and
                    ids elsewhere is another root
    dataset_sha256: the SHA-256 of the root, the dataset name and split, the classes, every train and
                    test video (id, path, label), the bytes of the list files the loader names
                    (index.extra: train_list, test_list) and its other extra data (generation settings)
    files_sha256:   the SHA-256 of every video file's size and modification time and its length as
                    read (`lengths`): changes when a video is rewritten in place (one stat per video)
    """
    root = os.path.realpath(str(index.root))
    h = hashlib.sha256()

    def add(obj) -> None:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode() + b"\n")

    add({"root": root, "name": index.name, "split": index.split, "classes": list(index.classes)})
    for subset, records in (("train", index.train), ("test", index.test)):
        for r in records:
            add([subset, r.video_id, r.path, int(r.label)])
    extra = dict(getattr(index, "extra", None) or {})
    for key in ("train_list", "test_list"):  # their bytes, not their names: a copy of a list is the same data
        path = extra.pop(key, None)
        if path and Path(path).is_file():
            add([key, sha256_file(path)])
    add(extra)
    f = hashlib.sha256()
    for path in sorted({r.path for r in index.train + index.test}):
        try:
            st = os.stat(path)
            f.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            f.update(f"{path}\tmissing\n".encode())
    f.update(json.dumps(sorted((k, list(v)) for k, v in (lengths or {}).items())).encode())
    return {"root": root, "dataset_sha256": h.hexdigest(), "files_sha256": f.hexdigest()}


def resolve_checkpoint(checkpoint) -> Path:
    """checkpoint=PATH of a .pt file or of a run directory (its checkpoints/last.pt)."""
    if not checkpoint:
        raise UserError(
            "no checkpoint given; pass checkpoint=PATH (a .pt file or a run directory) "
            "or eval.random_init=true for the random-init baseline"
        )
    path = find_checkpoint(str(checkpoint))
    if path is None:
        raise UserError(f"checkpoint={checkpoint}: no checkpoint there; pass a .pt file written by mvcoding train")
    return path


def load_encoders(views: dict[str, View], checkpoint: Path | None) -> dict[str, nn.Module]:
    """One encoder per view, with the checkpoint's "encoders.<view>.*" weights (random when None)."""
    encoders = {n: build_encoder_of(n, v) for n, v in views.items()}
    if checkpoint is None:
        return encoders
    try:
        ckpt = load_safe(checkpoint)
        state = ckpt["model"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"cannot read checkpoint {checkpoint} ({type(e).__name__}: {str(e)[:120]}); "
            "pass a checkpoint written by mvcoding train"
        ) from e
    saved = ckpt.get("views") or sorted({k.split(".")[1] for k in state if k.startswith("encoders.")})
    for name, encoder in encoders.items():
        prefix = f"encoders.{name}."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise UserError(
                f"checkpoint {checkpoint} has no encoder for view {name!r} (it has {list(saved)}); "
                "set eval.views to some of those"
            )
        try:
            encoder.load_state_dict(weights)
        except RuntimeError as e:
            trained = (ckpt.get("config") or {}).get("views", {}).get(name)
            reason = str(e).strip().splitlines()[-1].strip()[:160]
            raise UserError(
                f"the {name} encoder in {checkpoint} does not fit views.{name} of this config "
                f"({reason}); use the pretraining settings views.{name}={trained}"
            ) from e
    return encoders


def prepare(cfg: DictConfig, checkpoint, *, random_init: bool, names=None) -> EvalSetup:
    """Dataset, views, encoders (frozen weights loaded) and video lengths for an evaluation of the
    entries `names` (default cfg.eval.views; see parse_entries): one encoder per view of the entries."""
    from mvcoding.model import pick_device

    e = cfg.eval
    entries = parse_entries(list(e.views if names is None else names), list(cfg.views or {}))
    names = entry_views(entries)
    for key in ("clips", "train_clips"):
        if int(e[key]) < 1:
            raise UserError(f"eval.{key}={e[key]} must be at least 1")
    crop_boxes(int(e.crops))  # validates eval.crops
    path = None if random_init else resolve_checkpoint(checkpoint)
    index = load_dataset(cfg.dataset)
    if not index.train or not index.test:
        raise UserError(
            f"dataset {index.name} split {index.split} has {len(index.train)} train and "
            f"{len(index.test)} test videos; evaluation needs both"
        )
    views = build_views(cfg, names)
    for view in views.values():
        if view.check is not None:
            view.check(index.train + index.test)
    torch.manual_seed(cfg.seed)  # random-init encoders are the same on every run
    encoders = load_encoders(views, path)
    lengths = video_lengths(index.train + index.test, cfg)
    log.info(
        "evaluating %s (%s) on %s split %d: %d train / %d test videos, %d classes",
        list(entries),
        path or "random init",
        index.name,
        index.split,
        len(index.train),
        len(index.test),
        len(index.classes),
    )
    sha = sha256_file(path) if path is not None else None
    return EvalSetup(
        cfg,
        pick_device(cfg.device),
        index,
        entries,
        views,
        encoders,
        lengths,
        str(path) if path else None,
        sha,
        dataset_identity(index, lengths),
    )


# ----------------------------------------------------------------------------- forward passes
def progress(iterable: Iterable, *, desc: str, total: int | None = None) -> Iterator:
    """A tqdm bar on a terminal; elsewhere (logs, CI) a log line about every tenth of the way."""
    total = len(iterable) if total is None else total  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    every, t0 = max(1, total // 10), time.perf_counter()
    for i, x in enumerate(iterable, start=1):
        yield x
        if i % every == 0 or i == total:
            log.info("%s: %d/%d batches (%.0f s)", desc, i, total, time.perf_counter() - t0)


def eval_loader(s: EvalSetup, records, views: dict[str, View], clips: int):
    cfg = s.cfg
    data = EvalClips(
        records,
        views,
        s.lengths,
        frames=cfg.data.frames,
        stride=cfg.data.stride,
        clips=clips,
        crops=int(cfg.eval.crops),
    )
    return make_loader(
        data,
        SequentialSampler(data),
        batch_size=int(cfg.eval.batch_size),
        drop_last=False,
        **loader_options(cfg.data, s.device),
    )


@torch.no_grad()
def run_clips(modules: dict[str, nn.Module], loader, device: torch.device, desc: str, views=None) -> dict:
    """Outputs of every eval clip and crop: {"x": (N, K, D) (the modules' outputs concatenated in their
    order), "label", "video" (N,), "dims": {name: its width in x}} (entry_features takes x apart).
    views: {name: View} whose device_transform turns the loader's items into the modules' input."""
    for m in modules.values():
        m.to(device).eval()
    xs, labels, videos, dims = [], [], [], {}
    for batch in progress(loader, desc=desc):
        parts = []
        for name, module in modules.items():
            x = to_model(views[name] if views is not None else None, batch[name], device)  # (B, K, ...)
            parts.append(module(x.flatten(0, 1)).float().view(x.shape[0], x.shape[1], -1).cpu())
            if not torch.isfinite(parts[-1]).all():  # else a probe on nan features reports chance, exit 0
                raise UserError(
                    f"the {name} encoder gives non-finite features (nan or inf) in {desc}: its weights are not "
                    "finite (a run that diverged?); evaluate an earlier checkpoint of that run"
                )
            dims[name] = parts[-1].shape[-1]
        xs.append(torch.cat(parts, dim=-1))
        labels.append(batch["label"])
        videos.append(batch["video"])
    return {"x": torch.cat(xs), "label": torch.cat(labels), "video": torch.cat(videos), "dims": dims}


def clip_features(s: EvalSetup, out: Path) -> dict:
    """Frozen features {"train": ..., "test": ...} (see run_clips) of every view of the entries, each
    view's encoder run once, cached in out/features.pt; entry_features(x, dims, parts) gives an entry's.

    The cache is reused only when everything that shapes the features is the same: the checkpoint's
    SHA-256 (the seed for random init), the views and their settings, the clip sampling (frames,
    stride, size, clips, train_clips, crops), and the data (dataset_identity: the resolved root, the
    videos, labels and list files' bytes, every video's size and modification time)."""
    cfg, e = s.cfg, s.cfg.eval
    key = {
        "checkpoint_sha256": s.sha256,
        "seed": cfg.seed if s.sha256 is None else None,
        "dataset": s.dataset if s.dataset is not None else dataset_identity(s.index, s.lengths),
        "views": {n: v.settings for n, v in s.views.items()},
        "frames": cfg.data.frames,
        "stride": cfg.data.stride,
        "size": cfg.data.size,
        "clips": int(e.clips),
        "train_clips": int(e.train_clips),
        "crops": int(e.crops),
        "train": [r.video_id for r in s.index.train],
        "test": [r.video_id for r in s.index.test],
    }
    path = out / "features.pt"
    if path.is_file():
        cached = load_safe(path)
        if cached.get("key") == json.loads(json.dumps(key)) and "dims" in cached.get("train", {}):
            log.info("reusing the features in %s", path)
            return cached
        log.info("the features in %s were made differently; extracting again", path)
    t0 = time.perf_counter()
    feats = {"key": key}
    for split, records, clips in (("train", s.index.train, e.train_clips), ("test", s.index.test, e.clips)):
        loader = eval_loader(s, records, s.views, int(clips))
        feats[split] = run_clips(s.encoders, loader, s.device, desc=f"features {split}", views=s.views)
    log.info(
        "features: train %s, test %s (clips x crops x dim) in %.0f s",
        tuple(feats["train"]["x"].shape),
        tuple(feats["test"]["x"].shape),
        time.perf_counter() - t0,
    )
    save_atomic(json.loads(json.dumps({"key": key})) | {k: feats[k] for k in ("train", "test")}, path)
    return feats
