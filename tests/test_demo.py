"""`mvcoding demo` end to end: tiny (default suite) and full size (slow: the >= 15 point claim); the
README's demo numbers are those of the recorded run, experiments/results/demo.json."""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny
from mvcoding.cli import main
from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.eval import features as eval_features
from mvcoding.eval.features import EvalClips
from mvcoding.eval.metrics import sha256_file

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "experiments" / "results" / "demo.json"
WORDS = "one|two|three|four|five|six|seven|eight|nine|ten|half|dozen"  # numbers written out count too
BLOCK = re.compile(r"<!-- demo numbers:.*?-->(.*?)<!-- end demo numbers -->", re.S)
# every number the README's demo block quotes: the words around it, and its values in demo.json (r)
QUOTES = [
    (r"chance (\S+?)%, (\S+?) classes", lambda r: [100 / r["classes"], r["classes"]]),
    (r"\| CMC \(RGB\+flow\) \| (\S+?)% \| (\S+?)% \|", lambda r: top1(r["cmc"])),
    (r"\| random init \| (\S+?)% \| (\S+?)% \|", lambda r: top1(r["random_init"])),
    (r"took (\S+?) minutes: (\S+?) making the data and the flow cache, (\S+?) pretraining",
     lambda r: [r["seconds"] / 60, r["data_seconds"] / 60, r["pretrain_seconds"] / 60]),
    (r"on (\S+?) CPU cores with torch (\S+?) \(load average (\S+?) when it started, (\S+?) when it ended\)",
     lambda r: [r["machine"][k] for k in ("cpus", "torch")] + [r["machine"][k][0] for k in ("load_start", "load_end")]),
]  # fmt: skip


def top1(probe: dict) -> list[float]:
    return [100 * probe["video_top1"], 100 * probe["clip_top1"]]


def as_written(value, written: str) -> str:
    """`value` rounded half up to the decimals of the README's `written` (a string value as it is)."""
    if isinstance(value, str):
        return value
    step = Decimal(1).scaleb(-len(written.partition(".")[2]))
    return str(Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP))


def readme_problems(readme: str, record: dict) -> list[str]:
    """Where the README's demo block and the record disagree: a quote whose number is not the record's
    (rounded as written), a quote missing, or a number in the block that no quote checks."""
    found = BLOCK.search(readme)
    if not found:
        return ["README.md has no '<!-- demo numbers: ... -->' ... '<!-- end demo numbers -->' block"]
    text = rest = " ".join(found.group(1).split())
    problems = []
    for pattern, values in QUOTES:
        m = re.search(pattern, text)
        if not m:
            problems.append(f"the demo block lost the quote /{pattern}/")
            continue
        rest = rest.replace(m.group(0), " ", 1)
        for written, value in zip(m.groups(), values(record), strict=True):
            if written != (expected := as_written(value, written)):
                problems.append(f"README: {written} in {m.group(0)!r}; demo.json: {expected} ({value})")
    stray = re.findall(rf"\S*\d\S*|\b(?:{WORDS})\b", rest.replace("top-1", ""), re.I)
    return problems + ([f"numbers in the demo block that no quote checks: {stray}"] if stray else [])


def recorded() -> dict:
    if not RECORD.is_file():
        pytest.skip(f"{RECORD.relative_to(REPO)} not recorded yet: make demo-record")
    return json.loads(RECORD.read_text())


def test_the_readme_quotes_the_recorded_demo():
    record = recorded()
    assert record["command"] == "mvcoding demo", "demo.json must record the plain demo that make demo runs"
    assert readme_problems((REPO / "README.md").read_text(), record) == []


