"""Convolutional KL autoencoder: LDM's tokenizer, the DiT baseline's (paper Sec. 4.1, 4.2,
Tab. 1, Tab. 2 "conv. VAE"; SPEC §4).

Architecture: LDM's KL autoencoder (Rombach et al. 2022) in diffusers' ``AutoencoderKL`` layout,
with parameter names identical to diffusers' state dict, so a diffusers safetensors file loads
with a strict ``load_state_dict``; the networks and the reading of diffusers files are in
``conv_vae_nets.py`` (its docstring gives the layout).

Tokens (paper footnote 3, DiT's layout): the latent is (B, c, H/s, W/s); a token is a 2 x 2
patch of latents flattened as (c, 2, 2), so d = 4c and L = (H/2s)(W/2s), the token grid of a
backbone with patch size p = 2s.

    encode(x) = patchify_2( scale * mu(x) )                 (B, L, 4c)
    decode(z) = patchify_p( g( unpatchify_2(z) / scale ) )  (B, L, 3 p^2)   (no clamp)

encode is deterministic (the posterior mean); DiT samples the posterior instead. ``scale`` is
LDM's scale_factor: 1 / std of the posterior-mean latents, measured on the first fit batches after
fitting (or after loading pretrained weights, unless their config.json gives
``scaling_factor``), so the latents have unit variance like the DDM's noise.

Fit (LDM's ``LPIPSWithDiscriminator`` with a fixed logvar = 0), per image, averaged over the batch:

    L = sum_pixels |x - g(z)| + w_p * 3HW * LPIPS(x, g(z)) + w_kl * KL + lambda * w_adv * L_G
    KL = KL[N(mu, sigma^2) || N(0, I)] = 1/2 sum_latents (mu^2 + sigma^2 - 1 - log sigma^2)

with z = mu + sigma * eps sampled from the posterior, KL summed over latent elements and
averaged over the batch, L1 summed over pixel elements (LDM's convention: w_kl = 1e-6 is LDM's
f8 default relative to that sum), and the perceptual term added to every pixel element as in LDM.
The paper's Sec. 4.2 formula writes an L2 reconstruction; LDM's autoencoder, which the baseline
used, was trained with L1. The adversarial term (hinge, PatchGAN, VQGAN's adaptive lambda, see
``losses.py``) switches on after ``adv_start`` of the steps, with its own optimiser.
Optimiser: AdamW with LDM's betas (0.5, 0.9) and no weight decay (LDM uses Adam), linear warmup
over 5% of the steps then cosine to 0. ``fit_data`` starts from a fresh initialisation drawn
from ``generator``, so a fit is a function of (data, config, generator).

Credits: LDM (Rombach et al. 2022) for the autoencoder and its loss; VQGAN (Esser et al. 2021)
for the adversarial loss and the adaptive weight; LPIPS (Zhang et al. 2018) for the perceptual
loss; diffusers for the parameter layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..logging import progress
from .base import FitData, Tokenizer, patchify, unpatchify
from .conv_vae_nets import (Decoder, Encoder, channel_mults, default_groups,
                            modern_attention_names, pretrained_arch, resolve_pretrained)
from .fitting import StepLoop, StepStats, skip, warmup_cosine_lr, warmup_steps
from .losses import (NLayerDiscriminator, PerceptualLoss, adaptive_weight, disc_layers_for,
                     hinge_d_loss, hinge_g_loss)

LDM_BETAS = (0.5, 0.9)  # AdamW betas of LDM's autoencoder and discriminator


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mean, exp(logvar)) || N(0, I)] summed over all but the batch dim: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@dataclass
class _Fit:
    """What every training step of one conv_vae fit uses."""
    tcfg: Any  # the TokenizerConfig
    device: torch.device
    noise: torch.Generator  # the posterior samples z = mu + sigma eps
    perceptual: PerceptualLoss | None = None
    opt: torch.optim.Optimizer | None = None
    disc: nn.Module | None = None  # VQGAN's patch discriminator (tokenizer.adversarial)
    d_opt: torch.optim.Optimizer | None = None
    adv_from: int = 0  # the first step with the adversarial term

    def adversarial_at(self, step: int) -> bool:
        return self.disc is not None and step >= self.adv_from


# ---------------------------------------------------------------- the tokenizer
class ConvVAETokenizer(Tokenizer):
    name = "conv_vae"
    trained = True

    def __init__(self, patch_size: int, dim: int, width: int = 64, res_blocks: int = 2,
                 block_out_channels: list[int] | None = None, norm_groups: int = 0,
                 channels: int = 3):
        super().__init__(patch_size, dim, channels)
        stride = patch_size // 2
        if dim % 4 or stride < 1 or stride & (stride - 1) or 2 * stride != patch_size:
            raise ValueError(f"conv_vae needs dim % 4 == 0 and patch_size = 2 s with s a power of "
                             f"two (got dim={dim}, patch_size={patch_size})")
        levels = stride.bit_length()  # log2(s) + 1
        widths = list(block_out_channels or [width * m for m in channel_mults(levels)])
        if len(widths) != levels:
            raise ValueError(f"{len(widths)} levels give stride {2 ** (len(widths) - 1)}, but "
                             f"patch_size={patch_size} needs stride {stride}")
        self.stride, self.latent_channels = stride, dim // 4
        self.width, self.res_blocks, self.block_out_channels = widths[0], res_blocks, widths
        self.norm_groups = norm_groups or default_groups(widths)
        g, c = self.norm_groups, self.latent_channels
        self.encoder = Encoder(channels, widths, res_blocks, c, g)
        self.decoder = Decoder(c, widths, res_blocks, channels, g)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.register_buffer("scale", torch.tensor(1.0))

    # ---------------------------------------------------------------- config
    @staticmethod
    def effective_stride(cfg) -> int:
        return cfg.tokenizer.stride or cfg.model.patch_size // 2

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        tk, p = cfg.tokenizer, cfg.model.patch_size
        s = cls.effective_stride(cfg)
        if s < 1 or s & (s - 1) or 2 * s != p:
            raise ConfigError(
                f"tokenizer.name=conv_vae: the latent stride s (tokenizer.stride={tk.stride}, 0 = "
                f"model.patch_size/2) must be a power of two with 2 s = model.patch_size={p}, since a "
                "token is a 2x2 patch of latents and the token grid must be the backbone's; set "
                "model.patch_size to 2, 4, 8, 16, ... and tokenizer.stride=0.")
        if tk.dim % 4:
            raise ConfigError(f"tokenizer.dim={tk.dim}: conv_vae tokens are 2x2 patches of c-channel "
                              "latents, so tokenizer.dim = 4 c must be a multiple of 4.")
        if tk.width < 1 or tk.res_blocks < 1:
            raise ConfigError("tokenizer.width and tokenizer.res_blocks must be >= 1 for conv_vae.")
        if not (0.0 <= tk.adv_start <= 1.0 and tk.adv_weight >= 0 and tk.perceptual_weight >= 0):
            raise ConfigError("tokenizer.adv_start must be in [0, 1] and tokenizer.adv_weight, "
                              "tokenizer.perceptual_weight >= 0.")
        if tk.perceptual and not tk.pretrained and not Path(tk.perceptual_weights).is_file():
            where = f"'{tk.perceptual_weights}' does not exist" if tk.perceptual_weights else "is not set"
            raise ConfigError(
                f"tokenizer.perceptual=true needs tokenizer.perceptual_weights=PATH, which {where}: "
                "a local file with torchvision's VGG16 ImageNet weights (IMAGENET1K_V1, the "
                "vgg16-397923af.pth that torchvision downloads; fetch it on a machine with internet "
                "and copy it here, or give a safetensors file of the same state dict). ldae never "
                "downloads weights. Note that the paper (Sec. 4.1, Tab. 1) treats a tokenizer "
                "trained with this supervised perceptual loss as not legitimate for self-supervised "
                "learning; set tokenizer.perceptual=false for a legitimate run.")
        if tk.pretrained:
            if not Path(tk.pretrained).exists():
                raise ConfigError(f"tokenizer.pretrained='{tk.pretrained}' does not exist; give a "
                                  "diffusers-layout AutoencoderKL safetensors file (or its folder).")
            try:
                arch = pretrained_arch(tk.pretrained)
            except CheckpointError as e:
                raise ConfigError(f"tokenizer.pretrained: {e}") from None
            ps, dim = 2 ** len(arch["block_out_channels"]), 4 * arch["latent_channels"]
            if ps != p or dim != tk.dim or arch["in_channels"] != 3:
                raise ConfigError(
                    f"tokenizer.pretrained={tk.pretrained} has stride {ps // 2} and "
                    f"{arch['latent_channels']} latent channels, so it needs model.patch_size={ps} "
                    f"and tokenizer.dim={dim} (got {p} and {tk.dim}).")

    @classmethod
    def from_config(cls, cfg) -> "ConvVAETokenizer":
        tk = cfg.tokenizer
        if tk.pretrained:  # the file's architecture (check_config made sure it fits the model)
            arch = pretrained_arch(tk.pretrained)
            return cls(cfg.model.patch_size, tk.dim, res_blocks=arch["res_blocks"],
                       block_out_channels=arch["block_out_channels"], norm_groups=arch["norm_groups"])
        return cls(cfg.model.patch_size, tk.dim, width=tk.width, res_blocks=tk.res_blocks)

    def meta(self) -> dict:
        return {**super().meta(), "width": self.width, "res_blocks": self.res_blocks,
                "block_out_channels": list(self.block_out_channels), "norm_groups": self.norm_groups}

    # ---------------------------------------------------------------- model
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior N(mean, exp(logvar)) of the (unscaled) latent, each (B, c, H/s, W/s)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_latent(self, lat: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, c, h, w) -> image (B, 3, h s, w s)."""
        return self.decoder(self.post_quant_conv(lat))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (deterministic; DiT samples the posterior) x scale, 2x2 latent tokens."""
        return patchify(self.moments(x)[0] * self.scale, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lat = unpatchify(z, 2, self.latent_channels) / self.scale
        return self.to_tokens(self.decode_latent(lat))

    def filters(self) -> torch.Tensor:
        """conv_in's 3x3 RGB filters (width, 3, 3, 3), by decreasing norm."""
        w = self.encoder.conv_in.weight.detach()
        return w[w.flatten(1).norm(dim=1).argsort(descending=True)]

    # ---------------------------------------------------------------- pretrained
    @classmethod
    def load_pretrained(cls, path: str | Path, patch_size: int | None = None) -> "ConvVAETokenizer":
        """A tokenizer from a diffusers-layout AutoencoderKL safetensors file (or its folder),
        strict load; ``scale`` = the config's scaling_factor if given, else 1 (measure it with
        :meth:`measure_scale`)."""
        arch = pretrained_arch(path)
        ps = 2 ** len(arch["block_out_channels"])
        if patch_size not in (None, ps):
            raise ConfigError(f"{path} has stride {ps // 2}: it needs model.patch_size={ps}.")
        tok = cls(ps, 4 * arch["latent_channels"], res_blocks=arch["res_blocks"],
                  block_out_channels=arch["block_out_channels"], norm_groups=arch["norm_groups"],
                  channels=arch["in_channels"])
        tok.load_pretrained_weights(path)
        return tok

    def load_pretrained_weights(self, path: str | Path) -> str:
        """Strict load of a diffusers state dict into this architecture; returns where ``scale``
        came from ("config" or "unset")."""
        file = resolve_pretrained(path)
        arch = pretrained_arch(path)
        sd = modern_attention_names(load_file(str(file)))
        sf = arch["scaling_factor"]
        sd["scale"] = torch.tensor(float(sf) if sf else 1.0)
        try:
            self.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{file} does not match the conv_vae architecture "
                                  f"{self.meta()}: {e}") from None
        return "config" if sf else "unset"

    # ---------------------------------------------------------------- fitting
    @torch.no_grad()
    def measure_scale(self, batches, max_batches: int = 8) -> tuple[float, float]:
        """Set ``scale`` = 1 / std of the posterior-mean latents over the first ``max_batches``
        batches (LDM's scale_factor, all elements pooled). Returns (scale, mean |x - x_hat|)."""
        n, n_img, s1, s2, l1 = 0, 0, 0.0, 0.0, 0.0
        for i, x in enumerate(batches):
            if i >= max_batches:
                break
            mean = self.moments(x)[0].double()
            n += mean.numel()
            s1, s2 = s1 + float(mean.sum()), s2 + float(mean.pow(2).sum())
            l1 += float((self.decode_latent(mean.float()) - x).abs().mean(dim=(1, 2, 3)).sum())
            n_img += x.shape[0]
        if n < 2:
            raise ValueError("need at least 2 latent elements to measure the scale")
        std = math.sqrt(max(s2 - s1 * s1 / n, 0.0) / (n - 1))
        self.scale.fill_(1.0 / max(std, 1e-12))
        return float(self.scale), l1 / n_img

    def _fresh_init(self, seed: int) -> None:
        """Re-draw every parameter from PyTorch's default inits with a CPU generator seeded by
        ``seed`` (independent of the global RNG state), keeping the device."""
        device = self.scale.device
        self.cpu()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            for m in self.modules():
                if m is not self and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.scale.fill_(1.0)
        self.to(device)


    def fit_data(self, data: FitData, tcfg, generator: torch.Generator | None = None,
                 show: bool = True) -> dict:
        """Train from a fresh initialisation drawn from ``generator`` (or, with
        ``tcfg.pretrained``, load that file instead), then measure ``scale``. Statistics:
        recon_l1 / kl / loss (and perceptual, g_loss, d_loss, adv_lambda when on) averaged over
        the last epoch's steps, recon_l1_init / recon_l1_eval (posterior-mean reconstruction on
        the scale batches before / after), scale, steps."""
        if tcfg.pretrained:
            return self._fit_pretrained(data, tcfg)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        # three seeds, in this order: the weights, the posterior noise, the discriminator
        seeds = torch.randint(0, 2 ** 62, (3,), generator=g).tolist()
        self._fresh_init(seeds[0])
        fit = _Fit(tcfg, data.device, torch.Generator(data.device).manual_seed(seeds[1]))
        self.to(data.device).eval()
        _, rec_init = self.measure_scale(data.batches(tcfg.fit_batch, 0, shuffle=False))
        self.train()
        if tcfg.perceptual:
            fit.perceptual = PerceptualLoss.from_file(tcfg.perceptual_weights).to(data.device)
        steps_per_epoch = math.ceil(data.n / tcfg.fit_batch)
        total = max(1, round(tcfg.fit_epochs * steps_per_epoch))
        fit.adv_from = math.ceil(tcfg.adv_start * total)
        if tcfg.adversarial:
            self._add_discriminator(fit, data, seeds[2])
        fit.opt = torch.optim.AdamW(self.parameters(), lr=tcfg.fit_lr, betas=LDM_BETAS,
                                    weight_decay=0.0)
        stats, steps = self._train(fit, data, total, steps_per_epoch, show)
        self.eval()
        scale, rec_eval = self.measure_scale(data.batches(tcfg.fit_batch, 0, shuffle=False))
        stats.update(scale=scale, scale_source="measured", recon_l1_init=rec_init,
                     recon_l1_eval=rec_eval, steps=steps,
                     adv_start_step=fit.adv_from if fit.disc is not None else None)
        return stats

    def _fit_pretrained(self, data: FitData, tcfg) -> dict:
        """``tcfg.pretrained``: load that file, then measure the scale (keeping the file's
        ``scaling_factor`` when its config.json gives one, reporting the measured one too)."""
        self.to(data.device)
        src = self.load_pretrained_weights(tcfg.pretrained)
        stats: dict = {"pretrained": str(tcfg.pretrained), "steps": 0}
        self.eval()
        scale, rec = self.measure_scale(data.batches(tcfg.fit_batch, 0, shuffle=False))
        if src == "config":  # keep the published factor; report what the data say
            stats["scale_measured"] = scale
            self.scale.fill_(float(pretrained_arch(tcfg.pretrained)["scaling_factor"]))
        stats.update(scale=float(self.scale), scale_source=src if src == "config" else "measured",
                     recon_l1_eval=rec)
        return stats

    def _add_discriminator(self, fit: _Fit, data: FitData, seed: int) -> None:
        """VQGAN's patch discriminator, initialised from ``seed`` (the global RNG is left as it
        was), its depth fitted to the image size, and its own AdamW."""
        first = next(iter(data.batches(1, 0, shuffle=False)))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            disc = NLayerDiscriminator(self.channels, 64, disc_layers_for(min(first.shape[-2:])))
        fit.disc = disc.to(fit.device).train()
        fit.d_opt = torch.optim.AdamW(fit.disc.parameters(), lr=fit.tcfg.fit_lr, betas=LDM_BETAS,
                                      weight_decay=0.0)

    def _train(self, fit: _Fit, data: FitData, total: int, steps_per_epoch: int,
               show: bool) -> tuple[dict, int]:
        """``total`` optimiser steps; returns (statistics averaged over the last epoch's steps,
        steps taken)."""
        tc = fit.tcfg
        warmup = warmup_steps(total)
        loop = StepLoop(total, lambda step: warmup_cosine_lr(tc.fit_lr, step, total, warmup))
        stats, window_from = StepStats(), max(0, total - steps_per_epoch)
        bar = progress(int(round(tc.fit_epochs * data.n)), f"fit {self.name} tokenizer", enabled=show)
        for batches in loop.epochs(data, tc.fit_batch, bar):
            for x in batches:
                loop.set_lr(fit.opt, fit.d_opt)
                log = stats.add if loop.step >= window_from else skip
                self._train_step(x, fit, fit.adversarial_at(loop.step), log)
                loop.step += 1
        bar.close()
        return stats.means(), loop.step

    def _train_step(self, x: torch.Tensor, fit: _Fit, adversarial: bool, log) -> None:
        """One step of the autoencoder's loss (module docstring) on the batch ``x``; with
        ``adversarial``, the generator term and then one discriminator step."""
        tc, B = fit.tcfg, x.shape[0]
        mean, logvar = self.moments(x)
        eps = torch.randn(mean.shape, device=fit.device, generator=fit.noise)
        rec = self.decode_latent(mean + (0.5 * logvar).exp() * eps)
        l1 = (x - rec).abs()
        nll = l1.sum() / B
        if fit.perceptual is not None:
            p = fit.perceptual(x, rec)
            nll = nll + tc.perceptual_weight * p.sum() * l1[0].numel() / B
            log("perceptual", p.mean())
        kl = kl_standard_normal(mean, logvar).mean()
        loss = nll + tc.kl_weight * kl
        if adversarial:
            fit.disc.requires_grad_(False)
            g_loss = hinge_g_loss(fit.disc(rec))
            lam = adaptive_weight(nll, g_loss, self.decoder.conv_out.weight) * tc.adv_weight
            loss = loss + lam * g_loss
            log("g_loss", g_loss.detach())
            log("adv_lambda", lam)
        fit.opt.zero_grad(set_to_none=True)
        loss.backward()
        fit.opt.step()
        if adversarial:
            fit.disc.requires_grad_(True)
            d_loss = hinge_d_loss(fit.disc(x), fit.disc(rec.detach()))
            fit.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            fit.d_opt.step()
            log("d_loss", d_loss.detach())
        log("recon_l1", l1.detach().mean())
        log("kl", kl.detach())
        log("loss", loss.detach())


__all__ = ["ConvVAETokenizer", "kl_standard_normal", "pretrained_arch", "channel_mults",
           "default_groups"]
