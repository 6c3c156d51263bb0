"""The kNN monitor: knn_predict against a brute-force reference, and the monitor on the tiny dataset."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.errors import UserError
from mvcoding.model import build_views
from mvcoding.monitor import knn_predict, make_monitor
from mvcoding.registry import model_input
from mvcoding.train import train


def videos(root, split: str) -> int:
    """The number of videos in the synthetic dataset's split-1 list `split` ("train" or "test")."""
    lines = (root / "ucfTrainTestlist" / f"{split}list01.txt").read_text().splitlines()
    return sum(1 for line in lines if line.strip())


def brute_force_knn(gallery, labels, queries, num_classes, k, temperature):
    """One query at a time in plain Python: cosine similarities, a stable sort (ties in gallery
    order), the first min(k, N), sum exp(sim / T) per class, the first class with the largest sum."""
    preds = []
    for q in queries.tolist():
        qn = math.sqrt(sum(a * a for a in q))
        sims = []
        for g in gallery.tolist():
            gn = math.sqrt(sum(a * a for a in g))
            sims.append(sum(a * b for a, b in zip(q, g, strict=True)) / (qn * gn))
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * num_classes
        for j in order:
            votes[int(labels[j])] += math.exp(sims[j] / temperature)
        best = 0
        for c in range(num_classes):
            if votes[c] > votes[best]:
                best = c
        preds.append(best)
    return torch.tensor(preds)


@pytest.mark.parametrize(("n", "m", "k", "chunk"), [(50, 30, 20, 1024), (50, 30, 1, 7), (12, 9, 20, 4), (5, 3, 5, 2)])
def test_knn_predict_matches_a_brute_force_reference(n, m, k, chunk):
    g = torch.Generator().manual_seed(n * 100 + k)
    gallery = torch.randn(n, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (n,), generator=g)
    queries = torch.randn(m, 8, generator=g, dtype=torch.float64)
    for temperature in (0.07, 1.0):
        got = knn_predict(gallery, labels, queries, 4, k=k, temperature=temperature, chunk=chunk)
        assert got.shape == (m,) and got.dtype == torch.long
        assert got.tolist() == brute_force_knn(gallery, labels, queries, 4, k, temperature).tolist()


def test_knn_predict_ties_follow_gallery_order():
    """Duplicated gallery rows tie exactly in similarity (one-hot rows: every product is exact); the
    k-th neighbour is cut among them in gallery order, and equal votes go to the lower class."""
    g = torch.Generator().manual_seed(0)
    basis = torch.eye(4, dtype=torch.float64)
    which = torch.randint(0, 4, (40,), generator=g)
    gallery = basis[which]  # (40, 4): 4 distinct rows, each repeated about 10 times
    labels = torch.randint(0, 3, (40,), generator=g)
    queries = torch.randn(25, 4, generator=g, dtype=torch.float64)
    queries = torch.cat([queries, basis * 2])  # queries equal to a basis row: its copies all tie at sim 1
    for k in (1, 3, 10, 15, 40, 100):
        for t in (0.07, 10.0):
            got = knn_predict(gallery, labels, queries, 3, k=k, temperature=t)
            assert got.tolist() == brute_force_knn(gallery, labels, queries, 3, k, t).tolist(), (k, t)
    # one neighbour, four exact ties: the first in gallery order decides
    first = [int(labels[(which == i).nonzero()[0]]) for i in range(4)]
    assert knn_predict(gallery, labels, basis, 3, k=1).tolist() == first


def test_knn_predict_on_clusters_weights_by_similarity():
    """Five tight clusters of 4 gallery points, one class each; k=20 takes the whole gallery, where an
    unweighted vote would be a 5-way tie: only the exp(sim / T) weights pick the query's own cluster."""
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(5) * 10
    gallery = centres.repeat_interleave(4, 0) + 0.3 * torch.randn(20, 5, generator=g)
    labels = torch.arange(5).repeat_interleave(4)
    queries = centres.repeat(3, 1) + 0.3 * torch.randn(15, 5, generator=g)
    truth = torch.arange(5).repeat(3)
    assert knn_predict(gallery, labels, queries, 5, k=20).tolist() == truth.tolist()
    assert knn_predict(gallery, labels, queries, 5, k=1).tolist() == truth.tolist()


def test_knn_predict_empty_queries():
    assert knn_predict(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(0, 3), 2).shape == (0,)


class MeanFlow(torch.nn.Module):
    """A label-informative flow "encoder": the clip's mean displacement (x, y), which on the synthetic set
    is the class (the direction the object moves)."""

    feat_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3, 4))  # (B, 2, T, H, W) -> (B, 2)


