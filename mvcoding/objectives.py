"""Contrastive multiview objectives (CMC) over any number of named views.

Pure functions on tensors do the arithmetic; `CMCObjective` holds the state (one memory bank per
view, running estimates of the NCE normalising constant) and sums the loss over the view graph.
`PredictiveDecoder` and `predictive_loss` are the cross-view prediction baseline.

The trainer sees every objective (`build_objective`: cmc, predictive, supervised) through one
interface, an nn.Module whose parameters are its own trainable ones (a decoder, a classifier) and
whose state_dict is its whole state (banks, log Z, decoder):
    loss, stats = objective.loss(model, batch, generator)   # model: a MultiViewModel (or its DDP wrapper)
    ... backward, optimiser step ...
    objective.update()                                      # CMC: the memory banks; others: nothing
`uses_whole_model` says whether every model parameter gets a gradient (else DDP must look for unused ones).

Shapes: B batch, D embedding size, K negatives per anchor, N dataset size (rows of a bank).
Embeddings z are L2-normalised. Scores are exp(z_i . z_j / tau); logits are z_i . z_j / tau.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvcoding.distributed import all_gather_cat, all_gather_with_grad, rank
from mvcoding.errors import UserError

GRAPHS = ("core", "full")
BANK_INITS = ("random", "fill")
POSITIVES = ("bank", "fresh")
NEGATIVES = ("memory_bank", "in_batch")
SCORES = ("softmax", "nce")

# bank_logits scores the whole bank with one matrix product when it has at most this many rows per
# sampled column: a GEMM over N rows beats gathering B*(K+1) rows by 20-50x on CPU up to N ~ 50 (K+1).
FULL_BANK_RATIO = 32


# --- the view graph ---------------------------------------------------------------------------


def view_pairs(views: list[str], graph: str, anchor: str | None = None) -> list[tuple[str, str]]:
    """The pairs of views that the loss contrasts.

    core: (anchor, v) for every other view v, in the given order; full: every unordered pair
    (views[i], views[j]) with i < j. Any number of views >= 2.
    """
    if len(views) < 2 or len(set(views)) != len(views):
        raise UserError(f"views must name at least two distinct views, got {list(views)}")
    if graph == "core":
        if anchor not in views:
            raise UserError(f"objective.anchor={anchor!r} must be one of the views {list(views)} when graph=core")
        return [(anchor, v) for v in views if v != anchor]
    if graph == "full":
        return [(views[i], views[j]) for i in range(len(views)) for j in range(i + 1, len(views))]
    raise UserError(f"objective.graph={graph!r} is not one of {list(GRAPHS)}")


def mi_lower_bound(loss: Tensor | float, n_negatives: int) -> Tensor | float:
    """I(z_a; z_b) >= log(n_negatives) - loss for one direction's softmax (InfoNCE) loss.

    n_negatives is K for a memory bank and B - 1 in the batch.
    """
    return math.log(n_negatives) - loss


# --- in-batch InfoNCE ---------------------------------------------------------------------------


def info_nce(z_a: Tensor, z_b: Tensor, tau: float, offset: int = 0, negative_grad: bool = True) -> Tensor:
    """L^{a,b}: each anchor z_a[i] against every candidate z_b[j] of the batch; positive at j = offset + i.

    z_a: (B, D) anchors; z_b: (M, D) candidates, M >= offset + B (under torchrun: every rank's batch,
    this rank's rows starting at `offset`). Returns the mean over the anchors of
    -log softmax_j(z_a[i] . z_b[j] / tau)[offset + i].
    negative_grad=False: the candidates z_b[j], j != offset + i, are constants for anchor i's gradient
    (as a memory bank's rows or MoCo's keys are); the positive keeps its gradient. The value is the same.
    """
    target = torch.arange(offset, offset + z_a.shape[0], device=z_a.device)  # (B,)
    if negative_grad:
        logits = z_a @ z_b.T / tau  # (B, M): row i scores anchor i, its positive at column offset + i
    else:
        positive = (z_a * z_b[offset : offset + z_a.shape[0]]).sum(1, keepdim=True) / tau  # (B, 1)
        logits = (z_a @ z_b.detach().T / tau).scatter(1, target[:, None], positive)  # (B, M)
    return F.cross_entropy(logits, target)


def in_batch_loss(z_a: Tensor, z_b: Tensor, tau: float) -> Tensor:
    """L(a, b) = L^{a,b} + L^{b,a}: symmetric InfoNCE over the batch. z_a, z_b: (B, D)."""
    return info_nce(z_a, z_b, tau) + info_nce(z_b, z_a, tau)


# --- memory bank --------------------------------------------------------------------------------


def sample_negatives(index: Tensor, n_data: int, K: int, generator: torch.Generator | None = None) -> Tensor:
    """K negatives per row, uniform over [0, n_data) without that row's own index.

    index: (B,) long. Returns (B, K) long on index's device. Exact: draw from the n_data - 1 other
    rows by sampling [0, n_data - 1) and shifting values >= index up by one. Uses `generator`
    (drawing on its device) so that runs are reproducible.
    """
    if n_data < 2:
        raise ValueError(f"need n_data >= 2 to sample negatives, got {n_data}")
    device = generator.device if generator is not None else index.device
    neg = torch.randint(0, n_data - 1, (index.shape[0], K), generator=generator, device=device)  # (B, K)
    neg = neg.to(index.device)  # (B, K)
    return neg + (neg >= index[:, None]).long()  # (B, K): skips index, so each other row has p = 1/(N-1)


def bank_logits(z: Tensor, bank: Tensor, index: Tensor, neg: Tensor, tau: float) -> Tensor:
    """Logits of anchors z against bank rows: the positive bank[index] in column 0, then bank[neg].

    z: (B, D), bank: (N, D), index: (B,), neg: (B, K). Returns (B, K+1).
    """
    return _logits_at(z, bank, torch.cat([index[:, None], neg], dim=1), tau)  # (B, K+1): positive first


def _logits_at(z: Tensor, bank: Tensor, idx: Tensor, tau: float) -> Tensor:
    """z: (B, D) against bank: (N, D) at columns idx: (B, K+1). Returns (B, K+1)."""
    bank = bank.detach()  # (N, D): the bank is a constant for the gradient
    if bank.shape[0] <= FULL_BANK_RATIO * idx.shape[1]:
        # one GEMM against every row, then pick the sampled columns: much faster than a gather
        logits = (z @ bank.T).gather(1, idx)  # (B, N) -> (B, K+1)
    else:
        logits = torch.bmm(bank[idx], z.unsqueeze(2)).squeeze(2)  # (B, K+1, D) @ (B, D, 1) -> (B, K+1)
    return logits / tau  # (B, K+1)


def fresh_positive(logits: Tensor, z_a: Tensor, z_b: Tensor, tau: float) -> Tensor:
    """logits (B, K+1) from `bank_logits` with column 0 replaced by z_a[i] . z_b[i] / tau, the positive
    scored against the other view's embedding of this step (both get its gradient) instead of its bank row.

    z_a, z_b: (B, D). The negatives (columns 1..K) stay the bank's rows.
    """
    positive = (z_a * z_b).sum(1, keepdim=True) / tau  # (B, 1)
    return torch.cat([positive, logits[:, 1:]], dim=1)  # (B, K+1): positive first


def mean_pairwise_cosine(rows: Tensor) -> Tensor:
    """Mean of rows[i] . rows[j] over pairs i != j, for unit rows (N, D), N >= 2, in O(N D).

    sum_{i != j} r_i . r_j = |sum_i r_i|^2 - N. Near 1: every row the same vector (a collapsed bank,
    every logit equal and the loss at log(K + 1)); near 0: rows spread out.
    """
    n = rows.shape[0]
    return (rows.sum(0, dtype=torch.float64).square().sum() - n) / (n * (n - 1))  # no float64 copy of the bank


def nce_softmax_loss(logits: Tensor) -> Tensor:
    """Softmax over K+1 candidates with the positive in column 0 (the original NCESoftmaxLoss).

    logits: (B, K+1). Returns the mean cross entropy with target 0.
    """
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # (B,)
    return F.cross_entropy(logits, target)


def batch_log_norm_const(logits: Tensor, n_data: int) -> Tensor:
    """log Z_batch, with Z_batch = mean(exp(logits)) * n_data. logits: (B, K+1). Returns a scalar."""
    return torch.logsumexp(logits.detach().flatten(), 0) - math.log(logits.numel()) + math.log(n_data)


def update_log_norm_const(log_z: Tensor, log_z_batch: Tensor, momentum: float) -> Tensor:
    """The running average Z <- momentum * Z + (1 - momentum) * Z_batch, on logs (no overflow).

    log_z = -inf means "no estimate yet": the result is then Z_batch itself (the first batch).
    """
    log_m = math.log(momentum) if momentum > 0 else -math.inf
    log_1m = math.log1p(-momentum) if momentum < 1 else -math.inf
    avg = torch.logaddexp(log_z + log_m, log_z_batch + log_1m)
    return torch.where(torch.isneginf(log_z), log_z_batch, avg)


def nce_binary_loss(logits: Tensor, log_z: Tensor | float, n_data: int) -> Tensor:
    """Binary NCE (the original NCECriterion), column 0 the positive, noise Pn = 1/n_data.

    With x = exp(logits) / Z: loss = -mean_b[log(x0 / (x0 + K Pn)) + sum_k log(K Pn / (xk + K Pn))].
    logits: (B, K+1); log_z: log Z, a scalar. Computed with softplus on logs, so it does not overflow.
    """
    K = logits.shape[1] - 1
    log_c = math.log(K / n_data)  # log(K Pn)
    log_x = logits - log_z  # (B, K+1): log x
    log_d1 = -F.softplus(log_c - log_x[:, 0])  # (B,): log(x0 / (x0 + K Pn))
    log_d0 = -F.softplus(log_x[:, 1:] - log_c)  # (B, K): log(K Pn / (xk + K Pn))
    return -(log_d1 + log_d0.sum(1)).mean()


@torch.no_grad()
def update_bank(bank: Tensor, index: Tensor, z: Tensor, momentum: float) -> None:
    """In place: bank[index] = normalize(momentum * bank[index] + (1 - momentum) * z).

    bank: (N, D), index: (B,), z: (B, D). A repeated index takes its first row of z (so every rank
    and every run writes the same thing).
    """
    uniq, inverse = torch.unique(index, return_inverse=True)  # (U,), (B,)
    rows = torch.arange(index.shape[0], device=index.device)  # (B,)
    first = torch.full_like(uniq, index.shape[0]).scatter_reduce_(0, inverse, rows, reduce="amin")  # (U,)
    mixed = bank[uniq] * momentum + z.detach()[first].to(bank.dtype) * (1 - momentum)  # (U, D)
    bank.index_copy_(0, uniq, F.normalize(mixed, dim=1))


# --- the objective ------------------------------------------------------------------------------


class CMCObjective(nn.Module):
    """The CMC loss over a view graph, with negatives from per-view memory banks or from the batch.

    forward(z, index, generator) -> (loss, stats): the sum over pairs (a, b) of L^{a,b} + L^{b,a}.
    With a memory bank, view a's embedding scores against view b's bank and vice versa (as the
    original CMC); the K negatives are drawn once per call and shared by all pairs. Call
    `update(z, index)` after `loss.backward()` (the backward pass reads the banks).

    State (in state_dict, so checkpointed): `banks.<view>` (N, D) per view, initialised to random
    unit vectors from `seed` (the same on every rank); with bank_init="fill" the trainer then writes
    every row with a real embedding before the first step (`needs_fill`, `fill`); for score="nce",
    `log_z` (pairs, 2), the log of the normalising constant Z for each pair and direction (column 0:
    a against b's bank).

    Where this differs from the original CMC (HobbitLong/CMC):
    - NCE's Z: the original estimates Z once, from the first training batch (mean(exp(s/tau)) * N),
      and keeps it. That is z_momentum=1.0, the default; z_momentum < 1 keeps a running mean
      Z <- m Z + (1 - m) Z_batch instead (an option, not the original).
    - Negatives: the original draws K indices uniformly over all N rows, so a negative can be the
      positive's own row; here negatives are uniform over the N - 1 other rows, never the positive.
    - positives="fresh" (configs/base.yaml's default; this class's default is the original "bank"):
      the positive is scored against the other view's embedding of this step, with gradient into
      both encoders, and only the K negatives come from the bank; with bank positives the loss sat
      at chance for 10-25 epochs on the synthetic sets (docs/objective.md).
    - bank_init="fill" (an option; the original's rows start random): one no-grad pass of the
      encoders over the training set writes every row before the first step.
    - negative_grad=False (in_batch only; an option for experiments): the in-batch negatives are
      constants for the gradient, as a bank's rows are, so the two kinds of negatives can be compared
      with the gradient path held equal.
    """

    def __init__(
        self,
        *,
        views: list[str],
        graph: str,
        anchor: str | None = None,
        negatives: str = "memory_bank",
        score: str = "softmax",
        n_data: int = 0,
        dim: int = 128,
        K: int = 16384,
        tau: float = 0.07,
        momentum: float = 0.5,
        z_momentum: float = 1.0,
        bank_init: str = "random",
        positives: str = "bank",
        negative_grad: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if positives not in POSITIVES:
            raise UserError(f"objective.positives={positives!r} is not one of {list(POSITIVES)}")
        if bank_init not in BANK_INITS:
            raise UserError(f"objective.bank_init={bank_init!r} is not one of {list(BANK_INITS)}")
        if negatives not in NEGATIVES:
            raise UserError(f"objective.negatives={negatives!r} is not one of {list(NEGATIVES)}")
        if score not in SCORES:
            raise UserError(f"objective.score={score!r} is not one of {list(SCORES)}")
        if score == "nce" and negatives != "memory_bank":
            raise UserError("objective.score=nce needs objective.negatives=memory_bank")
        if negatives == "memory_bank" and (n_data < 2 or K < 1):
            raise UserError(f"a memory bank needs n_data >= 2 and K >= 1, got n_data={n_data}, K={K}")
        if tau <= 0 or not 0 <= momentum <= 1 or not 0 <= z_momentum <= 1:
            raise UserError(f"need tau > 0 and momenta in [0, 1], got {tau=}, {momentum=}, {z_momentum=}")
        if any(not v or "." in v for v in views):
            raise UserError(f"view names must be non-empty and free of '.', got {list(views)}")
        self.views = list(views)
        self.pairs = view_pairs(self.views, graph, anchor)
        self.graph, self.negatives, self.score = graph, negatives, score
        self.n_data, self.K, self.tau = n_data, K, tau
        self.momentum, self.z_momentum = momentum, z_momentum
        self.positives = positives
        self.negative_grad = negative_grad  # in_batch: do the negatives carry gradient (bank rows never do)
        self.needs_fill = negatives == "memory_bank" and bank_init == "fill"  # the trainer runs fill() first
        self._last: tuple[dict[str, Tensor], Tensor] | None = None  # (z, index) of the last loss(), for update()

        self.banks = nn.Module()
        if negatives == "memory_bank":
            gen = torch.Generator().manual_seed(seed)
            for v in self.views:
                self.banks.register_buffer(v, F.normalize(torch.randn(n_data, dim, generator=gen), dim=1))
        if score == "nce":
            self.register_buffer("log_z", torch.full((len(self.pairs), 2), -math.inf))

    def extra_repr(self) -> str:
        return (
            f"pairs={self.pairs}, negatives={self.negatives}, score={self.score}, "
            f"n_data={self.n_data}, K={self.K}, tau={self.tau}, momentum={self.momentum}"
        )

    def forward(
        self, z: dict[str, Tensor], index: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """z: {view: (B, D)} L2-normalised; index: (B,) dataset indices (rows of the banks).

        Returns the total loss (a scalar) and {"loss/a-b": L(a, b), "mi/a-b": bound} per pair, where
        the bound is the mean over the two directions of log(K) - L^{.,.} (log(B - 1) in the batch),
        from the softmax loss of the same logits (also for score="nce").
        """
        missing = [v for v in self.views if v not in z]
        if missing:
            raise KeyError(f"embeddings missing for views {missing}; got {sorted(z)}")
        use_bank = self.negatives == "memory_bank"
        # Score in float32 even under bf16 autocast: logits span 2/tau and need the precision.
        with torch.autocast(index.device.type, enabled=False):
            z = {v: z[v].float() for v in self.views}
            if use_bank:  # the same K negatives for every pair and direction
                # drawn for the global batch (every rank's indices, rank order) and sliced to this
                # rank's rows, so N processes draw exactly the negatives one process would
                every = all_gather_cat(index)  # (B * world,)
                neg = sample_negatives(every, self.n_data, self.K, generator)  # (B * world, K)
                neg = neg[rank() * index.shape[0] : (rank() + 1) * index.shape[0]]  # (B, K)
                idx = torch.cat([index[:, None], neg], dim=1)  # (B, K+1): positive first, as bank_logits
                n_neg = self.K
            else:  # candidates: the global batch of every rank, with gradients back to each rank
                gathered = {v: all_gather_with_grad(z[v]) for v in self.views}  # {v: ((B * world, D), offset)}
                n_neg = next(iter(gathered.values()))[0].shape[0] - 1
                if n_neg < 1:
                    raise ValueError("in-batch negatives need a batch of at least 2")
            total, stats = 0.0, []
            for p, (a, b) in enumerate(self.pairs):
                losses, softmax_losses = [], []
                for d, (anchor, other) in enumerate(((a, b), (b, a))):
                    if not use_bank:
                        candidates, offset = gathered[other]
                        loss = softmax_loss = info_nce(z[anchor], candidates, self.tau, offset, self.negative_grad)
                    else:
                        logits = _logits_at(z[anchor], self.banks.get_buffer(other), idx, self.tau)  # (B, K+1)
                        if self.positives == "fresh":  # the other view's embedding of this step, with its gradient
                            logits = fresh_positive(logits, z[anchor], z[other], self.tau)  # (B, K+1)
                        softmax_loss = nce_softmax_loss(logits)
                        loss = softmax_loss if self.score == "softmax" else self._nce(logits, p, d)
                    losses.append(loss)
                    softmax_losses.append(softmax_loss.detach())
                total = total + losses[0] + losses[1]
                bound = sum(mi_lower_bound(s, n_neg) for s in softmax_losses) / 2
                stats += [(f"loss/{a}-{b}", (losses[0] + losses[1]).detach()), (f"mi/{a}-{b}", bound)]
            if use_bank:  # a collapsed bank (cosine -> 1) is the memory bank's failure mode: log it
                stats += [(f"bank_cos/{v}", mean_pairwise_cosine(self.banks.get_buffer(v)).float()) for v in self.views]
        values = torch.stack([v for _, v in stats]).tolist()  # one host sync for all the stats
        return total, {name: value for (name, _), value in zip(stats, values, strict=True)}

    def _nce(self, logits: Tensor, p: int, d: int) -> Tensor:
        """Binary NCE for pair p, direction d; in training, first fold this batch into the running Z."""
        log_z_batch = batch_log_norm_const(logits, self.n_data)
        if self.training:
            every_rank = all_gather_cat(log_z_batch.reshape(1))  # (world,)
            log_z_batch = torch.logsumexp(every_rank, 0) - math.log(every_rank.numel())  # log of the mean Z
            self.log_z[p, d] = update_log_norm_const(self.log_z[p, d], log_z_batch, self.z_momentum)
            log_z = self.log_z[p, d].clone()
        else:
            log_z = torch.where(torch.isneginf(self.log_z[p, d]), log_z_batch, self.log_z[p, d])
        return nce_binary_loss(logits, log_z, self.n_data)

    uses_whole_model = True  # model(batch) runs every encoder and head

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """forward() on the embeddings model(batch) {view: (B, D)} and batch["index"] (B,).

        Keeps the detached embeddings and indices for the next `update()`.
        """
        z = {n: v.float() for n, v in model(batch).items()}  # (B, D) per view
        self._last = ({n: v.detach() for n, v in z.items()}, batch["index"])
        return self(z, batch["index"], generator=generator)

    @torch.no_grad()
    def update(self, z: dict[str, Tensor] | None = None, index: Tensor | None = None) -> None:
        """Momentum update of every view's bank with the embeddings and indices of all ranks.

        z: {view: (B, D)}, index: (B,); by default those of the last `loss` call (the trainer calls
        `update()` after the optimiser step). All ranks end with identical banks. No-op for in_batch.
        """
        if z is None:
            (z, index), self._last = self._last, None
        if self.negatives != "memory_bank":
            return
        index = all_gather_cat(index)  # (B * world,)
        for v in self.views:
            update_bank(self.banks.get_buffer(v), index, all_gather_cat(z[v].detach()), self.momentum)

    @torch.no_grad()
    def fill(self, z: dict[str, Tensor], index: Tensor) -> None:
        """bank[index] = z for every view (momentum 0), with the embeddings and indices of all ranks.

        z: {view: (B, D)} L2-normalised, index: (B,). The fill pass before the first step calls it
        once per batch of one no-grad pass over the training set.
        """
        index = all_gather_cat(index)  # (B * world,)
        for v in self.views:
            update_bank(self.banks.get_buffer(v), index, all_gather_cat(z[v].detach()), 0.0)


# --- cross-view prediction baseline -------------------------------------------------------------


class PredictiveDecoder(nn.Module):
    """Decodes features (B, F) into a prediction of another view's input (B, C, T, H, W).

    A linear layer to a small (width, T/4, H/8, W/8) volume, then three trilinear-upsample + conv
    blocks to (T/2, H/4, W/4), (T, H/2, W/2), (T, H, W), and a 1x1x1 conv to C channels.
    The output has exactly `out_shape` for any sizes (divisions round up).
    """

    def __init__(self, *, in_features: int, out_shape: tuple[int, int, int, int], width: int = 32) -> None:
        super().__init__()
        c, t, h, w = out_shape
        self.start = (width, math.ceil(t / 4), math.ceil(h / 8), math.ceil(w / 8))
        self.fc = nn.Linear(in_features, math.prod(self.start))
        sizes = [
            (math.ceil(t / 2), math.ceil(h / 4), math.ceil(w / 4)),
            (t, math.ceil(h / 2), math.ceil(w / 2)),
            (t, h, w),
        ]
        widths = [width, width, width // 2, max(width // 4, 1)]
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Upsample(size=size, mode="trilinear", align_corners=False),
                    nn.Conv3d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm3d(c_out),
                    nn.ReLU(inplace=True),
                )
                for size, c_in, c_out in zip(sizes, widths[:-1], widths[1:], strict=True)
            )
        )
        self.head = nn.Conv3d(widths[-1], c, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, F) features -> (B, C, T, H, W)."""
        v = F.relu(self.fc(x)).view(x.shape[0], *self.start)  # (B, width, T/4, H/8, W/8)
        return self.head(self.blocks(v))  # (B, C, T, H, W)


def predictive_loss(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 or L2 (squared) error between a predicted view and the real one, same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise UserError(f"predictive loss kind={kind!r} is not one of ['l1', 'l2']")


class PredictiveObjective(nn.Module):
    """Cross-view prediction: a decoder regresses the `target` view's input from the `source` view's
    encoder features, with an L1 or L2 loss (the paper's baseline against CMC).

    loss(model, batch) -> (loss, {"loss/source->target": value}); update() does nothing.
    """

    uses_whole_model = False  # only the source encoder, no projection head
    needs_fill = False

    def __init__(
        self, *, source: str, target: str, kind: str, in_features: int, out_shape: tuple[int, int, int, int]
    ) -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise UserError(f"objective.predict.loss={kind!r} is not valid; choose one of: l1, l2")
        self.source, self.target, self.kind = source, target, kind
        self.decoder = PredictiveDecoder(in_features=in_features, out_shape=out_shape)

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """batch: {source: (B, ...), target: (B, C, T, H, W), ...}. `generator` is unused."""
        features = model(batch, views=[self.source], embed=False)[self.source]  # (B, F)
        pred = self.decoder(features).float()  # (B, C, T, H, W)
        loss = predictive_loss(pred, batch[self.target].float(), self.kind)
        return loss, {f"loss/{self.source}->{self.target}": loss.item()}

    def update(self) -> None:
        """Nothing to update after the optimiser step."""


class SupervisedObjective(nn.Module):
    """Cross-entropy of a linear classifier on one view's encoder features against batch["label"]:
    the same encoder trained with the labels, the supervised upper bound of the comparison.

    loss(model, batch) -> (loss, {"loss/view->label": value, "train_top1": batch accuracy}).
    """

    uses_whole_model = False  # only this view's encoder, no projection head
    needs_fill = False

    def __init__(self, *, view: str, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.view = view
        self.classifier = nn.Linear(in_features, num_classes)

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """batch: {view: (B, ...), "label": (B,) class indices, ...}. `generator` is unused."""
        features = model(batch, views=[self.view], embed=False)[self.view]  # (B, F)
        logits = self.classifier(features).float()  # (B, classes)
        loss = F.cross_entropy(logits, batch["label"])
        top1 = (logits.detach().argmax(1) == batch["label"]).float().mean()
        value, acc = torch.stack([loss.detach(), top1]).tolist()  # one host sync
        return loss, {f"loss/{self.view}->label": value, "train_top1": acc}

    def update(self) -> None:
        """Nothing to update after the optimiser step."""


# --- the factory --------------------------------------------------------------------------------

OBJECTIVES = ("cmc", "predictive", "supervised")


def build_objective(
    o, views: list[str], model: nn.Module, *, n_data: int, sample_item: dict, num_classes: int
) -> nn.Module:
    """The objective that the `objective` config group `o` names, for `model` over `views`.

    model: a MultiViewModel (its encoders' feature sizes); n_data: rows of a memory bank;
    sample_item: one dataset item {view: (C, T, H, W), ...} (the shape a decoder predicts);
    num_classes: the supervised classifier's outputs. The supervised objective trains the view
    `objective.anchor`, so a config with that one view is enough.
    """
    views = list(views)
    if o.name == "cmc":
        keys = (
            "graph",
            "anchor",
            "negatives",
            "score",
            "dim",
            "K",
            "tau",
            "momentum",
            "z_momentum",
            "bank_init",
            "positives",
        )
        return CMCObjective(
            views=views, n_data=n_data, negative_grad=o.get("negative_grad", True), **{k: o[k] for k in keys}
        )
    if o.name == "predictive":
        p = o.predict or {}
        if p.get("source") not in views or p.get("target") not in views:
            raise UserError(
                f"objective.predict={dict(p)} must name a source and a target among the views {views}; "
                "set objective.predict='{source: rgb, target: flow, loss: l1}'"
            )
        return PredictiveObjective(
            source=p["source"],
            target=p["target"],
            kind=p.get("loss", "l1"),
            in_features=model.encoders[p["source"]].feat_dim,
            out_shape=tuple(sample_item[p["target"]].shape),
        )
    if o.name == "supervised":
        if o.anchor not in views:
            raise UserError(
                f"objective.anchor={o.anchor!r} is the view objective.name=supervised trains; "
                f"set it to one of the views {views}"
            )
        return SupervisedObjective(
            view=o.anchor, in_features=model.encoders[o.anchor].feat_dim, num_classes=num_classes
        )
    raise UserError(f"objective.name={o.name!r} is not valid; choose one of: {', '.join(OBJECTIVES)}")
