import pytest

from mvcoding.errors import UserError
from mvcoding.registry import _SOURCES, _VIEWS, ViewContext, build_view, list_views, register_view

CTX = ViewContext(dataset="synthetic", root="/nonexistent", cache_dir="/nonexistent/cache", frames=4, stride=1, size=32)


def test_builtin_views_are_registered():
    assert {"rgb", "flow", "lab_l", "lab_ab"} <= set(list_views())


def test_unknown_view_lists_known_ones():
    with pytest.raises(UserError, match=r"unknown view 'rbg'.*rgb"):
        build_view("rbg", CTX)


def test_misspelt_setting_names_key_and_valid_ones():
    with pytest.raises(UserError, match=r"views\.rgb\.encodr.*encoder"):
        build_view("rgb", CTX, encodr="small3d")


def test_duplicate_registration_raises_and_kwargs_refused():
    list_views()
    with pytest.raises(ValueError, match="already registered"):
        register_view("rgb")(lambda *, ctx: None)

    def loose(**kwargs):
        return None

    with pytest.raises(TypeError, match="keyword-only"):
        register_view("loose_view")(loose)
    assert "loose_view" not in _VIEWS


def test_register_and_build_a_new_view():
    from mvcoding.registry import View

    @register_view("test_const")
    def const(*, ctx: ViewContext, value: float = 1.0) -> View:
        return View("test_const", 1, decode=lambda clip: None, transform=lambda x, aug: x, build_encoder=lambda: None)

    try:
        view = build_view("test_const", CTX, value=2.0)
        assert view.name == "test_const" and view.settings["value"] == 2.0
        assert "test_const" in list_views()
    finally:
        _VIEWS.pop("test_const")
        _SOURCES.pop("test_const")
