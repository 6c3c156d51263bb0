"""`mvcoding extract CONFIG checkpoint=PATH [split=train|test|all] [out=FILE] [overrides]`: frozen features.

For every video of the split, the encoder of every view that `eval.views` names (each view once, in
the order its entries first name it, features concatenated: `[rgb,flow,rgb+flow]` gives rgb then flow) on
`eval.clips` clips spread over the video and `eval.crops` crops per clip, as the evaluations see
them: per clip the mean over crops, per video the mean over clips. Written to `out`:

  .pt   torch.save({"video": (V, D), "clip": (V, clips, D), "index": [...], "views", "checkpoint",
        "checkpoint_sha256", "config"}): tensors and plain data, loadable with weights_only=True
  .npy  the (V, D) video features, with the clip features in <out>.clips.npy
and beside it <out>.json: the index, one entry per row: {"video_id", "path", "label", "class", "split"}.
Before any feature is computed, `out` is checked (check_writable): an output that cannot be written
is one line at once, not after the whole split has gone through the encoders.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mvcoding.errors import UserError
from mvcoding.files import save_atomic, write_atomic, write_text_atomic

log = logging.getLogger(__name__)
SPLITS = ("train", "test", "all")


def save_npy(array: np.ndarray, path: Path) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to the temporary name
        np.save(f, array)


def outputs(out: Path) -> list[Path]:
    """The files extract writes for `out`: out itself, <out>.clips.npy for .npy, and <out>.json."""
    return [out, *([out.with_suffix(".clips.npy")] if out.suffix == ".npy" else []), out.with_suffix(".json")]


def check_writable(out: Path) -> None:
    """UserError (one line) when the outputs of `out` cannot be written: one of them is a folder, a parent
    is a file, or the nearest existing folder does not take a new file (read-only, no permission, full).
    Run before any feature is computed; creates nothing (a probe file is made and removed)."""
    for path in outputs(out):
        if path.is_dir():
            raise UserError(f"out={out}: {path} is a folder; name a file to write, e.g. out={path / 'features.pt'}")
    folder = next((p for p in (out.parent, *out.parent.parents) if p.exists() or p == p.parent), out.parent)
    if not folder.is_dir():
        raise UserError(f"out={out} cannot be written: {folder} is a file, not a folder; choose another out=")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"out={out} cannot be written: {folder}: {e.strerror or e}; choose another out=") from e


def extract(cfg, *, split: str = "all", out: str | None = None) -> Path:
    """Extract and write the features; returns the output file."""
    from mvcoding.eval import features

    if split not in SPLITS:
        raise UserError(f"split={split!r} is not valid: one of: {', '.join(SPLITS)}")
    if not cfg.checkpoint:
        raise UserError("mvcoding extract needs checkpoint=PATH (a training checkpoint or its run directory)")
    out = Path(out or f"features-{split}.pt")
    if out.suffix not in (".pt", ".npy"):
        raise UserError(f"out={out} is not valid: a .pt or .npy file")
    check_writable(out)  # before any work: a path that cannot be written is found in a second, not after hours
    s = features.prepare(cfg, cfg.checkpoint, random_init=False)
    parts = [("train", s.index.train), ("test", s.index.test)]
    parts = [(name, records) for name, records in parts if split in (name, "all")]
    clips = int(cfg.eval.clips)
    feats, index = [], []
    for name, records in parts:
        loader = features.eval_loader(s, records, s.views, clips)
        got = features.run_clips(s.encoders, loader, s.device, desc=f"extract {name}", views=s.views)
        x = got["x"].mean(1)  # (N clips, D): the mean over crops
        feats.append(x.view(len(records), clips, -1))  # items are video-major: clip i % clips of video i // clips
        index += [
            {
                "video_id": r.video_id,
                "path": r.path,
                "label": int(r.label),
                "class": s.index.classes[r.label],
                "split": name,
            }
            for r in records
        ]
    clip_feats = torch.cat(feats)  # (V, clips, D)
    video_feats = clip_feats.mean(1)  # (V, D)
    from omegaconf import OmegaConf

    payload = {
        "video": video_feats,
        "clip": clip_feats,
        "index": index,
        "views": list(s.views),
        "checkpoint": s.checkpoint,
        "checkpoint_sha256": s.sha256,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        save_atomic(payload, out)
    else:
        for path, x in ((out, video_feats), (out.with_suffix(".clips.npy"), clip_feats)):
            write_atomic(path, partial(save_npy, x.numpy()))  # never half a file
    write_text_atomic(
        out.with_suffix(".json"),
        json.dumps({"views": list(s.views), "checkpoint": s.checkpoint, "index": index}, indent=1),
    )
    log.info("wrote %d videos x %d features (%d clips each) to %s", len(index), video_feats.shape[1], clips, out)
    return out
