"""The worker-side transforms and cache reads against the ways they replaced, side by side in one process
(one thread). Every pair gives the same bytes (checked; the flow transform: the same model input within one
code) and is timed interleaved: median ms per clip of --rounds rounds.

  resize flow        crop+resize of a (2, 16, 128, 171) uint8 flow clip stored (T, C, H, W): the C x T planes
                     grouped 4 to an image (mvcoding.transforms.crop_resize) against (T, C, h, w) frames
  resize depth       the same for one-channel depth
  resize rgb         a decord (T, H, W, 3) clip: crop_resize's channels-last frames against the plane grouping
                     (which crop_resize does not use when channels are innermost: this row says why)
  resize rgb planar  an RGB clip stored (T, 3, H, W), as the raw and JPEG caches give it: the plane grouping
                     (crop_resize's choice for it) against channels-last frames
  flow transform     mvcoding.views.flow.transform_flow (crop, resize, flip; the stretch and the flip's sign are
                     applied on the device, by flow_input) against the workers' stretch/flip table (cv2.LUT)
  jpeg decode        16 JPEG frames at 128x171 (quality 90, the rgb cache's rows): torchvision's decode_jpeg
                     (mvcoding.views.rgb.decode_frames) against OpenCV's imdecode
  raw rgb read       a 16-frame clip of the raw rgb cache (T, 3, 128, 171) from parts written by the cache's
                     PartWriter, uncompressed (the raw format's filter) against lzf; each call reads another
                     of 32 videos, so HDF5's chunk cache does not hold the clip; both fletcher32-checked
  raw rgb reader     the raw rgb read (uncompressed) through mvcoding.cache.CacheReader.read (the file opened
                     without HDF5's chunk cache, entry handles kept) against h5py's defaults with the file
                     kept open, f[video][a:b]
  flow clip read     the same for a 16-frame clip of an lzf flow cache (DIS on the textures, quantised to
                     uint8 at +-20 px)

    python tools/bench/transforms.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import texture_video  # noqa: E402

from mvcoding.cache import dequantize, quantize  # noqa: E402
from mvcoding.registry import Aug  # noqa: E402
from mvcoding.transforms import crop_box, crop_resize, resize_planes_uint8  # noqa: E402
from mvcoding.views.flow import compute_flow, flow_input, transform_flow  # noqa: E402
from mvcoding.views.rgb import decode_frames, pack_jpeg  # noqa: E402

CROP, SIZE, BOUND = (0.1, 0.15, 0.7, 0.65), 112, 20.0


def frames_resize(x: torch.Tensor, crop, size: int) -> torch.Tensor:
    """Crop+resize as (T, C, h, w) channels-last frames (crop_resize's way before the plane grouping)."""
    y0, x0, h, w = crop_box(x.shape[-2], x.shape[-1], crop)
    y = x[:, :, y0 : y0 + h, x0 : x0 + w].transpose(0, 1).contiguous(memory_format=torch.channels_last)
    y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.transpose(0, 1).contiguous()


def planes_resize(x: torch.Tensor, crop, size: int) -> torch.Tensor:
    y0, x0, h, w = crop_box(x.shape[-2], x.shape[-1], crop)
    return resize_planes_uint8(x[:, :, y0 : y0 + h, x0 : x0 + w], size)


def stretch_table(factor: float, flip: bool, bound: float) -> np.ndarray:
    """(256,) uint8: the code of quantize(+-factor * dequantize(u)) (the workers' stretch before it moved to
    the device)."""
    u = np.arange(256, dtype=np.uint8)
    return quantize(dequantize(u, bound) * (-factor if flip else factor), bound)


def flow_lut(x: torch.Tensor, aug: Aug, *, size: int, bound: float) -> torch.Tensor:
    """transform_flow before the stretch moved to the device: the stretch and flip as a cv2.LUT on the codes."""
    import cv2

    _, _, bh, bw = crop_box(x.shape[-2], x.shape[-1], aug.crop)
    x = crop_resize(x, aug.crop, size)
    out = np.array((x.flip(-1) if aug.flip else x).numpy())
    for c, (factor, negate) in enumerate(((size / bw, aug.flip), (size / bh, False))):
        plane = out[c].reshape(-1, out.shape[-1])
        out[c] = cv2.LUT(plane, stretch_table(factor, negate, bound)).reshape(out[c].shape)
    return torch.from_numpy(out)


def flow_model_inputs_agree(new: dict, old: torch.Tensor) -> bool:
    """The device's stretch against the workers' requantised codes: within one code (1/255 of the bound)."""
    return bool((flow_input(new) - flow_input(old)).abs().max() <= 1 / 255 + 1e-6)


def imdecode(rows: torch.Tensor) -> torch.Tensor:
    """OpenCV's decode of pack_jpeg rows (N, L) -> (N, 3, H, W) RGB."""
    import cv2

    out = []
    for row in rows.numpy():
        n = int(row[:4].view("<u4")[0])
        out.append(cv2.imdecode(row[4 : 4 + n], cv2.IMREAD_COLOR)[..., ::-1].transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))


