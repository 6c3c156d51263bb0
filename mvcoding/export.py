"""Use a trained encoder elsewhere: `mvcoding export` and `load_encoder`.

    mvcoding export runs/x/checkpoints/last.pt --view rgb --out rgb_r3d18.pt

writes rgb_r3d18.pt, a plain state_dict of the view's encoder (torch.save of a dict of tensors), and
rgb_r3d18.json, what the encoder expects: encoder name, in_channels, feat_dim, clip size, the input's
normalisation, the view's settings, the checkpoint's sha256 and the mvcoding version. The keys are the
encoder's own: for the torchvision encoders torchvision's names, with the classifier replaced by
Identity (mvcoding's encoders drop it), so for an rgb view with `encoder: r3d_18`

    m = torchvision.models.video.r3d_18(); m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load("rgb_r3d18.pt", weights_only=True))   # strict: every key matches

gives mvcoding's features. The *_gn encoders have GroupNorm where torchvision has BatchNorm (the JSON
says so and how to rebuild them). In Python, `mvcoding.load_encoder(path, view)` takes either a
training checkpoint or an export and returns the encoder in eval mode.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import torch
from torch import nn

from mvcoding.errors import UserError
from mvcoding.eval.metrics import sha256_file
from mvcoding.files import find_checkpoint, load_safe, save_atomic, write_text_atomic

FORMAT = "mvcoding-encoder"
FORMAT_VERSION = 1

# What each built-in view feeds its encoder (the output of its device_transform).
_INPUTS = {
    "flow": "optical flow (x, y) in pixels divided by the flow bound, in [-1, 1] (mvcoding.views.flow.flow_input "
    "of the quantised codes); (B, 2, T, H, W) float32",
    "depth": "a depth map as uint8 / 255, in [0, 1] (mvcoding.views.depth.depth_input); (B, 1, T, H, W) float32",
    "lab_l": "RGB / 255 -> CIE Lab (mvcoding.transforms.rgb_to_lab), L only: (L - 50) / 50; (B, 1, T, H, W) float32",
    "lab_ab": "RGB / 255 -> CIE Lab (mvcoding.transforms.rgb_to_lab), a and b: ab / 110; (B, 2, T, H, W) float32",
    "audio": "a log-mel spectrogram normalised as views.audio.norm says (mvcoding.views.audio); "
    "(B, 1, n_mels, time) float32, a 2D input",
}


def _resolve(path: str | Path) -> Path:
    """A .pt file, or a run directory (its checkpoints/last.pt)."""
    found = find_checkpoint(path)
    if found is None:
        raise UserError(f"{path}: no such file; pass the checkpoints/last.pt of an mvcoding train run")
    return found


def _json_of(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_export_info(path: Path) -> dict | None:
    """The JSON beside an export (None when there is none or it is not an mvcoding export's)."""
    j = _json_of(path)
    if not j.is_file() or j == path:
        return None
    try:
        info = json.loads(j.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def read_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """(path, checkpoint) of an mvcoding training checkpoint, read with load_safe; anything else is one UserError."""
    path = _resolve(path)
    try:
        ckpt = load_safe(path)
    except UserError:
        raise
    except Exception as e:  # not a torch file, truncated, damaged
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not an mvcoding checkpoint (cannot read it: {why}); "
            "pass the checkpoints/last.pt of an mvcoding train run"
        ) from e
    ok = isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("config"), dict)
    if not ok:
        what = "an exported encoder" if _read_export_info(path) else "not an mvcoding checkpoint"
        lacking = "model" if not isinstance(ckpt, dict) or "model" not in ckpt else "config"
        plain = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        hint = f" (an export is read with its {_json_of(path).name} beside it)" if plain else ""
        raise UserError(
            f"{path} is {what} (it has no {lacking!r}); pass the checkpoints/last.pt of an mvcoding train run{hint}"
        )
    return path, ckpt


def _first_conv_in_channels(state: dict) -> int:
    """in_channels of the encoder: the input channels of its first conv kernel (4-D or 5-D weight)."""
    for key, t in state.items():
        if key.endswith("weight") and t.dim() in (4, 5):
            return int(t.shape[1])
    raise UserError("the encoder has no convolution; cannot tell its input channels")


