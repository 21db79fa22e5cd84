"""Linear probe: MAE's protocol (He et al. 2022, App. A; l-DAE paper App. A; SPEC §5).

The encoder (the first k blocks of the trained denoiser) is frozen, in eval mode, run without
grad at a fixed timestep t (``linprobe.t``, default 10) on the clean image, or on the noisy one at
that t (``linprobe.noisy``). Its feature is the token average of block k's output (DiT has no cls
token, so average pooling replaces MAE's cls default). The head is MAE's:

    feature (B, W) -> BatchNorm1d(W, affine=False, eps=1e-6) -> Linear(W, classes)

with the Linear's weight drawn from a trunc-normal of std 0.01 (bounds +-2 absolute, as MAE/timm,
so in effect N(0, 0.01^2)) and a zero bias. Optimiser: LARS (momentum 0.9, weight decay 0, 1-D
params neither adapted nor decayed), ``lr = blr x batch / 256``, per-iteration linear warmup
(10 epochs) then half-cycle cosine to 0 over 90 epochs; cross-entropy loss; top-1 / top-5 (%, top-5
meaning top-min(5, classes)) on ``data.eval_split``, which is only reported, never selected on.

Learning rate: the l-DAE paper's text gives lr 6.4e-3 at batch 16384, while MAE's LARS recipe
(blr 0.1) gives lr = 0.1 x 16384 / 256 = 6.4 at that batch. We default to MAE's blr 0.1 and expose
``linprobe.blr``; ``linprobe.blr=1e-4`` reproduces the paper's number (6.4e-3 at 16384).

Two modes:
- full (``linprobe.fast=false``, the protocol): each epoch re-runs the encoder on a random
  resized crop (``linprobe.rrc_scale``, default MAE's (0.08, 1)) + horizontal flip of every train
  image; the eval images are the dataset's resized/center-cropped ones, unaugmented.
- fast (``linprobe.fast=true``, a stated deviation): features of the train and eval splits are
  extracted once, without augmentation, and held in memory; one head per ``linprobe.lr_grid``
  blr is trained on them in the same pass (same mini-batches, one shared parameter-free BN, one
  LARS param group per head, each head from the same init), so head i is exactly the head a
  single run at blr_i would give. (Heads trained together after DINOv2's
  ``setup_linear_classifiers``.) The blr is selected without the reported split
  (``linprobe.select=holdout``, :func:`select_and_fit`): the grid trains on the train split minus
  a seeded ``linprobe.holdout`` share (10 %), the best holdout top-1 picks the blr, one head at
  that blr is retrained on the whole train split, and that head's eval top-1/top-5 is the record
  (every grid head's holdout and eval numbers are kept beside it, the latter for reference).
  ``select=eval`` is the old, optimistically biased choice on the eval split itself.

Sweeps (App. A; ``ldae linprobe --sweep``): :mod:`ldae.engine.linprobe_sweep`.

Encoders (``linprobe.encoder``): ``ldae`` (the trained denoiser), ``random`` (the same architecture
at random init; the caller builds it with ``engine.encoders.build_random``), ``pixels`` (the
flattened [-1, 1] image, 3 H W dims, no network: t and noisy do not apply), ``vit`` (an encoder from
outside the run, ``models.vit.VitEncoder``: an ``ldae export`` dir, whose t and depth are baked in,
or any timm ViT checkpoint, pooled its own way; ``ldae linprobe --from SRC [--weights FILE]``), so
other encoders go through the same probe.

Outputs in ``run_dir/eval/``: ``linprobe.json`` (``linprobe-{encoder}.json`` for the baselines,
so the three sit side by side), the selected head's weights and BN statistics
(``...-head.safetensors``) and one line per epoch (``...-train.jsonl``: loss per head, lr factor).

Distributed: the probe runs on rank 0 only (the frozen encoder needs no DDP and the head is
tiny); other ranks return ``{}`` at once, so a caller must not wait on a barrier after it.
Mini-batches drop the last partial batch of each train epoch (MAE's drop_last); eval drops none.
"""
from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import atomic_path, atomic_write_json
from ..config import Config
from ..data import (BatchAugment, BatchStream, build_dataset, epoch_permutation, full_images,
                    iterate_in_order, to_float)
