"""Carry a class-balanced CIFAR-10 subset to a machine that cannot see ../shared (a lent GPU).

    python bench/cifar_subset.py pack   ../shared/data/cifar10 .gpu/cifar10-sub.npz --train-per-class 2000
    python bench/cifar_subset.py unpack .gpu/cifar10-sub.npz /tmp/cifar10

``pack`` keeps the first N training images of each class (from the train split = the first
45,000) plus the whole val split (the last 5,000), in that order, so ``data.val_size=5000`` still
names the same val images. Pixels are stored losslessly (xz, delta filter: ~0.62 of raw, since
the transfer limit is 64 MiB). ``unpack`` writes a standard ``.npz`` (images, labels, class_names).
"""
from __future__ import annotations

import argparse
import lzma
from pathlib import Path

import numpy as np

FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 96}, {"id": lzma.FILTER_LZMA2, "preset": 9}]


def pack(src: Path, dst: Path, per_class: int, val_size: int = 5000) -> None:
    parts = [np.load(f) for f in sorted(Path(src).glob("*.npz"))]
    x = np.concatenate([p["images"] for p in parts])
    y = np.concatenate([p["labels"] for p in parts])
    names = parts[0]["class_names"]
    train_x, train_y = x[:-val_size], y[:-val_size]
    keep = np.sort(np.concatenate([np.flatnonzero(train_y == c)[:per_class] for c in range(10)]))
    xs = np.concatenate([train_x[keep], x[-val_size:]])
    ys = np.concatenate([train_y[keep], y[-val_size:]])
    blob = lzma.compress(xs.tobytes(), format=lzma.FORMAT_XZ, filters=FILTERS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, pixels_xz=np.frombuffer(blob, np.uint8), shape=np.array(xs.shape), labels=ys,
             class_names=names)
    print(f"{dst}: {len(xs)} images ({len(keep)} train + {val_size} val), {len(blob) / 2**20:.1f} MiB")


def unpack(src: Path, dst_dir: Path) -> None:
    z = np.load(src)
    x = np.frombuffer(lzma.decompress(z["pixels_xz"].tobytes()), np.uint8).reshape(tuple(z["shape"]))
    dst_dir.mkdir(parents=True, exist_ok=True)
    np.savez(dst_dir / "cifar10-sub.npz", images=x, labels=z["labels"], class_names=z["class_names"])
    print(f"{dst_dir / 'cifar10-sub.npz'}: {len(x)} images")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["pack", "unpack"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--train-per-class", type=int, default=2000)
    a = ap.parse_args()
    pack(a.src, a.dst, a.train_per_class) if a.mode == "pack" else unpack(a.src, a.dst)
