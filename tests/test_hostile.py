"""Hostile input, tried as a new user would: every bad value, file or list line is one line on stderr
starting with "error: " (no traceback) and a non-zero exit, before any work; where the input is legitimate
(a BOM, CRLF line ends, a Latin-1 list file, an absurd but bounded number of epochs), the run goes on.

The cases are parametrised over what a user can get wrong: config values on the command line and in a
config file, the config file itself (YAML errors, not a mapping, missing, a folder), list files (labels of
20 digits, negative, beyond the classes file, empty lists, missing videos, non-UTF-8 bytes), sizes no
machine can allocate; and property-based with hypothesis: random values for every numeric config key and
random list-file lines, each either accepted within the schema's range or refused in one line.

Covered elsewhere, not repeated here: the torn last line of metrics.jsonl, which is legitimate (what a kill
mid-write leaves; the run resumes): test_run_dir.py::test_a_torn_last_line_of_metrics_is_legitimate_and_the_run_goes_on;
every number setting of the schema refusing nan and inf: test_config.py::test_every_number_setting_refuses_nan_and_inf;
a second run on a run.dir in use: test_run_dir.py; damaged cache entries: test_cache_contract.py; undecodable
videos: test_precompute.py, test_cache.py; bad resume checkpoints and full disks: test_faults.py.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import SYNTHETIC, tiny
from mvcoding.cli import main
from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.datasets import listfile
from mvcoding.errors import UserError
from mvcoding.schema import SCHEMA

# reproducible examples (the same ones every run, so a failure reruns as it failed), nothing written to the tree
PROPERTY = {"deadline": None, "database": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}


def one_line(capsys, *fragments: str) -> str:
    """The captured stderr: exactly one line, starting with "error: ", no traceback, holding every fragment."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.endswith("\n") and single_line(err[:-1]), err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def single_line(message: str) -> bool:
    """Whether a message is one line for every reader (str.splitlines splits on \\r, \\x0c, \\u2028 ... too)."""
    return bool(message) and message.splitlines() == [message]