def _norm_layers(model: nn.Module) -> str:
    kinds = {
        "group" if isinstance(m, nn.GroupNorm) else "batch"
        for m in model.modules()
        if isinstance(m, nn.GroupNorm | nn.modules.batchnorm._BatchNorm)
    }
    return "+".join(sorted(kinds)) or "none"


def _torchvision_info(encoder: str, in_channels: int) -> dict | None:
    """How to rebuild a torchvision encoder from torchvision itself (None for mvcoding's own encoders)."""
    from mvcoding.encoders import ENCODERS, _torchvision

    builder = ENCODERS.get(encoder)
    if not (isinstance(builder, partial) and builder.func is _torchvision):
        return None
    ctor, group = builder.keywords["ctor"], builder.keywords.get("norm") == "group"
    where = "torchvision.models.video" if ".video." in ctor.__module__ else "torchvision.models"
    steps = [f"m = {where}.{ctor.__name__}()"]
    if group:
        steps.append("mvcoding.encoders.batchnorm_to_groupnorm(m)")
    if ctor.__name__ == "s3d":
        steps.append("m.avgpool = torch.nn.AdaptiveAvgPool3d(1); m.classifier = torch.nn.Identity()")
    else:
        steps.append("m.fc = torch.nn.Identity()")
    if in_channels != 3:
        steps.append(f"mvcoding.encoders.adapt_first_conv(m, {in_channels}, inherit=False)")
    steps.append("m.load_state_dict(torch.load(FILE, weights_only=True)); m.eval()")
    plain = not group and in_channels == 3
    why = []
    if group:
        why.append("its norm layers are GroupNorm (torchvision's are BatchNorm)")
    if in_channels != 3:
        why.append(f"its first conv takes {in_channels} channels, not 3")
    return {
        "model": f"{where}.{ctor.__name__}",
        "plain_model_matches": plain,
        "differences": "; ".join(why) if why else "none besides the classifier replaced by Identity",
        "rebuild": "; ".join(steps),
    }


def _spec(path: Path, ckpt: dict, view: str) -> tuple[dict, dict]:
    """(description, state_dict) of `view`'s encoder in the checkpoint at `path`."""
    cfg = ckpt["config"]
    state = ckpt["model"]
    prefix = f"encoders.{view}."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    views_cfg = cfg.get("views") or {}
    have = list(ckpt.get("views") or views_cfg or sorted({k.split(".")[1] for k in state if k.startswith("encoders.")}))
    if not weights or view not in views_cfg:
        raise UserError(f"{path} has no encoder for view {view!r}; its views: {', '.join(map(str, have)) or 'none'}")
    settings = dict(views_cfg.get(view) or {})
    encoder = settings.get("encoder")
    if encoder is None:  # the view factory's default
        from mvcoding.registry import list_views, view_settings

        encoder = view_settings(view).get("encoder") if view in list_views() else None
    if not isinstance(encoder, str):
        raise UserError(
            f"{path}: views.{view} names no encoder and view {view!r} has no default one; "
            "cannot tell which encoder to build"
        )
    data = cfg.get("data") or {}
    in_channels = _first_conv_in_channels(weights)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "view": view,
        "encoder": encoder,
        "in_channels": in_channels,
        "width": settings.get("width"),
        "clip": {
            "frames": data.get("frames"),
            "stride": data.get("stride"),
            "size": settings.get("size") or data.get("size"),
        },
        "settings": settings,
        "checkpoint": {"path": str(path), "sha256": sha256_file(path), "step": ckpt.get("step")},
    }
    return info, weights


def _normalisation(view: str) -> dict:
    if view == "rgb":
        from mvcoding.views.rgb import MEAN, STD

        return {
            "mean": list(MEAN),
            "std": list(STD),
            "text": "RGB uint8 / 255, then (x - mean) / std per channel (mvcoding.views.rgb.normalize_rgb); "
            "(B, 3, T, H, W) float32",
        }
    text = _INPUTS.get(view, f"the output of view {view!r}'s device_transform (or transform); see its module")
    return {"text": text}


