"""mvcoding: Contrastive Multiview Coding for video and multimodal representations."""

from mvcoding.registry import Aug, Clip, View, ViewContext, build_view, list_views, register_view

__all__ = ["Aug", "Clip", "View", "ViewContext", "build_view", "list_views", "register_view"]
__version__ = "0.1.0"
