"""The memory bank's start: objective.bank_init=fill (every row a real embedding before the first step,
resumable) and objective.positives=fresh (the positive scored against the other view's embedding of the
step, the negatives against the bank)."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn.functional as F

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.data import EpochSampler, collate
from mvcoding.errors import Stopped, UserError
from mvcoding.objectives import CMCObjective, fresh_positive
from mvcoding.train import FILL_EPOCH, StopOnSignal, fill_banks, setup, to_device


def test_padded_sampler_visits_every_item_in_whole_global_batches():
    n, b, world = 10, 3, 2  # global batches of 6: 10 items -> 2 batches, padded with items 0 and 1
    parts = [
        EpochSampler(n, seed=0, shuffle=False, rank=r, world=world, batch_size=b, pad=True).order() for r in (0, 1)
    ]
    assert parts[0] == [0, 1, 2, 6, 7, 8] and parts[1] == [3, 4, 5, 9, 0, 1]
    assert EpochSampler(12, seed=0, shuffle=False, world=2, batch_size=3, pad=True).order() == [0, 1, 2, 6, 7, 8]
    assert EpochSampler(n, seed=0, shuffle=False, world=2, batch_size=3).order() == [0, 1, 2]  # no pad: dropped


def test_fill_writes_the_embeddings_into_every_view_bank():
    obj = CMCObjective(views=["a", "b"], graph="full", n_data=5, dim=4, K=2, bank_init="fill")
    assert obj.needs_fill
    before = {v: obj.banks.get_buffer(v).clone() for v in ("a", "b")}
    z = {v: F.normalize(torch.randn(2, 4), dim=1) for v in ("a", "b")}
    obj.fill(z, torch.tensor([3, 1]))
    for v in ("a", "b"):
        bank = obj.banks.get_buffer(v)
        assert torch.allclose(bank[3], z[v][0]) and torch.allclose(bank[1], z[v][1])  # momentum 0: replaced
        assert torch.equal(bank[[0, 2, 4]], before[v][[0, 2, 4]])  # the other rows untouched
    assert not CMCObjective(views=["a", "b"], graph="full", n_data=5, dim=4, K=2).needs_fill
    assert not CMCObjective(views=["a", "b"], graph="full", negatives="in_batch", bank_init="fill").needs_fill
    with pytest.raises(UserError, match="bank_init"):
        CMCObjective(views=["a", "b"], graph="full", n_data=5, K=2, bank_init="zeros")


def fill_config(root, run, **extra):
    # head_norm none: each clip's embedding depends on that clip alone (GroupNorm encoders), so a row can
    # be checked against the encoder applied to its item by hand
    return load_config(SYNTHETIC, tiny(root, **{"run.dir": run, "objective.bank_init": "fill",
                                                "objective.head_norm": "none", "train.batch_size": 5,
                                                **extra}))  # fmt: skip


def test_every_bank_row_is_the_embedding_of_its_item(synthetic_root, tmp_path):
    run, pos = setup(fill_config(synthetic_root, tmp_path / "run"))
    n = len(run.data)  # 16 training videos, batches of 5: 4 batches, the last padded
    with StopOnSignal() as stop:
        fill_banks(run, pos, stop)
    assert pos.filled == 4 and pos.step == 0
    run.data.epoch = FILL_EPOCH
    batch = to_device(run, collate([run.data[i] for i in range(n)]))
    with torch.no_grad():
        expected = run.model(batch)  # {view: (n, D)}: the model applied to every item at once
    for view in ("rgb", "flow"):
        bank = run.objective.banks.get_buffer(view)
        assert torch.allclose(bank, expected[view], atol=1e-5), view
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["filled"] == 4 and ckpt["step"] == 0
    assert torch.equal(ckpt["objective"]["banks.rgb"], run.objective.banks.get_buffer("rgb"))


class StopAt(StopOnSignal):
    """A SIGTERM that arrives once `at` batches are done."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def requested(self, device, step, every):
        return signal.SIGTERM if step == self.at else 0


