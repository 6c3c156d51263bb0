"""Objectives against their formulas written out by hand (float64 loops), plus behaviour tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import SYNTHETIC, tiny
from mvcoding import distributed
from mvcoding.config import load_config
from mvcoding.errors import UserError
from mvcoding.model import MultiViewModel, build_views
from mvcoding.objectives import (
    CMCObjective,
    PredictiveDecoder,
    bank_logits,
    batch_log_norm_const,
    build_objective,
    in_batch_loss,
    info_nce,
    mi_lower_bound,
    nce_binary_loss,
    nce_softmax_loss,
    predictive_loss,
    sample_negatives,
    update_bank,
    update_log_norm_const,
    view_pairs,
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def softmax_ce_by_hand(rows: list[list[float]], positives: list[int]) -> float:
    """mean_i -log(exp(l_i,pos) / sum_j exp(l_ij)) with math.exp / math.log."""
    total = 0.0
    for row, pos in zip(rows, positives, strict=True):
        total += -math.log(math.exp(row[pos]) / sum(math.exp(x) for x in row))
    return total / len(rows)


def bank_rows_by_hand(z, bank, index, neg, tau) -> list[list[float]]:
    """Logits (B, K+1) with bank[index] first, then bank[neg], as plain floats."""
    z, bank = z.double().tolist(), bank.double().tolist()
    return [[dot(z[i], bank[j]) / tau for j in [index[i].item(), *neg[i].tolist()]] for i in range(len(z))]


def z_batch_by_hand(rows: list[list[float]], n_data: int) -> float:
    """Z_batch = n_data * mean(exp(logit)) over every logit of the batch (the original CMC's estimate)."""
    values = [v for row in rows for v in row]
    return n_data * sum(math.exp(v) for v in values) / len(values)


def binary_nce_by_hand(rows: list[list[float]], Z: float, n_data: int) -> float:
    """The original CMC's binary NCE, positive in column 0, noise P_n = 1 / n_data, K = len(row) - 1:
    mean_i [-log(P_pos / (P_pos + K/N)) - sum_neg log((K/N) / (P_neg + K/N))] with P = exp(s / tau) / Z."""
    total = 0.0
    for row in rows:
        c = (len(row) - 1) / n_data  # K / N
        p = [math.exp(v) / Z for v in row]
        total += -math.log(p[0] / (p[0] + c)) - sum(math.log(c / (pk + c)) for pk in p[1:])
    return total / len(rows)


def in_batch_rows_by_hand(za, zb, tau) -> list[list[float]]:
    """Logits (B, B) of anchors za against candidates zb, as plain floats."""
    a, b = za.double().tolist(), zb.double().tolist()
    return [[dot(a[i], b[j]) / tau for j in range(len(b))] for i in range(len(a))]


def pair_loss_by_hand(z, banks, index, neg, tau, a, b) -> float:
    """L(a, b) = L^{a,b} + L^{b,a}: in the batch when banks is None, else against the other view's bank."""
    if banks is None:
        return sum(softmax_ce_by_hand(in_batch_rows_by_hand(z[x], z[y], tau), list(range(len(index))))
                   for x, y in ((a, b), (b, a)))  # fmt: skip
    return sum(softmax_ce_by_hand(bank_rows_by_hand(z[x], banks[y], index, neg, tau), [0] * len(index))
               for x, y in ((a, b), (b, a)))  # fmt: skip


# --- the formulas ------------------------------------------------------------------------------


def test_in_batch_two_views_is_the_infonce_formula():
    B, D, tau = 5, 4, 0.2
    za, zb = unit(B, D, seed=1), unit(B, D, seed=2)
    a, b = za.double().tolist(), zb.double().tolist()
    l_ab = softmax_ce_by_hand([[dot(a[i], b[j]) / tau for j in range(B)] for i in range(B)], list(range(B)))
    l_ba = softmax_ce_by_hand([[dot(b[i], a[j]) / tau for j in range(B)] for i in range(B)], list(range(B)))
    assert info_nce(za, zb, tau).item() == pytest.approx(l_ab, rel=1e-5)
    assert in_batch_loss(za, zb, tau).item() == pytest.approx(l_ab + l_ba, rel=1e-5)
    obj = CMCObjective(views=["rgb", "flow"], graph="full", negatives="in_batch", tau=tau)
    loss, stats = obj({"rgb": za, "flow": zb}, torch.arange(B))
    assert loss.item() == pytest.approx(l_ab + l_ba, rel=1e-5)
    assert stats["mi/rgb-flow"] == pytest.approx(math.log(B - 1) - (l_ab + l_ba) / 2, rel=1e-5)


@pytest.mark.parametrize("offset", [0, 3])  # 3: this rank's rows start at 3 of the gathered candidates
def test_in_batch_negatives_without_gradient_keep_the_value_and_only_the_positive_gradient(offset):
    B, M, D, tau = 4, 7, 3, 0.5
    za = unit(B, D, seed=3).double().requires_grad_()
    zb = unit(M, D, seed=4).double().requires_grad_()
    full = info_nce(za, zb, tau, offset)
    constant = info_nce(za, zb, tau, offset, negative_grad=False)
    assert constant.item() == pytest.approx(full.item(), rel=1e-12)
    constant.backward()
    # d/dz_b[j] of (1/B) sum_i [-s_i,o+i + log sum_k exp s_ik], s = z_a z_b^T / tau, with only the positive
    # column differentiable: row o+i gets (1/B)(p_i,o+i - 1) z_a[i] / tau; every other row gets nothing
    a, b = za.detach().tolist(), zb.detach().tolist()
    expected = [[0.0] * D for _ in range(M)]
    for i in range(B):
        s = [dot(a[i], b[k]) / tau for k in range(M)]
        p = math.exp(s[offset + i]) / sum(math.exp(x) for x in s)
        expected[offset + i] = [(p - 1) * a[i][d] / tau / B for d in range(D)]
    assert torch.allclose(zb.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-15)
    # the anchors' gradient is the full one: z_b as a whole is a constant for them in both forms
    za_full = za.detach().clone().requires_grad_()
    info_nce(za_full, zb.detach(), tau, offset).backward()
    assert torch.allclose(za.grad, za_full.grad, rtol=1e-12)


@pytest.mark.parametrize("n_data", [8, 1000])  # 8: one GEMM over the bank; 1000: the gathered path
def test_bank_softmax_loss_is_the_formula(n_data):
    B, D, K, tau = 4, 3, 5, 0.07
    z, bank = unit(B, D, seed=3), unit(n_data, D, seed=4)
    index = torch.tensor([0, 3, n_data - 1, 2])
    neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(0))
    logits = bank_logits(z, bank, index, neg, tau)
    rows = bank_rows_by_hand(z, bank, index, neg, tau)
    assert logits.shape == (B, K + 1)
    assert torch.allclose(logits.double(), torch.tensor(rows, dtype=torch.float64), atol=1e-4)
    assert nce_softmax_loss(logits).item() == pytest.approx(softmax_ce_by_hand(rows, [0] * B), rel=1e-5)


