"""Pixel tokenizer: identity on patches of a resized image, the token count kept fixed (Fig. 5).

The backbone sees a g x g grid of tokens, g = image_size / p (p = model.patch_size). The pixel
tokenizer resizes the image to pixel_size = g q and cuts it into q x q patches, so each token
holds the raw pixels of one patch, d = C q^2, and the sequence length stays g^2 whatever q is.
Fig. 5 of the paper: image 256, g = 16 -> pixel_size 256/128/64/32, q 16/8/4/2, d 768/192/48/12.

encode: z = patchify(resize(x, g q), q)                          (B, g^2, C q^2)
decode: x_tokens = patchify(resize(unpatchify(z, q), g p), p)    (B, g^2, C p^2)
Resizing is bilinear with antialiasing (``F.interpolate(..., antialias=True,
align_corners=False)``, a PIL-like area-aware downsample); at q = p both directions are the
identity, and nothing is fitted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Tokenizer, patchify, unpatchify


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of (B, C, H, W) to ``size``; the identity at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class PixelTokenizer(Tokenizer):
    name = "pixel"
    trained = False

    def __init__(self, patch_size: int, dim: int, image_size: int, pixel_size: int = 0,
                 channels: int = 3):
        super().__init__(patch_size, dim, channels)
        pixel_size = pixel_size or image_size
        if image_size % patch_size or pixel_size % (image_size // patch_size):
            raise ValueError(f"pixel_size={pixel_size} must be a multiple of the grid "
                             f"image_size / patch_size = {image_size} / {patch_size}")
        self.image_size, self.pixel_size = image_size, pixel_size
        self.grid = image_size // patch_size
        self.pixel_patch = pixel_size // self.grid  # q
        need = self.token_dim(image_size, patch_size, pixel_size, channels)
        if dim != need:
            raise ValueError(f"dim={dim} must be C q^2 = {need} (q = {self.pixel_patch})")

    @staticmethod
    def token_dim(image_size: int, patch_size: int, pixel_size: int = 0, channels: int = 3) -> int:
        """The latent dim d = C q^2 of a pixel tokenizer: the token grid is the backbone's,
        g = image_size // patch_size, the image is resized to ``pixel_size`` (0 = image_size) and
        cut into g x g patches of q = pixel_size / g pixels. ValueError when g does not divide
        pixel_size."""
        g = image_size // patch_size
        pixel_size = pixel_size or image_size
        if g < 1 or pixel_size % g:
            raise ValueError(f"pixel_size={pixel_size} must be a multiple of the grid "
                             f"image_size / patch_size = {image_size} / {patch_size}")
        return channels * (pixel_size // g) ** 2

    @staticmethod
    def _resolve(cfg) -> tuple[int, int, int]:
        """(grid g, pixel_size, q) of a config, without checks."""
        g = cfg.data.image_size // cfg.model.patch_size
        ps = cfg.tokenizer.pixel_size or cfg.data.image_size
        return g, ps, ps // max(g, 1)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        tk, img, p = cfg.tokenizer, cfg.data.image_size, cfg.model.patch_size
        if tk.pixel_size < 0:
            raise ConfigError(f"tokenizer.pixel_size={tk.pixel_size} must be >= 0 "
                              f"(0 = data.image_size={img}).")
        g, ps, q = cls._resolve(cfg)
        if ps % g:
            lo, hi = (ps // g) * g, (ps // g + 1) * g
            near = ", ".join(str(v) for v in (lo, hi) if v > 0)
            raise ConfigError(
                f"tokenizer.pixel_size={ps} must be a multiple of the token grid g = "
                f"data.image_size / model.patch_size = {img} / {p} = {g} (the token count stays "
                f"g^2 = {g * g}); e.g. tokenizer.pixel_size={near}.")
        need = cls.token_dim(img, p, ps)  # 3 q^2
        if tk.dim != need:
            raise ConfigError(
                f"tokenizer.name=pixel with tokenizer.pixel_size={ps} cuts {q}x{q} pixel patches "
                f"(q = pixel_size / g = {ps} / {g}), so tokenizer.dim must be 3 q^2 = {need}, "
                f"not {tk.dim}: set tokenizer.dim={need}.")

    @classmethod
    def from_config(cls, cfg) -> "PixelTokenizer":
        _, ps, _ = cls._resolve(cfg)
        return cls(cfg.model.patch_size, cfg.tokenizer.dim, cfg.data.image_size, ps)

    def meta(self) -> dict:
        return {**super().meta(), "image_size": self.image_size, "pixel_size": self.pixel_size}

    def fit_data(self, data, tcfg, generator=None, show=True) -> dict:
        return {}  # nothing to fit

    def _identity(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(I, 0) at q = p, where both directions are the identity; else None (the antialiased
        resize mixes neighbouring patches, so no map acts on each token on its own)."""
        if self.pixel_patch != self.patch_size:
            return None
        return torch.eye(self.full_dim), torch.zeros(self.full_dim)

    def linear_map(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._identity()

    def projection_map(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._identity()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, (H/p)(W/p), C q^2): the grid of p-patches is kept at any H, W."""
        H, W = x.shape[-2:]
        q, p = self.pixel_patch, self.patch_size
        return patchify(resize(x, (H // p * q, W // p * q)), q)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L, C q^2) -> image tokens (B, L, C p^2) at the original resolution (square grid)."""
        img = unpatchify(z, self.pixel_patch, self.channels)
        g = img.shape[-1] // self.pixel_patch
        return patchify(resize(img, (g * self.patch_size, g * self.patch_size)), self.patch_size)
