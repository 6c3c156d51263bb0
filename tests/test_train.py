"""Short CPU training runs on the tiny synthetic dataset: outputs, learning, NaN, resume, torchrun."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.errors import UserError
from mvcoding.optim import build_optimizer, lr_factor
from mvcoding.train import train

REPO = Path(__file__).resolve().parent.parent


def metrics(run: Path) -> dict[int, dict]:
    """The last logged record of each step (a resumed run may log a step twice)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def test_short_run_writes_the_run_directory(synthetic_root, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 4}))
    assert train(cfg) == run
    rows = metrics(run)
    assert sorted(rows) == [1, 2, 3, 4]
    for key in ("loss", "loss/rgb-flow", "mi/rgb-flow", "lr", "clips_per_s", "data_wait"):
        assert key in rows[4], key
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows.values())
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and set(ckpt["views"]) == {"rgb", "flow"}
    assert (run / "config.yaml").is_file() and (run / "training.png").stat().st_size > 1000
    assert load_config(run / "config.yaml").train.max_steps == 4  # the resolved config loads back


def test_loss_falls(synthetic_root, tmp_path):
    """A real training run learns: in-batch InfoNCE over the whole train split (B = 16 clips) starts at or
    above chance, L(rgb, flow) = 2 log B = 5.55 (both directions), and ends more than 1 nat below it, where
    only embeddings that tell the clips apart can be (the memory-bank objective alone: test_objectives.py).
    This run ends near 3.6; one that does not learn stays at 5.55 or above."""
    run = tmp_path / "in_batch"
    B = 16
    over = {"run.dir": run, "train.max_steps": 14, "objective.negatives": "in_batch", "train.batch_size": B,
            "optim.lr": 1e-3, "optim.schedule": "constant", "optim.warmup_steps": 0, "data.shared_crop": True,
            "views.rgb.encoder": "small3d", "views.flow.encoder": "small3d"}  # fmt: skip
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))
    rows = [r for _, r in sorted(metrics(run).items())]
    chance = 2 * math.log(B)
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-4:]) / 4
    assert first > chance - 0.1, (first, chance)
    assert last < chance - 1.0, ([round(r["loss"], 2) for r in rows], chance)
    assert sum(r["mi/rgb-flow"] for r in rows[-4:]) / 4 > 0.5  # the bound log(B - 1) - L / 2, in nats


def test_non_finite_loss_stops_with_a_clear_message(synthetic_root, tmp_path):
    run = tmp_path / "nan"
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "objective.tau": 1e-40}))
    with pytest.raises(UserError, match=r"at step 0 \(pair rgb-flow\).*last good state"):
        train(cfg)
    assert (run / "checkpoints" / "last.pt").is_file()


def test_missing_flow_cache_names_the_fill_command(synthetic_root, tmp_path):
    over = {"run.dir": tmp_path / "r", "cache.dir": tmp_path / "empty-cache"}
    with pytest.raises(UserError, match="mvcoding precompute flow CONFIG"):
        train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))


def test_training_from_a_complete_cache_writes_nothing_there(synthetic_root, tmp_path):
    """What makes a cache on a read-only mount trainable: once filled (lengths too), training only reads."""
    cache = synthetic_root / "cache"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "a", "train.max_steps": 1})))
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "b", "train.max_steps": 2,
                                                         "data.workers": 1})))  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def test_lengths_that_cannot_be_written_are_kept_for_the_run(synthetic_root, tmp_path, caplog):
    from mvcoding.data import video_lengths
    from mvcoding.datasets import load_dataset

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would be, as a read-only mount refuses a write")
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **{"cache.dir": blocker}))
    records = load_dataset(cfg.dataset).records("all")
    lengths = video_lengths(records, cfg)
    assert len(lengths) == 24 and all(n == 12 for n, _ in lengths.values())
    assert "the lengths are kept for this run only" in caplog.text


