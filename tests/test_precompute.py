"""Flow algorithms, the generic precompute runner (resume after a kill, failures, shards, damaged parts, two
writers at once), `mvcoding precompute` and the tools/precompute_*.py aliases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from fake_trees import make_ucf101_tree
from mvcoding.cache import CacheReader, dequantize, read_parts
from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.datasets import VideoRecord
from mvcoding.errors import UserError
from mvcoding.model import build_views
from mvcoding.precompute import Target, main, parse_shard, plan_parts, run_precompute
from mvcoding.registry import Precompute
from mvcoding.video import write_video
from mvcoding.views.depth import dequantize_depth, quantize_depth
from mvcoding.views.flow import compute_flow, raft_weights_file, tvl1_factory

TESTS = Path(__file__).resolve().parent

# ---- flow ----------------------------------------------------------------------------------------


def moving_texture(frames: int = 6, h: int = 48, w: int = 64, dx: int = 2, dy: int = 1) -> np.ndarray:
    """Frames (T, H, W, 3) of a smooth random texture translated by (dx, dy) pixels per frame."""
    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur((rng.random((h + 40, w + 40)) * 255).astype(np.uint8), (7, 7), 2)
    out = [big[20 - t * dy : 20 - t * dy + h, 20 - t * dx : 20 - t * dx + w] for t in range(frames)]
    return np.repeat(np.stack(out)[..., None], 3, axis=-1)


@pytest.mark.parametrize("algorithm", ["dis", "farneback"])
def test_flow_measures_the_motion_from_t_to_t_plus_1(algorithm):
    flow = compute_flow(moving_texture(), algorithm)
    assert flow.shape == (6, 2, 48, 64) and flow.dtype == np.float32
    inner = flow[:, :, 8:-8, 8:-8].mean(axis=(2, 3))  # away from the borders
    np.testing.assert_allclose(inner, np.tile([2.0, 1.0], (6, 1)), atol=0.25)
    np.testing.assert_array_equal(flow[-1], flow[-2])  # the last frame repeats the last pair's flow


def test_flow_edge_cases():
    assert not compute_flow(moving_texture(frames=1), "dis").any()
    with pytest.raises(UserError, match="unknown flow algorithm 'tvl2'; valid: dis, farneback, tvl1"):
        compute_flow(moving_texture(), "tvl2")
    with pytest.raises(UserError, match="DIS preset 'slow' is not valid"):
        compute_flow(moving_texture(), "dis", preset="slow")


def test_tvl1_without_contrib_says_how_to_install():
    if hasattr(cv2, "optflow"):
        flow = compute_flow(moving_texture(), "tvl1")
        np.testing.assert_allclose(flow[:, :, 8:-8, 8:-8].mean(axis=(2, 3))[0], [2.0, 1.0], atol=0.3)
    else:
        with pytest.raises(UserError, match=r"opencv-contrib-python: pip install 'mvcoding\[tvl1\]'.*uninstall"):
            tvl1_factory()


def test_raft_without_weights_names_file_and_url(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path, url = raft_weights_file("raft_small")
    assert path.parent == tmp_path / "checkpoints" and url.endswith(path.name)
    with pytest.raises(UserError, match=rf"{path.name} not found; download {url}"):
        compute_flow(moving_texture(frames=2), "raft_small")


def test_raft_runs_from_the_local_hub_cache_at_any_size(tmp_path, monkeypatch):
    import torch
    from torchvision.models import optical_flow

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path, _ = raft_weights_file("raft_small")
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save(optical_flow.raft_small(weights=None).state_dict(), path)  # random weights: shapes only
    frames = np.random.default_rng(0).integers(0, 256, (3, 36, 52, 3), dtype=np.uint8)  # < 128, not /8
    flow = compute_flow(frames, "raft_small", batch=1, iters=1, device="cpu")
    assert flow.shape == (3, 2, 36, 52) and flow.dtype == np.float32 and np.isfinite(flow).all()
    np.testing.assert_array_equal(flow[2], flow[1])


def test_depth_quantisation_keeps_invalid_and_inverts():
    d = np.array([[0, 800, 1200], [1600, 4800, 0]], np.uint16)
    u, lo, hi = quantize_depth(d)
    assert (lo, hi) == (800, 4800) and u[0, 0] == 0 and u[1, 2] == 0 and u[0, 1] == 1 and u[1, 1] == 255
    back = dequantize_depth(u, lo, hi)
    assert np.isnan(back[0, 0]) and np.nanmax(np.abs(back - d)[d > 0]) <= (hi - lo) / 508 + 1e-3


# ---- the runner --------------------------------------------------------------------------------


def fake_array(video_id: str) -> np.ndarray:
    """A deterministic (T, 1, 8, 8) entry per video id (its length too)."""
    seed = zlib.crc32(video_id.encode())
    return np.random.default_rng(seed).integers(0, 256, (3 + seed % 4, 1, 8, 8), dtype=np.uint8)


def fake_entry(source, *, delay: float = 0.0, log: str | None = None, crash_after: str | None = None):
    """A precompute stage that decodes nothing; `log` collects the ids computed; a "slow" video takes a
    second; a "crash" video kills its process (once the file `crash_after` exists, if given)."""
    time.sleep(delay + (1.0 if "slow" in source.video_id else 0.0))
    if log:
        with open(log, "a") as f:
            f.write(source.video_id + "\n")
    if "crash" in source.video_id:
        deadline = time.monotonic() + 60
        while crash_after and not os.path.exists(crash_after) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)  # as a decoder segfault or the OOM killer would
    if "broken" in source.video_id:
        raise UserError(f"cannot decode video {source.path}: broken")
    return fake_array(source.video_id), {"fps": 10.0}


def fake_records(tmp_path: Path, n: int) -> list[VideoRecord]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    records = []
    for i in range(n):
        if not (src / f"v{i:02d}.avi").exists():
            (src / f"v{i:02d}.avi").write_bytes(b"x" * (i + 1))
        records.append(VideoRecord(f"UCF-101/C{i % 3}/v{i:02d}", str(src / f"v{i:02d}.avi"), i % 3))
    return records[::-1]  # the runner sorts


PROV = {"format_version": 2, "cache": "fake", "settings": {}, "resolution": None, "dataset": "d", "source_root": "/"}


def run(records, out, compute=fake_entry, provenance=PROV, compression="lzf", **kw):
    target = Target("fake", Path(out), provenance, Precompute(compute=compute, compression=compression))
    root = Path(records[0].path).parent.parent
    args = {"workers": 1, "shard": (0, 1), "videos_per_part": 2, "desc": "t", "progress": False}
    return run_precompute(records=records, targets=[target], root=root, **{**args, **kw})


def assert_complete(out, records):
    reader = CacheReader(out, expect=PROV, root=Path(records[0].path).parent.parent)
    reader.check(records)
    for r in records:
        expected = fake_array(r.video_id)
        np.testing.assert_array_equal(reader.read(r.video_id, 0, len(expected)), expected)


def test_parts_and_shards_are_deterministic():
    recs = [VideoRecord(f"v{i}", "", 0) for i in (3, 1, 4, 0, 2)]
    assert [[r.video_id for r in p] for p in plan_parts(recs, 2)] == [["v0", "v1"], ["v2", "v3"], ["v4"]]
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match="precompute.shard"):
            parse_shard(bad)


def start_writer(tmp_path: Path, out: Path, n: int, delay: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        from functools import partial
        from test_precompute import fake_entry, fake_records, run
        from pathlib import Path
        records = fake_records(Path({str(tmp_path)!r}), {n})
        s = run(records, Path({str(out)!r}), compute=partial(fake_entry, delay={delay}))
        print(s.line())
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_resume_after_the_writer_is_killed(tmp_path):
    records = fake_records(tmp_path, 12)
    out = tmp_path / "cache"
    proc = start_writer(tmp_path, out, 12, 0.15)
    deadline = time.monotonic() + 60
    while len(list(out.glob("part-*.h5"))) < 2:  # parts 0 and 1 done, part 2 under way
        assert proc.poll() is None and time.monotonic() < deadline, "the writer ended before it was killed"
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = sorted(p.name for p in out.glob("part-*.h5"))
    assert complete[:2] == ["part-00000.h5", "part-00001.h5"] and len(complete) < 6
    done = sorted(records, key=lambda r: r.video_id)[: 2 * len(complete)]
    assert_complete(out, done)  # every complete part reads back while the cache is half filled
    assert len(CacheReader(out).missing([r.video_id for r in records])) == 12 - len(done)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("part-*.h5")}

    log = tmp_path / "computed.txt"
    summary = run(records, out, compute=partial(fake_entry, log=str(log)))
    assert summary.ok and summary.skipped == len(done) and summary.done == 12 - len(done)
    assert sorted(log.read_text().split()) == sorted(r.video_id for r in records if r not in done)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished parts were not rewritten
    assert not list(out.glob("*.tmp*"))
    assert_complete(out, records)
    assert run(records, out).done == 0  # a third run has nothing to do


def test_failed_video_is_reported_kept_out_and_retried(tmp_path, capsys):
    records = fake_records(tmp_path, 5)
    bad = VideoRecord("UCF-101/C0/broken", records[0].path, 0)
    out = tmp_path / "cache"
    summary = run([*records, bad], out, videos_per_part=3)
    assert not summary.ok and list(summary.failed) == ["UCF-101/C0/broken (fake)"] and summary.done == 5
    assert "warning: skipped video UCF-101/C0/broken" in capsys.readouterr().err
    assert_complete(out, records)
    with pytest.raises(UserError, match="lacks 1 of 6 videos.*could not be decoded"):
        CacheReader(out).check([*records, bad])
    log = tmp_path / "computed.txt"
    again = run([*records, bad], out, videos_per_part=3, compute=partial(fake_entry, log=str(log)))
    assert log.read_text().split() == ["UCF-101/C0/broken"] and len(again.failed) == 1
    assert_complete(out, records)  # the rebuilt part kept the entries it had (copied, not recomputed)


def test_a_worker_that_dies_is_named_not_waited_for(tmp_path):
    records = fake_records(tmp_path, 6)
    crash = VideoRecord("UCF-101/C1/crash", records[0].path, 1)
    slow = VideoRecord("UCF-101/C1/a_slow", records[1].path, 1)  # part 1 is [a_slow, crash]
    out = tmp_path / "cache"
    # one worker computes a_slow, the other the crash, which waits for part 0 to be written: the main process
    # is then waiting for a_slow, whose worker is alive, when the other worker dies
    compute = partial(fake_entry, crash_after=str(out / "part-00000.h5"))
    msg = "worker process died .* while computing UCF-101/C1/crash; finished parts are kept: rerun to resume"
    with pytest.raises(UserError, match=msg):  # the video of the worker that died, not the others'
        run([*records, crash, slow], out, workers=2, compute=compute)
    assert (out / "part-00000.h5").exists() and not list(out.glob("*.tmp*"))  # the parts before it are kept


def test_changed_source_is_recomputed(tmp_path):
    records = fake_records(tmp_path, 4)
    out = tmp_path / "cache"
    run(records, out)
    Path(records[1].path).write_bytes(b"changed content")
    log = tmp_path / "computed.txt"
    summary = run(records, out, compute=partial(fake_entry, log=str(log)))
    assert log.read_text().split() == [records[1].video_id] and summary.skipped == 3


def test_shards_fill_one_cache_equal_to_a_single_run(tmp_path):
    records = fake_records(tmp_path, 9)
    one, two = tmp_path / "one", tmp_path / "two"
    run(records, one)
    a = run(records, two, shard=(0, 2))
    assert a.parts_written == 3 and len(CacheReader(two).missing([r.video_id for r in records])) == 4
    b = run(records, two, shard="1/2", workers=2)  # a pool of worker processes, as another machine would
    assert b.parts_written == 2 and b.done == 4
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    index = {k: v["videos"] for k, v in read_parts(one).items()}
    assert index == {k: v["videos"] for k, v in read_parts(two).items()}
    assert_complete(two, records)


def test_different_settings_are_refused(tmp_path):
    records = fake_records(tmp_path, 2)
    run(records, tmp_path / "cache")
    msg = "filled without settings.preset but the config asks for settings.preset='fast'; delete"
    with pytest.raises(UserError, match=msg):
        run(records, tmp_path / "cache", provenance={**PROV, "settings": {"preset": "fast"}})


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_the_stage_chooses_its_hdf5_filter(tmp_path, compression):
    import h5py

    records = fake_records(tmp_path, 3)
    assert run(records, tmp_path / "cache", compression=compression).ok
    assert_complete(tmp_path / "cache", records)
    for part in (tmp_path / "cache").glob("part-*.h5"):
        with h5py.File(part, "r") as f:
            for v in json.loads(f.attrs["videos"]):
                assert (f[v].compression, f[v].fletcher32) == (compression, True)  # still checksummed
    with pytest.raises(UserError, match=r"^the fake view's precompute stage has compression='zstd'; use one of"):
        run(records, tmp_path / "other", compression="zstd")
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").glob("part-*.h5"))


def damage(part: Path, how: str) -> None:
    if how == "zero bytes":
        part.write_bytes(b"")
    elif how == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    else:  # flipped bytes inside the first entry's stored data
        import h5py

        with h5py.File(part, "r") as f:
            info = f[json.loads(f.attrs["videos"])[0]].id.get_chunk_info(1)
        with open(part, "r+b") as f:
            f.seek(info.byte_offset + 2)
            flipped = bytes(b ^ 0xFF for b in f.read(2))
            f.seek(info.byte_offset + 2)
            f.write(flipped)


@pytest.mark.parametrize("how", ["flipped bytes", "truncated", "zero bytes"])
def test_a_damaged_part_is_found_and_only_its_damage_recomputed(tmp_path, capsys, how):
    records = fake_records(tmp_path, 6)
    out = tmp_path / "cache"
    run(records, out)
    damage(out / "part-00001.h5", how)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.h5")}
    log = tmp_path / "computed.txt"
    summary = run(records, out, compute=partial(fake_entry, log=str(log)))
    err = capsys.readouterr().err
    assert "part-00001.h5" in err and "recomputing" in err
    part1 = [r.video_id for r in sorted(records, key=lambda r: r.video_id)[2:4]]
    expected = part1[:1] if how == "flipped bytes" else part1  # the damaged entry, or the whole unreadable part
    assert log.read_text().split() == expected and summary.damaged == len(expected)
    assert summary.parts_written == 1 and summary.ok
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.h5") if p.name != "part-00001.h5"} == {
        k: v for k, v in stamps.items() if k != "part-00001.h5"
    }  # the other parts were not touched
    assert_complete(out, records)


def test_two_writers_on_one_shard_equal_a_single_run(tmp_path):
    records = fake_records(tmp_path, 8)
    one, two = tmp_path / "one", tmp_path / "two"
    run(records, one)
    procs = [start_writer(tmp_path, two, 8, 0.05) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computed = [int(o.split(": ")[1].split(" entries computed")[0]) for o in outs]
    assert sum(computed) == 8  # every entry computed once: the second run found the parts locked or done
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert not list(two.glob("*.tmp*"))
    assert_complete(two, records)


# ---- mvcoding precompute -------------------------------------------------------------------------


def write_config(tmp_path: Path, views: str) -> Path:
    """A config folder with the repo's base.yaml and dataset group, and an experiment on fake UCF101."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR / "dataset", configs / "dataset")
    shutil.copy(CONFIG_DIR / "base.yaml", configs / "base.yaml")
    text = "defaults:\n  - base\n  - dataset: ucf101\n  - _self_\nviews:\n  rgb: {}\n" + textwrap.indent(views, "  ")
    (configs / "exp.yaml").write_text(text)
    return configs / "exp.yaml"


