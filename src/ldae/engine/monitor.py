"""Online kNN monitor during pretraining: a cheap, label-using signal of the encoder's quality.

Every ``train.monitor_every`` steps the frozen encoder (the denoiser's first k blocks at the
probe's fixed t and clean input, ``linprobe.t`` / ``linprobe.clean_input``) embeds two fixed sets
of training-split images: a *bank* of ``train.monitor_bank`` images with their labels, and
``train.monitor_queries`` *queries* drawn from the linear probe's holdout share of the train split
(``splits.holdout_split``): the validation split is never touched. Each query is classified by a
weighted vote of its k = 20 nearest bank features in cosine similarity, weight exp(sim / 0.07)
(the kNN monitor of Wu et al. 2018, "Unsupervised feature learning via non-parametric instance
discrimination", as DINO and solo-learn use it; SPEC §5) after standardising the features by the
bank's statistics (the probe's BatchNorm), and ``knn_top1`` (%) goes into
``metrics.jsonl``. A secondary signal, never a headline number: it tells "slower to train" from
"worse" while a run goes, at a few percent of its wall time.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..data import to_float
from ..seeds import STREAM_FIXED, generator, mix
from .splits import holdout_split

KNN_K = 20
KNN_T = 0.07


def knn_predict(bank: torch.Tensor, bank_y: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = KNN_K, temperature: float = KNN_T, standardize: bool = True) -> torch.Tensor:
    """Class predictions (Q,) of ``queries`` (Q, W) by a weighted vote of their k nearest
    ``bank`` rows (N, W) in cosine similarity; each neighbour votes exp(sim / temperature) for
    its label. Ties in the vote go to the lower class index.

    ``standardize``: first map both sets by the bank's per-dim mean and std, as the linear probe's
    BatchNorm does. Token-averaged DiT features share a large common offset that otherwise
    dominates every cosine (about +1 point of kNN top-1 on CIFAR-10 at 1 epoch)."""
    bank, queries = bank.float(), queries.float()
    if standardize:
        mu, sd = bank.mean(0), bank.std(0).clamp_min(1e-6)
        bank, queries = (bank - mu) / sd, (queries - mu) / sd
    b = F.normalize(bank, dim=1)
    q = F.normalize(queries, dim=1)
    k = min(k, b.shape[0])
    sim, idx = (q @ b.T).topk(k, dim=1)  # (Q, k)
    votes = torch.zeros(q.shape[0], num_classes, dtype=sim.dtype, device=sim.device)
    votes.scatter_add_(1, bank_y.to(sim.device)[idx], (sim / temperature).exp())
    return votes.argmax(dim=1)


class KnnMonitor:
    """The fixed bank and queries of one run (rank 0 only); ``__call__(denoiser)`` -> record."""

    def __init__(self, cfg, dataset, device: torch.device):
        tr = cfg.train
        n = len(dataset)
        fit_idx, ho_idx = holdout_split(n, cfg)
        g = generator(mix(cfg.train.seed, STREAM_FIXED))
        self.queries = ho_idx[torch.randperm(ho_idx.numel(), generator=g)[:tr.monitor_queries]].sort().values
        self.bank = fit_idx[torch.randperm(fit_idx.numel(), generator=g)[:tr.monitor_bank]].sort().values
        self.dataset, self.device, self.cfg = dataset, device, cfg
        self.num_classes = cfg.data.num_classes
        self.bank_y = self._labels(self.bank)
        self.query_y = self._labels(self.queries)
        self.seconds = 0.0  # all calls together

    def _labels(self, idx: torch.Tensor) -> torch.Tensor:
        if hasattr(self.dataset, "gather"):
            return self.dataset.gather(idx)[1].long()
        return torch.tensor([int(self.dataset[int(i)][1]) for i in idx])

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        if hasattr(self.dataset, "gather"):
            return self.dataset.gather(idx)[0]
        return torch.stack([self.dataset[int(i)][0] for i in idx])

    @torch.no_grad()
    def _features(self, den, idx: torch.Tensor, batch: int = 256) -> torch.Tensor:
        lp = self.cfg.linprobe
        k = lp.blocks or den.backbone.encoder_blocks
        out = []
        for i in range(0, idx.numel(), batch):
            x = to_float(self._images(idx[i:i + batch]).to(self.device, non_blocking=True))
            out.append(den.features(x, lp.t, [k], clean=lp.clean_input)[0])
        return torch.cat(out)

    def __call__(self, den) -> dict:
        t0 = time.perf_counter()
        was = den.backbone.training
        den.backbone.eval()
        try:
            pred = knn_predict(self._features(den, self.bank), self.bank_y,
                               self._features(den, self.queries), self.num_classes)
        finally:
            den.backbone.train(was)
        top1 = 100.0 * float((pred.cpu() == self.query_y).float().mean())
        dt = time.perf_counter() - t0
        self.seconds += dt
        return {"knn_top1": round(top1, 3), "knn_seconds": round(dt, 3)}


__all__ = ["KnnMonitor", "knn_predict", "KNN_K", "KNN_T"]
