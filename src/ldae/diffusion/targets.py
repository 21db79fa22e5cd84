"""Prediction targets (Eq. 2, Eq. 3, Tab. 3, Eq. 4).

A target says which space the network's output lives in, what it should equal, and the weight
of each dimension of the residual in the loss basis:

- ``eps``       latent output, the noise (Eq. 2).
- ``z0``        latent output, the clean latent (Eq. 3).
- ``image_pca`` image output, the inverse-tokenized clean latent (Tab. 3 "image-space output").
- ``image``     image output, the original image; residual weighted per PCA dimension: 1 for the
                first d, ``w_rest`` for the other D - d (Eq. 4).
For image outputs the residual is projected on the tokenizer's full basis (``project_full``)
before weighting, r = V (x0 - net(x_t)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Space, register_choices


@dataclass
class Batch:
    """Everything a target may need, all (B, L, .) tokens."""
    x0: torch.Tensor  # image tokens (B, L, D)
    z0: torch.Tensor  # clean latent (B, L, d)
    eps: torch.Tensor  # noise (B, L, d)
    tokenizer: torch.nn.Module


class Target:
    name = "base"
    space = Space.LATENT

    def value(self, b: Batch) -> torch.Tensor:
        raise NotImplementedError

    def dim_weights(self, d: int, D: int, w_rest: float, device: torch.device) -> torch.Tensor | None:
        """Per-dimension weights of the residual in the loss basis; None means all ones."""
        return None

    def to_z0(self, out: torch.Tensor, zt: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor,
              tokenizer: torch.nn.Module) -> torch.Tensor:
        """The clean latent z0 (B, L, d) that the network's output ``out`` stands for, given the
        noisy latent ``zt`` and the (B,) coefficients of its step. What samplers and Fig. 8 use."""
        raise NotImplementedError


class Eps(Target):
    name = "eps"

    def value(self, b: Batch) -> torch.Tensor:
        return b.eps

    def to_z0(self, out, zt, gamma, sigma, tokenizer):
        """z0 = (z_t - sigma_t eps) / gamma_t (Eq. 1 inverted); undefined where gamma_t = 0."""
        return (zt - sigma[:, None, None] * out) / gamma[:, None, None]


class Z0(Target):
    name = "z0"

    def value(self, b: Batch) -> torch.Tensor:
        return b.z0

    def to_z0(self, out, zt, gamma, sigma, tokenizer):
        return out


class ImageTarget(Target):
    space = Space.IMAGE

    def to_z0(self, out, zt, gamma, sigma, tokenizer):
        """The predicted image tokens, tokenized again: z0 = encode(x0_hat)."""
        return tokenizer.encode(tokenizer.to_image(out))


class ImagePCA(ImageTarget):
    name = "image_pca"

    def value(self, b: Batch) -> torch.Tensor:
        return b.tokenizer.decode(b.z0)


class Image(ImageTarget):
    name = "image"

    def value(self, b: Batch) -> torch.Tensor:
        return b.x0

    def dim_weights(self, d: int, D: int, w_rest: float, device: torch.device) -> torch.Tensor:
        w = torch.full((D,), float(w_rest), device=device)
        w[:d] = 1.0
        return w


TARGETS = {t.name: t for t in (Eps, Z0, ImagePCA, Image)}
register_choices("diffusion.target", lambda: sorted(TARGETS))
