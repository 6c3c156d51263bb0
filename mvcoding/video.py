"""Reading and writing video files: decord to read, OpenCV to write (tests and the synthetic set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvcoding.errors import UserError, first_line


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25.0) -> None:
    """Write frames (T, H, W, 3) uint8 RGB as an MJPG .avi that decord reads back.

    H and W must be even (decord returns width-1 frames for some odd widths).
    """
    import cv2

    t, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"frames must be (T, H, W, 3) with even H, W; got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


def open_video(path: str, *, width: int = -1, height: int = -1):
    """A decord VideoReader, or UserError naming the file when it cannot be decoded."""
    import decord

    try:
        return decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    except Exception as e:  # decord raises DECORDError / RuntimeError with C++ traces
        msg = first_line(e, 200)
        raise UserError(f"cannot decode video {path}: {msg}; check the file or remove it from the split") from e


def video_info(path: str) -> tuple[int, float, int, int]:
    """(num_frames, fps, height, width) of a video file."""
    vr = open_video(path)
    h, w = vr[0].shape[:2]
    return len(vr), float(vr.get_avg_fps() or 25.0), h, w


def read_frames(path: str, indices: list[int] | None = None, *, width: int = -1, height: int = -1) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 RGB at `indices` (all frames when None), resized if width/height given."""
    vr = open_video(path, width=width, height=height)
    if indices is None:
        indices = list(range(len(vr)))
    if indices and max(indices) >= len(vr):
        raise UserError(f"clip frames up to {max(indices)} asked from {path}, which has {len(vr)} frames")
    try:
        return vr.get_batch(indices).asnumpy()
    except Exception as e:  # decord fails on some frame sizes and damaged streams
        msg = first_line(e, 200)
        raise UserError(f"cannot decode frames {indices[0]}..{indices[-1]} of {path}: {msg}") from e


def decode_all(path: str, resolution=None) -> tuple[np.ndarray, float]:
    """All frames (T, H, W, 3) uint8 of a video, resized on decode to resolution [H, W] unless None; and fps."""
    h, w = resolution if resolution else (-1, -1)
    vr = open_video(path, width=w, height=h)
    try:
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    except Exception as e:  # a truncated file can open and then fail mid-stream
        msg = first_line(e, 200)
        raise UserError(f"cannot decode video {path}: {msg}; check the file or remove it from the split") from e
    return frames, float(vr.get_avg_fps() or 25.0)
