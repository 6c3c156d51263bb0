"""Built-in views; importing this package registers them (mvcoding.registry loads it on first use)."""

from mvcoding.views import audio, depth, flow, lab, rgb  # noqa: F401
