"""Building a ``Config``: defaults -> a preset or a saved config -> layers -> ``key=value``
overrides, each value checked against the schema's type annotation; then :func:`validate`.

Also the plain-data views of a config: its YAML, its path settings made absolute, the keys in
which two configs differ.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, shown
from .checks import validate
from .files import read_preset
from .schema import Config


def _quoted(value: Any) -> str:
    """``shown``, with text in quotes (so that 'abc' and abc-the-number read apart)."""
    return f"'{shown(value)}'" if isinstance(value, str) else shown(value)


_FLOAT_RE = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|inf|infinity|nan)", re.IGNORECASE)
_INT_LIMIT = 2 ** 63  # every int field ends up in torch / numpy, which hold 64 bits


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``typ``; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_LIMIT < value < _INT_LIMIT:
                raise ConfigError(f"{key}={shown(value, 40)} is out of range: an integer setting "
                                  "must lie within +-9.2e18 (64 bits).")
            return value
    elif typ is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                out = float(value)
            except OverflowError:  # an int beyond 1.8e308
                out = math.inf
            if not math.isfinite(out):
                raise ConfigError(f"{key}={shown(value, 40)} is not a finite number; give a finite "
                                  f"value (e.g. {key}=1.0).")
            return out
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                text = str(value)
            except ValueError:  # an int of more than 4300 digits
                text = None
            if text is not None:
                bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
                if bad is not None:  # NUL breaks every file API; a line break, every message
                    raise ConfigError(f"{key}='{shown(text)}' holds the control character "
                                      f"{bad.encode('unicode_escape').decode('ascii')}; a config "
                                      "value must be one line of text.")
                return text
    elif origin is tuple:
        args = typing.get_args(typ)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    tname = getattr(typ, "__name__", str(typ))
    hint = {bool: "true or false", int: "a whole number", float: "a number, e.g. 1e-4",
            str: "text"}.get(typ, "")
    if origin is tuple:
        args = typing.get_args(typ)
        n = "" if args[-1] is Ellipsis else f"{len(args)} "
        hint = f"a list of {n}{args[0].__name__} values, e.g. {key}=[...]"
    raise ConfigError(f"{key}={_quoted(value)} has the wrong type: expected {tname}"
                      f"{f' ({hint})' if hint else ''}.")


class _Item:
    """An override's value as YAML reads it, with the text as typed: a str field takes the text
    unless YAML reads it as a string (``data.path=010`` is the folder '010', not the octal int 8;
    ``data.train_split=no`` is 'no', not False; ``data.path=C:`` is 'C:', not a mapping)."""
    __slots__ = ("value", "text")

    def __init__(self, value: Any, text: str):
        self.value, self.text = value, text

    def for_type(self, typ: Any) -> Any:
        if typ is str and not isinstance(self.value, str):
            return self.text.strip()
        return self.value


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        where = f"'{prefix[:-1]}'" if prefix else "a config"
        raise ConfigError(f"{where} must be a mapping of keys, not {shown(data, 60)}.")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for k, v in data.items():
        key = f"{prefix}{shown(k, 80)}"
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}'.{hint} Valid keys here: "
                              f"{', '.join(prefix + n for n in names)}.")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                first = dataclasses.fields(cur)[0].name
                shown_v = shown(v.value if isinstance(v, _Item) else v, 60)
                raise ConfigError(f"'{key}' is a section, not a value ({key}={shown_v}); set its "
                                  f"keys, e.g. {key}.{first}=... (in YAML: '{key}:' with indented keys).")
            _apply(cur, v, prefix=f"{key}.")
        else:
            if isinstance(v, _Item):
                v = v.for_type(hints[k])
            setattr(obj, k, _coerce(v, hints[k], key))


def _yaml_value(raw: str) -> Any:
    """An override's value text as YAML; text YAML cannot read (or convert) stays text."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except Exception:  # noqa: BLE001 -- YAML errors, and PyYAML's constructors' plain exceptions
        # (2001-13-45, '!!float abc', '!!bool', > 4300 digits, deep nesting): see _parse_yaml
        return raw


def _override_tree(items: list[str], keep_text: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override '{shown(item)}' must look like section.key=value "
                              "(e.g. optim.epochs=10).")
        key, _, raw = item.partition("=")
        value = _yaml_value(raw)
        node = out
        parts = key.strip().split(".")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"override key '{shown(key)}' is malformed (in '{shown(item)}'); use "
                              "section.key=value, e.g. optim.epochs=10.")
        parts = [p.strip() for p in parts]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{shown(item)}' conflicts with an earlier override "
                                  f"of '{shown(p)}'.")
        node[parts[-1]] = _Item(value, raw) if keep_text else value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``section.key=value`` items as a nested dict, each value parsed as YAML."""
    return _override_tree(items, keep_text=False)


def load_config(preset: str | None = None, overrides: list[str] | None = None,
                check: bool = True, base: dict[str, Any] | None = None,
                layers: list[dict[str, Any]] | None = None) -> Config:
    """Build a config: defaults, then ``base`` (e.g. a run's saved config) or ``preset`` (a name
    or a YAML path), then each of ``layers`` (plain dicts, in order), then ``overrides``."""
    cfg = Config()
    if base is not None:
        _apply(cfg, base)
    if preset:
        _apply(cfg, read_preset(preset))
    for layer in layers or []:
        _apply(cfg, layer)
    _apply(cfg, _override_tree(list(overrides or []), keep_text=True))
    if check:
        validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], check: bool = True) -> Config:
    return load_config(None, None, check=check, base=data)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


#: the settings that name files or folders: a run's saved config holds them absolute, so the run
#: dir works from any directory (``timm:NAME`` sources are names, not paths)
PATH_KEYS = ("data.path", "tokenizer.path", "tokenizer.perceptual_weights", "tokenizer.pretrained",
             "vit.source", "vit.weights", "fid.weights", "fid.cache_dir")


def absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """A copy of ``cfg`` with every ``PATH_KEYS`` setting made absolute (relative to ``base``,
    default the current directory; ``~`` expanded; symlinks kept as named)."""
    out = copy.deepcopy(cfg)
    root = Path(base) if base is not None else Path.cwd()
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(out, section), name)
        if value and not value.startswith("timm:"):
            setattr(getattr(out, section), name,
                    os.path.normpath(str(root / Path(value).expanduser())))
    return out


def diff_configs(a: Config, b: Config) -> list[str]:
    """Leaf keys whose values differ, as ``key: a -> b`` lines (path settings compared as
    absolute paths, so a run saved with absolute paths matches the same relative ones)."""
    a, b = absolute_paths(a), absolute_paths(b)
    out = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict):
            for k in x:
                walk(x[k], y.get(k), f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix[:-1]}: {y!r} -> {x!r}")

    walk(b.to_dict(), a.to_dict(), "")
    return out