# ----------------------------------------------------------------------------- config values on the command line
BAD_OVERRIDES = [
    # non-finite and absurd numbers
    ("optim.lr=inf", "optim.lr=inf is not valid: not a finite number"),
    ("optim.lr=1e999", "optim.lr=inf is not valid: not a finite number"),  # YAML reads 1e999 as inf
    ("optim.lr=nan", "optim.lr=nan is not valid: not a finite number"),
    ("optim.lr=-inf", "optim.lr=-inf is not valid: not a finite number"),
    ("optim.lr=-1", "optim.lr=-1 is not valid: a number > 0"),
    ("optim.lr=1e308", "optim.lr=1e+308 is not valid: a number > 0 and <= 1000"),  # overflowed float32 in Adam
    ("eval.linear.lr=1e308", "eval.linear.lr=1e+308 is not valid: a number > 0 and <= 1000"),
    ("objective.tau=0", "objective.tau=0 is not valid: a number > 0"),
    ("objective.tau=nan", "objective.tau=nan is not valid: not a finite number"),
    ("dataset.generate.noise=nan", "dataset.generate.noise=nan is not valid: not a finite number"),
    ("dataset.generate.noise=-1", "dataset.generate.noise=-1 is not valid: a number in [0, 255]"),
    ("views.flow.bound=nan", "views.flow.bound=nan is not valid"),
    ("train.clip_grad=-inf", "train.clip_grad=-inf is not valid: not a finite number"),
    ("data.scale=[nan,1]", "data.scale=[nan, 1] is not valid"),
    ("optim.milestones=[0.5,inf]", "optim.milestones=[0.5, inf] is not valid"),
    ("seed=-1", "seed=-1 is not valid: an integer in [0, 4294967295]"),
    ("seed=4294967296", "seed=4294967296 is not valid: an integer in [0, 4294967295]"),  # numpy's seed bound
    ("seed=99999999999999999999999999", "seed=99999999999999999999999999 is not valid"),
    # wrong types
    ("train.batch_size=abc", "train.batch_size='abc' is not valid: an integer >= 1"),
    ("train.batch_size=1.5", "train.batch_size=1.5 is not valid: an integer >= 1"),
    ("objective.K=1.5", "objective.K=1.5 is not valid: an integer >= 1"),
    ("objective.K=1e3", "objective.K=1000.0 is not valid: an integer >= 1"),
    ("optim.lr=true", "optim.lr=True is not valid"),
    ("optim.lr=[1]", "optim.lr=[1] is not valid"),
    ("optim.lr={a:1}", "optim.lr={'a': 1} is not valid"),
    ("optim.lr=null", "optim.lr=None is not valid"),
    ("optim.lr='0.1'", "optim.lr='0.1' is not valid"),
    ("optim.lr=", "optim.lr='' is not valid"),
    ("train.compile=maybe", "train.compile='maybe' is not valid: true or false"),
    # unknown keys
    ("train.epoch=3", "unknown config key train.epoch (in the override train.epoch=3); did you mean train.epochs?"),
    ("+objective.temprature=0.5", "did you mean objective.tau?"),
    ("trian.epochs=3", "unknown config key trian (in the override trian.epochs=3); did you mean train?"),
    ("foo=1", "unknown config key foo (in the override foo=1)"),
    ("+foo.bar=1", "unknown config key foo (in the override +foo.bar=1)"),
    ("views.rgb.encodr=x", "encodr"),
    # override syntax
    ("optim.lr", "Error parsing override 'optim.lr'"),
    ("=", "Could not override ''"),
    ("optim.lr=${nope}", "Interpolation key 'nope' not found"),
    ("optim.lr=abc\ndef", "holds a line break"),
    ("train.epo\nch=3", "holds a line break"),
    ("optim.lr=0.1\r", "holds a line break"),
    ("dataset=nosuch", "Could not find 'dataset/nosuch'"),
    ("~views", "the override ~views removes views, which every run reads"),
]


@pytest.mark.parametrize("override, fragment", BAD_OVERRIDES, ids=[repr(o) for o, _ in BAD_OVERRIDES])
def test_a_bad_override_is_one_line_before_any_work(override, fragment, tmp_path, capsys):
    """The dataset is not even generated: dataset.root stays absent."""
    assert main(["train", SYNTHETIC, f"dataset.root={tmp_path / 'data'}", override]) == 2
    one_line(capsys, fragment)
    assert not (tmp_path / "data").exists()


NUMBER_KEYS = sorted(k for k, rule in SCHEMA.items() if rule.valid.startswith("a number"))


INFINITE = [(k, "inf") for k in NUMBER_KEYS] + [(k, "-1e999") for k in ("objective.tau", "optim.weight_decay")]


@pytest.mark.parametrize("key, value", INFINITE, ids=[f"{k}={v}" for k, v in INFINITE])
def test_every_number_key_refuses_inf_on_the_command_line(key, value, tmp_path):
    """Through Hydra's parser (1e999 reads as inf), for every number setting, those without an upper bound too."""
    with pytest.raises(UserError) as info:
        load_config(SYNTHETIC, [f"dataset.root={tmp_path}", f"{key}={value}"])
    assert single_line(str(info.value)) and str(info.value).startswith(f"{key}=")
    assert "not a finite number" in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- config files
HEAD = "defaults:\n  - base\n  - dataset: synthetic\n  - eval: default\n  - _self_\nviews:\n  rgb: {}\n  flow: {}\n"
DEFAULTS_ONLY = "defaults:\n  - base\n  - dataset: synthetic\n  - eval: default\n  - _self_\n"
DEEP = "{a: " * 200 + "1" + "}" * 200

