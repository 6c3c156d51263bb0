"""Atomic writes: everything mvcoding writes (checkpoints, caches' indexes, results) is written under
a temporary name and renamed into place, so a kill at any moment never leaves half a file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from mvcoding.errors import UserError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _remove(path: Path) -> None:
    """Delete a temporary file if it is there (its folder may not even exist)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # disk full, read-only, interrupted: leave nothing behind
        _remove(tmp)
        raise


def save_atomic(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` through a temporary file and a rename (creating the folder).

    A failed write (disk full, read-only folder) removes the temporary file and raises UserError naming
    the path; whatever was at `path` before is untouched."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        _remove(tmp)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:120]
        prev = " (the previous file there is intact)" if path.is_file() else ""
        raise UserError(f"cannot write {path} ({why}){prev}; free space on that disk or choose another folder") from e
    except BaseException:
        _remove(tmp)
        raise


def load_safe(path: str | Path):
    """torch.load(path, weights_only=True) on the CPU: tensors and plain data only, so a file from
    someone else cannot run code. A file that needs anything more is refused in one UserError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]  # a class or function
        if not refused:
            raise  # not a refusal but a damaged file, for the caller to report
        raise UserError(f"refusing to load {path}: it holds more than tensors and plain data ({refused[0]})") from e
