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
        ("objective.graph=star", "objective.graph='star' is not valid; choose one of: core, full"),
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
