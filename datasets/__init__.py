"""Datasets: each file turns a folder on disk into a `DatasetIndex` of labelled videos.

`load_dataset(cfg)` dispatches on `cfg["name"]`; a loader is a plain function `load(cfg) -> DatasetIndex`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mvcoding.errors import UserError


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video.

    video_id: its path relative to the dataset root, without extension
              (e.g. "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"); the cache key.
    path:     absolute path of the video file.
    label:    0-based class index.
    """

    video_id: str
    path: str
    label: int


@dataclass
class DatasetIndex:
    """The train and test videos of one split of one dataset."""

    name: str
    root: str
    classes: list[str]
    train: list[VideoRecord]
    test: list[VideoRecord]
    split: int = 1
    extra: dict = field(default_factory=dict)

    def records(self, subset: str) -> list[VideoRecord]:
        """subset: "train", "test" or "all" (train + test, unique, sorted by video_id)."""
        if subset == "train":
            return self.train
        if subset == "test":
            return self.test
        if subset == "all":
            return sorted({r.video_id: r for r in self.train + self.test}.values(), key=lambda r: r.video_id)
        raise ValueError(f"subset must be train, test or all, not {subset!r}")


def _loaders() -> dict:
    from mvcoding.datasets import hmdb51, listfile, synthetic, ucf101

    return {"ucf101": ucf101.load, "hmdb51": hmdb51.load, "synthetic": synthetic.load, "listfile": listfile.load}


def load_dataset(cfg: Mapping) -> DatasetIndex:
    """Index the dataset described by the `dataset` config group (name, root, split, ...)."""
    loaders = _loaders()
    name = cfg["name"]
    if name not in loaders:
        raise UserError(f"unknown dataset.name={name!r}; valid: {', '.join(sorted(loaders))}")
    return loaders[name](cfg)