def test_binary_nce_with_a_given_z_is_the_formula():
    B, K, n_data = 3, 4, 50
    logits = torch.randn(B, K + 1, generator=torch.Generator().manual_seed(5)) * 3
    Z = 7.5
    pn = 1 / n_data
    total = 0.0
    for row in logits.double().tolist():
        x = [math.exp(v) / Z for v in row]
        total += math.log(x[0] / (x[0] + K * pn)) + sum(math.log(K * pn / (xk + K * pn)) for xk in x[1:])
    expected = -total / B
    assert nce_binary_loss(logits, math.log(Z), n_data).item() == pytest.approx(expected, rel=1e-5)
    assert nce_binary_loss(logits, torch.tensor(math.log(Z)), n_data).item() == pytest.approx(expected, rel=1e-5)


def test_running_z_is_the_momentum_average_and_starts_from_the_first_batch():
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(6))
    z_batch = sum(math.exp(v) for v in logits.double().flatten().tolist()) / logits.numel() * 200
    log_zb = batch_log_norm_const(logits, 200)
    assert log_zb.exp().item() == pytest.approx(z_batch, rel=1e-5)
    first = update_log_norm_const(torch.tensor(-math.inf), log_zb, 0.9)
    assert first.exp().item() == pytest.approx(z_batch, rel=1e-5)
    nxt = update_log_norm_const(torch.tensor(math.log(3.0)), torch.tensor(math.log(11.0)), 0.9)
    assert nxt.exp().item() == pytest.approx(0.9 * 3.0 + 0.1 * 11.0, rel=1e-6)
    frozen = update_log_norm_const(torch.tensor(math.log(3.0)), torch.tensor(math.log(11.0)), 1.0)
    assert frozen.exp().item() == pytest.approx(3.0, rel=1e-6)


def test_objective_keeps_estimating_z_after_the_first_batch():
    n_data, m = 20, 0.8
    obj = CMCObjective(views=["a", "b"], graph="full", score="nce", n_data=n_data, dim=4, K=6, z_momentum=m)
    index, gen = torch.tensor([1, 5, 7]), torch.Generator().manual_seed(0)
    z1 = {"a": unit(3, 4, seed=7), "b": unit(3, 4, seed=8)}
    z2 = {"a": unit(3, 4, seed=9), "b": unit(3, 4, seed=10)}

    def batch_z(z, seed):  # Z_batch for direction a -> bank b, by hand, with the same negatives
        neg = sample_negatives(index, n_data, 6, torch.Generator().manual_seed(seed))
        rows = bank_rows_by_hand(z["a"], obj.banks.b, index, neg, obj.tau)
        return sum(math.exp(v) for r in rows for v in r) / (3 * 7) * n_data

    zb1 = batch_z(z1, 0)
    obj(z1, index, gen)
    assert obj.log_z[0, 0].exp().item() == pytest.approx(zb1, rel=1e-4)
    zb2 = batch_z(z2, 1)
    gen = torch.Generator().manual_seed(1)
    obj(z2, index, gen)
    assert obj.log_z[0, 0].exp().item() == pytest.approx(m * zb1 + (1 - m) * zb2, rel=1e-4)


