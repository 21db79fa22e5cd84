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

Bad data, ``data.on_bad_image`` = ``error`` (default: stop with a DataError naming the file and
the fix) or ``skip`` (leave it out, list it). Every dataset has ``skipped``: a list of
``{"path" or "file", "reason"}`` of what was left out when it was built (``[]`` under ``error``).
npz under ``skip``: a file that cannot be read, lacks ``images``/``labels``, has wrong shapes or
dtypes, or whose images differ in shape from the first good file is left out; rows whose labels
fall outside [0, num_classes) are dropped (one entry per file). ImageFolder: see ``folder.py``
(zero-byte files and empty class folders when built, undecodable files when read). packed: what
``ldae prepare-data --on-bad-image skip`` left out of that split (from its meta.json). digits,
cifar and synthetic have nothing to skip. :func:`write_skip_log` / :func:`count_skipped` keep
the list in a run's JSONL file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10

from ..config import need, register_check, register_choices
from ..errors import DataError, relative_note
from .folder import ImageFolderDataset, append_jsonl
from .packed import PackedDataset

SOURCES = ("digits", "npz", "cifar", "imagefolder", "packed", "synthetic")
#: the sources that need no ``data.path`` (built in)
PATHLESS_SOURCES = ("digits", "synthetic")
SKIP_HINT = "or set data.on_bad_image=skip to leave it out"


class ArrayDataset(Dataset):
    """Images held in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 skipped: list[dict] | None = None):
        self.images, self.labels, self.classes = images, labels, classes
        self.skipped: list[dict] = list(skipped or [])

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


def _array_problem(images: np.ndarray, labels: np.ndarray) -> str | None:
    """What is wrong with the shapes or dtypes of an (images, labels) pair, or None."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        return (f"'images' must be uint8 of shape (N, H, W, 3); got {images.dtype} "
                f"{tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        return (f"'labels' must be integers of shape (N,) with N = {images.shape[0]}; got "
                f"{labels.dtype} {tuple(labels.shape)}")
    return None


def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str, num_classes: int,
                  fix: str = "") -> None:
    problem = _array_problem(images, labels)
    if problem:
        raise DataError(f"{where}: {problem}{'; ' + fix if fix else ''}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels span [{labels.min()}, {labels.max()}] but "
                        f"data.num_classes={num_classes}; labels must be in [0, {num_classes})"
                        f"{' (' + fix + ')' if fix else ''}.")


def _load_npz(path: Path, num_classes: int, on_bad_image: str = "error"
              ) -> tuple[np.ndarray, np.ndarray, list[str], list[dict]]:
    """The concatenated arrays of ``path`` (a .npz file or a folder of them, sorted), their class
    names and what ``on_bad_image=skip`` left out (``[]`` under ``error``, which raises)."""
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"data.path={path}: no .npz file found; point it at a .npz file or a "
                        "folder of them (e.g. ../shared/data/cifar10).")
    skip = on_bad_image == "skip"
    ims, labs, classes, skipped = [], [], [], []
    first = None  # the first good file: its image shape is the shape of the dataset

    def bad(f: Path, reason: str, fix: str) -> None:
        if not skip:
            raise DataError(f"{f}: {reason}; {fix}, {SKIP_HINT}.")
        skipped.append({"file": str(f), "reason": reason})

    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                keys = list(z.keys())
                if "images" not in keys or "labels" not in keys:
                    bad(f, f"needs arrays 'images' and 'labels'; found {keys}",
                        "write them under those names")
                    continue
                im, lab = z["images"], z["labels"]
                names = [str(c) for c in z["class_names"]] if "class_names" in keys else []
        except DataError:
            raise
        except Exception as e:
            if not skip:
                raise DataError(f"cannot read {f}: {e}; replace or remove the file, "
                                f"{SKIP_HINT}.") from None
            skipped.append({"file": str(f), "reason": f"cannot read: {type(e).__name__}: {e}"})
            continue
        problem = _array_problem(im, lab)
        if problem:
            bad(f, problem, "rewrite the file in that format")
            continue
        if first is not None and im.shape[1:] != ims[0].shape[1:]:
            bad(f, f"image shape {tuple(im.shape[1:])} differs from {tuple(ims[0].shape[1:])} of "
                f"{first} (files disagree on image shape)", "store every file at one size")
            continue
        out = (lab < 0) | (lab >= num_classes)
        if out.any():
            if not skip:
                more = (f"set data.num_classes={int(lab.max()) + 1} if they are classes, or "
                        if lab.min() >= 0 else "")
                _check_arrays(im, lab, str(f), num_classes,
                              more + "set data.on_bad_image=skip to drop those rows")
            skipped.append({"file": str(f), "reason": f"{int(out.sum())} labels out of range "
                            f"[0, {num_classes}): rows dropped"})
            im, lab = im[~out], lab[~out]
        first = first or f
        classes = classes or names
        ims.append(im)
        labs.append(lab)
    n = sum(len(x) for x in labs)
    if n == 0:
        raise DataError(f"data.path={path}: no usable images left ({len(skipped)} file(s) or rows "
                        f"left out: {'; '.join(e['file'] + ': ' + e['reason'] for e in skipped[:3])}).")
    return np.concatenate(ims), np.concatenate(labs).astype(np.int64), classes, skipped


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits  # lazy: start-up time (sklearn+scipy), digits source only

    d = load_digits()
    grey = (d.images / 16.0 * 255.0).round().astype(np.uint8)  # (N, 8, 8), values 0..16
    return np.repeat(grey[..., None], 3, axis=-1), d.target.astype(np.int64), [str(i) for i in range(10)]


