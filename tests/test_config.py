"""Typed config, presets with ``inherit``, overrides and checks (SPEC §7): src/ldae/config.py."""
import dataclasses

import pytest
import yaml

from ldae.config import (Config, config_from_dict, diff_configs, dump_yaml, load_config,
                         parse_overrides, validate)
from ldae.errors import ConfigError


def write(path, text):
    path.write_text(text)
    return str(path.resolve())


# ---------------------------------------------------------------- defaults
def test_defaults_validate_and_match_the_spec():
    cfg = Config()
    validate(cfg)
    assert load_config() == cfg
    d = cfg.diffusion  # the final l-DAE (Tab. 3 last row)
    assert (d.schedule, d.target, d.loss_weight, d.input_space, d.output_space) == \
        ("sigma_linear", "image", "inv1p_sigma2", "image", "image")
    assert d.w_rest == 0.1 and d.num_steps == 1000
    assert cfg.optim.blr == 1e-4 and cfg.optim.weight_decay == 0.0
    assert cfg.tokenizer.whiten is False and cfg.model.adaln == "mlp4"


def test_dump_and_reload_round_trip():
    cfg = load_config(None, ["data.source=synthetic", "data.rrc_scale=[0.3,0.9]", "optim.blr=3e-4"])
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg and isinstance(again.data.rrc_scale, tuple)


# ---------------------------------------------------------------- unknown keys, types, choices
def test_unknown_key_names_valid_keys_and_close_match():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.lrr=1"])
    msg = str(e.value)
    assert "optim.lrr" in msg
    assert "Did you mean 'optim.blr'" in msg
    for key in ("optim.blr", "optim.epochs", "optim.batch_size", "optim.warmup_epochs"):
        assert key in msg
    with pytest.raises(ConfigError, match="Did you mean 'optim'"):
        load_config(None, ["optimm.blr=1"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["optim=3"])


@pytest.mark.parametrize("item,key", [("optim.epochs=abc", "optim.epochs"),
                                      ("model.patch_size=2.5", "model.patch_size"),
                                      ("data.hflip=3", "data.hflip"),
                                      ("optim.blr=true", "optim.blr"),
                                      ("data.rrc_scale=[0.3]", "data.rrc_scale"),
                                      ("data.rrc_scale=0.3", "data.rrc_scale"),
                                      ("linprobe.lr_grid=[0.1,abc]", "linprobe.lr_grid")])
def test_bad_type_raises(item, key):
    with pytest.raises(ConfigError, match="wrong type") as e:
        load_config(None, [item])
    assert key in str(e.value)


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["diffusion.schedule=foo"])
    msg = str(e.value)
    assert "diffusion.schedule" in msg and "foo" in msg
    assert "constant, ddpm, linear_gamma2, sigma_linear" in msg
    with pytest.raises(ConfigError, match="Did you mean 'sigma_linear'"):
        load_config(None, ["diffusion.schedule=sigma_linaer"])
    with pytest.raises(ConfigError, match="mlp4, linear"):
        load_config(None, ["model.adaln=conv"])
    with pytest.raises(ConfigError, match="halfL"):
        load_config(None, ["model.name=huge"])


# ---------------------------------------------------------------- cross-field checks
def test_patch_size_must_divide_image_size():
    with pytest.raises(ConfigError, match="model.patch_size=5 must divide data.image_size=32"):
        load_config(None, ["model.patch_size=5"])
    load_config(None, ["model.patch_size=8", "tokenizer.dim=4"])


def test_tokenizer_dim_bounded_by_patch_dim():
    load_config(None, ["model.patch_size=4", "tokenizer.dim=48"])  # D = 3 * 16
    with pytest.raises(ConfigError, match="D=48"):
        load_config(None, ["model.patch_size=4", "tokenizer.dim=49"])
    with pytest.raises(ConfigError, match="tokenizer.dim"):
        load_config(None, ["tokenizer.dim=0"])
    load_config(None, ["model.patch_size=2", "tokenizer.dim=12"])
    with pytest.raises(ConfigError, match="D=12"):
        load_config(None, ["model.patch_size=2", "tokenizer.dim=13"])


@pytest.mark.parametrize("items,fragment", [
    (["optim.warmup_epochs=500"], "optim.warmup_epochs"),
    (["optim.ema=1.0"], "optim.ema"),
    (["optim.batch_size=10", "optim.accum_steps=3"], "accum_steps"),
    (["model.name=test", "model.encoder_blocks=3"], "model.encoder_blocks"),
    (["data.source=npz"], "data.path"),
    (["data.rrc_scale=[0.9,0.2]"], "rrc_scale"),
    (["linprobe.t=1000"], "linprobe.t"),
    (["data.num_classes=1"], "num_classes"),
    (["diffusion.target=eps", "diffusion.output_space=image"], "output_space"),
])
def test_invalid_values_and_combinations(items, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, items)


