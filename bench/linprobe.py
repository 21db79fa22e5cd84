"""Linear-probe speed: frozen-encoder feature extraction and fast-mode head training (img/s).

What is measured:

  features        ``Denoiser.features(x, t, [k])`` on a batch of images (B, 3, H, W), clean input,
                  fixed t (default 10), eval mode, no grad, bf16 autocast on CUDA / fp32 on CPU:
                  patchify -> DiT embed -> the first k blocks (k = the encoder split by default)
                  -> token average. The encoder forward only: the pure compute.
  extract         ``ldae.engine.linprobe.extract_features`` over an in-memory uint8 dataset of
                  the same images: adds batching, uint8 -> float and the copy into the feature
                  buffer. What ``ldae linprobe`` pays per image.
  heads (fast)    the fast-mode probe loop of ``ldae.engine.linprobe`` (its ``_train``): one
                  shared parameter-free BatchNorm + ``--heads`` Linear heads (default 7, one per
                  blr of the grid) trained together with LARS on cached features. The features
                  are random (N, W) tensors of the encoder's width W with random labels: speed
                  does not depend on their values.

The two encoder measurements run interleaved (features, extract, then extract, features, ...)
for ``--repeats`` rounds of ``--steps`` batches; each number is the median over rounds.

FLOPs per image of the encoder forward (SPEC section 8's formula, forward third):

    F_fwd = 2 * N_k * L + 4 * k * W * L^2

N_k = weights applied to every token in the patch embedding and the first k blocks (qkv, proj,
fc1, fc2). Achieved GFLOP/s = F_fwd * img/s / 1e9.

    .venv/bin/python bench/linprobe.py                  # mini, 32 px, patch 4, batch 512, t=10
    .venv/bin/python bench/linprobe.py --model tiny --json out.json
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_vs_timm import (autocast_for, default_peak_tflops, hardware, hardware_line,  # noqa: E402
                           loadavg, pick_device, set_threads, shape_parser, sync)


def build(args, device: torch.device):
    from ldae.config import load_config
    from ldae.diffusion.objective import build_denoiser
    from ldae.tokenizers import PCATokenizer

    ov = [f"model.name={args.model}", f"model.patch_size={args.patch_size}",
          f"data.image_size={args.image_size}", f"model.adaln={args.adaln}",
          f"tokenizer.dim={args.latent_dim}", f"linprobe.t={args.t}",
          f"linprobe.batch_size={args.batch}", f"linprobe.noisy={str(args.noisy).lower()}",
          f"linprobe.blocks={args.blocks}", f"train.device={device.type}",
          f"train.threads={args.threads}", "linprobe.fast=true", "data.num_workers=0"]
    cfg = load_config(None, ov)
    g = torch.Generator().manual_seed(0)
    S = args.image_size
    images = torch.randint(0, 256, (args.batch * args.steps, 3, S, S), generator=g, dtype=torch.uint8)
    tok = PCATokenizer(args.patch_size, args.latent_dim).fit([images[:256].float() / 127.5 - 1])
    den = build_denoiser(cfg, tok).to(device).eval().requires_grad_(False)
    return cfg, den, images


def main() -> None:
    ap = shape_parser(__doc__, batch=512, batch_help="images per encoder forward")
    ap.add_argument("--t", type=int, default=10, help="fixed timestep at transfer (App. A)")
    ap.add_argument("--blocks", type=int, default=0, help="encoder depth k (0 = the encoder split)")
    ap.add_argument("--noisy", action="store_true", help="noisy input at t instead of clean")
    ap.add_argument("--steps", type=int, default=0, help="batches per round (default 2 CPU / 20 CUDA)")
    ap.add_argument("--repeats", type=int, default=0, help="interleaved rounds (default 5 CPU / 7 CUDA)")
    ap.add_argument("--heads", type=int, default=7, help="heads trained together (fast mode's lr grid)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--head-batch", type=int, default=256, help="probe mini-batch (linprobe.batch_size)")
    ap.add_argument("--head-images", type=int, default=45000, help="cached features per head epoch")
    ap.add_argument("--head-repeats", type=int, default=3, help="head epochs timed (median)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (auto for known GPUs)")
    ap.add_argument("--json", default="", help="write the results to this path")
    args = ap.parse_args()

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (20 if cuda else 2)
    args.repeats = args.repeats or (7 if cuda else 5)
    set_threads(device, args.threads)
    peak = args.peak_tflops or default_peak_tflops(device)

    from ldae.data import ArrayDataset
    from ldae.dist import setup
    from ldae.engine import linprobe as lp

    rt = setup(device.type, args.threads)  # what `ldae linprobe` does (sets the thread count too)
    cfg, den, images = build(args, device)
    bb = den.backbone
    k = args.blocks or bb.encoder_blocks
    L = bb.num_tokens
    fwd = bb.encoder_flops_per_image(k)
    hw = hardware(device)
    print(hardware_line(hw))
    print(f"model {args.model}: encoder = first {k} of {bb.depth} blocks x W {bb.width}; "
          f"{args.image_size} px / patch {args.patch_size} -> L={L}; t={args.t} "
          f"({'noisy' if args.noisy else 'clean'} input); batch {args.batch}; "
          f"{'bf16 autocast' if cuda else 'fp32'}; {args.repeats} rounds x {args.steps} batches, interleaved")

    # ------------------------------------------------------------ encoder forward
    ds = ArrayDataset(images, torch.zeros(images.shape[0], dtype=torch.long), [str(i) for i in range(10)])
    xs = [(images[i:i + args.batch].float() / 127.5 - 1).to(device)
          for i in range(0, images.shape[0], args.batch)]

    def run_features() -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in xs:
                den.features(x, args.t, [k], noisy=args.noisy, autocast=autocast_for(device))
        sync(device)
        return images.shape[0] / (time.perf_counter() - t0)

    def run_extract() -> float:
        stats: dict = {}
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            lp.extract_features(den, ds, cfg, rt, [k], stats=stats)
        return stats["img_per_s"]

    run_features()  # warmup (one round's worth of batches)
    run_extract()
    rates: dict[str, list[float]] = {"features": [], "extract": []}
    for r in range(args.repeats):
        pair = [("features", run_features), ("extract", run_extract)]
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            rates[name].append(fn())

    print(f"\nencoder forward: {fwd / 1e9:.4f} GFLOP/img (2 N_k L + 4 k W L^2)")
    print(f"{'what':10s} {'img/s':>10s} {'GFLOP/s':>9s}" + ("  MFU" if peak else "")
          + "   rounds img/s")
    res: dict = {}
    for name, v in rates.items():
        med = statistics.median(v)
        gfs = fwd * med / 1e9
        res[name] = {"img_per_s": med, "img_per_s_all": v, "gflop_per_s": gfs,
                     "mfu": gfs / (peak * 1e3) if peak else None}
        print(f"{name:10s} {med:10.1f} {gfs:9.1f}" + (f"  {100 * gfs / (peak * 1e3):.1f} %" if peak else "")
              + f"   {min(v):.0f}-{max(v):.0f}")

    # ------------------------------------------------------------ head training (fast mode)
    from ldae.config import load_config
    from ldae.logging import MetricsLog
    from ldae.optim import scaled_lr

    hb = min(args.head_batch, args.head_images)
    steps_per_epoch = args.head_images // hb
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(args.head_images, bb.width, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.head_images,), generator=g).to(device)
    blrs = list(cfg.linprobe.lr_grid)[: args.heads]
    blrs += [blrs[-1]] * (args.heads - len(blrs))
    lrs = [scaled_lr(b, hb) for b in blrs]
    # one epoch per timed call: _train's schedule (warmup, cosine) runs over that epoch
    one = load_config(None, ["linprobe.epochs=1", "linprobe.warmup_epochs=1",
                             f"linprobe.batch_size={hb}", "linprobe.fast=true"])
    perm = torch.randperm(args.head_images, generator=g).to(device)

    def batch_fn(step: int):
        i = step % steps_per_epoch
        idx = perm[i * hb:(i + 1) * hb]
        return feats[idx], labels[idx]

    head_rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.head_repeats + 1):  # the first is warmup
            probe = lp.LinearProbe(bb.width, args.classes, args.heads, 0).to(device)
            log = MetricsLog(Path(tmp), enabled=True, name=f"h{r}.jsonl")
            with contextlib.redirect_stderr(io.StringIO()):
                rate = lp._train(probe, lrs, one, rt, steps_per_epoch, hb, batch_fn, log)
            log.close()
            if r:
                head_rates.append(rate)
    hmed = statistics.median(head_rates)
    print(f"\nfast-mode heads: {args.heads} heads (BN + Linear({bb.width}, {args.classes})), LARS, "
          f"batch {hb}, {steps_per_epoch} steps/epoch over {args.head_images} cached features")
    print(f"heads      {hmed:10.0f} img/s  ({hmed * args.heads:.0f} head-img/s)   rounds "
          f"{min(head_rates):.0f}-{max(head_rates):.0f}")
    res["heads"] = {"img_per_s": hmed, "img_per_s_all": head_rates, "heads": args.heads,
                    "batch": hb, "steps_per_epoch": steps_per_epoch}
    print(f"load average at end: {loadavg()}")

    if args.json:
        rec = {"bench": "linprobe", "hardware": hw, "args": vars(args), "encoder_blocks": k,
               "tokens": L, "flops_fwd_per_image": fwd, "peak_tflops": peak, "results": res,
               "loadavg_end": loadavg()}
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
