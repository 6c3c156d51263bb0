"""A generated action dataset whose classes differ only by motion, in the UCF101 layout.

    generate("data/synthetic")                      # 8 classes x 40 videos of 32 frames at 64x64
    index = load({"name": "synthetic", "root": "data/synthetic", "split": 1, "generate": {...}})

One coloured, textured object moves over a textured, static background. The class is the motion
(`MOTIONS`: left, right, up, down, clockwise, counter-clockwise, approach, recede, bounce, shake);
everything about appearance is drawn independently of the class: object colour, shape, texture and
size, background colour and pattern, speed, start position and phase. The world wraps around (an
object leaving on the left comes back on the right), so where the object is in a frame says nothing
about where it is going.

Layout under `root` (the official UCF101 layout, so `mvcoding.datasets.ucf101` reads it):

    UCF-101/<Class>/v_<Class>_gXX_cYY.avi   MJPG video, `frames` frames of `size` x `size` RGB at `fps`
    UCF-101/<Class>/v_<Class>_gXX_cYY.wav   its audio: mono 16-bit PCM at 16 kHz, same duration
    depth/<Class>/v_<Class>_gXX_cYY/00000.png ...  ground-truth depth, one 16-bit PNG per frame,
                                            in millimetres (the per-frame layout RGB-D datasets ship)
    ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt
    synthetic.json                          generation parameters, classes and their motions

Videos of one group gXX share their background (like UCF101's groups share an actor and a scene),
the same background in every class, so a scene says nothing about the class; a group is never split
between train and test; each of the three splits tests on different groups. The background's pattern
is faint (a few grey levels): a visible texture leaked the scene into DIS optical flow, and CMC then
matched RGB to flow by scene instead of by motion.

What each modality carries about the class:
- RGB / optical flow: the motion itself (direction, rotation sense, expansion, oscillation).
- depth: the object's distance (it falls while approaching and rises while receding) and a relief
  that depends on the motion: translating objects lean into their motion (leading edge nearer),
  rotating ones carry a helical ramp whose handedness follows the rotation, approaching ones a dome,
  receding ones a dish.
- audio: a tone whose pitch follows the object's height (higher object, higher pitch), whose loudness
  follows its closeness, with a rhythm set by the kind of motion (steady for translation, four pulses
  per turn for rotation, a tick per bounce...); the base pitch is random. Audio cannot tell left from
  right or clockwise from counter-clockwise: it carries part of the class, not all of it.

Nuisance options (`generate(..., noise=, camera=, distractors=, contrast=)`, `dataset.generate.<key>`),
each drawn independently of the class, from a random stream of its own; the defaults (0, 0, 0, 3)
render exactly what the generator made before they existed. They make the set harder, like real video:
- noise (grey levels, default 0): Gaussian noise of this std added to every RGB pixel and channel of
  every frame; depth gets noise x 5 mm (DEPTH_NOISE_MM), the audio noise / 255 of full scale.
- camera (px per frame at 64 px, default 0): the camera pans at a constant velocity drawn uniformly
  from the disc of this radius. Background, object and distractors all move with it in RGB (hence
  flow) and depth, wrapping around (the background is a torus too, its seam included); the object's
  depth relief and the audio follow the object's own motion, so they do not see the camera.
- distractors (0-4, default 0): smaller flat discs (DISTRACTOR_RADIUS) with a random colour and
  texture, sliding at a random constant velocity (1-3 px per frame, any direction) behind the object;
  in depth a flat disc at DISTRACTOR_MM; silent.
- contrast (grey levels, default 3): the largest per-channel difference between the background's two
  colours. The default keeps the background faint; raise it so that a camera pan is visible.
The options are recorded in synthetic.json's params; a folder generated before they existed reads as
generated with the defaults.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import time
import wave
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvcoding.errors import UserError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # audio samples per second of the sidecar .wav files
FORMAT_VERSION = 1
# Depth in millimetres: an object of radius R_REF (as a fraction of the frame) is Z_REF away; its
# distance is inversely proportional to its radius in the image (a pinhole camera).
Z_REF_MM = 1200.0
R_REF = 0.16
RELIEF_MM = 150.0  # depth relief of the object's surface, +- this much
BACKGROUND_MM = (2800.0, 4400.0)  # distance of the background plane's centre; its slant adds up to +-400
RADIUS = (0.17, 0.19)  # object radius as a fraction of the frame (Approach / Recede scale it by 2.5 ** +-0.5)
# Depth ranges that hold for every video: the object is always nearer than the background.
OBJECT_MM = (
    math.floor(Z_REF_MM * R_REF / (RADIUS[1] * 2.5**0.5) - RELIEF_MM),
    math.ceil(Z_REF_MM * R_REF / (RADIUS[0] * 2.5**-0.5) + RELIEF_MM),
)
BACKGROUND_RANGE_MM = (BACKGROUND_MM[0] - 400, BACKGROUND_MM[1] + 400)
DEFAULTS = {
    "classes": 8,
    "videos_per_class": 40,
    "frames": 32,
    "size": 64,
    "fps": 25.0,
    "seed": 0,
    "workers": 2,
    # nuisance options (see the module docstring); these defaults render what the generator always did
    "noise": 0.0,
    "camera": 0.0,
    "distractors": 0,
    "contrast": 3.0,
}
FLOAT_KEYS = ("fps", "noise", "camera", "contrast")
# Keys a synthetic.json written before they existed lacks: such a folder was generated with these values.
LATER_KEYS = {k: DEFAULTS[k] for k in ("noise", "camera", "distractors", "contrast")}
DEPTH_NOISE_MM = 5.0  # depth noise std per grey level of `noise`: noise 10 -> 50 mm, a third of the relief
MAX_DISTRACTORS = 4
DISTRACTOR_RADIUS = (0.10, 0.13)  # fraction of the frame: smaller than the object (RADIUS)
DISTRACTOR_MM = (1500.0, 1900.0)  # a flat disc at this distance: in front of the background, inside OBJECT_MM


@dataclass(frozen=True)
class Motion:
    """One class: its UCF-style name (CamelCase, no underscores) and what the object does."""

    name: str
    description: str


MOTIONS: tuple[Motion, ...] = (  # the default 8 classes are the 8 directions of translation
    Motion("MoveLeft", "translates left at constant speed (depth: leading edge nearer)"),
    Motion("MoveRight", "translates right at constant speed (depth: leading edge nearer)"),
    Motion("MoveUp", "translates up at constant speed; pitch rises (depth: leading edge nearer)"),
    Motion("MoveDown", "translates down at constant speed; pitch falls (depth: leading edge nearer)"),
    Motion("MoveUpLeft", "translates up and left; pitch rises (depth: leading edge nearer)"),
    Motion("MoveUpRight", "translates up and right; pitch rises (depth: leading edge nearer)"),
    Motion("MoveDownLeft", "translates down and left; pitch falls (depth: leading edge nearer)"),
    Motion("MoveDownRight", "translates down and right; pitch falls (depth: leading edge nearer)"),
    Motion("RotateCW", "rotates clockwise in place (depth: a ramp winding clockwise; audio: 4 pulses per turn)"),
    Motion(
        "RotateCCW",
        "rotates counter-clockwise in place (depth: ramp winding anticlockwise; audio: 4 pulses per turn)",
    ),
    Motion("Approach", "grows 2.5x while coming nearer, repeatedly (depth falls, dome relief; audio: louder)"),
    Motion("Recede", "shrinks 2.5x while moving away, repeatedly (depth rises, dish relief; audio: quieter)"),
    Motion("Bounce", "bounces vertically off an invisible floor (audio: a tick at each bounce)"),
    Motion("Shake", "oscillates left and right (audio: tremolo at the shaking rate)"),
)
SHAPES = ("disc",)  # one silhouette: the outline would otherwise be a cue shared by RGB and flow that is not motion
D = math.sqrt(0.5)  # a diagonal's x and y components
OBJECT_TEXTURES = ("stripes", "checker", "halves")
BACKGROUNDS = ("noise", "stripes", "checker")


# ----------------------------------------------------------------------------------------------
# Rendering one video


def _sample_background(rng: np.random.Generator, size: int, contrast: float = DEFAULTS["contrast"]) -> dict:
    """Background of one group: two colours, a pattern (H, W) in [0, 1] and a slanted depth plane.

    contrast: the largest difference between the two colours, grey levels per channel (drawn up to it).
    """
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if kind == "noise":
        cells = int(rng.integers(4, 9))
        grid = rng.random((cells, cells)).astype(np.float32)
        pattern = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        pattern = (pattern - pattern.min()) / max(float(np.ptp(pattern)), 1e-6)
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 7)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
    else:
        cells = rng.uniform(4, 9)
        pattern = 0.5 + 0.5 * np.tanh(4 * np.sin(np.pi * cells * xx) * np.sin(np.pi * cells * yy))
    colour_a = rng.uniform(20, 235, 3)
    colour_b = np.clip(colour_a + rng.choice([-1, 1], 3) * rng.uniform(0, contrast, 3), 0, 255)
    tilt = rng.uniform(-400, 400, 2)
    depth = rng.uniform(*BACKGROUND_MM) + tilt[0] * (xx - 0.5) + tilt[1] * (yy - 0.5)
    return {"pattern": pattern.astype(np.float32), "colours": (colour_a, colour_b), "depth": depth.astype(np.float32)}


def _distinct_colour(rng: np.random.Generator, background: dict) -> np.ndarray:
    """An object colour that stands out from both background colours."""
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if min(np.abs(colour - c).sum() for c in background["colours"]) > 120:
            break
    return colour


def _sample_clip(motion: str, rng: np.random.Generator, size: int, background: dict) -> dict:
    """The per-video nuisance factors and motion parameters; nothing here depends on the class but `motion`."""
    colour = _distinct_colour(rng, background)
    px = size / 64.0  # speeds and amplitudes are set for 64 px frames and scale with the frame
    p = {
        "motion": motion,
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "texture": OBJECT_TEXTURES[rng.integers(len(OBJECT_TEXTURES))],
        "texture_freq": rng.uniform(1.0, 2.0),
        "colour": colour,
        "shade": colour * rng.uniform(0.3, 0.6),
        "r": rng.uniform(*RADIUS) * size,
        "c0": rng.uniform(0, size, 2),
        "theta0": rng.uniform(0, 2 * np.pi),
        "speed": rng.uniform(2.5, 3.0) * px,  # px per frame (translation)
        "omega": np.deg2rad(rng.uniform(10, 18)),  # rad per frame (rotation)
        "period": rng.uniform(14, 20),  # frames per approach/recede cycle
        "swing_period": rng.uniform(10, 16),  # frames per bounce / shake
        "amplitude": rng.uniform(0.12, 0.22) * size,
        "phase": rng.uniform(0, 1),
        "noise": rng.uniform(0, 2),  # sensor noise std (grey levels)
        "f0": 220 * 2 ** rng.uniform(0, 1),  # base pitch (Hz): 220-440
        "gain": rng.uniform(0.15, 0.3),
        "hiss": rng.uniform(0.002, 0.02),
        "seed": int(rng.integers(2**31)),  # sensor noise and audio hiss
    }
    return p


def _sample_nuisance(
    rng: np.random.Generator, size: int, background: dict, *, noise: float, camera: float, distractors: int
) -> dict:
    """The optional nuisances of one video: camera pan, distractor objects and added noise.

    Takes no class: what it draws cannot depend on it. The camera is drawn first and each distractor
    after the previous one, so that changing one option leaves the others' draws as they were.
    """
    px = size / 64.0
    angle, extent = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0, 1))  # uniform over the disc
    out = {"camera": camera * px * extent * np.array([math.cos(angle), math.sin(angle)]), "distractors": []}
    for _ in range(distractors):
        colour, heading = _distinct_colour(rng, background), rng.uniform(0, 2 * np.pi)
        out["distractors"].append(
            {
                "colour": colour,
                "shade": colour * rng.uniform(0.3, 0.6),
                "texture": OBJECT_TEXTURES[rng.integers(len(OBJECT_TEXTURES))],
                "texture_freq": rng.uniform(1.0, 2.0),
                "r": rng.uniform(*DISTRACTOR_RADIUS) * size,
                "c0": rng.uniform(0, size, 2),
                "velocity": rng.uniform(1.0, 3.0) * px * np.array([math.cos(heading), math.sin(heading)]),
                "depth_mm": rng.uniform(*DISTRACTOR_MM),
            }
        )
    out["added_noise"] = noise
    return out


def _trajectory(p: dict, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centre (cx, cy), angle, radius and velocity (vx, vy) in px and px/frame at times t (frames)."""
    motion, zero = p["motion"], np.zeros_like(t)
    cx, cy = p["c0"][0] + zero, p["c0"][1] + zero
    theta, r, vx, vy = p["theta0"] + zero, p["r"] + zero, zero, zero
    directions = {
        "MoveLeft": (-1, 0),
        "MoveRight": (1, 0),
        "MoveUp": (0, -1),
        "MoveDown": (0, 1),
        "MoveUpLeft": (-D, -D),
        "MoveUpRight": (D, -D),
        "MoveDownLeft": (-D, D),
        "MoveDownRight": (D, D),
    }
    if motion in directions:
        dx, dy = directions[motion]
        vx, vy = dx * p["speed"] + zero, dy * p["speed"] + zero
        cx, cy = cx + vx * t, cy + vy * t
    elif motion in ("RotateCW", "RotateCCW"):  # image y points down: a growing angle turns clockwise
        theta = theta + (1 if motion == "RotateCW" else -1) * p["omega"] * t
    elif motion in ("Approach", "Recede"):  # sawtooth in log-size: grow 2.5x, jump back, grow again
        s = (t / p["period"] + p["phase"]) % 1.0 - 0.5
        r = p["r"] * 2.5 ** (s if motion == "Approach" else -s)
    elif motion == "Bounce":  # |sin|: fast at the floor, slow at the top, like a ball
        w = np.pi / p["swing_period"]
        a = w * t + np.pi * p["phase"]
        cy = cy - p["amplitude"] * np.abs(np.sin(a))
        vy = -p["amplitude"] * w * np.sign(np.sin(a)) * np.cos(a)
    elif motion == "Shake":
        w = 2 * np.pi / p["swing_period"]
        a = w * t + 2 * np.pi * p["phase"]
        cx = cx + p["amplitude"] * np.sin(a)
        vx = p["amplitude"] * w * np.cos(a)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return cx, cy, theta, r, vx, vy


