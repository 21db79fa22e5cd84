"""ImageFolder (ImageNet layout) decoded with Pillow, every image resized and center-cropped once
per access to ``image_size``; errors name the offending file.

Bad data (``data.on_bad_image``): zero-byte files and empty class folders are found when the
dataset is built (a ``stat`` per file, no decode); corrupt or truncated files when they are read.
Under ``error`` (the default) either stops with a :class:`DataError` naming the file. Under
``skip`` a zero-byte file is left out of ``samples``, an empty class folder keeps its class index
(labels stay those of the class list) and both are listed in ``skipped``; a file that fails to
decode is replaced by the next readable image in dataset order (i+1, i+2, ..., wrapping) and
recorded in ``read_skipped`` and, when ``skip_log`` is set, as one JSON line in that file
(see ``datasets.write_skip_log``).

Decompression bombs: an image whose header declares more than ``max_pixels`` pixels
(``data.max_image_pixels``, default 40 million: every ImageNet image is far below, a 13,000 x
13,000 PNG of a few kB is far above) is a bad image like a corrupt one, found from the header
alone before any pixel is decoded; Pillow's own warning is silenced (ldae reports it instead).

Unusual but valid images are not bad: grayscale, palette, CMYK, 16-bit and tiny images all come
out RGB uint8; an alpha channel is dropped (the colour under it is kept, as torchvision's
``convert("RGB")`` loader does). Truncated files are never padded: Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

EMPTY_CLASS = "empty class folder"
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
POLICIES = ("error", "skip")  # data.on_bad_image
#: ``data.max_image_pixels``: a larger image is refused before it is decoded (decompression bomb)
MAX_PIXELS = 40_000_000
ZERO_BYTES = "zero-byte file"


SKIP = "set data.on_bad_image=skip"  # how to choose skipping, named in error messages


def _fix(skip_hint: str = SKIP) -> str:
    return f"remove or repair it, or {skip_hint} to leave it out"


class ImageFolderDataset(Dataset):
    def __init__(self, root: Path, split: str, image_size: int, num_classes: int, limit: int = 0,
                 on_bad_image: str = "error", skip_hint: str = SKIP, max_pixels: int = MAX_PIXELS):
        if on_bad_image not in POLICIES:
            raise ValueError(f"on_bad_image={on_bad_image!r}; choices: {', '.join(POLICIES)}")
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist; data.path must hold one "
                            f"sub-folder per split ({split}/<class>/<image>).")
        self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{folder} holds no class folders; expected {split}/<class>/<image>.")
        if len(self.classes) > num_classes:
            raise DataError(f"{folder} has {len(self.classes)} class folders but data.num_classes="
                            f"{num_classes}; set data.num_classes={len(self.classes)}.")
        self.on_bad_image = on_bad_image
        self.skipped: list[dict] = []
        self.samples: list[tuple[Path, int]] = []
        skip = on_bad_image == "skip"
        for c, name in enumerate(self.classes):
            with os.scandir(folder / name) as it:
                entries = sorted((e for e in it if os.path.splitext(e.name)[1].lower() in IMG_EXTS
                                  and e.is_file()), key=lambda e: e.name)
            if not entries:
                if skip:
                    self.skipped.append({"path": str(folder / name), "reason": EMPTY_CLASS})
                    continue
                raise DataError(f"class folder {folder / name} holds no images "
                                f"({', '.join(IMG_EXTS)}); add images, remove the folder, or "
                                f"{skip_hint} to keep the class with no images.")
            for e in entries:
                path = folder / name / e.name
                if e.stat().st_size == 0:
                    if skip:
                        self.skipped.append({"path": str(path), "reason": ZERO_BYTES})
                        continue
                    raise DataError(f"image {path} is empty (0 bytes); {_fix(skip_hint)}.")
                self.samples.append((path, c))
        if not self.samples:
            first = self.skipped[0] if self.skipped else {"path": str(folder), "reason": "?"}
            raise DataError(f"{folder} holds no usable images: all were left out "
                            f"(data.on_bad_image=skip), first {first['path']} ({first['reason']}).")
        if limit:
            self.samples = self.samples[:limit]
        self.image_size, self.max_pixels = image_size, max_pixels
        self.labels = torch.tensor([c for _, c in self.samples], dtype=torch.long)
        self.read_skipped: list[dict] = []  # files that failed to decode, in this process
        self.skip_log: Path | None = None  # JSONL file every read-time skip is appended to
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.on_bad_image == "error":
            path, label = self.samples[i]
            img = load_image(path, self.image_size, max_pixels=self.max_pixels)
            return torch.from_numpy(img).permute(2, 0, 1), label
        n = len(self.samples)
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            path, label = self.samples[j]
            arr, reason = try_load_image(path, self.image_size, self.max_pixels)
            if arr is not None:
                return torch.from_numpy(arr).permute(2, 0, 1), label
            self._record(j, path, reason)
        raise DataError(f"no image of {self.samples[0][0].parent.parent} can be decoded (all "
                        f"{n} failed; e.g. {self.samples[i][0]}); check the files.")

    def _record(self, j: int, path: Path, reason: str) -> None:
        self._bad.add(j)
        entry = {"path": str(path), "reason": reason}
        self.read_skipped.append(entry)
        if self.skip_log is not None:
            append_jsonl(self.skip_log, [entry])


def append_jsonl(path: Path, entries: list[dict]) -> None:
    """Append one JSON line per entry, each with a single ``write`` on an ``O_APPEND`` descriptor,
    so that DataLoader worker processes appending at once never interleave within a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # less the umask
    try:
        for e in entries:
            os.write(fd, (json.dumps(e, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def _open(path: Path, max_pixels: int):
    """``Image.open`` (header only) refusing more than ``max_pixels`` pixels, without Pillow's
    warning on the console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise ValueError(f"decompression bomb ({e})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ValueError(f"{w} x {h} = {w * h:,} pixels exceeds data.max_image_pixels="
                         f"{max_pixels:,} (a decompression-bomb guard; raise it if the image is real)")
    return im


def _decode(path: Path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    with _open(path, max_pixels) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey: scale, not clip
            a = np.asarray(im).astype(np.float64)
            im = Image.fromarray((np.clip(a, 0, 65535) / 257.0).round().astype(np.uint8))
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        im = im.convert("RGB")  # L, P, CMYK, RGBA/LA (alpha dropped), YCbCr, ...
        s = size / min(im.size)
        w, h = max(size, round(im.size[0] * s)), max(size, round(im.size[1] * s))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.array(im, dtype=np.uint8)


def try_load_image(path: Path, size: int, max_pixels: int = MAX_PIXELS
                   ) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` as :func:`load_image` gives it, or ``(None, reason)`` when the file cannot
    be decoded (corrupt, truncated, not an image)."""
    try:
        return _decode(path, size, max_pixels), None
    except Exception as e:
        return None, (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


def load_image(path: Path, size: int, skip_hint: str = SKIP, max_pixels: int = MAX_PIXELS
               ) -> np.ndarray:
    """One image file -> uint8 (size, size, 3): RGB, short side resized to ``size`` (bicubic),
    center-cropped. The one decode path of ImageFolder reads and of ``ldae prepare-data``."""
    arr, reason = try_load_image(path, size, max_pixels)
    if arr is None:
        raise DataError(f"cannot read image {path} ({reason}); {_fix(skip_hint)}.")
    return arr