def test_resume_after_sigkill_matches_an_uninterrupted_run(synthetic_root, tmp_path):
    over = {"train.max_steps": 11, "train.save_every": 1, "train.epochs": 100, "data.workers": 1}
    reference = tmp_path / "reference"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"run.dir": reference})))

    run = tmp_path / "killed"
    args = tiny(synthetic_root, **over, **{"run.dir": run})
    proc = subprocess.Popen([sys.executable, "-m", "mvcoding", "train", SYNTHETIC, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 8:  # last.pt: step 7 or 8
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: 24 videos / batch 4 = 6 steps per epoch
    proc.wait()
    killed_at = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < killed_at["step"] < 11 and killed_at["batch_in_epoch"] > 0

    train(load_config(SYNTHETIC, args + ["resume=auto"]))
    ours, ref = metrics(run), metrics(reference)
    assert sorted(ours) == sorted(ref) == list(range(1, 12))
    for step in ref:
        assert ours[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), step


def torchrun_train(args: list[str]) -> None:
    """`torchrun --nproc_per_node=2 -m mvcoding train SYNTHETIC args` (gloo on the CPU); fails on a non-zero exit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mvcoding", "train", SYNTHETIC, *args]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_torchrun_two_processes_match_one_process(synthetic_root, tmp_path):
    # SGD at a small lr: with larger steps (AdamW's first ones, SGD at 1e-2) the float summation order of one
    # against two processes (~1e-7) grew past 1e-4 of the loss within 5 steps; gradients summed over the
    # processes instead of averaged still move step 2's loss by 5%
    over = {"train.max_steps": 5, "views.rgb.encoder": "small3d_gn", "views.flow.encoder": "small3d_gn",
            "data.workers": 0, "device": "cpu", "optim.name": "sgd", "optim.lr": 0.003}  # fmt: skip
    single = tmp_path / "single"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over, **{"run.dir": single, "train.batch_size": 4})))

    double = tmp_path / "double"
    args = tiny(synthetic_root, **over, **{"run.dir": double, "train.batch_size": 2})
    torchrun_train(args)
    ours, ref = metrics(double), metrics(single)
    assert sorted(ours) == sorted(ref) == [1, 2, 3, 4, 5]
    for step in ref:
        assert ours[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4, abs=1e-5), step
        assert ours[step]["bank_max_diff"] == 0.0  # every rank holds the same memory banks
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)["objective"]
    b = torch.load(double / "checkpoints" / "last.pt", weights_only=True)["objective"]
    for key in a:  # unit rows after 5 steps: float summation order differs between 1 and 2 processes (~5e-5)
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=5e-4)


@pytest.mark.slow
def test_torchrun_supervised_matches_one_process(synthetic_root, tmp_path):
    """DDP over an objective that leaves parameters unused, with its own classifier averaged by hand."""
    over = {"train.max_steps": 4, "train.epochs": 4, "views.rgb.encoder": "small3d_gn", "device": "cpu",
            "optim.lr": 1e-2}  # fmt: skip
    single = tmp_path / "single"
    train(load_config(SYNTHETIC, supervised(synthetic_root, **over, **{"run.dir": single, "train.batch_size": 8})))
    double = tmp_path / "double"
    args = supervised(synthetic_root, **over, **{"run.dir": double, "train.batch_size": 4})
    torchrun_train(args)
    ours, ref = metrics(double), metrics(single)
    assert sorted(ours) == sorted(ref) == [1, 2, 3, 4]
    for step in ref:
        assert ours[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4, abs=1e-5), step
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(double / "checkpoints" / "last.pt", weights_only=True)
    torch.testing.assert_close(a["objective"], b["objective"], rtol=1e-4, atol=1e-5)


def test_lr_schedules():
    assert lr_factor(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)  # warmup: (step + 1) / 10
    assert lr_factor(4, 100, "step", warmup_steps=10, milestones=[0.01]) == pytest.approx(0.5)
    assert lr_factor(9, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(10, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)  # cosine starts after warmup
    assert lr_factor(55, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)  # the midpoint of 90 steps
    assert lr_factor(100, 100, "cosine", warmup_steps=10) == pytest.approx(0.0)
    assert lr_factor(150, 100, "cosine") == pytest.approx(0.0)  # past the end: stays at 0
    # without warmup, cosine is the fine-tuning schedule 0.5 (1 + cos(pi step / total)): cos(pi / 4) = 0.70711
    assert [lr_factor(s, 4, "cosine") for s in range(5)] == pytest.approx([1, 0.853553, 0.5, 0.146447, 0], abs=1e-6)
    steps = [lr_factor(s, 100, "step", milestones=[0.5, 0.75], gamma=0.1) for s in (0, 49, 50, 74, 75, 99)]
    assert steps == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(99, 100, "constant", milestones=[0.5]) == 1.0
    with pytest.raises(UserError, match="optim.schedule='linear' is not valid"):
        lr_factor(0, 100, "linear")


def test_build_optimizer():
    w = torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [w], "lr": 0.5}, {"params": [torch.nn.Parameter(torch.zeros(1))]}]
    sgd = build_optimizer(groups, "sgd", lr=0.1, momentum=0.8, weight_decay=1e-3)
    assert isinstance(sgd, torch.optim.SGD) and [g["lr"] for g in sgd.param_groups] == [0.5, 0.1]
    assert sgd.param_groups[1]["momentum"] == 0.8 and sgd.param_groups[1]["weight_decay"] == 1e-3
    assert isinstance(build_optimizer([w], "adam", lr=0.1), torch.optim.Adam)
    assert isinstance(build_optimizer([w], "adamw", lr=0.1), torch.optim.AdamW)
    with pytest.raises(UserError, match="eval.linear.optimizer='lbfgs' is not valid; choose one of: sgd, adam"):
        build_optimizer([w], "lbfgs", lr=0.1, key="eval.linear.optimizer")


def test_predictive_baseline_trains(synthetic_root, tmp_path):
    """The logged loss is the L1 distance between the decoder's prediction from the rgb features and the
    flow clips of the batch, recomputed by hand from the checkpoint (lr 1e-12: the weights of both steps, to
    float32 precision) and the sampler's first two batches."""
    from mvcoding.data import EpochSampler, MultiViewClips, collate, video_lengths
    from mvcoding.datasets import load_dataset
    from mvcoding.model import MultiViewModel, build_views
    from mvcoding.objectives import PredictiveDecoder
    from mvcoding.registry import model_input

    run = tmp_path / "predictive"
    over = {"run.dir": run, "train.max_steps": 2, "objective.name": "predictive", "optim.lr": 1e-12,
            "objective.predict": "{source: rgb, target: flow, loss: l1}"}  # fmt: skip
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **over))
    train(cfg)
    rows = metrics(run)
    assert sorted(rows) == [1, 2]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "decoder.fc.weight" in ckpt["objective"] and not any(k.startswith("banks.") for k in ckpt["objective"])

    views = build_views(cfg)
    records = load_dataset(cfg.dataset).records("train")
    d = cfg.data
    data = MultiViewClips(records, views, video_lengths(records, cfg), frames=4, stride=1, train=True,
                          scale=d.scale, flip=d.flip, seed=cfg.seed, shared_crop=d.shared_crop)  # fmt: skip
    order = list(EpochSampler(len(data), seed=cfg.seed, shuffle=True, batch_size=4))
    model = MultiViewModel(views, cfg.objective.dim)
    model.load_state_dict(ckpt["model"])
    item = data[order[0]]
    out_shape = tuple(model_input(views["flow"], item["flow"]).shape)  # the model input a decoder predicts
    decoder = PredictiveDecoder(in_features=model.encoders["rgb"].feat_dim, out_shape=out_shape)
    rgb_input = views["rgb"].device_transform  # the workers' uint8 clips -> the encoder's input
    decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in ckpt["objective"].items()})
    model.train(), decoder.train()  # as in training: batch statistics
    with torch.no_grad():
        for step, start in ((1, 0), (2, 4)):
            items = [data[i] for i in order[start : start + 4]]
            rgb, flow = (collate([it[v] for it in items]) for v in ("rgb", "flow"))
            target = views["flow"].device_transform(flow)  # codes -> flow / bound, as the objective sees it
            l1 = (decoder(model.encoders["rgb"](rgb_input(rgb))) - target).abs().mean().item()
            assert rows[step]["loss/rgb->flow"] == pytest.approx(l1, rel=1e-4), step
            assert rows[step]["loss"] == pytest.approx(l1, rel=1e-4), step


