"""Pure functions for the `audio` view: read a clip's audio window, log-mel it, fix its length.

    wave = read_audio("v.avi", 1.2, 2.48, 16000)        # (20480,) float32 in [-1, 1]
    spec = log_mel(wave, 16000, 64)                     # (1, 64, 129) dB
    spec = fit_frames(normalize_spec(spec), 129)         # (1, 64, 129)

Audio comes from a sidecar .wav beside the video (same path, .wav suffix) or from the video's own
audio stream. A PCM .wav is read with the stdlib `wave` module (only the window's samples) and
resampled with torchaudio's windowed sinc, aligned to the sample. Anything else (a video's stream,
a float .wav) is decoded whole by decord's AudioReader, mixed to mono, and resampled by decord
(libswresample): the length is exact and nothing drifts, but decord leaves the resampler's delay
in (about 1-2 ms, a fraction of the 10 ms hop) because it cannot report the native rate that
resampling here would need. At the native rate decord's samples are exact.

Whether a video has audio at all (`has_audio`, for the view's check before a run) is read from the
container's stream headers for AVI and MP4/MOV, without decoding; other containers ask decord.
"""

from __future__ import annotations

import math
import struct
import wave as stdlib_wave
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torchaudio import transforms as T

from mvcoding.errors import UserError, first_line

SOURCES = ("auto", "video", "wav")
AMIN_DB = -100.0  # the dB floor (power 1e-10): digital silence


class NoAudioError(UserError):
    """The clip's video has no audio where `source` looks for it (the view may substitute silence).

    The audio view's decode raises it on as a plain UserError, so a worker's traceback ends in
    `mvcoding.errors.UserError: <message>`, the line the CLI prints."""


def sidecar_wav(path: str | Path) -> Path:
    """The sidecar .wav of a video: the same path with a .wav suffix."""
    return Path(path).with_suffix(".wav")


def read_audio(path: str | Path, t0: float, t1: float, sample_rate: int, source: str = "auto") -> torch.Tensor:
    """Mono audio of the video at `path` over [t0, t1) seconds, at `sample_rate`: (samples,) float32.

    samples = round((t1 - t0) * sample_rate), starting at sample round(t0 * sample_rate); the part of
    the window past the end of the audio is zeros. source: "wav" reads the sidecar .wav, "video" the
    video's own audio stream, "auto" the sidecar when it exists and the stream otherwise.
    Raises NoAudioError when there is no audio to read, UserError when the file cannot be decoded.
    """
    if source not in SOURCES:
        raise UserError(f"audio source must be one of {', '.join(SOURCES)}; got {source!r}")
    start, n = round(t0 * sample_rate), round((t1 - t0) * sample_rate)
    wav = sidecar_wav(path)
    if source == "wav" or (source == "auto" and wav.is_file()):
        if not wav.is_file():
            raise NoAudioError(
                f"sidecar {wav} of video {path} not found; set views.audio.source=auto to fall back to the "
                "video's audio stream, or views.audio.missing=silence to use silence"
            )
        x = _read_pcm_wav(wav, start, n, sample_rate)
        if x is None:  # not plain PCM (e.g. float samples): let ffmpeg decode it
            x = _window(_decode_whole(wav, sample_rate, what=f"sidecar {wav}"), start, n)
    else:
        x = _window(_decode_whole(Path(path), sample_rate, what=f"video {path}", source=source), start, n)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _window(x: np.ndarray, start: int, n: int) -> np.ndarray:
    """x[start:start + n] of a 1-D array, zero-padded where the range leaves it."""
    out = np.zeros(n, dtype=np.float32)
    lo, hi = max(start, 0), min(start + n, len(x))
    if hi > lo:
        out[lo - start : hi - start] = x[lo:hi]
    return out