def dis_codes(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) frames -> (T, 2, H, W) uint8: DIS (medium) flow, quantised at the bound as the flow cache
    stores it."""
    return quantize(compute_flow(frames, "dis", preset="medium"), BOUND)


class ClipReads:
    """Reads 16-frame clips from a part of 32 textured videos ((T, 3, 128, 171) uint8 frames, or with flow
    their DIS flow quantised as the flow cache stores it, (T, 2, 128, 171)) written by PartWriter with
    `compression`: each call the next video (and another start), from the first video again after reset().
    reader "h5py": h5py's defaults, the part file kept open, `f[video][a:b]` (mvcoding's reads before the
    entry handles); "mvcoding": mvcoding.cache.CacheReader.read, as training reads."""

    def __init__(self, folder: Path, compression: str | None, flow: bool = False, reader: str = "h5py"):
        import h5py

        from mvcoding.cache import CacheReader, PartWriter, part_file

        folder.mkdir()
        with PartWriter(folder, 0, {}, compression=compression) as w:
            for v in range(32):
                frames = texture_video(v, 48, 128, 171)
                w.add(f"v{v}", dis_codes(frames) if flow else np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), {})
            w.commit({})
        self.bytes = part_file(folder, 0).stat().st_size
        if reader == "h5py":
            f = h5py.File(part_file(folder, 0), "r", locking=False)
            self.read = lambda vid, a, b: f[vid][a:b]
        else:
            self.read = CacheReader(folder).read
        self.k = 0

    def __call__(self) -> np.ndarray:
        v, self.k = self.k % 32, self.k + 1
        start = 7 * self.k % 32
        return self.read(f"v{v}", start, start + 16)

    def reset(self) -> None:
        self.k = 0


def pairs(tmp: Path) -> list[tuple]:
    """(row, new name, new call, old name, old call[, agree(new output, old output)]: default, the same bytes)."""
    rng = np.random.default_rng(0)
    flow = torch.from_numpy(rng.integers(0, 256, (16, 2, 128, 171), dtype=np.uint8)).permute(1, 0, 2, 3)
    depth = torch.from_numpy(rng.integers(0, 256, (16, 1, 128, 171), dtype=np.uint8)).permute(1, 0, 2, 3)
    frames = texture_video(0, 16, 128, 171)  # (T, H, W, 3)
    rgb = torch.from_numpy(frames).permute(3, 0, 1, 2)
    planar = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).permute(1, 0, 2, 3)
    rows = torch.from_numpy(pack_jpeg(frames, 90)[:, 0, 0])
    aug = Aug(train=True, crop=CROP, flip=True)
    raw = ClipReads(tmp / "none", None)  # h5py's defaults; one file per reader: HDF5 shares an open file
    resize = [
        (
            f"resize {name}",
            "planes",
            partial(crop_resize, x, CROP, SIZE),
            "frames",
            partial(frames_resize, x, CROP, SIZE),
        )
        for name, x in (("flow", flow), ("depth", depth))
    ]
    return resize + [
        (
            "resize rgb",
            "frames",
            partial(crop_resize, rgb, CROP, SIZE),
            "planes",
            partial(planes_resize, rgb, CROP, SIZE),
        ),
        (
            "resize rgb planar",
            "planes",
            partial(crop_resize, planar, CROP, SIZE),
            "frames",
            partial(frames_resize, planar, CROP, SIZE),
        ),
        (
            "flow transform",
            "now",
            lambda: transform_flow(flow, aug, size=SIZE),
            "lut",
            lambda: flow_lut(flow, aug, size=SIZE, bound=BOUND),
            flow_model_inputs_agree,
        ),
        ("jpeg decode", "torchvision", lambda: decode_frames(rows), "opencv", lambda: imdecode(rows)),
        ("raw rgb read", "none", raw, "lzf", ClipReads(tmp / "lzf", "lzf")),
        ("raw rgb reader", "mvcoding", ClipReads(tmp / "raw", None, False, "mvcoding"), "h5py", raw),
        (
            "flow clip read",
            "mvcoding",
            ClipReads(tmp / "flow", "lzf", True, "mvcoding"),
            "h5py",
            ClipReads(tmp / "flow-again", "lzf", True, "h5py"),
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=10, help="calls per timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    print(f"{'':18} {'new':>11} {'ms':>7}   {'old':>8} {'ms':>7}   old/new   (median of {args.rounds} rounds)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = pairs(Path(tmp))
        for row in rows:
            time_pair(*row, args=args)
        reads = rows[-3]
        print(
            f"raw rgb cache on disk: lzf {reads[4].bytes / 2**20:.1f} MiB, none {reads[2].bytes / 2**20:.1f} MiB "
            f"(lzf saves {100 * (1 - reads[4].bytes / reads[2].bytes):.0f}%)"
        )


def time_pair(row: str, new_name: str, new, old_name: str, old, agree=None, *, args) -> None:
    """Check that both give the same output, then time them interleaved and print the row."""
    for fn in (new, old):
        getattr(fn, "reset", lambda: None)()
    a, b = new(), old()
    same = agree(a, b) if agree else np.array_equal(np.asarray(a), np.asarray(b))
    times = {"new": [], "old": []}
    for r in range(args.rounds):
        for key, fn in (("new", new), ("old", old)) if r % 2 else (("old", old), ("new", new)):
            t0 = time.perf_counter()
            for _ in range(args.reps):
                fn()
            times[key].append(1e3 * (time.perf_counter() - t0) / args.reps)
    n, o = statistics.median(times["new"]), statistics.median(times["old"])
    flag = "" if same else "   OUTPUTS DIFFER"
    print(f"{row:18} {new_name:>11} {n:7.2f}   {old_name:>8} {o:7.2f}   {o / n:7.2f}{flag}")


if __name__ == "__main__":
    main()