def test_sampled_negatives_never_hit_the_positive_and_are_uniform():
    n_data, K = 7, 20000
    index = torch.tensor([0, n_data - 1, 3])
    neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(0))
    assert neg.shape == (3, K) and neg.dtype == torch.long
    assert int(neg.min()) >= 0 and int(neg.max()) < n_data
    for i, pos in enumerate(index.tolist()):
        counts = torch.bincount(neg[i], minlength=n_data).double()
        assert counts[pos] == 0
        others = counts[torch.arange(n_data) != pos] / K
        assert torch.allclose(others, torch.full_like(others, 1 / (n_data - 1)), atol=0.015)
    # the smallest possible dataset: the only negative is the other row
    assert sample_negatives(torch.tensor([0, 1]), 2, 50).tolist() == [[1] * 50, [0] * 50]
    # reproducible from the generator
    again = sample_negatives(index, n_data, K, torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def test_update_bank_is_the_formula():
    bank = unit(6, 3, seed=11)
    before = bank.double().tolist()
    z = unit(2, 3, seed=12)
    update_bank(bank, torch.tensor([4, 1]), z, 0.5)
    for row, j in zip(z.double().tolist(), [4, 1], strict=True):
        mixed = [0.5 * b + 0.5 * v for b, v in zip(before[j], row, strict=True)]
        norm = math.sqrt(sum(x * x for x in mixed))
        assert bank[j].double().tolist() == pytest.approx([x / norm for x in mixed], rel=1e-5)
    untouched = [0, 2, 3, 5]
    assert torch.equal(bank[untouched].double(), torch.tensor([before[j] for j in untouched], dtype=torch.float64))
    # a repeated index takes its first row
    update_bank(bank, torch.tensor([0, 0]), torch.stack([z[0], z[1]]), 0.0)
    assert torch.allclose(bank[0], z[0])


def test_mi_lower_bound():
    assert mi_lower_bound(1.5, 100) == pytest.approx(math.log(100) - 1.5)


@pytest.mark.parametrize(
    ("views", "core", "full"),
    [
        (["a", "b"], [("a", "b")], [("a", "b")]),
        (["a", "b", "c"], [("a", "b"), ("a", "c")], [("a", "b"), ("a", "c"), ("b", "c")]),
        (
            ["a", "b", "c", "d"],
            [("a", "b"), ("a", "c"), ("a", "d")],
            [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")],
        ),
    ],
)
def test_view_pairs(views, core, full):
    assert view_pairs(views, "core", "a") == core
    assert view_pairs(views, "full", None) == full
    assert view_pairs(views, "core", views[-1]) == [(views[-1], v) for v in views[:-1]]


def test_view_pairs_rejects_bad_settings():
    with pytest.raises(UserError, match="anchor"):
        view_pairs(["a", "b"], "core", "x")
    with pytest.raises(UserError, match="graph"):
        view_pairs(["a", "b"], "star", None)
    with pytest.raises(UserError, match="two distinct"):
        view_pairs(["a"], "full", None)


# --- the objective -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_data", [30, 1000])  # one GEMM over the bank; gathered rows
def test_bank_objective_scores_each_view_against_the_other_views_bank(n_data):
    K, tau = 5, 0.1
    obj = CMCObjective(views=["a", "b"], graph="full", n_data=n_data, dim=4, K=K, tau=tau)
    z = {"a": unit(3, 4, seed=13), "b": unit(3, 4, seed=14)}
    index = torch.tensor([0, n_data - 1, 12])
    loss, stats = obj(z, index, torch.Generator().manual_seed(3))
    neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(3))
    l_ab = softmax_ce_by_hand(bank_rows_by_hand(z["a"], obj.banks.b, index, neg, tau), [0] * 3)
    l_ba = softmax_ce_by_hand(bank_rows_by_hand(z["b"], obj.banks.a, index, neg, tau), [0] * 3)
    assert loss.item() == pytest.approx(l_ab + l_ba, rel=1e-5)
    assert stats["loss/a-b"] == pytest.approx(l_ab + l_ba, rel=1e-5)
    assert stats["mi/a-b"] == pytest.approx(math.log(K) - (l_ab + l_ba) / 2, rel=1e-5)


@pytest.mark.parametrize("negatives", ["memory_bank", "in_batch"])
@pytest.mark.parametrize(
    ("graph", "pairs"),
    [("full", [("rgb", "flow"), ("rgb", "depth"), ("flow", "depth")]), ("core", [("rgb", "flow"), ("rgb", "depth")])],
)
def test_three_views_give_stats_for_every_pair(negatives, graph, pairs):
    K, tau, n_data = 8, 0.07, 40
    obj = CMCObjective(views=["rgb", "flow", "depth"], graph=graph, anchor="rgb", negatives=negatives, n_data=n_data,
                       K=K, tau=tau)  # fmt: skip
    z = {v: unit(4, 128, seed=i) for i, v in enumerate(["rgb", "flow", "depth"])}
    index = torch.tensor([0, 1, 2, 39])
    banks = {v: obj.banks.get_buffer(v).clone() for v in z} if negatives == "memory_bank" else None
    loss, stats = obj(z, index, torch.Generator().manual_seed(0))
    neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(0))  # one draw shared by every pair
    bank_keys = [f"bank_cos/{v}" for v in ("rgb", "flow", "depth")] if negatives == "memory_bank" else []
    assert sorted(stats) == sorted([f"loss/{a}-{b}" for a, b in pairs] + [f"mi/{a}-{b}" for a, b in pairs] + bank_keys)
    by_hand = {(a, b): pair_loss_by_hand(z, banks, index, neg, tau, a, b) for a, b in pairs}
    for (a, b), value in by_hand.items():
        assert stats[f"loss/{a}-{b}"] == pytest.approx(value, rel=1e-5), (a, b)
    assert loss.item() == pytest.approx(sum(by_hand.values()), rel=1e-5)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())


