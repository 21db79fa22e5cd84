"""Bad config, fuzzed (issue 7, item 6): random keys, values, types and YAML thrown at the config
layer (src/ldae/config/) and at the CLI (src/ldae/cli/). Every case must end in success or in
an ``LdaeError`` whose message is one paragraph, never in a traceback.

Each property is a hypothesis test with a fixed seed (``derandomize``) and no example database,
so CI runs the same examples every time; the ``@example`` lines are the bugs the fuzzing found.
No real work starts: the CLI's engine entry points are replaced by a stub that raises a private
sentinel, and every path the CLI sees lies in a temporary directory.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import re
import typing

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ldae.cli import build_parser
from ldae.config import (Config, choices, config_from_dict, dump_yaml, load_config, preset_names,
                         validate)
from ldae.errors import LdaeError

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                # the fixtures used (a module's tmp dir and stubs) hold nothing an example changes
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def fuzz(n: int) -> settings:
    """The fixed-seed settings with ``n`` examples."""
    return settings(FUZZ, max_examples=n)


# ---------------------------------------------------------------- the schema's keys
def _leaves(obj, prefix: str = "") -> dict[str, typing.Any]:
    """Every leaf key of the schema (``optim.blr``) with its annotation."""
    out = {}
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        cur = getattr(obj, f.name)
        if dataclasses.is_dataclass(cur):
            out.update(_leaves(cur, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


LEAVES = _leaves(Config())
KEYS = sorted(LEAVES)
SECTIONS = [f.name for f in dataclasses.fields(Config)]
CHOICES = choices()
CHOICE_VALUES = sorted({v for vs in CHOICES.values() for v in vs})


# ---------------------------------------------------------------- the one-paragraph property
def assert_one_paragraph(msg: str, limit: int = 1500) -> None:
    assert msg and msg.strip(), "empty error message"
    assert "\n" not in msg, f"message spans several lines: {msg!r}"
    assert len(msg) < limit, f"message of {len(msg)} characters: {msg[:300]!r}..."
    assert "Traceback (most recent call last)" not in msg  # (a bare "Traceback" can be the input echoed)
    # not just an exception's repr ("ValueError('x')") or a bare type name
    assert not re.fullmatch(r"\w*(Error|Exception)(\(.*\))?", msg), msg
    assert msg.isprintable(), f"message holds control characters: {msg!r}"


def outcome(fn, *args, **kwargs):
    """``fn(...)``'s result, or the message of the LdaeError it raised (checked); any other
    exception escapes and fails the test."""
    try:
        return fn(*args, **kwargs)
    except LdaeError as e:
        assert_one_paragraph(str(e))
        return str(e)


# ---------------------------------------------------------------- strategies: keys and values
def _misspell(key: str, i: int, c: str, how: int) -> str:
    i %= len(key) + 1
    if how == 0:
        return key[:i] + key[i + 1:]  # drop a character
    if how == 1:
        return key[:i] + c + key[i:]  # insert one
    if how == 2 and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]  # swap two
    return key.upper() if how == 3 else key + "." + c


override_keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),
    st.sampled_from(SECTIONS),
    st.builds(_misspell, st.sampled_from(KEYS), st.integers(0, 40), st.characters(), st.integers(0, 4)),
    st.text(max_size=12),
    st.lists(st.text(max_size=6), min_size=2, max_size=4).map(".".join),
    st.sampled_from(["", ".", "optim.", ".blr", "optim..blr", " optim . blr ", "data.path.x",
                     "optim.blr.lo", "a" * 3000, "optim.\n\nblr", "data.\x00path", "é.ü"]),
)

YAML_JUNK = ["", " ", "~", "null", "true", "no", "off", "Yes", "[1,2]", "[0.3, 0.9]", "[]", "{}",
             "{a: 1}", "[1, 2", "{a", "'unclosed", '"unclosed', "!!float abc", "!!int x",
             "!!bool 2", "!!timestamp x", "2001-13-45", "2001-02-29", "2024-01-01", "12:30:00",
             "&a [*a]", "*nope", "? a", "!!binary x", "!!python/object/apply:os.system [ls]",
             "!!set {a}", "!!omap [a: 1]", "- 1\n- 2", "a: b: c", ":", "%YAML 1.1", "---", "...",
             "0x1F", "0o17", "010", "1_000", "1e-4", "1E+3", ".5", "-.inf", ".nan", ".inf", "nan",
             "inf", "-Infinity", "1e999", "-1e999", "9" * 400, "9" * 5000, str(2 ** 63),
             str(-2 ** 63), str(2 ** 63 - 1), "[" * 300, "{" * 300, "[[[[1]]]]", "#comment",
             "a #comment", "\t", "a\n\nb", '"a\\n\\nb"', '"\\0"', "\x00", "\udcff", "é", "中文",
             "\u2028", "\x85", "rand-m9", "timm:vit_tiny", "=", "a=b=c", "[1, [2, 3]]",
             "[.nan, 1]", "[1e999, 1]", "[true, false]", "[0, 10, 10]", "0", "-1", "-0.0"]

override_values = st.one_of(
    st.sampled_from(YAML_JUNK),
    st.sampled_from(YAML_JUNK),
    st.sampled_from(CHOICE_VALUES),
    st.text(max_size=20),
    st.integers().map(str),
    st.integers(-(2 ** 70), 2 ** 70).map(str),
    st.floats().map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: yaml.safe_dump(f).split("\n")[0]),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.lists(st.one_of(st.integers(-5, 2000), st.floats(-2, 2), st.booleans()), max_size=4).map(
        lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"),
    st.text(st.characters(codec="utf-8"), max_size=30),
)

override_items = st.one_of(
    st.deferred(lambda: typed_items),  # a real key with a value of its type: gets to validate()
    st.deferred(lambda: typed_items),
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
    st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
    st.text(max_size=20),  # mostly without '='
    st.builds(lambda k, a, b: f"{k}={a}={b}", override_keys, override_values, override_values),
    st.builds(lambda v: f"={v}", override_values),
)


# ---------------------------------------------------------------- 1. overrides
@fuzz(400)
@given(st.lists(override_items, max_size=5))
@example(["optim.epochs=" + "9" * 400])   # was OverflowError: int too large to convert to float
@example(["optim.epochs=" + "9" * 5000])  # was ValueError: int beyond 4300 digits (YAML's int())
@example(["data.path=2001-13-45"])        # was ValueError: month must be in 1..12 (YAML date)
@example(["optim.blr=!!float abc"])       # was ValueError: could not convert string to float
@example(["train.seed=!!int abc"])        # was ValueError: invalid literal for int()
@example(["data.path=!!timestamp x"])     # was AttributeError in PyYAML's timestamp constructor
@example(["data.path=!!bool"])            # was KeyError: '' in PyYAML's bool constructor
@example(["data.path=" + "[" * 2000])     # was RecursionError in the YAML parser
@example(["optim.epochs=.inf"])           # accepted an infinite epoch count
@example(["optim.blr=.nan"])              # NaN reached validation (and the run, for unchecked keys)
@example(["diffusion.w_rest=.nan"])       # ... e.g. w_rest: NaN passed every check
@example(["train.seed=" + "1" * 30])      # accepted a seed no RNG can take
@example(['data.source="a\\n\\nb"'])      # the error message spanned several paragraphs
@example(["x\n\ny=1"])                    # ... the unknown key too
@example(["optim=3"])                     # the hint named the wrong key: 'e.g. optim.data=...'
@example(["a" * 5000 + "=1"])             # a 5000-character message
def test_random_overrides_load_or_fail_in_one_paragraph(items):
    res = outcome(load_config, None, items)
    assert isinstance(res, (Config, str))
    event("valid" if isinstance(res, Config) else "ConfigError")


def test_override_fixes_keep_what_was_typed():
    """Regressions of the fuzzing, checked for the value too (not only 'no traceback')."""
    cfg = load_config(None, ["data.path=010", "data.train_split=no", "vit.source=12:30",
                             "tokenizer.path=2001-13-45", "data.eval_split=null",
                             "finetune.randaug='rand-m9'"], check=False)
    assert cfg.data.path == "010" and cfg.data.train_split == "no" and cfg.vit.source == "12:30"
    assert cfg.tokenizer.path == "2001-13-45" and cfg.data.eval_split == "null"
    assert cfg.finetune.randaug == "rand-m9"  # quotes are YAML's, as before
    assert load_config(None, ["sample.guidance=2"]).sample.guidance == 2.0
    for item, needle in [("optim.epochs=.inf", "finite"), ("optim.blr=nan", "finite"),
                         ("train.seed=" + "1" * 30, "out of range"),
                         ("data.path=a\tb", "control character"),
                         ("optim=3", "optim.blr=..."), ("model.compile=", "expected bool")]:
        msg = outcome(load_config, None, [item])
        assert isinstance(msg, str) and needle in msg, (item, msg)


# ---------------------------------------------------------------- 2. YAML presets
PRESETS = preset_names()
_counter = itertools.count()

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                         st.sampled_from(CHOICE_VALUES), st.sampled_from(YAML_JUNK))
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
section_keys = st.one_of(st.sampled_from(KEYS).map(lambda k: k.split(".", 1)[1]),
                         st.text(max_size=8), st.integers(), st.booleans(), st.none())
sections = st.dictionaries(section_keys, yaml_values, max_size=4)
top_keys = st.one_of(st.sampled_from(SECTIONS), st.sampled_from(SECTIONS), st.text(max_size=8),
                     st.integers(), st.just("inherit"))
inherit_values = st.one_of(
    st.sampled_from(["@next", "@next", "@self", "@first", "@next-relative"]),
    st.sampled_from(PRESETS + ["pretrain/demo", "scale/debug", "trajectory/tab3-ldae", "scale/",
                               "nosuch", "", " ", "x.yaml", "a" * 300, "a" * 300 + ".yaml",
                               "../pretrain/demo", "/", "\x00"]),
    yaml_values,
)
mappings = st.fixed_dictionaries(
    {"body": st.dictionaries(top_keys, st.one_of(sections, sections, yaml_values), max_size=4)},
    optional={"inherit": inherit_values})
RAW_JUNK = ["optim: [1, 2\n", "\tfoo: 1\n", "a: b: c\n", "- 1\n- 2\n", "!!python/object:os.system {}\n",
            "&a [*a]\n", "optim: &x {blr: 1.0}\nmodel: *x\n", "'\n", "%TAG\n", "? [1]\n: 2\n",
            "{[1]: 2}\n", "optim:\n  blr: 2001-13-45\n", "optim:\n  epochs: !!float x\n",
            "optim:\n  epochs: " + "9" * 5000 + "\n", "optim:\n" + "[" * 2000 + "\n",
            "optim:\n", "optim: null\n", "0\n", "false\n", "[]\n", "''\n", "inherit: [demo]\n",
            "inherit: {a: 1}\n", "inherit: 3\n", "inherit:\n", "optim: {blr: .nan}\n",
            "data:\n  path: \"a\\n\\nb\"\n", "optim:\n  ? [1]\n  : 2\n"]
files = st.one_of(
    mappings.map(lambda m: ("map", m)),
    mappings.map(lambda m: ("map", m)),
    st.sampled_from(RAW_JUNK).map(lambda t: ("raw", t.encode())),
    st.text(max_size=40).map(lambda t: ("raw", t.encode("utf-8", "surrogatepass"))),
    st.binary(max_size=40).map(lambda b: ("raw", b)),
)


def _write_chain(root, specs: list, unicode: bool) -> list:
    """Write the drawn preset files into a fresh folder; ``@next``/``@self``/``@first`` become
    paths of the chain (so the files inherit from each other)."""
    d = root / f"ex{next(_counter)}"
    d.mkdir()
    paths = [d / f"p{i}.yaml" for i in range(len(specs))]
    for i, (kind, spec) in enumerate(specs):
        if kind == "raw":
            paths[i].write_bytes(spec)
            continue
        body = dict(spec["body"])
        if "inherit" in spec:
            inh = spec["inherit"]
            nxt = paths[i + 1] if i + 1 < len(paths) else d / "missing.yaml"
            inh = {"@next": str(nxt), "@self": str(paths[i]), "@first": str(paths[0]),
                   "@next-relative": nxt.name}.get(inh, inh) if isinstance(inh, str) else inh
            body["inherit"] = inh
        paths[i].write_text(yaml.safe_dump(body, allow_unicode=unicode), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@fuzz(160)
@given(specs=st.lists(files, min_size=1, max_size=3), unicode=st.booleans(),
       items=st.lists(override_items, max_size=2))
@example(specs=[("raw", b"\xff\xfe junk")], unicode=False, items=[])  # was UnicodeDecodeError
@example(specs=[("raw", b"optim:\n  blr: 2001-13-45\n")], unicode=False, items=[])  # ValueError
@example(specs=[("raw", ("optim:\n  epochs: " + "9" * 5000 + "\n").encode())], unicode=False,
         items=[])  # was ValueError (int beyond 4300 digits)
@example(specs=[("raw", b"[" * 2000)], unicode=False, items=[])  # was RecursionError
@example(specs=[("raw", b"optim:\n  hflip: !!bool\n")], unicode=False, items=[])  # was KeyError
@example(specs=[("raw", b"optim: [1, 2\n")], unicode=False, items=[])  # a multi-line YAML error
@example(specs=[("raw", b"[]\n")], unicode=False, items=[])  # an empty list passed as a mapping
@example(specs=[("map", {"body": {}, "inherit": "a" * 300})], unicode=False,
         items=[])  # was OSError: File name too long
@example(specs=[("map", {"body": {}, "inherit": ["demo"]})], unicode=False,
         items=[])  # looked for a preset named "['demo']"
def test_random_preset_files_load_or_fail_in_one_paragraph(fuzz_dir, specs, unicode, items):
    paths = _write_chain(fuzz_dir, specs, unicode)
    res = outcome(load_config, str(paths[0]), items)
    assert isinstance(res, (Config, str))
    event("valid" if isinstance(res, Config) else "ConfigError")


@fuzz(150)
@given(st.one_of(st.text(max_size=30), st.sampled_from(PRESETS), st.sampled_from(
    ["a" * 300, "a" * 300 + ".yaml", "pretrain/" + "b" * 300, "scale/debug", "scale/", "x.yml",
     "pretrain/../pretrain/demo", "\x00.yaml", "demo\n\n"])))
@example("a" * 300)  # was OSError: File name too long
def test_random_preset_names_load_or_fail_in_one_paragraph(name):
    assert isinstance(outcome(load_config, name), (Config, str))


# ---------------------------------------------------------------- 3. the CLI
class _Reached(Exception):
    """Raised by the stubbed engine entry points: the CLI got to the work, with a valid config."""


ENTRY_POINTS = [("ldae.engine.pretrain", "run"), ("ldae.engine.fit_tokenizer", "run"),
                ("ldae.engine.linprobe", "run"), ("ldae.engine.linprobe_sweep", "run"),
                ("ldae.dist", "setup"),  # linprobe: before encoder_for, which loads the run
                ("ldae.engine.finetune", "run"), ("ldae.engine.export", "export"),
                ("ldae.engine.sample", "run"), ("ldae.engine.fid", "run"),
                ("ldae.engine.figures", "run"), ("ldae.data.packed", "prepare"),
                ("ldae.engine.trajectory", "run"), ("ldae.engine.trajectory", "describe"),
                ("ldae.engine.demo", "run")]


_LAST_CALL: list = []


def _reached(*args, **kwargs):
    _LAST_CALL[:] = [args, kwargs]
    raise _Reached


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    """Engine entry points stubbed, the working directory a temporary one, and the paths the CLI
    is given: a valid run dir, corrupt ones, an empty and a missing dir, presets, a long name."""
    import importlib
    import pkgutil

    import ldae

    # import every module first: one imported while the stubs are in place (engine.demo's
    # `from ..dist import setup`) would keep a stub after the fixture ends
    for mod in pkgutil.walk_packages(ldae.__path__, "ldae."):
        with contextlib.suppress(ImportError):
            importlib.import_module(mod.name)
    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(load_config(None, ["model.name=test"])))
    bad = {"bad-yaml": b"optim: [1, 2\n", "bad-list": b"- 1\n", "bad-bytes": b"\xff\xfe",
           "bad-key": b"optim:\n  lrr: 1\n", "bad-empty": b"", "bad-date": b"optim:\n  blr: 2001-13-45\n"}
    for name, text in bad.items():
        (root / name).mkdir()
        (root / name / "config.yaml").write_bytes(text)
    (root / "empty").mkdir()
    (root / "preset.yaml").write_text("inherit: demo\noptim:\n  epochs: 2\n")
    (root / "broken.yaml").write_text("optim: [1, 2\n")
    paths = [str(run), *(str(root / n) for n in bad), str(root / "empty"), str(root / "missing"),
             str(root / "missing" / "deeper"), str(root / ("L" * 300)), str(root / "a\n\nb"),
             str(root / "preset.yaml"), str(root / "broken.yaml"), "rel-out", "timm:vit_tiny", ""]
    with pytest.MonkeyPatch.context() as mp:
        for module, name in ENTRY_POINTS:
            mp.setattr(importlib.import_module(module), name, _reached)
        mp.chdir(root)
        yield {"paths": paths, "root": root}


_SUB = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
COMMANDS = sorted(_SUB.choices)
PATH_FLAGS = {"--out", "--from", "--weights", "--samples", "--tokenizer", "--resume", "-c", "--config"}


@st.composite
def cli_argv(draw, paths: list[str]) -> list[str]:
    path = st.sampled_from(paths)
    cmd = draw(st.sampled_from(COMMANDS * 6 + ["bogus", "--help", "-h", "", "--version"]))
    argv = [cmd]
    sub = _SUB.choices.get(cmd)
    if sub is None:
        return argv + draw(st.lists(override_items, max_size=2))
    groups = []
    for a in sub._actions:
        if not a.option_strings and a.dest not in ("help", "overrides"):
            if draw(st.integers(0, 9)) < 9:  # a positional (run dir, target, src, dst), rarely missing
                groups.append([draw(path)])
    options = [o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")]
    required = [a.option_strings[-1] for a in sub._actions if a.required and a.option_strings]
    flags = [f for f in required if draw(st.integers(0, 9)) < 9]  # required ones, rarely missing
    junk = st.sampled_from(["--bogus", "-z", "--out=", "--", "-", "--ma"])
    real = st.sampled_from(options) if options else junk  # `info` has no options
    flags += draw(st.lists(st.one_of(real, real, real, junk), max_size=4))
    for flag in flags:
        action = sub._option_string_actions.get(flag)
        if action is None or action.nargs == 0:
            groups.append([flag])
            continue
        if flag in PATH_FLAGS:
            value = draw(st.one_of(path, path, st.sampled_from(PRESETS), st.text(max_size=10)))
        elif action.type in (int, float):
            value = draw(st.one_of(st.integers(-3, 300).map(str), st.floats().map(repr),
                                   st.text(max_size=6), st.just("9" * 400)))
        elif action.choices:
            value = draw(st.one_of(st.sampled_from(list(action.choices)), st.text(max_size=6)))
        else:
            value = draw(st.one_of(st.text(max_size=12), path, st.sampled_from(PRESETS + ["auto"])))
        groups.append([flag, value] if draw(st.integers(0, 3)) else [f"{flag}={value}"])
    groups += [[item] for item in draw(st.lists(st.one_of(typed_items, typed_items, override_items),
                                                max_size=4))]
    for g in draw(st.permutations(groups)):
        argv += g
    return argv


def run_cli(argv: list[str]):
    from ldae.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            rc = ("argparse", e.code)
        except _Reached:
            rc = "reached"
    return rc, err.getvalue()


def check_cli(argv: list[str]):
    rc, err = run_cli(argv)
    assert "Traceback (most recent call last)" not in err, err
    assert rc in (0, 2, "reached", ("argparse", 0), ("argparse", 2)), (rc, err[-2000:])
    if rc == 2:  # an LdaeError: exactly one line "ldae CMD: error: MESSAGE"
        assert err.count("\n") == 1 and err.startswith(f"ldae {argv[0]}: error: "), err
        assert_one_paragraph(err.rstrip("\n"), limit=2500)
    elif rc == ("argparse", 2):  # usage line(s), then "ldae ...: error: ..."; no blank lines
        assert "error:" in err and "\n\n" not in err.strip() and len(err) < 4000, err
    return rc


@fuzz(250)
@given(data=st.data())
def test_random_command_lines_end_in_success_or_one_paragraph(cli_world, data):
    event(str(check_cli(data.draw(cli_argv(cli_world["paths"]), label="argv"))))


@pytest.mark.parametrize("tail", [
    ["sample", "{root}/bad-yaml"],   # was yaml.YAMLError traceback (read_run_config)
    ["fid", "{root}/bad-list"],      # was AttributeError: 'list' object has no attribute 'items'
    ["info", "{root}/bad-bytes"],    # was UnicodeDecodeError
    ["sample", "{root}/" + "L" * 300],  # was OSError: File name too long
    ["linprobe", "--out", "{root}/bad-yaml"],  # was yaml.YAMLError (cli._run_or_preset_config)
    ["finetune", "--out", "{root}/run", "--from", "{root}/" + "L" * 300],  # was OSError
    ["linprobe", "--out", "{root}/run", "--weights", "w"],  # LdaeError (base class): exit 2
    ["pretrain", "-c", "demo", "--out", "{root}/x", "data.path=a\n\nb"],  # was the path 'a\nb'
    ["pretrain", "-c", "demo", "--out", "{root}/x", "-\n\nx"],  # was printed with its line breaks
    ["sample", "{root}/run", "--guidance", "nan"],  # said 'wrong type: expected float'
    ["sample", "{root}/run", "data.path=010"],  # reaches the work, with the path '010' (was '8')
])
def test_cli_regressions(cli_world, tail):
    argv = [a.replace("{root}", str(cli_world["root"])) for a in tail]
    rc, err = run_cli(argv)
    assert rc in (2, ("argparse", 2), "reached"), (rc, err)
    if argv[-1] == "data.path=010":
        assert rc == "reached" and _LAST_CALL[0][0].data.path == "010"
    check_cli(argv)


# ---------------------------------------------------------------- 4. round trip
PLAIN_TEXT = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,15}", fullmatch=True)
_ANY_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False)


def _quote(s: str) -> str:
    """A YAML double-quoted scalar: JSON's escapes, but characters beyond U+FFFF written as they
    are (PyYAML reads a JSON surrogate pair as two lone surrogates)."""
    return '"' + "".join(c if ord(c) > 0xFFFF else json.dumps(c)[1:-1] for c in s) + '"'


def _value(typ) -> st.SearchStrategy:
    """(override text, expected value) pairs of the right type for an annotation."""
    if typ is bool:
        return st.booleans().map(lambda b: ("true" if b else "false", b))
    if typ is int:
        return st.integers(-(2 ** 63) + 1, 2 ** 63 - 1).map(lambda i: (str(i), i))
    if typ is float:
        return _finite.map(lambda f: (repr(f), f))
    if typ is str:  # plain text is taken as typed; anything else in YAML's double quotes
        return st.one_of(PLAIN_TEXT.map(lambda s: (s, s)), _ANY_TEXT.map(lambda s: (_quote(s), s)))
    args = typing.get_args(typ)
    if args[-1] is Ellipsis:
        elems = st.lists(_value(args[0]), max_size=4)
    else:
        elems = st.tuples(*(_value(a) for a in args)).map(list)
    return elems.map(lambda xs: ("[" + ", ".join(t for t, _ in xs) + "]", tuple(v for _, v in xs)))


def _choice_value(key: str) -> st.SearchStrategy:
    return st.sampled_from(CHOICES[key]).map(lambda s: (s, s))


assignment = st.sampled_from(KEYS).flatmap(
    lambda k: st.tuples(st.just(k), _choice_value(k) if k in CHOICES else _value(LEAVES[k])))
assignments = st.lists(assignment, max_size=8)
typed_items = assignment.map(lambda a: f"{a[0]}={a[1][0]}")


@fuzz(100)  # each example dumps and parses a whole config (~40 ms of pure-Python YAML)
@given(assignments)
@example([("data.path", ("010", "010")), ("vit.source", ("12:30", "12:30"))])  # were 8 and 750
@example([("data.train_split", ("no", "no"))])  # was a type error (YAML 1.1's False)
@example([("data.eval_split", ("0:", "0:"))])  # was a type error (YAML's mapping {0: None})
@example([("optim.blr", ("1e-05", 1e-05)), ("linprobe.lr_grid", ("[1e-05, 2.0]", (1e-05, 2.0)))])
def test_valid_overrides_round_trip_through_the_dump(pairs):
    items = [f"{k}={text}" for k, (text, _) in pairs]
    cfg = load_config(None, items, check=False)
    for k, (_, value) in dict(pairs).items():  # the last setting of a key wins
        section, name = k.split(".")
        got = getattr(getattr(cfg, section), name)
        assert got == value and type(got) is type(value), (k, got, value)
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)), check=False)
    assert again == cfg
    assert all(type(getattr(getattr(again, k.split(".")[0]), k.split(".")[1])) is
               type(getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1])) for k in KEYS)
    verdict = outcome(validate, cfg)
    assert outcome(validate, again) == verdict  # the same message, or both valid
    if verdict is None:
        assert load_config(None, items) == cfg
    event("valid" if verdict is None else "invalid")
