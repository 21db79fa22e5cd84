"""Accuracy shared by the engines that report top-1 / top-k (the linear probe, fine-tuning).

Top-5 means top-min(``TOPK``, classes): the caller passes that k."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

TOPK = 5


def accuracy_counts(logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[int, int]:
    """(top-1 hits, top-k hits) of the (B, classes) ``logits`` against the (B,) labels ``y``."""
    top = logits.topk(k, dim=1).indices  # (B, k)
    hit = top == y[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


@torch.no_grad()
def evaluate(probe: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
             ) -> list[tuple[float, float]]:
    """(top-1 %, top-5 %) of every head over all (features, labels) batches (BN in eval mode).

    ``probe``: a multi-head probe (``linprobe.LinearProbe``: ``heads``, and a forward that gives
    one logits tensor per head)."""
    was = probe.training
    probe.eval()
    k = min(TOPK, probe.heads[0].out_features)
    c1 = [0] * len(probe.heads)
    c5 = [0] * len(probe.heads)
    n = 0
    for f, y in batches:
        for i, logits in enumerate(probe(f)):
            a, b = accuracy_counts(logits, y, k)
            c1[i] += a
            c5[i] += b
        n += y.shape[0]
    probe.train(was)
    return [(100.0 * a / max(n, 1), 100.0 * b / max(n, 1)) for a, b in zip(c1, c5)]


__all__ = ["TOPK", "accuracy_counts", "evaluate"]
