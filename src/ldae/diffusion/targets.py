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


@dataclass
class Batch:
    """Everything a target may need, all (B, L, .) tokens."""
    x0: torch.Tensor  # image tokens (B, L, D)
    z0: torch.Tensor  # clean latent (B, L, d)
    eps: torch.Tensor  # noise (B, L, d)
    tokenizer: torch.nn.Module


class Target:
    name = "base"
    space = "latent"

    def value(self, b: Batch) -> torch.Tensor:
        raise NotImplementedError

    def dim_weights(self, d: int, D: int, w_rest: float, device: torch.device) -> torch.Tensor | None:
        """Per-dimension weights of the residual in the loss basis; None means all ones."""
        return None


class Eps(Target):
    name = "eps"

    def value(self, b: Batch) -> torch.Tensor:
        return b.eps


class Z0(Target):
    name = "z0"

    def value(self, b: Batch) -> torch.Tensor:
        return b.z0


class ImagePCA(Target):
    name, space = "image_pca", "image"

    def value(self, b: Batch) -> torch.Tensor:
        return b.tokenizer.decode(b.z0)


class Image(Target):
    name, space = "image", "image"

    def value(self, b: Batch) -> torch.Tensor:
        return b.x0

    def dim_weights(self, d: int, D: int, w_rest: float, device: torch.device) -> torch.Tensor:
        w = torch.full((D,), float(w_rest), device=device)
        w[:d] = 1.0
        return w


TARGETS = {t.name: t for t in (Eps, Z0, ImagePCA, Image)}
