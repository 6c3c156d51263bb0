"""`mvcoding precompute VIEW|all CONFIG [overrides]`: fill the HDF5 caches of views' precompute stages.

    summary = run_precompute(records=index.records("all"), targets=[Target("flow", path, prov, stage)],
                             root=cfg.dataset.root, workers=8, shard=(0, 4), videos_per_part=16)

Any view may declare a precompute stage (mvcoding.registry.Precompute); this module runs it, knowing
nothing of what it computes. The sorted videos are cut into parts of `videos_per_part`; shard i/n
fills parts i, i+n, i+2n, ..., so pieces run on different machines land in one cache and read as
one. Worker processes decode each video once for all the stages being filled (per resolution) and
run the stages; the main process writes each part (mvcoding.cache.PartWriter) under a per-process
temporary name and renames it into place when complete.

Resume and repair: a rerun reads its parts through their checksums (precompute.verify, default on)
and rebuilds a part only for what it lacks: damaged entries or unreadable parts, videos that failed
before (they are retried), videos whose source file changed, videos new to the part. What is whole
and current is copied, not recomputed. A video that cannot be decoded is named in a warning,
recorded as failed in its part, and makes the run exit 1.

Concurrency: a writer holds each part's lock (fcntl) while it plans and writes that part. A second
run on the same shard skips the parts that are locked, fills the rest, then waits for the locked ones
and checks them: the result equals a single run's.

Stopping: the worker processes hold no lock (a forked child closes its copies: mvcoding.cache.PartLock)
and die with the main process (Linux: PR_SET_PDEATHSIG; elsewhere a watchdog on the parent's pid), so
a main process killed in any way (kill -9, the OOM killer) leaves nothing running and a rerun takes its
parts over at once. SIGTERM and SIGINT of `mvcoding precompute` stop the workers, print one line and
exit 128 + the signal's number; a part being committed is finished first, so only complete parts stay.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from mvcoding.cache import (
    PartLock,
    PartWriter,
    cache_location,
    ensure_provenance,
    identity_difference,
    part_file,
    part_paths,
    read_part,
    source_identity,
    verify_part,
)
from mvcoding.errors import UserError
from mvcoding.registry import Precompute, Source


@dataclass(frozen=True)
class Target:
    """One cache to fill: the view that declares it, its folder and provenance, and the stage."""

    view: str
    path: Path
    provenance: dict
    stage: Precompute


@dataclass
class Summary:
    """What a run did, counted in cache entries (one per video and cache)."""

    caches: list[str]
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # "video_id (view)": message
    damaged: int = 0  # entries (or whole parts' entries) found damaged and recomputed
    parts_written: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        rate = f", {self.done / self.seconds:.1f} entries/s" if self.done and self.seconds > 0 else ""
        repaired = f", {self.damaged} damaged recomputed" if self.damaged else ""
        return (
            f"{', '.join(self.caches)}: {self.done} entries computed, {self.skipped} already cached, "
            f"{len(self.failed)} failed{repaired}; {self.parts_written} parts written, {self.parts_skipped} "
            f"complete; {self.seconds:.1f} s{rate}"
        )


def parse_shard(shard: str | Sequence[int]) -> tuple[int, int]:
    """'i/n' (or (i, n)) -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except (ValueError, TypeError):
        i, n = -1, 0
    if not 0 <= i < n:
        raise UserError(f"precompute.shard={shard!r} is not valid; use i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def plan_parts(records, videos_per_part: int) -> list[list]:
    """The records sorted by video_id, cut into consecutive parts of videos_per_part (the last may be shorter)."""
    if videos_per_part < 1:
        raise UserError(f"precompute.videos_per_part={videos_per_part} is not valid; use a positive number")
    ordered = sorted({r.video_id: r for r in records}.values(), key=lambda r: r.video_id)
    return [ordered[i : i + videos_per_part] for i in range(0, len(ordered), videos_per_part)]


# ---- stopping --------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT reached `mvcoding precompute` (raised in its main thread)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Deferral(threading.local):
    depth = 0  # > 0 while a part is committed: a signal waits for the commit to end
    pending = 0  # the signal that arrived meanwhile


_DEFER = _Deferral()
_STOPPING_PID = [0]  # the process whose signals _on_signal handles


def _on_signal(signum, frame) -> None:
    if os.getpid() != _STOPPING_PID[0]:  # a forked child (the dataset generator's pool): the default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _DEFER.depth:
        _DEFER.pending = _DEFER.pending or signum
        return
    raise Interrupted(signum)


@contextmanager
def _signals_deferred():
    """A signal that arrives in the block (where the stop handlers are installed) stops the run after it."""
    _DEFER.depth += 1
    try:
        yield
    finally:
        _DEFER.depth -= 1
    if not _DEFER.depth and _DEFER.pending:
        signum, _DEFER.pending = _DEFER.pending, 0
        raise Interrupted(signum)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def _stop_on_signals():
    """SIGTERM and SIGINT raise Interrupted in the main thread (outside a part's commit); the previous
    handlers come back after the block."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        _STOPPING_PID[0] = os.getpid()
        for s in STOP_SIGNALS:
            previous[s] = signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _DEFER.pending = 0


def _die_with_parent(parent: int) -> None:
    """End this (worker) process when `parent` dies: PR_SET_PDEATHSIG on Linux, else a watchdog thread."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


_BOARD = None  # in a worker: the shared board where it says which job it runs (_pool_results)
_SLOT = -1


def _init_worker(parent: int = 0, board=None, board_lock=None) -> None:
    """One thread per worker process (the processes are the parallelism); signals are the parent's to
    handle; the process dies with its parent; it takes a slot of `board` to say which job it runs."""
    global _BOARD, _SLOT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's stop handler
    if parent:
        _die_with_parent(parent)
    if board is not None and board_lock is not None:
        with board_lock:
            free = [i for i in range(0, len(board), 2) if board[i] == 0]
            if free:
                board[free[0]] = os.getpid()
                _BOARD, _SLOT = board, free[0]
    os.environ["OMP_NUM_THREADS"] = "1"
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def compute_entries(stages: Sequence[tuple[str, Precompute]], root, job) -> tuple[str, list]:
    """Run the stages `job = (record, [stage index, ...])` asks for on one video, decoding it once per
    resolution: (video_id, [(stage index, array, attrs) or (stage index, None, error message)])."""
    record, wanted = job
    try:
        identity = source_identity(record.path, root)  # before decoding: a file replaced meanwhile reads stale
    except OSError as e:
        return record.video_id, [(s, None, f"cannot read {record.path} ({e.strerror})") for s in wanted]
    memo: dict = {}
    out = []
    for s in wanted:
        view, stage = stages[s]
        source = Source(record, stage.resolution, memo)
        try:
            array, attrs = stage.compute(source)
            if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[0] < 1:
                shape = getattr(array, "shape", type(array).__name__)
                raise UserError(f"view {view}'s precompute returned {shape}, not a (T, C, H, W) numpy array")
            attrs = dict(attrs)
            if "fps" not in attrs:
                attrs["fps"] = source.fps
            out.append((s, array, {**attrs, **identity}))
        except UserError as e:
            out.append((s, None, str(e)))
        except Exception as e:  # any failure of one video must not stop the others
            out.append((s, None, f"{type(e).__name__}: {e}"))
    return record.video_id, out


class Progress:
    """A tqdm bar on a terminal; on a log file, one line every `every` seconds."""

    def __init__(self, total: int, initial: int, desc: str, every: float = 30.0, enabled: bool = True):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.n, self.total, self.desc, self.every = initial, total, desc, every
        self.t0 = self.last = time.monotonic()
        self.start_n = initial
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="video", file=sys.stderr, dynamic_ncols=True)

    def update(self) -> None:
        self.n += 1
        if self.tty:
            self.bar.update()
        elif self.enabled and (time.monotonic() - self.last >= self.every or self.n == self.total):
            self.last = time.monotonic()
            rate = (self.n - self.start_n) / max(self.last - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            print(f"{self.desc}: {self.n}/{self.total} videos, {rate:.2f}/s, eta {eta / 60:.1f} min", file=sys.stderr)

    def write(self, line: str) -> None:
        if self.tty:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.tty:
            self.bar.close()


@dataclass
class _PartPlan:
    k: int
    locks: list
    keep: list[list[str]]  # per target: entries to copy from the existing part
    todo: dict[str, list[int]]  # video_id -> targets to compute it for
    rewrite: list[bool]  # per target: the part file must be written


COMPRESSIONS = ("lzf", "gzip", None)  # the HDF5 filters a stage may store with (Precompute.compression)


def run_precompute(
    *,
    records: list,
    targets: Sequence[Target],
    root,
    workers: int,
    shard: tuple[int, int] | str = (0, 1),
    videos_per_part: int = 16,
    desc: str = "precompute",
    start_method: str = "fork",
    progress: bool = True,
    verify: bool = True,
) -> Summary:
    """Fill the caches of `targets` for this shard's parts of `records` (see the module doc).

    workers <= 1 runs the stages in this process; otherwise `workers` processes started with
    `start_method` ("spawn" where a stage uses a GPU). progress=False: no bar or progress lines
    (warnings still print). verify=False trusts complete parts without reading them. Returns a
    Summary; nothing raises for a single bad video.
    """
    t0 = time.monotonic()
    i, n = parse_shard(shard)
    parts = plan_parts(records, videos_per_part)
    for t in targets:
        if t.stage.compression not in COMPRESSIONS:
            raise UserError(
                f"the {t.view} view's precompute stage has compression={t.stage.compression!r}; use one "
                f"of: {', '.join(map(str, COMPRESSIONS))}"
            )
        if t.stage.setup is not None:
            t.stage.setup()  # fail before any work: missing weights, opencv-contrib and the like
    for t in targets:
        ensure_provenance(t.path, t.provenance)
    summary = Summary(caches=[str(t.path) for t in targets])
    stages = [(t.view, t.stage) for t in targets]
    mine = list(range(i, len(parts), n))
    bar = Progress(sum(len(parts[k]) for k in mine), 0, desc, enabled=progress)
    try:
        waiting = _fill(mine, False, parts, targets, stages, root, workers, start_method, verify, bar, summary)
        for k in waiting:
            bar.write(
                f"part {k} is being filled by another process (pid {PartLock(targets[0].path, k).holder()}); "
                f"waiting for it"
            )
        _fill(waiting, True, parts, targets, stages, root, workers, start_method, verify, bar, summary)
    finally:
        bar.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _lock_part(targets: Sequence[Target], k: int, block: bool) -> list | None:
    locks = []
    for t in targets:
        lock = PartLock(t.path, k)
        if not lock.acquire(block):
            for held in locks:
                held.release()
            return None
        locks.append(lock)
    for t in targets:  # ours now: temporary files of part k were left by a killed writer
        for tmp in t.path.glob(f"{part_file(t.path, k).name}.tmp*"):
            tmp.unlink(missing_ok=True)
    return locks


def _existing(path: Path, verify: bool) -> tuple[dict, dict]:
    """(videos {id: attrs} that can be kept, damaged {id or "*": why}) of an existing part file."""
    if not path.exists():
        return {}, {}
    if verify:
        videos, _, damaged = verify_part(path)
        return videos, damaged
    try:
        return read_part(path)["videos"], {}
    except UserError as e:
        return {}, {"*": str(e)}


def _plan_part(k: int, locks: list, part: list, targets, root, verify: bool, bar: Progress, summary: Summary):
    keep, rewrite, todo = [], [], {}
    for ti, t in enumerate(targets):
        path = part_file(t.path, k)
        have, damaged = _existing(path, verify)
        if damaged:
            whole = "*" in damaged
            what = "unreadable" if whole else f"{len(damaged)} damaged entries, e.g. {next(iter(damaged))}"
            bar.write(f"warning: {path}: {what} ({next(iter(damaged.values()))}); recomputing them")
            summary.damaged += len(part) if whole else len(damaged)
        kept = [
            r.video_id
            for r in part
            if r.video_id in have and identity_difference(have[r.video_id], r.path, root) is None
        ]
        for r in part:
            if r.video_id not in kept:
                todo.setdefault(r.video_id, []).append(ti)
        keep.append(kept)
        rewrite.append(len(kept) < len(part) or bool(damaged) or set(have) != set(kept))
        summary.skipped += len(kept)
    return _PartPlan(k, locks, keep, todo, rewrite)


def _fill(ks, block, parts, targets, stages, root, workers, start_method, verify, bar, summary) -> list:
    """Fill parts `ks` whose locks can be had (all of them with block=True); returns the others."""
    plans, waiting = [], []
    try:
        for k in ks:
            locks = _lock_part(targets, k, block)
            if locks is None:
                waiting.append(k)
                continue
            plan = _plan_part(k, locks, parts[k], targets, root, verify, bar, summary)
            if not any(plan.rewrite):
                summary.parts_skipped += 1
                for _ in parts[k]:
                    bar.update()
                for lock in locks:
                    lock.release()
                continue
            plans.append(plan)
        by_id = {r.video_id: r for k in ks for r in parts[k]}
        jobs = [(by_id[vid], wanted) for p in plans for vid, wanted in p.todo.items()]
        results = _results(partial(compute_entries, stages, root), jobs, workers, start_method)
        try:
            for p in plans:
                _write_part(p, results, targets, bar, summary, len(parts[p.k]))
        finally:
            results.close()  # stops the worker processes if we leave early
    finally:
        for p in plans:
            for lock in p.locks:
                lock.release()
    return waiting


def _write_part(p: _PartPlan, results: Iterator, targets, bar: Progress, summary: Summary, size: int):
    import h5py

    writers = [
        PartWriter(t.path, p.k, t.provenance, compression=t.stage.compression) if p.rewrite[ti] else None
        for ti, t in enumerate(targets)
    ]
    failed: list[dict] = [{} for _ in targets]
    try:
        for ti, w in enumerate(writers):
            if w is not None and p.keep[ti]:
                with h5py.File(part_file(targets[ti].path, p.k), "r", locking=False) as old:
                    for vid in p.keep[ti]:
                        w.copy_from(old, vid)
        for _ in range(len(p.todo)):
            vid, entries = next(results)
            for ti, array, attrs in entries:
                if array is None:
                    failed[ti][vid] = attrs
                    summary.failed[f"{vid} ({targets[ti].view})"] = attrs
                    bar.write(f"warning: skipped video {vid} for {targets[ti].view}: {attrs}")
                else:
                    writers[ti].add(vid, array, attrs)
                    summary.done += 1
            bar.update()
        for _ in range(size - len(p.todo)):
            bar.update()
        with _signals_deferred():  # a stop waits for the part to be on disk: only complete parts stay
            for ti, w in enumerate(writers):
                if w is not None:
                    w.commit(failed[ti])
                    summary.parts_written += 1
    finally:
        for w in writers:
            if w is not None:
                w.__exit__(None, None, None)


def _results(work: Callable, jobs: list, workers: int, start_method: str) -> Iterator:
    """work(job) for every job, in order: in this process, or in `workers` processes a few jobs ahead.

    A worker process that dies (killed for memory, or a decoder crash) raises UserError naming the
    videos it may have been working on, instead of waiting forever for its result.
    """
    import cv2

    prev = cv2.getNumThreads()
    # one OpenCV thread per process; set in this process before forking too: a forked child whose
    # parent had already started OpenCV's thread pool blocks forever in cv2.setNumThreads
    cv2.setNumThreads(1)
    try:
        if workers <= 1 or len(jobs) <= 1:
            yield from map(work, jobs)
        else:
            yield from _pool_results(work, jobs, workers, start_method)
    finally:
        cv2.setNumThreads(prev)


def _tracked(work: Callable, i: int, job):
    """work(job) in a worker, with job number i written on the worker's slot of the board meanwhile."""
    if _BOARD is not None:
        _BOARD[_SLOT + 1] = i + 1
    try:
        return work(job)
    finally:
        if _BOARD is not None:
            _BOARD[_SLOT + 1] = 0


def _died_computing(board, procs: list, jobs: list) -> list[str]:
    """The videos that the dead worker processes were computing: those that died of their own (killed for
    memory, a crash), not of the pool's SIGTERM to the others once one had died."""
    for _ in range(50):  # a worker's exit status can take a moment to be collected
        dead = {p.pid: p.exitcode for p in procs if p.exitcode is not None}
        culprits = {pid for pid, code in dead.items() if code not in (0, -signal.SIGTERM)} or set(dead)
        running = [board[i + 1] - 1 for i in range(0, len(board), 2) if board[i] in culprits and board[i + 1] > 0]
        if running:
            return [jobs[j][0].video_id for j in sorted(running)]
        time.sleep(0.02)
    return []


def _pool_results(work: Callable, jobs: list, workers: int, start_method: str) -> Iterator:
    ctx = multiprocessing.get_context(start_method)
    n = min(workers, len(jobs))
    board, board_lock = ctx.RawArray("q", 2 * n), ctx.Lock()  # per worker: its pid, 1 + the job it runs
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(), board, board_lock))
    pending: deque = deque()
    todo = iter(enumerate(jobs))
    procs: dict = {}
    finished = False
    try:
        for i, job in islice(todo, 4 * workers):
            pending.append((job, pool.submit(_tracked, work, i, job)))
        while pending:
            procs.update(getattr(pool, "_processes", None) or {})  # the worker processes (all started by now)
            job, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                suspects = _died_computing(board, list(procs.values()), jobs)
                if not suspects:  # not known: the job waited on, and those that may have been running
                    suspects = [job[0].video_id] + [j[0].video_id for j, f in pending if not f.done()][: workers - 1]
                raise UserError(
                    f"a worker process died (out of memory, or a video that crashes the decoder) while computing "
                    f"{' or '.join(suspects)}; finished parts are kept: rerun to resume (with fewer "
                    f"precompute.workers if memory ran out; with precompute.workers=1 a crash names its video)"
                ) from None
            for i, nxt in islice(todo, 1):
                pending.append((nxt, pool.submit(_tracked, work, i, nxt)))
            finished = not pending  # every job's result is in
            yield result
    finally:
        if not finished:  # left early (an error, a signal): the workers stop now, not after their videos
            procs.update(getattr(pool, "_processes", None) or {})
            for p in procs.values():
                if p.exitcode is None:
                    p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)


