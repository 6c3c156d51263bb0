"""A stopped `mvcoding precompute`: killing only its main process (kill -9, as the OOM killer does, or
SIGTERM) with 2 worker processes leaves no process of the run and no part lock behind; SIGTERM is one
line on stderr and a non-zero exit with only complete parts; a rerun takes the parts over at once and
ends with the cache of an uninterrupted run."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SYNTHETIC, tiny
from mvcoding.cache import CacheReader, read_provenance, verify_part
from mvcoding.precompute import main as precompute

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

# the real command, with each video's decode slowed down so that the kill lands mid-run
SLOW_PRECOMPUTE = textwrap.dedent("""
    import sys, time
    import mvcoding.video as video
    decode_all = video.decode_all
    def slow(*args, **kwargs):
        time.sleep(0.5)
        return decode_all(*args, **kwargs)
    video.decode_all = slow
    from mvcoding.precompute import main
    sys.exit(main(sys.argv[1:]))
""")


def overrides(root: Path, cache: Path) -> list[str]:
    return tiny(root, **{"cache.dir": cache, "precompute.videos_per_part": 2})  # 24 videos, 12 parts


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def children(pid: int) -> dict[int, int]:
    """{pid: start time} of the processes whose parent is `pid`."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (s := stat(int(p.name))) and s[1] == pid and s[0] not in "ZX":
            out[int(p.name)] = s[2]
    return out


def alive(procs: dict[int, int]) -> list[int]:
    """Those of `procs` ({pid: start time}) still running (a zombie has ended)."""
    return [pid for pid, start in procs.items() if (s := stat(pid)) and s[2] == start and s[0] not in "ZX"]


def entries(cache: Path) -> dict[str, dict]:
    """{cache folder name: {video_id: (array, attrs)}} of every cache under `cache`."""
    out = {}
    for folder in sorted(p.parent for p in cache.rglob("provenance.json")):
        reader = CacheReader(folder, expect=read_provenance(folder))
        out[folder.name] = {v: (reader.read(v, 0, reader.num_frames(v)), reader.attrs(v)) for v in sorted(reader.index)}
        reader.close()
    return out


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("uninterrupted")
    assert precompute(["flow", SYNTHETIC, *overrides(synthetic_root, cache), "precompute.workers=1"]) == 0
    return entries(cache)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_the_main_process_leaves_no_worker_and_no_lock(synthetic_root, tmp_path, uninterrupted, capsys, sig):
    cache = tmp_path / "cache"
    args = ["flow", SYNTHETIC, *overrides(synthetic_root, cache), "precompute.workers=2"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: a worker left behind would keep a pipe open
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_PRECOMPUTE, *args], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 120
        workers: dict[int, int] = {}
        while not (list(cache.rglob("part-*.h5")) and len(workers) >= 2):  # a part written, both workers busy
            assert proc.poll() is None, f"precompute ended before the kill: {log.read_text()}"
            assert time.monotonic() < deadline, "precompute did not start its workers"
            workers.update(children(proc.pid))
            time.sleep(0.05)
        workers.update(children(proc.pid))
        proc.send_signal(sig)  # only the main process
        proc.wait(timeout=60)
        err = log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive(workers)
    for pid in left:  # not to leave them running after a failure
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers of the killed run still running 5 s after it: {left}"
    for lock in cache.rglob("part-*.lock"):  # no lock of the dead run is held
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if anyone holds it
    parts = sorted(cache.rglob("part-*.h5"))
    assert 1 <= len(parts) < 12, "the kill did not land mid-run"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
        assert err.strip().splitlines()[-1:] == [err.strip()] and "rerun the same command to resume" in err, err
        assert not list(cache.rglob("*.tmp*"))  # nothing half-written
        for part in parts:  # every part there is complete and reads through its checksums
            videos, _, damaged = verify_part(part)
            assert len(videos) == 2 and not damaged
    else:
        assert proc.returncode == -signal.SIGKILL

    t0 = time.monotonic()
    assert precompute(args) == 0  # the rerun: no waiting on the dead run's parts
    err = capsys.readouterr().err
    assert "being filled by another process" not in err and time.monotonic() - t0 < 60, err
    assert not list(cache.rglob("*.tmp*"))
    got = entries(cache)
    assert got.keys() == uninterrupted.keys()
    for name, want in uninterrupted.items():
        assert got[name].keys() == want.keys()
        for vid, (array, attrs) in want.items():
            np.testing.assert_array_equal(got[name][vid][0], array)
            assert got[name][vid][1] == attrs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_while_a_part_is_committed_stops_after_the_part_is_on_disk(tmp_path, monkeypatch, sig):
    from test_precompute import assert_complete, fake_records, run

    from mvcoding import cache
    from mvcoding import precompute as pc

    records = fake_records(tmp_path, 6)  # 3 parts of 2
    commit = cache.PartWriter.commit

    def signalled(self, failed):
        os.kill(os.getpid(), sig)  # arrives while the part is being written
        commit(self, failed)

    monkeypatch.setattr(cache.PartWriter, "commit", signalled)
    before = signal.getsignal(sig)
    with pytest.raises(pc.Interrupted) as stop, pc._stop_on_signals():
        run(records, tmp_path / "cache")
    assert stop.value.signum == sig and signal.getsignal(sig) == before
    out = tmp_path / "cache"
    assert [p.name for p in out.glob("part-*.h5")] == ["part-00000.h5"] and not list(out.glob("*.tmp*"))
    assert_complete(out, sorted(records, key=lambda r: r.video_id)[:2])  # the part it was writing, whole
