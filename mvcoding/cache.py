"""The HDF5 cache of views' precompute stages: layout, parts, checksums, identity, locks, reader.

Layout, one folder per dataset and one per cache (a view's precompute stage and its settings)::

    <cache.dir>/<dataset>/                       dataset.name, plus the root's folder name where it differs
                                                 (and a digest of the root's path where two roots share
                                                 that name: dataset_folder)
        lengths.json                             video lengths (mvcoding.data.video_lengths)
        <cache>-<label>-<H>x<W>-<hash>/          e.g. flow-dis-128x171-3fa9c2d1 (native: ...-native-...)
            provenance.json                      what the cache holds (below); every part carries it too
            part-00000.h5                        a complete part: one dataset per video of that part
            part-00000.json                      its index sidecar: {video_id: entry attrs}, failures
            part-00000.lock                      the part's writer lock (fcntl), taken by `mvcoding precompute`;
                                                 held by the writing process only (a forked child closes
                                                 its copy), so it goes with that process
            part-00000.h5.tmp<pid>               a part being written by process <pid>

<hash> is a digest of the provenance without source_root, so each setting of a stage has its own
folder and caches of different settings live side by side. A part is `videos_per_part` consecutive
videos of the sorted video list, so every machine agrees on them. It is built in memory and written
under a temporary name, then renamed into place: a killed writer loses at most the parts in flight,
and a full disk is one error line, never half a file. The sidecar is written after the rename and
records the size and mtime of the part it describes; a missing or outdated sidecar is rebuilt from
the part's own attributes.

Entries are `(T, C, H, W)` arrays keyed by video id (nested groups: the id's slashes), chunked one
frame per chunk (a clip read touches only its frames), lzf-compressed and checksummed (HDF5's
fletcher32 filter: a damaged chunk fails its read, it never returns wrong numbers). Each entry's
attributes: num_frames, fps, the stage's own, and the identity of the source file it was made from:
source_path (relative to the dataset root), source_size, source_mtime_ns. A reader refuses an entry
whose source differs from the dataset's file (another dataset, or a changed video).

Provenance: {"format_version", "cache", "settings", "resolution", "dataset", "source_root"}. Readers
and resumed writers compare everything but INFO_KEYS (the root may be mounted elsewhere on another
machine) and refuse a cache made differently. source_root, the root's absolute path, also tells whose
a dataset folder is (dataset_folder), so another root of the same folder name fills a folder of its own.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mvcoding.errors import UserError, first_line
from mvcoding.files import HELD_LOCKS, write_text_atomic

FORMAT_VERSION = 2
INFO_KEYS = ("source_root",)  # recorded, not compared
PROVENANCE_FILE = "provenance.json"
IDENTITY_KEYS = ("source_path", "source_size", "source_mtime_ns")


def fill_command(view: str) -> str:
    """The command that fills (and repairs) the cache of `view`."""
    return f"mvcoding precompute {view} CONFIG [the same overrides as this run]"


# ---- where a cache lives -----------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=]+", "_", str(name)).strip("_") or "x"


def _same_root(recorded: str, root: Path) -> bool:
    """Whether `recorded` (a cache's source_root) is the dataset folder `root`; also True when the recorded
    folder is not there (any more) on this machine: the dataset moved, or is mounted elsewhere here."""
    if not os.path.isabs(recorded) or not os.path.isdir(recorded):
        return True
    try:
        return Path(recorded).resolve() == Path(root).resolve() or os.path.samefile(recorded, root)
    except OSError:
        return False


def folder_roots(folder: Path) -> set[str]:
    """The dataset roots (absolute paths) recorded in the provenance of the caches under `folder`."""
    roots = set()
    try:
        subs = [p for p in Path(folder).iterdir() if p.is_dir()]
    except OSError:
        return roots
    for sub in subs:
        try:
            recorded = json.loads((sub / PROVENANCE_FILE).read_text()).get("source_root")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(recorded, str) and os.path.isabs(recorded):
            roots.add(recorded)
    return roots


def dataset_folder(cache_dir: str | Path, dataset: str, root: str | Path) -> Path:
    """<cache_dir>/<dataset name>[-<root folder name>]: two datasets of one name in different folders
    (data/synthetic, data/synthetic_bench) keep apart in a shared cache.dir.

    Two roots with the same folder name (a/syn, b/syn) keep apart too: the folder belongs to the root its
    caches were filled from (their provenance's source_root); another root that is there on this machine
    gets <that name>-<digest of its absolute path> of its own. A recorded root that is not there (the data
    moved, or is mounted elsewhere on this machine) still reads its folder (entries carry their source
    file's identity)."""
    base = _safe(Path(str(root)).resolve().name) if str(root) else ""
    tag = _safe(dataset) if base in ("", _safe(dataset)) else f"{_safe(dataset)}-{base}"
    if not str(root):
        return Path(cache_dir) / tag
    resolved = Path(str(root)).resolve()
    own = Path(cache_dir) / f"{tag}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"
    if own.is_dir():
        return own
    shared = Path(cache_dir) / tag
    if any(not _same_root(r, resolved) for r in folder_roots(shared)):
        return own  # the folder holds another dataset's caches
    return shared


def _resolution(stage, view: str) -> list[int] | None:
    res = stage.resolution
    if res is None:
        return None
    try:
        h, w = (int(v) for v in res)
    except (TypeError, ValueError):
        h = w = 0
    if h <= 0 or w <= 0:
        raise UserError(f"views.{view}.resolution={res!r} is not valid; use [H, W] or null (native size)")
    return [h, w]


def cache_location(*, cache_dir, dataset: str, root, view: str, stage) -> tuple[Path, dict]:
    """The folder and provenance of view `view`'s precompute stage (a Precompute) on a dataset."""
    name = stage.name or view
    res = _resolution(stage, view)
    provenance = normalize_provenance(
        {
            "format_version": FORMAT_VERSION,
            "cache": name,
            "settings": stage.settings,
            "resolution": res,
            "dataset": dataset,
            "source_root": str(Path(str(root)).resolve()) if str(root) else "",
        }
    )
    key = json.dumps({k: v for k, v in provenance.items() if k not in INFO_KEYS}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    res_tag = "native" if res is None else f"{res[0]}x{res[1]}"
    parts = [_safe(name), _safe(stage.label) if stage.label else None, res_tag, digest]
    return dataset_folder(cache_dir, dataset, root) / "-".join(p for p in parts if p), provenance


# ---- provenance --------------------------------------------------------------------------------


def quantize(x: np.ndarray, bound: float) -> np.ndarray:
    """Clip x to [-bound, bound] and map it linearly to 0..255 uint8 (the TV-L1 cache convention)."""
    y = (np.clip(x, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(y).astype(np.uint8)


def dequantize(u: np.ndarray, bound: float) -> np.ndarray:
    """Inverse of quantize as float32; |dequantize(quantize(x)) - x| <= bound / 255 inside the bound."""
    return u.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def normalize_provenance(provenance: dict) -> dict:
    """Provenance as plain JSON data (tuples become lists), so comparisons are exact."""
    try:
        return json.loads(json.dumps(provenance, sort_keys=True))
    except TypeError as e:
        raise UserError(f"a cache's settings must be plain data (numbers, strings, lists, dicts): {e}") from e


def provenance_difference(have: dict, want: dict) -> str | None:
    """A phrase naming the first differing key ('settings.algorithm was 'farneback' ...'), or None."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if prefix == "" and k in INFO_KEYS:
                continue
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(normalize_provenance(have)), flat(normalize_provenance(want))
    for key in sorted(set(a) | set(b)):
        if key not in a:
            return f"was filled without {key} but the config asks for {key}={b[key]!r}"
        if key not in b:
            return f"was filled with {key}={a[key]!r} but the config has no {key}"
        if a[key] != b[key]:
            return f"was filled with {key}={a[key]!r} but the config asks for {b[key]!r}"
    return None


def read_json(path: Path, what: str):
    """The JSON at `path`, or None if there is no file; UserError naming it if it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"not valid JSON: {e}"
        raise UserError(f"cannot read {what} {path} ({why}); delete it to rebuild it") from e


def read_provenance(path: Path) -> dict | None:
    return read_json(Path(path) / PROVENANCE_FILE, "the cache's provenance")


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def ensure_provenance(path: Path, provenance: dict) -> None:
    """Create the cache dir with provenance.json, or check an existing one matches (else UserError)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        have = read_provenance(path)
        if have is None:
            write_json_atomic(path / PROVENANCE_FILE, normalize_provenance(provenance))
            return
    except OSError as e:
        msg = f"cannot write the cache folder {path} ({e.strerror}); set cache.dir to a writable folder"
        raise UserError(msg) from e
    diff = provenance_difference(have, provenance)
    if diff:
        raise UserError(f"the cache {path} {diff}; delete {path} to refill it with these settings")
    theirs, ours = have.get("source_root"), provenance.get("source_root")
    if isinstance(theirs, str) and isinstance(ours, str) and ours and not _same_root(theirs, Path(ours)):
        raise UserError(
            f"the cache {path} was filled from the dataset at {theirs}, not from {ours} (two dataset folders of "
            f"one name started filling one cache.dir at once); rerun: the rerun fills a folder of its own"
        )


# ---- source identity ---------------------------------------------------------------------------


def source_path(path: str, root) -> str:
    """A video's path relative to the dataset root (POSIX), or its absolute path outside the root."""
    p, r = Path(path).resolve(), Path(str(root)).resolve()
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return p.as_posix()


def source_identity(path: str, root) -> dict:
    """{"source_path", "source_size", "source_mtime_ns"} of a video file now."""
    st = os.stat(path)
    return {"source_path": source_path(path, root), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def identity_difference(meta: dict, path: str, root) -> str | None:
    """Why an entry with attributes `meta` was not made from the file at `path` (None if it was).

    A file that is not there is judged by its relative path only (training from a copied cache)."""
    want = source_path(path, root)
    if meta.get("source_path") != want:
        return f"was made from {meta.get('source_path')!r}, not from this dataset's {want!r}"
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (meta.get("source_size"), meta.get("source_mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return (
            f"was made from another file at {want} (size {meta.get('source_size')}, not {st.st_size}, or another "
            f"modification time: the video changed, or the cache is another dataset's)"
        )
    return None


# ---- parts -------------------------------------------------------------------------------------


def part_name(k: int) -> str:
    return f"part-{k:05d}"


def part_file(path: Path, k: int) -> Path:
    return Path(path) / f"{part_name(k)}.h5"


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _attrs(a) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()}


def _part_info_from_h5(h5path: Path) -> dict:
    import h5py

    with h5py.File(h5path, "r", locking=False) as f:
        failed = json.loads(f.attrs.get("failed", "{}"))
        videos = {vid: _attrs(f[vid].attrs) for vid in json.loads(f.attrs["videos"])}
    return {"videos": videos, "failed": failed}


def read_part(h5path: Path) -> dict:
    """{"videos": {video_id: entry attrs}, "failed": {video_id: message}} of one complete part, from
    its sidecar when that is current; UserError naming the file if the part cannot be read."""
    side = h5path.with_suffix(".json")
    try:
        data = json.loads(side.read_text())
        if data.get("h5") == _stamp(h5path):
            return {"videos": data["videos"], "failed": data["failed"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no sidecar, a stale one (killed between the rename and the sidecar) or a damaged one
    try:
        return _part_info_from_h5(h5path)
    except Exception as e:  # truncated, zero bytes, damaged metadata
        raise UserError(f"the cache part {h5path} is damaged ({first_line(e, 160)})") from e


def part_paths(path: str | Path) -> list[Path]:
    return sorted(Path(path).glob("part-*.h5"))


def read_parts(path: str | Path) -> dict[str, dict]:
    """{part name: read_part(...)} of the complete parts; UserError at the first damaged one."""
    return {p.stem: read_part(p) for p in part_paths(path)}


def verify_part(h5path: Path) -> tuple[dict, dict, dict[str, str]]:
    """Read every entry of a part through its checksums: (videos {id: attrs} that read back whole,
    failed {id: message} recorded by its writer, damaged {id: why}). An unreadable file is damaged
    as a whole: ({}, {}, {"*": why})."""
    import h5py

    try:
        f = h5py.File(h5path, "r", locking=False)
    except Exception as e:
        return {}, {}, {"*": first_line(e, 160)}
    videos, damaged = {}, {}
    try:
        try:
            ids = json.loads(f.attrs["videos"])
            failed = json.loads(f.attrs.get("failed", "{}"))
        except Exception as e:
            return {}, {}, {"*": first_line(e, 160)}
        for vid in ids:
            try:
                ds = f[vid]
                for t in range(ds.shape[0]):  # chunk by chunk: one frame's memory at a time
                    ds[t]
                videos[vid] = _attrs(ds.attrs)
            except Exception as e:
                damaged[vid] = first_line(e, 160)
    finally:
        f.close()
    return videos, failed, damaged


def write_bytes_atomic(path: Path, data) -> None:
    """Write bytes to `path` through a per-process temporary name, fsync and rename; on any OSError
    (disk full, read-only folder) remove the temporary file and raise UserError naming the path."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)  # the data is on disk before the name says the part is complete
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:  # a disk error, or a signal's exception: never leave the temporary file
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        hint = "free space on that disk" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "check the folder"
        raise UserError(
            f"cannot write {path} ({e.strerror or e}); {hint} or set cache.dir elsewhere, then rerun to resume "
            f"(finished parts are kept)"
        ) from None


class PartWriter:
    """Builds one part in memory; `commit` writes it in one go under a temporary name, renames it into
    place and writes its sidecar. Leaving the block without commit leaves nothing on disk.

    with PartWriter(cache_dir, k, provenance) as w:
        w.add(video_id, array, attrs); w.copy_from(old_part, video_id); w.commit(failed)
    """

    def __init__(self, path: str | Path, k: int, provenance: dict, *, compression: str | None = "lzf"):
        import h5py

        self.final = part_file(path, k)
        self.compression = compression
        self.videos: dict[str, dict] = {}
        self.buffer = io.BytesIO()
        self.f = h5py.File(self.buffer, "w", locking=False)
        prov = normalize_provenance(provenance)
        self.f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
        for key, value in prov.items():  # readable with h5dump / h5ls too
            self.f.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)

    def add(self, video_id: str, array: np.ndarray, attrs: dict) -> None:
        """Store array (T, C, H, W) as entry `video_id` with per-entry attributes (num_frames, fps, ...)."""
        if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[0] < 1:
            shape = getattr(array, "shape", type(array).__name__)
            raise ValueError(f"cache entries are (T, C, H, W) numpy arrays with T >= 1; {video_id} has {shape}")
        t, c, h, w = array.shape
        ds = self.f.create_dataset(
            video_id, data=array, chunks=(1, c, h, w), compression=self.compression, fletcher32=True
        )
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in {**attrs, "num_frames": t}.items()}
        for k, v in attrs.items():
            ds.attrs[k] = v
        self.videos[video_id] = attrs

    def copy_from(self, src, video_id: str) -> None:
        """Copy entry `video_id` (chunks as stored, no recompression) from an open h5py.File `src`."""
        parent, _, leaf = video_id.rpartition("/")
        dest = self.f.require_group(parent) if parent else self.f
        src.copy(src[video_id], dest, name=leaf)
        self.videos[video_id] = _attrs(src[video_id].attrs)

    def commit(self, failed: dict[str, str]) -> None:
        self.f.attrs["videos"] = json.dumps(sorted(self.videos))
        self.f.attrs["failed"] = json.dumps(failed, sort_keys=True)
        self.f.close()
        write_bytes_atomic(self.final, self.buffer.getbuffer())
        self.buffer = io.BytesIO()
        side = {"h5": _stamp(self.final), "videos": self.videos, "failed": failed}
        try:
            write_json_atomic(self.final.with_suffix(".json"), side)
        except OSError:
            pass  # the sidecar only saves time: readers rebuild it from the part

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.f.id.valid:  # not committed
            self.f.close()
        self.buffer = io.BytesIO()


class PartLock:
    """The writer lock of part k of a cache: an fcntl lock on part-XXXXX.lock, released when the
    process ends however it ends (forked children do not inherit it: files.HELD_LOCKS).
    acquire(block=False) returns False when another process holds it."""

    def __init__(self, path: Path, k: int):
        self.file = Path(path) / f"{part_name(k)}.lock"
        self.fd: int | None = None
        self.pid = 0

    def acquire(self, block: bool = False) -> bool:
        try:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock {self.file} ({e.strerror}); set cache.dir to a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd, self.pid = fd, os.getpid()
        HELD_LOCKS.add(fd)
        return True

    def holder(self) -> str:
        try:
            return self.file.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None and self.pid == os.getpid():  # a forked child's copy was closed at the fork
            HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the descriptor releases the lock
        self.fd = None


# ---- reading -----------------------------------------------------------------------------------


class CacheReader:
    """Reads entries of one cache; safe to build in the main process and pickle/fork into workers.

    Files open lazily on first read in each process (handles never cross fork: they are dropped when
    the process id changes or the reader is pickled). At most `max_open` part files stay open, each
    with the handles of the entries read from it, and without HDF5's chunk cache (1 MiB per open entry
    otherwise; whole-chunk reads go straight into the clip's array): raw rgb clips read 1.5-1.7x and flow
    clips 1.15-1.2x as fast as with h5py's defaults (tools/bench/transforms.py, idle machine), and memory
    bounded by max_open x videos_per_part entry handles (about 50 KiB each).

    expect: the provenance the caller needs (from cache_location); a different cache raises UserError.
    name: what the errors call the cache (a view name); fill_command: the command that fills it.
    root: the dataset root, for the entries' source identity (check).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        expect: dict | None = None,
        name: str = "view",
        fill_command: str | None = None,
        root=None,
        max_open=32,
    ):
        self.path = Path(path)
        self.expect = normalize_provenance(expect) if expect is not None else None
        self.name, self.root = name, root
        self.fill_command = fill_command or globals()["fill_command"](name)
        self.max_open = max_open
        self._index: dict[str, tuple[str, dict]] | None = None
        self._failed: dict[str, str] = {}
        self._files: OrderedDict = OrderedDict()
        self._pid = os.getpid()
        if self.expect is not None and (have := read_provenance(self.path)) is not None:
            self._check_provenance(have)

    def _check_provenance(self, have: dict) -> None:
        diff = provenance_difference(have, self.expect)
        if diff:
            raise UserError(
                f"the {self.name} cache {self.path} {diff}; fill a cache for these settings with: {self.fill_command}"
            )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()
        return state

    # -- index

    def _load_index(self) -> dict[str, tuple[str, dict]]:
        have = read_provenance(self.path)
        if have is not None and self.expect is not None:
            self._check_provenance(have)
        index, failed = {}, {}
        for h5path in part_paths(self.path):
            try:
                info = read_part(h5path)
            except UserError as e:
                raise UserError(f"{e}; repair it with: {self.fill_command}") from e
            failed.update(info["failed"])
            for vid, meta in info["videos"].items():
                index[vid] = (h5path.stem, meta)
        self._index, self._failed = index, {k: v for k, v in failed.items() if k not in index}
        return index

    @property
    def index(self) -> dict[str, tuple[str, dict]]:
        """{video_id: (part name, entry attrs)} of every complete entry."""
        return self._index if self._index is not None else self._load_index()

    def missing(self, video_ids: Iterable[str]) -> list[str]:
        """The ids among `video_ids` that the cache lacks (the index is reread once if some are missing)."""
        ids = list(video_ids)
        out = [v for v in ids if v not in self.index]
        if out:
            out = [v for v in ids if v not in self._load_index()]
        return out

    def check(self, records: Iterable) -> None:
        """UserError unless every record has an entry made from that record's file (with root set)."""
        records = list(records)
        lacking = self.missing([r.video_id for r in records])
        if lacking:
            failed = [v for v in lacking if v in self._failed]
            note = ""
            if failed:
                note = f" ({len(failed)} could not be decoded when it was filled, e.g. {failed[0]}: "
                note += f"{self._failed[failed[0]]})"
            raise UserError(
                f"the {self.name} cache {self.path} lacks {len(lacking)} of {len(records)} videos "
                f"(e.g. {lacking[0]}){note}; fill it with: {self.fill_command}"
            )
        if self.root is None:
            return
        for r in records:
            why = identity_difference(self.index[r.video_id][1], r.path, self.root)
            if why:
                raise UserError(
                    f"the {self.name} cache {self.path} entry {r.video_id} {why}; "
                    f"recompute it with: {self.fill_command}"
                )

    def _locate(self, video_id: str) -> tuple[str, dict]:
        if video_id not in self.index and video_id not in self._load_index():
            why = (
                f"could not be decoded when it was filled ({self._failed[video_id]})"
                if video_id in self._failed
                else "is not there"
            )
            raise UserError(
                f"the {self.name} cache {self.path} has no entry for video {video_id}: it {why}; "
                f"fill it with: {self.fill_command}"
            )
        return self.index[video_id]

    def num_frames(self, video_id: str) -> int:
        return int(self._locate(video_id)[1]["num_frames"])

    def attrs(self, video_id: str) -> dict:
        """The entry's attributes (num_frames, fps, source identity, the stage's own)."""
        return dict(self._locate(video_id)[1])

    # -- data

    def _entry(self, name: str, video_id: str):
        """The h5py Dataset of entry `video_id` in part `name`, kept open with its part file."""
        import h5py

        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._files, self._pid = OrderedDict(), os.getpid()
        opened = self._files.get(name)  # (h5py.File, {video_id: Dataset})
        if opened is None:
            opened = self._files[name] = (h5py.File(self.path / f"{name}.h5", "r", locking=False, rdcc_nbytes=0), {})
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)[1][0].close()
        else:
            self._files.move_to_end(name)
        f, entries = opened
        ds = entries.get(video_id)
        if ds is None:
            ds = entries[video_id] = f[video_id]
        return ds

    def read(self, video_id: str, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Frames start, start+step, ... < stop of entry `video_id`: (T, C, H, W), one contiguous read."""
        name, meta = self._locate(video_id)
        n = int(meta["num_frames"])
        if not (0 <= start < stop <= n) or step < 1:
            raise UserError(
                f"frames [{start}:{stop}:{step}] asked from the {self.name} cache entry {video_id}, "
                f"which has {n} frames"
            )
        try:
            x = self._entry(name, video_id)[start:stop]  # a hyperslab; h5py's strided reads are ~50x slower
        except (OSError, KeyError, ValueError) as e:
            raise UserError(
                f"cannot read {video_id} from {self.path / name}.h5 ({first_line(e, 160)}): the part is damaged; "
                f"repair it with: {self.fill_command}"
            ) from e
        return np.ascontiguousarray(x[::step]) if step > 1 else x

    def close(self) -> None:
        for f, _ in self._files.values():
            f.close()
        self._files.clear()


class CachedClips:
    """A cached view's decode: clip -> (C, T, H, W) as stored, read from the cache (picklable).

    The window starts `offset` frames late; where it runs past the video's end the last frame repeats."""

    def __init__(self, reader: CacheReader, offset: int = 0, unpack=None):
        self.reader, self.offset, self.unpack = reader, offset, unpack

    def __call__(self, clip) -> "torch.Tensor":  # noqa: F821, UP037
        import torch

        start = min(clip.start + self.offset, clip.video_frames - 1)
        stop = min(start + (clip.num_frames - 1) * clip.stride + 1, clip.video_frames)
        x = self.reader.read(clip.video_id, start, stop, clip.stride)  # (T', C, H, W)
        if x.shape[0] < clip.num_frames:  # the offset ran past the end: repeat the last frame
            x = np.concatenate([x, np.repeat(x[-1:], clip.num_frames - x.shape[0], axis=0)])
        if self.unpack is not None:  # encoded entries (JPEG): (T, C, H, W) as decoded
            x = self.unpack(x)
        return torch.from_numpy(x).permute(1, 0, 2, 3)  # (C, T, H, W)


class CacheCheck:
    """A cached view's check(records): every record has an entry made from its file (picklable)."""

    def __init__(self, reader: CacheReader):
        self.reader = reader

    def __call__(self, records) -> None:
        self.reader.check(records)


def attach_cache(view, ctx) -> None:
    """Give a view with a precompute stage its cache reader: view.cache, view.decode (unless the view
    has its own, e.g. one that reads the cache through view.cache) and view.check."""
    path, provenance = cache_location(
        cache_dir=ctx.cache_dir, dataset=ctx.dataset, root=ctx.root, view=view.name, stage=view.precompute
    )
    reader = CacheReader(path, expect=provenance, name=view.name, root=ctx.root)
    view.cache = reader
    if view.decode is None:
        view.decode = CachedClips(reader, view.precompute.offset, view.precompute.unpack)
        unpacked = "decoded" if view.precompute.unpack is not None else "stored"
        view.source = f"cache:{path}:{view.precompute.offset}:{unpacked}"  # views reading one cache share the read
    view.check = CacheCheck(reader)
