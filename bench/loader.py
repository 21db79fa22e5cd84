"""Input pipeline speed: decoding an ImageFolder of JPEGs vs reading the same images packed by
`ldae prepare-data` (issue 6: the loader must feed >= 1.5x what the GPU consumes).

    python bench/loader.py                          # 400 ImageNet-sized JPEGs, 256 px, 1 process
    python bench/loader.py --images 2000 --json runs/bench-loader.json
    python bench/loader.py --stored 292                # packed at 292 px, crops to 256

Makes a synthetic ImageFolder of JPEGs at ImageNet's typical size (500 x 375, quality 90, smooth
random content so that they compress like photos), then times, in one process:
- `imagefolder`: what every epoch costs with JPEGs (a webdataset tar pays the same decode): PIL
  decode + bicubic resize of the short side + center crop, per image (`ldae.data.folder.load_image`)
- `pack`: `ldae prepare-data` on the same folder (the one-time decode, on --workers processes)
- `packed`: a batch gather from the memory map in random order (what a training step reads), the
  second pass, served by the page cache
- `rrc`: the random resized crop + flip of those batches to --size px (`BatchAugment`, on this
  CPU; on a GPU it runs there). With --stored S > --size the folder is packed at S px and the
  crops are drawn from the whole stored image (data.crop=random_resized on a larger pack).
img/s per process; a GPU consuming R img/s needs R / (img/s per process) decode processes with
JPEGs, and none with the memmap.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_vs_timm import emit_record, hardware, hardware_line  # noqa: E402


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
    ap.add_argument("--stored", type=int, default=0, help="pack at this size (default: --size)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="processes of the one-time packing")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    hw = hardware(torch.device("cpu"))
    print(hardware_line(hw))
    from ldae.data import BatchAugment
    from ldae.data.folder import load_image
    from ldae.data.packed import PackedDataset, prepare

    stored = a.stored or a.size
    augment = BatchAugment("random_resized", (0.2, 1.0), hflip=True, size=a.size)

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
        prepare(root / "src", root / "packed", stored, ["train"], a.workers, show=False)
        t_pack = time.perf_counter() - t0
        ds = PackedDataset(root / "packed", "train", a.size, 1).full_view()
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        for _ in range(2):  # the second pass is timed (page cache warm, as in training)
            t_read = t_aug = 0.0
            for i in range(0, len(ds), a.batch):
                t0 = time.perf_counter()
                x, _ = ds.gather(order[i:i + a.batch])
                x = x.contiguous()
                t1 = time.perf_counter()
                assert augment(x, g).shape[-1] == a.size
                t_read, t_aug = t_read + t1 - t0, t_aug + time.perf_counter() - t1
    rec = {"hardware": hw, "images": a.images, "size": a.size, "stored": stored,
           "jpeg_kb": round(jpeg_kb, 1), "packed_kb": round(stored * stored * 3 / 1024, 1),
           "imagefolder_img_per_s_per_process": round(a.images / t_decode, 1),
           "pack_img_per_s": round(a.images / t_pack, 1), "pack_workers": a.workers,
           "packed_img_per_s_per_process": round(a.images / t_read, 1),
           "rrc_flip_img_per_s_per_process": round(a.images / t_aug, 1)}
    emit_record(rec, a.json)


if __name__ == "__main__":
    main()
