"""Configs: a YAML path or a packaged config's name, plus Hydra overrides, composed with Hydra's compose API.

    cfg = load_config("configs/ucf101_rgb_flow.yaml", ["dataset.root=/data/ucf101"])
    cfg = load_config("ucf101_rgb_flow", ["dataset.root=/data/ucf101"])  # the packaged configs/ucf101_rgb_flow.yaml

The config's folder is the Hydra config directory, so its defaults list composes the groups next to
it (dataset/, eval/, ...). The result is in struct mode: a misspelt key is an error naming it.
The top-level configs/ folder ships inside the package as `mvcoding.configs` (package data), so names
resolve after a plain `pip install .` from any folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from mvcoding.errors import UserError, first_line
from mvcoding.files import HELD_LOCKS


def _config_dir() -> Path:
    """The packaged configs (`mvcoding.configs`, mapped to the top-level configs/ folder), else the source tree's."""
    from importlib.resources import files

    try:
        root = files("mvcoding.configs")
        # configs/ has no __init__.py: a namespace package, whose files() is a MultiplexedPath, not a Path
        base = root if isinstance(root, Path) else root.joinpath("base.yaml").parent
        if (Path(base) / "base.yaml").is_file():
            return Path(base)
    except (ImportError, TypeError, ValueError, AttributeError):
        pass
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()
TOP_KEYS = {
    "name",
    "seed",
    "device",
    "resume",
    "checkpoint",
    "run",
    "cache",
    "data",
    "train",
    "objective",
    "optim",
    "precompute",
    "eval",
    "views",
    "dataset",
    "log",
}


def packaged_configs() -> list[str]:
    """The names of the packaged experiment configs (configs/*.yaml but base), for `load_config(name)`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


def resolve_config(path: str | Path) -> Path:
    """The YAML file of `path`: an existing file, else a packaged config's name (no slash, with or without .yaml)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    text = str(path)
    if text and "/" not in text and "\\" not in text:
        name = text.removesuffix(".yaml")
        if name in packaged_configs() or name == "base":
            return CONFIG_DIR / f"{name}.yaml"
    raise UserError(
        f"config {text!r} not found: not a file and not a packaged config; name one of {', '.join(packaged_configs())} "
        "(e.g. mvcoding train synthetic_rgb_flow) or pass a YAML path such as configs/synthetic_rgb_flow.yaml"
    )


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the config at `path` (a YAML file, or a packaged config's name: `packaged_configs()`) with
    `overrides` (key=value strings) and check it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    path = resolve_config(path)
    given = list(overrides)
    for o in given:  # a line break would split every message that names the override (str.splitlines' breaks too)
        if len(f"{o}.".splitlines()) > 1:
            raise UserError(f"the override {o!r} holds a line break; give each key=value on one line")
    # a view's settings are checked by its factory (naming the key and the valid ones), so
    # `views.rgb.width=16` may add a setting the YAML file leaves at its default
    overrides = [f"++{o}" if o.startswith("views.") else o for o in overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.resolve().parent), version_base=None):
            groups = [
                o for o in given if "." not in o.partition("=")[0] and (path.parent / o.partition("=")[0]).is_dir()
            ]
            reference = _reference(path, groups)
            for o in given:
                check_override(o, reference)
            try:
                cfg = compose(config_name=path.stem, overrides=list(overrides))
            except (ValueError, OSError) as e:  # Hydra's own: `defaults: 3`; a file that holds a number, not keys
                if isinstance(e, UnicodeDecodeError):
                    raise
                raise UserError(f"bad config {path}: {first_line(e)}; a config file is a mapping (key: value)") from e
        OmegaConf.resolve(cfg)
        check_keys(OmegaConf.to_container(cfg, resolve=False), reference, where=_where(path, given))
        check_config(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        first = first_line(e)
        raise UserError(f"bad config {path} {' '.join(overrides)}: {first}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(yaml_problem(e, path)) from e
    except RecursionError as e:  # OmegaConf walks nested mappings recursively
        raise UserError(f"config {path}: its settings nest too deep to read; flatten them") from e
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def yaml_problem(e: Exception, path: Path) -> str:
    """One line for a config file that is not YAML: a syntax error, a tab, a duplicate key, bytes not UTF-8."""
    if isinstance(e, UnicodeDecodeError):
        return (
            f"config {path} is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); save it as UTF-8"
        )
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or first_line(e)
    hint = "; indent with spaces, not tabs" if "\\t" in str(problem) or "\t" in str(problem) else ""
    return f"config {where}: not valid YAML ({problem}){hint}; fix that line"


# --- the keys a config may hold -------------------------------------------------------------------

REFERENCE = "__mvcoding_reference__"  # the config file's defaults list alone, composed (a ConfigStore entry)
OPEN = ("views",)  # sections whose keys are checked elsewhere: a view's factory checks its settings
SYNONYMS = {
    "temperature": "tau",
    "temp": "tau",
    "t": "tau",
    "learning_rate": "lr",
    "nce_k": "K",
    "k": "K",
    "negatives_k": "K",
    "epoch": "epochs",
    "steps": "max_steps",
    "bs": "batch_size",
    "batch": "batch_size",
    "wd": "weight_decay",
    "decay": "weight_decay",
    "workers_num": "workers",
}


def _packaged(name: str) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / name), resolve=False)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _reference(path: Path, groups: Sequence[str] = ()) -> dict:
    """The keys a config at `path` may hold: what its defaults list composes to (base.yaml and the groups
    it names, or those `groups` overrides choose: dataset=listfile) without the file's own keys,
    completed by the packaged base.yaml and eval/default.yaml for a file without a defaults list (a
    saved config.yaml, a hand-written full config). Call inside initialize_config_dir of its folder."""
    from hydra import compose
    from hydra.core.config_store import ConfigStore

    reference: dict = {}
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a YAML error: compose reports it
        raw = None
    defaults = raw.get("defaults") if isinstance(raw, dict) else None
    if isinstance(defaults, list) and defaults:
        ConfigStore.instance().store(name=REFERENCE, node={"defaults": defaults})
        try:
            reference = OmegaConf.to_container(compose(config_name=REFERENCE, overrides=list(groups)), resolve=False)
        except Exception:  # the real composition reports what is wrong with the defaults list
            reference = {}
    base = _packaged("base.yaml")
    for key, value in {**base, "eval": _packaged("eval/default.yaml")}.items():
        reference.setdefault(key, value)
    return reference