from ..dist import Runtime, setup
from ..errors import ConfigError
from ..logging import MetricsLog, progress
from ..models.vit import VitEncoder
from ..optim import LARS, scaled_lr, set_lr, warmup_cosine
from ..seeds import (STREAM_EXTRACT, STREAM_INIT, STREAM_PROBE_AUG, STREAM_PROBE_NOISE, generator,
                     probe_seed)
from .encoders import encode, prepare_encoder
from .metrics import TOPK, evaluate
from .splits import holdout_split

BN_EPS = 1e-6  # MAE's BatchNorm1d(affine=False, eps=1e-6)
HEAD_INIT_STD = 0.01  # MAE: trunc_normal_(head.weight, std=0.01)
# Random streams (``ldae.seeds``): every draw is a function of (train.seed, stream, step).


def probe_generator(device: torch.device | str, seed: int, stream: int, step: int = 0) -> torch.Generator:
    """The generator of one of the probe's random streams (``seeds.probe_seed``) on ``device``."""
    return generator(probe_seed(seed, stream, step), device)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timing is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def out_stem(encoder: str, tag: str = "") -> str:
    """File stem in ``run_dir/eval``: ``linprobe`` for l-DAE, ``linprobe-{encoder}`` otherwise,
    then ``-{tag}`` when a tag is given (``ldae linprobe --tag``)."""
    stem = "linprobe" if encoder == "ldae" else f"linprobe-{encoder}"
    return f"{stem}-{tag}" if tag else stem


def probe_blocks(cfg: Config, denoiser: nn.Module | None) -> list[int]:
    """[k]: ``linprobe.blocks`` if set, else the model's encoder split; [] for pixels; an outside
    ViT's own depth (its blocks are all encoder)."""
    if denoiser is None:
        return []
    if isinstance(denoiser, VitEncoder):
        return [denoiser.depth]
    return [cfg.linprobe.blocks or denoiser.backbone.encoder_blocks]


def feature_dim(cfg: Config, denoiser: nn.Module | None) -> int:
    if denoiser is None:
        return 3 * cfg.data.image_size ** 2
    return denoiser.width if isinstance(denoiser, VitEncoder) else denoiser.backbone.width


