"""``ldae prepare-data``: an ImageFolder packed once into pre-resized, center-cropped uint8 arrays
on disk, read back as memory maps (data.source=packed).

Layout of DST:
    meta.json                 {"size", "classes", "splits": {split: n}, "skipped": [{"split",
                              "path", "reason"}], "num_skipped"}   (written last: its presence
                              means every split is complete)
    <split>-images.u8         raw uint8 (n, size, size, 3), C order (np.memmap)
    <split>-labels.npy        int64 (n,)

Stored larger than trained: pack at S > data.image_size (e.g. ``--size 292`` for 256 training,
256 / 0.875) and the dataset yields the central data.image_size pixels (the standard "resize,
center crop" evaluation view), while random resized crops (data.crop=random_resized, the probe's
training crops) are drawn from the whole stored image (``full_images``).

Why a memmap rather than a webdataset tar of JPEGs (bench/loader.py measures both costs): a
batch is a gather of rows that the page cache serves at memory speed, with no decode per epoch
and exact random access for the resumable batch order; the price is disk: 196 KB per 256-px
image against ~110 KB for a JPEG (ImageNet-1k train: ~250 GB vs ~140 GB). Decoding happens once,
here, on ``workers`` processes, through the same ``load_image`` as ImageFolder reads, so a packed
split equals the ImageFolder it came from, image for image.

Bad files (``--on-bad-image``): under ``error`` (default) the first zero-byte file, empty class
folder or file that does not decode stops the packing with a DataError naming it, and no
meta.json is written (the folder stays "incomplete"). Under ``skip`` they are left out of the
pack (empty class folders keep their class index) and listed in meta.json's ``skipped``; the
packed dataset reports its split's share as ``skipped``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_path, atomic_write_json
from ..errors import DataError
from ..logging import Timer, progress
from .folder import MAX_PIXELS, ImageFolderDataset, try_load_image
from .transforms import center_crop

META = "meta.json"


def _paths(dst: Path, split: str) -> tuple[Path, Path]:
    return dst / f"{split}-images.u8", dst / f"{split}-labels.npy"


SKIP_HINT = "rerun with --on-bad-image skip"


def _load(args) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, why it failed): a worker never raises across processes."""
    return try_load_image(*args)


def prepare(src: Path, dst: Path, size: int, splits: list[str], workers: int = 0,
            show: bool = True, on_bad_image: str = "error", max_pixels: int | None = None) -> dict:
    """Pack ``src/<split>/<class>/*`` for each split into ``dst`` (see the module docstring)."""
    src, dst = Path(src), Path(dst)
    if size <= 0:
        raise DataError(f"--size {size} must be > 0.")
    skip = on_bad_image == "skip"
    folders = {s: ImageFolderDataset(src, s, size, 10 ** 9, on_bad_image=on_bad_image,
                                     skip_hint=SKIP_HINT) for s in splits}  # checks before work
    classes = folders[splits[0]].classes
    for s, f in folders.items():
        if f.classes != classes:
            raise DataError(f"{src / s} has other class folders than {src / splits[0]}; every "
                            "split must hold the same classes.")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / META).unlink(missing_ok=True)  # incomplete until the end
    timer, counts = Timer(), {}
    skipped = [{"split": s, **e} for s, f in folders.items() for e in f.skipped]
    workers = workers or max(1, (os.cpu_count() or 1))
    for s, f in folders.items():
        n = len(f)
        img_path, lab_path = _paths(dst, s)
        bar = progress(n, f"pack {s}", show)
        kept: list[int] = []
        with atomic_path(img_path) as tmp, contextlib.ExitStack() as stack:
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, size, size, 3))
            jobs = [(p, size, max_pixels or MAX_PIXELS) for p, _ in f.samples]
            if workers > 1:
                pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
                results = pool.imap(_load, jobs, chunksize=32)
            else:
                results = map(_load, jobs)
            for i, (arr, reason) in enumerate(results):
                if arr is None:
                    path = f.samples[i][0]
                    if not skip:
                        raise DataError(f"cannot read image {path} ({reason}); remove or repair "
                                        f"it, or {SKIP_HINT} to leave it out. {dst} is left "
                                        f"without {META} (incomplete).")
                    skipped.append({"split": s, "path": str(path), "reason": reason})
                else:
                    out[len(kept)] = arr
                    kept.append(i)
                bar.update(1)
            out.flush()
            del out
            if not kept:
                raise DataError(f"no image of {src / s} could be decoded ({n} tried); check the files.")
            if len(kept) < n:  # bad files left out: drop the unused rows at the end
                os.truncate(tmp, len(kept) * size * size * 3)
        bar.close()
        with atomic_path(lab_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, f.labels[kept].numpy().astype(np.int64))
        counts[s] = len(kept)
    meta = {"size": size, "classes": classes, "splits": counts, "source": str(src.resolve()),
            "skipped": skipped, "num_skipped": len(skipped), "seconds": round(timer.elapsed(), 2)}
    atomic_write_json(dst / META, meta)
    return meta


class PackedDataset(torch.utils.data.Dataset):
    """One split of a ``prepare-data`` folder as a read-only memory map; batches by ``gather``."""

    def __init__(self, root: Path, split: str, image_size: int, num_classes: int, limit: int = 0):
        root = Path(root)
        if not (root / META).is_file():
            raise DataError(f"{root} is not a complete packed dataset ({META} is missing: the "
                            "packing never finished). Run `ldae prepare-data SRC DST` again.")
        meta = json.loads((root / META).read_text())
        if split not in meta["splits"]:
            raise DataError(f"{root} holds splits {', '.join(meta['splits'])}, not '{split}'; set "
                            "data.train_split / data.eval_split, or pack that split.")
        if meta["size"] < image_size:
            raise DataError(f"{root} was packed at {meta['size']} px, below data.image_size="
                            f"{image_size}; set data.image_size<={meta['size']} or repack with "
                            f"--size {image_size} (or larger, for random resized crops).")
        if len(meta["classes"]) > num_classes:
            raise DataError(f"{root} has {len(meta['classes'])} classes but data.num_classes="
                            f"{num_classes}; set data.num_classes={len(meta['classes'])}.")
        n, s = meta["splits"][split], meta["size"]
        img_path, lab_path = _paths(root, split)
        self.images = np.memmap(img_path, dtype=np.uint8, mode="r", shape=(n, s, s, 3))
        self.labels = torch.from_numpy(np.load(lab_path, allow_pickle=False))
        if limit:
            self.images, self.labels = self.images[:limit], self.labels[:limit]
        self.classes = meta["classes"]
        # what prepare-data --on-bad-image skip left out of this split (chosen when packing)
        self.skipped = [e for e in meta.get("skipped", []) if e.get("split") == split]
        self.stored_size, self.image_size = s, image_size
        self.full = False

    def full_view(self) -> "PackedDataset":
        """The same split yielding whole stored images (for random resized crops, which draw
        their boxes on the stored image and resample to data.image_size)."""
        view = copy.copy(self)
        view.full = True
        return view

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.full else center_crop(x, self.image_size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)
        return self._crop(x).contiguous(), int(self.labels[i])

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.images[idx.numpy()]).permute(0, 3, 1, 2)
        return self._crop(x).contiguous(), self.labels[idx]


def full_images(dataset):
    """``dataset`` yielding its images at the stored size when that can exceed data.image_size
    (packed), else ``dataset`` itself."""
    return dataset.full_view() if hasattr(dataset, "full_view") else dataset
