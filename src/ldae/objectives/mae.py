"""MAE (He, Chen, Xie, Li, Dollar, Girshick 2022, "Masked Autoencoders Are Scalable Vision
Learners") on the l-DAE's own ViT: Tab. 4's baseline at the same architecture, data, budget and
probe. Written from the paper; no code copied.

- Tokens: the pixel tokenizer at full resolution (q = p), so a token is one p x p patch
  (C p^2 values) and the backbone's input is MAE's patch embedding.
- Masking: per image, a uniformly random subset of ``int(L (1 - mask_ratio))`` patches stays
  visible (MAE's shuffle by argsort of uniform noise); 75 % is hidden by default.
- Encoder / decoder: the same DiT as the l-DAE, its first ``encoder_blocks`` blocks the encoder
  (on the visible tokens only), the rest the decoder (on all tokens, the learned mask token in
  place of the hidden ones, the fixed positions added again). MAE's decoder is narrower than its
  encoder; ours has the encoder's width so that the three methods share one parameter count.
- No timestep: the schedule is ``constant``, whose network condition is always 0, so the adaLN
  modulation is a learned constant, folded by ``ldae export`` like any other t.
- Loss: mean squared error on the hidden patches only, against each patch normalised by its
  own mean and variance (``objective.norm_pix``, MAE's default for its best features).

Features, probe, fine-tune and export are the l-DAE's (the ``Denoiser`` this subclasses): the
encoder sees every patch at transfer, as in MAE.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import Space
from ..diffusion.objective import Denoiser
from ..diffusion.schedules import Constant
from ..diffusion.targets import Z0
from ..models import DiT
from ..seeds import Rows, sharded

NORM_PIX_EPS = 1e-6  # MAE's (var + 1e-6) ** 0.5


def random_masking(batch: int, L: int, ratio: float, device: torch.device,
                   generator: torch.Generator | None = None, rows: Rows | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep (B, n) long, the visible tokens in increasing noise order; hidden (B, L) bool).
    n = int(L (1 - ratio)), MAE's ``len_keep``; each row's subset is uniform."""
    noise = sharded(lambda n: torch.rand((n, L), device=device, generator=generator), batch, rows)
    keep = noise.argsort(dim=1)[:, : int(L * (1 - ratio))]
    hidden = torch.ones(batch, L, dtype=torch.bool, device=device)
    hidden.scatter_(1, keep, False)
    return keep, hidden


def patch_targets(tokens: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """MAE's target: each patch (B, L, D), normalised by its own mean and (unbiased) variance."""
    if not norm_pix:
        return tokens
    mean, var = tokens.mean(dim=-1, keepdim=True), tokens.var(dim=-1, keepdim=True)
    return (tokens - mean) / (var + NORM_PIX_EPS) ** 0.5


class MaskedAutoencoder(Denoiser):
    """MAE's loss on the l-DAE's backbone and tokens (see the module docstring)."""

    def __init__(self, backbone: DiT, tokenizer: nn.Module, num_steps: int, mask_ratio: float,
                 norm_pix: bool):
        super().__init__(backbone, tokenizer, Constant(num_steps), Z0(), "none", Space.LATENT,
                         Space.LATENT, 0.0)
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix

    def train_flops_per_image(self) -> float:
        """The encoder blocks see only the visible tokens (MAE's saving)."""
        L = self.backbone.num_tokens
        return self.backbone.train_flops_per_image(visible=int(L * (1 - self.mask_ratio)))

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None,
             autocast: contextlib.AbstractContextManager | None = None,
             net: nn.Module | None = None, rows: Rows | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, C, H, W) in [-1, 1]; the same signature as the denoising loss (``y`` unused)."""
        tokens = self.tokenizer.encode(x.float())  # (B, L, D) pixel patches
        B, L, _ = tokens.shape
        keep, hidden = random_masking(B, L, self.mask_ratio, tokens.device, generator, rows)
        t = self.schedule.t_cond(torch.zeros(B, dtype=torch.long, device=tokens.device))
        with autocast or contextlib.nullcontext():
            out = (net if net is not None else self.backbone)(tokens, t, None, keep)
        return self.loss_from_prediction(out.float(), tokens, hidden)

    def loss_from_prediction(self, pred: torch.Tensor, tokens: torch.Tensor, hidden: torch.Tensor
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the hidden patches of the per-patch mean squared error."""
        per_patch = (pred - patch_targets(tokens, self.norm_pix)).square().mean(dim=-1)  # (B, L)
        w = hidden.float()
        loss = (per_patch * w).sum() / w.sum()
        seen = (per_patch * (1 - w)).sum() / (1 - w).sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "mse_visible": seen.detach()}


def build_mae(cfg, tokenizer: nn.Module) -> MaskedAutoencoder:
    """MAE on the config's model size, patch size and pixel tokens (``objective.name=mae``)."""
    m = cfg.model
    L = (cfg.data.image_size // m.patch_size) ** 2
    D = tokenizer.full_dim
    backbone = DiT.from_size(m.name, in_dim=D, out_dim=D, num_tokens=L, adaln=m.adaln,
                             encoder_blocks=m.encoder_blocks, mask_token=True)
    return MaskedAutoencoder(backbone, tokenizer, cfg.diffusion.num_steps, cfg.objective.mask_ratio,
                             cfg.objective.norm_pix)