def _audio_reader(path: Path, sample_rate: int, *, what: str, source: str = "wav"):
    """decord's AudioReader of `path` (which decodes the whole track), or NoAudioError when the file
    has no audio stream (decord finds that out before decoding anything), or UserError."""
    import decord

    try:
        return decord.AudioReader(str(path), sample_rate=sample_rate, mono=True)
    except Exception as e:  # decord raises DECORDError with a C++ location prefix
        msg = first_line(e)
        if "find audio stream" in msg:
            if source == "video":
                raise NoAudioError(
                    f"video {path} has no audio stream; set views.audio.source=auto to read a sidecar .wav, "
                    "or views.audio.missing=silence to use silence"
                ) from None
            raise NoAudioError(
                f"video {path} has no audio stream and no sidecar .wav; set views.audio.missing=silence to use silence"
            ) from None
        raise UserError(f"cannot decode the audio of {what}: {msg.split('] ')[-1][:200]}; check the file") from e


def _decode_whole(path: Path, sample_rate: int, *, what: str, source: str = "wav") -> np.ndarray:
    """The whole audio track of `path`, mono at `sample_rate`, decoded by decord: (samples,) float32."""
    reader = _audio_reader(path, sample_rate, what=what, source=source)
    reader.add_padding()  # a stream that starts late is padded to start at time 0, as the frames do
    return reader._array.mean(axis=0)  # (1, samples) when mono; no public accessor for the whole array


# ----------------------------------------------------------------------------- is there audio at all
HEADER_LIMIT = 64 << 20  # bytes of stream headers read at most (an AVI hdrl, an MP4 moov)


