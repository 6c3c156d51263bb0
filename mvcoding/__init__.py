"""mvcoding: Contrastive Multiview Coding for video and multimodal representations."""

from mvcoding.export import load_encoder
from mvcoding.registry import Aug, Clip, View, ViewContext, build_view, list_views, register_view

__all__ = ["Aug", "Clip", "View", "ViewContext", "build_view", "list_views", "load_encoder", "register_view"]


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, the one place it is written)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mvcoding")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0+unknown"


__version__ = _version()
