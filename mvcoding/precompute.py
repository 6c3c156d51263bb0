"""Filling an HDF5 cache: the resumable, parallel, sharded runner behind tools/precompute_*.py.

    summary = run_precompute(records=index.records("all"), out=path, provenance=prov,
                             compute=partial(flow.cache_entry, algorithm="dis", ...), workers=8,
                             shard=(0, 4), videos_per_part=16, desc="flow")

The sorted videos are cut into parts of `videos_per_part`; shard i/n fills parts i, i+n, i+2n, ...,
so pieces run on different machines land in one cache directory and read as one cache. Worker
processes compute the entries (decode + flow/depth + quantise); the main process writes each part
under a temporary name and renames it when complete (mvcoding.cache). A rerun skips complete parts,
deletes its own stale temporary files, and rebuilds a part only for what it lacks: videos that
failed before (they are retried), videos whose source file changed size or mtime, videos new to the
part; the entries it already has are copied, not recomputed. A video that cannot be decoded is named
in a warning, recorded as failed in its part, and makes the run exit non-zero.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from mvcoding.cache import PartWriter, cache_settings, ensure_provenance, part_file, part_name, read_parts
from mvcoding.errors import UserError


@dataclass
class Summary:
    """What a run did: videos computed (done), already cached (skipped), failed {video_id: message}."""

    out: Path
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    parts_written: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        rate = f", {self.done / self.seconds:.1f} videos/s" if self.done and self.seconds > 0 else ""
        return (
            f"{self.out}: {self.done} videos computed, {self.skipped} already cached, {len(self.failed)} failed; "
            f"{self.parts_written} parts written, {self.parts_skipped} complete; {self.seconds:.1f} s{rate}"
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


def source_stamp(path: str) -> dict:
    st = os.stat(path)
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _init_worker() -> None:
    """One thread per worker process (the processes are the parallelism); Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = "1"
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _work(compute: Callable, record) -> tuple[str, np.ndarray | None, dict | str]:
    """Run compute on one record in a worker: (video_id, array, attrs) or (video_id, None, error message)."""
    try:
        stamp = source_stamp(record.path)  # before decoding: a file replaced meanwhile reads as stale next time
        array, attrs = compute(record)
        return record.video_id, array, {**attrs, **stamp}
    except UserError as e:
        return record.video_id, None, str(e)
    except Exception as e:  # any failure of one video must not stop the others
        return record.video_id, None, f"{type(e).__name__}: {e}"


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


def run_precompute(
    *,
    records: list,
    out: Path,
    provenance: dict,
    compute: Callable,
    workers: int,
    shard: tuple[int, int] | str,
    videos_per_part: int,
    desc: str,
    compression: str | None = "lzf",
    start_method: str = "fork",
    progress: bool = True,
) -> Summary:
    """Fill the cache at `out` with compute(record) -> (array (T, C, H, W), attrs) for this shard's parts.

    compute must be picklable (a top-level function or functools.partial of one). workers <= 1 runs
    in this process; otherwise `workers` processes started with `start_method` ("spawn" where the
    parent may hold CUDA state). progress=False: no bar or progress lines (warnings still
    print). Returns a Summary; nothing raises for a single bad video.
    """
    t0 = time.monotonic()
    out = Path(out)
    i, n = parse_shard(shard)
    parts = plan_parts(records, videos_per_part)
    ensure_provenance(out, provenance)
    for tmp in out.glob("part-*.tmp*"):  # left by a killed run of this shard (other shards' are theirs)
        if int(tmp.name[5:10]) % n == i:
            tmp.unlink(missing_ok=True)
    existing = read_parts(out)
    summary = Summary(out=out)

    # Plan: for each of our parts, what to copy from the existing part and what to compute.
    plan = []  # (k, keep ids, todo records)
    for k in range(i, len(parts), n):
        have = existing.get(part_name(k), {"videos": {}})["videos"]
        keep = [r.video_id for r in parts[k] if r.video_id in have and _is_fresh(have[r.video_id], r.path)]
        todo = [r for r in parts[k] if r.video_id not in keep]
        summary.skipped += len(keep)
        if todo:
            plan.append((k, keep, todo))
        else:
            summary.parts_skipped += 1

    bar = Progress(sum(len(p) for p in parts[i::n]), summary.skipped, desc, enabled=progress)
    jobs = [r for _, _, todo in plan for r in todo]
    results = _results(partial(_work, compute), jobs, workers, start_method)
    try:
        for k, keep, todo in plan:
            failed = {}
            with PartWriter(out, k, provenance, compression=compression) as writer:
                if keep:
                    import h5py

                    with h5py.File(part_file(out, k), "r", locking=False) as old:
                        for vid in keep:
                            writer.copy_from(old, vid)
                for _ in todo:
                    vid, array, attrs = next(results)
                    if array is None:
                        failed[vid] = attrs
                        bar.write(f"warning: skipped video {vid}: {attrs}")
                    else:
                        writer.add(vid, array, attrs)
                        summary.done += 1
                    bar.update()
                writer.commit(failed)
            summary.parts_written += 1
            summary.failed.update(failed)
    finally:
        bar.close()
        results.close()  # stops the worker processes if we leave early
    summary.seconds = time.monotonic() - t0
    return summary


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


