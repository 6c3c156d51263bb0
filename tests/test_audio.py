"""The `audio` view and its pure functions: windows, resampling, log-mel, fixed shapes, missing audio."""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import mvcoding.views.audio  # noqa: F401  (registers `audio`, also when mvcoding.views does not list it yet)
from mvcoding.audio import fit_frames, log_mel, read_audio, spec_frames
from mvcoding.errors import UserError
from mvcoding.registry import Aug, Clip, ViewContext, build_view, view_settings
from mvcoding.video import write_video

FPS = 25.0
CTX = ViewContext(dataset="synthetic", root="/nonexistent", cache_dir="/nonexistent/cache", frames=8, stride=2, size=32)
EVAL = Aug(train=False, crop=None, flip=False)


def write_wav(path, samples: np.ndarray, sample_rate: int, width: int = 2) -> None:
    """Write float samples in [-1, 1], (S,) or (S, channels), as a PCM .wav of `width` bytes per sample."""
    x = samples.reshape(len(samples), -1)
    if width == 1:
        raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        v = np.round(x * (2**23 - 1)).astype(np.int32).reshape(-1, 1)
        raw = np.concatenate([(v >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    else:
        raw = np.round(x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(sample_rate)
        w.writeframes(raw)


def tone(freq: float, sample_rate: int, seconds: float, start: int = 0) -> np.ndarray:
    """0.5 * sin(2 pi f t) at samples start, start + 1, ... (seconds * sample_rate samples), float64."""
    return 0.5 * np.sin(2 * np.pi * freq * (start + np.arange(round(seconds * sample_rate))) / sample_rate)


def write_avi_with_audio(path, frames: np.ndarray, fps: float, pcm: np.ndarray, sample_rate: int) -> None:
    """An AVI holding frames (T, H, W, 3) uint8 as MJPG and pcm (S,) int16 mono as PCM, interleaved.

    A minimal RIFF muxer, so the video-stream path is tested without an ffmpeg binary.
    """
    import cv2

    def chunk(fourcc: bytes, data: bytes) -> bytes:
        return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    def riff_list(kind: bytes, body: bytes) -> bytes:
        return chunk(b"LIST", kind + body)

    t, h, w, _ = frames.shape
    jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(f[:, :, ::-1]))[1].tobytes() for f in frames]
    bounds = np.round(np.arange(t + 1) * sample_rate / fps).astype(int)
    bounds[-1] = len(pcm)
    movi, index = b"", b""
    for i, jpg in enumerate(jpegs):
        for ck, data in ((b"00dc", jpg), (b"01wb", pcm[bounds[i] : bounds[i + 1]].astype("<i2").tobytes())):
            index += ck + struct.pack("<III", 0x10, 4 + len(movi), len(data))
            movi += chunk(ck, data)
    avih = struct.pack("<14I", round(1e6 / fps), 0, 0, 0x10, t, 0, 2, max(map(len, jpegs)), w, h, 0, 0, 0, 0)
    strh = "<4s4sIHHIIIIIIIIhhhh"
    vstrh = struct.pack(strh, b"vids", b"MJPG", 0, 0, 0, 0, 1000, round(fps * 1000), 0, t, 0, 2**32 - 1, 0, 0, 0, w, h)
    vstrf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    astrh = struct.pack(strh, b"auds", b"\0" * 4, 0, 0, 0, 0, 1, sample_rate, 0, len(pcm), 0, 2**32 - 1, 2, 0, 0, 0, 0)
    astrf = struct.pack("<HHIIHHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16, 0)
    hdrl = riff_list(
        b"hdrl",
        chunk(b"avih", avih)
        + riff_list(b"strl", chunk(b"strh", vstrh) + chunk(b"strf", vstrf))
        + riff_list(b"strl", chunk(b"strh", astrh) + chunk(b"strf", astrf)),
    )
    body = b"AVI " + hdrl + riff_list(b"movi", movi) + chunk(b"idx1", index)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def frames(t: int = 50) -> np.ndarray:
    return np.full((t, 32, 32, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """2 s videos at 25 fps: `noise` with a 16 kHz white-noise sidecar, `tone22k` with a 1 kHz tone at
    22.05 kHz, `mute` with no audio at all. Returns {name: (video path, samples written)}."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    out = {}
    for name, sr, x in [
        ("noise", 16000, rng.uniform(-0.5, 0.5, 32000)),
        ("tone22k", 22050, tone(1000, 22050, 2.0)),
        ("mute", None, None),
    ]:
        write_video(root / f"{name}.avi", frames(), FPS)
        if x is not None:
            write_wav(root / f"{name}.wav", x, sr)
            x = np.round(x * 32767) / 32768  # what the 16-bit file holds, as read back
        out[name] = (str(root / f"{name}.avi"), x)
    return out


def clip(path: str, start: int, num_frames: int = 8, stride: int = 2, fps: float = FPS) -> Clip:
    return Clip("v", path, start, num_frames, stride, fps, 50)


def test_window_matches_the_samples_written(videos):
    path, x = videos["noise"]
    c = clip(path, start=10)  # frames 10..24 at 25 fps: [0.4, 1.04) s
    t0, t1 = c.seconds
    a = read_audio(path, t0, t1, 16000)
    assert a.dtype == torch.float32 and a.shape == (10240,)
    np.testing.assert_allclose(a.numpy(), x[6400:16640], atol=1e-6)
    # a window running past the end of the audio is padded with zeros
    tail = read_audio(path, 1.9, 2.1, 16000)
    np.testing.assert_allclose(tail[:1600].numpy(), x[30400:], atol=1e-6)
    assert tail.shape == (3200,) and not tail[1600:].any()


@pytest.mark.parametrize("target", [16000, 8000, 22050])
def test_resampling_gives_the_expected_length_and_signal(videos, target):
    path, _ = videos["tone22k"]
    t0, t1 = 0.4, 1.04
    a = read_audio(path, t0, t1, target)
    assert a.shape == (round((t1 - t0) * target),)
    # the same tone sampled at the target rate, aligned on round(t0 * target)
    expected = tone(1000, target, t1 - t0, start=round(t0 * target))
    np.testing.assert_allclose(a.numpy(), expected, atol=2e-3)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_and_stereo_mix_to_mono(tmp_path, width):
    write_video(tmp_path / "v.avi", frames(10), FPS)
    left, right = tone(500, 8000, 0.4), tone(1500, 8000, 0.4)
    write_wav(tmp_path / "v.wav", np.stack([left, right], axis=1), 8000, width=width)
    a = read_audio(tmp_path / "v.avi", 0.0, 0.4, 8000, source="wav")
    np.testing.assert_allclose(a.numpy(), (left + right) / 2, atol=2 / 2 ** (8 * width - 1) + 1e-6)


def htk_mel(f: float) -> float:
    return 2595 * math.log10(1 + f / 700)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0, 6000.0])
def test_log_mel_peaks_at_the_tones_mel_bin(freq):
    sr, n_mels = 16000, 64
    spec = log_mel(torch.from_numpy(tone(freq, sr, 0.5)).float(), sr, n_mels)
    assert spec.shape == (1, n_mels, spec_frames(0.5, sr))
    # triangular filters centred at n_mels points evenly spaced in HTK mel between 0 Hz and Nyquist
    centres = np.linspace(htk_mel(0), htk_mel(sr / 2), n_mels + 2)[1:-1]
    expected = int(np.argmin(np.abs(centres - htk_mel(freq))))
    assert int(spec[0, :, 5:-5].mean(1).argmax()) == expected


def test_fit_frames_crops_and_pads():
    spec = torch.arange(12.0).reshape(1, 2, 6)
    assert torch.equal(fit_frames(spec, 4), spec[..., :4])
    padded = fit_frames(spec, 8, value=-1.0)
    assert padded.shape == (1, 2, 8) and torch.equal(padded[..., :6], spec) and (padded[..., 6:] == -1).all()


def test_batch_has_one_shape_whatever_the_clip(videos):
    view = build_view("audio", CTX)
    seconds = CTX.frames * CTX.stride / 25
    expected = (1, 64, spec_frames(seconds, 16000))
    path, _ = videos["noise"]
    clips = [clip(path, 0), clip(path, 33), clip(path, 20, fps=30.0), clip(path, 20, fps=20.0), clip(path, 45)]
    augs = [EVAL, Aug(train=True, crop=(0.1, 0.2, 0.5, 0.6), flip=True)]
    batch = torch.stack([view.transform(view.decode(c), aug) for c in clips for aug in augs])
    assert batch.shape == (len(clips) * 2, *expected) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all()
    eval_item = view.transform(view.decode(clips[0]), EVAL)
    assert abs(float(eval_item.mean())) < 1e-4 and abs(float(eval_item.std()) - 1) < 1e-2  # instance norm


def test_train_augmentation_is_deterministic_per_item(videos):
    view = build_view("audio", CTX, freq_mask=16, time_mask=30)
    x = view.decode(clip(videos["noise"][0], 10))
    a, b = Aug(train=True, crop=(0.1, 0.2, 0.5, 0.6)), Aug(train=True, crop=(0.3, 0.1, 0.4, 0.6))
    assert torch.equal(view.transform(x, a), view.transform(x, a))
    assert not torch.equal(view.transform(x, a), view.transform(x, b))
    assert not torch.equal(view.transform(x, a), view.transform(x, EVAL))
    # fixed norm keeps the level, so the gain jitter shows; instance norm removes it
    fixed = build_view("audio", CTX, norm="fixed", freq_mask=0, time_mask=0, gain_db=6.0)
    shift = fixed.transform(x, a) - fixed.transform(x, EVAL)
    assert shift.std() < 1e-4 and 0 < shift.abs().mean() <= 6.0 / 25 + 1e-5


def test_no_audio_is_a_user_error_naming_the_fix(videos):
    path, _ = videos["mute"]
    msg = r"video .*mute\.avi has no audio stream and no sidecar \.wav; set views\.audio\.missing=silence"
    with pytest.raises(UserError, match=msg):
        read_audio(path, 0.0, 0.64, 16000)
    view = build_view("audio", CTX)
    with pytest.raises(UserError, match=msg):
        view.decode(clip(path, 0))
    with pytest.raises(UserError, match=r"sidecar .*mute\.wav.*not found.*missing=silence"):
        read_audio(path, 0.0, 0.64, 16000, source="wav")
    with pytest.raises(UserError, match=r"cannot decode the audio of video .*absent\.avi"):
        read_audio(path.replace("mute", "absent"), 0.0, 0.64, 16000)


def test_missing_silence_gives_zeros_of_the_batch_shape(videos):
    view = build_view("audio", CTX, missing="silence")
    x = view.transform(view.decode(clip(videos["mute"][0], 0)), EVAL)
    assert x.shape == (1, 64, spec_frames(CTX.frames * CTX.stride / 25, 16000))
    assert not x.any()


def test_bad_settings_are_user_errors():
    assert {"sample_rate", "n_mels", "source", "missing", "encoder"} <= set(view_settings("audio"))
    for bad in [{"source": "mp3"}, {"missing": "skip"}, {"norm": "batch"}, {"n_mels": 500}, {"sample_rate": 0}]:
        with pytest.raises(UserError, match=r"views\.audio\."):
            build_view("audio", CTX, **bad)


def test_views_output_goes_through_resnet18(videos):
    view = build_view("audio", CTX)
    path, _ = videos["noise"]
    x = torch.stack([view.transform(view.decode(clip(path, s)), EVAL) for s in (0, 17)])
    torch.manual_seed(0)
    encoder = view.build_encoder().eval()
    with torch.no_grad():
        z = encoder(x)
    assert z.shape == (2, 512) == (2, encoder.feat_dim) and torch.isfinite(z).all()


def test_reads_the_videos_own_audio_stream(tmp_path):
    sr = 16000
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 2 * sr)
    pcm = np.round(x * 32767).astype(np.int16)
    path = tmp_path / "av.avi"
    write_avi_with_audio(path, frames(), FPS, pcm, sr)
    c = clip(str(path), start=10)
    t0, t1 = c.seconds
    for source in ("video", "auto"):  # auto: no sidecar, so the stream
        a = read_audio(path, t0, t1, sr, source=source)
        np.testing.assert_allclose(a.numpy(), pcm[6400:16640] / 32768, atol=1e-6)
    with pytest.raises(UserError, match=r"has no audio stream; set views\.audio\.source=auto"):
        write_video(tmp_path / "mute.avi", frames(10), FPS)
        read_audio(tmp_path / "mute.avi", 0.0, 0.2, sr, source="video")


def test_stream_resampled_by_decord_matches_the_wav_path(tmp_path):
    sr, target = 22050, 16000
    x = 0.5 * tone(440, sr, 2.0) + np.random.default_rng(3).uniform(-0.25, 0.25, 2 * sr)
    pcm = np.round(x * 32767).astype(np.int16)
    write_avi_with_audio(tmp_path / "av.avi", frames(), FPS, pcm, sr)
    write_wav(tmp_path / "av.wav", pcm / 32767, sr)
    stream = read_audio(tmp_path / "av.avi", 0.4, 1.68, target, "video").numpy()
    wav = read_audio(tmp_path / "av.avi", 0.4, 1.68, target, "wav").numpy()
    assert stream.shape == wav.shape == (20480,)
    # decord keeps its resampler's delay (a few ms, not a whole sample: noise decorrelates a little)
    inner = slice(100, -100)
    lag = max(range(0, 64), key=lambda k: float(np.dot(stream[100 + k : -100 + k], wav[inner])))
    assert lag <= 48 and np.corrcoef(stream[100 + lag : -100 + lag], wav[inner])[0, 1] > 0.9
    a, b = log_mel(torch.from_numpy(stream), target, 64), log_mel(torch.from_numpy(wav), target, 64)
    assert float((a - b)[..., 2:-2].abs().median()) < 1.0  # dB


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs an ffmpeg binary to mux audio into a video")
def test_reads_audio_muxed_by_ffmpeg(tmp_path):
    sr = 16000
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 2 * sr)
    write_video(tmp_path / "v.avi", frames(), FPS)
    write_wav(tmp_path / "a.wav", x, sr)
    out = tmp_path / "muxed.avi"
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(tmp_path / "v.avi"), "-i", str(tmp_path / "a.wav")]
    subprocess.run([*cmd, "-c:v", "copy", "-c:a", "pcm_s16le", str(out)], check=True)
    a = read_audio(out, 0.4, 1.04, sr, source="video")
    np.testing.assert_allclose(a.numpy(), np.round(x[6400:16640] * 32767) / 32768, atol=1e-4)


# ----------------------------------------------------------------------------- is there audio, before a run
def write_cv2_video(path, fourcc: str, t: int = 10) -> None:
    """A video without audio in the container OpenCV picks from the suffix (mp4v -> MP4, MJPG -> MKV)."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (32, 32))
    if not w.isOpened():
        pytest.skip(f"OpenCV cannot write {path.suffix} here")
    for i in range(t):
        w.write(np.full((32, 32, 3), 10 * i, np.uint8))
    w.release()


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def mp4_headers(*handlers: bytes, moov_last: bool = True) -> bytes:
    """An ISO BMFF file of boxes only: ftyp, mdat and a moov with one trak per handler (`vide`, `soun`)."""
    hdlr = [box(b"hdlr", b"\0" * 8 + h + b"\0" * 12) for h in handlers]
    moov = box(b"moov", box(b"mvhd", b"\0" * 100) + b"".join(box(b"trak", box(b"mdia", h)) for h in hdlr))
    mdat = box(b"mdat", b"\0" * 5000)
    return box(b"ftyp", b"isom\0\0\0\0isom") + (mdat + moov if moov_last else moov + mdat)


def test_has_audio_reads_the_containers_stream_headers(tmp_path, monkeypatch):
    from mvcoding import audio as audio_module
    from mvcoding.audio import audio_in_header, has_audio

    sr = 16000
    write_video(tmp_path / "mute.avi", frames(10), FPS)
    pcm = np.round(np.random.default_rng(4).uniform(-0.5, 0.5, sr) * 32767).astype(np.int16)
    write_avi_with_audio(tmp_path / "av.avi", frames(25), FPS, pcm, sr)
    write_cv2_video(tmp_path / "mute.mp4", "mp4v")  # OpenCV writes the moov after the mdat
    write_cv2_video(tmp_path / "mute.mkv", "MJPG")
    (tmp_path / "sound_last.mp4").write_bytes(mp4_headers(b"vide", b"soun"))
    (tmp_path / "sound_first.mp4").write_bytes(mp4_headers(b"soun", b"vide", moov_last=False))
    (tmp_path / "picture.mp4").write_bytes(mp4_headers(b"vide"))
    expect = {"mute.avi": False, "av.avi": True, "mute.mp4": False, "sound_last.mp4": True}
    expect |= {"sound_first.mp4": True, "picture.mp4": False, "mute.mkv": None}
    assert {name: audio_in_header(tmp_path / name) for name in expect} == expect
    # decord agrees where it can read the file; a container without parsed headers (mkv) is asked of decord
    for name in ("mute.avi", "av.avi", "mute.mp4", "mute.mkv"):
        assert has_audio(tmp_path / name, "video") is bool(expect[name]), name

    # a stream found in the headers is not decoded; headers that cannot tell fall back to decord
    calls = []
    real_reader = audio_module._audio_reader
    monkeypatch.setattr(audio_module, "_audio_reader", lambda *a, **k: calls.append(a) or real_reader(*a, **k))
    assert has_audio(tmp_path / "av.avi", "video") and not calls
    monkeypatch.setattr(audio_module, "audio_in_header", lambda path: None)
    assert has_audio(tmp_path / "av.avi", "video") and len(calls) == 1
    assert not has_audio(tmp_path / "mute.avi", "video") and len(calls) == 2

    # the sidecar .wav: auto and wav take it, video does not look at it
    write_wav(tmp_path / "mute.wav", np.zeros(800), 8000)
    assert has_audio(tmp_path / "mute.avi", "auto") and has_audio(tmp_path / "mute.avi", "wav")
    assert not has_audio(tmp_path / "mute.avi", "video") and not has_audio(tmp_path / "av.avi", "wav")


def test_check_names_the_videos_without_audio(tmp_path, monkeypatch):
    from mvcoding import audio as audio_module
    from mvcoding.datasets import VideoRecord

    sr = 16000
    pcm = np.round(np.random.default_rng(5).uniform(-0.5, 0.5, sr) * 32767).astype(np.int16)
    write_avi_with_audio(tmp_path / "stream.avi", frames(25), FPS, pcm, sr)
    write_video(tmp_path / "sidecar.avi", frames(25), FPS)
    write_wav(tmp_path / "sidecar.wav", pcm / 32767, sr)
    write_video(tmp_path / "mute.avi", frames(25), FPS)
    records = [VideoRecord(name, str(tmp_path / f"{name}.avi"), 0) for name in ("stream", "sidecar", "mute")]

    def one_line_error(view, fragments):
        with pytest.raises(UserError) as info:
            view.check(records)
        msg = str(info.value)
        assert "\n" not in msg and all(f in msg for f in fragments), msg

    fix = "views.audio.missing=silence"
    one_line_error(
        build_view("audio", CTX), ["1 of 3 videos have no audio stream and no sidecar .wav", "mute.avi", fix]
    )
    one_line_error(build_view("audio", CTX, source="wav"), ["2 of 3 videos have no sidecar .wav", "stream.wav", fix])
    one_line_error(build_view("audio", CTX, source="video"), ["2 of 3 videos have no audio stream", "sidecar.avi"])
    assert build_view("audio", CTX, missing="silence").check is None  # silence stands in: nothing to check
    # the probe decodes nothing: a stream is seen in the headers, a sidecar by its name
    monkeypatch.setattr(audio_module, "_audio_reader", lambda *a, **k: pytest.fail("check decoded audio"))
    build_view("audio", CTX).check(records[:2])


def test_a_run_without_audio_stops_before_training(synthetic_root, tmp_path):
    """The synthetic videos carry their audio in sidecars only: with source=video every one lacks it."""
    from conftest import SYNTHETIC, tiny
    from mvcoding.config import load_config
    from mvcoding.train import train

    over = {"views.audio.source": "video", "run.dir": tmp_path / "run", "train.max_steps": 2}
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **over))
    with pytest.raises(UserError, match=r"^views\.audio: (\d+) of \1 videos have no audio stream \(e\.g\. .*\.avi\)"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_no_audio_found_in_a_worker_is_one_line_on_the_command_line(synthetic_root, tmp_path, monkeypatch, capsys):
    """Videos that lose their sidecar after the check: the DataLoader worker's error reaches the user as
    the message alone, without the worker's traceback or the exception's class."""
    from conftest import SYNTHETIC, tiny
    from mvcoding.cli import main
    from mvcoding.config import load_config
    from mvcoding.datasets import load_dataset

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    over = {"run.dir": tmp_path / "run", "train.max_steps": 2, "data.workers": 1, "views.audio.n_mels": 16}
    args = [*tiny(root, **over), "~views.flow"]  # rgb and audio
    records = load_dataset(load_config(SYNTHETIC, args).dataset).records("train")
    for r in records[1:]:  # item 0 is decoded in the main process (the model's sample item)
        Path(r.path).with_suffix(".wav").unlink()
    monkeypatch.setattr(mvcoding.views.audio, "has_audio", lambda path, source: True)  # the check passes
    assert main(["train", SYNTHETIC, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: video ") and err.count("\n") == 1, err
    assert err.endswith(" has no audio stream and no sidecar .wav; set views.audio.missing=silence to use silence\n")
