"""The denoising objective as a composition: schedule x target x loss weight x spaces (SPEC §2).

One training step (Eq. 1, Eq. 3, Eq. 4):
    x0 = tokens(x)                 (B, L, D)   image tokens
    z0 = encode(x)                 (B, L, d)   latent tokens
    t ~ U{0..T-1},  eps ~ N(0, I)  (B, L, d)
    z_t = gamma_t z0 + sigma_t eps                                            (Eq. 1)
    input = z_t (latent space)  or  decode(z_t) (image space, "inverse PCA")
    out = net(input, t)
    r = target - out;  image space: r <- V r (full basis)                      (Eq. 4)
    loss = mean_{B} lambda_t * mean_{L, i} w_i r_i^2

We average over tokens and dimensions instead of summing (Eq. 4 writes a sum): a constant factor
that only rescales the loss, not its minimiser. Noise, tokenizer and loss stay in float32; only
the backbone runs under the autocast context chosen by the caller (bf16 on CUDA).
The final l-DAE (Tab. 3, last row) is sigma_linear x image x inv1p_sigma2 x image/image.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import Space, register_check
from ..errors import ConfigError
from ..models import DiT
from ..seeds import Rows, sharded  # noqa: F401  (Rows: re-exported for callers of Denoiser.loss)
from .schedules import SCHEDULES, Schedule, build_schedule  # noqa: F401  (SCHEDULES: re-exported)
from .targets import TARGETS, Batch, Target
from .weights import LOSS_WEIGHTS

#: readings of "clean input" at transfer for image-space input (``Denoiser.clean_input``)
CLEAN_INPUTS = ("original", "projected")
#: the l-DAE's objective (Tab. 3, last line; the defaults of ``config.DiffusionConfig``)
LDAE_OBJECTIVE = {"schedule": "sigma_linear", "target": "image", "loss_weight": "inv1p_sigma2",
                  "input_space": Space.IMAGE.value, "output_space": Space.IMAGE.value}
#: the PCA DDM the deconstruction starts from (Tab. 3, line 1; with ``model.class_cond=false``)
PCA_DDM_OBJECTIVE = {"schedule": "linear_gamma2", "target": "eps", "loss_weight": "none",
                     "input_space": Space.LATENT.value, "output_space": Space.LATENT.value}


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022; DiT): out(null) + scale (out(y) - out(null));
    scale 1 is the conditional output, 0 the unconditional one."""
    return uncond + scale * (cond - uncond)


def check_combination(d) -> None:
    """Reject objective combinations the paper does not define (``d`` is a DiffusionConfig)."""
    target = TARGETS[d.target]
    if target.space != d.output_space:
        ok = [n for n, t in TARGETS.items() if t.space == d.output_space]
        raise ConfigError(
            f"diffusion.target={d.target} predicts in {target.space} space but "
            f"diffusion.output_space={d.output_space}. Use output_space={target.space}, or a "
            f"target of {d.output_space} space: {', '.join(ok)}.")
    if d.num_steps < 2:
        raise ConfigError(f"diffusion.num_steps={d.num_steps} must be at least 2.")
    if d.w_rest < 0 or d.sigma0 <= 0:
        raise ConfigError("diffusion.w_rest must be >= 0 and diffusion.sigma0 > 0.")


register_check("diffusion", lambda cfg: check_combination(cfg.diffusion))


