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
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                s = self.image_size / min(im.size)
                w, h = max(self.image_size, round(im.size[0] * s)), max(self.image_size, round(im.size[1] * s))
                im = im.resize((w, h), Image.BICUBIC)
                left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
                im = im.crop((left, top, left + self.image_size, top + self.image_size))
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), label