BAD_FILES = {
    "nested-unknown": (HEAD + "train: {epoch: 3}\n",
        "unknown config key train.epoch (in {path}); did you mean train.epochs?"),
    "nested-misspelt": (HEAD + "objective: {temprature: 0.5}\n",
        "objective.temprature (in {path}); did you mean objective.tau?"),
    "deeper-unknown": (HEAD + "eval: {linear: {foo: {bar: 1}}}\n", "unknown config key eval.linear.foo (in {path})"),
    "top-unknown": (HEAD + "trian: {epochs: 3}\n", "unknown config key trian (in {path}); did you mean train?"),
    "int-key": (HEAD + "train: {3: 4}\n", "unknown config key train.3 (in {path})"),
    "section-scalar": (HEAD + "train: 3\n", "train=3 is not valid (in {path}): a section of settings"),
    "lr-nan": (HEAD + "optim: {lr: .nan}\n", "optim.lr=nan is not valid: not a finite number"),
    "lr-1e999": (HEAD + "optim: {lr: 1e999}\n", "optim.lr=inf is not valid: not a finite number"),
    "lr-text": (HEAD + "optim: {lr: fast}\n", "optim.lr='fast' is not valid: a number > 0"),
    "K-float": (HEAD + "objective: {K: 1.5}\n", "objective.K=1.5 is not valid: an integer >= 1"),
    "noise-nan": (HEAD + "dataset: {generate: {noise: .nan}}\n", "dataset.generate.noise=nan is not valid"),
    "interpolation-cycle": (HEAD + "optim: {lr: '${optim.lr}'}\n", "Recursive interpolation detected"),
    "interpolation-missing": (HEAD + "optim: {lr: '${nope}'}\n", "Interpolation key 'nope' not found"),
    "yaml-syntax": (HEAD + "name: [x\n", "not valid YAML (expected ',' or ']'"),
    "yaml-tab": (HEAD + "train:\n\tepochs: 3\n",
        "not valid YAML (found character '\\t' that cannot start any token); indent with spaces"),
    "yaml-duplicate": (HEAD + "train: {epochs: 3}\ntrain: {epochs: 4}\n",
        ":10:1: not valid YAML (found duplicate key train)"),
    "yaml-python-tag": (HEAD + "name: !!python/object/apply:os.system ['echo x']\n",
        "could not determine a constructor"),
    "non-utf8": (HEAD.encode() + b"name: caf\xe9\n", "is not UTF-8 text (byte 108: b'\\xe9'); save it as UTF-8"),
    "binary": (bytes(range(256)), "is not UTF-8 text (byte 128"),
    "a-list": ("- a\n- b\n", "must be a DictConfig"),
    "a-number": ("42\n", "bad config {path}: Invalid loaded object type: int; a config file is a mapping"),
    "a-string": ("hello\n", "bad config {path}"),
    "empty": ("", "bad config {path}"),
    "defaults-not-a-list": ("defaults: 3\n", "defaults must be a list"),
    "defaults-unknown": ("defaults:\n  - nosuch\n", "Could not load 'nosuch'"),
    "defaults-unknown-group": ("defaults:\n  - base\n  - dataset: nosuch\n", "Could not find 'dataset/nosuch'"),
    "views-scalar": (DEFAULTS_ONLY + "views: 3\n", "views=3 is not valid: a mapping"),
    "view-scalar": (DEFAULTS_ONLY + "views: {rgb: {}, flow: 3}\n", "views.flow=3 is not valid: a mapping of settings"),
    "view-unknown": (DEFAULTS_ONLY + "views: {rgb: {}, nosuch: {}}\n", "unknown view 'nosuch'"),
    "nested-200-deep": (HEAD + f"objective: {{predict: {DEEP}}}\n", "its settings nest too deep to read"),
}  # fmt: skip


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    """A copy of the packaged configs: a config file written there composes base.yaml and the groups."""
    folder = tmp_path_factory.mktemp("hostile") / "configs"
    shutil.copytree(CONFIG_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def write_config(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / f"{name}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, newline="")
    return path


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_config_file_is_one_line_before_any_work(name, config_dir, tmp_path, capsys):
    content, fragment = BAD_FILES[name]
    path = write_config(config_dir, name, content)
    assert main(["train", str(path), f"dataset.root={tmp_path / 'data'}"]) == 2
    one_line(capsys, fragment.format(path=path))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "name, content",
    [
        ("bom", "\ufeff" + HEAD),
        ("crlf", HEAD.replace("\n", "\r\n")),
        ("comments", "# mine\n" + HEAD + "# the end, no newline"),
        ("utf8-name", HEAD + "name: café-ü\n"),
    ],
    ids=["bom", "crlf", "comments", "utf8-name"],
)
def test_a_legitimate_config_file_loads(name, content, config_dir, tmp_path, capsys):
    path = write_config(config_dir, name, content)
    assert main(["config", str(path), f"dataset.root={tmp_path}"]) == 0, capsys.readouterr().err
    assert "views:" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "folder", "folder/", "folder-named-yaml", "empty-name", "device"])