# --------------------------------------------------------------------------- head
class LinearProbe(nn.Module):
    """One BatchNorm (no affine, shared: it has no parameters) and ``num_heads`` Linear heads.

    (B, W) -> [(B, classes)] * num_heads. Every head starts from the same weights (drawn from a
    generator seeded by ``seed``), so heads differ only by their learning rate."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 1, seed: int = 0):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(num_heads))
        for h in self.heads:
            g = torch.Generator().manual_seed(probe_seed(seed, STREAM_INIT))
            nn.init.trunc_normal_(h.weight, std=HEAD_INIT_STD, generator=g)
            nn.init.zeros_(h.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.norm(x)
        return [h(z) for h in self.heads]

    def head_state(self, i: int) -> dict[str, torch.Tensor]:
        """Head i as a standalone BN + Linear state (for ``...-head.safetensors``)."""
        sd = {f"norm.{k}": v for k, v in self.norm.state_dict().items()}
        sd.update({f"linear.{k}": v for k, v in self.heads[i].state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


# ----------------------------------------------------------------------- features
def extract_features(denoiser: nn.Module | None, dataset, cfg: Config, rt: Runtime,
                     blocks: list[int], *, desc: str = "features", stream_step: int = 0,
                     stats: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Features of every image of ``dataset`` (in order, unaugmented), from one forward per batch.

    Returns one float32 (N, W) CPU tensor per block of ``blocks`` (one (N, 3 H W) for pixels,
    whatever ``blocks``) and the int64 (N,) labels. Noisy draws come from one generator seeded by
    (train.seed, ``stream_step``), so a split's features repeat exactly. ``stats`` (if given)
    receives ``img_per_s`` and ``seconds`` of the pass."""
    denoiser = prepare_encoder(denoiser, rt)
    n = len(dataset)
    feats: list[torch.Tensor] | None = None
    labels = torch.empty(n, dtype=torch.long)
    gen = probe_generator(rt.device, cfg.train.seed, STREAM_EXTRACT, stream_step) if denoiser is not None else None
    bar = progress(n, desc, enabled=rt.is_main)
    sync(rt.device)
    t0, i = time.perf_counter(), 0
    for xb, yb in iterate_in_order(dataset, cfg.linprobe.batch_size, cfg.data.num_workers):
        x = to_float(xb.to(rt.device, non_blocking=True))
        out = encode(denoiser, x, cfg, rt, blocks, gen)
        if feats is None:
            feats = [torch.empty(n, f.shape[1], dtype=torch.float32) for f in out]
        for buf, f in zip(feats, out):
            buf[i:i + f.shape[0]].copy_(f)
        labels[i:i + yb.shape[0]] = yb
        i += yb.shape[0]
        bar.update(yb.shape[0])
    sync(rt.device)
    seconds = time.perf_counter() - t0
    bar.close()
    if stats is not None:
        stats.update(img_per_s=n / max(seconds, 1e-9), seconds=seconds)
    return feats or [], labels


# ------------------------------------------------------------------------- training
def _train(probe: LinearProbe, lrs: list[float], cfg: Config, rt: Runtime, steps_per_epoch: int,
           batch: int, batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
           log: MetricsLog, desc: str | None = None) -> float:
    """MAE's probe loop over every head at once; ``batch_fn(step)`` gives (features, labels).

    Head i sits in its own LARS param group whose ``lr_scale`` is its peak lr; the schedule factor
    (warmup, then half-cycle cosine, per iteration) is shared. Returns train img/s."""
    lp = cfg.linprobe
    groups = [{"params": list(h.parameters()), "lr_scale": lr} for h, lr in zip(probe.heads, lrs)]
    opt = LARS(groups, lr=0.0, weight_decay=lp.weight_decay, momentum=lp.momentum)
    total, warmup = lp.epochs * steps_per_epoch, lp.warmup_epochs * steps_per_epoch
    probe.train()
    desc = desc or f"linprobe {'fast' if lp.fast else 'full'}"
    bar = progress(total * batch, desc, enabled=rt.is_main)
    sync(rt.device)
    t0 = time.perf_counter()
    for epoch in range(lp.epochs):
        loss_sum = torch.zeros(len(probe.heads), device=rt.device)
        for k in range(steps_per_epoch):
            step = epoch * steps_per_epoch + k
            factor = warmup_cosine(step, total, warmup, 1.0)
            set_lr(opt, factor)
            f, y = batch_fn(step)
            losses = torch.stack([F.cross_entropy(logits, y) for logits in probe(f)])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # heads share no parameter: each gets its own gradient
            opt.step()
            loss_sum += losses.detach()
            bar.update(batch)
        mean = (loss_sum / steps_per_epoch).tolist()
        if not all(math.isfinite(v) for v in mean):
            bad = [b for b, v in zip(lrs, mean) if not math.isfinite(v)]
            print(f"linprobe: non-finite loss for heads with lr {bad} at epoch {epoch + 1}",
                  file=sys.stderr)
        log.write({"step": (epoch + 1) * steps_per_epoch, "epoch": epoch + 1, "loss": mean,
                   "lr_factor": factor})
        bar.set_postfix(epoch=epoch + 1, loss=f"{min(mean):.3f}")
    sync(rt.device)
    rate = total * batch / max(time.perf_counter() - t0, 1e-9)
    bar.close()
    return rate


