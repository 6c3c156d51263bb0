"""Transfer evaluation: the metric functions on hand-made tensors, multi-crop sampling, and end-to-end
linear / finetune / retrieval / fuse runs on a tiny list-file dataset with a checkpoint built here.

The end-to-end metrics are recomputed from the files the runs save (features.pt, classifier.pt,
probs.pt) with plain code, so a wrong aggregation or a report that disagrees with its data fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.errors import UserError
from mvcoding.eval import evaluate, fuse, report
from mvcoding.eval import features as eval_features
from mvcoding.eval.features import EvalClips, crop_boxes
from mvcoding.eval.linear import linear_probe
from mvcoding.eval.metrics import (
    confusion_matrix,
    recall_at_k,
    sha256_file,
    topk_accuracy,
    video_scores,
)
from mvcoding.model import MultiViewModel, build_views
from mvcoding.registry import Aug
from mvcoding.transforms import crop_box
from mvcoding.video import write_video

CLASSES = ["red", "green", "blue"]
TRAIN_PER_CLASS, TEST_PER_CLASS, FRAMES, HEIGHT, WIDTH = 4, 2, 12, 32, 56  # decord misreads 32x48 MJPG


# ----------------------------------------------------------------------------- metric functions
def test_topk_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    labels = torch.tensor([1, 1, 0, 2])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 4)  # only row 0
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 4)  # + row 1 (0.3 is 2nd)
    assert topk_accuracy(scores, labels, 3) == 1.0
    assert topk_accuracy(scores, labels, 10) == 1.0  # k capped at C


def test_video_scores_average_the_clips_of_each_video():
    clip = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    video = torch.tensor([0, 0, 1, 1, 1])
    expected = torch.tensor([[0.5, 0.5], [(0.2 + 0.6 + 0.9) / 3, (0.8 + 0.4 + 0.1) / 3]])
    assert torch.allclose(video_scores(clip, video), expected)
    # rows come out in sorted video order whatever the clip order
    perm = torch.tensor([4, 1, 3, 0, 2])
    assert torch.allclose(video_scores(clip[perm], video[perm]), expected)


def test_recall_at_k_by_hand():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    g_labels = torch.tensor([0, 1, 2, 1])
    query = torch.tensor([[2.0, 0.1], [0.1, -1.0]])
    q_labels = torch.tensor([1, 1])
    r = recall_at_k(query, gallery, q_labels, g_labels, [1, 2, 3, 10])
    # by cosine, query 0's neighbours are gallery 0, 3, 1, 2 (labels 0, 1, 1, 2): first hit at rank 2;
    # query 1's are 0, 2, 3, 1 (labels 0, 2, 1, 1): first hit at rank 3; k=10 > G counts the whole gallery
    assert r == {1: 0.0, 2: 0.5, 3: 1.0, 10: 1.0}


def test_recall_at_k_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g)
    q_labels, g_labels = torch.randint(0, 4, (20,), generator=g), torch.randint(0, 4, (30,), generator=g)
    ks = [1, 3, 5, 30, 50]
    r = recall_at_k(query, gallery, q_labels, g_labels, ks)
    for k in ks:
        hits = 0
        for i in range(len(query)):
            sims = [float(query[i] @ gallery[j] / (query[i].norm() * gallery[j].norm())) for j in range(len(gallery))]
            order = sorted(range(len(gallery)), key=lambda j: -sims[j])[:k]
            hits += any(int(g_labels[j]) == int(q_labels[i]) for j in order)
        assert r[k] == pytest.approx(hits / len(query)), k


def test_confusion_matrix_counts():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 1]]


def test_classification_report_on_constructed_logits(tmp_path):
    """report_classification on logits (6 clips x 2 crops x 3 classes) made so that the levels differ:
    clip probabilities are the mean of the crops' softmax (not of their logits, not the first crop's),
    video probabilities the mean of the clips'. By hand: clip top-1 3/6, video top-1 2/3."""
    crops = [  # per clip: the logits of its two crops; clips 2v, 2v+1 belong to video v of label v
        ([0.0, -100.0, 0.0], [0.0, 10.0, 0.0]),  # softmax mean -> 1 (wrong); logit mean and crop 0 -> 0
        ([5.0, 0.0, 0.0], [5.0, 0.0, 0.0]),  # -> 0 (right)
        ([0.0, 3.0, 0.0], [0.0, 3.0, 0.0]),  # -> 1 (right)
        ([2.0, 0.0, 0.0], [2.0, 0.0, 0.0]),  # -> 0 (wrong); video 1: 1 (right)
        ([4.0, 0.0, 0.0], [4.0, 0.0, 0.0]),  # -> 0 (wrong)
        ([0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),  # -> 2 (right); video 2: 0 (wrong)
    ]
    labels, video = [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    def mean(p, q):
        return [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    clip_probs = [mean(softmax(c0), softmax(c1)) for c0, c1 in crops]
    video_probs = [mean(clip_probs[2 * v], clip_probs[2 * v + 1]) for v in range(3)]
    clip_hits = sum(max(range(3), key=p.__getitem__) == y for p, y in zip(clip_probs, labels, strict=True))
    video_hits = sum(max(range(3), key=video_probs[v].__getitem__) == v for v in range(3))
    assert (clip_hits, video_hits) == (3, 2)

    index = SimpleNamespace(name="toy", split=2, classes=["a", "b", "c"], train=[],
                            test=[SimpleNamespace(video_id=f"v{v}") for v in range(3)])  # fmt: skip
    run = {"x": torch.tensor(crops), "label": torch.tensor(labels), "video": torch.tensor(video)}
    record = report.report_classification(tmp_path, "linear", run, index, checkpoint=None, sha256=None,
                                           protocol={"views": ["rgb"]}, files=[])  # fmt: skip
    assert record["metrics"] == pytest.approx({"video_top1": 2 / 3, "clip_top1": 0.5}, abs=1e-7)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"] == {"video_top1": 0.666667, "clip_top1": 0.5}
    assert results["split"] == 2 and results["num_test"] == 3 and results["num_classes"] == 3
    saved = torch.load(tmp_path / "probs.pt", weights_only=True)
    assert saved["labels"].tolist() == [0, 1, 2] and saved["video_ids"] == ["v0", "v1", "v2"]
    torch.testing.assert_close(saved["clip_probs"].double(), torch.tensor(clip_probs, dtype=torch.float64))
    torch.testing.assert_close(saved["probs"].double(), torch.tensor(video_probs, dtype=torch.float64))


@pytest.mark.parametrize("height, width", [(32, 48), (48, 32), (30, 30)])
def test_three_crops_are_squares_along_the_long_side(height, width):
    assert crop_boxes(1) == [None]
    assert crop_box(height, width, None) == crop_box(height, width, (0.5,))
    boxes = [crop_box(height, width, c) for c in crop_boxes(3)]
    s = min(height, width)
    assert all(h == s and w == s for _, _, h, w in boxes)
    starts = [x0 for _, x0, _, _ in boxes] if width >= height else [y0 for y0, _, _, _ in boxes]
    assert starts == [0, (max(height, width) - s) // 2, max(height, width) - s]
    with pytest.raises(UserError, match="eval.crops"):
        crop_boxes(2)


# ----------------------------------------------------------------------------- a tiny dataset and checkpoint
def _video(label: int, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3): a noisy background tinted by the class colour and a white square moving right."""
    colour = np.eye(3)[label] * 150 + 50
    frames = rng.normal(0, 25, (FRAMES, HEIGHT, WIDTH, 3)) + colour
    y, x = rng.integers(0, HEIGHT - 8), rng.integers(0, WIDTH - 20)
    for t in range(FRAMES):
        frames[t, y : y + 8, x + t : x + t + 8] = 255
    return frames.clip(0, 255).astype(np.uint8)


class Tiny:
    def __init__(self, base: Path):
        rng = np.random.default_rng(0)
        self.root = base / "data"
        lines = {"train": [], "test": []}
        for label, name in enumerate(CLASSES):
            for i in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
                rel = f"videos/{name}/v{i}.avi"
                write_video(self.root / rel, _video(label, rng))
                lines["train" if i < TRAIN_PER_CLASS else "test"].append(f"{rel} {label}")
        for split, rows in lines.items():
            (self.root / f"{split}.txt").write_text("\n".join(rows) + "\n")
        (self.root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        # Hydra composes the config's folder: a copy of configs/ plus our experiment file
        self.configs = base / "configs"
        shutil.copytree(CONFIG_DIR, self.configs)
        self.config = self.configs / "tiny_eval.yaml"
        self.config.write_text(
            "defaults: [base, {dataset: listfile}, {eval: default}, _self_]\n"
            "name: tiny\ndevice: cpu\n"
            f"dataset: {{root: {self.root}, train_list: train.txt, test_list: test.txt, classes: classes.txt}}\n"
            "data: {frames: 4, stride: 2, size: 32, workers: 0}\n"
            "views: {rgb: {encoder: small3d}, flow: {encoder: small3d}}\n"
            "eval: {views: [rgb], clips: 2, crops: 3, train_clips: 2, batch_size: 8,\n"
            "       linear: {epochs: 20, lr: 0.002, weight_decay: 0.01, batch_size: null},\n"
            "       finetune: {epochs: 1, lr: 0.05, batch_size: 4}, retrieval: {ks: [1, 2, 5]}}\n"
        )
        cfg = self.cfg()
        torch.manual_seed(123)
        model = MultiViewModel(build_views(cfg, ["rgb"]), 16)
        self.checkpoint = base / "pretrain" / "checkpoints" / "last.pt"
        self.checkpoint.parent.mkdir(parents=True)
        self.state = model.state_dict()
        config = OmegaConf.to_container(cfg, resolve=True)
        torch.save({"model": self.state, "config": config, "views": ["rgb"], "step": 0}, self.checkpoint)

    def cfg(self, **over):
        return load_config(self.config, [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tiny(tmp_path_factory.mktemp("transfer"))


@pytest.fixture(scope="module")
def linear_run(tiny):
    out = tiny.root.parent / "linear"
    assert evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": out})) == out
    return out


@pytest.fixture(scope="module")
def random_run(tiny):
    out = tiny.root.parent / "random"
    metrics = linear_probe(tiny.cfg(), None, out, random_init=True)
    assert metrics == json.loads((out / "results.json").read_text())["metrics"]
    return out


# ----------------------------------------------------------------------------- data and weights
def test_eval_clips_give_every_clip_in_three_crops(tiny):
    cfg = tiny.cfg()
    s = eval_features.prepare(cfg, tiny.checkpoint, random_init=False)
    data = EvalClips(s.index.test, s.views, s.lengths, frames=4, stride=2, clips=2, crops=3)
    assert len(data) == 2 * len(s.index.test)
    item = data[3]  # clip 1 of video 1
    assert item["video"] == 1 and item["clip"] == 1 and item["label"] == s.index.test[1].label
    x = item["rgb"]
    assert x.shape == (3, 3, 4, 32, 32)
    assert not torch.allclose(x[0], x[2])  # left and right crops differ
    view = s.views["rgb"]
    clip = data.base.clip(3, np.random.default_rng(0))
    assert clip.start == FRAMES - 7  # the last window of a 2-clip spread
    raw = view.decode(clip)
    left = view.transform(raw, Aug(train=False, crop=(0.0, 0.0, 1.0, HEIGHT / WIDTH)))
    assert torch.allclose(x[0], left)


def test_encoder_weights_come_from_the_checkpoint(tiny):
    cfg = tiny.cfg()
    views = build_views(cfg, ["rgb"])
    enc = eval_features.load_encoders(views, tiny.checkpoint)["rgb"]
    for k, v in enc.state_dict().items():
        assert torch.equal(v, tiny.state[f"encoders.rgb.{k}"]), k
    random = eval_features.load_encoders(views, None)["rgb"]
    assert not torch.equal(random.state_dict()["features.0.weight"], tiny.state["encoders.rgb.features.0.weight"])


def test_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(UserError, match="no checkpoint given"):
        evaluate("linear", tiny.cfg(**{"run.dir": tmp_path / "a"}))
    with pytest.raises(UserError, match="no checkpoint there"):
        evaluate("linear", tiny.cfg(checkpoint=tmp_path / "missing.pt", **{"run.dir": tmp_path / "b"}))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        evaluate("linear", tiny.cfg(checkpoint=tmp_path / "bad.pt", **{"run.dir": tmp_path / "c"}))
    with pytest.raises(UserError, match="does not fit views.rgb"):
        cfg = tiny.cfg(checkpoint=tiny.checkpoint, **{"views.rgb.encoder": "mc3_18", "run.dir": tmp_path / "d"})
        evaluate("retrieval", cfg)
    with pytest.raises(UserError, match="must name views of the config"):
        evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"eval.views": "[depth]"}))
    with pytest.raises(UserError, match="unknown eval task"):
        evaluate("knn", tiny.cfg())


# ----------------------------------------------------------------------------- end to end
def test_linear_results_agree_with_the_saved_features(tiny, linear_run):
    results = json.loads((linear_run / "results.json").read_text())
    assert {"task", "metrics", "level", "checkpoint", "checkpoint_sha256", "split", "dataset", "protocol",
            "num_train", "num_test"} <= set(results)  # fmt: skip
    assert results["task"] == "linear" and results["split"] == 1 and results["dataset"] == "listfile"
    assert results["entry"] == "rgb"
    assert results["entries"] == {"rgb": {"views": ["rgb"], "metrics": results["metrics"]}}
    assert results["checkpoint"] == str(tiny.checkpoint)
    assert results["checkpoint_sha256"] == sha256_file(tiny.checkpoint)
    assert results["level"]["video_top1"].startswith("video") and results["level"]["clip_top1"].startswith("clip")
    assert results["protocol"]["clips"] == 2 and results["protocol"]["crops"] == 3
    assert results["num_train"] == 12 and results["num_test"] == 6
    for f in ("config.yaml", "summary.md", "confusion.png", "metrics.jsonl"):
        assert (linear_run / f).stat().st_size > 0, f
    assert "video_top1" in (linear_run / "summary.md").read_text()

    feats = torch.load(linear_run / "features.pt", weights_only=True)
    assert feats["train"]["x"].shape == (12 * 2, 3, 256) and feats["test"]["x"].shape == (6 * 2, 3, 256)
    clf = torch.load(linear_run / "classifier.pt", weights_only=True)
    saved = torch.load(linear_run / "probs.pt", weights_only=True)
    # clip probabilities: the classifier on standardised features, softmax, mean over the 3 crops
    z = (feats["test"]["x"] - clf["mean"]) / clf["std"]
    clip_probs = (z @ clf["weight"].T + clf["bias"]).softmax(-1).mean(1)
    assert clip_probs.max() < 0.999  # not saturated, so that the mean over crops matters
    assert torch.allclose(clip_probs, saved["clip_probs"], rtol=1e-4, atol=1e-9)
    # video probabilities: the mean of each video's 2 clips, by hand
    video_probs = torch.stack([clip_probs[2 * v : 2 * v + 2].mean(0) for v in range(6)])
    assert torch.allclose(video_probs, saved["probs"], rtol=1e-4, atol=1e-9)
    labels = torch.tensor([CLASSES.index(Path(i).parent.name) for i in saved["video_ids"]])
    assert torch.equal(saved["labels"], labels)
    video_top1 = sum(int(video_probs[v].argmax() == labels[v]) for v in range(6)) / 6
    clip_top1 = sum(int(clip_probs[i].argmax() == labels[i // 2]) for i in range(12)) / 12
    assert results["metrics"]["video_top1"] == round(video_top1, 6)  # results.json keeps 6 digits
    assert results["metrics"]["clip_top1"] == round(clip_top1, 6)
    # the features are the checkpoint's encoder on the eval clips (a random encoder's are not): by hand
    encoder = build_views(tiny.cfg(), ["rgb"])["rgb"].build_encoder()
    encoder.load_state_dict({k.removeprefix("encoders.rgb."): v for k, v in tiny.state.items()
                             if k.startswith("encoders.rgb.")})  # fmt: skip
    s = eval_features.prepare(tiny.cfg(), tiny.checkpoint, random_init=False)
    clips = EvalClips(s.index.test, s.views, s.lengths, frames=4, stride=2, clips=2, crops=3)
    with torch.no_grad():
        for i in (0, 5, 11):
            x = s.views["rgb"].device_transform(clips[i]["rgb"])  # (crops, 3, T, H, W) uint8 -> the encoder's input
            torch.testing.assert_close(feats["test"]["x"][i], encoder.eval()(x), rtol=1e-4, atol=1e-5)


def test_results_json_holds_fractional_accuracies_to_6_digits(tiny, linear_run, tmp_path):
    """One test video listed under another class: the probe (which gets every video right, see linear_run)
    now scores 5/6 at video level and 10/12 at clip level, which results.json keeps as 0.833333."""
    assert json.loads((linear_run / "results.json").read_text())["metrics"] == {"video_top1": 1.0, "clip_top1": 1.0}
    lines = (tiny.root / "test.txt").read_text().splitlines()
    path, label = lines[0].split()
    (tiny.root / "test_mislabelled.txt").write_text("\n".join([f"{path} {(int(label) + 1) % 3}", *lines[1:]]) + "\n")
    out = tmp_path / "mislabelled"
    over = {"run.dir": out, "dataset.test_list": "test_mislabelled.txt"}
    evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **over))
    assert json.loads((out / "results.json").read_text())["metrics"] == {"video_top1": 0.833333, "clip_top1": 0.833333}


def test_features_are_reused_for_the_same_run_dir(tiny, linear_run, monkeypatch):
    before = json.loads((linear_run / "results.json").read_text())["metrics"]

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(eval_features, "run_clips", no_extraction)
    evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": linear_run}))
    assert json.loads((linear_run / "results.json").read_text())["metrics"] == before
    with pytest.raises(AssertionError, match="extracted again"):  # other clip sampling -> new features
        evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": linear_run, "eval.clips": 3}))


def count_extractions(monkeypatch) -> list:
    """Patch run_clips to record each call (one per split extracted) and run as before."""
    calls, run = [], eval_features.run_clips

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return run(*args, **kwargs)

    monkeypatch.setattr(eval_features, "run_clips", counting)
    return calls


def test_a_rerun_after_the_labels_of_the_test_list_changed_extracts_again(tiny, linear_run, tmp_path, monkeypatch):
    """The same run.dir, the same list file with one label changed in place: the features are extracted
    again and the accuracy is the new labels' (the probe gets every video right: 5/6 with one video
    listed under another class), not 100% from the old features' labels. fuse refuses the two lists."""
    lists = tiny.root / "test_edited.txt"
    shutil.copyfile(tiny.root / "test.txt", lists)
    out = tmp_path / "run"
    over = {"checkpoint": tiny.checkpoint, "run.dir": out, "dataset.test_list": lists.name, "eval.crops": 1}
    calls = count_extractions(monkeypatch)
    evaluate("linear", tiny.cfg(**over))
    assert json.loads((out / "results.json").read_text())["metrics"] == {"video_top1": 1.0, "clip_top1": 1.0}
    assert calls == ["features train", "features test"]
    path, label = lists.read_text().splitlines()[0].split()
    lists.write_text("\n".join([f"{path} {(int(label) + 1) % 3}", *lists.read_text().splitlines()[1:]]) + "\n")
    evaluate("linear", tiny.cfg(**over))
    assert calls == ["features train", "features test"] * 2
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] == {"video_top1": 0.833333, "clip_top1": 0.833333}
    assert torch.load(out / "features.pt", weights_only=True)["test"]["label"][:2].tolist() == [1, 1]  # the new label
    with pytest.raises(UserError, match=r"cannot fuse: .* dataset \(videos, labels, list files\)"):
        fuse(linear_run, out, out=tmp_path / "fused")
    assert not (tmp_path / "fused").exists()


def test_a_rerun_on_another_root_with_the_same_names_extracts_again_and_fuse_refuses(tiny, linear_run, tmp_path,
                                                                                      monkeypatch, capsys):  # fmt: skip
    """dataset.root pointed at another dataset with the same files, ids and labels (other pictures) in a
    run.dir that holds the first root's features: they are extracted again from the new videos, and
    `mvcoding eval fuse` of the two results is one line and exit 2."""
    from mvcoding.cli import main

    other = tmp_path / "other"
    shutil.copytree(tiny.root, other, ignore=shutil.ignore_patterns("cache"))
    rng = np.random.default_rng(1)
    for label, name in enumerate(CLASSES):
        for i in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            write_video(other / f"videos/{name}/v{i}.avi", _video(label, rng))
    out = tmp_path / "run"
    shutil.copytree(linear_run, out)  # the first root's features.pt
    calls = count_extractions(monkeypatch)
    evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": out, "dataset.root": other}))
    assert calls == ["features train", "features test"]
    feats = torch.load(out / "features.pt", weights_only=True)
    assert feats["key"]["dataset"]["root"] == str(other.resolve())
    first = torch.load(linear_run / "features.pt", weights_only=True)
    assert feats["test"]["x"].shape == first["test"]["x"].shape and not torch.allclose(feats["test"]["x"],
                                                                                      first["test"]["x"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["dataset_root"] == str(other.resolve())
    assert json.loads((linear_run / "results.json").read_text())["dataset_root"] == str(tiny.root.resolve())

    capsys.readouterr()
    assert main(["eval", "fuse", str(linear_run), str(out), f"--out={tmp_path / 'fused'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot fuse: ") and "\n" not in err and "dataset root" in err, err
    assert str(other.resolve()) in err and not (tmp_path / "fused").exists()


def test_the_dataset_identity_follows_the_root_the_labels_and_the_videos(tiny, tmp_path):
    """dataset_identity (the features' key and results.json's dataset_root / dataset_sha256): the same for
    the same data, another root with the same names, a list file with one label changed and a video
    rewritten in place each change it; a copy of a list file under another name does not."""
    from mvcoding.datasets import load_dataset

    root = tmp_path / "data"
    shutil.copytree(tiny.root, root, ignore=shutil.ignore_patterns("cache"))

    def identity(**over):
        cfg = tiny.cfg(**{"dataset.root": root, **over})
        return eval_features.dataset_identity(load_dataset(cfg.dataset))

    base = identity()
    assert base == identity() and base["root"] == str(root.resolve())
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    elsewhere = eval_features.dataset_identity(load_dataset(tiny.cfg(**{"dataset.root": moved}).dataset))
    assert elsewhere["root"] != base["root"] and elsewhere["dataset_sha256"] != base["dataset_sha256"]
    shutil.copyfile(root / "test.txt", root / "copy.txt")
    assert identity(**{"dataset.test_list": "copy.txt"})["dataset_sha256"] == base["dataset_sha256"]
    lines = (root / "test.txt").read_text().splitlines()
    path, label = lines[-1].split()
    (root / "test.txt").write_text("\n".join([*lines[:-1], f"{path} {(int(label) + 1) % 3}"]) + "\n")
    relabelled = identity()
    assert relabelled["dataset_sha256"] != base["dataset_sha256"] and relabelled["files_sha256"] == base["files_sha256"]
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    assert identity() == base
    write_video(root / path, _video(0, np.random.default_rng(5)))  # same name, other content
    changed = identity()
    assert changed["dataset_sha256"] == base["dataset_sha256"] and changed["files_sha256"] != base["files_sha256"]


def test_random_init_is_a_different_encoder(random_run, linear_run):
    results = json.loads((random_run / "results.json").read_text())
    assert results["checkpoint"] is None and results["protocol"]["random_init"] is True
    a = torch.load(random_run / "features.pt", weights_only=True)["test"]["x"]
    b = torch.load(linear_run / "features.pt", weights_only=True)["test"]["x"]
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_linear_probe_fits_on_train_features_only(tiny, linear_run, tmp_path, monkeypatch):
    """The probe's standardisation and weights come from the train features alone: the same train
    features with other test features (scaled, shifted, noisy) give the same classifier, and its mean
    and std are the train features' statistics, by hand."""
    out = tmp_path / "other_test"
    out.mkdir()
    feats = torch.load(linear_run / "features.pt", weights_only=True)
    noise = torch.randn(feats["test"]["x"].shape, generator=torch.Generator().manual_seed(0))
    feats["test"]["x"] = feats["test"]["x"] * 30 + 5 + 10 * noise
    torch.save(feats, out / "features.pt")  # the same cache key: reused as it is

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(eval_features, "run_clips", no_extraction)
    evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": out}))
    ours = torch.load(out / "classifier.pt", weights_only=True)
    ref = torch.load(linear_run / "classifier.pt", weights_only=True)
    for key in ("weight", "bias", "mean", "std"):
        assert torch.equal(ours[key], ref[key]), key
    x = feats["train"]["x"].flatten(0, 1).double()  # every train clip and crop: (N * K, D)
    mean = x.sum(0) / len(x)
    std = ((x - mean) ** 2).sum(0).div(len(x)).sqrt().clamp_min(1e-6)  # population std
    torch.testing.assert_close(ours["mean"].double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["std"].double(), std, rtol=1e-4, atol=1e-6)
    # and the test scores are those of the new test features
    probs = torch.load(out / "probs.pt", weights_only=True)["clip_probs"]
    z = (feats["test"]["x"] - ours["mean"]) / ours["std"]
    torch.testing.assert_close(probs, (z @ ours["weight"].T + ours["bias"]).softmax(-1).mean(1), rtol=1e-4, atol=1e-6)


def test_eval_with_loader_workers_gives_the_same_features(tiny, linear_run, tmp_path, monkeypatch):
    """data.workers=2: the clips are decoded in worker processes, in order; features and metrics as with none."""
    loaders, make = [], eval_features.make_loader

    def recording(*args, **kwargs):
        loaders.append(make(*args, **kwargs))
        return loaders[-1]

    monkeypatch.setattr(eval_features, "make_loader", recording)
    out = tmp_path / "workers"
    evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": out, "data.workers": 2}))
    assert [loader.num_workers for loader in loaders] == [2, 2]  # train and test features
    ours = torch.load(out / "features.pt", weights_only=True)
    ref = torch.load(linear_run / "features.pt", weights_only=True)
    for split in ("train", "test"):
        for key in ("x", "label", "video"):
            assert torch.equal(ours[split][key], ref[split][key]), (split, key)
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics == json.loads((linear_run / "results.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def two_view(tiny):
    return two_view_checkpoint(tiny)


def two_view_checkpoint(tiny: Tiny) -> tuple[Path, dict]:
    """The tiny dataset's flow cache filled and a checkpoint with an rgb and a flow encoder (path, weights)."""
    from mvcoding.precompute import main as precompute

    assert precompute(["flow", str(tiny.config), "precompute.workers=1"]) == 0
    cfg = tiny.cfg()
    torch.manual_seed(7)
    model = MultiViewModel(build_views(cfg, ["rgb", "flow"]), 16)
    path = tiny.root.parent / "pretrain2" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                "views": ["rgb", "flow"], "step": 0}, path)  # fmt: skip
    return path, model.state_dict()


def test_flow_view_and_rgb_flow_fusion_in_eval(tiny, two_view, tmp_path):
    """Linear probes on the flow encoder, the rgb encoder and both (features concatenated, rgb first),
    then `mvcoding eval fuse` of the rgb and flow probes: the mean of their video probabilities."""
    from mvcoding.cli import main

    checkpoint, state = two_view
    runs = {}
    for name, views in (("flow", "[flow]"), ("rgb", "[rgb]"), ("both", "[rgb+flow]")):
        runs[name] = tmp_path / name
        over = {"checkpoint": checkpoint, "run.dir": runs[name], "eval.views": views, "eval.crops": 1}
        evaluate("linear", tiny.cfg(**over))
    feats = {n: torch.load(r / "features.pt", weights_only=True) for n, r in runs.items()}
    assert feats["flow"]["test"]["x"].shape == (12, 1, 256)
    for split in ("train", "test"):
        both = torch.cat([feats["rgb"][split]["x"], feats["flow"][split]["x"]], dim=-1)
        assert torch.equal(feats["both"][split]["x"], both), split
    # the flow features are the checkpoint's flow encoder on the cached flow of each clip, by hand
    s = eval_features.prepare(tiny.cfg(**{"eval.views": "[flow]"}), checkpoint, random_init=False)
    clips = EvalClips(s.index.test, s.views, s.lengths, frames=4, stride=2, clips=2, crops=1)
    encoder = s.views["flow"].build_encoder()
    encoder.load_state_dict({k.removeprefix("encoders.flow."): v for k, v in state.items()
                             if k.startswith("encoders.flow.")})  # fmt: skip
    with torch.no_grad():
        for i in (0, 7):
            x = s.views["flow"].device_transform(clips[i]["flow"])  # the workers' codes -> the encoder's input
            assert x.shape == (1, 2, 4, 32, 32) and x.abs().max() > 0  # the square moves: non-zero flow
            torch.testing.assert_close(feats["flow"]["test"]["x"][i], encoder.eval()(x), rtol=1e-4, atol=1e-5)
    for name in ("flow", "both"):
        assert json.loads((runs[name] / "results.json").read_text())["protocol"]["views"] == (
            ["flow"] if name == "flow" else ["rgb", "flow"]
        )

    fused = tmp_path / "fused"
    a, b = runs["rgb"] / "results.json", runs["flow"] / "results.json"
    assert main(["eval", "fuse", str(a), str(b), f"--out={fused}"]) == 0
    pa, pb = (torch.load(r / "probs.pt", weights_only=True) for r in (runs["rgb"], runs["flow"]))
    probs = (pa["probs"] + pb["probs"]) / 2
    top1 = sum(int(probs[v].argmax() == pa["labels"][v]) for v in range(6)) / 6
    results = json.loads((fused / "results.json").read_text())
    assert results["metrics"]["video_top1"] == round(top1, 6) and results["checkpoint"] == str(checkpoint)
    assert results["protocol"]["streams"] == ["rgb (linear)", "flow (linear)"]
    torch.testing.assert_close(torch.load(fused / "probs.pt", weights_only=True)["probs"], probs)


def test_retrieval_recall_agrees_with_a_plain_loop(tiny, tmp_path):
    out = tmp_path / "retrieval"
    evaluate("retrieval", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": out}))
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "retrieval" and results["level"]["recall@1"].startswith("video")
    assert (out / "retrieval.png").stat().st_size > 5000 and (out / "summary.md").is_file()
    feats = torch.load(out / "features.pt", weights_only=True)
    q = feats["test"]["x"].mean(1).view(6, 2, -1).mean(1)  # crops, then the 2 clips of each video
    g = feats["train"]["x"].mean(1).view(12, 2, -1).mean(1)
    ql, gl = torch.arange(3).repeat_interleave(2), torch.arange(3).repeat_interleave(4)
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    for k in (1, 2, 5):
        hits = sum(any(gl[j] == ql[i] for j in sim[i].argsort(descending=True)[:k]) for i in range(6))
        assert results["metrics"][f"recall@{k}"] == pytest.approx(hits / 6, abs=1e-6), k
    assert results["metrics"]["video_top1"] == results["metrics"]["recall@1"]


@pytest.mark.parametrize("mult", [0.0, 1.0])
def test_finetune_trains_the_backbone_at_its_own_rate(tiny, tmp_path, mult):
    out = tmp_path / f"finetune{mult}"
    over = {"run.dir": out, "eval.finetune.backbone_lr_mult": mult, "eval.crops": 1}
    evaluate("finetune", tiny.cfg(checkpoint=tiny.checkpoint, **over))
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "finetune" and results["protocol"]["views"] == ["rgb"]
    saved = torch.load(out / "probs.pt", weights_only=True)
    assert saved["clip_probs"].shape == (12, 3) and torch.allclose(saved["clip_probs"].sum(1), torch.ones(12))
    video_probs = saved["clip_probs"].view(6, 2, 3).mean(1)
    assert torch.allclose(video_probs, saved["probs"], atol=1e-6)
    hits = sum(int(video_probs[v].argmax() == saved["labels"][v]) for v in range(6))
    assert results["metrics"]["video_top1"] == round(hits / 6, 6)
    tuned = torch.load(out / "finetuned.pt", weights_only=True)
    before, after = tiny.state["encoders.rgb.features.0.weight"], tuned["encoder"]["features.0.weight"]
    assert torch.equal(before, after) == (mult == 0.0)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # one line per epoch


def test_fuse_averages_the_two_streams(tiny, linear_run, random_run, tmp_path):
    out = fuse(linear_run / "results.json", random_run, out=tmp_path / "fused")
    results = json.loads((out / "results.json").read_text())
    a = torch.load(linear_run / "probs.pt", weights_only=True)
    b = torch.load(random_run / "probs.pt", weights_only=True)
    fused = (a["probs"] + b["probs"]) / 2
    top1 = sum(int(fused[v].argmax() == a["labels"][v]) for v in range(len(fused))) / len(fused)
    assert results["task"] == "fuse" and results["metrics"]["video_top1"] == pytest.approx(top1, abs=1e-6)
    assert results["split"] == 1 and results["checkpoint"] == [str(tiny.checkpoint), None]
    assert "clip_top1" in results["metrics"]  # same clips in both streams
    assert (out / "confusion.png").is_file() and (out / "summary.md").is_file()
    assert torch.allclose(torch.load(out / "probs.pt", weights_only=True)["probs"], fused)

    other = tmp_path / "other"
    shutil.copytree(random_run, other)
    saved = torch.load(other / "probs.pt", weights_only=True)
    torch.save(saved | {"video_ids": saved["video_ids"][::-1]}, other / "probs.pt")
    with pytest.raises(UserError, match="different test videos"):
        fuse(linear_run / "results.json", other / "results.json", out=tmp_path / "x")
    torch.save(saved | {"split": 2}, other / "probs.pt")
    with pytest.raises(UserError, match="split"):
        fuse(linear_run, other, out=tmp_path / "x")
    with pytest.raises(UserError, match="no results.json"):
        fuse(linear_run, tmp_path / "nowhere", out=tmp_path / "x")


def test_cli_eval_runs_and_reports_user_errors(tiny, tmp_path, capsys):
    from mvcoding.cli import main

    out = tmp_path / "cli"
    args = [f"checkpoint={tiny.checkpoint}", f"run.dir={out}", "eval.crops=1", "eval.linear.epochs=5"]
    assert main(["eval", "linear", str(tiny.config), *args]) == 0
    assert json.loads((out / "results.json").read_text())["task"] == "linear"
    assert main(["eval", "linear", str(tiny.config), f"checkpoint={tmp_path / 'none.pt'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checkpoint=") and "Traceback" not in "\n".join(err)


# ----------------------------------------------------------------------------- files from others run no code
class Payload:
    """Unpickling this runs `touch marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_or_probs_file_with_a_payload_is_refused_without_running_it(tiny, linear_run, tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": tiny.state, "views": ["rgb"], "extra": Payload(marker)}, hostile)
    with pytest.raises(UserError, match="refusing to load .*hostile.pt"):
        evaluate("linear", tiny.cfg(checkpoint=hostile, **{"run.dir": tmp_path / "a"}))
    folder = tmp_path / "result"
    shutil.copytree(linear_run, folder)
    torch.save({"probs": torch.zeros(1), "extra": Payload(marker)}, folder / "probs.pt")
    with pytest.raises(UserError, match="refusing to load .*probs.pt"):
        fuse(folder / "results.json", linear_run, out=tmp_path / "fused")
    features = tmp_path / "b" / "features.pt"  # a features cache found in an eval run dir
    features.parent.mkdir()
    torch.save({"key": None, "extra": Payload(marker)}, features)
    with pytest.raises(UserError, match="refusing to load .*features.pt"):
        evaluate("linear", tiny.cfg(checkpoint=tiny.checkpoint, **{"run.dir": tmp_path / "b"}))
    assert not marker.exists()
