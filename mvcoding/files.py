"""Atomic writes: everything mvcoding writes (checkpoints, caches' indexes, results) is written under
a temporary name and renamed into place, so a kill at any moment never leaves half a file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from mvcoding.errors import UserError, first_line


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _remove(path: Path) -> None:
    """Delete a temporary file if it is there (its folder may not even exist)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _replace_with(path: Path, write) -> None:
    """write(tmp) to a temporary name beside `path`, then rename it into place; on any failure (disk
    full, read-only, interrupted) the temporary file is removed and the error raised."""
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    _replace_with(Path(path), lambda tmp: tmp.write_text(text))


def write_atomic(path: str | Path, write) -> None:
    """write(tmp) to a temporary file, renamed to `path` when complete (creating the folder).

    A failed write (disk full, read-only folder) removes the temporary file and raises UserError naming
    the path; whatever was at `path` before is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace_with(path, write)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e, 120)
        prev = " (the previous file there is intact)" if path.is_file() else ""
        raise UserError(f"cannot write {path} ({why}){prev}; free space on that disk or choose another folder") from e


def save_atomic(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (write_atomic)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def find_checkpoint(path: str | Path) -> Path | None:
    """A checkpoint file: `path` itself, or in a run directory its checkpoints/last.pt (or last.pt); None
    when there is none."""
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / "checkpoints" / "last.pt", path / "last.pt") if p.is_file()), path)
    return path if path.is_file() else None


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
