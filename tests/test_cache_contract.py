"""The precompute contract, checked for every registered view with a precompute stage (flow, depth, and
any installed plugin's: tests/test_plugin.py runs this file with its cached view installed).

For each view, on a copy of the tiny synthetic dataset, through `mvcoding precompute VIEW`: the cache
round-trips into the view's decode and transform; a writer's leftovers are resumed from; a damaged
part is named on read and repaired by a rerun; another dataset's or a changed video's entry is
refused; two writers on one shard give the cache of a single run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.datasets import load_dataset
from mvcoding.errors import UserError
from mvcoding.model import build_views
from mvcoding.precompute import main as precompute
from mvcoding.registry import Aug, Clip, has_precompute, list_views, model_input

# (view, its settings): every registered view cached by default, and the views cached on request
CASES = [(name, "{}") for name in list_views() if has_precompute(name)]
CASES += [("rgb", "{cache: true}"), ("rgb", "{cache: true, cache_format: raw}")]
IDS = [f"{n}{'' if s == '{}' else '-' + ('raw' if 'raw' in s else 'jpeg')}" for n, s in CASES]


@pytest.fixture
def dataset(synthetic_root, tmp_path):
    """A copy of the tiny synthetic dataset (without its caches) that a test may change."""
    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    return root


SETTINGS: dict[str, str] = {}  # view -> its settings in the running test


def overrides(root, view: str) -> list[str]:
    return tiny(root, **{"cache.dir": root / "cache"}) + [f"views.{view}={SETTINGS.get(view, '{}')}"]


def built(root, view: str):
    cfg = load_config(SYNTHETIC, overrides(root, view))
    return build_views(cfg, [view])[view], load_dataset(cfg.dataset).records("all")


def fill(root, view: str) -> None:
    assert precompute([view, SYNTHETIC, *overrides(root, view)]) == 0


@pytest.fixture
def name(request):
    view, settings = request.param
    SETTINGS[view] = settings
    yield view
    SETTINGS.pop(view, None)


def entries(view) -> dict[str, np.ndarray]:
    r = view.cache
    return {vid: r.read(vid, 0, r.num_frames(vid)) for vid in sorted(r.index)}


def test_every_builtin_cached_view_is_covered():
    assert {"flow", "depth"} <= {n for n, _ in CASES}


@pytest.mark.parametrize("name", CASES, ids=IDS, indirect=True)
def test_round_trip_into_decode_and_transform(dataset, name):
    fill(dataset, name)
    view, records = built(dataset, name)
    view.check(records)
    n = view.cache.num_frames(records[0].video_id)
    x = view.decode(Clip(records[0].video_id, records[0].path, 2, 4, 2, 25.0, n))
    assert x.ndim == 4 and x.shape[:2] == (view.channels, 4), x.shape
    stored = view.cache.read(records[0].video_id, 2, 9, 2)  # (T, C, H, W): frames 2, 4, 6, 8
    if view.precompute.unpack is not None:  # encoded entries (JPEG)
        stored = view.precompute.unpack(stored)
    assert torch.equal(x, torch.from_numpy(stored).permute(1, 0, 2, 3))
    y = model_input(view, view.transform(x, Aug(train=True, crop=(0.1, 0.1, 0.8, 0.8), flip=True)))
    assert y.dtype == torch.float32 and y.shape == (view.channels, 4, 32, 32) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", CASES, ids=IDS, indirect=True)
def test_resume_from_what_a_killed_writer_leaves(dataset, name, capsys):
    fill(dataset, name)
    view, records = built(dataset, name)
    full = entries(view)
    parts = sorted(view.cache.path.glob("part-*.h5"))
    for p in parts[2:]:  # a writer killed during part 2: parts 0, 1 complete, part 2 a temporary file
        p.unlink()
    (view.cache.path / "part-00002.h5.tmp999999").write_bytes(b"half a part")
    stamps = {p: p.stat().st_mtime_ns for p in parts[:2]}
    capsys.readouterr()
    fill(dataset, name)
    assert f"{len(full) - 8} entries computed, 8 already cached" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in parts[:2]} == stamps and not list(view.cache.path.glob("*.tmp*"))
    again, _ = built(dataset, name)
    got = entries(again)
    assert got.keys() == full.keys() and all(np.array_equal(got[k], full[k]) for k in full)


@pytest.mark.parametrize("name", CASES, ids=IDS, indirect=True)
def test_a_damaged_part_is_named_and_repaired(dataset, name, capsys):
    fill(dataset, name)
    view, records = built(dataset, name)
    full = entries(view)
    part = view.cache.path / "part-00000.h5"
    with h5py.File(part, "r", locking=False) as f:
        vid = sorted(view.cache.index)[0]
        info = f[vid].id.get_chunk_info(1)
    with open(part, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        flipped = bytes(b ^ 0xFF for b in f.read(2))
        f.seek(info.byte_offset + info.size // 2)
        f.write(flipped)
    with pytest.raises(
        UserError, match=rf"cannot read {vid} from .*part-00000.h5.*repair it with: mvcoding precompute"
    ):
        built(dataset, name)[0].cache.read(vid, 0, 3)
    capsys.readouterr()
    fill(dataset, name)
    captured = capsys.readouterr()
    assert "part-00000.h5: 1 damaged entries" in captured.err and "1 entries computed" in captured.out
    got = entries(built(dataset, name)[0])
    assert all(np.array_equal(got[k], full[k]) for k in full)


@pytest.mark.parametrize("name", CASES, ids=IDS, indirect=True)
def test_another_datasets_or_a_changed_videos_entries_are_refused(dataset, name, tmp_path):
    fill(dataset, name)
    other = tmp_path / "synthetic_copy"  # another dataset of the same name, sharing cache.dir
    shutil.copytree(dataset, other, ignore=shutil.ignore_patterns("cache"))
    cfg = load_config(SYNTHETIC, [*overrides(other, name), f"cache.dir={dataset / 'cache'}"])
    view = build_views(cfg, [name])[name]
    with pytest.raises(UserError, match=f"the {name} cache .* lacks 24 of 24 videos"):
        view.check(load_dataset(cfg.dataset).records("all"))  # its own (empty) cache, never the first one's
    view, records = built(dataset, name)
    changed = records[3]
    with open(changed.path, "ab") as f:
        f.write(b"\0" * 16)  # the video changed after its entry was made
    with pytest.raises(UserError, match=rf"entry {changed.video_id} was made from another file.*mvcoding precompute"):
        view.check(records)


@pytest.mark.parametrize("name", CASES, ids=IDS, indirect=True)
def test_two_writers_on_one_shard_give_a_single_runs_cache(dataset, name, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(dataset, single)
    fill(single, name)
    cmd = [sys.executable, "-m", "mvcoding", "precompute", name, SYNTHETIC, *overrides(dataset, name)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    computed = [int(o[0].split(" entries computed")[0].rsplit(" ", 1)[-1]) for o in outs]
    assert sum(computed) == 24, outs  # each entry computed once
    a, b = entries(built(dataset, name)[0]), entries(built(single, name)[0])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