def test_the_recorded_demo_ran_the_current_config():
    """A demo setting changed since the record (a key both hold, run.dir aside): its numbers are stale."""
    record = recorded()
    now = OmegaConf.to_container(load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", ["name=demo"]), resolve=True)
    then, now = flat(record["config"]), flat(now)
    changed = {k: (then[k], now[k]) for k in then.keys() & now.keys() if then[k] != now[k] and k != "run.dir"}
    assert not changed, f"the demo config changed since demo.json was recorded (then, now): {changed}; make demo-record"


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


FAKE = {"classes": 8, "cmc": {"video_top1": 0.625, "clip_top1": 0.48125}, "seconds": 663.0, "data_seconds": 61.2,
        "random_init": {"video_top1": 0.166667, "clip_top1": 0.15}, "pretrain_seconds": 378.4,
        "machine": {"cpus": 2, "torch": "2.14.1", "load_start": [0.04, 0.1, 0.2],
                    "load_end": [1.96, 1.5, 0.9]}}  # fmt: skip
FAKE_README = """# x
intro 72% elsewhere is not checked
<!-- demo numbers: each one is experiments/results/demo.json's -->
The recorded run ([experiments/results/demo.json](experiments/results/demo.json)), synthetic test split (chance 12.5%,
8 classes):

| linear probe on the frozen RGB encoder | video top-1 | clip top-1 |
|---|--:|--:|
| CMC (RGB+flow) | 62.5% | 48.1% |
| random init | 16.7% | 15% |

It took 11.1 minutes: 1.0 making the data and the flow cache, 6 pretraining, the rest probing; on 2 CPU
cores with torch 2.14.1 (load average 0.04 when it started, 2.0 when it ended).
<!-- end demo numbers -->
"""


@pytest.mark.parametrize(
    "old, new",
    [(None, None), ("62.5%", "72.0%"), ("| 15% |", "| 16% |"), ("11.1 minutes", "11.2 minutes"), ("2.14.1", "2.4.0"),
     ("2 CPU", "4 CPU"), ("2.0 when it ended", "1.9 when it ended"), ("chance 12.5%", "chance 12%"),
     ("probing;", "probing, about three minutes;"), ("probing;", "probing (3 min);"),
     ("| random init | 16.7% | 15% |\n", ""), ("<!-- end", "<!-- fin")],
)  # fmt: skip
def test_the_readme_check_catches_a_number_that_is_not_the_record(old, new):
    """The check on a hand-written record and block: it passes as written (rounded as written: 12.5,
    48.1, 15, 11.1, 6, 0.04, 2.0), and reports each edited, added or dropped number."""
    readme = FAKE_README if old is None else FAKE_README.replace(old, new)
    assert readme != FAKE_README or old is None
    assert bool(readme_problems(readme, FAKE)) == (old is not None), readme_problems(readme, FAKE)


def test_record_outside_the_repository_root_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--record", f"run.dir={tmp_path / 'run'}"]) == 2
    assert "run it from the repository root" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_demo_writes_the_summary_contract(tmp_path, capsys, monkeypatch):
    """The tiny demo: its summary is the two probes' results; the CMC probe reads the run's checkpoint
    (its features are that encoder's, by hand), the baseline a random encoder; each probe fits its
    training features (chance 1/8) and its accuracies are those of its saved probabilities. With
    --record it also writes experiments/results/demo.json (here under tmp_path): the summary's numbers,
    the machine and the command."""
    run = tmp_path / "demo"
    overrides = tiny(tmp_path / "data", **{"run.dir": run, "train.max_steps": 3, "eval.linear.epochs": 5,
                                           "eval.clips": 2})  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    assert main(["demo", "--record", *overrides]) == 0
    summary = json.loads((run / "summary.json").read_text())
    record = json.loads((tmp_path / "experiments" / "results" / "demo.json").read_text())
    assert {k: record[k] for k in summary} == summary and record["command"] == " ".join(["mvcoding demo", *overrides])
    assert record["run"] == str(run) and record["classes"] == summary["config"]["dataset"]["generate"]["classes"] == 8
    assert summary["seconds"] >= summary["data_seconds"] + summary["pretrain_seconds"] > 0
    machine = summary["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpus"] >= 1
    assert len(machine["load_start"]) == len(machine["load_end"]) == 3
    checkpoint = run / "checkpoints" / "last.pt"
    folders = {"cmc": run / "eval-cmc", "random_init": run / "eval-random"}
    results = {k: json.loads((d / "results.json").read_text()) for k, d in folders.items()}
    for key, r in results.items():
        assert summary[key] == pytest.approx(r["metrics"], abs=1e-6), key
        saved = torch.load(folders[key] / "probs.pt", weights_only=True)
        hits = sum(int(p.argmax() == y) for p, y in zip(saved["probs"], saved["labels"], strict=True))
        assert r["metrics"]["video_top1"] == round(hits / len(saved["labels"]), 6), key
    gain = summary["cmc"]["video_top1"] - summary["random_init"]["video_top1"]
    assert summary["gain_video_top1"] == pytest.approx(gain, abs=1e-6)
    cmc, rand = results["cmc"], results["random_init"]
    assert cmc["checkpoint"] == str(checkpoint) and cmc["checkpoint_sha256"] == sha256_file(checkpoint)
    assert not cmc["protocol"]["random_init"] and rand["checkpoint"] is None and rand["protocol"]["random_init"]
    for folder in folders.values():
        log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert log[-1]["epoch"] == 5 and log[-1]["train_top1"] >= 0.75, (folder, log[-1])

    # the CMC probe's features are the pretrained rgb encoder on the test clips; the baseline's are not
    cfg = load_config(run / "config.yaml")
    s = eval_features.prepare(cfg, checkpoint, random_init=False)
    clips = EvalClips(s.index.test, s.views, s.lengths, frames=4, stride=1, clips=2, crops=1)
    weights = torch.load(checkpoint, weights_only=True)["model"]
    encoder = s.views["rgb"].build_encoder()
    encoder.load_state_dict({k.removeprefix("encoders.rgb."): v for k, v in weights.items()
                             if k.startswith("encoders.rgb.")})  # fmt: skip
    cmc = torch.load(run / "eval-cmc" / "features.pt", weights_only=True)["test"]["x"]
    random = torch.load(run / "eval-random" / "features.pt", weights_only=True)["test"]["x"]
    with torch.no_grad():
        for i in (0, 9):
            expected = encoder.eval()(s.views["rgb"].device_transform(clips[i]["rgb"]))  # (crops, C, T, H, W)
            torch.testing.assert_close(cmc[i], expected, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(random[i], expected, rtol=1e-2, atol=1e-3)

    assert (run / "metrics.jsonl").is_file() and (run / "eval-random" / "confusion.png").is_file()
    out = capsys.readouterr().out
    assert "CMC (RGB+flow)" in out and "random init" in out
    assert f"recorded: {tmp_path / 'experiments' / 'results' / 'demo.json'}" in out


@pytest.mark.slow
def test_full_demo_pretraining_beats_random_init_by_15_points(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", f"dataset.root={tmp_path / 'data'}", f"run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cmc"]["video_top1"] >= summary["random_init"]["video_top1"] + 0.15, summary
