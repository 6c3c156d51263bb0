"""Shared fixtures: a tiny synthetic dataset and its flow cache, made once per test session."""

from __future__ import annotations

import pytest

from mvcoding.config import CONFIG_DIR

SYNTHETIC = str(CONFIG_DIR / "synthetic_rgb_flow.yaml")


def tiny(root, **extra) -> list[str]:
    """Overrides that make the synthetic config tiny: 8 classes x 3 videos of 12 frames at 32 px."""
    base = {
        "dataset.root": str(root),
        "dataset.generate.classes": 8,
        "dataset.generate.videos_per_class": 3,
        "dataset.generate.frames": 12,
        "dataset.generate.size": 32,
        "dataset.generate.workers": 1,
        "data.frames": 4,
        "data.stride": 1,
        "data.size": 32,
        "data.workers": 0,
        "train.batch_size": 4,
        "train.log_every": 1,
        "objective.negatives": "memory_bank",  # the CMC default of base.yaml; tests opt into in_batch
        "objective.K": 8,
        "objective.dim": 16,
        "precompute.workers": 1,
        "precompute.videos_per_part": 4,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic dataset with its DIS flow cache filled."""
    from mvcoding.precompute import main as precompute

    root = tmp_path_factory.mktemp("synthetic")
    assert precompute(["flow", SYNTHETIC, *tiny(root)]) == 0
    return root
