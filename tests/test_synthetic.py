"""The synthetic dataset: UCF101 layout, decodable files, splits, determinism, and class = motion only."""

from __future__ import annotations

import json
import logging
import os
import re
import wave

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from mvcoding.config import CONFIG_DIR
from mvcoding.datasets import synthetic
from mvcoding.errors import UserError
from mvcoding.video import read_frames, video_info

SMALL = {"classes": 8, "videos_per_class": 3, "frames": 12, "size": 32, "fps": 25.0, "seed": 0}
NAMES = [m.name for m in synthetic.MOTIONS[:8]]
_VIDEO = re.compile(r"^(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.avi$")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.generate(root, **SMALL, workers=1)
    return root


def _videos(root):
    return sorted((root / "UCF-101").glob("*/*.avi"))


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_videos_decode_to_the_expected_shape(small):
    videos = _videos(small)
    assert len(videos) == 8 * 3
    assert sorted(p.name for p in (small / "UCF-101").iterdir()) == sorted(NAMES)
    for path in videos:
        assert path.parent.name in path.stem  # v_<Class>_gXX_cYY inside <Class>/
        frames = read_frames(str(path))
        assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
        assert frames.std() > 5  # an image, not a blank
    n, fps, h, w = video_info(str(videos[0]))
    assert (n, h, w) == (12, 32, 32) and fps == pytest.approx(25.0)


def test_split_files_are_well_formed_and_groups_never_cross(small):
    lists = small / "ucfTrainTestlist"
    assert (lists / "classInd.txt").read_text().splitlines() == [f"{i + 1} {n}" for i, n in enumerate(NAMES)]
    every = {p.relative_to(small / "UCF-101").as_posix() for p in _videos(small)}
    test_sets = []
    for split in (1, 2, 3):
        train, test = {}, set()
        for line in (lists / f"trainlist0{split}.txt").read_text().splitlines():
            path, label = line.split(" ")
            cls, cls_again, _, _ = _VIDEO.match(path).groups()
            assert cls == cls_again and int(label) == NAMES.index(cls) + 1
            train[path] = int(label)
        for line in (lists / f"testlist0{split}.txt").read_text().splitlines():
            assert _VIDEO.match(line) and " " not in line
            test.add(line)
        assert set(train) | test == every and not set(train) & test

        def groups(paths):
            return {(m.group(1), m.group(3)) for m in map(_VIDEO.match, paths)}

        assert not groups(train) & groups(test)
        assert {c for c, _ in groups(test)} == set(NAMES) == {c for c, _ in groups(train)}
        test_sets.append(frozenset(test))
    assert len(set(test_sets)) == 3  # each split tests on different groups


def test_audio_and_depth_sit_beside_every_video(small):
    info = json.loads((small / "synthetic.json").read_text())
    assert info["params"] == {**SMALL, **synthetic.LATER_KEYS} and [c["name"] for c in info["classes"]] == NAMES
    assert info["depth"]["units"] == "millimetres"
    for path in _videos(small):
        with wave.open(str(path.with_suffix(".wav"))) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, synthetic.SAMPLE_RATE)
            assert w.getnframes() == round(12 / 25 * synthetic.SAMPLE_RATE)
            assert np.abs(np.frombuffer(w.readframes(w.getnframes()), "<i2")).max() > 1000
        depth_dir = small / "depth" / path.parent.name / path.stem
        names = sorted(p.name for p in depth_dir.iterdir())
        assert names == [f"{i:05d}.png" for i in range(12)]
        for name in names[:3]:
            d = cv2.imread(str(depth_dir / name), cv2.IMREAD_UNCHANGED)
            assert d.dtype == np.uint16 and d.shape == (32, 32)
            obj = d <= synthetic.OBJECT_MM[1]
            assert obj.any() and (~obj).any()  # an object in front of the background
            assert synthetic.OBJECT_MM[0] <= d.min() and d.max() <= synthetic.BACKGROUND_RANGE_MM[1]
            assert (d[~obj] >= synthetic.BACKGROUND_RANGE_MM[0]).all()


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    params = {"classes": 3, "videos_per_class": 2, "frames": 6, "size": 32}
    synthetic.generate(tmp_path / "a", **params, seed=5, workers=1)
    synthetic.generate(tmp_path / "b", **params, seed=5, workers=2)
    synthetic.generate(tmp_path / "c", **params, seed=6, workers=1)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert len(a) > 6 * 8 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith((".avi", ".wav")))


