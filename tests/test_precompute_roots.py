"""Two dataset roots with the same folder name (a/syn, b/syn) in one cache.dir: `mvcoding precompute` fills a
cache folder per root, so neither replaces the other's entries and each trains from its own."""

from __future__ import annotations

import shutil

import numpy as np

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.datasets import load_dataset
from mvcoding.model import build_views
from mvcoding.precompute import main as precompute
from mvcoding.video import write_video


def test_two_roots_with_one_folder_name_fill_their_own_caches(synthetic_root, tmp_path, capsys):
    roots = {k: tmp_path / k / "syn" for k in ("a", "b")}
    for root in roots.values():
        shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    shared = tmp_path / "cache"
    over = {k: tiny(root, **{"cache.dir": shared}) for k, root in roots.items()}
    records = {k: load_dataset(load_config(SYNTHETIC, over[k]).dataset).records("all") for k in roots}
    changed = records["b"][3]  # b's copy of one video differs from a's
    write_video(changed.path, np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))

    for k in roots:
        assert precompute(["flow", SYNTHETIC, *over[k]]) == 0
    out = capsys.readouterr().out
    assert "24 entries computed, 0 already cached" in out.splitlines()[1]  # b did not take a's entries as its own
    views = {k: build_views(load_config(SYNTHETIC, over[k]), ["flow"])["flow"] for k in roots}
    assert views["a"].cache.path != views["b"].cache.path
    assert views["a"].cache.path.parent.name == "synthetic-syn" and views["a"].cache.path.is_relative_to(shared)
    for k in roots:  # each cache holds its own root's entries, made from its own files
        views[k].check(records[k])
    vid = changed.video_id
    a, b = (views[k].cache.read(vid, 0, 12) for k in roots)
    assert not np.array_equal(a, b)
