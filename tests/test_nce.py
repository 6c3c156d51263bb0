"""NCE's normaliser Z as in the original CMC: estimated from the first training batch, then fixed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.objectives import CMCObjective


def test_z_is_the_first_batchs_estimate_and_stays_fixed_by_default():
    assert load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml").objective.z_momentum == 1.0
    n, k, tau = 50, 6, 0.07
    obj = CMCObjective(views=["a", "b"], graph="full", score="nce", n_data=n, dim=4, K=k, tau=tau, seed=3)
    gen = torch.Generator().manual_seed(0)
    z1 = {v: F.normalize(torch.randn(5, 4, generator=gen), dim=1) for v in "ab"}
    index = torch.tensor([1, 7, 9, 20, 33])
    # the first batch's Z for direction a -> b, written out: mean over its (B, K+1) scores exp(z . bank / tau), times N
    draw = torch.Generator().manual_seed(11)
    obj(z1, index, draw)
    neg_draw = torch.Generator().manual_seed(11)
    neg = torch.randint(0, n - 1, (5, k), generator=neg_draw)
    neg = neg + (neg >= index[:, None]).long()
    rows = obj.banks.b[torch.cat([index[:, None], neg], 1)]  # (B, K+1, D)
    scores = torch.exp((rows @ z1["a"][:, :, None]).squeeze(2).double() / tau)
    assert obj.log_z[0, 0].item() == pytest.approx(math.log(scores.mean().item() * n), abs=1e-5)
    first = obj.log_z.clone()
    z2 = {v: F.normalize(torch.randn(5, 4, generator=gen), dim=1) for v in "ab"}
    obj(z2, torch.tensor([2, 3, 4, 5, 6]), torch.Generator().manual_seed(12))
    assert torch.equal(obj.log_z, first)  # fixed after the first batch
    running = CMCObjective(views=["a", "b"], graph="full", score="nce", n_data=n, dim=4, K=k, tau=tau, seed=3,
                           z_momentum=0.9)  # fmt: skip
    running(z1, index, torch.Generator().manual_seed(11))
    running(z2, torch.tensor([2, 3, 4, 5, 6]), torch.Generator().manual_seed(12))
    assert not torch.equal(running.log_z, first)  # the option: a running mean moves