def has_audio(path: str | Path, source: str = "auto") -> bool:
    """Whether `read_audio(path, ..., source=source)` finds audio, without decoding it where possible.

    wav: the sidecar .wav exists; auto: it exists or the video has an audio stream; video: the video
    has an audio stream. A stream is looked up in the container's headers (AVI, MP4/MOV); for other
    containers, or headers this reader does not follow, decord opens the file (it fails fast on a file
    without audio, and decodes the whole track of one with audio). UserError when decord cannot read it.
    """
    if source not in SOURCES:
        raise UserError(f"audio source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source != "video" and sidecar_wav(path).is_file():
        return True
    if source == "wav":
        return False
    found = audio_in_header(path)
    if found is not None:
        return found
    try:
        _audio_reader(Path(path), -1, what=f"video {path}", source="video")
    except NoAudioError:
        return False
    return True


def audio_in_header(path: str | Path) -> bool | None:
    """Whether the stream headers of an AVI or MP4/MOV file list an audio stream; None when the file is
    neither or its headers cannot be followed (then only decoding can tell)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                return _avi_has_audio(f)
            if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"):
                f.seek(0)
                return _mp4_has_audio(f)
    except (OSError, struct.error):
        return None
    return None


def _avi_has_audio(f) -> bool | None:
    """AVI: the `hdrl` list, which the format puts first, holds one `strl` list per stream whose `strh`
    chunk starts with the stream type (`auds` for audio)."""
    ck, size, kind = struct.unpack("<4sI4s", f.read(12))
    if ck != b"LIST" or kind != b"hdrl" or size > HEADER_LIMIT:
        return None
    types = list(_riff_stream_types(f.read(size - 4)))
    return b"auds" in types if types else None


def _riff_stream_types(data: bytes) -> Iterator[bytes]:
    """The fccType of every `strh` chunk in RIFF chunks `data`, through nested LISTs."""
    i = 0
    while i + 8 <= len(data):
        ck, size = struct.unpack_from("<4sI", data, i)
        body = data[i + 8 : i + 8 + size]
        if ck == b"LIST":
            yield from _riff_stream_types(body[4:])
        elif ck == b"strh" and len(body) >= 4:
            yield body[:4]
        i += 8 + size + (size & 1)


def _mp4_has_audio(f) -> bool | None:
    """MP4/MOV: the `moov` box (at the start or the end; `mdat` is skipped by its size) holds one `trak`
    per stream whose `mdia/hdlr` box names the handler (`soun` for audio)."""
    while True:
        header = f.read(8)
        if len(header) < 8:
            return None  # no moov
        size, kind = struct.unpack(">I4s", header)
        start = 8
        if size == 1:
            size, start = struct.unpack(">Q", f.read(8))[0], 16
        if kind == b"moov":
            if size == 0 or size > HEADER_LIMIT:
                return None
            handlers = list(_mp4_handlers(f.read(size - start)))
            return b"soun" in handlers if handlers else None
        if size == 0 or size < start:  # the box runs to the end of the file, or a broken size
            return None
        f.seek(size - start, 1)


def _mp4_handlers(data: bytes) -> Iterator[bytes]:
    """The handler type of every trak/mdia/hdlr in the boxes of `data` (a moov's body)."""
    i = 0
    while i + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, i)
        start = 8
        if size == 1:
            size, start = struct.unpack_from(">Q", data, i + 8)[0], 16
        elif size == 0:
            size = len(data) - i
        if size < start:
            return
        body = data[i + start : i + size]
        if kind in (b"trak", b"mdia"):
            yield from _mp4_handlers(body)
        elif kind == b"hdlr" and len(body) >= 12:
            yield body[8:12]  # version and flags (4), pre_defined / component type (4), handler type (4)
        i += size


def _read_pcm_wav(path: Path, start: int, n: int, sample_rate: int) -> np.ndarray | None:
    """Samples [start, start + n) at `sample_rate` of a PCM .wav (None when not PCM), mono float32.

    Only the window (plus a margin for the resampling filter) is read. When resampling, the read
    starts on a multiple of the rates' period (sr_in / gcd samples), where input and output samples
    coincide in time, so the output is exactly aligned to round(t0 * sample_rate).
    """
    try:
        with stdlib_wave.open(str(path), "rb") as w:
            sr_in, channels, width, total = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            if sr_in == sample_rate:
                return _window_from(w, start, n, total, channels, width)
            g = math.gcd(sr_in, sample_rate)
            block_in, block_out = sr_in // g, sample_rate // g
            margin = math.ceil(max(64, 16 * sr_in / sample_rate) / block_in)  # blocks, > the sinc's reach
            k0 = start // block_out - margin
            k1 = -(-(start + n) // block_out) + margin
            x = _window_from(w, k0 * block_in, (k1 - k0) * block_in, total, channels, width)
    except (stdlib_wave.Error, EOFError):
        return None
    y = _resampler(sr_in, sample_rate)(torch.from_numpy(x)).numpy()
    offset = start - k0 * block_out
    return y[offset : offset + n]


def _window_from(w: stdlib_wave.Wave_read, start: int, n: int, total: int, channels: int, width: int) -> np.ndarray:
    """Frames [start, start + n) of an open wave file as mono float32, zero-padded outside the file."""
    out = np.zeros(n, dtype=np.float32)
    lo, hi = max(start, 0), min(start + n, total)
    if hi > lo:
        w.setpos(lo)
        out[lo - start : hi - start] = _pcm_to_float(w.readframes(hi - lo), width).reshape(-1, channels).mean(1)
    return out


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM bytes (8-bit unsigned, 16/24/32-bit signed) to float32 in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    dtype = {2: "<i2", 4: "<i4"}[width]
    return (np.frombuffer(raw, dtype).astype(np.float32) / float(1 << (8 * width - 1))).astype(np.float32)


@lru_cache(maxsize=8)
def _resampler(orig: int, new: int) -> T.Resample:
    return T.Resample(orig, new)  # its sinc kernel is computed once per rate pair


def hop_length(sample_rate: int, hop_ms: float) -> int:
    """STFT hop in samples."""
    return max(1, round(sample_rate * hop_ms / 1000))


def win_length(sample_rate: int, win_ms: float) -> int:
    """STFT window (and FFT size) in samples; the spectrum has win_length // 2 + 1 bins."""
    return max(2, round(sample_rate * win_ms / 1000))


def spec_frames(seconds: float, sample_rate: int, hop_ms: float = 10.0) -> int:
    """Frames of `log_mel` over `seconds` of audio: 1 + samples // hop (centred windows)."""
    return 1 + round(seconds * sample_rate) // hop_length(sample_rate, hop_ms)


def mel_spectrogram(sample_rate: int, n_mels: int, *, win_ms: float = 25.0, hop_ms: float = 10.0) -> T.MelSpectrogram:
    """The power mel spectrogram transform (HTK mel scale, 0 Hz to Nyquist) that `log_mel` applies.

    Windows of win_ms (n_fft = the window), hop of hop_ms; centred frames with zero padding at the
    edges, so a window of S samples gives 1 + S // hop frames. Build once and pass it to `log_mel`.
    """
    win = win_length(sample_rate, win_ms)
    return T.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=win,
        hop_length=hop_length(sample_rate, hop_ms),
        n_mels=n_mels,
        power=2.0,
        center=True,
        pad_mode="constant",
    )


@lru_cache(maxsize=8)
def _cached_mel(sample_rate: int, n_mels: int, win_ms: float, hop_ms: float) -> T.MelSpectrogram:
    return mel_spectrogram(sample_rate, n_mels, win_ms=win_ms, hop_ms=hop_ms)


_TO_DB = T.AmplitudeToDB(stype="power", top_db=80.0)


def log_mel(
    wave: torch.Tensor,
    sample_rate: int,
    n_mels: int,
    *,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    mel: T.MelSpectrogram | None = None,
) -> torch.Tensor:
    """Log-mel spectrogram in dB of a mono waveform (samples,): (1, n_mels, 1 + samples // hop).

    Power is floored at 1e-10 (-100 dB) and at 80 dB below the spectrogram's maximum. `mel` is a
    prebuilt `mel_spectrogram(sample_rate, n_mels, win_ms=..., hop_ms=...)`; built (and cached) here
    when None.
    """
    mel = mel if mel is not None else _cached_mel(sample_rate, n_mels, float(win_ms), float(hop_ms))
    with torch.no_grad():
        spec = mel(wave.reshape(1, -1).float())  # (1, n_mels, frames)
        return _TO_DB(spec)


def normalize_spec(spec: torch.Tensor, norm: str = "instance") -> torch.Tensor:
    """Normalise a dB spectrogram (..., F, T').

    "instance": zero mean, unit std over the whole spectrogram (a constant one, e.g. silence, -> 0);
    "fixed": (dB + 50) / 25, which keeps the level, so gain and silence stay visible to the encoder.
    """
    if norm == "instance":
        return (spec - spec.mean()) / (spec.std(unbiased=False) + 1e-5)
    if norm == "fixed":
        return (spec + 50.0) / 25.0
    raise UserError(f"audio norm must be 'instance' or 'fixed'; got {norm!r}")


def fit_frames(spec: torch.Tensor, frames: int, value: float = 0.0) -> torch.Tensor:
    """Crop or right-pad (with `value`) the last (time) axis of (..., T') to `frames`: (..., frames).

    The start is kept, so frame 0 stays aligned with the clip's first video frame.
    """
    t = spec.shape[-1]
    if t >= frames:
        return spec[..., :frames]
    return torch.nn.functional.pad(spec, (0, frames - t), value=value)


def mask_(spec: torch.Tensor, width: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment: zero a random band of 0..width rows along `dim` of spec (1, F, T'), in place."""
    size = spec.shape[dim]
    w = int(torch.randint(0, min(width, size) + 1, (1,), generator=generator))
    if w:
        s = int(torch.randint(0, size - w + 1, (1,), generator=generator))
        spec.narrow(dim, s, w).zero_()
    return spec