def _nearest(key: str, valid: list[str]) -> str | None:
    """The valid key close to a misspelt `key` (case-insensitive; a few synonyms: temperature -> tau), or None."""
    import difflib

    lower = {v.lower(): v for v in valid}
    synonym = SYNONYMS.get(key.lower())
    if synonym in valid:
        return synonym
    close = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=0.6)
    if close:
        return lower[close[0]]
    known = difflib.get_close_matches(key.lower(), list(SYNONYMS), n=1, cutoff=0.75)
    return SYNONYMS[known[0]] if known and SYNONYMS[known[0]] in valid else None


def _unknown(key: str, node: dict, where: str) -> UserError:
    """The UserError for `key` (dotted) that is not among `node`'s keys: the nearest valid one, else all."""
    parent, _, last = key.rpartition(".")
    valid = [str(k) for k in node]
    near = _nearest(last, valid)
    if near:
        hint = f"did you mean {parent + '.' if parent else ''}{near}?"
    else:
        hint = f"valid keys {'of ' + parent if parent else 'at the top'}: {', '.join(sorted(valid, key=str.lower))}"
    return UserError(f"unknown config key {key}{where}; {hint}")


def _where(path: Path, overrides: Sequence[str]):
    """where(key) -> ' (in the override X)' or ' (in FILE)': which input set a key."""

    def where(key: str) -> str:
        for o in overrides:
            k = o.partition("=")[0].lstrip("+~")
            if key == k or key.startswith(f"{k}.") or k.startswith(f"{key}."):
                return f" (in the override {o})"
        return f" (in {path})"

    return where