def _chunks(feats: torch.Tensor, labels: torch.Tensor, size: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, feats.shape[0], size):
        yield feats[i:i + size], labels[i:i + size]


class Tagged:
    """A MetricsLog view that adds the cell's keys to every record."""

    def __init__(self, log: MetricsLog, **tag):
        self.log, self.tag = log, tag

    def write(self, record: dict) -> None:
        self.log.write({**self.tag, **record})


# -------------------------------------------------------------------------- modes
FitResult = tuple[LinearProbe, list[tuple[float, float]], int, float, float]


def _features_fast(denoiser, train_ds, eval_ds, cfg: Config, rt: Runtime, blocks: list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Features of both splits, extracted once without augmentation, and the extraction img/s."""
    d = cfg.data
    st_tr, st_ev = {}, {}
    ftr, ytr = extract_features(denoiser, train_ds, cfg, rt, blocks, stats=st_tr,
                                desc=f"features {d.train_split}", stream_step=0)
    fev, yev = extract_features(denoiser, eval_ds, cfg, rt, blocks, stats=st_ev,
                                desc=f"features {d.eval_split}", stream_step=1)
    rate = (len(train_ds) + len(eval_ds)) / max(st_tr["seconds"] + st_ev["seconds"], 1e-9)
    return ftr[0], ytr, fev[0], yev, rate

def select_and_fit(ftr: torch.Tensor, ytr: torch.Tensor, fev: torch.Tensor, yev: torch.Tensor,
                   cfg: Config, rt: Runtime, batch: int, blrs: list[float], log: MetricsLog,
                   desc: str | None = None) -> dict:
    """The lr grid on cached features, selected without looking at the reported split.

    ``linprobe.select=holdout`` (default): every grid head trains on the train rows outside a
    seeded ``linprobe.holdout`` share of the train split; the blr with the best top-1 on that
    holdout is chosen; one head at that blr is then retrained on the whole train split (the
    same schedule) and only it is evaluated for the record (sklearn's refit). The grid heads'
    eval top-1 is recorded too, for reference only. ``select=eval`` picks the best head on the
    eval split itself (the old fast mode: optimistically biased, kept to compare). A one-value
    grid needs no selection: one head on the whole train split.

    Returns {"probe": the reported head (a one-head LinearProbe), "top1", "top5", "best": index,
    "grid": [{blr, lr, holdout_top1, holdout_top5, top1, top5}], "selection": {...}, "train_rate"}."""
    lp = cfg.linprobe
    lrs = [scaled_lr(b, batch) for b in blrs]
    n = ftr.shape[0]
    if len(blrs) == 1 or lp.select == "eval":
        probe, res, _, rate = _fit_cached(ftr, ytr, fev, yev, cfg, rt, batch, lrs, log, desc)
        best = max(range(len(blrs)), key=lambda i: res[i][0])  # ties: the first in grid order
        grid = [{"blr": b, "lr": lr, "holdout_top1": None, "holdout_top5": None,
                 "top1": r[0], "top5": r[1]} for b, lr, r in zip(blrs, lrs, res)]
        sel = {"by": "none (one blr)" if len(blrs) == 1 else "eval (biased: selected on the "
               "reported split)", "n_fit": n, "n_holdout": 0}
        if len(blrs) > 1:
            probe = _single_head(probe, best)
        return {"probe": probe, "top1": res[best][0], "top5": res[best][1], "best": best,
                "grid": grid, "selection": sel, "train_rate": rate}
    fit_idx, ho_idx = holdout_split(n, cfg)
    b_fit = min(batch, fit_idx.numel())
    fit_lrs = [scaled_lr(b, b_fit) for b in blrs]
    probe, ho, _, rate = _fit_cached(ftr[fit_idx], ytr[fit_idx], ftr[ho_idx], ytr[ho_idx], cfg, rt,
                                     b_fit, fit_lrs, Tagged(log, phase="select"),
                                     f"{desc or 'linprobe heads'} (select on holdout)")
    ev = evaluate(probe, _chunks(fev.to(rt.device, torch.float32), yev.to(rt.device), lp.batch_size))
    best = max(range(len(blrs)), key=lambda i: ho[i][0])  # ties: the first in grid order
    final, res, _, _ = _fit_cached(ftr, ytr, fev, yev, cfg, rt, batch, [lrs[best]],
                                   Tagged(log, phase="refit"),
                                   f"{desc or 'linprobe head'} (refit blr {blrs[best]:g})")
    grid = [{"blr": b, "lr": lr, "holdout_top1": h[0], "holdout_top5": h[1], "top1": e[0],
             "top5": e[1]} for b, lr, h, e in zip(blrs, fit_lrs, ho, ev)]
    sel = {"by": "holdout", "holdout": lp.holdout, "n_fit": int(fit_idx.numel()),
           "n_holdout": int(ho_idx.numel()), "holdout_top1": ho[best][0],
           "note": "grid heads trained on the train split minus the holdout and selected on it; "
                   "the reported head retrained at the chosen blr on the whole train split; the "
                   "grid's eval numbers are for reference, not used to select"}
    return {"probe": final, "top1": res[0][0], "top5": res[0][1], "best": best, "grid": grid,
            "selection": sel, "train_rate": rate}


def _single_head(probe: "LinearProbe", i: int) -> "LinearProbe":
    """Head i of a multi-head probe as a one-head probe (the shared BN's statistics kept)."""
    one = LinearProbe(probe.heads[i].in_features, probe.heads[i].out_features, 1)
    one.norm.load_state_dict(probe.norm.state_dict())
    one.heads[0].load_state_dict(probe.heads[i].state_dict())
    return one.to(probe.norm.running_mean.device)


def _fit_cached(ftr: torch.Tensor, ytr: torch.Tensor, fev: torch.Tensor, yev: torch.Tensor,
                cfg: Config, rt: Runtime, batch: int, lrs: list[float], log: MetricsLog,
                desc: str | None = None) -> tuple[LinearProbe, list[tuple[float, float]], int, float]:
    """One head per lr on cached (N, W) features (any float dtype; trained in float32), the same
    mini-batches for all; evaluated on the cached eval features. Returns (probe, [(top1, top5)]
    per head, W, train img/s)."""
    d, lp = cfg.data, cfg.linprobe
    ftr, ytr = ftr.to(rt.device, torch.float32), ytr.to(rt.device)  # (N, W), cached on the device
    n, feat_dim = ftr.shape
    steps_per_epoch = n // batch
    probe = LinearProbe(feat_dim, d.num_classes, len(lrs), cfg.train.seed).to(rt.device)
    perms: dict[int, torch.Tensor] = {}

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in perms:  # BatchStream's order; one epoch's permutation held at a time
            perms.clear()
            perms[epoch] = epoch_permutation(n, cfg.train.seed, epoch).to(rt.device)
        idx = perms[epoch][k * batch:(k + 1) * batch]
        return ftr[idx], ytr[idx]

    train_rate = _train(probe, lrs, cfg, rt, steps_per_epoch, batch, batch_fn, log, desc)
    results = evaluate(probe, _chunks(fev.to(rt.device, torch.float32), yev.to(rt.device),
                                      lp.batch_size))
    return probe, results, feat_dim, train_rate


def _fit_full(denoiser, train_ds, eval_ds, cfg: Config, rt: Runtime, blocks: list[int], batch: int,
              lrs: list[float], log: MetricsLog) -> FitResult:
    """The protocol: the encoder re-run every step on a random resized crop + flip."""
    d, lp = cfg.data, cfg.linprobe
    augment = BatchAugment("random_resized", lp.rrc_scale, hflip=True, size=d.image_size)
    stream = iter(BatchStream(full_images(train_ds), batch, cfg.train.seed, num_workers=d.num_workers))
    feat_dim = feature_dim(cfg, denoiser)
    probe = LinearProbe(feat_dim, d.num_classes, len(lrs), cfg.train.seed).to(rt.device)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = next(stream)  # uint8 (B, C, H, W); augmentation a function of (seed, step)
        x = augment(xb.to(rt.device, non_blocking=True),
                    probe_generator("cpu", cfg.train.seed, STREAM_PROBE_AUG, step))
        noise = (probe_generator(rt.device, cfg.train.seed, STREAM_PROBE_NOISE, step)
                 if denoiser is not None else None)
        return encode(denoiser, x, cfg, rt, blocks, noise)[0], yb.to(rt.device)

    train_rate = _train(probe, lrs, cfg, rt, len(train_ds) // batch, batch, batch_fn, log)
    st_ev: dict = {}
    fev, yev = extract_features(denoiser, eval_ds, cfg, rt, blocks, stats=st_ev,
                                desc=f"features {d.eval_split}", stream_step=1)
    results = evaluate(probe, _chunks(fev[0].to(rt.device), yev.to(rt.device), lp.batch_size))
    return probe, results, feat_dim, st_ev["img_per_s"], train_rate


def _fit_mode(denoiser, train_ds, eval_ds, cfg: Config, rt: Runtime, blocks: list[int], batch: int,
              blrs: list[float], lrs: list[float], log: MetricsLog) -> dict:
    """The head of ``linprobe.fast``'s mode: the fast lr grid's selected head
    (:func:`select_and_fit`) or the full protocol's one head. Returns {"probe", "top1", "top5",
    "best", "grid", "selection", "train_rate", "feat_dim", "extract_rate"}."""
    if cfg.linprobe.fast:
        ftr, ytr, fev, yev, extract_rate = _features_fast(denoiser, train_ds, eval_ds, cfg, rt,
                                                          blocks)
        fit = select_and_fit(ftr, ytr, fev, yev, cfg, rt, batch, blrs, log)
        return {**fit, "feat_dim": ftr.shape[1], "extract_rate": extract_rate}
    # one blr, fixed in advance: nothing is selected
    probe, results, feat_dim, extract_rate, train_rate = _fit_full(
        denoiser, train_ds, eval_ds, cfg, rt, blocks, batch, lrs, log)
    top1, top5 = results[0]
    grid = [{"blr": blrs[0], "lr": lrs[0], "holdout_top1": None, "holdout_top5": None,
             "top1": top1, "top5": top5}]
    selection = {"by": "none (one blr)", "n_fit": len(train_ds), "n_holdout": 0}
    return {"probe": probe, "top1": top1, "top5": top5, "best": 0, "grid": grid,
            "selection": selection, "train_rate": train_rate, "feat_dim": feat_dim,
            "extract_rate": extract_rate}


# ------------------------------------------------------------------------------ run
def probe_setup(cfg: Config, rt: Runtime | None, denoiser: nn.Module | None
                ) -> tuple[Runtime, nn.Module | None]:
    """A probe's runtime (from ``cfg.train`` unless given) and encoder (none for raw pixels)."""
    rt = rt or setup(cfg.train.device, cfg.train.threads)
    return rt, (None if cfg.linprobe.encoder == "pixels" else denoiser)


def run(cfg: Config, run_dir: Path, denoiser: nn.Module | None, rt: Runtime | None = None,
        tag: str = "") -> dict:
    """Train and evaluate the linear probe of ``cfg.linprobe``; write ``eval/<stem>.json``.

    ``denoiser``: the trained l-DAE (encoder ``ldae``), its random-init twin (``random``) or None
    (``pixels``). Returns the recorded dict (``{}`` on ranks other than 0)."""
    rt, denoiser = probe_setup(cfg, rt, denoiser)
    if not rt.is_main:
        return {}
    lp, d = cfg.linprobe, cfg.data
    if denoiser is None and lp.encoder != "pixels":
        raise ValueError(f"linprobe.encoder={lp.encoder} needs an encoder (engine.encoders.encoder_for "
                         "builds it); only 'pixels' runs without one.")
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if tag and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", tag):
        raise ConfigError(f"--tag '{tag}' must be 1-64 letters, digits, '.', '_' or '-' (it names "
                          "a file).")
    stem = out_stem(lp.encoder, tag)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    denoiser = prepare_encoder(denoiser, rt)
    blocks = probe_blocks(cfg, denoiser)
    train_ds, eval_ds = build_dataset(cfg, d.train_split), build_dataset(cfg, d.eval_split)
    n_train, n_eval = len(train_ds), len(eval_ds)
    batch = min(lp.batch_size, n_train)
    notes = []
    if batch < lp.batch_size:
        notes.append(f"linprobe.batch_size={lp.batch_size} exceeds the {n_train} train images; "
                     f"clamped to {batch}")
        print(f"linprobe: {notes[-1]}", file=sys.stderr)
    if lp.fast:
        notes.append("fast mode: features cached once without augmentation (protocol deviation)")
    steps_per_epoch = n_train // batch
    blrs = list(lp.lr_grid) if lp.fast else [lp.blr]
    lrs = [scaled_lr(b, batch) for b in blrs]
    log_path = run_dir / "eval" / f"{stem}-train.jsonl"
    log_path.unlink(missing_ok=True)
    log = MetricsLog(run_dir / "eval", enabled=True, name=log_path.name)

    fit = _fit_mode(denoiser, train_ds, eval_ds, cfg, rt, blocks, batch, blrs, lrs, log)
    log.close()
    best, selection = fit["best"], fit["selection"]
    if selection["by"] != "holdout" and len(blrs) > 1:
        print(f"linprobe: warning: linprobe.select={lp.select} picks the blr on the split it "
              "reports: the number is optimistically biased.", file=sys.stderr)

    head_path = run_dir / "eval" / f"{stem}-head.safetensors"
    with atomic_path(head_path) as tmp:
        save_file(fit["probe"].head_state(0), str(tmp),
                  metadata={"encoder": lp.encoder, "blr": repr(blrs[best]), "lr": repr(lrs[best])})
    pixels, vit = denoiser is None, isinstance(denoiser, VitEncoder)
    rec = {
        "encoder": lp.encoder, "mode": "fast" if lp.fast else "full",
        "top1": fit["top1"], "top5": fit["top5"], "topk": min(TOPK, d.num_classes),
        "best_blr": blrs[best], "blr": blrs[best], "lr": lrs[best],
        "selection": selection, "grid": fit["grid"],
        "t": None if pixels else (denoiser.meta.get("t") if vit else lp.t),
        "noisy": None if pixels else lp.noisy,
        "clean_input": None if pixels or vit or lp.noisy else lp.clean_input,
        "source": denoiser.source if vit else None,
        "weights": getattr(denoiser, "loaded_from", None),
        "blocks": blocks[0] if blocks else None, "feat_dim": fit["feat_dim"],
        "epochs": lp.epochs, "warmup_epochs": lp.warmup_epochs, "batch_size": batch,
        "batch_size_requested": lp.batch_size, "steps_per_epoch": steps_per_epoch,
        "weight_decay": lp.weight_decay, "momentum": lp.momentum,
        "rrc_scale": None if lp.fast else list(lp.rrc_scale),
        "n_train": n_train, "n_eval": n_eval, "train_split": d.train_split, "eval_split": d.eval_split,
        "num_classes": d.num_classes, "seed": cfg.train.seed, "device": str(rt.device),
        "extract_img_per_s": fit["extract_rate"], "train_img_per_s": fit["train_rate"],
        "wall_s": time.perf_counter() - t_start, "head": head_path.name, "notes": notes,
    }
    atomic_write_json(run_dir / "eval" / f"{stem}.json", rec)
    return rec


__all__ = ["run", "extract_features", "LinearProbe", "probe_blocks", "out_stem"]
