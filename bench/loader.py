"""Input pipeline speed: decoding an ImageFolder of JPEGs vs reading the same images packed by
`ldae prepare-data` (issue 6: the loader must feed >= 1.5x what the GPU consumes).

    python bench/loader.py                          # 400 ImageNet-sized JPEGs, 256 px, 1 process
    python bench/loader.py --images 2000 --json runs/bench-loader.json

Makes a synthetic ImageFolder of JPEGs at ImageNet's typical size (500 x 375, quality 90, smooth
random content so that they compress like photos), then times, in one process:
- `imagefolder`: what every epoch costs with JPEGs (a webdataset tar pays the same decode): PIL
  decode + bicubic resize of the short side + center crop, per image (`ldae.data.folder.load_image`)
- `pack`: `ldae prepare-data` on the same folder (the one-time decode, on --workers processes)
- `packed`: a batch gather from the memory map in random order (what a training step reads), the
  second pass, served by the page cache
img/s per process; a GPU consuming R img/s needs R / (img/s per process) decode processes with
JPEGs, and none with the memmap.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_vs_timm import hardware, hardware_line  # noqa: E402


def make_folder(root: Path, n: int, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    d = root / "train" / "c0"
    d.mkdir(parents=True)
    for i in range(n):
        low = g.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((500, 375), Image.BICUBIC)
        im.save(d / f"{i:06d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="processes of the one-time packing")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    hw = hardware(torch.device("cpu"))
    print(hardware_line(hw))
    from ldae.data.folder import load_image
    from ldae.data.packed import PackedDataset, prepare

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root / "src", a.images)
        files = sorted((root / "src" / "train" / "c0").iterdir())
        jpeg_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        t0 = time.perf_counter()
        for f in files:
            load_image(f, a.size)
        t_decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare(root / "src", root / "packed", a.size, ["train"], a.workers, show=False)
        t_pack = time.perf_counter() - t0
        ds = PackedDataset(root / "packed", "train", a.size, 1)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
        for _ in range(2):  # the second pass is timed (page cache warm, as in training)
            t0 = time.perf_counter()
            for i in range(0, len(ds), a.batch):
                x, _ = ds.gather(order[i:i + a.batch])
                x.contiguous()
            t_read = time.perf_counter() - t0
    rec = {"hardware": hw, "images": a.images, "size": a.size,
           "jpeg_kb": round(jpeg_kb, 1), "packed_kb": round(a.size * a.size * 3 / 1024, 1),
           "imagefolder_img_per_s_per_process": round(a.images / t_decode, 1),
           "pack_img_per_s": round(a.images / t_pack, 1), "pack_workers": a.workers,
           "packed_img_per_s_per_process": round(a.images / t_read, 1)}
    print(json.dumps(rec, indent=2))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
