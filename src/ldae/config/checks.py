"""Checks of a whole ``Config`` before any work: each names the keys involved and the fix.

Three kinds, in this order:

1. choices: the schema's ``one_of`` keys, and the keys whose values name an entry of a
   component's registry (``tokenizer.name``, ``model.name``, ``diffusion.target``, ...), which the
   component registers here with :func:`register_choices`;
2. the schema's own rules: ranges and relations among the keys of the config's sections;
3. the components' rules, registered with :func:`register_check` (a tokenizer's settings, the
   objective combinations the paper defines, the model's depth, a data source's path).

This module imports no component: the built-in ones (``BUILTIN_COMPONENTS``) register when their
package is first imported, and :func:`validate` imports them by name first, as it would a
plugin, so that a config is never checked against a partial registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from typing import Callable, Iterable

import yaml

from ..errors import ConfigError, shown
from .schema import RUNTIME, Config, fixed_choices

#: the packages whose import registers the built-in components' choices and checks
BUILTIN_COMPONENTS = ("ldae.data", "ldae.models", "ldae.diffusion", "ldae.tokenizers",
                      "ldae.objectives")

_CHOICES: dict[str, Callable[[], Iterable[str]]] = {}
_CHECKS: dict[str, Callable[[Config], None]] = {}


def register_choices(key: str, names: Callable[[], Iterable[str]]) -> None:
    """Let ``key`` (``section.name``) take the values ``names()`` (read at each check, so a
    registry that grows later is seen)."""
    _CHOICES[key] = names


def register_check(name: str, check: Callable[[Config], None]) -> None:
    """Run ``check(cfg)`` (which raises ``ConfigError``) in every :func:`validate`; registering
    the same ``name`` again replaces the check."""
    _CHECKS[name] = check


def _load_components() -> None:
    for module in BUILTIN_COMPONENTS:
        importlib.import_module(module)


def choices() -> dict[str, list[str]]:
    """``key -> valid values`` of every key with a closed set of values."""
    _load_components()
    out = {k: list(v) for k, v in fixed_choices().items()}
    out.update({k: list(names()) for k, names in _CHOICES.items()})
    return out


def _warmup_fix(section: str, epochs: float, integer: bool = False) -> str:
    """The end of a warmup error: the override that fixes it (a quarter of training)."""
    if not (isinstance(epochs, (int, float)) and epochs > 0):
        return f"; {section}.epochs must be > 0."
    quarter = int(epochs // 4) if integer else round(epochs / 4, 4)
    return (f"; when shortening a run, set the warmup too, e.g. {section}.warmup_epochs={quarter:g} "
            "(a quarter of training).")


def need(cond: bool, msg: str) -> None:
    """Raise ``ConfigError(msg)`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def _check_choices(cfg: Config) -> None:
    for key, valid in choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            close = difflib.get_close_matches(str(value), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}='{shown(value)}' is not valid.{hint} Choices: {', '.join(valid)}.")


def _check_data_model(cfg: Config) -> None:
    d, m, tk = cfg.data, cfg.model, cfg.tokenizer
    need(d.image_size > 0 and m.patch_size > 0, "data.image_size and model.patch_size must be > 0.")
    need(d.image_size % m.patch_size == 0,
         f"model.patch_size={m.patch_size} must divide data.image_size={d.image_size}.")
    need(d.num_classes >= 2, f"data.num_classes={d.num_classes} must be at least 2.")
    need(0.0 < d.rrc_scale[0] <= d.rrc_scale[1] <= 1.0,
         f"data.rrc_scale={list(d.rrc_scale)} must satisfy 0 < lo <= hi <= 1.")
    D = 3 * m.patch_size ** 2
    need(1 <= tk.dim <= D, f"tokenizer.dim={tk.dim} must be in [1, D={D}] "
         f"(D = 3 * model.patch_size^2 with patch_size={m.patch_size}).")
    need(0.0 <= m.label_dropout < 1.0, "model.label_dropout must be in [0, 1).")
    need(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0 (0 = load in the "
         "main process).")
    need(d.max_image_pixels >= 1, f"data.max_image_pixels={d.max_image_pixels} must be >= 1.")
    need(tk.fit_epochs > 0 and tk.fit_batch > 0 and tk.fit_lr > 0 and tk.kl_weight >= 0,
         "tokenizer.fit_epochs, tokenizer.fit_batch and tokenizer.fit_lr must be > 0, "
         "tokenizer.kl_weight >= 0.")


def _check_objective(cfg: Config) -> None:
    ob = cfg.objective
    need(0.0 < ob.mask_ratio < 1.0, f"objective.mask_ratio={ob.mask_ratio} must be in (0, 1) "
         "(MAE: 0.75).")
    need(ob.temperature > 0 and 0.0 <= ob.momentum < 1.0,
         f"objective.temperature={ob.temperature} must be > 0 and objective.momentum="
         f"{ob.momentum} in [0, 1) (MoCo v3: 0.2 and 0.99).")
    need(ob.proj_dim > 0 and ob.proj_hidden > 0, "objective.proj_dim and objective.proj_hidden "
         "must be > 0 (MoCo v3: 256 and 4096).")


def _check_optim_train(cfg: Config) -> None:
    o, tr = cfg.optim, cfg.train
    need(o.batch_size > 0 and o.accum_steps > 0, "optim.batch_size and optim.accum_steps must be > 0.")
    need(o.batch_size % o.accum_steps == 0,
         f"optim.batch_size={o.batch_size} must be divisible by optim.accum_steps={o.accum_steps}.")
    need(o.epochs > 0 and 0 <= o.warmup_epochs <= o.epochs,
         f"optim.warmup_epochs={o.warmup_epochs} must be in [0, optim.epochs={o.epochs}]"
         + _warmup_fix("optim", o.epochs))
    need(0.0 <= o.ema < 1.0, f"optim.ema={o.ema} must be in [0, 1) (0 turns EMA off).")
    need(o.blr > 0, "optim.blr and linprobe.blr must be > 0.")
    need(tr.max_nonfinite_skips >= 0, "train.max_nonfinite_skips must be >= 0.")
    need(tr.keep_ckpts >= 1, f"train.keep_ckpts={tr.keep_ckpts} must be >= 1 (the "
         "newest checkpoints kept; a run needs at least its last one to resume).")
    need(tr.monitor_every >= 0 and tr.monitor_bank > 0 and tr.monitor_queries > 0,
         "train.monitor_every must be >= 0 (0 = off), train.monitor_bank and "
         "train.monitor_queries > 0.")
    need(tr.threads >= 0 and tr.log_every > 0 and tr.ckpt_every > 0,
         "train.threads >= 0, train.log_every > 0 and train.ckpt_every > 0 are required.")


def _check_linprobe(cfg: Config) -> None:
    lp, T = cfg.linprobe, cfg.diffusion.num_steps
    need(lp.blr > 0, "optim.blr and linprobe.blr must be > 0.")
    need(0 <= lp.t < T, f"linprobe.t={lp.t} must be in [0, diffusion.num_steps={T}).")
    need(lp.epochs > 0 and 0 <= lp.warmup_epochs <= lp.epochs,
         f"linprobe.warmup_epochs={lp.warmup_epochs} must be in [0, linprobe.epochs={lp.epochs}]"
         + _warmup_fix("linprobe", lp.epochs, integer=True))
    need(len(lp.lr_grid) > 0 and all(v > 0 for v in lp.lr_grid), "linprobe.lr_grid must be positive.")
    need(0.0 < lp.holdout < 1.0, f"linprobe.holdout={lp.holdout} must be in (0, 1): the share of "
         "the train split that selects the fast probe's blr (e.g. 0.1).")
    need(all(0 <= v < T for v in lp.sweep_t),
         f"linprobe.sweep_t={list(lp.sweep_t)} must hold timesteps in [0, diffusion.num_steps={T}).")
    for key in ("sweep_t", "sweep_noisy", "sweep_blocks"):
        vals = getattr(lp, key)
        need(len(set(vals)) == len(vals), f"linprobe.{key}={list(vals)} repeats a value.")
    need(lp.sweep_cache_gb > 0, f"linprobe.sweep_cache_gb={lp.sweep_cache_gb} must be > 0.")
    need(not (lp.encoder == "vit" and lp.noisy),
         "linprobe.noisy=true needs the run's own denoiser (an exported ViT has no noise process); "
         "probe the run dir instead (linprobe.encoder=ldae).")


def _check_finetune(cfg: Config) -> None:
    ft = cfg.finetune
    need(0 <= ft.t < cfg.diffusion.num_steps,
         f"finetune.t={ft.t} must be in [0, diffusion.num_steps={cfg.diffusion.num_steps}).")
    need(ft.blr > 0 and ft.min_lr >= 0, "finetune.blr must be > 0 and finetune.min_lr >= 0.")
    need(ft.batch_size > 0 and ft.accum_steps > 0 and ft.batch_size % ft.accum_steps == 0,
         f"finetune.batch_size={ft.batch_size} must be > 0 and divisible by "
         f"finetune.accum_steps={ft.accum_steps}.")
    need(ft.epochs > 0 and 0 <= ft.warmup_epochs <= ft.epochs,
         f"finetune.warmup_epochs={ft.warmup_epochs} must be in [0, finetune.epochs={ft.epochs}]"
         + _warmup_fix("finetune", ft.epochs))
    need(0 < ft.layer_decay <= 1, f"finetune.layer_decay={ft.layer_decay} must be in (0, 1] (1 = off).")
    need(0 <= ft.drop_path < 1 and 0 <= ft.reprob <= 1 and 0 <= ft.smoothing < 1,
         "finetune.drop_path and finetune.smoothing must be in [0, 1), finetune.reprob in [0, 1].")
    need(ft.mixup >= 0 and ft.cutmix >= 0, "finetune.mixup and finetune.cutmix must be >= 0 (0 = off).")
    need((ft.mixup == 0 and ft.cutmix == 0) or (ft.batch_size // ft.accum_steps) % 2 == 0,
         f"MixUp/CutMix pair each image with another of its batch: the micro-batch "
         f"finetune.batch_size / accum_steps = {ft.batch_size // ft.accum_steps} must be even "
         "(or set finetune.mixup=0 finetune.cutmix=0).")
    need(0 <= ft.ema < 1, f"finetune.ema={ft.ema} must be in [0, 1) (0 turns EMA off).")
    need(0.0 < ft.rrc_scale[0] <= ft.rrc_scale[1] <= 1.0,
         f"finetune.rrc_scale={list(ft.rrc_scale)} must satisfy 0 < lo <= hi <= 1.")
    need(ft.eval_every >= 0, "finetune.eval_every must be >= 0 (0 = evaluate at the end only).")
    need(not ft.randaug or ft.randaug.startswith("rand-"),
         f"finetune.randaug='{shown(ft.randaug)}' must be a timm RandAugment spec such as "
         "'rand-m9-mstd0.5-inc1' (RandAug(9, 0.5)), or '' for none.")
    need(not (cfg.linprobe.encoder == "vit" or ft.init == "vit") or cfg.vit.source != "",
         "linprobe.encoder=vit / finetune.init=vit need vit.source=... (an `ldae export` dir or "
         "timm:MODEL_NAME with vit.weights=FILE); on the CLI: --from SRC [--weights FILE].")


def _check_sample_fid(cfg: Config) -> None:
    sp, fd, T = cfg.sample, cfg.fid, cfg.diffusion.num_steps
    need(1 <= sp.steps <= T, f"sample.steps={sp.steps} must be in [1, diffusion.num_steps={T}].")
    need(0.0 <= sp.eta <= 1.0, f"sample.eta={sp.eta} must be in [0, 1] (0 = DDIM, 1 = ancestral).")
    need(sp.guidance >= 0.0, f"sample.guidance={sp.guidance} must be >= 0 (1 = no guidance).")
    need(sp.n > 0 and sp.batch_size > 0 and sp.grid >= 0,
         "sample.n and sample.batch_size must be > 0, sample.grid >= 0.")
    need(fd.n >= 2 and fd.batch_size > 0 and fd.ref_limit >= 0,
         "fid.n must be >= 2, fid.batch_size > 0 and fid.ref_limit >= 0.")


def validate(cfg: Config) -> None:
    """Every check of ``cfg``: the choices, the schema's rules, then the components' rules."""
    _check_choices(cfg)
    for check in (_check_data_model, _check_objective, _check_optim_train, _check_linprobe, _check_finetune,
                  _check_sample_fid, *_CHECKS.values()):
        check(cfg)


def describe_keys(section: str | None = None) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` of every setting (of one section), read from the schema
    itself: the dataclass fields, their defaults and the comment on (or just above) each field's
    line in this file, so the listing cannot go stale."""
    rows, valid, default = [], choices(), Config()
    for sec in dataclasses.fields(Config):
        if section and sec.name != section:
            continue
        cls = type(getattr(default, sec.name))
        lines, comments, above = inspect.getsource(cls).splitlines(), {}, []
        for ln in lines[1:]:
            text = ln.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# ").strip())
                continue
            m = re.match(r"(\w+)\s*:", text)
            if m:
                tail = text.split("  # ", 1)[1].strip() if "  # " in text else ""
                comments[m.group(1)] = tail or " ".join(above)
            above = []
        defaults = getattr(default, sec.name)
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            shown_value = yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                                         default_flow_style=True).strip().removesuffix("...").strip()
            key = f"{sec.name}.{f.name}"
            meaning = comments.get(f.name, "")
            if key in valid:
                meaning = f"{meaning} [choices: {', '.join(map(str, valid[key]))}]".strip()
            if f.metadata.get(RUNTIME):
                meaning = f"{meaning} [run-time: a resume may change it]".strip()
            rows.append((key, shown_value, meaning))
    if section and not rows:
        names = [f.name for f in dataclasses.fields(Config)]
        raise ConfigError(f"no config section '{shown(section)}'; sections: {', '.join(names)}.")
    return rows
