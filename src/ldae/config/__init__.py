"""Typed config: schema -> YAML preset (with ``inherit``) -> ``key=value`` overrides -> checks.

The schema (:mod:`.schema`) is a tree of dataclasses; a preset is a YAML file that may name a
parent with ``inherit: NAME`` (:mod:`.files`); overrides address leaves as ``section.key=value``
(the value is parsed as YAML, so ``optim.blr=1.5e-4`` and ``data.hflip=false`` work; a text field
takes the text as typed, so ``data.path=010`` stays '010'; :mod:`.build`). Unknown keys, badly
typed values (numbers must be finite, integers within 64 bits, text one line) and out-of-range
choices fail here, before any work, with a one-line message that names the valid choices; so do
unreadable or malformed YAML files. Cross-field checks live in :func:`validate`
(:mod:`.checks`), where components register their own choices and rules.

The package imports nothing of ldae but ``ldae.errors``: every other layer builds on it.
After dinov2's ``utils/config.py`` (defaults -> file -> CLI) and MAE's derived lr.
"""
from __future__ import annotations

from ..errors import shown
from .build import (PATH_KEYS, absolute_paths, config_from_dict, diff_configs, dump_yaml, load_config,
                    parse_overrides)
from .checks import choices, describe_keys, need, register_check, register_choices, validate
from .files import PRESET_DIR, PRESET_KINDS, find_preset, is_file, preset_names, read_config_file, read_preset
from .schema import (Config, DataConfig, DiffusionConfig, FidConfig, FinetuneConfig, LinprobeConfig,
                     ModelConfig, ObjectiveConfig, OptimConfig, SampleConfig, Space, TokenizerConfig, TrainConfig,
                     VitConfig, resume_free_keys)

__all__ = ["PATH_KEYS", "PRESET_DIR", "PRESET_KINDS", "Config", "DataConfig", "DiffusionConfig",
           "FidConfig", "FinetuneConfig", "LinprobeConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig",
           "SampleConfig", "Space", "TokenizerConfig", "TrainConfig", "VitConfig", "absolute_paths", "choices",
           "config_from_dict", "describe_keys", "diff_configs", "dump_yaml", "find_preset", "is_file",
           "load_config", "need", "parse_overrides", "preset_names", "read_config_file", "read_preset",
           "register_check", "register_choices", "resume_free_keys", "shown", "validate"]
