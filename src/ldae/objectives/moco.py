"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers") on the l-DAE's ViT: Tab. 4's contrastive baseline. Written from the paper.

- Encoder: the l-DAE's DiT cut to its encoder (``model.encoder_blocks``, default half the
  depth), no timestep (the ``constant`` schedule's condition is always 0), the feature the token
  average of its last block (DiT has no class token; the probe and ``ldae export`` read the
  same).
- Two views per image (``data.views``: crop, colour, blur, solarize, flip), each through the
  encoder, the 3-layer projection MLP and the 2-layer prediction MLP (batch norm over the global
  batch, per view) to queries q1, q2; the momentum encoder (encoder + projection, no gradient)
  gives keys k1, k2; loss = ctr(q1, k2) + ctr(q2, k1), ctr the InfoNCE of ``info_nce`` against
  the keys of every process.
- The momentum encoder moves toward the trained one after each step, m from
  ``objective.momentum`` to 1 on a half cosine (``after_optimizer_step``).
- ``objective.frozen_patch_embed``: MoCo v3's "random patch projection", never trained.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

from ..config import Space
from ..data.views import two_views
from ..diffusion.objective import Denoiser
from ..diffusion.schedules import Constant
from ..diffusion.targets import Z0
from ..models import DiT
from ..models.registry import get_size
from ..seeds import Rows


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
def momentum_update(online, target, m: float) -> None:
    """target <- m target + (1 - m) online, for two equally long sequences of parameters (MoCo
    v3: the momentum encoder's batch-norm statistics are its own, from its forward passes)."""
    online, target = list(online), list(target)
    if len(online) != len(target):
        raise ValueError(f"momentum_update: {len(online)} online vs {len(target)} target parameters")
    for p_o, p_t in zip(online, target):
        p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)


def _rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


class MocoViT(DiT):
    """The encoder (a DiT of depth k, all of it the encoder), MoCo v3's projection and prediction
    MLPs, and the momentum copy of encoder + projection (``momentum``: no gradient). ``forward``
    takes both views stacked and returns (queries, keys), each (2B, proj_dim)."""

    def __init__(self, in_dim: int, num_tokens: int, width: int, depth: int, heads: int,
                 mlp_ratio: float, adaln: str, hidden: int, dim: int, frozen_patch_embed: bool):
        super().__init__(in_dim, in_dim, num_tokens, width, depth, heads, mlp_ratio, adaln,
                         encoder_blocks=depth)
        self.final.requires_grad_(False)  # the features are the encoder's: no output layer
        self.projector = mlp(3, width, hidden, dim)
        self.predictor = mlp(2, dim, hidden, dim, last_bn=False)
        if frozen_patch_embed:
            self.patch_embed.requires_grad_(False)
        encoder = DiT(in_dim, in_dim, num_tokens, width, depth, heads, mlp_ratio, adaln,
                      encoder_blocks=depth)
        mine = self.state_dict()
        encoder.load_state_dict({k: mine[k] for k in encoder.state_dict()})  # a copy of self
        self.momentum = nn.ModuleDict({"encoder": encoder, "projector": copy.deepcopy(self.projector)})
        self.momentum.requires_grad_(False)

    def momentum_pairs(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(online, momentum) parameters in matching order: the encoder's, then the projection's."""
        own = dict(self.named_parameters())
        names = [n for n, _ in self.momentum["encoder"].named_parameters()]
        online = [own[n] for n in names] + list(self.projector.parameters())
        return online, list(self.momentum.parameters())

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, y=None, keep=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.forward_blocks(tokens, t, [self.depth])[0]  # (2B, W) token average
        q = torch.cat([self.predictor(self.projector(f)) for f in feats.chunk(2)])  # BN per view
        with torch.no_grad():
            enc, proj = self.momentum["encoder"], self.momentum["projector"]
            kf = enc.forward_blocks(tokens, t, [enc.depth])[0]
            k = torch.cat([proj(f) for f in kf.chunk(2)])
        return q, k


class MocoV3(Denoiser):
    """MoCo v3's loss and momentum update on a ``MocoViT`` (see the module docstring)."""

    def __init__(self, backbone: MocoViT, tokenizer: nn.Module, num_steps: int, temperature: float,
                 momentum: float):
        super().__init__(backbone, tokenizer, Constant(num_steps), Z0(), "none", Space.LATENT,
                         Space.LATENT, 0.0)
        self.temperature, self.base_momentum = temperature, momentum

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None,
             autocast: contextlib.AbstractContextManager | None = None,
             net: nn.Module | None = None, rows: Rows | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, C, H, W) in [-1, 1], the images the views are cut from (``y`` unused)."""
        dev = generator.device if generator is not None else x.device
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=dev))
        v1, v2 = two_views(x.float(), torch.Generator().manual_seed(seed), rows)
        B = x.shape[0]
        tokens = self.tokenizer.encode(torch.cat([v1, v2]))  # (2B, L, D)
        t = self.schedule.t_cond(torch.zeros(2 * B, dtype=torch.long, device=x.device))
        with autocast or contextlib.nullcontext():
            q, k = (net if net is not None else self.backbone)(tokens, t)
        (q1, q2), (k1, k2) = q.float().chunk(2), k.float().chunk(2)
        offset = _rank() * B  # this process's keys in the gathered list
        tau = self.temperature
        loss = info_nce(q1, gather_keys(k2), tau, offset) + info_nce(q2, gather_keys(k1), tau, offset)
        return loss, {"loss": loss.detach()}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """The momentum encoder after step ``step``, with the m of the step that reads it next."""
        online, target = self.backbone.momentum_pairs()
        momentum_update(online, target, momentum_at(step, total_steps, self.base_momentum))

    def train_flops_per_image(self) -> float:
        """Two views, each an encoder forward + backward (3 forwards) and a momentum forward;
        the MLPs, a few per cent, are not counted."""
        return 2 * 4 * self.backbone.encoder_flops_per_image(self.backbone.depth)


def build_moco(cfg, tokenizer: nn.Module) -> MocoV3:
    """MoCo v3 on the config's model size cut to its encoder, on pixel tokens (``moco_v3``)."""
    m, ob = cfg.model, cfg.objective
    size = get_size(m.name)
    L = (cfg.data.image_size // m.patch_size) ** 2
    k = m.encoder_blocks or size.depth // 2
    backbone = MocoViT(tokenizer.full_dim, L, size.width, k, size.heads, size.mlp_ratio, m.adaln,
                       ob.proj_hidden, ob.proj_dim, ob.frozen_patch_embed)
    return MocoV3(backbone, tokenizer, cfg.diffusion.num_steps, ob.temperature, ob.momentum)


__all__ = ["GlobalBatchNorm1d", "MocoV3", "MocoViT", "build_moco", "gather_keys", "info_nce", "mlp",
           "momentum_at", "momentum_update"]