def supervised(root, **extra) -> list[str]:
    """A one-view (rgb) supervised run on the tiny set, whose train split is 16 videos of 8 classes."""
    over = {"objective.name": "supervised", "train.batch_size": 16, "train.epochs": 100, "views.rgb.width": 8}
    over |= {"data.stride": 2, "optim.lr": 3e-3, "optim.schedule": "constant", "optim.warmup_steps": 0}
    over |= extra
    return [*tiny(root, **over), "~views.flow"]


def test_supervised_objective_learns_the_labels(synthetic_root, tmp_path):
    """The supervised upper bound fits the labels of the training clips well above chance (1/8)."""
    run = tmp_path / "supervised"
    train(load_config(SYNTHETIC, supervised(synthetic_root, **{"run.dir": run, "train.max_steps": 24})))
    rows = [r for _, r in sorted(metrics(run).items())]
    assert set(rows[-1]) >= {"loss", "loss/rgb->label", "train_top1", "lr"}
    top1 = sum(r["train_top1"] for r in rows[-5:]) / 5  # the whole train split in every batch
    assert top1 > 0.4, [round(r["train_top1"], 2) for r in rows]
    assert sum(r["loss"] for r in rows[-5:]) / 5 < sum(r["loss"] for r in rows[:5]) / 5 - 0.3
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["objective"]["classifier.weight"].shape == (8, ckpt["model"]["heads.rgb.weight"].shape[1])
    assert ckpt["views"] == ["rgb"]


