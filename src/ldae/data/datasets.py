"""Datasets (SPEC §7): every source yields uint8 images (3, H, W) at ``data.image_size`` and labels.

Sources:
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images that ship with a
  dependency), upsampled to the image size, grey to RGB: the embedded default of ``ldae demo``.
- ``npz``: one ``.npz`` file or a folder of them (``../shared/data`` format: ``images`` uint8
  (N, H, W, 3), ``labels`` int (N,)), concatenated in sorted file order.
- ``cifar``: a torchvision CIFAR-10 folder (``cifar-10-batches-py``); split ``test`` is the
  official test set.
- ``imagefolder``: ``path/<split>/<class>/*.jpg`` (ImageNet layout), decoded with Pillow, short
  side resized to the image size and center-cropped.
- ``packed``: the output of ``ldae prepare-data`` (an ImageFolder decoded, resized and cropped
  once into uint8 memory maps, ``data/packed.py``); the folder's own splits.
- ``synthetic``: class-dependent random patterns, for tests only.

Splits: ``train`` = all but the last ``val_size`` images of the training set, ``val`` = those last
``val_size`` (for CIFAR-10: 500 per class, the project's validation split), ``all`` = both.
Array sources live in memory as one uint8 tensor; batches are gathered by index (no per-image
Python work). Augmentation happens per batch on the device (``transforms.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError

SOURCES = ("digits", "npz", "cifar", "imagefolder", "packed", "synthetic")
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ArrayDataset(Dataset):
    """Images held in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]


def _resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, h, w) -> uint8 (N, 3, size, size): short side to ``size``, center crop."""
    N, C, h, w = images.shape
    if h == size and w == size:
        return images
    out = []
    for chunk in images.split(4096):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(chunk.float(), size=(nh, nw), mode="bilinear", antialias=True,
                          align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[:, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _split(images: torch.Tensor, labels: torch.Tensor, split: str, val_size: int, name: str
           ) -> tuple[torch.Tensor, torch.Tensor]:
    n = images.shape[0]
    if split == "all":
        return images, labels
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must be in (0, {n}) for {name} ({n} images).")
    if split == "train":
        return images[: n - val_size], labels[: n - val_size]
    if split == "val":
        return images[n - val_size:], labels[n - val_size:]
    raise DataError(f"split '{split}' is not available for {name}; use train, val or all.")


def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str, num_classes: int) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{where}: 'images' must be uint8 of shape (N, H, W, 3); got "
                        f"{images.dtype} {tuple(images.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'labels' must be integers of shape (N,) with N = "
                        f"{images.shape[0]}; got {labels.dtype} {tuple(labels.shape)}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels span [{labels.min()}, {labels.max()}] but "
                        f"data.num_classes={num_classes}; labels must be in [0, {num_classes}).")


def _load_npz(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"data.path={path}: no .npz file found; point it at a .npz file or a "
                        "folder of them (e.g. ../shared/data/cifar10).")
    ims, labs, classes = [], [], []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                if "images" not in z or "labels" not in z:
                    raise DataError(f"{f}: needs arrays 'images' and 'labels'; found {list(z.keys())}.")
                im, lab = z["images"], z["labels"]
                if "class_names" in z and not classes:
                    classes = [str(c) for c in z["class_names"]]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {f}: {e}") from None
        _check_arrays(im, lab, str(f), num_classes)
        ims.append(im)
        labs.append(lab)
    shapes = {im.shape[1:] for im in ims}
    if len(shapes) > 1:
        raise DataError(f"data.path={path}: files disagree on image shape: {sorted(shapes)}.")
    return np.concatenate(ims), np.concatenate(labs).astype(np.int64), classes


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = (d.images / 16.0 * 255.0).round().astype(np.uint8)  # (N, 8, 8), values 0..16
    return np.repeat(grey[..., None], 3, axis=-1), d.target.astype(np.int64), [str(i) for i in range(10)]


def _load_cifar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(path), train=(split != "test"), download=False)
    except RuntimeError as e:
        raise DataError(f"data.path={path}: no torchvision CIFAR-10 folder there ({e}); it must hold "
                        "cifar-10-batches-py/.") from None
    return ds.data, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def synthetic_arrays(n: int, size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent smooth colour patterns plus noise: learnable, for tests only."""
    g = np.random.default_rng(seed)
    protos = g.uniform(0, 255, size=(num_classes, 4, 4, 3))
    labels = np.arange(n) % num_classes
    base = torch.from_numpy(protos[labels]).permute(0, 3, 1, 2).float()
    up = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.from_numpy(g.normal(0, 20, size=(n, 3, size, size))).float()
    images = (up + noise).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, labels.astype(np.int64)


def build_dataset(cfg, split: str) -> Dataset:
    """The dataset of ``cfg.data`` for ``split`` (train | val | all | test)."""
    d = cfg.data
    if d.source == "imagefolder":
        from .folder import ImageFolderDataset

        return ImageFolderDataset(Path(d.path), split, d.image_size, d.num_classes, d.limit)
    if d.source == "packed":
        from .packed import PackedDataset

        return PackedDataset(Path(d.path), split, d.image_size, d.num_classes, d.limit)
    path = Path(d.path) if d.path else None
    if path is not None and not path.exists():
        raise DataError(f"data.path={path} does not exist; set data.path to the {d.source} data.")
    if d.source == "digits":
        images, labels, classes = _load_digits()
    elif d.source == "npz":
        images, labels, classes = _load_npz(path, d.num_classes)
    elif d.source == "cifar":
        images, labels, classes = _load_cifar(path, split)
    elif d.source == "synthetic":
        seed = cfg.train.seed + (0 if split != "test" else 1)
        images, labels = synthetic_arrays(d.synthetic_size + d.val_size, d.image_size, d.num_classes, seed)
        classes = [str(i) for i in range(d.num_classes)]
    else:
        raise DataError(f"unknown data.source {d.source}; choices: {', '.join(SOURCES)}")
    _check_arrays(images, labels, f"{d.source} data", d.num_classes)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    y = torch.from_numpy(labels)
    if not (d.source == "cifar" and split == "test"):
        x, y = _split(x, y, split, d.val_size, f"data.source={d.source}")
    if d.limit:
        x, y = x[: d.limit], y[: d.limit]
    x = _resize_square(x.contiguous(), d.image_size)
    return ArrayDataset(x.contiguous(), y.contiguous(), classes or [str(i) for i in range(d.num_classes)])