def test_a_config_path_that_is_not_a_config_file_is_one_line(kind, tmp_path, capsys):
    (tmp_path / "x.yaml").mkdir()
    path = {
        "missing": str(tmp_path / "nope.yaml"),
        "folder": str(tmp_path),
        "folder/": f"{tmp_path}/",
        "folder-named-yaml": str(tmp_path / "x.yaml"),
        "empty-name": "",
        "device": "/dev/null",
    }[kind]
    assert main(["train", path]) == 2
    one_line(capsys, f"config {path!r} not found: not a file and not a packaged config")


# ----------------------------------------------------------------------------- legitimate extremes, impossible sizes
EXTREMES = {
    "train.epochs": 10**23,  # absurd, but max_steps ends the run
    "seed": 2**32 - 1,  # the largest seed
    "optim.lr": 1000,  # the largest learning rate
    "objective.tau": 1e-6,  # tiny but finite
}


def test_legitimate_extremes_train(synthetic_root, tmp_path, capsys):
    """All at once (one run is ~1 s): each is accepted and the run goes on."""
    run = tmp_path / "run"
    code = main(["train", SYNTHETIC, *tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1}, **EXTREMES)])
    assert code == 0 and (run / "checkpoints" / "last.pt").is_file(), capsys.readouterr().err
    assert OmegaConf.load(run / "config.yaml").optim.lr == 1000


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"objective.K": 10**14}, "out of memory"),  # 3 PB of negative indices: beyond any address space
        ({"objective.dim": 10**13}, "out of memory"),
        ({"objective.tau": 1e-300}, "loss is nan at step 0"),  # finite, but the logits are not
    ],
    ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) if isinstance(e, dict) else "",
)
def test_sizes_and_values_no_run_can_use_are_one_line(extra, fragment, synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", SYNTHETIC, *tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 1}, **extra)]) == 2
    one_line(capsys, fragment)


# ----------------------------------------------------------------------------- list files
@pytest.fixture
def list_root(tmp_path) -> Path:
    root = tmp_path / "mine"
    for rel in ("a/one.avi", "a/two.avi", "b/three.avi", "a/café.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    (root / "names.txt").write_text("walk\nrun\njump\n")
    return root


def list_cfg(root: Path, **extra) -> dict:
    return {
        "name": "listfile",
        "root": str(root),
        "split": 1,
        "train_list": "train.txt",
        "test_list": "test.txt",
    } | extra


TEST = b"b/three.avi 1\n"
BAD_LISTS = {
    "label-20-digits": (b"a/one.avi 12345678901234567890\n", None,
        "train.txt:1: label 12345678901234567890 but without a classes file the labels must be below 100000"),
    "label-20-digits-classes": (b"a/one.avi 12345678901234567890\n", "names.txt",
        "train.txt:1: label 12345678901234567890 but the classes file names.txt has 3 classes"),
    "label-negative": (b"a/one.avi -3\n", None, "train.txt:1: negative label"),
    "label-beyond-classes": (b"a/one.avi 3\n", "names.txt",
        "train.txt:1: label 3 but the classes file names.txt has 3 classes"),
    "label-float": (b"a/one.avi 1.0\n", None, "train.txt:1: label is not an int"),
    "label-underscore": (b"a/one.avi 1_0\n", None, "train.txt:1: label is not an int"),  # int() reads 10
    "label-fullwidth": ("a/one.avi \uff11\n".encode(), None, "train.txt:1: label is not an int"),  # int() reads 1
    "label-nul": (b"a/one.avi 0\x00\n", None, "train.txt:1: label is not an int"),
    "no-label": (b"a/one.avi\n", None, "train.txt:1: no label"),
    "two-labels": (b"a/one.avi 0\na/one.avi 1\n", None,
        "train.txt:2: label 1 but an earlier line gives this video label 0"),
    "missing-video": (b"a/one.avi 0\na/nope.avi 1\n", None, "1 video named in train.txt and test.txt missing under"),
    "a-folder-as-video": (b"a 0\n", None, "1 video named in"),
    "path-too-long": (b"a/" + b"x" * 5000 + b".avi 0\n", None, "1 video named in"),  # ENAMETOOLONG
    "path-with-nul": (b"a/o\x00ne.avi 0\n", None, "1 video named in"),
    "in-train-and-test": (b"b/three.avi 1\n", None, "both train and test"),
    "utf16": ("a/one.avi 0\n".encode("utf-16"), None, "train.txt:1: label is not an int"),
    "both-empty": (b"", None, "list files"),
    "comments-only": (b"# nothing\n\n   \n", None, "are empty"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_LISTS))
def test_a_bad_list_file_is_one_line(name, list_root):
    train, classes, fragment = BAD_LISTS[name]
    (list_root / "train.txt").write_bytes(train)
    (list_root / "test.txt").write_bytes(b"" if name in ("both-empty", "comments-only") else TEST)
    with pytest.raises(UserError) as info:
        listfile.load(list_cfg(list_root, classes=classes))
    assert single_line(str(info.value)) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "kind, cfg, fragment",
    [
        ("list-missing", {"train_list": "nope.txt"}, "list file (dataset.train_list)"),
        ("list-is-a-folder", {"train_list": "a"}, "is not a file"),
        ("list-name-too-long", {"train_list": "x" * 5000}, "list file (dataset.train_list)"),
        ("classes-empty", {"classes": "empty.txt"}, "classes file"),
        ("classes-repeat", {"classes": "twice.txt"}, "class repeats line 1"),
        ("root-missing", {"root": "/nonexistent/videos"}, "dataset.root=/nonexistent/videos does not exist"),
        ("split-bad", {"split": "1.5"}, "dataset.split='1.5' is not valid"),
    ],
    ids=[
        "list-missing",
        "list-is-a-folder",
        "list-name-too-long",
        "classes-empty",
        "classes-repeat",
        "root-missing",
        "split-bad",
    ],
)
def test_bad_list_settings_are_one_line(kind, cfg, fragment, list_root):
    (list_root / "train.txt").write_bytes(b"a/one.avi 0\n")
    (list_root / "test.txt").write_bytes(TEST)
    (list_root / "empty.txt").write_bytes(b"\n")
    (list_root / "twice.txt").write_bytes(b"walk\nwalk\n")
    with pytest.raises(UserError) as info:
        listfile.load(list_cfg(list_root) | cfg)
    assert single_line(str(info.value)) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "name, train, ids",
    [
        ("latin1-path", "a/café.avi 0\n".encode("latin-1"), [("a/café", 0)]),  # a Latin-1 list, UTF-8 names on disk
        ("latin1-comment", b"# \xff\xfe\na/one.avi 0\n", [("a/one", 0)]),
        ("bom-crlf", b"\xef\xbb\xbfa/one.avi 0\r\na/two.avi 2\r\n", [("a/one", 0), ("a/two", 2)]),
        ("plus-and-zeros", b"a/one.avi +0\na/two.avi 002\n", [("a/one", 0), ("a/two", 2)]),
        ("tabs-and-blanks", b"\n\ta/one.avi\t0\t\n\n", [("a/one", 0)]),
    ],
    ids=["latin1-path", "latin1-comment", "bom-crlf", "plus-and-zeros", "tabs-and-blanks"],
)
def test_a_legitimate_list_file_parses(name, train, ids, list_root):
    (list_root / "train.txt").write_bytes(train)
    (list_root / "test.txt").write_bytes(TEST)
    index = listfile.load(list_cfg(list_root))
    assert [(r.video_id, r.label) for r in index.train] == ids
    assert len(index.classes) == max(label for _, label in ids + [("", 1)]) + 1