@pytest.fixture
def ucf(tmp_path):
    root = make_ucf101_tree(tmp_path / "ucf101", classes=("ApplyEyeMakeup", "HammerThrow"), groups=3, frames=6)
    return root


def test_precompute_flow_fills_the_cache_the_view_reads(tmp_path, ucf, capsys):
    config = write_config(tmp_path, "flow:\n  algorithm: dis\n  resolution: [24, 32]\n  encoder: small3d\n")
    args = [str(config), f"dataset.root={ucf}", "precompute.videos_per_part=5", "precompute.workers=1"]
    bad = ucf / "UCF-101/HammerThrow/v_HammerThrow_g02_c01.avi"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert main(["flow", *args]) == 1
    captured = capsys.readouterr()
    assert "UCF-101/HammerThrow/v_HammerThrow_g02_c01" in captured.err and "11 entries computed" in captured.out

    # the trainer's view (built from the same config) reads the same cache
    view = build_views(load_config(config, args[1:]), ["flow"])["flow"]
    assert view.cache.path.parent == ucf / "cache/ucf101" and view.cache.path.name.startswith("flow-dis-24x32-")
    reader = view.cache
    good = sorted(p for p in (ucf / "UCF-101").rglob("*.avi") if p != bad)
    ids = [str(p.relative_to(ucf).with_suffix("")) for p in good]
    assert reader.missing(ids) == []
    x = reader.read(ids[0], 0, 6)
    assert x.shape == (6, 2, 24, 32) and x.dtype == np.uint8
    assert np.abs(dequantize(x, 20.0)).max() > 0.5  # the square moves: real flow, not zeros
    a = reader.attrs(ids[0])
    assert reader.num_frames(ids[0]) == 6 and a["source_size"] == good[0].stat().st_size
    assert a["source_path"] == f"{ids[0]}.avi"

    write_video(bad, np.zeros((6, 32, 32, 3), np.uint8))  # fixed: a rerun computes just that video
    assert main(["flow", *args]) == 0
    assert "1 entries computed, 11 already cached, 0 failed" in capsys.readouterr().out
    records = [
        VideoRecord(str(p.relative_to(ucf).with_suffix("")), str(p), 0) for p in (ucf / "UCF-101").rglob("*.avi")
    ]
    view.check(records)


