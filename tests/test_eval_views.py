"""eval.views entries: each a view or views joined with + (features concatenated in that order), each
evaluated and reported on its own, every view's features extracted once.

The end-to-end checks recompute the features with the checkpoint's encoders applied by hand, and the
metrics from the files each entry saves, so a joined entry in the wrong order, an entry left out or
an entry that gets another entry's numbers fails.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from test_transfer import Tiny, two_view_checkpoint

from mvcoding.errors import UserError
from mvcoding.eval import evaluate, fuse
from mvcoding.eval import features as eval_features
from mvcoding.eval.features import EvalClips, entry_features, entry_views, parse_entries

ENTRIES = ["rgb", "flow", "rgb+flow"]
D = 256  # small3d's feature width


# ----------------------------------------------------------------------------- parsing
def test_entries_parse_into_their_views_in_order():
    parsed = parse_entries(["rgb", "flow", "rgb+flow", " flow + rgb "], ["rgb", "flow", "depth"])
    assert parsed == {"rgb": ("rgb",), "flow": ("flow",), "rgb+flow": ("rgb", "flow"), "flow+rgb": ("flow", "rgb")}
    assert entry_views(parsed) == ["rgb", "flow"]  # each view once: its features are extracted once
    assert entry_views(parse_entries(["depth+flow", "rgb"], ["rgb", "flow", "depth"])) == ["depth", "flow", "rgb"]


@pytest.mark.parametrize(
    "views, message",
    [
        ([], "must be a non-empty list"),
        (["rgb+"], "'rgb+' has an empty part"),
        (["+flow"], "empty part"),
        (["rgb++flow"], "empty part"),
        (["rgb+depth"], "'depth' is not a view of the config"),
        (["rgb", "rgb"], "lists 'rgb' twice"),
        (["rgb+flow", "rgb + flow"], "lists 'rgb+flow' twice"),
        (["rgb+rgb"], "names rgb twice"),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_fix(views, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        parse_entries(views, ["rgb", "flow"])
    assert "\n" not in str(e.value) and "eval.views" in str(e.value)


def test_entry_features_are_the_views_slices_joined_in_the_entry_order():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)  # rgb: columns 0-2, flow: 3-4
    dims = {"rgb": 3, "flow": 2}
    assert torch.equal(entry_features(x, dims, ("rgb",)), x[..., :3])
    assert torch.equal(entry_features(x, dims, ("flow",)), x[..., 3:])
    assert torch.equal(entry_features(x, dims, ("flow", "rgb")), x[..., [3, 4, 0, 1, 2]])
    with pytest.raises(ValueError, match="do not hold"):
        entry_features(x, {"rgb": 3}, ("rgb",))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Tiny(tmp_path_factory.mktemp("views"))


@pytest.fixture(scope="module")
def checkpoint(tiny):
    """The tiny dataset's flow cache filled and a checkpoint with an rgb and a flow encoder."""
    return two_view_checkpoint(tiny)[0]


def over(checkpoint, out) -> dict:
    return {"checkpoint": checkpoint, "run.dir": out, "eval.views": f"[{','.join(ENTRIES)}]", "eval.crops": 1}


@pytest.fixture(scope="module")
def probe(tiny, checkpoint):
    """One linear probe with the entries rgb, flow and rgb+flow."""
    out = tiny.root.parent / "probe"
    cfg = tiny.cfg(**over(checkpoint, out))
    assert list(cfg.eval.views) == ENTRIES  # rgb+flow passes the override grammar as one entry
    evaluate("linear", cfg)
    return out


def by_hand(tiny, checkpoint) -> dict:
    """{split: {view: (N, 1, D)}}: the checkpoint's encoders applied to every eval clip, one at a time."""
    state = torch.load(checkpoint, weights_only=True)["model"]
    s = eval_features.prepare(tiny.cfg(**{"eval.views": "[rgb,flow]", "eval.crops": 1}), checkpoint, random_init=False)
    out = {}
    for split, records, clips in (("train", s.index.train, 2), ("test", s.index.test, 2)):
        data = EvalClips(records, s.views, s.lengths, frames=4, stride=2, clips=clips, crops=1)
        out[split] = {}
        for name, view in s.views.items():
            encoder = view.build_encoder()
            encoder.load_state_dict({k.removeprefix(f"encoders.{name}."): v for k, v in state.items()
                                     if k.startswith(f"encoders.{name}.")})  # fmt: skip
            with torch.no_grad():
                rows = [encoder.eval()(view.device_transform(data[i][name])) for i in range(len(data))]
            out[split][name] = torch.stack(rows)  # (N, 1 crop, D)
    return out


