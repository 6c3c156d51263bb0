"""The HDF5 cache: layout, round trip, provenance, checksums, source identity, reader errors, fork safety,
and writes that fail (disk full) leaving nothing behind."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from mvcoding.cache import (
    CacheReader,
    PartWriter,
    cache_location,
    dataset_folder,
    dequantize,
    ensure_provenance,
    quantize,
    read_parts,
    source_identity,
    verify_part,
)
from mvcoding.datasets import VideoRecord
from mvcoding.errors import UserError
from mvcoding.registry import Precompute

PROV = {
    "format_version": 2,
    "cache": "flow",
    "settings": {"algorithm": "dis", "params": {"preset": "medium"}, "encoding": {"kind": "uint8_linear", "bound": 20}},
    "resolution": [16, 24],
    "dataset": "ucf101",
    "source_root": "/data/x",
}


def entry(video_id: str, frames: int = 7) -> np.ndarray:
    """A deterministic (T, 2, 16, 24) uint8 array that differs per video and per frame."""
    seed = sum(map(ord, video_id))
    x = np.random.default_rng(seed).integers(0, 256, (frames, 2, 16, 24), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(frames)  # frame number, to check slices
    return x


def write_cache(path, parts: dict[int, list[str]], prov=PROV, failed=None, attrs=None) -> None:
    ensure_provenance(path, prov)
    for k, ids in parts.items():
        with PartWriter(path, k, prov) as w:
            for vid in ids:
                w.add(vid, entry(vid), {"fps": 25.0, **((attrs or {}).get(vid, {}))})
            w.commit((failed or {}).get(k, {}))


def flip_bytes_in_chunk(h5path: Path, video_id: str, frame: int) -> None:
    """Damage one stored chunk in place, as bit rot or a bad copy would (the file's size is unchanged)."""
    with h5py.File(h5path, "r") as f:
        info = f[video_id].id.get_chunk_info(frame)
    with open(h5path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        b = f.read(2)
        f.seek(info.byte_offset + info.size // 2)
        f.write(bytes(x ^ 0xFF for x in b))


def test_location_names_dataset_cache_settings_and_resolution(tmp_path):
    stage = Precompute(compute=print, settings={"algorithm": "dis"}, resolution=[128, 171], label="dis")
    p, prov = cache_location(cache_dir=tmp_path, dataset="ucf101", root="/data/ucf101", view="flow", stage=stage)
    assert p.parent == tmp_path / "ucf101" and p.name.startswith("flow-dis-128x171-") and len(p.name) == 25
    assert prov["settings"] == {"algorithm": "dis"} and prov["resolution"] == [128, 171] and prov["cache"] == "flow"
    # other settings, another folder; the root's location is not part of it (another machine's mount)
    other = Precompute(compute=print, settings={"algorithm": "dis", "x": 1}, resolution=[128, 171], label="dis")
    assert cache_location(cache_dir=tmp_path, dataset="ucf101", root="/data/ucf101", view="flow", stage=other)[0] != p
    moved = cache_location(cache_dir=tmp_path, dataset="ucf101", root="/mnt/b/ucf101", view="flow", stage=stage)[0]
    assert moved == p
    # two datasets of one name in different folders do not share a cache
    assert dataset_folder(tmp_path, "synthetic", "data/synthetic") == tmp_path / "synthetic"
    assert dataset_folder(tmp_path, "synthetic", "data/synthetic_bench") == tmp_path / "synthetic-synthetic_bench"
    native = Precompute(compute=print, resolution=None)
    assert "-native-" in cache_location(cache_dir=tmp_path, dataset="d", root="/d", view="v", stage=native)[0].name
    with pytest.raises(UserError, match=r"views.v.resolution=\[0, 4\] is not valid"):
        cache_location(cache_dir=tmp_path, dataset="d", root="/d", view="v", stage=Precompute(print, resolution=[0, 4]))


def test_two_roots_with_one_folder_name_keep_apart(tmp_path):
    """a/syn and b/syn in one cache.dir: the folder belongs to the root its caches were filled from; another
    root that is there gets a folder of its own; a root that moved (or a cache made before roots were
    recorded) still reads its folder."""
    a, b = tmp_path / "a" / "syn", tmp_path / "b" / "syn"
    a.mkdir(parents=True), b.mkdir(parents=True)
    cache = tmp_path / "cache"
    stage = Precompute(compute=print, settings={"algorithm": "dis"}, resolution=[16, 24], label="dis")

    def location(root):
        return cache_location(cache_dir=cache, dataset="synthetic", root=root, view="flow", stage=stage)

    pa, prov_a = location(a)
    assert pa.parent == cache / "synthetic-syn" and prov_a["source_root"] == str(a)
    assert location(b)[0] == pa  # nothing filled yet: either may take the folder
    ensure_provenance(pa, prov_a)  # a fills it
    pb, prov_b = location(b)
    assert pb.parent.name.startswith("synthetic-syn-") and pb.parent != pa.parent
    assert location(a)[0] == pa and location(f"{tmp_path}/b/../a/syn")[0] == pa  # the same root, however written
    ensure_provenance(pb, prov_b)  # b fills its own; both read back their own folder
    assert location(a)[0] == pa and location(b)[0] == pb
    c = dataset_folder(cache, "synthetic", tmp_path / "c" / "syn")  # a third: a third folder
    assert c.name.startswith("synthetic-syn-") and c not in (pa.parent, pb.parent)
    # the two started at once on an empty cache.dir: the second is one line, and its rerun keeps apart
    other = cache / "synthetic-syn" / "rgb-raw-native-00000000"
    ensure_provenance(other, {**prov_a, "cache": "rgb"})
    with pytest.raises(UserError, match=r"^the cache .* was filled from the dataset at .*a/syn, not from .*b/syn"):
        ensure_provenance(other, {**prov_b, "cache": "rgb"})
    # a recorded root that is not there any more (moved, or mounted elsewhere here) keeps its folder
    moved = tmp_path / "moved" / "syn"
    a.rename(tmp_path / "a" / "gone")
    moved.mkdir(parents=True)
    assert location(moved)[0] == pa
    # caches made before roots were recorded (a relative source_root) stay readable where they are
    legacy = tmp_path / "legacy"
    ensure_provenance(legacy / "ucf101" / "flow-x", {**PROV, "source_root": "data/ucf101"})
    assert dataset_folder(legacy, "ucf101", tmp_path / "ucf101") == legacy / "ucf101"


def test_quantize_error_within_bound_over_255():
    x = np.linspace(-25, 25, 10001, dtype=np.float32)
    u = quantize(x, 20.0)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    back = dequantize(u, 20.0)
    inside = np.abs(x) <= 20
    assert np.abs(back[inside] - x[inside]).max() <= 20.0 / 255 + 1e-5  # half a step, up to float32 rounding
    assert np.allclose(back[x > 20], 20.0) and np.allclose(back[x < -20], -20.0)  # clipped to the bound


def test_round_trip_slices_attrs_checksums_and_provenance(tmp_path):
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
        assert json.loads(f.attrs["provenance"]) == PROV and f.attrs["cache"] == "flow"
        assert f[ids[2]].chunks == (1, 2, 16, 24)  # one frame per chunk: a clip touches only its frames
        assert f[ids[2]].fletcher32  # every chunk checksummed
        assert f[ids[2]].attrs["num_frames"] == 7
    assert sorted(p.name for p in path.iterdir()) == [
        "part-00000.h5",
        "part-00000.json",
        "part-00001.h5",
        "part-00001.json",
        "provenance.json",
    ]


def test_index_rebuilt_when_sidecar_missing_stale_or_garbage_and_tmp_ignored(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x", "a/y"], 1: ["b/z"], 2: ["c/w"]})
    (path / "part-00000.json").unlink()
    (path / "part-00001.json").write_text('{"h5": [0, 0], "videos": {}, "failed": {}}')  # outdated sidecar
    (path / "part-00002.json").write_text("{not json")  # damaged sidecar
    (path / "part-00003.h5.tmp123").write_bytes(b"half a file")  # a killed writer's
    parts = read_parts(path)
    assert sorted(parts) == ["part-00000", "part-00001", "part-00002"]
    assert sorted(parts["part-00000"]["videos"]) == ["a/x", "a/y"] and list(parts["part-00001"]["videos"]) == ["b/z"]
    assert list(parts["part-00002"]["videos"]) == ["c/w"]
    np.testing.assert_array_equal(CacheReader(path).read("b/z", 0, 7), entry("b/z"))


def test_part_left_unfinished_leaves_nothing(tmp_path):
    ensure_provenance(tmp_path, PROV)
    with PartWriter(tmp_path, 0, PROV) as w:
        w.add("a/x", entry("a/x"), {})
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]  # no commit: no part, no temporary file


def test_provenance_mismatch_is_refused(tmp_path):
    path = tmp_path / "c"
    farneback = {**PROV, "settings": {**PROV["settings"], "algorithm": "farneback"}}
    write_cache(path, {0: ["a/x"]}, prov=farneback)
    with pytest.raises(UserError, match=r"settings.algorithm='farneback' but the config asks for 'dis'.*delete"):
        ensure_provenance(path, PROV)
    with pytest.raises(UserError, match=r"algorithm='farneback' but the config asks for 'dis'.*mvcoding precompute"):
        CacheReader(path, expect=PROV)
    # the source root is recorded but not compared: another machine may mount the data elsewhere
    CacheReader(path, expect={**farneback, "source_root": "/mnt/other"})
    (path / "provenance.json").write_text("{broken")
    with pytest.raises(UserError, match=r"cannot read the cache's provenance .*provenance.json \(not valid JSON"):
        CacheReader(path, expect=PROV)


def test_missing_entries_name_the_video_and_the_fill_command(tmp_path):
    path = tmp_path / "flow-dis-16x24"
    write_cache(path, {0: ["a/x"]}, failed={0: {"a/bad": "cannot decode video /d/a/bad.avi: broken"}})
    r = CacheReader(path, expect=PROV, name="flow")
    rec = lambda vid: VideoRecord(vid, f"/nonexistent/{vid}.avi", 0)  # noqa: E731
    r.check([rec("a/x")])
    with pytest.raises(UserError) as e:
        r.check([rec("a/x"), rec("a/y"), rec("a/z")])
    msg = str(e.value)
    assert f"flow cache {path} lacks 2 of 3 videos (e.g. a/y); fill it with: mvcoding precompute flow CONFIG" in msg
    with pytest.raises(UserError, match=r"no entry for video a/y.*fill it with: mvcoding precompute flow"):
        r.read("a/y", 0, 4)
    with pytest.raises(UserError, match=r"a/bad: it could not be decoded.*broken"):
        r.read("a/bad", 0, 4)
    with pytest.raises(UserError, match=r"frames \[3:9:1\].*a/x, which has 7 frames"):
        r.read("a/x", 3, 9)
    with pytest.raises(UserError, match="lacks 1 of 1 videos"):
        CacheReader(tmp_path / "nothing").check([rec("a/x")])


def test_an_entry_of_another_dataset_or_a_changed_video_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, content in ((a, b"first dataset"), (b, b"second, other dataset")):
        (root / "UCF-101/C").mkdir(parents=True)
        (root / "UCF-101/C/v.avi").write_bytes(content)
    path = tmp_path / "cache"
    write_cache(path, {0: ["UCF-101/C/v"]}, attrs={"UCF-101/C/v": source_identity(str(a / "UCF-101/C/v.avi"), a)})
    mine = VideoRecord("UCF-101/C/v", str(a / "UCF-101/C/v.avi"), 0)
    CacheReader(path, root=a, name="flow").check([mine])
    theirs = VideoRecord("UCF-101/C/v", str(b / "UCF-101/C/v.avi"), 0)
    with pytest.raises(UserError, match=r"entry UCF-101/C/v was made from another file .*recompute it with"):
        CacheReader(path, root=b, name="flow").check([theirs])
    elsewhere = VideoRecord("UCF-101/C/v", str(b / "UCF-101/C/v.avi"), 0)
    with pytest.raises(UserError, match=r"was made from 'UCF-101/C/v.avi', not from this dataset's '.*b/UCF-101"):
        CacheReader(path, root=a, name="flow").check([elsewhere])  # a path outside the root it was made under
    (a / "UCF-101/C/v.avi").write_bytes(b"first dataset, re-encoded")
    with pytest.raises(UserError, match="the video changed"):
        CacheReader(path, root=a, name="flow").check([mine])
    os.remove(a / "UCF-101/C/v.avi")  # a cache copied without its videos is judged by the path alone
    CacheReader(path, root=a, name="flow").check([mine])


def test_a_damaged_chunk_is_an_error_naming_the_part_never_wrong_data(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x", "a/y"]})
    flip_bytes_in_chunk(path / "part-00000.h5", "a/x", 3)
    r = CacheReader(path, expect=PROV, name="flow")
    np.testing.assert_array_equal(r.read("a/x", 0, 3), entry("a/x")[:3])  # other chunks read as before
    np.testing.assert_array_equal(r.read("a/y", 0, 7), entry("a/y"))
    with pytest.raises(UserError, match=r"cannot read a/x from .*part-00000.h5 .*damaged; repair it with: mvcoding"):
        r.read("a/x", 2, 5)
    videos, _, damaged = verify_part(path / "part-00000.h5")
    assert list(videos) == ["a/y"] and list(damaged) == ["a/x"]


@pytest.mark.parametrize("damage", ["truncated", "zero bytes"])
def test_a_truncated_or_empty_part_is_one_line_naming_it(tmp_path, damage):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x"], 1: ["b/y"]})
    part = path / "part-00001.h5"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2] if damage == "truncated" else b"")
    with pytest.raises(UserError, match=r"cache part .*part-00001.h5 is damaged .*repair it with: mvcoding precompute"):
        CacheReader(path, name="flow").read("a/x", 0, 2)
    assert verify_part(part)[2].keys() == {"*"}


def test_reader_sees_parts_written_after_it_was_built(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x"]})
    r = CacheReader(path, expect=PROV)
    assert r.missing(["a/x", "b/y"]) == ["b/y"]
    write_cache(path, {1: ["b/y"]})
    assert r.missing(["a/x", "b/y"]) == []
    np.testing.assert_array_equal(r.read("b/y", 0, 7), entry("b/y"))


def test_reader_keeps_at_most_max_open_parts_with_their_entry_handles(tmp_path):
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x", "a/y"], 1: ["b/x"], 2: ["c/x"]})
    r = CacheReader(path, expect=PROV, max_open=2)
    for _ in range(2):  # the second round reads through the kept handles, and reopens the evicted part
        for vid in ("a/x", "a/y", "b/x", "c/x", "a/y"):
            np.testing.assert_array_equal(r.read(vid, 2, 6), entry(vid)[2:6])
    assert len(r._files) == 2  # parts 2 and 0, in that order of use
    lru = next(iter(r._files.values()))[0]
    r.read("a/x", 0, 1)  # part 0 is open: nothing closes
    assert lru.id.valid
    r.read("b/x", 0, 1)  # opens part 1 and closes the least recently used, part 2, with its handles
    assert not lru.id.valid and len(r._files) == 2
    np.testing.assert_array_equal(r.read("c/x", 0, 7), entry("c/x"))
    r.close()


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


def test_a_full_disk_while_committing_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC."""
    path = tmp_path / "c"
    write_cache(path, {0: ["a/x"]})
    code = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        from mvcoding.cache import PartWriter
        from mvcoding.errors import UserError
        from test_cache import PROV
        big = np.random.default_rng(0).integers(0, 256, (40, 2, 64, 64), dtype=np.uint8)  # 320 KiB, incompressible
        try:
            with PartWriter({str(path)!r}, 1, PROV) as w:
                w.add("b/y", big, {{}})
                w.commit({{}})
        except UserError as e:
            print(e)
            sys.exit(2)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "cannot write" in out.stdout and "part-00001.h5" in out.stdout and "free space" in out.stdout
    assert out.stdout.count("\n") == 1 and "Traceback" not in out.stderr
    assert sorted(p.name for p in path.iterdir()) == ["part-00000.h5", "part-00000.json", "provenance.json"]
    np.testing.assert_array_equal(CacheReader(path).read("a/x", 0, 7), entry("a/x"))  # the finished part is intact