def _build(info: dict, weights: dict, where: Path) -> nn.Module:
    """build_encoder from the recorded settings, the weights loaded strictly, in eval mode."""
    from mvcoding.encoders import build_encoder

    try:
        model = build_encoder(info["encoder"], in_channels=int(info["in_channels"]), width=info.get("width"))
    except UserError as e:
        raise UserError(f"{where}: cannot build encoder {info['encoder']!r} of view {info.get('view')!r}: {e}") from e
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1].strip()[:160]
        raise UserError(f"{where}: the weights do not fit encoder {info['encoder']!r} ({reason})") from e
    model.eval()
    model.mvcoding_info = info  # what the encoder expects (the export's JSON)
    return model


def describe(path: str | Path, view: str) -> tuple[dict, nn.Module]:
    """(the export's JSON, the encoder in eval mode) for `view` of the checkpoint at `path`."""
    from mvcoding import __version__

    path, ckpt = read_checkpoint(path)
    info, weights = _spec(path, ckpt, view)
    model = _build(info, weights, path)
    info["feat_dim"] = int(model.feat_dim)
    info["norm_layers"] = _norm_layers(model)
    info["input"] = _normalisation(view)
    info["torchvision"] = _torchvision_info(info["encoder"], info["in_channels"])
    info["mvcoding_version"] = __version__
    info["load"] = "mvcoding.load_encoder(FILE) or torch.hub.load(REPO, 'cmc_encoder', source='local', checkpoint=FILE)"
    return info, model


def export(checkpoint: str | Path, view: str, out: str | Path) -> tuple[Path, Path]:
    """Write `view`'s encoder of `checkpoint` to `out` (a plain state_dict) and its description to
    `out` with suffix .json; returns both paths."""
    out = Path(out)
    if out.suffix == ".json":
        raise UserError(
            f"--out {out}: the description goes to FILE.json beside FILE; name the weights file e.g. encoder.pt"
        )
    try:  # before reading the checkpoint: a path that cannot be written fails at once
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); choose another path for --out") from e
    info, model = describe(checkpoint, view)
    info["weights"] = out.name
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_atomic(state, out)  # UserError naming the path when it cannot be written
    meta = _json_of(out)
    try:
        write_text_atomic(meta, json.dumps(info, indent=2) + "\n")
    except OSError as e:
        out.unlink(missing_ok=True)
        raise UserError(f"cannot write {meta} ({e.strerror or e}); choose another folder") from e
    return out, meta


def load_encoder(checkpoint_or_export: str | Path, view: str | None = None, *, device=None) -> nn.Module:
    """The encoder of `view` (an nn.Module in eval mode, `feat_dim` set, its description in `mvcoding_info`)
    from a training checkpoint (a .pt file or a run directory) or an export (FILE beside FILE.json, or
    the JSON itself). Built with mvcoding.encoders.build_encoder, weights read with load_safe."""
    path = Path(checkpoint_or_export)
    if path.suffix == ".json" and path.is_file():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not an mvcoding export description ({e})") from e
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise UserError(f'{path} is not an mvcoding export description (no "format": "{FORMAT}")')
        path = path.with_name(str(info.get("weights") or path.with_suffix(".pt").name))
    path = _resolve(path)
    info = _read_export_info(path)
    if info is None:  # a training checkpoint
        if view is None:
            _, ckpt = read_checkpoint(path)
            have = ", ".join(map(str, ckpt.get("views") or (ckpt["config"].get("views") or {})))
            raise UserError(f"{path} is a training checkpoint: name a view, one of: {have}")
        _, model = describe(path, view)
        return model if device is None else model.to(device)
    if view is not None and view != info.get("view"):
        raise UserError(f"{path} holds the encoder of view {info.get('view')!r}, not {view!r}")
    try:
        weights = load_safe(path)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} is not an exported encoder (cannot read it: {type(e).__name__})") from e
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path} is not an exported encoder (not a dict of tensors)")
    model = _build(info, weights, path)
    return model if device is None else model.to(device)