def check_keys(cfg: dict, reference: dict, *, where, prefix: str = "") -> None:
    """UserError for the first key of `cfg` (nested) that `reference` does not hold, naming the nearest valid
    one; the sections in OPEN, and values the reference leaves null (objective.predict), hold any keys."""
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if key == "defaults" and not prefix:
            continue
        if not prefix and key in OPEN:
            continue
        if key not in reference:
            if not prefix and key in TOP_KEYS:  # a section the defaults do not give (dataset: set by the file)
                continue
            if not prefix:
                raise _unknown(full, {k: None for k in TOP_KEYS}, where(full))
            raise _unknown(full, reference, where(full))
        ref = reference[key]
        if isinstance(ref, dict) and ref:
            if not isinstance(value, dict):
                raise UserError(
                    f"{full}={value!r} is not valid{where(full)}: a section of settings ({', '.join(map(str, ref))})"
                )
            if full == "dataset" and value.get("name") != ref.get("name"):
                continue  # another dataset than the defaults' group: its reader checks its keys
            check_keys(value, ref, where=where, prefix=f"{full}.")


def check_override(override: str, reference: dict) -> None:
    """UserError for an override that names a key no config holds (`train.epoch=3`, `+objective.temprature=1`)
    or removes one every run reads (`~views`, `~train.batch_size`); a view's settings are its factory's."""
    key, eq, _ = override.partition("=")
    removal = key.startswith("~")
    key = key.lstrip("+~")
    if not key or key.split(".")[0] in OPEN and not (removal and key in OPEN):
        return
    node, parts = reference, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or (not node and i > 0):
            return  # below a value the reference leaves open (null, {}): checked by the schema
        if part not in node:
            if i == 0 and part in TOP_KEYS:
                return
            if removal:
                return  # removing what is not there: nothing to remove
            top = {k: None for k in TOP_KEYS}
            raise _unknown(".".join(parts[: i + 1]), node if i else top, f" (in the override {override})")
        node = node[part]
    if removal:
        raise UserError(
            f"the override {override} removes {key}, which every run reads; set it to another value instead ({key}=...)"
        )


def check_config(cfg: DictConfig) -> None:
    """Raise UserError for keys and values the trainer cannot use, naming the key and what is valid
    (types and ranges: mvcoding.schema), and for combinations that cannot work."""
    from mvcoding.schema import check

    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r}; valid top-level keys: {', '.join(sorted(TOP_KEYS))}")
    check(cfg)
    views = list(cfg.views or {})
    o = cfg.objective
    if len(views) < 2 and o.name == "cmc":
        raise UserError(f"CMC needs at least 2 views, the config has {views}; add one under views:")
    if o.graph == "core" and o.name == "cmc" and o.anchor not in views:
        raise UserError(f"objective.anchor={o.anchor!r} is not one of the views {views}; set objective.anchor=<view>")


def run_dir(cfg: DictConfig) -> Path:
    """The run directory: run.dir, or runs/<name>-<timestamp>."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


LOCK = ".lock"  # in a run directory while a run writes it (removed at its end; a killed run's is stale)


@contextmanager
def lock_run_dir(out: Path, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on the run directory `out` (created) while the block runs: a second run on
    it is a UserError naming the holder (its pid and `what` it is). The lock is an flock on <out>/.lock,
    so the kernel releases it when its holder dies, however it dies (kill -9 included): a stale file
    blocks nothing. The file goes when the block ends, and so does `out` if the lock made it and the block
    left it empty (a run that failed before any work leaves no folder)."""
    import fcntl

    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run.dir={out} ({e.strerror or e}); choose another run.dir") from e
    path = out / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write in run.dir={out} ({e.strerror or e}); choose another run.dir") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid, _, kind = os.read(fd, 200).decode(errors="replace").strip().partition(" ")
            finally:
                os.close(fd)
            raise UserError(
                f"run.dir={out} is in use by another {kind or 'run'} (pid {pid or '?'}); wait for it to end, or "
                "choose another run.dir"
            ) from None
        except OSError:  # a file system without flock: run unlocked, as before
            os.close(fd)
            fd = None
            break
        try:  # the file we locked is still the one at `path`, not one a finishing run just removed
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if fd is None:
        yield
        return
    HELD_LOCKS.add(fd)
    try:
        try:  # who holds it, for the message of a second run
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {what}\n".encode())
        except OSError:  # a full disk: the run's first write says so
            pass
        yield
    finally:
        try:
            os.unlink(path)
            if made:
                out.rmdir()  # only when empty: OSError otherwise
        except OSError:
            pass
        HELD_LOCKS.discard(fd)
        os.close(fd)
