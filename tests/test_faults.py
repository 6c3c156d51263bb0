"""Training under faults and across processes: in-batch negatives over every rank, signals, a full disk,
bad or foreign checkpoints on resume, and metrics that a resume does not duplicate."""

from __future__ import annotations

import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.train import train
from test_train import metrics, torchrun_train


def test_torchrun_in_batch_negatives_span_every_rank(synthetic_root, tmp_path):
    """2 gloo processes with batch 2 each train the objective of 1 process with batch 4: the candidates
    of every anchor are the global batch (gathered with gradients), not the rank's own clips."""
    over = {"train.max_steps": 5, "objective.negatives": "in_batch", "objective.tau": 0.1, "device": "cpu",
            "data.workers": 0, "views.rgb.encoder": "small3d_gn", "views.flow.encoder": "small3d_gn"}  # fmt: skip
    single = tmp_path / "single"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"run.dir": single, "train.batch_size": 4})))
    double = tmp_path / "double"
    torchrun_train(tiny(synthetic_root, **over, **{"run.dir": double, "train.batch_size": 2}))
    ours, ref = metrics(double), metrics(single)
    assert sorted(ours) == sorted(ref) == [1, 2, 3, 4, 5]
    for step in ref:
        assert ours[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4), step
        assert ours[step]["mi/rgb-flow"] == pytest.approx(ref[step]["mi/rgb-flow"], rel=1e-3, abs=1e-4), step
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(double / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:  # the same gradients at every step: the same weights after 5 AdamW steps
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
