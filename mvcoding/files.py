"""Atomic writes: everything mvcoding writes (checkpoints, caches' indexes, results) is written under
a temporary name and renamed into place, so a kill at any moment never leaves half a file."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
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


def _refused_global(e: pickle.UnpicklingError) -> str | None:
    """The line of torch's weights-only refusal naming the class or function the file wanted, or None."""
    return next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)


def _not_plain(e: pickle.UnpicklingError) -> str:
    """Why torch refused a file with weights_only=True, in a few words: what unpickling it would call."""
    m = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"unpickling it would call {m.group(1)}" if m else first_line(e, 120)


def load_safe(path: str | Path):
    """torch.load(path, weights_only=True) on the CPU: tensors and plain data only, so a file from
    someone else cannot run code. A file that needs anything more is refused in one UserError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)  # a class or function
        if not refused:
            raise  # not a refusal but a damaged file, for the caller to report
        raise UserError(f"refusing to load {path}: it holds more than tensors and plain data ({refused})") from e


def load_weights(path: str | Path, what: str):
    """A downloaded weights file (a state dict) `path` read with torch.load(weights_only=True) on the CPU,
    so a file that would run code when unpickled never does. A refused file ("<what> <path> is not a plain
    weights file") or a damaged one is one UserError line; `what` names it ("RAFT weights")."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {what} {path}: it is not a plain weights file ({_not_plain(e)}); "
            "delete it and download the official file again"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(
            f"cannot read {what} {path} ({first_line(e).split('. ')[0][:120]}): a damaged or partial file; "
            "delete it and download it again"
        ) from e


HELD_LOCKS: set[int] = set()  # descriptors of the flock locks this process holds (run dirs, cache parts)


def _drop_inherited_locks() -> None:
    """In a forked child (a precompute or DataLoader worker): close the copies of the parent's lock
    descriptors. An flock belongs to the open file, shared by every copy of its descriptor, so a child that
    kept them would hold its parent's locks after the parent died."""
    for fd in list(HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextmanager
def weights_only_loads(what: str) -> Iterator[None]:
    """Within: every torch.load, also those of third-party code (a torch.hub repo's model constructor,
    torch.hub.load_state_dict_from_url, which by default unpickles anything), loads with weights_only=True
    (torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD), so a file planted in the hub cache cannot run code; a refused
    file is one UserError line naming `what` loaded it and the hub cache's folder."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ[keys[0]] = "1"
    os.environ.pop(keys[1], None)  # torch refuses both at once
    try:
        yield
    except pickle.UnpicklingError as e:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"refusing a file that {what} loaded: it is not a plain weights file ({_not_plain(e)}); "
            f"delete the files it reads from {folder} and download the official ones again"
        ) from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
