"""Log-mel spectrograms of the clip's audio (a sidecar .wav or the video's stream): the `audio` view."""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from mvcoding.audio import (
    AMIN_DB,
    SOURCES,
    NoAudioError,
    fit_frames,
    has_audio,
    log_mel,
    mask_,
    normalize_spec,
    read_audio,
    sidecar_wav,
    spec_frames,
    win_length,
)
from mvcoding.encoders import build_encoder
from mvcoding.errors import UserError
from mvcoding.registry import Aug, Clip, View, ViewContext, register_view

NOMINAL_FPS = 25.0  # UCF101's frame rate: sets the default spectrogram length from data.frames x data.stride


def aug_generator(aug: Aug) -> torch.Generator:
    """A generator seeded by the item's shared crop draw, so the audio augmentation of an item is
    the same whichever DataLoader worker decodes it (Aug carries no seed of its own)."""
    crop = aug.crop or (0.0, 0.0, 1.0, 1.0)  # a box, or eval's (p,) (mvcoding.transforms.crop_box)
    seed = zlib.crc32(struct.pack(f"<{len(crop)}d?", *crop, aug.flip))
    return torch.Generator().manual_seed(seed)


@register_view("audio")
def audio(
    *,
    ctx: ViewContext,
    encoder: str = "resnet18",
    sample_rate: int = 16000,
    n_mels: int = 64,
    source: str = "auto",
    missing: str = "error",
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    seconds: float | None = None,
    norm: str = "instance",
    gain_db: float = 6.0,
    freq_mask: int = 8,
    time_mask: int = 16,
) -> View:
    """Log-mel spectrogram (1, n_mels, T') of the audio under the clip's window [t0, t1).

    source: auto (the sidecar .wav beside the video when it exists, else the video's audio stream),
    video or wav; missing: error (checked before a run: the videos without audio are named then, from
    stream headers and sidecar names, not mid-run), or silence to use silence for them; sample_rate:
    the rate the audio is resampled to; win_ms / hop_ms: STFT window and hop; seconds: the length T'
    stands for (default data.frames x data.stride / 25 fps), shorter windows are padded and longer
    ones cropped; norm: instance (per-spectrogram mean/std) or fixed ((dB + 50) / 25); train-time
    augmentation: gain jitter of +-gain_db dB (removed again by norm=instance), SpecAugment masks of
    up to freq_mask mel bins and time_mask frames (0 turns them off). Ignores the spatial crop.
    """
    if source not in SOURCES:
        raise UserError(f"views.audio.source must be one of {', '.join(SOURCES)}; got {source!r}")
    if missing not in ("error", "silence"):
        raise UserError(f"views.audio.missing must be 'error' or 'silence'; got {missing!r}")
    if norm not in ("instance", "fixed"):
        raise UserError(f"views.audio.norm must be 'instance' or 'fixed'; got {norm!r}")
    if sample_rate < 1000:
        raise UserError(f"views.audio.sample_rate must be at least 1000 Hz; got {sample_rate}")
    if win_ms <= 0 or hop_ms <= 0:
        raise UserError(f"views.audio.win_ms and hop_ms must be positive; got {win_ms}, {hop_ms}")
    n_freqs = win_length(sample_rate, win_ms) // 2 + 1
    if not 1 <= n_mels < n_freqs:
        raise UserError(f"views.audio.n_mels must be in 1..{n_freqs - 1} for win_ms={win_ms}; got {n_mels}")
    if gain_db < 0 or freq_mask < 0 or time_mask < 0:
        raise UserError(
            f"views.audio.gain_db, freq_mask, time_mask must be >= 0; got {gain_db}, {freq_mask}, {time_mask}"
        )
    seconds = seconds if seconds is not None else ctx.frames * ctx.stride / NOMINAL_FPS
    if seconds <= 0:
        raise UserError(f"views.audio.seconds must be positive; got {seconds}")
    frames = spec_frames(seconds, sample_rate, hop_ms)
    pad = 0.0 if norm == "instance" else float(normalize_spec(torch.tensor(AMIN_DB), norm))  # silence

    return View(  # module-level functions bound with partial: the view pickles into spawned workers
        name="audio",
        channels=1,
        decode=partial(
            decode_audio,
            sample_rate=sample_rate,
            n_mels=n_mels,
            win_ms=win_ms,
            hop_ms=hop_ms,
            source=source,
            missing=missing,
        ),
        transform=partial(
            transform_audio,
            norm=norm,
            frames=frames,
            pad=pad,
            gain_db=gain_db,
            freq_mask=freq_mask,
            time_mask=time_mask,
        ),
        build_encoder=partial(build_encoder, encoder, in_channels=1),
        check=partial(check_audio, source=source) if missing == "error" else None,
    )


