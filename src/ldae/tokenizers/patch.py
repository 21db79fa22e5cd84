"""Patch-wise linear autoencoders: ``patch_ae`` and ``patch_vae`` (paper Sec. 4.2, Tab. 2, Fig. 4).

Both act on image patches x in R^D, D = C p^2, flattened as (C, p, p) like ``to_tokens``, with a
linear encoder V and a linear decoder U, each d x D.

patch_ae minimises the mean squared reconstruction error of centred patches
    L_AE = mean_{patches, i} (x - m - U^T V (x - m))_i^2,
where m is the data patch mean, measured once at the start of the fit (as PCA does). The paper
writes ||x - U^T V x||^2 without a mean; centring makes the linear AE's global optimum span
exactly PCA's top-d subspace (Baldi & Hornik 1989: every local minimum of the linear AE is
global and U^T V is the orthogonal projector on the top-d principal subspace of the centred
covariance), so its optimal error is PCA's sum of trailing eigenvalues. V and U themselves are
only determined up to an invertible d x d mixing (V -> A V, U -> A^-T U).

patch_vae replaces V by a diagonal Gaussian encoder (Kingma & Welling 2014):
    mu = V (x - m),  log sigma^2 = V_lv (x - m) + b_lv,  z = mu + sigma * eps  (fit only),
    L_VAE = mean_{patches} [ sum_i (x - m - U^T z)_i^2  +  kl_weight * KL_patch ],
    KL_patch = KL[N(mu, sigma^2) || N(0, I)] = 0.5 sum_{j<d} (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2).
Both terms are summed within a patch (over its D pixels and its d latent dims) and averaged over
patches: LDM's convention, so ``tokenizer.kl_weight`` means what it means for ``conv_vae``
(whose reconstruction and KL are likewise sums). log sigma^2 is clamped to [-30, 20] as in LDM.
The reported ``recon_mse`` is the per-pixel mean.
``encode`` returns the posterior mean mu (deterministic), as LDM's DiT pipeline uses
``latent_dist.mode()`` for features; the sampling happens during the fit only.

Both: after the fit one global scale factor s = 1 / std(z) over all latent entries of the fit
data is measured and stored (LDM's ``scale_factor``), so the latents the diffusion model sees
have unit standard deviation:
    encode: z = s * V (x - m)           (B, L, d)
    decode: x = U^T (z / s) + m         (B, L, D)
The latent dims are then sorted by decreasing variance (a relabelling that leaves the loss
unchanged), so ``filters()`` lists V's rows in decreasing importance, as PCA's (Fig. 4).
Weights are stored as buffers (state is tensors only and never trained by the backbone's
optimiser); the fit optimises temporary parameters with AdamW (weight decay 0), a linear warmup
over the first 5% of steps and a cosine decay to zero, and copies them back.
"""
from __future__ import annotations

import math

import torch

from ..logging import progress
from .base import FitData, Tokenizer
from .fitting import WARMUP_FRACTION, StepLoop, StepStats, warmup_cosine, warmup_steps

LOGVAR_RANGE = (-30.0, 20.0)


