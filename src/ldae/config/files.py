"""Presets and YAML files: finding a preset by name, resolving its ``inherit`` chain, reading a
run's saved config.yaml; every failure is a one-line ``ConfigError`` naming the file."""
from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, shown

PRESET_DIR = Path(__file__).parent.parent / "configs"

PRESET_KINDS = ("pretrain", "scale", "trajectory")


def preset_names(kind: str = "pretrain") -> list[str]:
    """Presets of one kind: ``pretrain`` (``-c NAME``), ``scale`` (``ldae trajectory --scale``) or
    ``trajectory`` (the paper's rows, ``ldae trajectory --rows``)."""
    return sorted(p.stem for p in (PRESET_DIR / kind).glob("*.yaml"))


def is_file(p: Path) -> bool:
    """``p.is_file()``, False for names the OS refuses (too long, embedded NUL)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def find_preset(name: str, kind: str = "pretrain") -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not is_file(p):
            raise ConfigError(f"config file {shown(p)} does not exist; give a path to a YAML file "
                              f"or one of the presets: {', '.join(preset_names(kind))}.")
        return p
    if "/" in name and name.split("/", 1)[0] in PRESET_KINDS:  # inherit: pretrain/cifar10-gpu
        kind, name = name.split("/", 1)
    hit = PRESET_DIR / kind / f"{name}.yaml"
    if not is_file(hit):
        names = preset_names(kind)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        what = {"pretrain": "preset", "scale": "scale", "trajectory": "trajectory row"}[kind]
        raise ConfigError(f"unknown {what} '{shown(name)}'.{hint} Choices: {', '.join(names)}"
                          f"{' (or give a path to a .yaml file)' if kind == 'pretrain' else ''}.")
    return hit


def _read_yaml(name: str, seen: tuple[str, ...] = (), kind: str = "pretrain") -> dict[str, Any]:
    path = find_preset(name, kind)
    if str(path.resolve()) in seen:
        raise ConfigError(f"preset {shown(path)} inherits from itself (chain: "
                          f"{shown(' -> '.join(seen), 600)}).")
    raw = copy.deepcopy(_parse_yaml(str(path.resolve()), path.stat().st_mtime_ns))
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown(path)} must hold a mapping of sections (data:, model:, ...), "
                          f"not a {type(raw).__name__}.")
    parent = raw.pop("inherit", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{shown(path)}: inherit: {shown(parent)} must name a preset or a .yaml "
                          "file, e.g. inherit: cifar10-cpu.")
    if path.parent.resolve().parent == PRESET_DIR.resolve():  # a bare parent name: same kind
        kind = path.parent.name
    base = _read_yaml(parent, seen + (str(path.resolve()),), kind)
    return _merge(base, raw)


def _yaml_error(e: Exception) -> str:
    """A PyYAML error (several lines with a source snippet) as one line: what it was reading
    and where, then the problem and where."""
    def at(mark) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    if not problem and not context:
        return shown(" ".join(str(e).split()), 200)
    head = f"{shown(context, 100)}{at(getattr(e, 'context_mark', None))}: " if context else ""
    return f"{head}{shown(problem or '', 200)}{at(getattr(e, 'problem_mark', None))}"


@functools.lru_cache(maxsize=512)
def _parse_yaml(path: str, mtime_ns: int) -> Any:
    """One parse per file version (the trajectory reads each row's chain many times)."""
    return _load_yaml_file(path)


def _load_yaml_file(path: str) -> Any:
    """A YAML file's content (None for an empty file); every failure, of reading or of parsing,
    is a ConfigError of one line that names the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{shown(path)} is not UTF-8 text; a config must be a YAML file.") from None
    except OSError as e:
        raise ConfigError(f"cannot read {shown(path)}: {shown(e.strerror or e)}.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse YAML in {shown(path)}: {_yaml_error(e)}.") from None
    except Exception as e:  # noqa: BLE001 -- only yaml.safe_load runs here
        # PyYAML's constructors raise plain exceptions for scalars that match a tag but do not
        # convert: a date 2001-13-45 or '!!float abc' (ValueError), an int of more than 4300
        # digits (ValueError), '!!bool' (KeyError), '!!timestamp x' (AttributeError); deep
        # nesting raises RecursionError
        raise ConfigError(f"cannot parse YAML in {shown(path)}: a value does not convert "
                          f"({shown(e, 200)}).") from None
    return {} if raw is None else raw  # an empty file is an empty mapping


def read_config_file(path: Path) -> dict[str, Any]:
    """A saved config (a run dir's config.yaml) as a dict; unreadable, malformed or non-mapping
    files raise a ConfigError that names the file."""
    path = Path(path)
    if not is_file(path):
        raise ConfigError(f"config file {shown(path)} does not exist.")
    raw = _load_yaml_file(str(path))  # not cached: a run rewrites its config.yaml
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown(path)} must hold a mapping of sections (data:, model:, ...), "
                          f"not a {type(raw).__name__}; restore it from a backup or rerun.")
    return raw


def read_preset(name: str, kind: str = "pretrain") -> dict[str, Any]:
    """The merged YAML of a preset (its ``inherit`` chain resolved), not yet applied."""
    return _read_yaml(name, kind=kind)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