def test_supervised_run_resumes(synthetic_root, tmp_path):
    over = {"train.batch_size": 8}  # 2 steps per epoch: stop and resume mid-epoch
    reference, run = tmp_path / "reference", tmp_path / "stopped"
    train(load_config(SYNTHETIC, supervised(synthetic_root, **over, **{"run.dir": reference, "train.max_steps": 5})))
    train(load_config(SYNTHETIC, supervised(synthetic_root, **over, **{"run.dir": run, "train.max_steps": 3})))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["batch_in_epoch"] == 1
    args = supervised(synthetic_root, **over, **{"run.dir": run, "train.max_steps": 5, "resume": "auto"})
    train(load_config(SYNTHETIC, args))
    ours, ref = metrics(run), metrics(reference)
    assert sorted(ours) == sorted(ref) == [1, 2, 3, 4, 5]
    for step in ref:
        assert ours[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), step
        assert ours[step]["train_top1"] == ref[step]["train_top1"], step


def test_resume_with_another_objective_is_one_line(synthetic_root, tmp_path):
    run = tmp_path / "cmc"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1})))
    with pytest.raises(UserError, match="trained with objective.name=cmc, not supervised"):
        train(load_config(SYNTHETIC, supervised(synthetic_root, **{"run.dir": run}) + ["resume=auto"]))


def test_memory_bank_training_does_not_collapse_the_bank(tmp_path, synthetic_root):
    """Regression: GroupNorm encoders + memory bank used to collapse (every bank row the same vector,
    loss = log(K+1) with zero gradient) within a few SGD steps; batch-centred projections keep rows apart.
    With objective.center=false this run ends with a mean pairwise bank cosine of 0.93 (0.99999 by step 40)."""
    run = tmp_path / "run"
    over = tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 12, "optim.name": "sgd", "optim.lr": 0.03,
                                   "optim.warmup_steps": 0})  # fmt: skip
    assert main(["train", SYNTHETIC, *over]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["objective"]
    for view in ("rgb", "flow"):
        bank = state[f"banks.{view}"]  # (N, D), unit rows
        n = bank.shape[0]
        mean_cos = ((bank @ bank.T).sum() - n) / (n * (n - 1))  # mean over pairs i != j of cos(row i, row j)
        assert mean_cos < 0.5, (view, mean_cos.item())


def test_center_embeddings_removes_the_batch_mean():
    from mvcoding.model import center_embeddings

    h = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(center_embeddings(h), torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))  # mean (2, 4)
    assert torch.equal(center_embeddings(h[:1]), h[:1])  # a batch of one keeps its only row


