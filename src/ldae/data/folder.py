"""ImageFolder (ImageNet layout) decoded with Pillow, every image resized and center-cropped once
per access to ``image_size``; errors name the offending file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .datasets import IMG_EXTS


class ImageFolderDataset(Dataset):
    def __init__(self, root: Path, split: str, image_size: int, num_classes: int, limit: int = 0):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist; data.path must hold one "
                            f"sub-folder per split ({split}/<class>/<image>).")
        self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{folder} holds no class folders; expected {split}/<class>/<image>.")
        if len(self.classes) > num_classes:
            raise DataError(f"{folder} has {len(self.classes)} class folders but data.num_classes="
                            f"{num_classes}; set data.num_classes={len(self.classes)}.")
        self.samples: list[tuple[Path, int]] = []
        for c, name in enumerate(self.classes):
            files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMG_EXTS)
            if not files:
                raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMG_EXTS)}).")
            self.samples += [(f, c) for f in files]
        if limit:
            self.samples = self.samples[:limit]
        self.image_size = image_size
        self.labels = torch.tensor([c for _, c in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return torch.from_numpy(load_image(path, self.image_size)).permute(2, 0, 1), label


def load_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (size, size, 3): RGB, short side resized to ``size`` (bicubic),
    center-cropped. The one decode path of ImageFolder reads and of ``ldae prepare-data``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            s = size / min(im.size)
            w, h = max(size, round(im.size[0] * s)), max(size, round(im.size[1] * s))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.array(im, dtype=np.uint8)
    except Exception as e:
        raise DataError(f"cannot read image {path}: {e}") from None