# ---- from a config -----------------------------------------------------------------------------


def cached_views(cfg, which: str = "all") -> list[Target]:
    """The targets of view `which` (or of every view with a precompute stage, for "all") of a config,
    built with build_view: a misspelt setting is the same one-line error as in training. Views that
    share a cache (Precompute.name) give one target."""
    from mvcoding.model import build_views

    names = list(cfg.views or {})
    if which != "all" and which not in names:
        raise UserError(
            f"the config has no views.{which}; views in it: {', '.join(names) or 'none'} "
            f"(add views.{which} to the config, or name one of those)"
        )
    views = build_views(cfg, names if which == "all" else [which])
    targets, seen = [], set()
    for name, view in views.items():
        if view.precompute is None:
            continue
        if view.cache.path not in seen:
            seen.add(view.cache.path)
            targets.append(Target(name, view.cache.path, view.cache.expect, view.precompute))
    if not targets:
        if which != "all":
            with_stage = [n for n, v in views.items() if v.precompute is not None]
            raise UserError(f"view {which!r} has no precompute stage; nothing to fill{_others(with_stage)}")
        raise UserError(f"no view of the config ({', '.join(names)}) has a precompute stage; nothing to fill")
    return targets


def _others(names: list[str]) -> str:
    return f" (cached views here: {', '.join(names)})" if names else ""