class Denoiser(nn.Module):
    """Backbone + tokenizer + the objective's components; owns the loss and the encoder input."""

    def __init__(self, backbone: nn.Module, tokenizer: nn.Module, schedule: Schedule,
                 target: Target, loss_weight: str, input_space: str, output_space: str,
                 w_rest: float = 0.1):
        super().__init__()
        self.backbone, self.tokenizer, self.schedule = backbone, tokenizer, schedule
        self.target, self.weight_fn = target, LOSS_WEIGHTS[loss_weight]
        self.input_space, self.output_space, self.w_rest = input_space, output_space, w_rest
        self.tokenizer.requires_grad_(False)

    # -------------------------------------------------------------------- noise
    def noisy_input(self, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
                    rows: Rows | None = None) -> tuple[torch.Tensor, Batch]:
        """Eq. 1 in the tokenizer's latent, returned in the backbone's input space."""
        x0 = self.tokenizer.to_tokens(x)
        z0 = self.tokenizer.encode(x)
        eps = sharded(lambda n: torch.randn((n, *z0.shape[1:]), device=z0.device, dtype=z0.dtype,
                                            generator=generator), z0.shape[0], rows)
        gamma, sigma = self.schedule.coefficients(t)
        zt = gamma[:, None, None] * z0 + sigma[:, None, None] * eps
        inp = zt if self.input_space == Space.LATENT else self.tokenizer.decode(zt)
        return inp, Batch(x0=x0, z0=z0, eps=eps, tokenizer=self.tokenizer)

    def clean_input(self, x: torch.Tensor, clean: str = "original") -> torch.Tensor:
        """Clean input at transfer (the paper says only "clean images"; two readings):

        - latent-space input: the latent z0 = encode(x) (both readings agree);
        - image-space input, ``original``: the image x itself, PCA residual included, which the
          encoder never saw in training (its inputs are decode(z0 + sigma eps));
        - image-space input, ``projected``: decode(encode(x)), the noise-free member of the
          training distribution (the residual, Sec. 4.3's "noise part (ii)", removed)."""
        if clean not in CLEAN_INPUTS:
            raise ValueError(f"clean={clean!r} must be one of {CLEAN_INPUTS}")
        if self.input_space == Space.LATENT:
            return self.tokenizer.encode(x)
        return self.tokenizer.to_tokens(x) if clean == "original" else self.tokenizer.project(x)

    def sample_t(self, batch: int, device: torch.device, generator: torch.Generator | None = None,
                 rows: Rows | None = None) -> torch.Tensor:
        """t ~ U{0, ..., T-1} per sample."""
        return sharded(lambda n: torch.randint(0, self.schedule.num_steps, (n,), device=device,
                                               generator=generator), batch, rows)

    def drop_labels(self, y: torch.Tensor, p: float, generator: torch.Generator | None = None,
                    rows: Rows | None = None) -> torch.Tensor:
        """Replace a fraction p of labels by the null class (index num_classes), for guidance."""
        drop = sharded(lambda n: torch.rand(n, device=y.device, generator=generator), y.shape[0], rows) < p
        return torch.where(drop, torch.full_like(y, self.backbone.y_embed.num_classes), y)

    # --------------------------------------------------------------------- loss
    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None,
             autocast: contextlib.AbstractContextManager | None = None,
             net: nn.Module | None = None, rows: Rows | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, C, H, W) float32 in [-1, 1]. Returns the scalar loss and detached parts.

        ``net`` replaces the backbone in the forward (a compiled or DDP-wrapped view of it).
        ``rows``: which rows of the global batch x holds (see ``Rows``); None = x is the batch."""
        x = x.float()
        t = self.sample_t(x.shape[0], x.device, generator, rows)
        inp, b = self.noisy_input(x, t, generator, rows)
        if y is not None and self.backbone.y_embed is not None and self.training:
            y = self.drop_labels(y, self.backbone.y_embed.dropout, generator, rows)
        with autocast or contextlib.nullcontext():
            out = (net if net is not None else self.backbone)(inp, self.schedule.t_cond(t), y)
        return self.loss_from_output(out.float(), b, t)

    def loss_from_output(self, out: torch.Tensor, b: Batch, t: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self.target.value(b) - out
        if self.output_space == Space.IMAGE:
            r = self.tokenizer.project_full(r)
        w = self.target.dim_weights(self.tokenizer.dim, r.shape[-1], self.w_rest, r.device)
        sq = r.square()
        per_sample = (sq * w if w is not None else sq).mean(dim=(1, 2))  # (B,)
        gamma, sigma = self.schedule.coefficients(t)
        lam = self.weight_fn(gamma, sigma)
        loss = (lam * per_sample).mean()
        parts = {"loss": loss.detach(), "mse": sq.mean().detach()}
        if w is not None:
            d = self.tokenizer.dim
            parts["mse_top_d"] = sq[..., :d].mean().detach()
            parts["mse_rest"] = sq[..., d:].mean().detach() if sq.shape[-1] > d else sq.new_zeros(())
        return loss, parts

    # --------------------------------------------------------------- generation
    def net_input(self, zt: torch.Tensor) -> torch.Tensor:
        """The backbone's input for a noisy latent: z_t itself, or decode(z_t) in image space."""
        return zt if self.input_space == Space.LATENT else self.tokenizer.decode(zt)

    @torch.no_grad()
    def predict_z0(self, zt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                   guidance: float = 1.0, net: nn.Module | None = None,
                   autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
        """The network's estimate of the clean latent z0 from z_t at integer steps t (B,).

        Class-conditional models take labels ``y`` (None = the null class). Classifier-free
        guidance (``classifier_free_guidance``), cond and null rows in one forward. Guidance is applied to the raw output; every target's
        map to z0 is affine in it at fixed z_t, so guiding eps, z0 or the image is the same."""
        inp, tc = self.net_input(zt), self.schedule.t_cond(t)
        net = net if net is not None else self.backbone
        guided = guidance != 1.0 and y is not None and self.backbone.y_embed is not None
        if guided:
            null = torch.full_like(y, self.backbone.y_embed.num_classes)
            inp, tc, y = torch.cat([inp, inp]), torch.cat([tc, tc]), torch.cat([y, null])
        with autocast or contextlib.nullcontext():
            out = net(inp, tc, y).float()
        if guided:
            cond, uncond = out.chunk(2)
            out = classifier_free_guidance(cond, uncond, guidance)
        gamma, sigma = self.schedule.coefficients(t)
        return self.target.to_z0(out, zt, gamma, sigma, self.tokenizer)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the training loop after each optimizer step (``step`` = steps done); what
        the objective updates outside the gradient (MoCo v3's momentum encoder). Nothing here."""

    def train_flops_per_image(self) -> float:
        """The backbone's training FLOPs per image (SPEC §8), for img/s -> MFU."""
        return self.backbone.train_flops_per_image()

    # ----------------------------------------------------------------- transfer
    def encoder_input(self, x: torch.Tensor, t: int, noisy: bool = False,
                      generator: torch.Generator | None = None, clean: str = "original"
                      ) -> torch.Tensor:
        """The encoder's input at transfer: clean (``clean_input``) or noisy at step t (Eq. 1 in
        the latent, then the backbone's input space; ``clean`` does not apply)."""
        if not noisy:
            return self.clean_input(x.float(), clean)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return self.noisy_input(x.float(), tt, generator)[0]

    def features(self, x: torch.Tensor, t: int, blocks: list[int], noisy: bool = False,
                 generator: torch.Generator | None = None,
                 autocast: contextlib.AbstractContextManager | None = None,
                 clean: str = "original") -> list[torch.Tensor]:
        """Token-averaged outputs of ``blocks`` at fixed t, (B, W) each, from one forward."""
        inp = self.encoder_input(x, t, noisy, generator, clean)
        tt = self.schedule.t_cond(torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        with autocast or contextlib.nullcontext():
            feats = self.backbone.forward_blocks(inp, tt, blocks)
        return [f.float() for f in feats]


def build_denoiser(cfg, tokenizer: nn.Module) -> Denoiser:
    """The one factory: every axis of the objective comes from ``cfg.diffusion``."""
    d, m = cfg.diffusion, cfg.model
    check_combination(d)
    L = (cfg.data.image_size // m.patch_size) ** 2
    in_dim = tokenizer.dim if d.input_space == Space.LATENT else tokenizer.full_dim
    out_dim = tokenizer.dim if d.output_space == Space.LATENT else tokenizer.full_dim
    backbone = DiT.from_size(m.name, in_dim=in_dim, out_dim=out_dim, num_tokens=L, adaln=m.adaln,
                             num_classes=cfg.data.num_classes if m.class_cond else 0,
                             label_dropout=m.label_dropout, encoder_blocks=m.encoder_blocks)
    return Denoiser(backbone, tokenizer, build_schedule(d), TARGETS[d.target](), d.loss_weight,
                    d.input_space, d.output_space, d.w_rest)


__all__ = ["CLEAN_INPUTS", "SCHEDULES", "TARGETS", "LOSS_WEIGHTS", "Denoiser", "build_denoiser", "check_combination"]
