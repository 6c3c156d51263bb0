"""The HDF5 cache of per-video arrays (flow, depth, RGB frames, ...): layout, writer pieces, reader.

One cache is a directory per (dataset, modality, algorithm, resolution)::

    <cache.dir>/<dataset>-<modality>-<algorithm>-<H>x<W>/     (or ...-native for native size)
        provenance.json       what the cache holds (below); every part carries the same as attributes
        part-00000.h5         a complete part: one dataset per video of that part
        part-00000.json       its index sidecar: {video_id: {num_frames, fps, source_size, ...}}, failures
        part-00001.h5.tmp     a part being written (or left by a killed run; the next run deletes it)

A part is `videos_per_part` consecutive videos of the sorted video list, so every machine agrees on
them. It is written under a temporary name and renamed into place when complete, so a killed writer
loses at most the parts in flight, never a finished one. The sidecar is written after the rename and
records the size and mtime of the part it describes; a missing or outdated sidecar is rebuilt from the
part's own attributes. Entries are `(T, C, H, W)` arrays (uint8 for flow and depth) keyed by video id
(nested groups: the id's slashes), chunked one frame per chunk, so a clip read touches only its frames.

Provenance: {"format_version", "modality", "algorithm", "params", "resolution", "encoding",
"source_root"}. Readers and resumed writers compare everything but INFO_KEYS (the source root may be
mounted elsewhere on another machine) and refuse a cache made differently.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mvcoding.errors import UserError
from mvcoding.files import write_text_atomic

FORMAT_VERSION = 1
INFO_KEYS = ("source_root",)  # recorded, not compared
PROVENANCE_FILE = "provenance.json"


def cache_path(cache_dir: str | Path, *, dataset: str, modality: str, algorithm: str, resolution) -> Path:
    """The cache directory of (dataset, modality, algorithm, resolution); resolution [H, W] or None (native)."""
    res = "native" if resolution is None else f"{int(resolution[0])}x{int(resolution[1])}"
    return Path(cache_dir) / f"{dataset}-{modality}-{algorithm}-{res}"


def quantize(x: np.ndarray, bound: float) -> np.ndarray:
    """Clip x to [-bound, bound] and map it linearly to 0..255 uint8 (the TV-L1 cache convention)."""
    y = (np.clip(x, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(y).astype(np.uint8)


def dequantize(u: np.ndarray, bound: float) -> np.ndarray:
    """Inverse of quantize as float32; |dequantize(quantize(x)) - x| <= bound / 255 inside the bound."""
    return u.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def normalize_provenance(provenance: dict) -> dict:
    """Provenance as plain JSON data (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(provenance, sort_keys=True))


def provenance_difference(have: dict, want: dict) -> str | None:
    """A phrase naming the first differing key ('algorithm was 'farneback' ... asks for 'dis''), or None."""

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


