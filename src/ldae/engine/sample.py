"""``ldae sample``: images from a trained run (DDPM ancestral or DDIM, classifier-free guidance).

The chain runs in the tokenizer's latent (``diffusion/sampling.py``); the result is decoded
through the run's tokenizer into images. Output, in ``RUN_DIR/samples/<tag>/`` unless ``out`` is
given:

    samples.npz    images uint8 (n, H, W, 3) and labels int64 (n,) (-1 for unconditional runs)
    samples.json   every setting: sampler, steps, eta, guidance, n, seed, batch, checkpoint, weights
    grid.png       the first ``sample.grid`` images (for balanced class-conditional samples, one
                   column per class)

Image i belongs to batch b = i // batch_size; batch b draws all its noise from a generator seeded by
(seed, b), so the images do not depend on the number of processes. Under torchrun each rank takes
batches b = rank, rank + world, ... and writes a part file; rank 0 merges them in order.
A finished ``samples.npz`` with the same settings and at least n images is reused, not redone.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoint import atomic_path, atomic_write_json
from ..config import Config
from ..diffusion.sampling import eta_of, prior_mismatch, sample_latents
from ..dist import Runtime, setup
from ..errors import ConfigError
from ..logging import Timer, progress
from ..seeds import STREAM_FIXED, generator, mix
from .common import load_run

SAMPLES_FILE, META_FILE, GRID_FILE = "samples.npz", "samples.json", "grid.png"


def tag(cfg: Config, weights: str | None = None, cond: bool | None = None) -> str:
    """The folder name of a sample set: what decides its images (n excepted). ``weights``: the
    weights actually loaded ("ema" or "model"; default: what ``sample.ema`` asks for); ``cond``:
    whether the model is class-conditional (default: ``model.class_cond``)."""
    s = cfg.sample
    eta = f"-eta{s.eta:g}" if s.sampler == "ddim" else ""
    w = weights or ("ema" if s.ema else "model")
    cond = cfg.model.class_cond if cond is None else cond
    return (f"{s.sampler}{s.steps}{eta}-g{s.guidance:g}-{'ema' if w == 'ema' else 'raw'}"
            f"-{s.classes if cond else 'uncond'}-seed{s.seed}")


def labels_for(n: int, num_classes: int, classes: str, seed: int) -> torch.Tensor:
    """Class of each image: i mod C (balanced, every class equally often) or uniform at random."""
    if classes == "balanced":
        return torch.arange(n) % num_classes
    g = generator(mix(seed, STREAM_FIXED))
    return torch.randint(0, num_classes, (n,), generator=g)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (values outside clipped)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(den, cfg: Config, n: int, rt: Runtime, show: bool = True
             ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """This rank's share of n images: (indices, images uint8 (m, H, W, 3), labels (m,))."""
    s, dev = cfg.sample, rt.device
    cond = den.backbone.y_embed is not None
    all_labels = labels_for(n, cfg.data.num_classes, s.classes, s.seed)
    eta = eta_of(s.sampler, s.eta)
    B = s.batch_size
    batches = list(range(rt.rank, math.ceil(n / B), rt.world))
    shape_tail = (den.backbone.num_tokens, den.tokenizer.dim)
    steps_per_batch = s.steps
    mine = sum(min(B, n - b * B) for b in batches)
    bar = progress(mine * steps_per_batch, f"sample {s.sampler}{s.steps}", show and rt.is_main,
                   unit="img-step")
    idx_out, img_out, lab_out = [], [], []
    autocast = rt.autocast()
    for b in batches:
        rows = list(range(b * B, min((b + 1) * B, n)))
        y = all_labels[rows].to(dev) if cond else None
        g = generator(mix(s.seed, b), dev)

        def predict(zt, t, y=y):
            return den.predict_z0(zt, t, y, guidance=s.guidance, autocast=autocast)

        z = sample_latents(predict, den.schedule, (len(rows), *shape_tail), s.steps,
                           den.target.name, eta=eta, generator=g, device=dev,
                           on_step=lambda k=len(rows): bar.update(k))
        x = den.tokenizer.to_image(den.tokenizer.decode(z))
        idx_out += rows
        img_out.append(to_uint8(x))
        lab_out.append(all_labels[rows].numpy() if cond else np.full(len(rows), -1, np.int64))
    bar.close()
    H = cfg.data.image_size
    imgs = np.concatenate(img_out) if img_out else np.zeros((0, H, H, 3), np.uint8)
    labs = np.concatenate(lab_out) if lab_out else np.zeros((0,), np.int64)
    return idx_out, imgs, labs.astype(np.int64)


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` uint8 (n, H, W, 3) and ``labels`` of a samples file (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"] if "labels" in f else None
    except Exception as e:
        raise ConfigError(f"cannot read samples {path} ({type(e).__name__}: {e}); give an .npz "
                          "with an `images` array, uint8 (n, H, W, 3).") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"{path}: `images` must be uint8 (n, H, W, 3), got {images.dtype} "
                          f"{images.shape}.")
    return images, (labels if labels is not None else np.full(len(images), -1, np.int64))


def save_grid(path: Path, images: np.ndarray, ncol: int) -> Path:
    """A PNG grid of uint8 (n, H, W, 3) images, 2 px white gutters."""
    n, H, W, _ = images.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    scale = max(1, 64 // max(H, W))  # small images are drawn at >= 64 px
    H2, W2, pad = H * scale, W * scale, 2
    canvas = np.full((nrow * (H2 + pad) + pad, ncol * (W2 + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        big = im.repeat(scale, 0).repeat(scale, 1)
        canvas[pad + r * (H2 + pad): pad + r * (H2 + pad) + H2,
               pad + c * (W2 + pad): pad + c * (W2 + pad) + W2] = big
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def _meta(cfg: Config, den, n: int, world: int) -> dict:
    s = cfg.sample
    info = getattr(den, "loaded_from", {})
    return {"sampler": s.sampler, "steps": s.steps, "eta": eta_of(s.sampler, s.eta),
            "guidance": s.guidance, "seed": s.seed, "batch_size": s.batch_size,
            "classes": s.classes if den.backbone.y_embed is not None else "unconditional",
            "n": n, "checkpoint": info.get("checkpoint"), "step": info.get("step"),
            # a retrained run (--force) may reuse the file name: its mtime tells them apart
            "checkpoint_mtime_ns": Path(info["checkpoint"]).stat().st_mtime_ns
            if info.get("checkpoint") else None,
            "weights": info.get("weights"), "schedule": cfg.diffusion.schedule,
            "target": cfg.diffusion.target, "tokenizer": cfg.tokenizer.name,
            "image_size": cfg.data.image_size,
            "prior_mismatch": prior_mismatch(den.schedule), "processes": world}


def _same_set(old: dict, new: dict) -> bool:
    keys = [k for k in new if k not in ("n", "processes")]
    return all(old.get(k) == new[k] for k in keys) and old.get("n", 0) >= new["n"]


def run(cfg: Config, run_dir: Path, out: Path | None = None, n: int | None = None,
        rt: Runtime | None = None, show: bool = True) -> dict:
    """Sample ``n`` (default ``sample.n``) images of the run; returns the record (with paths)."""
    run_dir = Path(run_dir)
    n = int(n or cfg.sample.n)
    rt = rt or setup(cfg.train.device, cfg.train.threads)
    _, den = load_run(run_dir, use_ema=cfg.sample.ema, device=rt.device)
    if den.backbone.y_embed is None and cfg.sample.guidance != 1.0 and rt.is_main:
        print(f"ldae sample: the run is unconditional; sample.guidance={cfg.sample.guidance:g} "
              "has no effect", file=sys.stderr)
    out = Path(out) if out else run_dir / "samples" / tag(cfg, den.loaded_from["weights"],
                                                          den.backbone.y_embed is not None)
    meta = _meta(cfg, den, n, rt.world)
    if (out / META_FILE).is_file() and (out / SAMPLES_FILE).is_file():
        old = json.loads((out / META_FILE).read_text())
        if _same_set(old, meta):
            if rt.is_main:
                print(f"ldae sample: reusing {out / SAMPLES_FILE} ({old['n']} images, same settings)",
                      file=sys.stderr)
            return {**old, "files": _files(out), "reused": True}
    timer = Timer()
    idx, imgs, labs = generate(den, cfg, n, rt, show)
    if rt.distributed:
        save_npz(out / f".part-{rt.rank:05d}.npz", imgs, labs)
        np.save(out / f".part-{rt.rank:05d}-idx.npy", np.asarray(idx, np.int64))
        rt.barrier()
        if rt.is_main:
            parts = [(np.load(out / f".part-{r:05d}-idx.npy"), *read_npz(out / f".part-{r:05d}.npz"))
                     for r in range(rt.world)]
            order = np.concatenate([p[0] for p in parts])
            imgs = np.concatenate([p[1] for p in parts])[np.argsort(order)]
            labs = np.concatenate([p[2] for p in parts])[np.argsort(order)]
    if rt.is_main:
        save_npz(out / SAMPLES_FILE, imgs, labs)
        grid = imgs[: cfg.sample.grid]
        if len(grid):
            ncol = cfg.data.num_classes if meta["classes"] == "balanced" else math.ceil(len(grid) ** 0.5)
            save_grid(out / GRID_FILE, grid, ncol)
        meta.update(seconds=round(timer.elapsed(), 2),
                    img_per_s=round(n / max(timer.elapsed(), 1e-9), 2),
                    device=str(rt.device))
        atomic_write_json(out / META_FILE, meta)
        for p in out.glob(".part-*"):
            p.unlink(missing_ok=True)
    rt.barrier()
    return {**meta, "files": _files(out), "reused": False}


def _files(out: Path) -> dict:
    return {"npz": str(out / SAMPLES_FILE), "grid": str(out / GRID_FILE), "meta": str(out / META_FILE)}