def _shape_norm(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A norm that is 1 on the shape's outline (u, v in object units): < 1 inside, > 1 outside."""
    if shape == "disc":
        return np.sqrt(u * u + v * v)
    if shape == "ellipse":
        return np.sqrt(u * u + (v / 0.6) ** 2)
    sides = {"triangle": 3, "square": 4, "pentagon": 5}[shape]
    angles = 2 * np.pi * np.arange(sides) / sides
    faces = [u * np.cos(a) + v * np.sin(a) for a in angles]
    return np.maximum.reduce(faces) / np.cos(np.pi / sides)


def _object_texture(kind: str, freq: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture in [0, 1] painted on the object (it moves, turns and scales with the object)."""
    if kind == "stripes":
        return 0.5 + 0.5 * np.cos(2 * np.pi * freq * u)
    if kind == "checker":
        return 0.5 + 0.5 * np.tanh(3 * np.sin(np.pi * freq * u) * np.sin(np.pi * freq * v))
    return 0.5 + 0.5 * np.tanh(4 * u)  # halves: one side shaded


def _relief(p: dict, u: np.ndarray, v: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """Depth relief of the object's surface in [-1, 1] (negative: nearer), by motion."""
    motion = p["motion"]
    if motion in ("RotateCW", "RotateCCW"):  # helical ramp: the depth winds with the rotation
        return (1 if motion == "RotateCW" else -1) * np.arctan2(v, u) / np.pi
    if motion == "Approach":  # dome
        return np.clip(u * u + v * v, 0, 1) * 2 - 1
    if motion == "Recede":  # dish
        return 1 - np.clip(u * u + v * v, 0, 1) * 2
    return -np.clip(lead, -1, 1)  # leaning into the motion: leading edge nearer


def _object_layer(
    cx: np.ndarray, cy: np.ndarray, theta: np.ndarray, r: np.ndarray, p: dict, size: int
) -> tuple[np.ndarray, ...]:
    """One textured object over T frames: alpha (T, H, W, 1), colour (T, H, W, 3) and its coordinates.

    cx, cy, theta, r: (T, 1, 1) float32 centre, angle and radius; p: shape, texture, texture_freq,
    colour, shade. Also returns u, v (T, H, W) in object radii and dx, dy, the wrapped offsets in px.
    """
    grid = np.arange(size, dtype=np.float32) + 0.5
    # displacement from the centre, wrapped: the world is a torus, objects leave and re-enter
    dx = (grid[None, None, :] - cx + size / 2) % size - size / 2  # (T, 1, W)
    dy = (grid[None, :, None] - cy + size / 2) % size - size / 2  # (T, H, 1)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * dx + sin * dy) / r  # object coordinates: rotated with the object, in radii
    v = (-sin * dx + cos * dy) / r
    f = _shape_norm(p["shape"], u, v)
    alpha = np.clip((1 - f) * r + 0.5, 0, 1)[..., None]  # anti-aliased edge, about one pixel wide
    tex = _object_texture(p["texture"], p["texture_freq"], u, v)[..., None]
    colour, shade = (np.asarray(p[k], dtype=np.float32) for k in ("colour", "shade"))
    return alpha, colour + (shade - colour) * tex, u, v, dx, dy


def _pan(image: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(H, W) image -> (T, H, W): frame t moved by shifts[t] = (x, y) px, wrapping around, bilinear."""
    frames = []
    for sx, sy in shifts:
        ix, iy = math.floor(sx), math.floor(sy)
        fx, fy = sx - ix, sy - iy  # out[y, x] = image[y - sy, x - sx], between four whole-pixel moves
        frame = sum(
            w * np.roll(image, (iy + ky, ix + kx), (0, 1))
            for ky, wy in ((0, 1 - fy), (1, fy))
            for kx, w in ((0, (1 - fx) * wy), (1, fx * wy))
        )
        frames.append(frame)
    return np.stack(frames).astype(image.dtype)


def render_frames(p: dict, background: dict, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (T, H, W, 3) uint8 and depth (T, H, W) uint16 millimetres of one video.

    Back to front: the background, the distractors, the object; the camera moves them all.
    """
    t = np.arange(frames, dtype=np.float64)
    pan = p["camera"][:, None] * t  # (2, T): where the camera has moved the image by frame t
    cx, cy, theta, r, vx, vy = _trajectory(p, t)
    cx, cy, theta, r, vx, vy = (
        np.asarray(a, dtype=np.float32)[:, None, None] for a in (cx + pan[0], cy + pan[1], theta, r, vx, vy)
    )
    alpha, obj, u, v, dx, dy = _object_layer(cx, cy, theta, r, p, size)
    colour_a, colour_b = (np.asarray(c, dtype=np.float32) for c in background["colours"])
    pattern, bg_depth = background["pattern"], background["depth"]  # (H, W), static without a camera
    if p["camera"].any():
        pattern, bg_depth = _pan(pattern, pan.T), _pan(bg_depth, pan.T)  # (T, H, W)
    rgb = colour_a + (colour_b - colour_a) * pattern[..., None]
    depth = bg_depth
    for d in p["distractors"]:  # flat discs that slide at a constant velocity, behind the object
        track = [(d["c0"][i] + d["velocity"][i] * t + pan[i]).astype(np.float32)[:, None, None] for i in (0, 1)]
        zero, r_d = np.zeros((frames, 1, 1), np.float32), np.float32(d["r"])
        d_alpha, d_rgb, *_ = _object_layer(*track, zero, r_d, {**d, "shape": "disc"}, size)
        rgb = rgb + d_alpha * (d_rgb - rgb)
        depth = np.where(d_alpha[..., 0] >= 0.5, np.float32(d["depth_mm"]), depth)
    rgb = rgb + alpha * (obj - rgb)
    noise = np.random.default_rng([p["seed"], 0]).standard_normal(rgb.shape[:3] + (1,), dtype=np.float32)  # grey
    rgb = rgb + np.float32(p["noise"]) * noise
    if p["added_noise"]:  # per pixel and channel
        rgb = rgb + np.float32(p["added_noise"]) * np.random.default_rng([p["seed"], 2]).standard_normal(
            rgb.shape, dtype=np.float32
        )
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    speed = np.sqrt(vx * vx + vy * vy)
    lead = np.where(speed > 1e-6, (dx * vx + dy * vy) / (r * np.maximum(speed, 1e-6)), 0)
    z_centre = Z_REF_MM * (R_REF * size) / r
    z_obj = z_centre + RELIEF_MM * _relief(p, u, v, lead)
    depth = np.where(alpha[..., 0] >= 0.5, z_obj, depth)
    if p["added_noise"]:
        noise_mm = np.float32(p["added_noise"] * DEPTH_NOISE_MM)
        depth = depth + noise_mm * np.random.default_rng([p["seed"], 3]).standard_normal(depth.shape, np.float32)
    depth = np.clip(np.rint(depth), 1, 65535).astype(np.uint16)
    return rgb, depth


def render_audio(p: dict, frames: int, size: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono int16 audio of the video's duration (frames / fps seconds)."""
    n = int(round(frames / fps * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate * fps  # time in frames
    _, cy, theta, r, _, _ = _trajectory(p, t)  # where the object is, not where the camera shows it
    height = 0.5 - (cy % size) / size  # +0.5 at the top, -0.5 at the bottom
    pitch = p["f0"] * 2.0**height  # an octave from bottom to top
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    closeness = r / (R_REF * size)  # = Z_REF / depth
    motion = p["motion"]
    if motion in ("RotateCW", "RotateCCW"):  # four pulses per turn
        envelope = (0.5 + 0.5 * np.cos(4 * (theta - p["theta0"]))) ** 2
    elif motion == "Bounce":  # a decaying tick at each bounce
        since = (t / p["swing_period"] + p["phase"]) % 1.0
        envelope = 0.4 + 0.6 * np.exp(-8 * since)
    elif motion == "Shake":  # tremolo at the shaking rate
        envelope = 0.6 + 0.4 * np.cos(2 * np.pi * (t / p["swing_period"] + p["phase"]))
    else:
        envelope = np.ones_like(t)
    tone = p["gain"] * closeness * envelope * (np.sin(phase) + 0.3 * np.sin(2 * phase))
    hiss = np.random.default_rng([p["seed"], 1]).normal(0, p["hiss"], n)
    if p["added_noise"]:  # the same fraction of full scale as on the RGB pixels
        hiss = hiss + np.random.default_rng([p["seed"], 4]).normal(0, p["added_noise"] / 255, n)
    return np.clip(np.rint((tone + hiss) * 32767), -32768, 32767).astype(np.int16)


def render_video(
    label: int,
    seed: int,
    group: int,
    clip: int,
    *,
    frames: int,
    size: int,
    fps: float,
    noise: float = DEFAULTS["noise"],
    camera: float = DEFAULTS["camera"],
    distractors: int = DEFAULTS["distractors"],
    contrast: float = DEFAULTS["contrast"],
) -> dict:
    """One video of class `label` as arrays: {"rgb": (T, H, W, 3) uint8, "depth": (T, H, W) uint16 mm,
    "audio": (N,) int16 at SAMPLE_RATE, "params": the drawn factors}.

    Deterministic in (seed, label, group, clip) and the options (noise, camera, distractors, contrast:
    see the module docstring); videos of one group share their background.
    """
    # one background per group gXX for every class: a scene says nothing about the class
    background = _sample_background(np.random.default_rng([seed, 0, group]), size, contrast)
    p = _sample_clip(MOTIONS[label].name, np.random.default_rng([seed, 1, label, group, clip]), size, background)
    nuisance = np.random.default_rng([seed, 2, label, group, clip])  # its own stream: the draws above stay as they were
    p.update(_sample_nuisance(nuisance, size, background, noise=noise, camera=camera, distractors=distractors))
    rgb, depth = render_frames(p, background, frames, size)
    return {"rgb": rgb, "depth": depth, "audio": render_audio(p, frames, size, fps), "params": p}


# ----------------------------------------------------------------------------------------------
# Writing the dataset


def _video_name(cls: str, group: int, clip: int) -> str:
    return f"v_{cls}_g{group:02d}_c{clip:02d}"


def _groups(videos_per_class: int) -> tuple[int, int]:
    """(clips per group, groups per class): UCF-like groups of up to 4 clips, 3 or more groups when possible."""
    per_group = min(4, max(1, videos_per_class // 3))
    return per_group, math.ceil(videos_per_class / per_group)


def _test_groups(groups: int) -> dict[int, list[int]]:
    """Test groups (1-based) of splits 1-3: about 30% of the groups, a different block per split."""
    n_test = max(1, round(0.3 * groups))
    return {s: sorted({((s - 1) * n_test + k) % groups + 1 for k in range(n_test)}) for s in (1, 2, 3)}


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(audio.astype("<i2").tobytes())


def _write_one(job: tuple) -> None:
    """Render one video and write its .avi, .wav and depth PNGs (runs in a worker process)."""
    import cv2

    from mvcoding.video import write_video

    root, label, group, clip, seed, frames, size, fps, options = job
    cv2.setNumThreads(1)
    cls = MOTIONS[label].name
    name = _video_name(cls, group, clip)
    out = render_video(label, seed, group, clip, frames=frames, size=size, fps=fps, **options)
    video_dir = Path(root) / "UCF-101" / cls
    write_video(video_dir / f"{name}.avi", out["rgb"], fps)
    _write_wav(video_dir / f"{name}.wav", out["audio"], SAMPLE_RATE)
    depth_dir = Path(root) / "depth" / cls / name
    depth_dir.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(out["depth"]):
        if not cv2.imwrite(str(depth_dir / f"{i:05d}.png"), d, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise RuntimeError(f"OpenCV could not write {depth_dir / f'{i:05d}.png'}")


# a synthetic set is for tests and demos: beyond these it would generate for hours or fill the disk
MAX_VIDEOS_PER_CLASS, MAX_FRAMES, MAX_SIZE = 10_000, 10_000, 1024


def _check(
    classes: int,
    videos_per_class: int,
    frames: int,
    size: int,
    fps: float,
    workers: int,
    noise: float,
    camera: float,
    distractors: int,
    contrast: float,
) -> None:
    problems = []
    if not 2 <= classes <= len(MOTIONS):
        problems.append(f"classes must be 2..{len(MOTIONS)}, got {classes}")
    if not 2 <= videos_per_class <= MAX_VIDEOS_PER_CLASS:
        problems.append(
            f"videos_per_class must be 2..{MAX_VIDEOS_PER_CLASS} (train and test need a group each), "
            f"got {videos_per_class}"
        )
    if not 2 <= frames <= MAX_FRAMES:
        problems.append(f"frames must be 2..{MAX_FRAMES}, got {frames}")
    if not 16 <= size <= MAX_SIZE or size % 2:
        problems.append(f"size must be even and 16..{MAX_SIZE} (decord needs even sizes), got {size}")
    if not 0 < fps < math.inf:
        problems.append(f"fps must be a finite number > 0, got {fps}")
    if workers < 1:
        problems.append(f"workers must be >= 1, got {workers}")
    if not 0 <= noise <= 255:  # nan fails it
        problems.append(f"noise must be 0..255 grey levels, got {noise}")
    if not 0 <= camera < math.inf:
        problems.append(f"camera must be a finite number >= 0, got {camera}")
    if not 0 <= distractors <= MAX_DISTRACTORS:
        problems.append(f"distractors must be 0..{MAX_DISTRACTORS}, got {distractors}")
    if not 0 <= contrast <= 255:
        problems.append(f"contrast must be 0..255 grey levels, got {contrast}")
    if problems:
        raise UserError(f"synthetic dataset: {'; '.join(problems)} (set dataset.generate.<key>)")


def generate(
    root: str | Path,
    *,
    classes: int = DEFAULTS["classes"],
    videos_per_class: int = DEFAULTS["videos_per_class"],
    frames: int = DEFAULTS["frames"],
    size: int = DEFAULTS["size"],
    fps: float = DEFAULTS["fps"],
    seed: int = DEFAULTS["seed"],
    workers: int = DEFAULTS["workers"],
    noise: float = DEFAULTS["noise"],
    camera: float = DEFAULTS["camera"],
    distractors: int = DEFAULTS["distractors"],
    contrast: float = DEFAULTS["contrast"],
) -> None:
    """Write the synthetic dataset into `root` (created; existing files of the same names are overwritten).

    classes: the first `classes` of MOTIONS (2-14). Videos are `frames` frames of `size` x `size` pixels
    (even) at `fps`. noise, camera, distractors, contrast: the nuisance options of the module docstring.
    Same arguments (any `workers`) -> byte-identical files. `load` wraps this with an atomic rename;
    call `generate` directly only into a folder of your own.
    """
    options = {"noise": float(noise), "camera": float(camera), "distractors": int(distractors)}
    options["contrast"] = float(contrast)
    _check(classes, videos_per_class, frames, size, fps, workers, **options)
    root = Path(root)
    per_group, groups = _groups(videos_per_class)
    names = [m.name for m in MOTIONS[:classes]]
    jobs = []
    for label in range(classes):
        for i in range(videos_per_class):
            group, clip = i // per_group + 1, i % per_group + 1
            jobs.append((str(root), label, group, clip, int(seed), int(frames), int(size), float(fps), options))

    start = time.perf_counter()
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                pass
    else:
        for job in jobs:
            _write_one(job)

    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    test_groups = _test_groups(groups)
    for split, tests in test_groups.items():
        train_lines, test_lines = [], []
        for _, label, group, clip, *_ in jobs:
            path = f"{names[label]}/{_video_name(names[label], group, clip)}.avi"
            if group in tests:
                test_lines.append(f"{path}\n")
            else:
                train_lines.append(f"{path} {label + 1}\n")
        (lists / f"trainlist0{split}.txt").write_text("".join(train_lines))
        (lists / f"testlist0{split}.txt").write_text("".join(test_lines))

    info = {
        "format": FORMAT_VERSION,
        "generator": "mvcoding.datasets.synthetic",
        "params": {
            "classes": classes,
            "videos_per_class": videos_per_class,
            "frames": frames,
            "size": size,
            "fps": fps,
            "seed": seed,
            **options,
        },
        "groups_per_class": groups,
        "clips_per_group": per_group,
        "test_groups": {str(s): g for s, g in test_groups.items()},
        "classes": [{"index": i + 1, "name": m.name, "motion": m.description} for i, m in enumerate(MOTIONS[:classes])],
        "nuisance": "object colour, shape, texture and size; background colour and pattern (shared by a group); "
        "speed; start position, angle and phase; sensor noise; base pitch and loudness of the tone; "
        "with the options: added noise, camera pan, distractor objects",
        "audio": {
            "format": "wav, mono, 16-bit PCM",
            "sample_rate": SAMPLE_RATE,
            "layout": "UCF-101/<Class>/<video>.wav",
        },
        "depth": {
            "units": "millimetres",
            "format": "16-bit PNG, one per video frame",
            "layout": "depth/<Class>/<video>/<frame:05d>.png",
            "object_mm": list(OBJECT_MM),
            "background_mm": list(BACKGROUND_RANGE_MM),
        },
    }
    (root / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.debug("wrote %d synthetic videos to %s in %.1f s", len(jobs), root, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# Loading (generating on first use)

_PARTS = ("synthetic.json", "depth", "UCF-101", "ucfTrainTestlist")  # moved into place in this order


def _complete(root: Path) -> bool:
    return (root / "UCF-101").is_dir() and (root / "ucfTrainTestlist").is_dir()


@contextmanager
def _lock(root: Path):
    """An exclusive lock beside `root`, so that concurrent processes (e.g. torchrun ranks) generate once."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder with the usual permissions (tempfile.mkdtemp's 0700 would survive the rename)."""
    path = parent / f"{prefix}{os.getpid()}-{time.time_ns()}"
    path.mkdir()
    return path


def _generate_into(root: Path, params: dict) -> None:
    """Generate in a temporary folder and move it into place, so an interrupted run leaves no half dataset.

    Call with the lock held: it also removes the temporary folders of earlier, interrupted runs.
    """
    stale = [*root.parent.glob(f".{root.name}.tmp-*"), *(root.glob(".synthetic-tmp-*") if root.is_dir() else [])]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if root.exists() and any(root.iterdir()):
        leftovers = [n for n in _PARTS if (root / n).exists()]
        if leftovers and not (root / "synthetic.json").exists():
            raise UserError(
                f"dataset.root={root} holds {', '.join(leftovers)} but not a complete dataset and not a synthetic "
                "one; point dataset.root at an empty or missing folder to generate the synthetic dataset there"
            )
        for name in leftovers:  # ours, from an interrupted move: remove before replacing
            shutil.rmtree(root / name) if (root / name).is_dir() else (root / name).unlink()
        tmp = _temp_dir(root, ".synthetic-tmp-")
        try:
            generate(tmp, **params)
            for name in _PARTS:
                os.replace(tmp / name, root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_dir(root.parent, f".{root.name}.tmp-")
        try:
            generate(tmp, **params)
            if root.exists():
                root.rmdir()  # empty: replace it
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _generate_params(cfg: Mapping) -> dict:
    given = dict(cfg.get("generate") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown key dataset.generate.{unknown[0]}; valid: {', '.join(DEFAULTS)}")
    params = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    out = {}
    for k, v in params.items():
        try:
            out[k] = float(v) if k in FLOAT_KEYS else int(v)
            if k not in FLOAT_KEYS and isinstance(v, float) and v != out[k]:  # 2.7 was truncated to 2
                out[k] = None
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            out[k] = None
        if out[k] is None or not math.isfinite(out[k]):
            kind = "a finite number" if k in FLOAT_KEYS else "an integer"
            raise UserError(f"dataset.generate.{k}={v!r} is not valid: {kind}")
    return out


def load(cfg: Mapping):
    """Index the synthetic dataset at cfg["root"], generating it there first when the folder holds no data.

    cfg: the `dataset` config group: name="synthetic", root, split (1-3), generate (classes,
    videos_per_class, frames, size, fps, seed, workers, noise, camera, distractors, contrast).
    Returns a DatasetIndex named "synthetic"; `extra` holds "depth_dir" and the generation parameters.
    """
    from mvcoding.datasets import ucf101

    if cfg.get("root") is None or str(cfg.get("root")).strip() == "":
        raise UserError("dataset.root is not set; pass dataset.root=/path/to/a/folder (generated there on first use)")
    root = Path(os.path.abspath(os.path.expanduser(str(cfg["root"]))))
    params = _generate_params(cfg)
    if not _complete(root):
        _check(**{k: v for k, v in params.items() if k != "seed"})
        with _lock(root):
            if not _complete(root):  # another process may have generated it while we waited
                logger.info("generating the synthetic dataset in %s ...", root)
                _generate_into(root, params)
    info_path = root / "synthetic.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    made = {**LATER_KEYS, **info["params"]} if "params" in info else {}
    wanted = {k: v for k, v in params.items() if k != "workers"}
    if made and any(made.get(k) != v for k, v in wanted.items()):
        logger.warning(
            "%s was generated with %s, not the configured dataset.generate %s; using it as it is "
            "(delete the folder or choose another dataset.root to regenerate)",
            root,
            made,
            wanted,
        )
    index = ucf101.load(cfg)
    extra = {**index.extra, "depth_dir": str(root / "depth"), "generate": made or wanted}
    return dataclasses.replace(index, name="synthetic", extra=extra)