@pytest.mark.parametrize(
    "train, fragment",
    [
        (b"a/one.avi 12345678901234567890\n", "label 12345678901234567890 but without a classes file"),  # was 22 GB
        (b"", "exceeds the 0 training videos"),
        (b"a/one.avi x\n", "train.txt:1: label is not an int"),
    ],
    ids=["label-20-digits", "empty-train-list", "label-text"],
)
def test_a_bad_list_file_through_the_cli_is_one_line(train, fragment, list_root, tmp_path, capsys):
    (list_root / "train.txt").write_bytes(train)
    (list_root / "test.txt").write_bytes(TEST)
    args = [f"dataset.root={list_root}", "dataset.train_list=train.txt", "dataset.test_list=test.txt"]
    run = [f"run.dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}", "train.max_steps=1"]
    assert main(["train", SYNTHETIC, "dataset=listfile", *args, *run]) == 2
    one_line(capsys, fragment)


# ----------------------------------------------------------------------------- property-based: config values
NUMERIC = sorted(k for k, rule in SCHEMA.items() if rule.valid.startswith(("a number", "an integer")))
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),  # hypothesis favours nan, inf, 0, extremes
    st.sampled_from(["nan", "inf", "-inf", ".nan", ".inf", "1e999", "-1e999", "NaN", "Infinity", "1e308", "1e-320"]),
)
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["0x10", "1_000", "null", "true", "[]", "{}", "'1'", "${seed}", "-0", "+1", "1e3", "4294967296",
                     "a\nb", "1\r", "x\u2028y"]),
)  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def accepted_in_range_or_one_line(key: str, value: str, root: Path) -> None:
    try:
        cfg = load_config(SYNTHETIC, [f"dataset.root={root}", f"{key}={value}"])
    except UserError as e:
        assert single_line(str(e)), repr(str(e))
        return
    got = OmegaConf.select(cfg, key)
    assert SCHEMA[key].ok(got), (key, value, got)
    assert got is None or (isinstance(got, int | float) and math.isfinite(got)), (key, value, got)