def test_monitor_scores_every_view_and_restores_train_mode(synthetic_root):
    """The scores are the brute-force kNN of each view's own features, by hand: a random rgb encoder near
    chance (1/8), the mean flow far above it (7/8 here)."""
    cfg = load_config(SYNTHETIC, tiny(synthetic_root))
    views = build_views(cfg)
    monitor = make_monitor(cfg, views)
    torch.manual_seed(0)
    encoders = {"rgb": views["rgb"].build_encoder().train(), "flow": MeanFlow()}
    encoders["flow"].eval()  # a module left in eval mode stays there
    result = monitor(encoders, torch.device("cpu"))
    assert set(result) == {"knn/rgb", "knn/flow"}
    assert result["knn/flow"] >= 0.5, result  # chance is 1/8
    assert encoders["rgb"].training and not encoders["flow"].training
    assert monitor(encoders, torch.device("cpu")) == result  # centre clips: the same score twice

    # by hand: each frozen encoder on the centre clip of every video, the brute-force kNN of the test videos
    from mvcoding.data import video_lengths
    from mvcoding.datasets import load_dataset
    from mvcoding.eval.features import EvalClips

    index = load_dataset(cfg.dataset)
    assert (len(index.train), len(index.test)) == (videos(synthetic_root, "train"), videos(synthetic_root, "test"))
    lengths = video_lengths(index.train + index.test, cfg)
    for name, encoder in encoders.items():
        encoder.eval()
        with torch.no_grad():
            feats = {
                split: torch.cat([encoder(model_input(views[name], clip[name])) for clip in EvalClips(
                    records, {name: views[name]}, lengths, frames=4, stride=1, clips=1, crops=1)])
                for split, records in (("train", index.train), ("test", index.test))
            }  # fmt: skip
        train_labels = torch.tensor([r.label for r in index.train])
        pred = brute_force_knn(feats["train"], train_labels, feats["test"], len(index.classes), 20, 0.07)
        hits = sum(int(p == r.label) for p, r in zip(pred.tolist(), index.test, strict=True))
        assert result[f"knn/{name}"] == pytest.approx(hits / len(index.test), abs=1e-12), name


def test_monitor_is_off_without_test_videos(synthetic_root, tmp_path, caplog):
    videos = sorted((synthetic_root / "UCF-101").glob("*/*.avi"))[:6]
    (tmp_path / "train.txt").write_text("".join(f"{p} {i % 2}\n" for i, p in enumerate(videos)))
    (tmp_path / "test.txt").write_text("")
    over = [o for o in tiny(synthetic_root) if not o.startswith("dataset.")]
    cfg = load_config(SYNTHETIC, [*over, "dataset=listfile", f"dataset.root={tmp_path}"])
    with caplog.at_level(logging.INFO, logger="mvcoding.monitor"):
        assert make_monitor(cfg, build_views(cfg)) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "mvcoding.monitor"]
    assert len(lines) == 1 and "kNN monitor off" in lines[0] and "0 test videos" in lines[0]


def png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's IHDR width


def knn_records(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("knn/") for k in r)]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        # every epoch, and where train.max_steps stops inside the second epoch: (step, epoch) of each record
        ({"train.monitor_every": 1, "train.epochs": 2, "train.max_steps": 3}, [(2, 1), (3, 1)]),
        # every second epoch, and the end of the last (third) epoch
        ({"train.monitor_every": 2, "train.epochs": 3}, [(4, 2), (6, 3)]),
    ],
)
def test_trainer_logs_knn_every_n_epochs_and_at_the_end(synthetic_root, tmp_path, over, expected):
    assert videos(synthetic_root, "train") // 8 == 2  # the expected steps assume 2 steps per epoch of batch 8
    run = tmp_path / "knn"
    over = {**over, "train.batch_size": 8, "run.dir": run}
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))
    records = knn_records(run)
    assert [(r["step"], r["epoch"]) for r in records] == expected
    for r in records:
        assert set(r) == {"step", "epoch", "knn/rgb", "knn/flow"}
    # the last record scores the encoders the run ended with (its last checkpoint)
    from mvcoding.model import MultiViewModel

    cfg = load_config(run / "config.yaml")
    views = build_views(cfg)
    model = MultiViewModel(views, cfg.objective.dim)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == records[-1]["step"]
    model.load_state_dict(ckpt["model"])
    expected = make_monitor(cfg, views)(dict(model.encoders), torch.device("cpu"))
    assert {k: records[-1][k] for k in expected} == expected
    assert png_width(run / "training.png") == 1500  # three panels of 5 inches at 100 dpi: loss, MI, kNN


def test_trainer_without_monitor_logs_no_knn(synthetic_root, tmp_path):
    run = tmp_path / "off"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.epochs": 1})))
    assert (run / "metrics.jsonl").read_text().strip() and knn_records(run) == []
    assert png_width(run / "training.png") == 1000  # no kNN panel


def test_bad_monitor_every_names_the_key(synthetic_root, tmp_path):
    over = {"run.dir": tmp_path / "bad", "train.monitor_every": -1}
    with pytest.raises(UserError, match="train.monitor_every=-1"):
        train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))