def test_precompute_all_decodes_each_video_once_for_every_cached_view(tmp_path, ucf, capsys, monkeypatch):
    depth = tmp_path / "depth_pngs"
    for video in (ucf / "UCF-101").rglob("*.avi"):
        (depth / video.relative_to(ucf / "UCF-101").with_suffix("")).mkdir(parents=True)
        for t in range(6):
            cv2.imwrite(str(depth / video.relative_to(ucf / "UCF-101").with_suffix("") / f"{t:05d}.png"),
                        np.full((32, 32), 1000 + t, np.uint16))  # fmt: skip
    views = "flow:\n  algorithm: farneback\ndepth:\n  source: folder\n  folder: " + str(depth) + "\n"
    config = write_config(tmp_path, views)
    import mvcoding.video

    calls = []
    decode_all = mvcoding.video.decode_all
    monkeypatch.setattr(mvcoding.video, "decode_all", lambda *a: calls.append(a[0]) or decode_all(*a))
    assert main(["all", str(config), f"dataset.root={ucf}", "precompute.workers=1"]) == 0
    out = capsys.readouterr().out
    assert "24 entries computed" in out and "flow-farneback-native" in out and "depth-folder-native" in out
    assert len(calls) == 12 == len(set(calls))  # flow decodes; depth reads its PNGs: one decode per video


