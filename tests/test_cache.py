"""The HDF5 cache: layout, round trip, provenance checks, quantisation, reader errors and fork safety."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from mvcoding.cache import (
    CacheReader,
    PartWriter,
    cache_path,
    cache_settings,
    dequantize,
    ensure_provenance,
    quantize,
    read_parts,
)
from mvcoding.errors import UserError

PROV = {
    "format_version": 1,
    "modality": "flow",
    "algorithm": "dis",
    "params": {"preset": "medium"},
    "resolution": [16, 24],
    "encoding": {"kind": "uint8_linear", "bound": 20.0},
    "source_root": "/data/x",
}


def entry(video_id: str, frames: int = 7) -> np.ndarray:
    """A deterministic (T, 2, 16, 24) uint8 array that differs per video and per frame."""
    seed = sum(map(ord, video_id))
    x = np.random.default_rng(seed).integers(0, 256, (frames, 2, 16, 24), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(frames)  # frame number, to check slices
    return x


def write_cache(path, parts: dict[int, list[str]], prov=PROV, failed=None) -> None:
    ensure_provenance(path, prov)
    for k, ids in parts.items():
        with PartWriter(path, k, prov) as w:
            for vid in ids:
                w.add(vid, entry(vid), {"fps": 25.0, "source_size": 1, "source_mtime_ns": 2})
            w.commit((failed or {}).get(k, {}))


def test_cache_path_names_every_setting(tmp_path):
    p = cache_path(tmp_path, dataset="ucf101", modality="flow", algorithm="dis", resolution=[128, 171])
    assert p == tmp_path / "ucf101-flow-dis-128x171"
    assert cache_path(tmp_path, dataset="d", modality="depth", algorithm="folder", resolution=None).name == (
        "d-depth-folder-native"
    )


def test_quantize_error_within_bound_over_255():
    x = np.linspace(-25, 25, 10001, dtype=np.float32)
    u = quantize(x, 20.0)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    back = dequantize(u, 20.0)
    inside = np.abs(x) <= 20
    assert np.abs(back[inside] - x[inside]).max() <= 20.0 / 255 + 1e-5  # half a step, up to float32 rounding
    assert np.allclose(back[x > 20], 20.0) and np.allclose(back[x < -20], -20.0)  # clipped to the bound


def test_round_trip_slices_attrs_and_provenance(tmp_path):
    path = tmp_path / "c"
    ids = ["UCF-101/A/v_A_g01_c01", "UCF-101/A/v_A_g01_c02", "UCF-101/B/v_B_g02_c01"]
    write_cache(path, {0: ids[:2], 1: ids[2:]})
    r = CacheReader(path, expect=PROV)
    for vid in ids:
        full = entry(vid)
        assert r.num_frames(vid) == 7
        np.testing.assert_array_equal(r.read(vid, 0, 7), full)
        np.testing.assert_array_equal(r.read(vid, 2, 7, 2), full[2:7:2])
        x = r.read(vid, 1, 6, 3)
        assert x.shape == (2, 2, 16, 24) and x.flags.c_contiguous and list(x[:, 0, 0, 0]) == [1, 4]
    assert r.attrs(ids[0])["fps"] == 25.0
    assert json.loads((path / "provenance.json").read_text()) == PROV
    with h5py.File(path / "part-00001.h5", "r", locking=False) as f:  # as the reader opened it
        assert json.loads(f.attrs["provenance"]) == PROV and f.attrs["algorithm"] == "dis"
        assert f[ids[2]].chunks == (1, 2, 16, 24)  # one frame per chunk: a clip touches only its frames
        assert f[ids[2]].attrs["num_frames"] == 7
    assert sorted(p.name for p in path.iterdir()) == [
        "part-00000.h5",
        "part-00000.json",
        "part-00001.h5",
        "part-00001.json",
        "provenance.json",
    ]


def test_index_rebuilt_when_sidecar_missing_and_tmp_ignored(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x", "a/y"], 1: ["b/z"]})
    (path / "part-00000.json").unlink()
    (path / "part-00001.json").write_text('{"h5": [0, 0], "videos": {}, "failed": {}}')  # outdated sidecar
    (path / "part-00002.h5.tmp").write_bytes(b"half a file")  # a killed writer's
    parts = read_parts(path)
    assert sorted(parts) == ["part-00000", "part-00001"]
    assert sorted(parts["part-00000"]["videos"]) == ["a/x", "a/y"] and list(parts["part-00001"]["videos"]) == ["b/z"]
    np.testing.assert_array_equal(CacheReader(path).read("b/z", 0, 7), entry("b/z"))


def test_part_left_unfinished_is_removed(tmp_path):
    ensure_provenance(tmp_path, PROV)
    with PartWriter(tmp_path, 0, PROV) as w:
        w.add("a/x", entry("a/x"), {})
    assert not list(tmp_path.glob("part-*"))  # no commit: neither the part nor its temporary file


def test_provenance_mismatch_is_refused(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x"]}, prov={**PROV, "algorithm": "farneback"})
    with pytest.raises(UserError, match=r"algorithm='farneback' but the config asks for 'dis'.*cache\.dir"):
        ensure_provenance(path, PROV)
    with pytest.raises(UserError, match=r"algorithm='farneback' but the config asks for 'dis'"):
        CacheReader(path, expect=PROV)
    with pytest.raises(UserError, match=r"encoding\.bound=20\.0 but the config asks for 10\b"):
        CacheReader(path, expect={**PROV, "algorithm": "farneback", "encoding": {"kind": "uint8_linear", "bound": 10}})
    # the source root is recorded but not compared: another machine may mount the data elsewhere
    CacheReader(path, expect={**PROV, "algorithm": "farneback", "source_root": "/mnt/other"})


def test_missing_entries_name_the_video_and_the_fill_command(tmp_path):
    path = tmp_path / "ucf101-flow-dis-16x24"
    write_cache(path, {0: ["a/x"]}, failed={0: {"a/bad": "cannot decode video /d/a/bad.avi: broken"}})
    r = CacheReader(path, expect=PROV, fill_command="python tools/precompute_flow.py c.yaml")
    r.check(["a/x"], "CMD")
    with pytest.raises(UserError) as e:
        r.check(["a/x", "a/y", "a/z"], "python tools/precompute_flow.py c.yaml")
    msg = str(e.value)
    assert f"flow cache {path} lacks 2 of 3 videos (e.g. a/y); fill it with: python tools/precompute_flow.py" in msg
    with pytest.raises(UserError, match=r"no entry for video a/y.*fill it with: python tools/precompute_flow.py c"):
        r.read("a/y", 0, 4)
    with pytest.raises(UserError, match=r"a/bad: it could not be decoded.*broken"):
        r.read("a/bad", 0, 4)
    with pytest.raises(UserError, match=r"frames \[3:9:1\].*a/x, which has 7 frames"):
        r.read("a/x", 3, 9)
    with pytest.raises(UserError, match="lacks 1 of 1 videos"):
        CacheReader(tmp_path / "nothing-flow-dis-native").check(["a/x"])


def test_reader_sees_parts_written_after_it_was_built(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x"]})
    r = CacheReader(path, expect=PROV)
    assert r.missing(["a/x", "b/y"]) == ["b/y"]
    write_cache(path, {1: ["b/y"]})
    assert r.missing(["a/x", "b/y"]) == []
    np.testing.assert_array_equal(r.read("b/y", 0, 7), entry("b/y"))


def _read_in_child(reader, vid, queue):
    queue.put(reader.read(vid, 1, 5).tobytes())


def test_reader_reopens_after_fork_and_pickles_without_handles(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x", "a/y"]})
    r = CacheReader(path, expect=PROV)
    r.read("a/x", 0, 2)  # opens the part in the parent
    assert r._files
    copy = pickle.loads(pickle.dumps(r))
    assert not copy._files
    np.testing.assert_array_equal(copy.read("a/y", 0, 7), entry("a/y"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(r, "a/y", queue))
    child.start()
    data = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0 and data == entry("a/y")[1:5].tobytes()
    np.testing.assert_array_equal(r.read("a/y", 1, 5), entry("a/y")[1:5])  # the parent's handle still works


def test_cache_settings_tools_and_views_agree(tmp_path):
    view = {"algorithm": "dis", "resolution": [64, 86], "bound": 20.0}
    tool = {"algorithm": "dis", "resolution": [64, 86], "encoder": "small3d", "size": 48}  # extra view keys ignored
    a = cache_settings(cache_dir=tmp_path, dataset="synthetic", modality="flow", settings=view, root="/r")
    b = cache_settings(cache_dir=tmp_path, dataset="synthetic", modality="flow", settings=tool, root="/r")
    assert a == b and a[0] == tmp_path / "synthetic-flow-dis-64x86"
    assert a[1]["params"] == {"preset": "medium"} and a[1]["encoding"] == {"kind": "uint8_linear", "bound": 20.0}
    c = cache_settings(
        cache_dir=tmp_path, dataset="s", modality="flow", settings={"params": {"preset": "fast"}}, root=1
    )
    assert c[1]["params"] == {"preset": "fast"} and c[0].name == "s-flow-dis-native"
    # runtime-only parameters (device, batch) do not make a different cache
    r1 = cache_settings(cache_dir=tmp_path, dataset="s", modality="flow", settings={"algorithm": "raft_small"}, root=1)
    settings = {"algorithm": "raft_small", "params": {"batch": 4, "device": "cpu"}}
    assert cache_settings(cache_dir=tmp_path, dataset="s", modality="flow", settings=settings, root=1) == r1
    with pytest.raises(UserError, match="unknown parameter 'presett' of flow algorithm 'dis'; valid: preset"):
        cache_settings(cache_dir=tmp_path, dataset="s", modality="flow", settings={"params": {"presett": 1}}, root=1)
    with pytest.raises(UserError, match="unknown flow algorithm 'diss'"):
        cache_settings(cache_dir=tmp_path, dataset="s", modality="flow", settings={"algorithm": "diss"}, root=1)
    d = cache_settings(cache_dir=tmp_path, dataset="s", modality="depth", settings={}, root="/r")
    assert d[0].name == "s-depth-synthetic-native" and d[1]["encoding"]["kind"] == "uint8_minmax_per_video"