def test_the_joined_entry_is_the_views_features_concatenated(tiny, checkpoint, probe):
    """Each view's features are extracted once (features.pt holds rgb and flow, 2 x 256 wide, not one
    copy per entry); the rgb+flow entry's features, and so its probe's standardisation and scores, are
    the rgb encoder's features then the flow encoder's, by hand."""
    feats = torch.load(probe / "features.pt", weights_only=True)
    ref = by_hand(tiny, checkpoint)
    for split in ("train", "test"):
        assert feats[split]["dims"] == {"rgb": D, "flow": D} and feats[split]["x"].shape[-1] == 2 * D
        joined = torch.cat([ref[split]["rgb"], ref[split]["flow"]], dim=-1)
        got = entry_features(feats[split]["x"], feats[split]["dims"], ("rgb", "flow"))
        torch.testing.assert_close(got, joined, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ref[split]["rgb"], ref[split]["flow"], atol=1e-3)  # the order matters

    for entry, parts in (("rgb", ["rgb"]), ("flow", ["flow"]), ("rgb+flow", ["rgb", "flow"])):
        clf = torch.load(probe / entry / "classifier.pt", weights_only=True)
        train = torch.cat([ref["train"][p] for p in parts], dim=-1).flatten(0, 1)  # (N * crops, D)
        torch.testing.assert_close(clf["mean"], train.mean(0), rtol=1e-4, atol=1e-5)
        assert clf["views"] == parts and clf["weight"].shape == (3, D * len(parts))
        test = torch.cat([ref["test"][p] for p in parts], dim=-1)
        z = (test - clf["mean"]) / clf["std"]
        clip_probs = (z @ clf["weight"].T + clf["bias"]).softmax(-1).mean(1)
        saved = torch.load(probe / entry / "probs.pt", weights_only=True)
        torch.testing.assert_close(saved["clip_probs"], clip_probs, rtol=1e-3, atol=1e-5)


def test_every_entry_is_evaluated_and_reported_on_its_own(probe):
    results = json.loads((probe / "results.json").read_text())
    assert results["task"] == "linear" and results["entry"] == "rgb" and list(results["entries"]) == ENTRIES
    assert {e: r["views"] for e, r in results["entries"].items()} == {e: e.split("+") for e in ENTRIES}
    # the top level is the first entry's evaluation, as a one-entry run writes it
    assert results["metrics"] == results["entries"]["rgb"]["metrics"] and results["protocol"]["views"] == ["rgb"]
    for name in ("probs.pt", "classifier.pt", "confusion.png"):
        assert (probe / name).read_bytes() == (probe / "rgb" / name).read_bytes(), name

    probs = {}
    for entry in ENTRIES:
        own = json.loads((probe / entry / "results.json").read_text())
        assert own["entry"] == entry and "entries" not in own and own["protocol"]["views"] == entry.split("+")
        assert own["metrics"] == results["entries"][entry]["metrics"]
        assert (probe / entry / "confusion.png").stat().st_size > 0 and (probe / entry / "summary.md").is_file()
        saved = torch.load(probe / entry / "probs.pt", weights_only=True)
        assert saved["views"] == entry.split("+")
        video_top1 = sum(int(p.argmax() == y) for p, y in zip(saved["probs"], saved["labels"], strict=True)) / 6
        clip_top1 = sum(int(p.argmax() == saved["labels"][v]) for p, v in zip(saved["clip_probs"], saved["clip_video"],
                                                                              strict=True)) / 12  # fmt: skip
        assert own["metrics"] == {"video_top1": round(video_top1, 6), "clip_top1": round(clip_top1, 6)}, entry
        probs[entry] = saved["clip_probs"]
    for a, b in (("rgb", "flow"), ("rgb", "rgb+flow"), ("flow", "rgb+flow")):
        assert not torch.allclose(probs[a], probs[b], atol=1e-3), (a, b)  # three different classifiers

    logged = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(r["entry"] for r in logged)) == ENTRIES
    summary = (probe / "summary.md").read_text()
    assert all(f"| {e} | " in summary for e in ENTRIES)