def read_provenance(path: Path) -> dict | None:
    f = Path(path) / PROVENANCE_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def ensure_provenance(path: Path, provenance: dict) -> None:
    """Create the cache dir with provenance.json, or check an existing one matches (else UserError)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        msg = f"cannot create the cache directory {path} ({e.strerror}); set cache.dir to a writable folder"
        raise UserError(msg) from e
    have = read_provenance(path)
    if have is None:
        write_json_atomic(path / PROVENANCE_FILE, normalize_provenance(provenance))
        return
    diff = provenance_difference(have, provenance)
    if diff:
        raise UserError(
            f"the cache {path} {diff}; set a different cache.dir or delete {path} to refill it with these settings"
        )


# ---- parts -------------------------------------------------------------------------------------


def part_name(k: int) -> str:
    return f"part-{k:05d}"


def part_file(path: Path, k: int) -> Path:
    return Path(path) / f"{part_name(k)}.h5"


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def _part_info_from_h5(h5path: Path) -> dict:
    import h5py

    with h5py.File(h5path, "r", locking=False) as f:
        failed = json.loads(f.attrs.get("failed", "{}"))
        videos = {}
        for vid in json.loads(f.attrs["videos"]):
            a = f[vid].attrs
            videos[vid] = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()}
    return {"videos": videos, "failed": failed}


def read_parts(path: str | Path) -> dict[str, dict]:
    """{part name: {"videos": {video_id: entry attrs}, "failed": {video_id: message}}} of the complete parts."""
    parts = {}
    for h5path in sorted(Path(path).glob("part-*.h5")):
        side = h5path.with_suffix(".json")
        info = None
        if side.is_file():
            try:
                data = json.loads(side.read_text())
                if data.get("h5") == _stamp(h5path):
                    info = data
            except (OSError, ValueError):
                info = None
        if info is None:  # killed between the rename and the sidecar, or the sidecar is stale
            info = _part_info_from_h5(h5path)
        parts[h5path.stem] = {"videos": info["videos"], "failed": info["failed"]}
    return parts


class PartWriter:
    """Writes one part under a temporary name; `commit` renames it into place and writes its sidecar.

    with PartWriter(cache_dir, k, provenance) as w:
        w.add(video_id, array, attrs); w.copy_from(old_part, video_id); w.commit(failed)
    Leaving the block without commit deletes the temporary file.
    """

    def __init__(self, path: str | Path, k: int, provenance: dict, *, compression: str | None = "lzf"):
        import h5py

        self.final = part_file(path, k)
        self.tmp = self.final.with_name(self.final.name + ".tmp")
        self.compression = compression
        self.videos: dict[str, dict] = {}
        self.f = h5py.File(self.tmp, "w", locking=False)
        prov = normalize_provenance(provenance)
        self.f.attrs["provenance"] = json.dumps(prov, sort_keys=True)
        for key, value in prov.items():  # readable with h5dump / h5ls too
            self.f.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)

    def add(self, video_id: str, array: np.ndarray, attrs: dict) -> None:
        """Store array (T, C, H, W) as entry `video_id` with per-entry attributes (num_frames, fps, ...)."""
        if array.ndim != 4:
            raise ValueError(f"cache entries are (T, C, H, W) arrays; {video_id} has shape {array.shape}")
        t, c, h, w = array.shape
        ds = self.f.create_dataset(video_id, data=array, chunks=(1, c, h, w), compression=self.compression)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in {**attrs, "num_frames": t}.items()}
        for k, v in attrs.items():
            ds.attrs[k] = v
        self.videos[video_id] = attrs

    def copy_from(self, src, video_id: str) -> None:
        """Copy entry `video_id` (chunks as stored, no recompression) from an open h5py.File `src`."""
        parent, _, leaf = video_id.rpartition("/")
        dest = self.f.require_group(parent) if parent else self.f
        src.copy(src[video_id], dest, name=leaf)
        a = src[video_id].attrs
        self.videos[video_id] = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()}

    def commit(self, failed: dict[str, str]) -> None:
        self.f.attrs["videos"] = json.dumps(sorted(self.videos))
        self.f.attrs["failed"] = json.dumps(failed, sort_keys=True)
        self.f.close()
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name says the part is complete
        finally:
            os.close(fd)
        os.replace(self.tmp, self.final)
        side = {"h5": _stamp(self.final), "videos": self.videos, "failed": failed}
        write_json_atomic(self.final.with_suffix(".json"), side)

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.f.id.valid:  # not committed
            self.f.close()
            self.tmp.unlink(missing_ok=True)


def cache_settings(*, cache_dir, dataset: str, modality: str, settings, root) -> tuple[Path, dict]:
    """The cache directory and provenance for a view's settings: what the tools fill and the views read.

    settings: the view's config (views.<modality>, a dict or DictConfig); keys that do not shape the
    cache (encoder, size, ...) are ignored. flow reads algorithm, params, resolution, bound;
    depth reads source, folder, model, hub_repo, weights, resolution.
    """
    import importlib

    describers = {"flow": "mvcoding.flow", "depth": "mvcoding.depth"}
    if modality not in describers:
        raise UserError(f"no cache format for modality {modality!r}; cached modalities: {', '.join(describers)}")
    if not isinstance(settings, dict):
        from omegaconf import OmegaConf

        settings = OmegaConf.to_container(settings, resolve=True)
    described = importlib.import_module(describers[modality]).cache_description(settings, root=str(root))
    res = described["resolution"]
    if res is not None:
        if len(res) != 2 or int(res[0]) <= 0 or int(res[1]) <= 0:
            raise UserError(f"views.{modality}.resolution={res!r} is not valid; use [H, W] or null (native size)")
        described["resolution"] = [int(res[0]), int(res[1])]
    provenance = normalize_provenance({"format_version": FORMAT_VERSION, "modality": modality, **described})
    path = cache_path(cache_dir, dataset=dataset, modality=modality, algorithm=described["algorithm"], resolution=res)
    return path, provenance


# ---- reading -----------------------------------------------------------------------------------


class CacheReader:
    """Reads entries of one cache; safe to build in the main process and pickle/fork into workers.

    Files open lazily on first read in each process (handles never cross fork: they are dropped when
    the process id changes or the reader is pickled). At most `max_open` part files stay open.

    expect: the provenance the caller needs (from cache_settings); a different cache raises UserError.
    fill_command: the command that fills this cache, quoted in the errors about missing entries.
    """

    def __init__(self, path: str | Path, *, expect: dict | None = None, fill_command: str | None = None, max_open=32):
        self.path = Path(path)
        self.expect = normalize_provenance(expect) if expect is not None else None
        name_parts = self.path.name.split("-")
        self.modality = (expect or {}).get("modality") or (name_parts[-3] if len(name_parts) >= 4 else "data")
        self.fill_command = fill_command or f"python tools/precompute_{self.modality}.py CONFIG [overrides]"
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
                f"the {self.modality} cache {self.path} {diff}; fill a cache for these settings with: "
                f"{self.fill_command} (or set the config back to the cache's settings)"
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
        for name, info in read_parts(self.path).items():
            failed.update(info["failed"])
            for vid, meta in info["videos"].items():
                index[vid] = (name, meta)
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

    def check(self, video_ids: Iterable[str], fill_command: str | None = None) -> None:
        """UserError unless every video in `video_ids` has an entry."""
        ids = list(video_ids)
        lacking = self.missing(ids)
        if not lacking:
            return
        cmd = fill_command or self.fill_command
        failed = [v for v in lacking if v in self._failed]
        note = ""
        if failed:
            note = (
                f" ({len(failed)} could not be decoded when it was filled, e.g. {failed[0]}: {self._failed[failed[0]]})"
            )
        raise UserError(
            f"{self.modality} cache {self.path} lacks {len(lacking)} of {len(ids)} videos "
            f"(e.g. {lacking[0]}){note}; fill it with: {cmd}"
        )

    def _locate(self, video_id: str) -> tuple[str, dict]:
        if video_id not in self.index and video_id not in self._load_index():
            why = (
                f"could not be decoded when it was filled ({self._failed[video_id]})"
                if video_id in self._failed
                else "is not there"
            )
            raise UserError(
                f"{self.modality} cache {self.path} has no entry for video {video_id}: it {why}; "
                f"fill it with: {self.fill_command}"
            )
        return self.index[video_id]

    def num_frames(self, video_id: str) -> int:
        return int(self._locate(video_id)[1]["num_frames"])

    def attrs(self, video_id: str) -> dict:
        """The entry's attributes (num_frames, fps, source_size, source_mtime_ns, ...)."""
        return dict(self._locate(video_id)[1])

    # -- data

    def _file(self, name: str):
        import h5py

        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._files, self._pid = OrderedDict(), os.getpid()
        f = self._files.get(name)
        if f is None:
            f = h5py.File(self.path / f"{name}.h5", "r", locking=False)
            self._files[name] = f
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(name)
        return f

    def read(self, video_id: str, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Frames start, start+step, ... < stop of entry `video_id`: (T, C, H, W), one contiguous read."""
        name, meta = self._locate(video_id)
        n = int(meta["num_frames"])
        if not (0 <= start < stop <= n) or step < 1:
            raise UserError(
                f"frames [{start}:{stop}:{step}] asked from the {self.modality} cache entry {video_id}, "
                f"which has {n} frames"
            )
        try:
            x = self._file(name)[video_id][start:stop]  # a hyperslab; h5py's strided reads are ~50x slower
        except (OSError, KeyError) as e:
            raise UserError(
                f"cannot read {video_id} from {self.path / name}.h5 ({e}); delete that part and refill it with: "
                f"{self.fill_command}"
            ) from e
        return np.ascontiguousarray(x[::step]) if step > 1 else x

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
