"""Atomic writes: everything mvcoding writes (checkpoints, caches' indexes, results) is written under
a temporary name and renamed into place, so a kill at any moment never leaves half a file."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def save_atomic(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` through a temporary file and a rename (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