@settings(max_examples=30, **PROPERTY)  # a config composes in ~0.15 s
@given(key=st.sampled_from(NUMBER_KEYS), value=FLOATS)
def test_any_float_for_a_number_key_is_accepted_in_range_or_one_line(key, value, data_root):
    accepted_in_range_or_one_line(key, value, data_root)


@settings(max_examples=30, **PROPERTY)
@given(key=st.sampled_from(NUMERIC), value=st.one_of(FLOATS, VALUES))
def test_any_text_for_a_numeric_key_is_accepted_in_range_or_one_line(key, value, data_root):
    accepted_in_range_or_one_line(key, value, data_root)


def test_the_numeric_keys_cover_every_float_setting():
    wanted = {"optim.lr", "objective.tau", "dataset.generate.noise", "objective.K", "seed", "eval.linear.lr"}
    assert wanted <= set(NUMERIC)


# ----------------------------------------------------------------------------- property-based: list-file lines
ODD_PATHS = ["nope.avi", "a", ".", "../x.avi", "/dev/null", "~/x.avi", "a//one.avi", "./a/two.avi", "x" * 300]
LABELS = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.text(max_size=6),
    st.floats().map(repr),
    st.sampled_from(["1_0", "\uff11", "\u0663", "+1", "0x1", "007", "", "-0", "1.0", "0\x00"]),
)


