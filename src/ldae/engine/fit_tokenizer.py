"""``ldae fit-tokenizer``: fit the tokenizer on (a random subset of) the training split."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import atomic_write_json
from ..config import Config
from ..data import build_dataset, to_float
from ..logging import Timer, progress
from ..tokenizers import Tokenizer, build_tokenizer
from .common import TOKENIZER_FILE, write_run_config

FIT_BATCH = 1024


def fit(cfg: Config, dataset=None, show: bool = True) -> Tokenizer:
    dataset = dataset if dataset is not None else build_dataset(cfg, cfg.data.train_split)
    n = min(len(dataset), cfg.tokenizer.fit_images) if cfg.tokenizer.fit_images > 0 else len(dataset)
    g = torch.Generator().manual_seed(cfg.train.seed + 17)
    idx = torch.randperm(len(dataset), generator=g)[:n].sort().values
    tok = build_tokenizer(cfg)
    bar = progress(n, f"fit {cfg.tokenizer.name} tokenizer", enabled=show)

    def batches():
        for i in range(0, n, FIT_BATCH):
            sel = idx[i:i + FIT_BATCH]
            if hasattr(dataset, "gather"):
                xb = dataset.gather(sel)[0]
            else:
                xb = torch.stack([dataset[int(j)][0] for j in sel])
            bar.update(len(sel))
            yield to_float(xb)

    tok.fit(batches(), patches_per_image=cfg.tokenizer.patches_per_image, generator=g)
    bar.close()
    return tok


def run(cfg: Config, out: Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    tok = fit(cfg)
    tok.save(out / TOKENIZER_FILE)
    write_run_config(out, cfg)
    summary = {"tokenizer": cfg.tokenizer.name, "dim": tok.dim, "full_dim": tok.full_dim,
               "patch_size": tok.patch_size, "seconds": round(timer.elapsed(), 2)}
    if hasattr(tok, "explained_variance"):
        ev = tok.explained_variance()
        summary["explained_variance_at_dim"] = float(ev[tok.dim - 1])
        summary["explained_variance"] = [round(float(v), 6) for v in ev]
    atomic_write_json(out / "tokenizer.json", summary)
    return summary