def test_memory_bank_update_gathers_and_in_batch_has_no_banks():
    obj = CMCObjective(views=["a", "b"], graph="full", negatives="in_batch")
    assert len(obj.state_dict()) == 0
    obj.update({"a": unit(2, 128), "b": unit(2, 128)}, torch.tensor([0, 1]))  # a no-op
    obj = CMCObjective(views=["a", "b"], graph="full", n_data=10, dim=3, K=4, momentum=0.0)
    z = {"a": unit(2, 3, seed=1), "b": unit(2, 3, seed=2)}
    obj.update(z, torch.tensor([7, 2]))
    assert torch.allclose(obj.banks.a[[7, 2]], z["a"]) and torch.allclose(obj.banks.b[[7, 2]], z["b"])


def test_banks_are_unit_vectors_and_the_same_for_the_same_seed():
    kw = dict(views=["a", "b"], graph="full", n_data=50, dim=8, K=4)
    one, two = CMCObjective(**kw), CMCObjective(**kw)
    assert torch.equal(one.banks.a, two.banks.a) and not torch.equal(one.banks.a, one.banks.b)
    assert torch.allclose(one.banks.a.norm(dim=1), torch.ones(50))
    assert not torch.equal(one.banks.a, CMCObjective(**kw, seed=1).banks.a)


