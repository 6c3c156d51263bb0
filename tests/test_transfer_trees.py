"""Every eval command end to end on fake trees in the official UCF101 and HMDB51 layouts, with a
checkpoint from a short synthetic pretraining."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SYNTHETIC, tiny
from fake_trees import HMDB51_CLASSES, UCF101_CLASSES, make_hmdb51_tree, make_ucf101_tree
from mvcoding.cli import main
from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.train import train


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain")
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 2})))
    return run / "checkpoints" / "last.pt"


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
def test_eval_commands_on_official_layouts(dataset, checkpoint, tmp_path):
    root = tmp_path / dataset
    if dataset == "ucf101":
        make_ucf101_tree(root, groups=4, clips=2, frames=8, size=32)
    else:
        make_hmdb51_tree(root, videos=6, frames=8, size=32)
    config = str(CONFIG_DIR / f"{dataset}_rgb_flow.yaml")
    common = [
        f"dataset.root={root}", f"checkpoint={checkpoint}", "eval.views=[rgb]", "views.rgb.encoder=small3d_gn",
        "views.rgb.width=16", "views.rgb.resolution=null", "data.frames=4", "data.size=32", "data.workers=0",
        "eval.clips=2", "eval.crops=1", "eval.finetune.epochs=1",
        "eval.finetune.batch_size=4", "eval.retrieval.ks=[1,2,5]",
    ]  # fmt: skip
    results = {}
    for task in ("linear", "finetune", "retrieval"):
        out = tmp_path / f"{dataset}-{task}"
        probe = ["eval.train_clips=3", "eval.linear.epochs=30"] if task == "linear" else []
        assert main(["eval", task, config, *common, *probe, f"run.dir={out}"]) == 0
        results[task] = json.loads((out / "results.json").read_text())
        r = results[task]
        assert r["task"] == task and r["split"] == 1 and r["checkpoint"] == str(checkpoint)
    assert (tmp_path / f"{dataset}-linear" / "confusion.png").is_file()
    assert (tmp_path / f"{dataset}-retrieval" / "retrieval.png").is_file()

    # the labels are the official class order of each video's folder (UCF101's classInd: Hammering before
    # HammerThrow), and the accuracies are those of the saved probabilities, by a plain loop
    classes = list(UCF101_CLASSES if dataset == "ucf101" else HMDB51_CLASSES)
    for task in ("linear", "finetune"):
        saved = torch.load(tmp_path / f"{dataset}-{task}" / "probs.pt", weights_only=True)
        assert saved["classes"] == classes
        assert saved["labels"].tolist() == [classes.index(v.split("/")[-2]) for v in saved["video_ids"]]
        n_videos, clips = len(saved["labels"]), saved["clip_video"].tolist()
        video_hits = sum(int(saved["probs"][v].argmax() == saved["labels"][v]) for v in range(n_videos))
        clip_hits = sum(int(p.argmax() == saved["labels"][v]) for p, v in zip(saved["clip_probs"], clips, strict=True))
        assert results[task]["metrics"]["video_top1"] == round(video_hits / n_videos, 6), task
        assert results[task]["metrics"]["clip_top1"] == round(clip_hits / len(clips), 6), task
    # the classes differ by colour, which the frozen features carry: the probe and the nearest neighbours
    # find the class far above chance (1/4 for ucf101, 1/3 for hmdb51); a run that mixes up labels,
    # videos or features does not (here: ucf101 100% and 87.5%, hmdb51 83.3% and 83.3%)
    chance = 1 / len(classes)
    assert results["linear"]["metrics"]["video_top1"] >= chance + 0.3, results["linear"]["metrics"]
    assert results["retrieval"]["metrics"]["recall@1"] >= chance + 0.3, results["retrieval"]["metrics"]

    # video-level recall@k recomputed from the saved features with a plain loop over the similarities
    feats = torch.load(tmp_path / f"{dataset}-retrieval" / "features.pt", weights_only=True)

    def per_video(part):  # mean over crops, then over each video's clips: (V, D), in video order
        x, video = part["x"].mean(1), part["video"]
        return torch.stack([x[video == v].mean(0) for v in range(int(video.max()) + 1)])

    def labels(part):
        return [int(part["label"][part["video"] == v][0]) for v in range(int(part["video"].max()) + 1)]

    q, g = per_video(feats["test"]), per_video(feats["train"])
    ql, gl = labels(feats["test"]), labels(feats["train"])
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    for k in (1, 2, 5):
        hits = [any(gl[j] == ql[i] for j in sim[i].argsort(descending=True)[:k].tolist()) for i in range(len(ql))]
        assert results["retrieval"]["metrics"][f"recall@{k}"] == pytest.approx(sum(hits) / len(hits), abs=1e-6)

    # two-stream fusion of the linear probe and the fine-tuned classifier, recomputed from their probs
    a, b, fused = tmp_path / f"{dataset}-linear", tmp_path / f"{dataset}-finetune", tmp_path / f"{dataset}-fused"
    assert main(["eval", "fuse", str(a / "results.json"), str(b / "results.json"), f"--out={fused}"]) == 0
    pa, pb = (torch.load(d / "probs.pt", weights_only=True) for d in (a, b))
    expected = ((pa["probs"] + pb["probs"]).argmax(1) == pa["labels"]).float().mean().item()
    fused_top1 = json.loads((fused / "results.json").read_text())["metrics"]["video_top1"]
    assert fused_top1 == pytest.approx(expected, abs=1e-6)
