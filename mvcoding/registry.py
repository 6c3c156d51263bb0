"""The one flat registry of views.

A view is a decoder plus an encoder under one name; the name is the registry key, the YAML key
under `views:`, the batch key and the HDF5 `modality` attribute.

    @register_view("flow")
    def flow(*, ctx: ViewContext, encoder: str = "small3d", size: int = 112) -> View: ...

Factories take keyword-only arguments and no `**kwargs`, so a misspelt YAML key is an error that
names it. Outside packages register views through the entry-point group `mvcoding.views`: each
entry point names a module (or callable) whose import registers its views.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import torch
from torch import nn

from mvcoding.errors import UserError


@dataclass(frozen=True)
class Clip:
    """A time window of one video; every view decodes the same window.

    Frames start, start + stride, ..., start + (num_frames - 1) * stride (0-based).
    """

    video_id: str
    path: str
    start: int
    num_frames: int
    stride: int
    fps: float
    video_frames: int  # frames in the whole video

    @property
    def frame_indices(self) -> list[int]:
        return [self.start + i * self.stride for i in range(self.num_frames)]

    @property
    def seconds(self) -> tuple[float, float]:
        """The clip's time span [t0, t1) in seconds."""
        return self.start / self.fps, (self.start + self.num_frames * self.stride) / self.fps


@dataclass(frozen=True)
class Aug:
    """Augmentation parameters drawn once per item and shared by every view.

    crop: (y0, x0, h, w) as fractions of the frame, so views at different resolutions stay aligned.
    flip: horizontal flip.
    """

    train: bool
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    flip: bool = False


@dataclass(frozen=True)
class ViewContext:
    """What the framework tells every view factory about the run."""

    dataset: str  # dataset.name
    root: str  # dataset.root
    cache_dir: str  # cache.dir
    frames: int  # data.frames: clip length T
    stride: int  # data.stride
    size: int  # data.size: default spatial size
    device: str = "cpu"  # the run's device, resolved ("cpu", "cuda", "cuda:1"): where device_transform runs


@dataclass(frozen=True)
class Precompute:
    """A view's precompute stage: what `mvcoding precompute VIEW CONFIG` stores in the view's HDF5 cache.

    compute(source) -> (array (T, C, H, W), attrs): one video's per-frame array, already in the dtype it is
        stored in (quantise floats to uint8 here and record the rule in `settings`), and a dict of plain
        per-video attributes (numbers, strings) the view may read back. `source` is a mvcoding.registry.Source:
        source.frames() gives the video's RGB frames (T, H, W, 3) uint8 at `resolution`, decoded once per
        video for every stage of that resolution; a stage whose input is not the frames (audio, depth
        images) reads source.path or source.record itself. Must be picklable: a top-level function or a
        functools.partial of one (it runs in worker processes).
    settings: the plain-data settings that identify the cache (algorithm, parameters, quantisation);
        they go into the cache's provenance, and a cache filled with other settings is never read.
    resolution: [H, W] of the decoded frames (and of the stored array); None = the video's own size.
    label: a readable part of the cache folder's name (e.g. the algorithm).
    name: the cache's name, by default the view's: views that read the same frames may share one cache.
    gpu: compute uses a GPU; its worker processes start with spawn.
    offset: frames the view's window is shifted by when it reads the cache.
    setup: called once by `mvcoding precompute` before any video (not by training): check that model
        weights and the like exist, raising UserError that says what to get.
    unpack: for an encoded entry (e.g. JPEG bytes per frame), stored (T, C, H, W) -> decoded (T, C', H', W'),
        applied by the view's decode after each read; None: the view reads what is stored.
    compression: the HDF5 filter of the stored frames: "lzf" (default: fast, and small for quantised flow
        or depth), "gzip" (smaller, slower to read) or None, for data that does not compress: raw video
        frames, where lzf saves 9-16% of the disk and makes every read 5-6x slower (BENCHMARKS.md). Not part
        of the provenance: a cache reads the same whichever filter wrote it.

    The framework does the rest: folder and provenance, parts, resume, sharding, workers, progress,
    checksums, source identity, locks, and the view's decode (view.decode=None) and check.
    """

    compute: Callable[[Source], tuple]
    settings: dict = field(default_factory=dict)
    resolution: tuple[int, int] | None = None
    label: str = ""
    name: str | None = None
    gpu: bool = False
    offset: int = 0
    setup: Callable[[], None] | None = None
    unpack: Callable | None = None
    compression: str | None = "lzf"