# ---------------------------------------------------------------- overrides
def test_override_parsing_of_lists_bools_floats():
    cfg = load_config(None, ["data.rrc_scale=[0.3,1.0]", "data.hflip=false", "optim.blr=1.5e-4",
                             "optim.epochs=800", "linprobe.lr_grid=[0.1,1]", "model.class_cond=true",
                             "train.seed=7", "data.path=", "data.source=synthetic"])
    assert cfg.data.rrc_scale == (0.3, 1.0) and isinstance(cfg.data.rrc_scale, tuple)
    assert cfg.data.hflip is False and cfg.model.class_cond is True
    assert cfg.optim.blr == 1.5e-4
    assert cfg.optim.epochs == 800.0 and isinstance(cfg.optim.epochs, float)
    assert cfg.linprobe.lr_grid == (0.1, 1.0) and all(isinstance(v, float) for v in cfg.linprobe.lr_grid)
    assert cfg.train.seed == 7 and cfg.data.path == ""


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("2E-3", 2e-3), ("1.5e-4", 1.5e-4), ("3", 3.0),
                                        ("-1e2", -100.0)])
def test_exponent_floats_without_a_dot(text, value):
    """PyYAML (YAML 1.1) parses '1e-4' as a string; a float field must still accept it."""
    assert load_config(None, [f"diffusion.sigma0={text}"], check=False).diffusion.sigma0 == value


def test_parse_overrides_structure_and_errors():
    assert parse_overrides(["a.b=1", "a.c=x", "d.e.f=[1, 2]"]) == {"a": {"b": 1, "c": "x"},
                                                                   "d": {"e": {"f": [1, 2]}}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["optim.blr"])
    with pytest.raises(ConfigError, match="malformed"):
        parse_overrides(["optim..blr=1"])


def test_diff_configs_lists_changed_leaves():
    a = load_config(None, ["optim.epochs=800", "data.hflip=false"])
    b = Config()
    lines = diff_configs(a, b)
    assert sorted(lines) == sorted(["optim.epochs: 800.0 -> 400.0", "data.hflip: False -> True"])
    assert diff_configs(b, b) == []


# ---------------------------------------------------------------- presets
def test_preset_inheritance_and_override_order(tmp_path):
    grand = write(tmp_path / "grand.yaml", "model:\n  name: test\n  adaln: linear\noptim:\n  blr: 3.0e-4\n")
    parent = write(tmp_path / "parent.yaml",
                   f"inherit: {grand}\noptim:\n  epochs: 10\n  warmup_epochs: 2\n"
                   "data:\n  source: synthetic\n  image_size: 16\n")
    child = write(tmp_path / "child.yaml", f"inherit: {parent}\noptim:\n  epochs: 20\n")
    cfg = load_config(child)
    assert cfg.model.name == "test" and cfg.model.adaln == "linear"  # from the grandparent
    assert cfg.optim.blr == 3e-4  # parent's optim section merged, not replaced
    assert cfg.optim.epochs == 20.0 and cfg.optim.warmup_epochs == 2.0
    assert cfg.data.source == "synthetic" and cfg.data.image_size == 16
    assert cfg.data.hflip is True  # untouched default
    assert load_config(child, ["optim.epochs=5"]).optim.epochs == 5.0  # overrides win
    assert load_config(parent).optim.epochs == 10.0


def test_preset_errors(tmp_path):
    selfref = tmp_path / "self.yaml"
    write(selfref, f"inherit: {selfref.resolve()}\noptim:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(str(selfref))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, f"inherit: {b.resolve()}\n")
    write(b, f"inherit: {a.resolve()}\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(str(a))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset_zz")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(write(tmp_path / "broken.yaml", "optim: [1, 2\n"))
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(write(tmp_path / "typo.yaml", "optim:\n  lrr: 1\n"))


def test_yaml_preset_with_exponent_float(tmp_path):
    cfg = load_config(write(tmp_path / "p.yaml", "optim:\n  blr: 1e-4\n  ema: 9.999e-1\n"))
    assert cfg.optim.blr == 1e-4 and cfg.optim.ema == 0.9999


def test_all_sections_are_dataclasses():
    cfg = Config()
    assert set(cfg.to_dict()) == {f.name for f in dataclasses.fields(cfg)}
    for f in dataclasses.fields(cfg):
        assert dataclasses.is_dataclass(getattr(cfg, f.name))


def test_a_run_saved_before_tokenizer_scale_existed_keeps_its_raw_pca_latent(tmp_path):
    """Runs written before `tokenizer.scale` read as scale=none (what they trained with), not as
    today's default (unit); new configs default to unit."""
    import yaml

    from ldae.config import dump_yaml
    from ldae.engine.common import read_run_config

    cfg = load_config("demo")
    assert cfg.tokenizer.scale == "unit" and cfg.linprobe.clean_input == "projected"
    raw = yaml.safe_load(dump_yaml(cfg))
    del raw["tokenizer"]["scale"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert read_run_config(tmp_path).tokenizer.scale == "none"
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))
    assert read_run_config(tmp_path).tokenizer.scale == "unit"


def test_one_pca_fit_serves_every_latent_scale_in_the_trajectory():
    from ldae.engine.trajectory import tokenizer_key

    a = load_config("demo", ["tokenizer.scale=none"])
    b = load_config("demo", ["tokenizer.scale=unit", "tokenizer.dim=8"])
    assert tokenizer_key(a) == tokenizer_key(b)
    assert tokenizer_key(a) != tokenizer_key(load_config("demo", ["tokenizer.whiten=true"]))
