"""MoCo v3's parts (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"), written from the paper: the projection and prediction MLPs with batch norm over
the global batch, the symmetric InfoNCE loss against the momentum encoder's keys, and the
momentum schedule. The model that puts them on the l-DAE's ViT is issue 18's next step.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the processes, with gradients (each rank's backward receives the sum of all
    ranks' gradients, as SyncBatchNorm's); the identity in one process."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        return differentiable_all_reduce(x)
    return x


class GlobalBatchNorm1d(nn.Module):
    """BatchNorm1d whose training statistics are those of the global batch (all processes), so
    that a step on R processes equals the step on one (MoCo v3 uses SyncBatchNorm, which needs
    CUDA; this works on any backend). Eval mode uses the running statistics, as BatchNorm1d."""

    def __init__(self, dim: int, affine: bool = True, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim)
        if self.training:
            n = _global_sum(torch.tensor(float(x.shape[0]), device=x.device))
            mean = _global_sum(x.sum(0)) / n
            var = _global_sum((x - mean).square().sum(0)) / n  # biased, as BatchNorm normalises
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight + self.bias
        return out


def mlp(num_layers: int, in_dim: int, hidden: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's ``_build_mlp``: Linear (no bias) -> BN -> ReLU for each hidden layer, then a
    Linear (no bias) and, with ``last_bn``, a BN without affine parameters."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden
        d_out = out_dim if i == num_layers - 1 else hidden
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [GlobalBatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(GlobalBatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def gather_keys(k: torch.Tensor) -> torch.Tensor:
    """The keys of every process, rank order (no gradient: they come from the momentum encoder)."""
    if not (tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1):
        return k
    out = [torch.empty_like(k) for _ in range(tdist.get_world_size())]
    tdist.all_gather(out, k.contiguous())
    return torch.cat(out)


def info_nce(q: torch.Tensor, k: torch.Tensor, tau: float, offset: int = 0) -> torch.Tensor:
    """MoCo v3's contrastive loss: q (B, d) against all keys k (N, d), both l2-normalised; the
    positive of q[i] is k[offset + i]; cross-entropy of the logits q k^T / tau, times 2 tau."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.T / tau
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * tau)


def momentum_at(step: int, total: int, base: float) -> float:
    """MoCo v3's momentum: from ``base`` at step 0 to 1 at the end, half a cosine."""
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """target <- m target + (1 - m) online, parameter by parameter (MoCo v3: the momentum
    encoder's batch-norm statistics are its own, from its forward passes)."""
    for p_o, p_t in zip(online.parameters(), target.parameters()):
        p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)


__all__ = ["GlobalBatchNorm1d", "gather_keys", "info_nce", "mlp", "momentum_at", "momentum_update"]