class PatchAETokenizer(Tokenizer):
    """Linear patch autoencoder with untied encoder V and decoder U (d x D each)."""

    name = "patch_ae"
    trained = True
    #: buffers whose leading axis is the latent dim (permuted together when the dims are sorted)
    _latent_rows: tuple[str, ...] = ("encoder", "decoder")

    def __init__(self, patch_size: int, dim: int, channels: int = 3):
        super().__init__(patch_size, dim, channels)
        D = self.full_dim
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("encoder", torch.zeros(dim, D))  # V
        self.register_buffer("decoder", torch.zeros(dim, D))  # U
        self.register_buffer("scale", torch.ones(1))  # s: encode multiplies, decode divides

    @classmethod
    def from_config(cls, cfg) -> "PatchAETokenizer":
        return cls(cfg.model.patch_size, cfg.tokenizer.dim)

    # ------------------------------------------------------------ model
    def _params(self, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Fresh trainable weights, drawn on the CPU from ``generator`` (deterministic)."""
        d, D = self.dim, self.full_dim
        std = 1.0 / math.sqrt(D)
        return {"encoder": torch.randn(d, D, generator=generator) * std,
                "decoder": torch.randn(d, D, generator=generator) * std}

    def _loss(self, p: dict[str, torch.Tensor], xc: torch.Tensor, generator: torch.Generator | None,
              kl_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(loss, recon mse, kl or None) on centred patch rows ``xc`` (N, D); the AE has no KL."""
        rec = (xc @ p["encoder"].T) @ p["decoder"]
        mse = (rec - xc).pow(2).mean()
        return mse, mse, None

    def _latent(self, xc: torch.Tensor) -> torch.Tensor:
        """Unscaled deterministic latent of centred patch rows."""
        return xc @ self.encoder.T

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._latent(self.to_tokens(x) - self.mean) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z / self.scale) @ self.decoder + self.mean

    def filters(self) -> torch.Tensor:
        """Rows of the encoder V as (d, C, p, p) patches (Fig. 4); for the VAE, the mean encoder."""
        p, C = self.patch_size, self.channels
        return self.encoder.reshape(-1, C, p, p)

    # ------------------------------------------------------------ fit
    def fit_data(self, data: FitData, tcfg, generator: torch.Generator | None = None,
                 show: bool = True) -> dict:
        """1. the patch mean, 2. a gradient fit of fresh weights, 3. the scale factor, with the
        latent dims sorted by variance (module docstring). Draws from ``generator``, in this
        order: the seed of the patch-row shuffles, the initial weights, the seed of the VAE's eps.
        Returns the final epoch's mean training losses (the VAE's with sampled z; its KL in
        unscaled latent units, the posterior it trained), the scale factor and the steps."""
        n, bs = data.n, int(tcfg.fit_batch)
        # a step is `patch_batch` patch rows: each batch of `fit_batch` images is shuffled and cut
        # into chunks, so small image sets still give a linear model enough steps
        L = (next(data.batches(1, 0, shuffle=False)).shape[-1] // self.patch_size) ** 2
        pb = int(getattr(tcfg, "patch_batch", 0)) or bs * L
        total = max(1, round(float(tcfg.fit_epochs) * self._steps_per_epoch(n, bs, L, pb)))
        images = round(float(tcfg.fit_epochs) * n)  # images the training steps see (about)
        bar = progress(images + 2 * n, f"fit {self.name} tokenizer", enabled=show)
        perm_gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2 ** 62, (1,), generator=generator)) if generator is not None else 0)
        self._fit_mean(data, bs, bar)
        last, steps = self._train(data, tcfg, generator, perm_gen, pb, total, bar)
        self._fit_scale(data, bs, bar)
        bar.close()
        return {**last, "scale": float(self.scale), "steps": int(steps)}

    @staticmethod
    def _steps_per_epoch(n: int, batch: int, tokens: int, patch_batch: int) -> int:
        """Optimiser steps in one pass over ``n`` images: each batch's patch rows in chunks."""
        return sum(max(1, math.ceil(min(batch, n - i) * tokens / patch_batch))
                   for i in range(0, n, batch))

    @torch.no_grad()
    def _fit_mean(self, data: FitData, batch: int, bar) -> None:
        """The patch mean m: an fp64 sum over every patch of the fit images."""
        acc, count = torch.zeros(self.full_dim, dtype=torch.float64, device=data.device), 0
        for x in data.batches(batch, 0, shuffle=False):
            t = self.to_tokens(x.float()).reshape(-1, self.full_dim)
            acc += t.sum(0, dtype=torch.float64)
            count += t.shape[0]
            bar.update(x.shape[0])
        self.mean.copy_((acc / max(count, 1)).float())

    def _train(self, data: FitData, tcfg, generator: torch.Generator | None,
               perm_gen: torch.Generator, patch_batch: int, total: int, bar) -> tuple[dict, int]:
        """AdamW on fresh weights over shuffled chunks of centred patch rows, then the weights
        copied into the buffers. Returns (the last epoch's row-weighted mean losses, steps)."""
        dev = data.device
        params = {k: torch.nn.Parameter(v.to(dev)) for k, v in self._params(generator).items()}
        opt = torch.optim.AdamW(params.values(), lr=tcfg.fit_lr, weight_decay=0.0)
        noise_gen = None
        if generator is not None:  # the VAE's eps draws: a function of the given generator too
            noise_gen = torch.Generator(device=dev).manual_seed(
                int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
        kl_weight = float(getattr(tcfg, "kl_weight", 0.0))
        warmup = warmup_steps(total)
        loop = StepLoop(total, lambda step: tcfg.fit_lr * warmup_cosine(step, total, warmup))
        last: dict[str, float] = {}
        for batches in loop.epochs(data, int(tcfg.fit_batch), bar):
            stats = StepStats()
            for x in batches:
                rows = self.to_tokens(x.float()).reshape(-1, self.full_dim) - self.mean
                order = torch.randperm(rows.shape[0], generator=perm_gen).to(dev)
                for idx in order.split(patch_batch):
                    if loop.done:
                        break
                    xc = rows[idx]
                    loop.set_lr(opt)
                    loss, mse, kl = self._loss(params, xc, noise_gen, kl_weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loop.step += 1
                    stats.add("recon_mse", mse, xc.shape[0])
                    if kl is not None:
                        stats.add("kl", kl, xc.shape[0])
            last = stats.means() or last
        with torch.no_grad():
            for k, v in params.items():
                getattr(self, k).copy_(v.detach())
        return last, loop.step

    @torch.no_grad()
    def _fit_scale(self, data: FitData, batch: int, bar) -> None:
        """The scale factor: unit std of the (deterministic) latents of the fit data. The latent
        dims are also sorted by decreasing variance (a relabelling: the loss is unchanged), so
        filters() lists them in decreasing importance like PCA's."""
        s1 = torch.zeros(self.dim, dtype=torch.float64, device=data.device)
        s2 = torch.zeros(self.dim, dtype=torch.float64, device=data.device)
        cnt = 0
        for x in data.batches(batch, 0, shuffle=False):
            z = self._latent(self.to_tokens(x.float()) - self.mean).double().reshape(-1, self.dim)
            s1 += z.sum(0)
            s2 += z.pow(2).sum(0)
            cnt += z.shape[0]
            bar.update(x.shape[0])
        m = s1 / cnt
        var = (s2 / cnt - m * m).clamp_min(0)
        mall = m.mean()
        std = float((s2.sum() / (cnt * self.dim) - mall * mall).clamp_min(0).sqrt())
        self.scale.fill_(1.0 / std if std > 1e-12 else 1.0)
        order = var.argsort(descending=True)
        for k in self._latent_rows:
            getattr(self, k).copy_(getattr(self, k)[order])


class PatchVAETokenizer(PatchAETokenizer):
    """Linear patch VAE: Gaussian encoder (mean V, log-variance V_lv x + b_lv), linear decoder U."""

    name = "patch_vae"
    trained = True
    _latent_rows = ("encoder", "decoder", "encoder_logvar", "logvar_bias")

    def __init__(self, patch_size: int, dim: int, channels: int = 3):
        super().__init__(patch_size, dim, channels)
        self.register_buffer("encoder_logvar", torch.zeros(dim, self.full_dim))  # V_lv
        self.register_buffer("logvar_bias", torch.zeros(dim))  # b_lv

    def _params(self, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        p = super()._params(generator)
        # log sigma^2 starts near 0 (the prior's variance), as a freshly initialised LDM encoder
        p["encoder_logvar"] = torch.randn(self.dim, self.full_dim, generator=generator) * (
            0.01 / math.sqrt(self.full_dim))
        p["logvar_bias"] = torch.zeros(self.dim)
        return p

    @staticmethod
    def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL[N(mu, exp(logvar)) || N(0, I)] per row, summed over the last (latent) dim."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)

    def posterior(self, xc: torch.Tensor, p: dict[str, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of centred patch rows, unscaled; ``p`` defaults to the stored weights."""
        p = p if p is not None else dict(self.named_buffers())
        mu = xc @ p["encoder"].T
        logvar = (xc @ p["encoder_logvar"].T + p["logvar_bias"]).clamp(*LOGVAR_RANGE)
        return mu, logvar

    def _loss(self, p: dict[str, torch.Tensor], xc: torch.Tensor, generator: torch.Generator | None,
              kl_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(xc, p)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        mse = (z @ p["decoder"] - xc).pow(2).mean()
        kl = self.kl_divergence(mu, logvar).mean()
        return xc.shape[-1] * mse + kl_weight * kl, mse, kl


__all__ = ["PatchAETokenizer", "PatchVAETokenizer", "warmup_cosine", "WARMUP_FRACTION", "LOGVAR_RANGE"]