def decode_audio(
    clip: Clip, *, sample_rate: int, n_mels: int, win_ms: float, hop_ms: float, source: str, missing: str
) -> torch.Tensor:
    """The clip's log-mel spectrogram (1, n_mels, T'') in dB; T'' follows this clip's duration.

    No audio: silence with missing=silence, else NoAudioError (a UserError; check_audio finds these
    before a run)."""
    t0, t1 = clip.seconds
    try:
        wave = read_audio(clip.path, t0, t1, sample_rate, source)
    except NoAudioError:
        if missing == "error":
            raise
        wave = torch.zeros(round((t1 - t0) * sample_rate))
    # the mel filterbank is built once per process and rate (mvcoding.audio._cached_mel)
    return log_mel(wave, sample_rate, n_mels, win_ms=float(win_ms), hop_ms=float(hop_ms))


def transform_audio(
    x: torch.Tensor, aug: Aug, *, norm: str, frames: int, pad: float, gain_db: float, freq_mask: int, time_mask: int
) -> torch.Tensor:
    """(1, n_mels, T'') dB -> (1, n_mels, frames) float32, normalised and (train) augmented."""
    g = aug_generator(aug) if aug.train else None
    if g is not None and gain_db:
        x = x + (torch.rand((), generator=g) * 2 - 1) * gain_db  # a gain in dB adds to every bin
    x = fit_frames(normalize_spec(x, norm), frames, pad)
    if g is not None:
        x = mask_(mask_(x.clone(), freq_mask, 1, g), time_mask, 2, g)
    return x.float().contiguous()


def check_audio(records, *, source: str) -> None:
    """Before a run (views.audio.missing=error): UserError, one line, when a video has no audio where
    `source` looks for it, so a run does not stop at the first such clip. Probes headers and sidecar
    files (mvcoding.audio.has_audio), on a few threads; nothing is decoded unless a container's
    headers cannot tell."""
    records = list(records)
    if not records:
        return
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, len(records)))) as pool:
        found = list(pool.map(lambda r: has_audio(r.path, source), records))
    lacking = [r for r, ok in zip(records, found, strict=True) if not ok]
    if not lacking:
        return
    count, example = f"{len(lacking)} of {len(records)} videos", lacking[0].path
    if source == "wav":
        raise UserError(
            f"views.audio: {count} have no sidecar .wav (e.g. {sidecar_wav(example)}); put one beside each video "
            "(same name, .wav suffix), set views.audio.source=auto to fall back to the videos' audio streams, "
            "or views.audio.missing=silence to use silence"
        )
    if source == "video":
        raise UserError(
            f"views.audio: {count} have no audio stream (e.g. {example}); set views.audio.source=auto to read "
            "sidecar .wav files, or views.audio.missing=silence to use silence"
        )
    raise UserError(
        f"views.audio: {count} have no audio stream and no sidecar .wav (e.g. {example}); add a sidecar .wav "
        "beside each (same name, .wav suffix), or set views.audio.missing=silence to use silence for them"
    )