def test_retrieval_reuses_the_features_and_reports_every_entry(tiny, checkpoint, probe, tmp_path, monkeypatch):
    out = tmp_path / "retrieval"
    out.mkdir()
    shutil.copyfile(probe / "features.pt", out / "features.pt")  # the same views and clips: reused

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(eval_features, "run_clips", no_extraction)
    evaluate("retrieval", tiny.cfg(**over(checkpoint, out)))
    results = json.loads((out / "results.json").read_text())
    assert list(results["entries"]) == ENTRIES and results["metrics"] == results["entries"]["rgb"]["metrics"]
    feats = torch.load(out / "features.pt", weights_only=True)
    columns = {"rgb": slice(0, D), "flow": slice(D, 2 * D), "rgb+flow": slice(0, 2 * D)}  # rgb first, by hand
    ql, gl = torch.arange(3).repeat_interleave(2), torch.arange(3).repeat_interleave(4)
    for entry, cols in columns.items():
        q = feats["test"]["x"][..., cols].mean(1).view(6, 2, -1).mean(1)  # crops, then the 2 clips of a video
        g = feats["train"]["x"][..., cols].mean(1).view(12, 2, -1).mean(1)
        sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
        for k in (1, 2, 5):
            hits = sum(any(gl[j] == ql[i] for j in sim[i].argsort(descending=True)[:k]) for i in range(6))
            assert results["entries"][entry]["metrics"][f"recall@{k}"] == pytest.approx(hits / 6, abs=1e-6), entry
        assert (out / entry / "retrieval.png").stat().st_size > 5000
    assert (out / "retrieval.png").read_bytes() == (out / "rgb" / "retrieval.png").read_bytes()


def test_two_entries_of_one_run_fuse(probe, tmp_path):
    fused = fuse(probe / "rgb", probe / "flow" / "results.json", out=tmp_path / "fused")
    results = json.loads((fused / "results.json").read_text())
    assert results["protocol"]["streams"] == ["rgb (linear)", "flow (linear)"]
    a, b = (torch.load(probe / e / "probs.pt", weights_only=True) for e in ("rgb", "flow"))
    probs = torch.load(fused / "probs.pt", weights_only=True)["probs"]
    torch.testing.assert_close(probs, (a["probs"] + b["probs"]) / 2)


@pytest.mark.parametrize(
    "task, views, message",
    [
        ("finetune", "[rgb+flow,rgb]", "finetune trains one encoder, but the first eval.views entry 'rgb+flow'"),
        ("linear", "[rgb,rgb+]", "'rgb+' has an empty part"),
        ("retrieval", "[rgb,flow,rgb]", "lists 'rgb' twice"),
        ("linear", "[rgb+depth]", "'depth' is not a view of the config"),
    ],
)
def test_bad_entries_fail_before_any_work(tiny, checkpoint, tmp_path, task, views, message):
    out = tmp_path / "never"
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(task, tiny.cfg(checkpoint=checkpoint, **{"run.dir": out, "eval.views": views}))
    assert not out.exists()


def test_a_checkpoint_with_non_finite_weights_is_one_line_not_a_chance_probe(tiny, checkpoint, tmp_path):
    """optim.lr=1e38 trained to nan weights and `eval linear` then reported chance with exit 0 (issue 19)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    key = next(k for k, v in state["model"].items() if k.startswith("encoders.flow.") and v.is_floating_point())
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(UserError, match=r"^the flow encoder gives non-finite features \(nan or inf\) in features "):
        evaluate("linear", tiny.cfg(**over(broken, tmp_path / "out")))
    assert not (tmp_path / "out" / "results.json").exists()