def prepare_job(config: str, overrides: Sequence[str], which: str) -> dict:
    """The keyword arguments of run_precompute for `mvcoding precompute WHICH CONFIG [overrides]`."""
    from mvcoding.config import load_config
    from mvcoding.datasets import load_dataset

    cfg = load_config(config, list(overrides))
    targets = cached_views(cfg, which)
    records = load_dataset(cfg.dataset).records("all")
    if not records:
        raise UserError(f"dataset {cfg.dataset.name} at {cfg.dataset.root} has no videos; check dataset.root")
    return {
        "records": records,
        "targets": targets,
        "root": str(cfg.dataset.root),
        "workers": int(cfg.precompute.workers),
        "shard": parse_shard(str(cfg.precompute.shard)),
        "videos_per_part": int(cfg.precompute.videos_per_part),
        "verify": bool(cfg.precompute.get("verify", True)),
        "desc": f"{'+'.join(t.view for t in targets)} {cfg.dataset.name}",
        "start_method": "spawn" if any(t.stage.gpu for t in targets) else "fork",
    }


HELP = """\
Fills the HDF5 cache of a view's precompute stage (VIEW), or of every cached view of the config
(all; each video is decoded once for all of them), for the same CONFIG and overrides that
`mvcoding train` reads: the dataset (dataset.*), cache.dir and the view's settings (views.VIEW.*),
so training finds exactly the cache that was filled. Views are built as in training: a misspelt
setting is an error and nothing is computed.

The run is resumable and repairs: rerun the same command after an interruption (finished parts are
kept) or after an error about a damaged part (its entries are read through their checksums and only
what is damaged, missing, failed or made from a changed video is recomputed). Parallel
(precompute.workers=N) and sharded (precompute.shard=i/n fills piece i of n; run the pieces on any
machines into the same cache.dir). A video that cannot be decoded is reported and skipped; the exit
status is then 1 (rerunning retries it). Bad input exits 2 with one line saying why.

examples:
  mvcoding precompute flow configs/ucf101_rgb_flow.yaml dataset.root=/data/ucf101
  mvcoding precompute all configs/synthetic_4view.yaml precompute.workers=16 precompute.shard=0/4
  mvcoding cache status configs/ucf101_rgb_flow.yaml     # what each cache holds
"""