def test_precompute_user_errors_are_one_line(tmp_path, ucf, capsys):
    config = write_config(tmp_path, "flow:\n  algorithm: farneback\n")
    assert main(["flow", str(config), f"dataset.root={ucf}", "precompute.shard=2/2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: precompute.shard='2/2' is not valid") and err.count("\n") == 1
    assert main(["depth", str(config), f"dataset.root={ucf}"]) == 2
    assert "has no views.depth; views in it: rgb, flow" in capsys.readouterr().err
    assert main(["rgb", str(config), f"dataset.root={ucf}"]) == 2
    assert "view 'rgb' has no precompute stage" in capsys.readouterr().err
    assert main(["flow", str(config), f"dataset.root={ucf}", "+views.flow.params={preset: fast}"]) == 2
    assert "unknown parameter 'preset' of flow algorithm 'farneback'" in capsys.readouterr().err
    # the view is built as in training: a misspelt setting stops before anything is computed
    assert main(["flow", str(config), f"dataset.root={ucf}", "views.flow.algoritm=dis"]) == 2
    assert "unknown setting views.flow.algoritm; valid settings for view 'flow'" in capsys.readouterr().err
    assert not (ucf / "cache").exists()
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "precompute.shard=i/n" in capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["tvl1", "raft_small"])
def test_a_flow_algorithm_that_cannot_run_here_is_one_line_before_any_video(tmp_path, ucf, capsys, monkeypatch,
                                                                            algorithm):  # fmt: skip
    import torch

    import mvcoding.video

    if algorithm == "tvl1" and hasattr(cv2, "optflow"):
        pytest.skip("opencv-contrib is installed: TV-L1 runs here")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no RAFT weights there
    decoded = []
    monkeypatch.setattr(mvcoding.video, "decode_all", lambda *a: decoded.append(a[0]))
    config = write_config(tmp_path, f"flow:\n  algorithm: {algorithm}\n")
    assert main(["flow", str(config), f"dataset.root={ucf}", "precompute.workers=1"]) == 2
    err = capsys.readouterr().err
    fix = (
        "pip install --force-reinstall --no-deps opencv-contrib-python"
        if algorithm == "tvl1"
        else "not found; download"
    )
    assert err.startswith(f"error: views.flow.algorithm={algorithm} cannot run here") and fix in err, err
    assert err.count("\n") == 1 and decoded == []  # one line, and no video was decoded
    assert not list((ucf / "cache").rglob("part-*")) and not list((ucf / "cache").rglob("provenance.json"))