def list_file(paths: dict[str, int]):
    """List files of mostly well-formed lines (`paths`: videos that exist and their labels) mixed with odd labels,
    odd paths, random text and random bytes, CRLF or LF."""
    good = st.sampled_from([f"{path} {label}" for path, label in paths.items()])
    odd = st.one_of(
        st.tuples(st.sampled_from(list(paths)), LABELS).map(lambda t: f"{t[0]} {t[1]}"),
        st.tuples(st.sampled_from([*paths, *ODD_PATHS]), LABELS).map(lambda t: f"{t[0]}\t{t[1]}"),
        st.text(max_size=40),
    )
    text = st.one_of(good, good, good, good, odd).map(lambda s: s.encode("utf-8", "surrogatepass"))
    lines = st.lists(st.one_of(text, text, text, st.binary(max_size=40)), max_size=5)
    return st.tuples(lines, st.sampled_from([b"\n", b"\r\n"])).map(lambda t: t[1].join(t[0]))


TRAIN_PATHS = {"a/one.avi": 0, "a/two.avi": 1, "a/café.avi": 2}
TEST_PATHS = {"b/three.avi": 1, "b/four.avi": 0}


@pytest.fixture(scope="module")
def property_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lists")
    for rel in [*TRAIN_PATHS, *TEST_PATHS]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    (root / "names.txt").write_text("walk\nrun\njump\n")
    return root


@settings(max_examples=100, **PROPERTY)
@given(
    train=list_file(TRAIN_PATHS),
    test=list_file(TEST_PATHS),
    classes=st.sampled_from([None, "names.txt"]),
    allow_missing=st.booleans(),
)
def test_any_list_file_is_a_valid_index_or_one_line(train, test, classes, allow_missing, property_root):
    (property_root / "train.txt").write_bytes(train)
    (property_root / "test.txt").write_bytes(test)
    cfg = list_cfg(property_root, classes=classes, allow_missing=allow_missing)
    try:
        index = listfile.load(cfg)
    except UserError as e:
        assert single_line(str(e)), repr(str(e))
        return
    assert 0 < len(index.classes) <= listfile.MAX_CLASSES
    if classes:
        assert index.classes == ["walk", "run", "jump"]
    for subset in (index.train, index.test):
        assert len({r.video_id for r in subset}) == len(subset)
        for r in subset:
            assert 0 <= r.label < len(index.classes) and type(r.label) is int, r
            assert os.path.isfile(r.path), r
    assert not {r.video_id for r in index.train} & {r.video_id for r in index.test}
    decimals = labels_written(train) | labels_written(test)
    assert all(r.label in decimals for r in index.train + index.test), (decimals, index)


def labels_written(data: bytes) -> set[int]:
    """The labels a list file spells in ASCII decimal (`path label`, a sign allowed): what a parse may return."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    fields = (line.strip().rsplit(None, 1) for line in text.splitlines())
    return {int(f[1]) for f in fields if len(f) == 2 and re.fullmatch(r"[+-]?[0-9]+", f[1])}


@settings(max_examples=100, **PROPERTY)
@given(label=LABELS, classes=st.sampled_from([None, "names.txt"]))
def test_a_label_is_read_as_ascii_decimal_or_one_line(label, classes, property_root):
    """int() alone reads `1_0` as 10 and other scripts' digits (`\u0663` as 3)."""
    (property_root / "train.txt").write_bytes(f"a/one.avi {label}\n".encode("utf-8", "surrogatepass"))
    (property_root / "test.txt").write_bytes(b"b/three.avi 1\n")
    try:
        index = listfile.load(list_cfg(property_root, classes=classes))
    except UserError as e:
        assert single_line(str(e)), repr(str(e))
        return
    assert re.fullmatch(r"[+-]?[0-9]+", label.strip()) and index.train[0].label == int(label), (label, index.train)