def test_an_interrupted_fill_resumes_where_it_stopped(synthetic_root, tmp_path):
    whole, pos = setup(fill_config(synthetic_root, tmp_path / "whole"))
    with StopOnSignal() as stop:
        fill_banks(whole, pos, stop)

    cut, pos = setup(fill_config(synthetic_root, tmp_path / "cut"))
    with pytest.raises(Stopped, match="during the bank fill \\(2/4 batches\\)"):
        fill_banks(cut, pos, StopAt(2))
    resumed, pos = setup(fill_config(synthetic_root, tmp_path / "cut", resume="auto"))
    assert pos.filled == 2
    first = resumed.objective.banks.get_buffer("rgb").clone()
    with StopOnSignal() as stop:
        fill_banks(resumed, pos, stop)
    assert pos.filled == 4
    for view in ("rgb", "flow"):
        assert torch.equal(resumed.objective.banks.get_buffer(view), whole.objective.banks.get_buffer(view)), view
    assert not torch.equal(first, resumed.objective.banks.get_buffer("rgb"))  # the second half was written now


def test_fresh_positive_scores_the_other_views_embedding_of_this_step():
    z_a = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    z_b = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    bank_logits = torch.randn(3, 6)  # (B, K+1), column 0 the bank's positive
    out = fresh_positive(bank_logits, z_a, z_b, 0.5)
    for i in range(3):
        assert torch.isclose(out[i, 0], sum(z_a[i, d] * z_b[i, d] for d in range(4)) / 0.5)
    assert torch.equal(out[:, 1:], bank_logits[:, 1:])
    out[:, 0].sum().backward()
    assert torch.allclose(z_b.grad, z_a.detach() / 0.5) and torch.allclose(z_a.grad, z_b.detach() / 0.5)


def test_fresh_positives_in_the_objective():
    """The loss with positives=fresh equals the softmax over [z_a . z_b, z_a . bank_b[neg]] / tau, written out
    (two views, one pair, both directions), with the negatives the bank draws for the same generator."""
    torch.manual_seed(0)
    n, d, K, tau = 6, 4, 3, 0.2
    obj = CMCObjective(views=["a", "b"], graph="full", n_data=n, dim=d, K=K, tau=tau, positives="fresh")
    z = {v: F.normalize(torch.randn(2, d), dim=1) for v in ("a", "b")}
    index = torch.tensor([4, 1])
    loss, _ = obj(z, index, torch.Generator().manual_seed(7))
    neg = torch.randint(0, n - 1, (2, K), generator=torch.Generator().manual_seed(7))
    neg = neg + (neg >= index[:, None]).long()  # sample_negatives: skip the own row
    expected = 0.0
    for anchor, other in (("a", "b"), ("b", "a")):
        bank = obj.banks.get_buffer(other)
        for i in range(2):
            scores = [float(z[anchor][i] @ z[other][i]) / tau] + [float(z[anchor][i] @ bank[j]) / tau for j in neg[i]]
            expected += -(scores[0] - torch.logsumexp(torch.tensor(scores), 0).item()) / 2  # mean over the batch
    assert abs(loss.item() - expected) < 1e-5
    with pytest.raises(UserError, match="positives"):
        CMCObjective(views=["a", "b"], graph="full", n_data=n, K=K, positives="stale")


def test_batchnorm_encoders_with_the_pair_in_the_batch_get_a_warning(caplog):
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from torch import nn

    from mvcoding.train import warn_batch_statistics_shortcut

    model = SimpleNamespace(encoders={"rgb": nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4)),
                                      "flow": nn.Sequential(nn.Conv3d(2, 4, 1), nn.GroupNorm(2, 4))})  # fmt: skip
    cases = [("memory_bank", "fresh", True), ("in_batch", "bank", True), ("memory_bank", "bank", False)]
    for negatives, positives, warned in cases:
        caplog.clear()
        o = OmegaConf.create({"name": "cmc", "negatives": negatives, "positives": positives})
        warn_batch_statistics_shortcut(o, model)
        lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert (len(lines) == 1 and "encoders of rgb have BatchNorm" in lines[0]) == warned, (negatives, positives)