# ---- class information: in the motion, not in the appearance -------------------------------------


# one class of each kind of motion: four translations, both rotations, approach and recede
KINDS = ("MoveLeft", "MoveRight", "MoveUp", "MoveDown", "RotateCW", "RotateCCW", "Approach", "Recede")
KIND_LABELS = [[m.name for m in synthetic.MOTIONS].index(k) for k in KINDS]


def _kind(label: int) -> int:
    """Position in KINDS of a MOTIONS index: the features' class index in these tests."""
    return KIND_LABELS.index(label)


@pytest.fixture(scope="module")
def rendered():
    """The 8 motions of KINDS x 12 videos, each in its own group (own background), as (MOTIONS index, arrays)."""
    out = []
    for label in KIND_LABELS:
        for n in range(12):
            out.append((label, synthetic.render_video(label, 7, n + 1, 1, frames=12, size=32, fps=25.0)))
    return out


def _nearest_class_mean(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier on standardised features."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        means = np.stack([x[keep & (y == k)].mean(0) for k in range(y.max() + 1)])
        hits += int(np.argmin(((means - x[i]) ** 2).sum(1)) == y[i])
    return hits / len(y)


def _centroids(mask: np.ndarray) -> np.ndarray:
    """(T, 3): circular-mean centre x, y of the mask (the world wraps around) and its area, per frame."""
    t, h, w = mask.shape
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        cx = np.angle(np.exp(2j * np.pi * xs / w).mean()) * w / (2 * np.pi) % w
        cy = np.angle(np.exp(2j * np.pi * ys / h).mean()) * h / (2 * np.pi) % h
        out.append((cx, cy, len(xs)))
    return np.array(out)


def _wrapped_steps(a: np.ndarray, n: int) -> np.ndarray:
    return (np.diff(a) + n / 2) % n - n / 2


def test_appearance_is_near_chance_while_centroid_motion_predicts_the_class(rendered):
    y = np.array([_kind(label) for label, _ in rendered])
    appearance = {"frame colour": [], "object colour": [], "object size": [], "contrast": []}
    motion = []
    for _, v in rendered:
        mask, rgb = v["depth"] <= synthetic.OBJECT_MM[1], v["rgb"].astype(float)
        appearance["frame colour"].append(rgb.mean((0, 1, 2)))
        appearance["object colour"].append(rgb[mask].mean(0))
        appearance["object size"].append([mask.mean()])
        appearance["contrast"].append([rgb.std()])
        c = _centroids(mask)
        steps = [_wrapped_steps(c[:, 0], 32), _wrapped_steps(c[:, 1], 32), np.diff(np.log(c[:, 2]))]
        motion.append([np.median(s) for s in steps])
    for what, features in appearance.items():  # chance: 1/8
        accuracy = _nearest_class_mean(np.array(features), y)
        assert accuracy <= 0.3, f"{what} predicts the class: {accuracy:.2f}"
    # left/right/up/down/approach/recede from the centroid and area; the two rotations look alike here
    accuracy = _nearest_class_mean(np.array(motion), y)
    assert accuracy >= 0.7, accuracy


def test_dis_optical_flow_sees_the_motion(rendered):
    """Mean flow, curl and divergence of the object's DIS flow (what the flow view computes) give the class."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    features, y = [], []
    for label, v in rendered:
        mask = v["depth"] <= synthetic.OBJECT_MM[1]
        centres = _centroids(mask)
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v["rgb"]]
        per_step = []
        for t in range(len(grey) - 1):  # roll the object to the middle so that it is not split by an edge
            shift = (int(round(16 - centres[t, 1])), int(round(16 - centres[t, 0])))
            a, b, m = (np.roll(x, shift, (0, 1)) for x in (grey[t], grey[t + 1], mask[t]))
            flow = dis.calc(a, b, None)
            ys, xs = np.nonzero(m)
            u, w = flow[ys, xs, 0], flow[ys, xs, 1]
            ox, oy = xs - xs.mean(), ys - ys.mean()
            r2 = (ox**2 + oy**2).mean()
            per_step.append([u.mean(), w.mean(), (ox * w - oy * u).mean() / r2, (ox * u + oy * w).mean() / r2])
        features.append(np.median(per_step, axis=0))
        y.append(_kind(label))
    features, y = np.array(features), np.array(y)
    mean = np.stack([features[y == k].mean(0) for k in range(8)])  # columns: u, v, curl, divergence
    assert mean[0, 0] < -0.3 and mean[1, 0] > 0.3 and mean[2, 1] < -0.3 and mean[3, 1] > 0.3  # left right up down
    assert mean[4, 2] > 0.01 and mean[5, 2] < -0.01  # clockwise (image y points down), counter-clockwise
    assert mean[6, 3] > 0.01 and mean[7, 3] < -0.01  # approach expands, recede contracts
    accuracy = _nearest_class_mean(features, y)
    assert accuracy >= 0.8, accuracy


def test_depth_and_loudness_follow_the_distance(rendered):
    hop = synthetic.SAMPLE_RATE // 25  # audio samples per frame
    for label, v in rendered:
        name = synthetic.MOTIONS[label].name
        if name not in ("Approach", "Recede"):
            continue
        mask = v["depth"] <= synthetic.OBJECT_MM[1]
        distance = np.array([np.median(d[m]) for d, m in zip(v["depth"], mask, strict=True)])
        audio = v["audio"].astype(float)
        loudness = [np.sqrt(np.mean(audio[max(0, i * hop - 80) : i * hop + 80] ** 2)) for i in range(12)]
        assert np.corrcoef(loudness, 1 / distance)[0, 1] > 0.8  # louder when nearer
        rising = (np.diff(distance) > 0).mean()  # all steps but the jump back at the end of a cycle
        assert rising <= 0.25 if name == "Approach" else rising >= 0.75


# ---- load(cfg): generate on first use, then the UCF101 reader ---------------------------------


def _cfg(root, **over):
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "dataset" / "synthetic.yaml"), {"root": str(root)}, over)
    cfg.generate = {**cfg.generate, **SMALL, "workers": 1}
    OmegaConf.set_struct(cfg, True)
    return cfg


def test_config_defaults_match_generate():
    cfg = OmegaConf.load(CONFIG_DIR / "dataset" / "synthetic.yaml")
    assert cfg.name == "synthetic" and cfg.root == "data/synthetic" and cfg.split == 1
    assert dict(cfg.generate) == synthetic.DEFAULTS


def test_load_generates_once_then_reads_the_ucf101_layout(tmp_path, caplog):
    root = tmp_path / "synthetic"
    with caplog.at_level(logging.INFO, logger=synthetic.__name__):
        index = synthetic.load(_cfg(root))
        again = synthetic.load(_cfg(root))
    generating = [r for r in caplog.records if "generating the synthetic dataset in" in r.getMessage()]
    assert len(generating) == 1 and str(root) in generating[0].getMessage()
    assert index.name == "synthetic" and index.classes == NAMES and index.split == 1
    assert len(index.train) + len(index.test) == 24 and index.train and index.test
    assert again.train == index.train and again.test == index.test
    record = index.test[0]
    assert record.video_id.startswith("UCF-101/") and record.path.endswith(".avi")
    assert NAMES[record.label] in record.video_id
    depth = tmp_path / "synthetic" / "depth" / record.video_id.removeprefix("UCF-101/")
    assert index.extra["depth_dir"] == str(root / "depth") and (depth / "00000.png").is_file()
    # nothing but the dataset (and the lock) is left beside it: no temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", "synthetic"]
    assert sorted(p.name for p in root.iterdir()) == ["UCF-101", "depth", "synthetic.json", "ucfTrainTestlist"]
    umask = os.umask(0)
    os.umask(umask)
    assert root.stat().st_mode & 0o777 == 0o777 & ~umask  # not tempfile's private 0700
    other = synthetic.load(_cfg(root, split=2))
    assert {r.video_id for r in other.test} != {r.video_id for r in index.test}


def test_load_generates_into_a_folder_that_holds_other_things(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "keep.txt").write_text("x")
    index = synthetic.load(_cfg(tmp_path))
    assert len(index.train) + len(index.test) == 24 and (tmp_path / "cache" / "keep.txt").is_file()
    assert not list(tmp_path.glob(".synthetic-tmp-*"))


def test_load_redoes_an_interrupted_generation(tmp_path):
    synthetic.generate(tmp_path, **SMALL, workers=1)
    for p in (tmp_path / "ucfTrainTestlist").iterdir():  # killed before the split lists were moved in
        p.unlink()
    (tmp_path / "ucfTrainTestlist").rmdir()
    (tmp_path / "UCF-101" / NAMES[0] / f"v_{NAMES[0]}_g01_c01.avi").unlink()
    index = synthetic.load(_cfg(tmp_path))
    assert len(index.train) + len(index.test) == 24


def test_load_refuses_a_folder_with_foreign_data(tmp_path):
    (tmp_path / "UCF-101" / "Foo").mkdir(parents=True)
    with pytest.raises(UserError, match="not a synthetic"):
        synthetic.load(_cfg(tmp_path))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("size", 33, "size must be even"),
        ("classes", len(synthetic.MOTIONS) + 1, "classes must be"),
        ("videos_per_class", 1, "videos_per_class must be 2..10000"),
        ("videos_per_class", 10**30, "videos_per_class must be 2..10000"),
        ("frames", 10**9, "frames must be 2..10000"),
        ("size", 4096, "size must be even and 16..1024"),
        ("noise", -1.0, "noise must be 0..255"),
        ("noise", 256.0, "noise must be 0..255"),
        ("camera", -0.5, "camera must be a finite number >= 0"),
        ("distractors", synthetic.MAX_DISTRACTORS + 1, "distractors must be"),
        ("contrast", 300.0, "contrast must be"),
    ],
)
def test_bad_settings_are_user_errors(tmp_path, key, value, message):
    with pytest.raises(UserError, match=message):
        synthetic.generate(tmp_path, **{**SMALL, key: value})
    cfg = {"name": "synthetic", "root": str(tmp_path / "x"), "split": 1, "generate": {**SMALL, key: value}}
    with pytest.raises(UserError, match=message):
        synthetic.load(cfg)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", ["noise", "camera", "contrast", "fps", "frames", "classes"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "1e999"])
def test_non_finite_settings_are_refused_before_any_work(tmp_path, key, value):
    """nan made every frame 0 (noise); int(inf) raised OverflowError: one line naming the key, nothing written."""
    with pytest.raises(UserError, match=rf"dataset.generate.{key}=.* is not valid: (a finite number|an integer)"):
        synthetic.load({"name": "synthetic", "root": str(tmp_path / "x"), "split": 1, "generate": {key: value}})
    for direct in (float("nan"), float("inf")):
        if key in synthetic.FLOAT_KEYS:
            with pytest.raises(UserError, match=f"{key} must be"):
                synthetic.generate(tmp_path / "y", **{**SMALL, key: direct})
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_fractional_count_is_refused_not_truncated(tmp_path):
    cfg = {"name": "synthetic", "root": str(tmp_path / "x"), "split": 1, "generate": {"videos_per_class": 2.7}}
    with pytest.raises(UserError, match=r"dataset.generate.videos_per_class=2.7 is not valid: an integer"):
        synthetic.load(cfg)
    assert not (tmp_path / "x").exists()


def test_unknown_generate_key_is_named(tmp_path):
    cfg = {"name": "synthetic", "root": str(tmp_path), "split": 1, "generate": {"frame": 8}}
    with pytest.raises(UserError, match="dataset.generate.frame"):
        synthetic.load(cfg)


# ---- nuisance options: each changes what it says and nothing else -------------------------------


def _render(label=0, group=1, clip=1, frames=12, size=32, **options):
    return synthetic.render_video(label, 3, group, clip, frames=frames, size=size, fps=25.0, **options)


def _same_draws(a: dict, b: dict, skip: tuple[str, ...]) -> None:
    """The two videos' drawn parameters agree on every key outside `skip`."""
    assert a.keys() == b.keys()
    for key in a.keys() - set(skip):
        assert np.array_equal(np.asarray(a[key], dtype=object), np.asarray(b[key], dtype=object)), key


def test_noise_adds_independent_pixel_noise_of_the_set_std_and_matching_depth_and_audio_noise():
    clean, noisy = _render(size=64), _render(size=64, noise=8.0)
    _same_draws(clean["params"], noisy["params"], skip=("added_noise",))
    rgb = noisy["rgb"].astype(float) - clean["rgb"]
    inside = (clean["rgb"] > 40) & (clean["rgb"] < 215)  # clipping at 0 and 255 would shrink the std
    assert rgb[inside].std() == pytest.approx(8.0, rel=0.05) and abs(rgb[inside].mean()) < 0.2
    channels = rgb.reshape(-1, 3)
    assert abs(np.corrcoef(channels[:, 0], channels[:, 1])[0, 1]) < 0.05  # colour noise, not grey
    depth = noisy["depth"].astype(float) - clean["depth"]
    assert depth.std() == pytest.approx(8.0 * synthetic.DEPTH_NOISE_MM, rel=0.05)
    audio = noisy["audio"].astype(float) - clean["audio"]
    assert audio.std() == pytest.approx(8.0 / 255 * 32767, rel=0.05)


def _background_velocity(rgb: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Median (x, y) px per frame by which the background moves between consecutive frames (rgb:
    T x H x W x 3, keep: T x H x W): a search over moves, 0.5 px apart then 0.1 px apart around the
    best, with OpenCV's bilinear warp wrapping around. In colour: both background colours may have
    the same grey level."""
    size, rgb = rgb.shape[1], rgb.astype(np.float32)
    keep = np.stack([cv2.erode(k.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for k in keep])  # no edges

    def error(a, b, ok, move):
        shift = np.float32([[1, 0, move[0]], [0, 1, move[1]]])
        moved = cv2.warpAffine(a, shift, (size, size), borderMode=cv2.BORDER_WRAP)
        return np.abs(moved - b)[ok].mean()

    found = []
    for a, b, ok in zip(rgb[:-1], rgb[1:], keep[:-1] & keep[1:], strict=True):
        best = (0.0, 0.0)
        for step, reach in ((0.5, 2.0), (0.1, 0.5)):
            grid = np.arange(-reach, reach + step / 2, step)
            best = min(((best[0] + x, best[1] + y) for x in grid for y in grid), key=lambda m: error(a, b, ok, m))
        found.append(best)
    return np.median(found, axis=0)


@pytest.mark.parametrize("clip", [1, 2])
def test_camera_pans_background_and_object_by_the_drawn_velocity(clip):
    frames, size, camera = 8, 64, 1.5
    options = {"frames": frames, "size": size, "clip": clip, "contrast": 150.0}  # a background to see
    still, panned = _render(**options), _render(**options, camera=camera)
    _same_draws(still["params"], panned["params"], skip=("camera",))
    velocity = panned["params"]["camera"]
    assert 0.5 < np.hypot(*velocity) <= camera  # px per frame (size 64: no scaling); big enough to measure
    assert np.array_equal(still["audio"], panned["audio"])  # the sound source does not see the camera
    assert np.array_equal(still["rgb"][0], panned["rgb"][0])  # frame 0: nothing has moved yet
    background = panned["depth"] > synthetic.OBJECT_MM[1]
    measured = _background_velocity(panned["rgb"], background)
    assert np.allclose(measured, velocity, atol=0.15), (measured, velocity)
    still_velocity = _background_velocity(still["rgb"], still["depth"] > synthetic.OBJECT_MM[1])
    assert np.allclose(still_velocity, 0, atol=0.15)  # a warp smooths the noise: a small bias
    # the object (MoveLeft) moves by its own velocity plus the camera's
    own = np.array([-panned["params"]["speed"], 0.0])
    steps = [_wrapped_steps(_centroids(~background)[:, i], size) for i in (0, 1)]
    assert np.allclose(np.median(steps, axis=1), own + velocity, atol=0.15)


def test_a_distractor_adds_a_moving_disc_behind_the_object_and_nothing_else():
    size, frames = 64, 12
    plain, busy = (_render(label=8, frames=frames, size=size, distractors=n) for n in (0, 1))  # RotateCW
    _same_draws(plain["params"], busy["params"], skip=("distractors",))
    (d,) = busy["params"]["distractors"]
    assert np.array_equal(plain["audio"], busy["audio"])  # silent
    # where a disc of radius r sliding at the drawn velocity would be (the world wraps around)
    t, grid = np.arange(frames)[:, None, None], np.arange(size) + 0.5
    dx = (grid[None, None, :] - d["c0"][0] - d["velocity"][0] * t + size / 2) % size - size / 2
    dy = (grid[None, :, None] - d["c0"][1] - d["velocity"][1] * t + size / 2) % size - size / 2
    distance = np.hypot(dx, dy)
    behind = plain["depth"] <= synthetic.OBJECT_MM[1]  # the object hides it
    rgb_changed, depth_changed = (plain[k] != busy[k] for k in ("rgb", "depth"))
    assert not rgb_changed.any(-1)[distance > d["r"] + 1].any()  # nothing changes elsewhere
    assert not depth_changed[distance > d["r"] + 1].any()
    inside = (distance < d["r"] - 1) & ~behind
    assert inside.sum() > frames * 0.5 * np.pi * d["r"] ** 2 and depth_changed[inside].all()
    assert rgb_changed.any(-1)[inside].mean() > 0.9  # its texture may match the background here and there
    assert (synthetic.DISTRACTOR_MM[0] - 1 <= busy["depth"][depth_changed]).all()
    assert (busy["depth"][depth_changed] <= synthetic.DISTRACTOR_MM[1] + 1).all()
    assert not depth_changed[behind].any()  # behind the object: hidden wherever the object covers it fully
    covered = np.stack([cv2.erode(b.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for b in behind])
    assert (covered & (distance < d["r"])).any() and not rgb_changed.any(-1)[covered].any()


def test_nuisances_are_drawn_independently_of_the_class():
    """Camera velocity and distractor factors of 14 classes x 20 videos: a classifier on them is near chance."""
    features, y = [], []
    options = {"frames": 2, "size": 16, "camera": 1.0, "distractors": 1}
    for label in range(len(synthetic.MOTIONS)):
        for n in range(20):
            p = _render(label=label, group=n // 4 + 1, clip=n % 4 + 1, **options)["params"]
            (d,) = p["distractors"]
            features.append([*p["camera"], *d["velocity"], d["r"], d["depth_mm"], *d["colour"], *d["c0"]])
            y.append(label)
    accuracy = _nearest_class_mean(np.array(features), np.array(y))
    assert accuracy <= 0.2, accuracy  # chance: 1/14


def test_options_are_deterministic_recorded_and_change_the_files(tmp_path):
    params = {"classes": 3, "videos_per_class": 2, "frames": 6, "size": 32, "seed": 5}
    options = {"noise": 4.0, "camera": 1.0, "distractors": 2, "contrast": 30.0}
    synthetic.generate(tmp_path / "a", **params, **options, workers=1)
    synthetic.generate(tmp_path / "b", **params, **options, workers=2)
    synthetic.generate(tmp_path / "c", **params, workers=1)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert json.loads(a["synthetic.json"])["params"] == {**params, "fps": 25.0, **options}
    assert all(a[k] != c[k] for k in a if k.endswith(".avi"))


def test_a_folder_generated_with_other_options_is_reported(tmp_path, caplog):
    root = tmp_path / "synthetic"
    synthetic.load(_cfg(root))
    info = json.loads((root / "synthetic.json").read_text())
    for key in synthetic.LATER_KEYS:  # as written before the options existed: read as their defaults
        del info["params"][key]
    (root / "synthetic.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger=synthetic.__name__):
        synthetic.load(_cfg(root))
        assert not caplog.records
        index = synthetic.load(_cfg(root, generate={"camera": 1.0}))
    (record,) = caplog.records
    assert str(root) in record.getMessage() and "'camera': 1.0" in record.getMessage()
    assert index.extra["generate"]["camera"] == 0.0  # the folder as it is