def _load_cifar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
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
        return ImageFolderDataset(Path(d.path), split, d.image_size, d.num_classes, d.limit,
                                  on_bad_image=d.on_bad_image, max_pixels=d.max_image_pixels)
    if d.source == "packed":
        return PackedDataset(Path(d.path), split, d.image_size, d.num_classes, d.limit)
    path = Path(d.path) if d.path else None
    if path is not None and not path.exists():
        raise DataError(f"data.path={path} does not exist{relative_note(d.path)}; set data.path to "
                        f"the {d.source} data.")
    skipped: list[dict] = []
    if d.source == "digits":
        images, labels, classes = _load_digits()
    elif d.source == "npz":
        images, labels, classes, skipped = _load_npz(path, d.num_classes, d.on_bad_image)
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
    return ArrayDataset(x.contiguous(), y.contiguous(), classes or [str(i) for i in range(d.num_classes)],
                        skipped)


def write_skip_log(dataset: Dataset, path: str | Path) -> int:
    """Append ``dataset.skipped`` (what was left out when it was built) to the JSONL file
    ``path``, one ``{"path" or "file", "reason", ...}`` object a line, and, for a dataset that
    finds bad files when it reads them (ImageFolder under data.on_bad_image=skip), set
    ``dataset.skip_log = path`` so that each read-time skip is appended there too, from any
    DataLoader worker. Returns the number of entries written now."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = list(getattr(dataset, "skipped", []))
    if entries:
        append_jsonl(path, entries)
    else:
        path.touch()
    if hasattr(dataset, "skip_log"):
        dataset.skip_log = path
    return len(entries)


def read_skip_log(path: str | Path) -> list[dict]:
    """The entries of a skip log, one per distinct path (or npz file), first seen first."""
    path = Path(path)
    if not path.is_file():
        return []
    seen: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:  # a line cut short by a killed process
            continue
        key = (e.get("path") or e.get("file")) if isinstance(e, dict) else None
        if key is not None:
            seen.setdefault(key, e)
    return list(seen.values())


def count_skipped(path: str | Path) -> int:
    """How many distinct files (or npz files with dropped rows) the skip log ``path`` lists
    (0 when it does not exist). Lines repeat when several ranks or workers log the same file."""
    return len(read_skip_log(path))


def check_config(cfg) -> None:
    """A source that reads files needs ``data.path``."""
    d = cfg.data
    need(d.source in PATHLESS_SOURCES or d.path != "",
         f"data.source={d.source} needs data.path=... (a file or folder).")


register_choices("data.source", lambda: sorted(SOURCES))
register_check("data", check_config)