class Source:
    """One video as a precompute stage sees it: its record, and its frames decoded once for all stages.

    frames() -> (T, H, W, 3) uint8 RGB at the stage's resolution (decord, resized on decode); fps: the
    video's frame rate (from the decode if there was one, else read from the file's header).
    """

    def __init__(self, record, resolution=None, memo: dict | None = None):
        self.record, self.resolution = record, resolution
        self.memo = {} if memo is None else memo  # {resolution: (frames, fps)}, shared by a video's stages

    @property
    def path(self) -> str:
        return self.record.path

    @property
    def video_id(self) -> str:
        return self.record.video_id

    def frames(self):
        key = None if self.resolution is None else tuple(self.resolution)
        if key not in self.memo:
            from mvcoding.video import decode_all

            self.memo[key] = decode_all(self.path, key)
        return self.memo[key][0]

    @property
    def fps(self) -> float:
        for _, fps in self.memo.values():
            return fps
        from mvcoding.video import video_info

        return video_info(self.path)[1]


@dataclass
class View:
    """A built view.

    decode(clip) -> Tensor, in DataLoader workers on the CPU (no CUDA): usually (C, T, H, W). None for a
        view with a precompute stage: build_view sets it to read the view's cache, (C, T, H, W) as stored.
    transform(x, aug) -> Tensor: one item as the DataLoader workers hand it over, e.g. (C, T, size, size):
        cropped, resized and flipped; the model input itself unless the view has a device_transform.
    device_transform(x) -> Tensor: optional, batched, on the model's device: (B, ...) as transform made it
        (e.g. uint8, 4x fewer bytes to collate and copy than float32) -> the model input (B, C, T, H, W) float;
        any leading dims (eval stacks crops: (B, K, ...)). model_input(view, x) applies it to one item.
        transform may also return a dict of tensors: it is collated per key, and its values are copied to
        the device, except those under keys starting with "host_", which stay in (pinned) host memory and
        may differ in their last dim between items (zero-padded when stacked): e.g. undecoded JPEG bytes
        for a batched decode on the device (the rgb view's jpeg_decode=device).
    build_encoder() -> nn.Module mapping the batched input (B, ...) to features (B, feat_dim);
        the module has an int attribute `feat_dim`.
    check(records) -> None: optional, run once before training/eval (e.g. that a cache is filled);
        raises UserError naming what is missing and the command that fills it. Set by build_view for a
        view with a precompute stage.
    precompute: the view's precompute stage (see Precompute), or None.
    source: views with the same source (a string key) share one decode per item: their decode functions
        must give the same tensor for a clip (rgb, lab_l, lab_ab read the same frames). None: not shared.
    """

    name: str
    channels: int
    decode: Callable[[Clip], torch.Tensor] | None
    transform: Callable[[torch.Tensor, Aug], torch.Tensor]
    build_encoder: Callable[[], nn.Module]
    check: Callable[[list], None] | None = None
    settings: dict = field(default_factory=dict)
    precompute: Precompute | None = None
    cache: object = None  # the mvcoding.cache.CacheReader of the precompute stage (set by build_view)
    source: str | None = None
    device_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def model_input(view: View, x) -> torch.Tensor:
    """One transformed item (C, T, H, W) (or a dict of tensors) as the encoder sees it: device_transform
    applied (on x's device)."""
    if view.device_transform is None:
        return x
    batch = {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, dict) else x.unsqueeze(0)
    return view.device_transform(batch)[0]


def to_model(view: View | None, x, device) -> torch.Tensor:
    """A batch of one view's items as the loader gives them -> the encoder's input on `device`: tensors are
    copied (non-blocking: pinned memory overlaps the copy), a dict's values too except under "host_" keys
    (they stay in host memory), then the view's device_transform, if any, runs on the device."""
    if isinstance(x, dict):
        x = {k: v if k.startswith("host_") else v.to(device, non_blocking=True) for k, v in x.items()}
    else:
        x = x.to(device, non_blocking=True)
    if view is not None and view.device_transform is not None:
        x = view.device_transform(x)
    return x