def main(argv: Sequence[str] | None = None, prog: str = "mvcoding precompute") -> int:
    """`mvcoding precompute VIEW|all CONFIG [overrides]`: returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fill the HDF5 caches of views' precompute stages.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("view", help="a view with a precompute stage (`mvcoding views` marks them), or all")
    parser.add_argument("config", help="the experiment YAML, as for `mvcoding train`")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value, as for `mvcoding train`")
    args = parser.parse_args(argv)
    try:
        with _stop_on_signals():
            summary = run_precompute(**prepare_job(args.config, args.overrides, args.view))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Interrupted: SIGTERM or SIGINT
        signum = getattr(e, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"{what}; rerun the same command to resume (finished parts are kept)", file=sys.stderr)
        return 128 + signum
    print(summary.line())
    if summary.failed:
        vid, msg = next(iter(summary.failed.items()))
        msg = f"{len(summary.failed)} entries failed (e.g. {vid}: {msg}); fix or remove them and rerun"
        print(msg, file=sys.stderr)
        return 1
    return 0


def tool(view: str) -> int:
    """tools/precompute_<view>.py CONFIG [overrides]: `mvcoding precompute <view> ...` under another name."""
    return main([view, *sys.argv[1:]], prog=f"precompute_{view}.py")


# ---- status ------------------------------------------------------------------------------------


def status(cfg) -> list[dict]:
    """Per cached view of a config: its folder, entries filled/missing/failed/damaged and bytes on disk.

    Damaged: parts that cannot be read at all (their videos count as damaged); checksums are read only
    by `mvcoding precompute` (verify)."""
    from mvcoding.datasets import load_dataset

    ids = {r.video_id for r in load_dataset(cfg.dataset).records("all")}
    rows = []
    for t in cached_views(cfg, "all"):
        filled, failed, damaged, size = set(), set(), 0, 0
        for h5 in part_paths(t.path) if t.path.is_dir() else []:
            size += h5.stat().st_size
            try:
                info = read_part(h5)
            except UserError:
                damaged += 1
                continue
            filled |= set(info["videos"])
            failed |= set(info["failed"]) - set(info["videos"])
        rows.append(
            {
                "view": t.view,
                "path": str(t.path),
                "videos": len(ids),
                "filled": len(filled & ids),
                "missing": len(ids - filled - failed),
                "failed": len(failed & ids),
                "damaged_parts": damaged,
                "bytes": size,
            }
        )
    return rows


def print_status(cfg) -> None:
    for r in status(cfg):
        state = "complete" if r["filled"] == r["videos"] and not r["damaged_parts"] else "incomplete"
        counts = f"{r['filled']}/{r['videos']} filled, {r['missing']} missing, {r['failed']} failed"
        print(
            f"{r['view']:10s} {state:10s} {counts}, {r['damaged_parts']} damaged parts, "
            f"{r['bytes'] / 2**20:.1f} MiB  {r['path']}"
        )


__all__ = ["Target", "Summary", "run_precompute", "cache_location", "main", "tool", "status", "cached_views"]
