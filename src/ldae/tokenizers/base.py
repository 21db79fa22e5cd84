"""The tokenizer interface (SPEC §4) and patchify helpers.

A tokenizer maps images (B, 3, H, W) in [-1, 1] to latent tokens (B, L, d) and back to image
tokens (B, L, D), D = 3 p^2, one token per p x p patch flattened as (C, p, p) — the layout of a
strided conv's weight, so a Linear on these tokens is DiT's / timm's patch embedding.
State is tensors only, saved as safetensors with a small JSON header: loading runs no code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import atomic_path
from ..config import Space
from ..errors import CheckpointError, ConfigError
from ..seeds import generator, mix


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C p p), L = (H/p)(W/p), row-major over the patch grid."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """(B, L, C p p) -> (B, C, H, W) for a square grid."""
    B, L, _ = tokens.shape
    g = int(round(L ** 0.5))
    x = tokens.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, g * p, g * p)


class FitData:
    """What a tokenizer's ``fit_data`` sees: ``n`` images, served as shuffled float batches.

    ``batches(batch_size, epoch)`` yields (B, C, H, W) float32 images in [-1, 1] on ``device``,
    in an order that is a function of (seed, epoch) only, the last batch possibly smaller."""

    def __init__(self, n: int, get, device: torch.device, seed: int = 0):
        self.n, self._get, self.device, self.seed = n, get, torch.device(device), seed

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool = True):
        g = generator(mix(self.seed, epoch))
        order = torch.randperm(self.n, generator=g) if shuffle else torch.arange(self.n)
        for i in range(0, self.n, batch_size):
            yield self._get(order[i:i + batch_size]).to(self.device, non_blocking=True)


class Tokenizer(nn.Module):
    """Common interface (SPEC §4). Subclasses set ``name`` and implement
    ``from_config``, ``fit_data``, ``encode`` and ``decode``; ``meta()`` holds the constructor
    keywords, so ``load_tokenizer`` rebuilds any tokenizer from its file without running code.

    Capabilities, for callers that need more than encode/decode (ask these, never the name):

    - ``full_basis`` (class attribute): the tokenizer keeps a full-rank orthonormal D x D basis
      of image tokens whose first d directions are what it encodes; ``project_full`` gives
      coordinates in that basis, ``decode`` maps a (noisy) latent to pixels and ``with_dim``
      serves any d from one fit. Image-space input/output and Eq. 4's loss need it
      (``check_config``). PCA.
    - ``linear_map()``: (W, b) when encode is one affine map of each patch, else None.
    - ``projection_map()``: (A, a) when decode(encode(.)) is one affine map of each patch, else
      None. ``ldae export`` folds these two into a timm ViT's patch embedding.
    """

    name = "base"
    #: whether ``fit_data`` trains by gradient descent (True) or is closed-form (PCA, pixel)
    trained = False
    #: a full-rank basis behind ``project_full`` (see the class docstring); PCA only
    full_basis = False

    def __init__(self, patch_size: int, dim: int, channels: int = 3):
        super().__init__()
        self.patch_size, self.dim, self.channels = patch_size, dim, channels

    @property
    def full_dim(self) -> int:
        """D = C p^2, the image-space token dim."""
        return self.channels * self.patch_size ** 2

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.patch_size)

    def to_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens, self.patch_size, self.channels)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Cross-field checks of a full ``Config`` for this tokenizer; raise ``ConfigError`` with a
        message naming the keys and the fix. Called by ``config.validate`` before any work.
        Subclasses extend it and call ``super().check_config(cfg)`` first. The rule every
        tokenizer shares: image-space diffusion input/output needs ``full_basis``."""
        dz = cfg.diffusion
        if not (cls.full_basis or dz.input_space == Space.LATENT and dz.output_space == Space.LATENT):
            raise ConfigError(
                "diffusion.input_space/output_space=image needs a tokenizer with a full basis "
                "(Tokenizer.full_basis, as the PCA tokenizer has: its inverse PCA maps the noisy "
                "latent to pixels and Eq. 4 needs its full basis); "
                f"tokenizer.name={cfg.tokenizer.name} has none and works in latent space only: set "
                "diffusion.input_space=latent diffusion.output_space=latent.")

    @classmethod
    def from_config(cls, cfg) -> "Tokenizer":
        """A fresh (unfitted) tokenizer from a full ``Config``."""
        raise NotImplementedError

    def fit_data(self, data: FitData, tcfg, generator: torch.Generator | None = None,
                 show: bool = True) -> dict:
        """Fit on ``data`` (a ``FitData``) with the ``TokenizerConfig`` ``tcfg``; returns a dict of
        plain-number statistics (losses, explained variance, scale factor) for tokenizer.json."""
        raise NotImplementedError

    def filters(self) -> torch.Tensor | None:
        """Visualisable encoder filters (n, C, p, p) in decreasing importance (Fig. 4), or None."""
        return None

    def with_dim(self, dim: int) -> "Tokenizer":
        """The same fitted tokenizer at another latent dim, when that needs no refit (PCA keeps
        its full basis); others raise."""
        if dim == self.dim:
            return self
        raise ValueError(f"a fitted {self.name} tokenizer has dim={self.dim}; refit for dim={dim}.")

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, L, d)
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, D) image tokens
        raise NotImplementedError

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): the image tokens (B, L, D) the tokenizer can represent."""
        return self.decode(self.encode(x))

    def project_full(self, r: torch.Tensor) -> torch.Tensor:
        """Residual coordinates in the tokenizer's full image-token basis (pixels by default;
        a basis tied to the latent only where ``full_basis``)."""
        return r

    def linear_map(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, b), W (d, D) and b (d,) on the tokenizer's device, with
        ``encode(x) == to_tokens(x) @ W.T + b`` (up to float rounding) when the encoder is one
        affine map of each image token on its own; None when it is not (a conv net, a resize
        across patches). ``ldae export`` folds it into a latent-input encoder's patch embedding."""
        return None

    def projection_map(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, a), A (D, D) and a (D,) on the tokenizer's device, with
        ``project(x) == to_tokens(x) @ A.T + a`` (up to float rounding) when decode(encode(.))
        is one affine map of each image token on its own; None otherwise. ``ldae export`` folds
        it for ``clean_input=projected``."""
        return None

    def meta(self) -> dict:
        return {"name": self.name, "patch_size": self.patch_size, "dim": self.dim,
                "channels": self.channels}

    def save(self, path: str | Path) -> None:
        """Atomic safetensors write of the buffers plus ``meta()`` as JSON metadata."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"ldae_tokenizer": json.dumps(self.meta())})

    @staticmethod
    def read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer file {path} does not exist; fit one with "
                                  "`ldae fit-tokenizer -c PRESET --out DIR` or fix tokenizer.path.")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["ldae_tokenizer"])
            return meta, load_file(str(path))
        except Exception as e:  # corrupt file, wrong format, missing header
            raise CheckpointError(f"cannot read tokenizer {path}: {e}. Refit it with "
                                  "`ldae fit-tokenizer`.") from None
