import pytest

from mvcoding.cli import main
from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.errors import UserError

CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_composes_and_builds_its_views(path, tmp_path):
    from mvcoding.model import build_views

    cfg = load_config(path, [f"dataset.root={tmp_path}"])
    for key in ("dataset.name", "dataset.root", "dataset.split", "cache.dir", "run.dir", "seed", "device",
                "data.workers", "train.batch_size", "train.epochs", "train.max_steps", "objective.graph",
                "objective.anchor", "objective.negatives", "views"):  # fmt: skip
        node = cfg
        for part in key.split("."):
            assert part in node, f"{path.name} lacks {key}"
            node = node[part]
    assert len(cfg.views) >= 2
    views = build_views(cfg)  # every view and its settings are valid (caches are only opened lazily)
    assert list(views) == list(cfg.views)


def test_overrides_apply():
    cfg = load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", ["train.batch_size=7", "objective.graph=full"])
    assert cfg.train.batch_size == 7 and cfg.objective.graph == "full"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_sise=4", "batch_sise"),
        ("objective.graph=star", "objective.graph='star' is not valid: one of: core, full"),
        ("objective.anchor=depth", "objective.anchor='depth' is not one of the views"),
        ("objective.negatives=queue2", "objective.negatives"),
        ("dataset.split=4", "dataset.split=4"),
        ("device=tpu", "device='tpu'"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", [override])


def test_missing_config_file():
    with pytest.raises(UserError, match="not found"):
        load_config("configs/nope.yaml")


def test_cli_reports_user_errors_in_one_line(capsys):
    code = main(["train", str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), "views.rgb.encodr=x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "encodr" in err and "Traceback" not in err


def test_cli_unknown_view_setting(capsys, tmp_path):
    code = main(["train", str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), f"dataset.root={tmp_path}",
                 "+views.rgb.colour=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "views.rgb.colour" in err and "encoder" in err


def test_views_command_lists_builtins(capsys):
    assert main(["views"]) == 0
    out = capsys.readouterr().out
    assert "rgb" in out and "flow" in out and "mvcoding.views" in out


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", "train.batch_size='abc' is not valid: an integer >= 1"),
        ("train.batch_size=0", "train.batch_size=0 is not valid: an integer >= 1"),
        ("train.max_steps=abc", "train.max_steps='abc' is not valid: an integer >= 1 or null"),
        ("optim.lr=abc", "optim.lr='abc' is not valid: a number > 0"),
        ("optim.lr=-0.1", "optim.lr=-0.1 is not valid: a number > 0"),
        ("data.frames=abc", "data.frames='abc' is not valid: an integer >= 1"),
        ("data.frames=0", "data.frames=0 is not valid: an integer >= 1"),
        ("data.workers=abc", "data.workers='abc' is not valid: an integer >= 0"),
        ("data.scale=[0.9,0.4]", "data.scale=[0.9, 0.4] is not valid: [lo, hi] with 0 < lo <= hi <= 1"),
        ("device=cudax", "device='cudax' is not valid: auto, cpu, cuda or cuda:N"),
        ("objective.tau=0", "objective.tau=0 is not valid: a number > 0"),
        ("objective.momentum=1.5", "objective.momentum=1.5 is not valid: a number in [0, 1]"),
        ("train.amp=fp16", "train.amp='fp16' is not valid: one of: auto, bf16, off"),
        ("train.compile=maybe", "train.compile='maybe' is not valid: true or false"),
        ("precompute.shard=2/2", "precompute.shard='2/2' is not valid: i/n with 0 <= i < n"),
        ("eval.crops=2", "eval.crops=2 is not valid: one of: 1, 3"),
        ("views.rgb.width=abc", "views.rgb.width='abc' is not valid: an integer or null"),
        ("views.flow.bound=abc", "views.flow.bound='abc' is not valid: a number"),
        ("views.rgb.width=4", "views.rgb: width=4 is not valid for small3d_gn: a multiple of 8"),
        ("views.flow=3", "views.flow=3 is not valid: a mapping of settings"),
    ],
)
def test_bad_values_are_one_line_naming_key_value_and_what_is_valid(override, message, tmp_path, capsys):
    """Checked before any work: the dataset is not even generated (dataset.root stays empty)."""
    args = ["train", str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), f"dataset.root={tmp_path / 'data'}", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "data").exists()


def test_a_view_given_as_an_empty_mapping_takes_its_defaults(tmp_path):
    from mvcoding.model import build_views

    cfg = load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", [f"dataset.root={tmp_path}", "views.flow={}"])
    assert build_views(cfg)["flow"].settings["algorithm"] == "dis"


def test_the_objectives_choices_are_written_once():
    from mvcoding import objectives, schema

    assert schema.SCHEMA["objective.graph"].valid == "one of: " + ", ".join(objectives.GRAPHS)
    assert schema.SCHEMA["objective.negatives"].valid == "one of: " + ", ".join(objectives.NEGATIVES)
    assert schema.SCHEMA["objective.name"].valid == "one of: " + ", ".join(objectives.OBJECTIVES)