def _pool_results(work: Callable, jobs: list, workers: int, start_method: str) -> Iterator:
    ctx = multiprocessing.get_context(start_method)
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker)
    pending: deque = deque()
    todo = iter(jobs)
    try:
        for job in islice(todo, 4 * workers):
            pending.append((job, pool.submit(work, job)))
        while pending:
            job, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                suspects = [job.video_id] + [j.video_id for j, f in pending if not f.done()][: workers - 1]
                raise UserError(
                    f"a worker process died (out of memory, or a video that crashes the decoder) while computing "
                    f"{' or '.join(suspects)}; finished parts are kept: rerun to resume (with fewer "
                    f"precompute.workers if memory ran out; with precompute.workers=1 a crash names its video)"
                ) from None
            for nxt in islice(todo, 1):
                pending.append((nxt, pool.submit(work, nxt)))
            yield result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _is_fresh(meta: dict, path: str) -> bool:
    """The cached entry was made from the file as it is now (same size and mtime)."""
    try:
        now = source_stamp(path)
    except OSError:
        return True  # the source is gone: keep what was computed from it
    return all(meta.get(k) == v for k, v in now.items())


# ---- the tools ---------------------------------------------------------------------------------

TOOL_HELP = """\
Fills the {modality} cache that `mvcoding train` reads for the same CONFIG and overrides:
the dataset (dataset.*), the cache directory (cache.dir) and the {modality} settings (views.{modality}.*)
are read from the config, so the trainer finds exactly the cache that was filled.

The run is resumable (rerun the same command after an interruption: finished parts are kept),
parallel (precompute.workers=N) and sharded (precompute.shard=i/n fills piece i of n; run the pieces
on any machines into the same cache.dir). A video that cannot be decoded is reported and skipped;
the exit status is then 1 (rerunning retries it). Bad input exits 2 with one line saying why.
{extra}
examples:
  python tools/precompute_{modality}.py configs/ucf101_rgb_{modality}.yaml dataset.root=/data/ucf101
  python tools/precompute_{modality}.py CONFIG.yaml precompute.workers=16 precompute.shard=0/4
"""

FLOW_HELP = """
views.flow settings: algorithm (dis [default], farneback, tvl1, raft_small, raft_large),
params (the algorithm's parameters, e.g. {preset: fast} for dis), resolution ([H, W] or null =
native size; flow is computed at this size, in its pixels), bound (flow is clipped to +-bound
pixels and stored as uint8; default 20).
"""

DEPTH_HELP = """
views.depth settings: source (synthetic [default]: the synthetic generator's ground truth;
folder: per-frame 16-bit PNGs under views.depth.folder/<class>/<video>/00000.png; midas: a
monocular estimator from a local torch.hub repo views.depth.hub_repo with weights views.depth.weights),
resolution ([H, W] or null = native). Depth is stored as uint8 per video: 0 = invalid, 1..255 linear
between the video's nearest and farthest valid depth (kept in the entry's attributes).
"""


def _tool(argv: Sequence[str] | None, modality: str) -> int:
    parser = argparse.ArgumentParser(
        prog=f"precompute_{modality}.py",
        description=f"Precompute the {modality} HDF5 cache of a dataset.",
        epilog=TOOL_HELP.format(modality=modality, extra=FLOW_HELP if modality == "flow" else DEPTH_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="the experiment YAML, as for `mvcoding train`")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value, as for `mvcoding train`")
    args = parser.parse_args(argv)
    try:
        job = prepare_job(args.config, args.overrides, modality)
        summary = run_precompute(**job)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (finished parts are kept)", file=sys.stderr)
        return 130
    print(summary.line())
    if summary.failed:
        vid, msg = next(iter(summary.failed.items()))
        print(f"{len(summary.failed)} videos failed (e.g. {vid}: {msg}); fix or remove them and rerun", file=sys.stderr)
        return 1
    return 0


def prepare_job(config: str, overrides: Sequence[str], modality: str) -> dict:
    """The keyword arguments of run_precompute for a config: records, cache path, provenance, compute."""
    from mvcoding.config import load_config
    from mvcoding.datasets import load_dataset

    cfg = load_config(config, list(overrides))
    views = cfg.views or {}
    if modality not in views:
        raise UserError(
            f"config {config} has no views.{modality}; use a config with a {modality} view "
            f"(or add views.{modality}: {{}})"
        )
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(views[modality], resolve=True) or {}
    path, provenance = cache_settings(
        cache_dir=cfg.cache.dir, dataset=cfg.dataset.name, modality=modality, settings=settings, root=cfg.dataset.root
    )
    records = load_dataset(cfg.dataset).records("all")
    if not records:
        raise UserError(f"dataset {cfg.dataset.name} at {cfg.dataset.root} has no videos; check dataset.root")
    if modality == "flow":
        from mvcoding import flow

        algorithm = provenance["algorithm"]
        params = flow.resolve_params(algorithm, settings.get("params"))  # with the runtime ones (batch, device)
        compute = partial(
            flow.cache_entry,
            algorithm=algorithm,
            params=params,
            resolution=provenance["resolution"],
            bound=provenance["encoding"]["bound"],
        )
        gpu = algorithm.startswith("raft")
    else:
        from mvcoding import depth

        compute = depth.compute_for(provenance, settings)
        gpu = provenance["algorithm"] == "midas"
    return {
        "records": records,
        "out": path,
        "provenance": provenance,
        "compute": compute,
        "workers": int(cfg.precompute.workers),
        "shard": parse_shard(str(cfg.precompute.shard)),
        "videos_per_part": int(cfg.precompute.videos_per_part),
        "desc": f"{modality} {cfg.dataset.name}",
        "start_method": "spawn" if gpu else "fork",
    }


def main_flow(argv: Sequence[str] | None = None) -> int:
    """tools/precompute_flow.py: returns the exit status."""
    return _tool(argv, "flow")


def main_depth(argv: Sequence[str] | None = None) -> int:
    """tools/precompute_depth.py: returns the exit status."""
    return _tool(argv, "depth")
