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


# ---- a config file's keys are checked as overrides are; nan and inf are never a setting ----------


def _config_file(tmp_path, text: str) -> str:
    """A config file beside a copy of the packaged configs (its defaults list composes base and the groups)."""
    import shutil

    folder = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "mine.yaml").write_text(text)
    return str(folder / "mine.yaml")


HEAD = "defaults:\n  - base\n  - dataset: synthetic\n  - eval: default\n  - _self_\nviews:\n  rgb: {}\n  flow: {}\n"


@pytest.mark.parametrize(
    "section, key, nearest",
    [
        ("train", "epoch", "train.epochs"),
        ("objective", "temprature", "objective.tau"),
        ("optim", "learning_rate", "optim.lr"),
        ("data", "frmes", "data.frames"),
        ("eval", "linear: {epoch: 3}", "eval.linear.epochs"),
    ],
)
def test_an_unknown_nested_key_in_a_config_file_is_one_line_naming_the_nearest(tmp_path, capsys, section, key, nearest):
    value = key if ":" in key else f"{key}: 3"
    path = _config_file(tmp_path, HEAD + f"{section}:\n  {value}\n")
    assert main(["config", path, f"dataset.root={tmp_path / 'data'}"]) == 2
    err = capsys.readouterr().err
    bad = nearest.rsplit(".", 1)[0] + "." + (key.split(":")[1].strip(" {") if ":" in key else key)
    assert err.count("\n") == 1 and f"unknown config key {bad} (in {path})" in err and f"{nearest}?" in err, err
    assert not (tmp_path / "data").exists()


def test_a_config_file_without_defaults_is_checked_against_the_packaged_keys(tmp_path, capsys):
    """A saved config.yaml (complete, no defaults list) loads back; a misspelt key in one does not."""
    from omegaconf import OmegaConf

    cfg = load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", [f"dataset.root={tmp_path}"])
    OmegaConf.save(cfg, tmp_path / "full.yaml")
    assert load_config(tmp_path / "full.yaml").train.epochs == cfg.train.epochs
    text = (tmp_path / "full.yaml").read_text().replace("  epochs:", "  epoch:")
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(
        UserError, match=r"unknown config key train\.epoch \(in .*typo.yaml\); did you mean train\.epochs"
    ):
        load_config(tmp_path / "typo.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key train.epoch (in the override train.epoch=3); did you mean train.epochs?"),
        (
            "+train.epoch=3",
            "unknown config key train.epoch (in the override +train.epoch=3); did you mean train.epochs",
        ),
        ("+objective.temprature=0.5", "did you mean objective.tau?"),
        ("objective.k=8", "did you mean objective.K?"),
        ("trian.epochs=3", "unknown config key trian (in the override trian.epochs=3); did you mean train?"),
        ("train=3", "train=3 is not valid (in the override train=3): a section of settings (batch_size, "),
        ("~views", "the override ~views removes views, which every run reads"),
        ("~train.batch_size", "removes train.batch_size, which every run reads"),
    ],
)
def test_overrides_name_the_nearest_valid_key(override, message, tmp_path, capsys):
    assert main(["config", str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), f"dataset.root={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_a_dataset_group_chosen_by_an_override_takes_its_own_keys(tmp_path):
    cfg = load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", ["dataset=listfile", "dataset.train_list=a.txt"])
    assert cfg.dataset.name == "listfile" and cfg.dataset.train_list == "a.txt"


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=inf",
        "optim.lr=1e999",
        "optim.lr=nan",
        "optim.lr=-inf",
        "optim.lr=0",
        "objective.tau=nan",
        "objective.tau=inf",
        "objective.tau=0",
        "objective.tau=-0.1",
        "dataset.generate.noise=nan",
        "dataset.generate.noise=-1",
        "dataset.generate.noise=inf",
        "dataset.generate.fps=inf",
        "views.flow.bound=nan",
        "train.clip_grad=inf",
        "eval.linear.lr=nan",
    ],
)
def test_non_finite_and_absurd_numbers_are_one_line(override, tmp_path, capsys):
    """optim.lr=inf trained to NaN and the probe then reported 50% with exit 0; noise=nan made every frame 0."""
    args = ["train", str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), f"dataset.root={tmp_path / 'data'}", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    key, value = override.split("=")
    assert err.count("\n") == 1 and err.startswith(f"error: {key}=") and "is not valid" in err, err
    if value in ("inf", "1e999", "nan", "-inf"):
        assert "not a finite number" in err, err
    assert not (tmp_path / "data").exists()


def test_every_number_setting_refuses_nan_and_inf(tmp_path):
    """The sweep over the schema: each key whose rule is a number refuses nan, inf and -inf."""
    from omegaconf import OmegaConf

    from mvcoding.config import check_config
    from mvcoding.schema import SCHEMA

    cfg = load_config(CONFIG_DIR / "synthetic_rgb_flow.yaml", [f"dataset.root={tmp_path}"])
    keys = [k for k, rule in SCHEMA.items() if rule.valid.startswith("a number")]
    assert "optim.lr" in keys and "objective.tau" in keys and "dataset.generate.noise" in keys
    for key in keys:
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key  # the config holds every one
        for value in (float("nan"), float("inf"), float("-inf")):
            bad = OmegaConf.create(OmegaConf.to_container(cfg))
            OmegaConf.update(bad, key, value)
            with pytest.raises(UserError, match=rf"^{key}=.* is not valid: not a finite number"):
                check_config(bad)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"name: x\ntrain:\n\tepochs: 3\n", ":3:1: not valid YAML (found character '\\t' that cannot start any token)"),
        (b"name: x\nname: y\n", ":2:1: not valid YAML (found duplicate key name)"),
        (b"name: [x\n", "not valid YAML (expected ',' or ']'"),
        (b"name: \xff\xfe\n", "is not UTF-8 text (byte 6: b'\\xff'); save it as UTF-8"),
    ],
)
def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "bad.yaml").write_bytes(content)
    assert main(["config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(tmp_path / "bad.yaml") in err, err