def test_resume_from_a_checkpoint_with_a_payload_is_refused_without_running_it(tmp_path, synthetic_root, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": {}, "extra": Payload()}, hostile)
    over = tiny(synthetic_root, **{"run.dir": tmp_path / "run", "resume": hostile, "train.max_steps": 1})
    assert main(["train", SYNTHETIC, *over]) == 2
    assert "refusing to load" in capsys.readouterr().err and not marker.exists()


# --- training options on the CPU: bf16 autocast, torch.compile, channels_last, gradient clipping ----


def short_run(root, run: Path, **over) -> dict[int, dict]:
    train(load_config(SYNTHETIC, tiny(root, **{"run.dir": run, "train.max_steps": 2, **over})))
    return metrics(run)


@pytest.fixture(scope="module")
def reference_run(synthetic_root, tmp_path_factory) -> dict[int, dict]:
    """Two steps with the defaults on the CPU (float32, eager, contiguous, no clipping)."""
    return short_run(synthetic_root, tmp_path_factory.mktemp("reference") / "run")


def bf16_autocast_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.conv3d(torch.randn(1, 2, 2, 4, 4), torch.randn(3, 2, 1, 3, 3))
        return y.dtype == torch.bfloat16
    except RuntimeError:
        return False


@pytest.mark.skipif(not bf16_autocast_supported(), reason="this PyTorch has no bf16 autocast of conv3d on the CPU")
def test_bf16_autocast_on_the_cpu(synthetic_root, tmp_path, reference_run):
    """train.amp=bf16 runs the encoders in bf16: the first step's loss (same weights, same batch) moves
    off the float32 one by bf16 rounding (~1e-2 relative here), and no further."""
    rows = short_run(synthetic_root, tmp_path / "bf16", **{"train.amp": "bf16"})
    ours, ref = rows[1]["loss"], reference_run[1]["loss"]
    assert 1e-4 < abs(ours - ref) / ref < 5e-2, (ours, ref)
    assert all(math.isfinite(r["loss"]) for r in rows.values())


def test_compile_wraps_the_model(synthetic_root, tmp_path):
    from mvcoding.train import setup

    run, _ = setup(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "c", "train.compile": True})))
    assert isinstance(run.net, torch._dynamo.eval_frame.OptimizedModule) and run.net._orig_mod is run.model
    run, _ = setup(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "e"})))
    assert run.net is run.model


@pytest.mark.slow  # compiling the two encoders forward and backward takes ~80 s on 2 CPU cores
def test_compiled_training_matches_eager(synthetic_root, tmp_path, reference_run):
    rows = short_run(synthetic_root, tmp_path / "compiled", **{"train.compile": True})
    for step in (1, 2):
        assert rows[step]["loss"] == pytest.approx(reference_run[step]["loss"], rel=1e-4), step


def test_channels_last_on_the_cpu(synthetic_root, tmp_path, reference_run):
    """train.channels_last=true: conv weights and 5-D batches in channels_last_3d, the same losses."""
    from mvcoding.train import setup, to_device

    over = {"train.channels_last": True}
    run, _ = setup(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "setup", **over})))
    weights = [p for p in run.model.parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert not all(p.is_contiguous() for p in weights)  # not merely contiguous either way
    batch = to_device(run, next(iter(run.loader)))
    assert all(batch[v].is_contiguous(memory_format=torch.channels_last_3d) for v in ("rgb", "flow"))
    rows = short_run(synthetic_root, tmp_path / "run", **over)
    for step in (1, 2):
        assert rows[step]["loss"] == pytest.approx(reference_run[step]["loss"], rel=1e-4), step


def test_clip_grad_bounds_the_step(synthetic_root, tmp_path):
    """SGD without momentum or decay at lr 1 with train.clip_grad=1e-3 moves the weights by exactly 1e-3
    (the gradient's norm is far larger); without clipping the step is the whole gradient."""
    from mvcoding.train import setup

    over = {"optim.name": "sgd", "optim.lr": 1.0, "optim.momentum": 0.0, "optim.weight_decay": 0.0,
            "optim.schedule": "constant", "optim.warmup_steps": 0, "train.max_steps": 1}  # fmt: skip
    cfg = load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": tmp_path / "init", **over}))
    before = {k: v.clone() for k, v in setup(cfg)[0].model.named_parameters()}  # the seeded initial weights

    def step_norm(run_dir: Path, **extra) -> float:
        train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run_dir, **over, **extra})))
        after = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        return math.sqrt(sum(((after[k] - v).double() ** 2).sum().item() for k, v in before.items()))

    assert step_norm(tmp_path / "clipped", **{"train.clip_grad": 1e-3}) == pytest.approx(1e-3, rel=1e-3)
    assert step_norm(tmp_path / "free") > 1e-2
