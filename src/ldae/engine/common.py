"""What every engine shares: run-dir layout, loading a trained run, building the tokenizer.

Run dir:
    config.yaml               resolved config (the source of every run's settings)
    tokenizer.safetensors     fitted tokenizer (tensors + JSON header)
    checkpoints/ckpt-*.pt     training state (tensors and plain data only)
    metrics.jsonl             one line per log step
    eval/linprobe*.json       probe results
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint
from ..config import Config, absolute_paths, config_from_dict, dump_yaml, is_file, read_config_file, shown
from ..diffusion.objective import Denoiser
from .. import objectives
from ..errors import CheckpointError, ConfigError
from ..tokenizers import Tokenizer, load_tokenizer

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.safetensors"
#: keys added to the schema after runs were saved without them, with the value those runs used
#: (not today's default): an old run dir keeps meaning what it meant
LEGACY_DEFAULTS = {("tokenizer", "scale"): "none"}


def read_run_config(run_dir: Path) -> Config:
    """A run dir's saved Config; a missing, unreadable or corrupt config.yaml, or a run dir name
    the OS refuses, is a ConfigError naming the file."""
    path = Path(run_dir) / CONFIG_FILE
    if not is_file(path):
        raise ConfigError(f"{shown(run_dir)} is not an ldae run dir: {CONFIG_FILE} is missing. Give "
                          "the --out folder of an `ldae pretrain` run.")
    return config_from_dict(read_run_dict(path))


def read_run_dict(path: Path) -> dict:
    """A saved config file as a dict, keys added to the schema since it was written filled with
    the values the run used (``LEGACY_DEFAULTS``)."""
    raw = read_config_file(path)
    for (section, key), value in LEGACY_DEFAULTS.items():
        if isinstance(raw.get(section), dict) and key not in raw[section]:
            raw[section][key] = value
    return raw


def write_run_config(run_dir: Path, cfg: Config) -> None:
    """Save ``cfg`` with its path settings absolute, so the run dir is usable from anywhere."""
    checkpoint.atomic_write_text(Path(run_dir) / CONFIG_FILE, dump_yaml(absolute_paths(cfg)))


def tokenizer_for(cfg: Config, run_dir: Path | None) -> Tokenizer | None:
    """The tokenizer named by ``tokenizer.path``, else the run dir's, else None (must be fitted)."""
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
    elif run_dir is not None and (Path(run_dir) / TOKENIZER_FILE).is_file():
        tok = load_tokenizer(Path(run_dir) / TOKENIZER_FILE)
    else:
        return None
    if tok.dim != cfg.tokenizer.dim and tok.patch_size == cfg.model.patch_size:
        try:  # a PCA fit serves every d (the full basis is kept): the trajectory shares one
            tok = tok.with_dim(cfg.tokenizer.dim)
        except ValueError:
            pass
    if tok.name == "pca" and tok.scale != cfg.tokenizer.scale:  # and every scale (s follows from
        tok.scale = cfg.tokenizer.scale  # the stored eigenvalues): the config decides
    if tok.patch_size != cfg.model.patch_size or tok.dim != cfg.tokenizer.dim:
        raise ConfigError(f"the tokenizer has patch_size={tok.patch_size}, dim={tok.dim} but the config "
                          f"asks for model.patch_size={cfg.model.patch_size}, tokenizer.dim="
                          f"{cfg.tokenizer.dim}; refit it or change the config.")
    return tok


def load_run(run_dir: Path, use_ema: bool = True, device: str | torch.device = "cpu",
             ckpt: Path | None = None) -> tuple[Config, Denoiser]:
    """The trained Denoiser of a run dir (EMA weights when present and asked for), in eval mode."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    tok = tokenizer_for(cfg, run_dir)
    if tok is None:
        raise CheckpointError(f"{run_dir} has no {TOKENIZER_FILE}; the run never fitted its tokenizer.")
    den = objectives.build(cfg, tok)
    if ckpt is not None:
        path, state = ckpt, checkpoint.load(ckpt, warn=print)
    else:  # the newest that loads; a corrupt newer one is reported, left in place
        found = checkpoint.load_latest(run_dir, set_aside=False)
        if found is None:
            raise CheckpointError(f"{run_dir}/checkpoints holds no checkpoint; train with `ldae pretrain`.")
        state, path = found
    which = "ema" if use_ema and state.get("ema") else "model"
    try:
        den.backbone.load_state_dict(state[which], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model of {run_dir}/config.yaml: {e}") from None
    den.loaded_from = {"checkpoint": str(path), "step": checkpoint.step_of(path), "weights": which}
    return cfg, den.to(device).eval()
