"""Speed of the PCA tokenizer's fit (issue 6 goal: 50,000 256-px images in under 10 minutes on
one CPU core, under 1 minute on a GPU).

    python bench/pca.py                                  # 256 px, patch 16, 1 thread, CPU
    python bench/pca.py --images 2000 --device cuda      # on a GPU
    python bench/pca.py --json runs/bench-pca.json

The images are synthetic but image-like (random 16x16 colour fields, bicubic-upsampled, plus a
little noise), made on the fit's device batch by batch; their making is timed apart and not
counted. What is timed is exactly ``PCATokenizer.fit``'s work: patchify, the streaming float64
mean/covariance, and the final eigendecomposition. The 50,000-image time is extrapolated
linearly from ``--images`` (the covariance update is linear in the images; the eigh is once).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from ldae.tokenizers.pca import CovarianceAccumulator, PCATokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_vs_timm import emit_record, hardware, hardware_line, sync  # noqa: E402


def images(n: int, size: int, batch: int, device: str, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    for i in range(0, n, batch):
        b = min(batch, n - i)
        low = torch.rand(b, 3, 16, 16, generator=g, device=device) * 2 - 1
        x = torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False)
        yield (x + 0.05 * torch.randn(x.shape, generator=g, device=device)).clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--target", type=int, default=50000, help="extrapolate to this many images")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    hw = hardware(dev)
    print(hardware_line(hw))

    batches = list(images(min(a.images, 4 * a.batch), a.size, a.batch, dev))  # warm-up data
    tok = PCATokenizer(a.patch, 16).to(dev)
    tok.fit(batches[:1])  # warm-up: kernels, allocator
    sync(dev)

    t_make = t_acc = 0.0
    acc = CovarianceAccumulator(tok.full_dim)
    it = images(a.images, a.size, a.batch, dev, seed=1)
    while True:
        t0 = time.perf_counter()
        x = next(it, None)
        sync(dev)
        t1 = time.perf_counter()
        if x is None:
            break
        acc.update(tok.to_tokens(x.float()))
        sync(dev)
        t_acc += time.perf_counter() - t1
        t_make += t1 - t0
    t0 = time.perf_counter()
    mean, cov = acc.finish()
    torch.linalg.eigh(cov)
    t_eigh = time.perf_counter() - t0
    per_img = t_acc / a.images
    rec = {"hardware": hw, "images": a.images, "size": a.size, "patch": a.patch, "D": tok.full_dim,
           "batch": a.batch, "accumulate_s": round(t_acc, 3), "eigh_s": round(t_eigh, 3),
           "img_per_s": round(a.images / t_acc, 1), "making_images_s": round(t_make, 3),
           f"projected_{a.target}_s": round(per_img * a.target + t_eigh, 1)}
    emit_record(rec, a.json)


if __name__ == "__main__":
    main()