def test_tool_scripts_and_the_command_run(tmp_path):
    for tool in ("precompute_flow", "precompute_depth"):
        out = subprocess.run(
            [sys.executable, str(TESTS.parent / "tools" / f"{tool}.py"), "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0 and "CONFIG" in out.stdout.upper() and "resumable" in out.stdout
    for cmd in ([sys.executable, str(TESTS.parent / "tools" / "precompute_flow.py")],
                [sys.executable, "-m", "mvcoding", "precompute", "flow"]):  # fmt: skip
        out = subprocess.run([*cmd, str(tmp_path / "none.yaml")], capture_output=True, text=True)
        assert out.returncode == 2 and "Traceback" not in out.stderr and "none.yaml" in out.stderr


def test_depth_from_a_folder_of_depth_images(tmp_path, ucf):
    depth = tmp_path / "depth_pngs"
    for video in (ucf / "UCF-101").rglob("*.avi"):
        d = video.relative_to(ucf / "UCF-101").with_suffix("")
        (depth / d).mkdir(parents=True)
        for t in range(6):
            img = np.full((32, 32), 1000 + 100 * t, np.uint16)
            img[:4] = 0  # invalid rows, as sensors write
            cv2.imwrite(str(depth / d / f"{t:05d}.png"), img)
    config = write_config(tmp_path, f"depth:\n  source: folder\n  folder: {depth}\n  resolution: [16, 16]\n")
    assert main(["depth", str(config), f"dataset.root={ucf}", "precompute.workers=2"]) == 0
    reader = build_views(load_config(config, [f"dataset.root={ucf}"]), ["depth"])["depth"].cache
    vid = "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"
    x = reader.read(vid, 0, 6)
    assert x.shape == (6, 1, 16, 16) and (x[:, :, :2] == 0).all()
    a = reader.attrs(vid)
    back = dequantize_depth(x[:, 0, 8, 8], a["depth_lo"], a["depth_hi"])
    np.testing.assert_allclose(back, 1000 + 100 * np.arange(6), atol=(a["depth_hi"] - a["depth_lo"]) / 508 + 1e-3)


def test_midas_without_local_repo_says_what_to_get(tmp_path, ucf, capsys):
    config = write_config(tmp_path, f"depth:\n  source: midas\n  hub_repo: {tmp_path / 'MiDaS'}\n")
    assert main(["depth", str(config), f"dataset.root={ucf}"]) == 2
    assert "is not a MiDaS checkout; clone https://github.com/isl-org/MiDaS" in capsys.readouterr().err


def test_depth_on_the_synthetic_ground_truth(tmp_path):
    gen = {"classes": 2, "videos_per_class": 3, "frames": 6, "size": 32, "workers": 1}
    overrides = [f"dataset.root={tmp_path / 'syn'}", *(f"dataset.generate.{k}={v}" for k, v in gen.items())]
    overrides += ["+views.depth={source: synthetic}", "precompute.workers=1"]
    config = str(CONFIG_DIR / "synthetic_rgb_flow.yaml")
    assert main(["depth", config, *overrides]) == 0
    reader = build_views(load_config(config, overrides), ["depth"])["depth"].cache
    vid = next(iter(reader.index))
    x = reader.read(vid, 0, 6)
    assert x.shape == (6, 1, 32, 32) and x.min() >= 1 and x.max() == 255  # all valid, full range used


def test_cache_status_counts_filled_missing_and_damaged(tmp_path, ucf, capsys):
    from mvcoding.precompute import status

    config = write_config(tmp_path, "flow:\n  algorithm: farneback\n  resolution: [24, 32]\n")
    cfg = load_config(config, [f"dataset.root={ucf}", "precompute.videos_per_part=4", "precompute.shard=0/2"])
    (row,) = status(cfg)
    assert (row["view"], row["videos"], row["filled"], row["missing"], row["bytes"]) == ("flow", 12, 0, 12, 0)
    assert (
        main(["flow", str(config), f"dataset.root={ucf}", "precompute.videos_per_part=4", "precompute.shard=0/2"]) == 0
    )
    (row,) = status(cfg)
    assert (row["filled"], row["missing"], row["damaged_parts"]) == (8, 4, 0) and row["bytes"] > 0
    (Path(row["path"]) / "part-00000.h5").write_bytes(b"")
    (row,) = status(cfg)
    assert (row["filled"], row["missing"], row["damaged_parts"]) == (4, 8, 1)
    from mvcoding.cli import main as cli

    assert cli(["cache", "status", str(config), f"dataset.root={ucf}"]) == 0
    assert "flow       incomplete 4/12 filled, 8 missing, 0 failed, 1 damaged parts" in capsys.readouterr().out
