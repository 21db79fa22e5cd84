"""Patch-wise PCA tokenizer (paper Sec. 4.2, Fig. 4; SPEC §4).

Fit: mean and covariance of image patches, accumulated in float64 chunk by chunk around a
provisional mean (so any number of images streams through without cancellation), then one
symmetric eigendecomposition. The full D x D basis V is kept (rows = components, by decreasing
variance) because Eq. 4 projects the residual on all D components. V is orthonormal
(V V^T = I), so with ``whiten=False`` (the paper) encode/decode is a rotation followed by a
truncation; ``whiten=True`` divides each latent dim by its standard deviation (an ablation).

The latent's global scale (``scale``; the paper is silent on it). ``none`` keeps the raw PCA
coordinates, whose overall std grows with the patch energy (about 1.7 at 32 px / patch 4 / d = 4,
2.4 at 64 px / patch 8 / d = 8, with the top component 2-4x that). ``unit`` divides every latent
dim by one scalar s = sqrt(mean_i lambda_i, i <= d), the overall std of the kept latent on the fit
data, so the latent has unit overall std as the conv VAE and patch AE/VAE latents do (LDM's
scale_factor): V V^T = I up to that scalar, no per-dim whitening. s follows from the stored
eigenvalues of the fit at the current d, so one fit serves every d (``with_dim``). In image space
(decode(encode(x) + sigma eps)) ``unit`` is the same as noise sigma * s on the raw latent: the
image-space input, output and Eq. 4 keep their image units.

encode: z = (x_patch - mean) V_d^T / s         (B, L, d)    (s = 1 for scale=none)
decode: x_patch = s z V_d + mean               (B, L, D)    (the "inverse PCA", V^T)
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..logging import progress
from .base import FitData, Tokenizer


class CovarianceAccumulator:
    """Streaming fp64 mean/covariance of row vectors (N, D), shifted by the first chunk's mean.

    The sums live on the device of the first chunk: a fit on the GPU accumulates there (fp64
    GEMMs), not on the host."""

    def __init__(self, dim: int):
        self.dim, self.n = dim, 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, self.dim).to(torch.float64)
        if self.shift is None:
            self.shift = rows.mean(0)
            self.sum = torch.zeros(self.dim, dtype=torch.float64, device=rows.device)
            self.gram = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=rows.device)
        r = rows.to(self.shift.device) - self.shift
        self.n += r.shape[0]
        self.sum += r.sum(0)
        # only the block rows' upper part (a blocked rank-k update, BLAS's syrk idea): 10/16 of
        # the full product's FLOPs with 4 blocks, 1.5x faster on one CPU core at D = 768
        for lo, hi in self._blocks():
            self.gram[lo:hi, lo:].addmm_(r[:, lo:hi].T, r[:, lo:])

    def _blocks(self) -> list[tuple[int, int]]:
        nb = 4 if self.dim >= 256 else 1
        edges = [round(i * self.dim / nb) for i in range(nb + 1)]
        return list(zip(edges[:-1], edges[1:]))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) in float64, on the CPU."""
        if self.n < 2:
            raise ValueError("need at least 2 samples to estimate a covariance")
        gram = self.gram.clone()
        for lo, hi in self._blocks():  # mirror the upper block rows into the lower part
            gram[hi:, lo:hi] = gram[lo:hi, hi:].T
        m = self.sum / self.n
        cov = (gram - self.n * torch.outer(m, m)) / (self.n - 1)
        return (m + self.shift).cpu(), ((cov + cov.T) / 2).cpu()


