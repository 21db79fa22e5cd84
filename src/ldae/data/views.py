"""MoCo v3's two augmented views of a batch (Chen, Xie, He 2021, after BYOL's asymmetric pair),
on the device, one set of random parameters per image, each drawn for the whole global batch
(``Rows``), so that a step does not depend on how the batch is split over processes.

Per view: random resized crop (scale 0.08-1), colour jitter with probability 0.8 (brightness
0.4, contrast 0.4, saturation 0.2, hue 0.1, in a random order per image, as torchvision's
``ColorJitter``), grayscale with probability 0.2, Gaussian blur (sigma 0.1-2.0 at 224 px,
scaled to the image size; probability 1.0 for view 1, 0.1 for view 2), solarize (view 2,
probability 0.2) and a horizontal flip. The colour operations follow torchvision's definitions
on [0, 1] images (blend with the grayscale image or its mean, hue rotated in HSV), written here
for a batch with per-image factors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..seeds import Rows, sharded
from .transforms import random_flip, random_resized_crop

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class ViewSpec:
    """One view's probabilities (MoCo v3: view 1 always blurred, view 2 sometimes solarized)."""
    blur: float
    solarize: float
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: float = 0.8
    grayscale: float = 0.2


MOCO_V3_VIEWS = (ViewSpec(blur=1.0, solarize=0.0), ViewSpec(blur=0.1, solarize=0.2))


def _gray(u: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1, H, W)
    w = torch.tensor(GRAY, device=u.device, dtype=u.dtype)
    return (u * w[None, :, None, None]).sum(1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f a + (1 - f) b with per-image f (B,), clamped to [0, 1] (torchvision's ``_blend``)."""
    f = f[:, None, None, None]
    return (f * a + (1 - f) * b).clamp(0, 1)


def _hue(u: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (B,) turns (torchvision's ``adjust_hue``, via HSV)."""
    r, g, b = u.unbind(1)
    mx, mn = u.max(1).values, u.min(1).values
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2,
                                                               (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    h = (h + shift[:, None, None]) % 1.0
    k = lambda n: (n + h * 6) % 6  # noqa: E731 -- the standard HSV -> RGB closed form
    f = lambda n: mx - mx * s * (torch.minimum(k(n), 4 - k(n)).clamp(0, 1))  # noqa: E731
    return torch.stack([f(5), f(3), f(1)], dim=1)


def _blur(u: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (B,) in pixels, reflect padding."""
    B, C, H, W = u.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    pos = torch.arange(-radius, radius + 1, device=u.device, dtype=u.dtype)
    kern = torch.exp(-0.5 * (pos[None] / sigma[:, None]) ** 2)
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B C, K)
    x = u.reshape(1, B * C, H, W)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kern[:, None, None, :], groups=B * C)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kern[:, None, :, None], groups=B * C)
    return x.reshape(B, C, H, W)


def _jitter(u: torch.Tensor, g: torch.Generator, rows: Rows | None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue, each image in its own random order."""
    draw = lambda fn: sharded(fn, u.shape[0], rows).to(u.device)  # noqa: E731
    bright = draw(lambda m: torch.empty(m).uniform_(0.6, 1.4, generator=g))
    contrast = draw(lambda m: torch.empty(m).uniform_(0.6, 1.4, generator=g))
    sat = draw(lambda m: torch.empty(m).uniform_(0.8, 1.2, generator=g))
    hue = draw(lambda m: torch.empty(m).uniform_(-0.1, 0.1, generator=g))
    order = draw(lambda m: torch.rand(m, 4, generator=g).argsort(1))  # (B, 4)
    ops = ((lambda v, f: _blend(v, torch.zeros_like(v), f), bright),
           (lambda v, f: _blend(v, _gray(v).mean((1, 2, 3), keepdim=True).expand_as(v), f), contrast),
           (lambda v, f: _blend(v, _gray(v).expand_as(v), f), sat),
           (_hue, hue))
    for step in range(4):  # each op runs on the images whose step-th op it is, with their factors
        out = torch.empty_like(u)
        for k, (op, factor) in enumerate(ops):
            idx = (order[:, step] == k).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = op(u[idx], factor[idx])
        u = out
    return u


def make_view(x: torch.Tensor, spec: ViewSpec, g: torch.Generator, rows: Rows | None = None
              ) -> torch.Tensor:
    """One augmented view of float images (B, 3, H, W) in [-1, 1]; ``g`` a CPU generator."""
    B, size = x.shape[0], x.shape[-1]
    x = random_resized_crop(x, spec.crop_scale, g, rows, size)
    u = (x + 1) / 2
    coin = lambda p: sharded(lambda m: torch.rand(m, generator=g), B, rows).to(x.device) < p  # noqa: E731
    pick = lambda mask, a, b: torch.where(mask[:, None, None, None], a, b)  # noqa: E731
    u = pick(coin(spec.jitter), _jitter(u, g, rows), u)
    u = pick(coin(spec.grayscale), _gray(u).expand_as(u), u)
    sigma = sharded(lambda m: torch.empty(m).uniform_(0.1, 2.0, generator=g), B, rows).to(x.device)
    u = pick(coin(spec.blur), _blur(u, sigma * size / 224), u)
    u = pick(coin(spec.solarize), torch.where(u >= 0.5, 1 - u, u), u)
    return random_flip(u * 2 - 1, g, rows)


def two_views(x: torch.Tensor, g: torch.Generator, rows: Rows | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo v3's pair of views of the same images, from one generator (view 1 drawn first)."""
    return make_view(x, MOCO_V3_VIEWS[0], g, rows), make_view(x, MOCO_V3_VIEWS[1], g, rows)


__all__ = ["MOCO_V3_VIEWS", "ViewSpec", "make_view", "two_views"]
