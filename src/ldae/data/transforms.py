"""Batch transforms on the device: uint8 -> [-1, 1] float, horizontal flip, random resized crop.

Random resized crop of a whole batch in one call: each sample's crop box goes to
``torchvision.ops.roi_align``, which bilinearly resamples it to the output size (one kernel on
the GPU, no per-image Python). Boxes follow torchvision's RandomResizedCrop rule (area fraction
in ``scale``, log-uniform aspect ratio in ``ratio``; a box that does not fit is clipped).
Every random draw takes an explicit generator, so a step's augmentation is a function of
(seed, step) and resumes exactly.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from ..diffusion.objective import sharded


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 in [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, rows=None) -> torch.Tensor:
    """Flip each sample with probability 1/2 (draws made for the global batch, see ``Rows``)."""
    flip = sharded(lambda n: torch.rand(n, generator=generator), x.shape[0], rows) < 0.5
    flip = flip.to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def rrc_boxes(batch: int, h: int, w: int, scale: tuple[float, float],
              ratio: tuple[float, float] = (3 / 4, 4 / 3),
              generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 4) boxes x1, y1, x2, y2 in pixels, torchvision's RandomResizedCrop distribution."""
    area = h * w * torch.empty(batch).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    ar = logr.exp()
    cw = (area * ar).sqrt().clamp(1.0, w)
    ch = (area / ar).sqrt().clamp(1.0, h)
    x1 = torch.rand(batch, generator=generator) * (w - cw)
    y1 = torch.rand(batch, generator=generator) * (h - ch)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], dim=1)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float],
                        generator: torch.Generator | None = None, rows=None) -> torch.Tensor:
    B, C, H, W = x.shape
    boxes = sharded(lambda n: rrc_boxes(n, H, W, scale, generator=generator), B, rows)
    boxes = boxes.to(x.device, x.dtype)
    rois = torch.cat([torch.arange(B, device=x.device, dtype=x.dtype)[:, None], boxes], dim=1)
    # One bilinear sample per output pixel: a crop never exceeds the image, so this only ever
    # upsamples (torchvision's bilinear resize); 2 samples per bin would blur even a full crop.
    return roi_align(x, rois, output_size=(H, W), spatial_scale=1.0, sampling_ratio=1, aligned=True)


class BatchAugment:
    """uint8 batch -> float [-1, 1], then optional random resized crop and flip."""

    def __init__(self, crop: str = "center", scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True):
        self.crop, self.scale, self.hflip = crop, scale, hflip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, rows=None
                 ) -> torch.Tensor:
        x = to_float(x)
        if self.crop == "random_resized":
            x = random_resized_crop(x, self.scale, generator, rows)
        if self.hflip:
            x = random_flip(x, generator, rows)
        return x
