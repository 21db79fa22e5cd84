"""``ldae fit-tokenizer``: fit the tokenizer on (a random subset of) the training split.

Every tokenizer is fitted through ``Tokenizer.fit_data(FitData, TokenizerConfig)``: PCA in one
streaming pass, the gradient-trained ones (patch_ae, patch_vae, conv_vae) for
``tokenizer.fit_epochs`` passes. The fit writes ``tokenizer.safetensors`` (tensors + JSON header,
no code), ``tokenizer.json`` (statistics) and, for patch tokenizers, ``figures/filters.png`` (Fig. 4).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import atomic_write_json
from ..config import Config
from ..data import build_dataset, to_float
from ..dist import setup
from ..logging import Timer
from ..plots import filter_grid
from ..tokenizers import FitData, Tokenizer, build_tokenizer
from .common import TOKENIZER_FILE, write_run_config


def fit_data(cfg: Config, dataset=None, device: str | torch.device = "cpu") -> FitData:
    """The fit images: at most ``tokenizer.fit_images`` of the train split, a seeded subset."""
    dataset = dataset if dataset is not None else build_dataset(cfg, cfg.data.train_split)
    n = min(len(dataset), cfg.tokenizer.fit_images) if cfg.tokenizer.fit_images > 0 else len(dataset)
    g = torch.Generator().manual_seed(cfg.train.seed + 17)
    idx = torch.randperm(len(dataset), generator=g)[:n].sort().values

    def get(sel: torch.Tensor) -> torch.Tensor:
        rows = idx[sel]
        if hasattr(dataset, "gather"):
            return to_float(dataset.gather(rows)[0])
        return to_float(torch.stack([dataset[int(j)][0] for j in rows]))

    return FitData(n, get, torch.device(device), seed=cfg.train.seed + 17)


def fit(cfg: Config, dataset=None, show: bool = True, device: str | torch.device = "cpu",
        stats: dict | None = None) -> Tokenizer:
    """A fitted tokenizer for ``cfg`` (``stats``, if given, receives the fit's statistics)."""
    data = fit_data(cfg, dataset, device)
    g = torch.Generator().manual_seed(cfg.train.seed + 17)
    tok = build_tokenizer(cfg).to(data.device)
    out = tok.fit_data(data, cfg.tokenizer, generator=g, show=show)
    if stats is not None:
        stats.update(out or {})
    return tok.cpu().eval()


def run(cfg: Config, out: Path, device: str | torch.device | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    dev = device if device is not None else setup(cfg.train.device, cfg.train.threads).device
    stats: dict = {}
    tok = fit(cfg, device=dev, stats=stats)
    tok.save(out / TOKENIZER_FILE)
    write_run_config(out, cfg)
    summary = {"tokenizer": cfg.tokenizer.name, "dim": tok.dim, "full_dim": tok.full_dim,
               "patch_size": tok.patch_size, "seconds": round(timer.elapsed(), 2), **stats}
    atomic_write_json(out / "tokenizer.json", summary)
    filters = tok.filters()
    if filters is not None:
        filter_grid(filters, out / "figures" / "filters.png",
                    title=f"{cfg.tokenizer.name} filters (d = {tok.dim} of D = {tok.full_dim})",
                    keep=tok.dim)
    return summary
