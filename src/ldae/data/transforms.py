"""Batch transforms on the device: uint8 -> [-1, 1] float, horizontal flip, random resized crop.

Random resized crop of a whole batch in one call: each sample's crop box goes to
``torchvision.ops.roi_align``, which bilinearly resamples it to the output size (one kernel on
the GPU, no per-image Python). Boxes follow torchvision's RandomResizedCrop rule (area fraction
in ``scale``, log-uniform aspect ratio in ``ratio``; a box that does not fit is clipped).
Every random draw takes an explicit generator, so a step's augmentation is a function of
(seed, step) and resumes exactly.

The crop may come from images stored larger than the training size (``ldae prepare-data --size
S`` with S > data.image_size): boxes are drawn on the stored image and resampled to the output
size, so a crop keeps the stored detail instead of upsampling an already-reduced image. Each
output pixel averages ceil(box / output) x ceil(box / output) bilinear samples (roi_align's
adaptive sampling): one sample when the crop is upsampled, an area average (anti-aliasing) when it
is reduced (exactly a 2x2 average pool for a full crop at half the size).
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from ..seeds import sharded


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
                        generator: torch.Generator | None = None, rows=None,
                        size: int | None = None) -> torch.Tensor:
    """Float (B, C, H, W) -> (B, C, size, size) (size defaults to H), one crop box per sample."""
    B, C, H, W = x.shape
    size = size or H
    boxes = sharded(lambda n: rrc_boxes(n, H, W, scale, generator=generator), B, rows)
    boxes = boxes.to(x.device, x.dtype)
    rois = torch.cat([torch.arange(B, device=x.device, dtype=x.dtype)[:, None], boxes], dim=1)
    # sampling_ratio=0: ceil(box / size) samples per bin and axis. A box no larger than the output
    # gets one bilinear sample per pixel (torchvision's bilinear resize; a fixed 2 would blur even
    # a full crop); a larger box (stored images above the output size) gets an area average.
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size pixels of (..., H, W): with images stored at S = size / 0.875 this
    is the standard evaluation transform (short side to S, center crop to size)."""
    H, W = x.shape[-2:]
    if H < size or W < size:
        raise ValueError(f"center crop to {size} px of a {H}x{W} image")
    top, left = (H - size) // 2, (W - size) // 2
    return x[..., top:top + size, left:left + size]


class BatchAugment:
    """uint8 batch -> float [-1, 1] at ``size`` px (default: the input's), then optional random
    resized crop and flip. Without the random crop, a larger input is center-cropped."""

    def __init__(self, crop: str = "center", scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                 size: int | None = None):
        self.crop, self.scale, self.hflip, self.size = crop, scale, hflip, size

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, rows=None
                 ) -> torch.Tensor:
        size = self.size or x.shape[-1]
        if self.crop == "random_resized":
            x = random_resized_crop(to_float(x), self.scale, generator, rows, size)
        else:
            x = to_float(center_crop(x, size))
        if self.hflip:
            x = random_flip(x, generator, rows)
        return x
