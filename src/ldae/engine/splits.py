"""Splits derived from the config's seed: the linear probe's holdout share of the train split
(it selects the probe's lr; the online kNN monitor draws its queries from it)."""
from __future__ import annotations

import torch

from ..config import Config
from ..seeds import STREAM_HOLDOUT, probe_seed


def holdout_split(n: int, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, holdout) indices of the n train rows: a seeded random ``linprobe.holdout`` share
    (at least 1 row, leaving at least 1) that selects the lr; sorted, disjoint, covering all."""
    k = min(max(1, round(cfg.linprobe.holdout * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(
        probe_seed(cfg.train.seed, STREAM_HOLDOUT)))
    return perm[k:].sort().values, perm[:k].sort().values


__all__ = ["holdout_split"]