def test_state_dict_round_trip_keeps_banks_and_z():
    kw = dict(views=["a", "b", "c"], graph="full", score="nce", n_data=20, dim=4, K=6)
    obj = CMCObjective(**kw)
    index = torch.tensor([3, 4])
    z = {v: unit(2, 4, seed=i) for i, v in enumerate("abc")}
    obj(z, index, torch.Generator().manual_seed(0))
    obj.update(z, index)
    state = obj.state_dict()
    assert set(state) == {"banks.a", "banks.b", "banks.c", "log_z"}
    assert state["log_z"].shape == (3, 2) and torch.isfinite(state["log_z"]).all()
    other = CMCObjective(**kw, seed=99)
    other.load_state_dict(state)
    for key, value in obj.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    obj.eval(), other.eval()
    a, _ = obj(z, index, torch.Generator().manual_seed(1))
    b, _ = other(z, index, torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def test_eval_does_not_move_z():
    obj = CMCObjective(views=["a", "b"], graph="full", score="nce", n_data=20, dim=4, K=6)
    index, z = torch.tensor([3, 4]), {"a": unit(2, 4, seed=1), "b": unit(2, 4, seed=2)}
    obj.eval()
    loss, _ = obj(z, index)
    assert math.isfinite(loss.item()) and torch.isneginf(obj.log_z).all()


@pytest.mark.parametrize(
    ("negatives", "score"), [("in_batch", "softmax"), ("memory_bank", "softmax"), ("memory_bank", "nce")]
)
def test_loss_falls_under_optimisation(negatives, score):
    torch.manual_seed(0)
    n_data, D, B = 32, 16, 16
    obj = CMCObjective(
        views=["a", "b", "c"], graph="full", negatives=negatives, score=score, n_data=n_data, dim=D, K=16, tau=0.2
    )
    params = {v: torch.nn.Parameter(torch.randn(n_data, D)) for v in obj.views}
    opt = torch.optim.Adam(params.values(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        index = torch.randperm(n_data, generator=gen)[:B]
        z = {v: F.normalize(p[index], dim=1) for v, p in params.items()}
        loss, stats = obj(z, index, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.update(z, index)
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first
    assert stats["mi/a-b"] > 0


def test_objective_rejects_bad_settings():
    with pytest.raises(UserError, match="negatives"):
        CMCObjective(views=["a", "b"], graph="full", negatives="queue!", n_data=10)
    with pytest.raises(UserError, match="score"):
        CMCObjective(views=["a", "b"], graph="full", score="hinge", n_data=10)
    with pytest.raises(UserError, match="memory_bank"):
        CMCObjective(views=["a", "b"], graph="full", negatives="in_batch", score="nce")
    with pytest.raises(UserError, match="n_data"):
        CMCObjective(views=["a", "b"], graph="full", n_data=0)
    obj = CMCObjective(views=["a", "b"], graph="full", n_data=10, dim=4, K=3)
    with pytest.raises(KeyError, match="b"):
        obj({"a": unit(2, 4)}, torch.tensor([0, 1]))


@pytest.mark.parametrize(("negatives", "score"), [("memory_bank", "softmax"), ("memory_bank", "nce"),
                                                 ("in_batch", "softmax")])  # fmt: skip
def test_scores_in_float32_under_autocast(negatives, score):
    """Under bf16 autocast the scores are still float32: the loss of bf16 embeddings is the float64 formula
    on the same values to float32 precision. Scored in bf16 (logits up to 1/tau = 14 kept to steps of 1/16),
    the loss is off by ~1e-3 to 1e-2 relative."""
    B, D, K, n_data, tau = 6, 4, 8, 50, 0.07
    obj = CMCObjective(views=["a", "b"], graph="full", negatives=negatives, score=score, n_data=n_data, dim=D, K=K,
                       tau=tau)  # fmt: skip
    z = {"a": unit(B, D, seed=1).bfloat16(), "b": unit(B, D, seed=2).bfloat16()}  # values bf16 holds exactly
    index = torch.tensor([0, 3, 7, 12, 30, 49])
    banks = {v: obj.banks.get_buffer(v).clone() for v in "ab"} if negatives == "memory_bank" else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = obj(z, index, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32
    zf = {v: t.float() for v, t in z.items()}
    if score == "softmax":
        neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(0)) if banks else None
        expected = pair_loss_by_hand(zf, banks, index, neg, tau, "a", "b")
    else:
        neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(0))
        expected = 0.0
        for x, y in (("a", "b"), ("b", "a")):
            rows = bank_rows_by_hand(zf[x], banks[y], index, neg, tau)
            expected += binary_nce_by_hand(rows, z_batch_by_hand(rows, n_data), n_data)
    assert max(max(r) for r in in_batch_rows_by_hand(zf["a"], zf["b"], tau)) > 8  # logits where bf16 steps by 1/16
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("m", [1.0, 0.6])  # 1: Z of the first batch kept (the original CMC); 0.6: a running mean
def test_nce_objective_is_the_binary_nce_formula(m):
    """CMCObjective(score="nce") against the original CMC's binary NCE written out, for both directions:
    Z from the first batch, then the running average m Z + (1 - m) Z_batch; eval scores with the stored Z."""
    n_data, K, tau = 30, 7, 0.2
    obj = CMCObjective(views=["a", "b"], graph="full", score="nce", n_data=n_data, dim=5, K=K, tau=tau, z_momentum=m)
    banks = {v: obj.banks.get_buffer(v).clone() for v in "ab"}
    index = torch.tensor([4, 0, 29, 11])
    Z = {}
    for step in range(2):
        z = {"a": unit(4, 5, seed=20 + step), "b": unit(4, 5, seed=30 + step)}
        loss, stats = obj(z, index, torch.Generator().manual_seed(step))
        neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(step))
        expected = 0.0
        for d, (x, y) in enumerate((("a", "b"), ("b", "a"))):
            rows = bank_rows_by_hand(z[x], banks[y], index, neg, tau)
            zb = z_batch_by_hand(rows, n_data)
            Z[d] = zb if step == 0 else m * Z[d] + (1 - m) * zb
            expected += binary_nce_by_hand(rows, Z[d], n_data)
            assert obj.log_z[0, d].exp().item() == pytest.approx(Z[d], rel=1e-5), (step, d)
            # the MI bound still comes from the softmax loss of the same logits
            softmax = softmax_ce_by_hand(rows, [0] * 4)
            if d == 0:
                first_softmax = softmax
        assert loss.item() == pytest.approx(expected, rel=1e-5), step
        assert stats["loss/a-b"] == pytest.approx(expected, rel=1e-5)
        assert stats["mi/a-b"] == pytest.approx(math.log(K) - (first_softmax + softmax) / 2, rel=1e-5)
    obj.eval()  # eval: the stored Z, not this batch's
    z = {"a": unit(4, 5, seed=40), "b": unit(4, 5, seed=41)}
    loss, _ = obj(z, index, torch.Generator().manual_seed(9))
    neg = sample_negatives(index, n_data, K, torch.Generator().manual_seed(9))
    expected = sum(binary_nce_by_hand(bank_rows_by_hand(z[x], banks[y], index, neg, tau), Z[d], n_data)
                   for d, (x, y) in enumerate((("a", "b"), ("b", "a"))))  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("score", ["softmax", "nce"])
def test_cuda_under_bf16_autocast_matches_cpu(score):
    kw = dict(views=["a", "b", "c"], graph="full", score=score, n_data=50, dim=8, K=16)
    cpu, gpu = CMCObjective(**kw), CMCObjective(**kw).to("cuda")
    index = torch.tensor([0, 7, 49, 3])
    for step in range(2):
        z = {v: unit(4, 8, seed=10 * step + i) for i, v in enumerate("abc")}
        zg = {v: t.to("cuda") for v, t in z.items()}
        loss_cpu, _ = cpu(z, index, torch.Generator().manual_seed(step))  # the same CPU generator on both
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_gpu, _ = gpu(zg, index.to("cuda"), torch.Generator().manual_seed(step))
        assert loss_gpu.device.type == "cuda" and loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-3)
        cpu.update(z, index)
        gpu.update(zg, index.to("cuda"))
    for key, value in cpu.state_dict().items():
        assert torch.allclose(gpu.state_dict()[key].cpu(), value, atol=1e-4), key
    loss, _ = gpu(zg, index.to("cuda"), torch.Generator(device="cuda").manual_seed(0))  # a CUDA generator
    assert math.isfinite(loss.item())


# --- distributed helpers without a process group ------------------------------------------------


def test_distributed_helpers_are_no_ops_without_a_group():
    x = torch.arange(6.0).reshape(3, 2)
    assert not distributed.is_dist()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.all_gather_cat(x) is x
    assert distributed.all_reduce_mean(x) is x
    assert distributed.broadcast_object(x) is x
    distributed.barrier()
    distributed.cleanup()
    distributed.init_from_env("cpu")  # no torchrun environment here: stays single-process
    assert not distributed.is_dist()


# --- the predictive baseline --------------------------------------------------------------------


@pytest.mark.parametrize("out_shape", [(2, 8, 32, 32), (3, 5, 28, 36), (1, 1, 7, 9)])
def test_predictive_decoder_gives_the_exact_target_shape(out_shape):
    dec = PredictiveDecoder(in_features=24, out_shape=out_shape, width=8)
    pred = dec(torch.randn(2, 24))
    assert pred.shape == (2, *out_shape)
    target = torch.randn_like(pred)
    loss = predictive_loss(pred, target, "l2")
    loss.backward()
    assert all(p.grad is not None for p in dec.parameters())
    assert loss.item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-5)
    assert predictive_loss(pred, target, "l1").item() == pytest.approx((pred - target).abs().mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        predictive_loss(pred, target[:1], "l1")


# --- two ranks over gloo ------------------------------------------------------------------------


TWO_RANKS = dict(n_data=20, dim=4, K=5, tau=0.5, momentum=0.3)  # tau 0.5: logits near 1, every NCE term matters


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    from mvcoding import objectives

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env("cpu")
    drawn = []  # what the objective draws: the negatives of the global batch
    sample = objectives.sample_negatives
    objectives.sample_negatives = lambda *args, **kw: drawn.append(sample(*args, **kw)) or drawn[-1]
    try:
        gathered = distributed.all_gather_cat(torch.full((rank + 1, 2), float(rank)))  # 1 row, then 2 rows
        mean = distributed.all_reduce_mean(torch.tensor([float(rank)]))
        broadcast = distributed.broadcast_object({"from": rank})
        obj = CMCObjective(views=["a", "b"], graph="full", score="nce", **TWO_RANKS)
        index = torch.tensor([2 * rank, 2 * rank + 1])  # each rank its own clips
        z = {"a": unit(2, 4, seed=rank), "b": unit(2, 4, seed=10 + rank)}
        loss, _ = obj(z, index, torch.Generator().manual_seed(7))  # one seed on every rank, as the trainer's
        obj.update(z, index)
        torch.save(
            {"gathered": gathered, "mean": mean, "broadcast": broadcast, "state": obj.state_dict(),
             "loss": loss.item(), "drawn": drawn},
            f"{out_dir}/{rank}.pt",
        )  # fmt: skip
    finally:
        distributed.cleanup()


def test_two_ranks_agree_on_banks_and_z(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert r0["gathered"].tolist() == r1["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert r0["mean"].item() == r1["mean"].item() == 0.5
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key

    # both ranks drew the same negatives: those of the global batch 0..3, one row per clip
    n, K, tau = TWO_RANKS["n_data"], TWO_RANKS["K"], TWO_RANKS["tau"]
    assert len(r0["drawn"]) == len(r1["drawn"]) == 1
    neg = r0["drawn"][0]
    assert neg.shape == (4, K) and torch.equal(neg, r1["drawn"][0])
    assert all(j not in row for j, row in enumerate(neg.tolist()))  # never a clip's own row

    # the global batch and the banks before the step, by hand
    z = {v: torch.cat([unit(2, 4, seed=s), unit(2, 4, seed=s + 1)]) for v, s in (("a", 0), ("b", 10))}  # rank order
    init = CMCObjective(views=["a", "b"], graph="full", **TWO_RANKS).banks  # the seeded start, the same on every rank
    before = {v: init.get_buffer(v).double().tolist() for v in "ab"}
    # Z per direction from the logits of the whole global batch; rank r scores its rows 2r, 2r+1 with it
    rows = {d: bank_rows_by_hand(z[x], init.get_buffer(y), torch.arange(4), neg, tau)
            for d, (x, y) in enumerate((("a", "b"), ("b", "a")))}  # fmt: skip
    Z = {d: z_batch_by_hand(rows[d], n) for d in rows}
    for d in (0, 1):
        assert r0["state"]["log_z"][0, d].exp().item() == pytest.approx(Z[d], rel=1e-5), d
    for rank, result in enumerate((r0, r1)):
        expected = sum(binary_nce_by_hand(rows[d][2 * rank : 2 * rank + 2], Z[d], n) for d in (0, 1))
        assert result["loss"] == pytest.approx(expected, rel=1e-5), rank

    # both ranks applied both ranks' embeddings to their banks: row j = normalize(m bank[j] + (1 - m) z_j)
    for v in "ab":
        bank = r0["state"][f"banks.{v}"].double().tolist()
        for j in range(n):
            if j < 4:
                mixed = [0.3 * b + 0.7 * x for b, x in zip(before[v][j], z[v][j].double().tolist(), strict=True)]
                norm = math.sqrt(sum(x * x for x in mixed))
                assert bank[j] == pytest.approx([x / norm for x in mixed], abs=1e-6), (v, j)
            else:
                assert bank[j] == before[v][j], (v, j)  # untouched rows stay as they were


# --- every objective behind one interface -------------------------------------------------------


def tiny_model(tmp_path):
    """A real two-view model (rgb, flow: small3d_gn, width 8) and a batch of 4 random clips for it."""
    cfg = load_config(SYNTHETIC, tiny(tmp_path, **{"views.rgb.width": 8, "views.flow.width": 8}))
    views = build_views(cfg)
    torch.manual_seed(0)
    model = MultiViewModel(views, 16)
    x = {n: torch.randn(4, v.channels, 4, 32, 32, generator=torch.Generator().manual_seed(i))
         for i, (n, v) in enumerate(views.items())}  # fmt: skip
    return cfg.objective, model, x | {"index": torch.tensor([3, 0, 7, 5]), "label": torch.tensor([2, 0, 1, 2])}


def objective_cfg(o, **changes):
    return OmegaConf.merge(OmegaConf.to_container(o), changes)


def test_supervised_objective_is_cross_entropy_of_a_linear_classifier(tmp_path):
    o, model, batch = tiny_model(tmp_path)
    obj = build_objective(objective_cfg(o, name="supervised", anchor="flow"), ["rgb", "flow"], model,
                          n_data=10, sample_item={}, num_classes=3)  # fmt: skip
    assert [k for k, _ in obj.named_parameters()] == ["classifier.weight", "classifier.bias"]
    loss, stats = obj.loss(model, batch)
    logits = (model.encoders["flow"](batch["flow"]) @ obj.classifier.weight.T + obj.classifier.bias).double()
    by_hand = softmax_ce_by_hand(logits.tolist(), batch["label"].tolist())
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert stats["loss/flow->label"] == pytest.approx(by_hand, rel=1e-5)
    hits = [row.index(max(row)) == y for row, y in zip(logits.tolist(), [2, 0, 1, 2], strict=True)]
    assert stats["train_top1"] == sum(hits) / 4
    loss.backward()
    assert all(p.grad is not None for p in model.encoders["flow"].parameters())
    assert all(p.grad is None for p in [*model.encoders["rgb"].parameters(), *model.heads.parameters()])
    assert not obj.uses_whole_model  # DDP must look for the parameters without a gradient
    obj.update()  # nothing to do


def test_predictive_objective_regresses_the_target_view(tmp_path):
    o, model, batch = tiny_model(tmp_path)
    item = {n: x[0] for n, x in batch.items()}
    o = objective_cfg(o, name="predictive", predict={"source": "rgb", "target": "flow", "loss": "l2"})
    obj = build_objective(o, ["rgb", "flow"], model, n_data=10, sample_item=item, num_classes=3)
    assert all(k.startswith("decoder.") for k in obj.state_dict())
    loss, stats = obj.loss(model, batch)
    pred = obj.decoder(model.encoders["rgb"](batch["rgb"]))
    assert loss.item() == pytest.approx(((pred - batch["flow"]) ** 2).mean().item(), rel=1e-5)
    assert stats == {"loss/rgb->flow": pytest.approx(loss.item())}
    loss.backward()
    assert all(p.grad is not None for p in [*model.encoders["rgb"].parameters(), *obj.parameters()])
    assert all(p.grad is None for p in [*model.encoders["flow"].parameters(), *model.heads.parameters()])
    assert not obj.uses_whole_model
    # one view is enough: an autoencoder of rgb
    one = build_objective(objective_cfg(o, predict={"source": "rgb", "target": "rgb"}), ["rgb"], model,
                          n_data=10, sample_item=item, num_classes=3)  # fmt: skip
    assert one.loss(model, batch)[0].item() > 0


@pytest.mark.parametrize("negatives", ["memory_bank", "in_batch"])
def test_cmc_loss_embeds_every_view_and_update_uses_that_batch(tmp_path, negatives):
    o, model, batch = tiny_model(tmp_path)
    # the original's bank positives, which pair_loss_by_hand writes out (tests/test_bank.py: fresh ones)
    o = objective_cfg(o, name="cmc", negatives=negatives, K=4, momentum=0.0, positives="bank")
    obj = build_objective(o, ["rgb", "flow"], model, n_data=10, sample_item={}, num_classes=3)
    assert list(obj.parameters()) == []  # the banks are state, not trained
    banks = {v: obj.banks.get_buffer(v).clone() for v in ("rgb", "flow")} if negatives == "memory_bank" else None
    loss, stats = obj.loss(model, batch, torch.Generator().manual_seed(1))
    z = model(batch)  # the embeddings of every view, by hand: the loss must be theirs, at the batch's indices
    neg = sample_negatives(batch["index"], 10, 4, torch.Generator().manual_seed(1)) if banks else None
    by_hand = pair_loss_by_hand(z, banks, batch["index"], neg, o.tau, "rgb", "flow")
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert stats["loss/rgb-flow"] == pytest.approx(by_hand, rel=1e-5)
    loss.backward()
    assert obj.uses_whole_model and all(p.grad is not None for p in model.parameters())
    obj.update()  # momentum 0: the rows of this batch become its embeddings
    if negatives == "memory_bank":
        torch.testing.assert_close(obj.banks.flow[batch["index"]], z["flow"].detach())
        untouched = [i for i in range(10) if i not in batch["index"].tolist()]
        fresh = build_objective(o, ["rgb", "flow"], model, n_data=10, sample_item={}, num_classes=3)
        torch.testing.assert_close(obj.banks.flow[untouched], fresh.banks.flow[untouched])


def test_build_objective_names_the_bad_key(tmp_path):
    o, model, batch = tiny_model(tmp_path)
    item = {n: x[0] for n, x in batch.items()}

    def build(views=("rgb", "flow"), **changes):
        return build_objective(objective_cfg(o, **changes), list(views), model, n_data=10, sample_item=item,
                               num_classes=3)  # fmt: skip

    with pytest.raises(UserError, match="objective.name='byol' is not valid; choose one of: cmc, predictive"):
        build(name="byol")
    with pytest.raises(UserError, match="objective.predict=.*set objective.predict='{source: rgb"):
        build(name="predictive")  # predict: null
    with pytest.raises(UserError, match="objective.predict=.*among the views"):
        build(name="predictive", predict={"source": "rgb", "target": "depth"})
    with pytest.raises(UserError, match="objective.predict.loss='l3' is not valid"):
        build(name="predictive", predict={"source": "rgb", "target": "flow", "loss": "l3"})
    with pytest.raises(UserError, match="objective.anchor='depth' is the view objective.name=supervised trains"):
        build(name="supervised", anchor="depth")
    assert build(["rgb"], name="supervised", anchor="rgb").view == "rgb"


def test_mean_pairwise_cosine_against_the_pairwise_loop():
    from mvcoding.objectives import mean_pairwise_cosine

    rows = torch.nn.functional.normalize(torch.randn(7, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    pairs = [(rows[i] @ rows[j]).item() for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(rows).item() == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert mean_pairwise_cosine(torch.eye(4)).item() == pytest.approx(0.0)  # orthogonal rows
    assert mean_pairwise_cosine(torch.ones(3, 4) / 2).item() == pytest.approx(1.0)  # a collapsed bank