class PCATokenizer(Tokenizer):
    name = "pca"
    #: the full D x D basis is kept (rows = components): image-space input/output and Eq. 4
    full_basis = True

    SCALES = ("none", "unit")

    def __init__(self, patch_size: int, dim: int, whiten: bool = False, channels: int = 3,
                 scale: str = "none"):
        super().__init__(patch_size, dim, channels)
        if scale not in self.SCALES:
            raise ValueError(f"scale={scale!r} must be one of {self.SCALES}")
        D = self.full_dim
        self.whiten, self.scale = whiten, scale
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("basis", torch.eye(D))  # (D, D), rows = components
        self.register_buffer("eigvals", torch.ones(D))

    @classmethod
    def from_config(cls, cfg) -> "PCATokenizer":
        return cls(cfg.model.patch_size, cfg.tokenizer.dim, whiten=cfg.tokenizer.whiten,
                   scale=cfg.tokenizer.scale)

    def meta(self) -> dict:
        return {**super().meta(), "whiten": self.whiten, "scale": self.scale}

    def fit_data(self, data: FitData, tcfg, generator: torch.Generator | None = None,
                 show: bool = True) -> dict:
        bar = progress(data.n, "fit pca tokenizer", enabled=show)

        def counted():
            for x in data.batches(1024, 0, shuffle=False):
                bar.update(x.shape[0])
                yield x

        self.fit(counted(), patches_per_image=tcfg.patches_per_image, generator=generator)
        bar.close()
        ev = self.explained_variance()
        return {"explained_variance_at_dim": float(ev[self.dim - 1]),
                "latent_std": float(self.eigvals[: self.dim].mean().sqrt()),
                "scale": float(self.global_scale()),
                "explained_variance": [round(float(v), 6) for v in ev]}

    def filters(self) -> torch.Tensor:
        p, C = self.patch_size, self.channels
        return self.basis.reshape(-1, C, p, p)

    def with_dim(self, dim: int) -> "PCATokenizer":
        """The full basis is kept, so any d in [1, D] is the same fit truncated differently."""
        if not 1 <= dim <= self.full_dim:
            raise ValueError(f"dim={dim} must be in [1, {self.full_dim}]")
        tok = PCATokenizer(self.patch_size, dim, whiten=self.whiten, channels=self.channels,
                           scale=self.scale)
        tok.load_state_dict(self.state_dict())
        return tok.to(self.mean.device)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor], patches_per_image: int = 0,
            generator: torch.Generator | None = None) -> "PCATokenizer":
        """``batches`` yields float images (B, C, H, W) in [-1, 1]."""
        acc = CovarianceAccumulator(self.full_dim)
        for x in batches:
            tokens = self.to_tokens(x.float())  # (B, L, D)
            if 0 < patches_per_image < tokens.shape[1]:
                idx = torch.rand(tokens.shape[:2], generator=generator).argsort(1)[:, :patches_per_image]
                idx = idx.to(tokens.device)
                tokens = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[2]))
            acc.update(tokens)
        mean, cov = acc.finish()
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = evals.argsort(descending=True)
        self.mean.copy_(mean.float())
        self.eigvals.copy_(evals[order].clamp_min(0).float())
        self.basis.copy_(evecs[:, order].T.float())
        return self

    def global_scale(self) -> torch.Tensor:
        """s of ``scale=unit``: the overall std of the kept (unwhitened) latent on the fit data,
        sqrt(mean of the first d eigenvalues); 1 for ``scale=none`` or with ``whiten`` (whitened
        latents already have unit std per dim)."""
        if self.scale == "none" or self.whiten:
            return torch.ones((), device=self.eigvals.device)
        return self.eigvals[: self.dim].mean().clamp_min(1e-12).sqrt()

    def latent_scale(self) -> torch.Tensor:
        """The (d,) divisor that maps PCA coordinates to latents: sqrt(lambda_i) with ``whiten``,
        else s of :meth:`global_scale` in every dim."""
        if self.whiten:
            return self.eigvals[: self.dim].clamp_min(1e-12).sqrt()
        return self.global_scale().expand(self.dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.to_tokens(x) - self.mean) @ self.basis[: self.dim].T
        return z if self.scale == "none" and not self.whiten else z / self.latent_scale()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale != "none" or self.whiten:
            z = z * self.latent_scale()
        return z @ self.basis[: self.dim] + self.mean

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) as image tokens: x's patches with the PCA residual (the components
        beyond d) removed, ``(x - m) V_d^T V_d + m``. The latent scale cancels."""
        return (self.to_tokens(x) - self.mean) @ self.basis[: self.dim].T @ self.basis[: self.dim] + self.mean

    def project_full(self, r: torch.Tensor) -> torch.Tensor:
        """Coordinates of image-token residuals in the full basis: r V^T, (B, L, D) (Eq. 4)."""
        return r @ self.basis.T

    def linear_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """encode as an affine map of image tokens: W = V_d / s (each row by its latent scale,
        ``latent_scale``), b = -W m."""
        W = self.basis[: self.dim] / self.latent_scale()[:, None]  # whiten / scale=unit
        return W, -(W @ self.mean)

    def projection_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """decode(encode(x)) = x P + m (I - P) with P = V_d^T V_d (symmetric): A = P, a = m - m P,
        computed in float64 and returned in float32. The latent scale cancels."""
        V = self.basis[: self.dim].double()
        P, m = V.T @ V, self.mean.double()
        return P.float(), (m - m @ P).float()

    def explained_variance(self) -> torch.Tensor:
        """Cumulative fraction of patch variance kept by the first 1..D components."""
        return self.eigvals.cumsum(0) / self.eigvals.sum().clamp_min(1e-12)