_VIEWS: dict[str, Callable[..., View]] = {}
_SOURCES: dict[str, str] = {}
_loaded_plugins = False


def register_view(name: str) -> Callable:
    """Decorator registering a view factory under `name`; registering a name twice raises."""

    def wrap(factory: Callable[..., View]) -> Callable[..., View]:
        if name in _VIEWS:
            raise ValueError(f"view {name!r} is already registered by {_SOURCES[name]}")
        params = inspect.signature(factory).parameters.values()
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            raise TypeError(f"view factory {name!r} must take keyword-only arguments, not *args/**kwargs")
        _VIEWS[name] = factory
        _SOURCES[name] = factory.__module__
        return factory

    return wrap


def _load_plugins() -> None:
    """Import the built-in views and every `mvcoding.views` entry point (once)."""
    global _loaded_plugins
    if _loaded_plugins:
        return
    _loaded_plugins = True
    import mvcoding.views  # noqa: F401  (registers the built-ins)

    for ep in entry_points(group="mvcoding.views"):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the tool
            raise UserError(f"view plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e


def list_views() -> list[str]:
    """Names of every registered view (built-in and plugins), sorted."""
    _load_plugins()
    return sorted(_VIEWS)


def view_source(name: str) -> str:
    """The module that registered view `name`."""
    _load_plugins()
    return _SOURCES[name]


def view_settings(name: str) -> dict:
    """The settings a view accepts, with their defaults (None where a value is required)."""
    _load_plugins()
    params = inspect.signature(_VIEWS[name]).parameters
    return {k: (None if p.default is p.empty else p.default) for k, p in params.items() if k != "ctx"}


_SIMPLE = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _annotation_check(factory: Callable, key: str, value) -> str | None:
    """What the factory's annotation of `key` allows, if `value` does not fit it (None if it fits or the
    annotation is not made of simple types: int, float, str, bool, list[...], dict[...], None)."""
    import typing

    try:
        hint = typing.get_type_hints(factory).get(key)
    except Exception:
        return None
    if hint is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = [typing.get_origin(o) or o for o in options]
    if not all(k in _SIMPLE for k in kinds):
        return None

    def fits(k) -> bool:
        if k is bool:
            return isinstance(value, bool)
        if k is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if k is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if k is list:
            return isinstance(value, list | tuple)
        return isinstance(value, k)

    return None if any(fits(k) for k in kinds) else " or ".join(_SIMPLE[k] for k in kinds)


def has_precompute(name: str) -> bool:
    """Whether view `name` built with its default settings declares a precompute stage (False if it
    cannot be built without settings)."""
    ctx = ViewContext(dataset="x", root="/nonexistent", cache_dir="/nonexistent", frames=8, stride=1, size=32)
    try:
        return build_view(name, ctx).precompute is not None
    except Exception:
        return False


def build_view(name: str, ctx: ViewContext, **settings) -> View:
    """Build view `name` from its YAML settings; unknown names and keys raise UserError."""
    _load_plugins()
    if name not in _VIEWS:
        raise UserError(f"unknown view {name!r}; registered views: {', '.join(sorted(_VIEWS))}")
    valid = view_settings(name)
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise UserError(
            f"unknown setting views.{name}.{unknown[0]}; valid settings for view {name!r}: {', '.join(sorted(valid))}"
        )
    for key, value in settings.items():
        expected = _annotation_check(_VIEWS[name], key, value)
        if expected:
            raise UserError(f"views.{name}.{key}={value!r} is not valid: {expected}")
    view = _VIEWS[name](ctx=ctx, **settings)
    view.settings = valid | settings
    if view.precompute is not None:
        from mvcoding.cache import attach_cache

        attach_cache(view, ctx)
    elif view.decode is None:
        raise TypeError(f"view {name!r} has no decode and no precompute stage; give it one of them")
    return view
