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
meaning top-min(5, classes)) on ``data.eval_split`` (the project tunes and reports on val).

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
  single run at blr_i would give. The reported top-1/top-5 are those of the head with the best
  eval top-1; every head's result is recorded.
  (Heads trained together after DINOv2's ``setup_linear_classifiers``.)

Encoders (``linprobe.encoder``): ``ldae`` (the trained denoiser), ``random`` (the same architecture
at random init; the caller builds it with ``engine.common.build_random``), ``pixels`` (the
flattened [-1, 1] image, 3 H W dims, no network: t and noisy do not apply).

Outputs in ``run_dir/eval/``: ``linprobe.json`` (``linprobe-{encoder}.json`` for the baselines,
so the three sit side by side), the selected head's weights and BN statistics
(``...-head.safetensors``) and one line per epoch (``...-train.jsonl``: loss per head, lr factor).

Distributed: the probe runs on rank 0 only (the frozen encoder needs no DDP and the head is
tiny); other ranks return ``{}`` at once, so a caller must not wait on a barrier after it.
Mini-batches drop the last partial batch of each train epoch (MAE's drop_last); eval drops none.
"""
from __future__ import annotations

import math
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
from ..data import BatchAugment, BatchStream, build_dataset, epoch_permutation, iterate_in_order, to_float
from ..dist import Runtime, setup
from ..logging import MetricsLog, progress
from ..optim import LARS, scaled_lr, set_lr, warmup_cosine

BN_EPS = 1e-6  # MAE's BatchNorm1d(affine=False, eps=1e-6)
HEAD_INIT_STD = 0.01  # MAE: trunc_normal_(head.weight, std=0.01)
TOPK = 5
# Random streams: every draw is a function of (train.seed, stream, step), so runs repeat exactly.
STREAM_INIT, STREAM_AUG, STREAM_NOISE, STREAM_EXTRACT = 1, 2, 3, 4


def _seed(seed: int, stream: int, step: int = 0) -> int:
    return ((seed * 1_000_003 + stream) * 1_000_003 + step) % (2 ** 63)


def _generator(device: torch.device | str, seed: int, stream: int, step: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(seed, stream, step))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def out_stem(encoder: str) -> str:
    """File stem in ``run_dir/eval``: ``linprobe`` for l-DAE, ``linprobe-{encoder}`` otherwise."""
    return "linprobe" if encoder == "ldae" else f"linprobe-{encoder}"


def probe_blocks(cfg: Config, denoiser: nn.Module | None) -> list[int]:
    """[k]: ``linprobe.blocks`` if set, else the model's encoder split; [] for pixels."""
    if denoiser is None:
        return []
    return [cfg.linprobe.blocks or denoiser.backbone.encoder_blocks]


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
            g = torch.Generator().manual_seed(_seed(seed, STREAM_INIT))
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
def encode(denoiser: nn.Module | None, x: torch.Tensor, cfg: Config, rt: Runtime,
           blocks: list[int], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Float images (B, C, H, W) in [-1, 1] on rt.device -> one (B, W) float32 feature per block.

    ``pixels`` (denoiser None): [x flattened, (B, C H W)]."""
    if denoiser is None:
        return [x.flatten(1).float()]
    lp = cfg.linprobe
    with torch.no_grad():
        return denoiser.features(x, lp.t, blocks, noisy=lp.noisy, generator=generator,
                                 autocast=rt.autocast())


def _prepare(denoiser: nn.Module | None, rt: Runtime) -> nn.Module | None:
    """Frozen, eval-mode, on rt.device (in place: the caller hands the encoder over)."""
    if denoiser is not None:
        denoiser.to(rt.device).eval().requires_grad_(False)
    return denoiser


def extract_features(denoiser: nn.Module | None, dataset, cfg: Config, rt: Runtime,
                     blocks: list[int], *, desc: str = "features", stream_step: int = 0,
                     stats: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Features of every image of ``dataset`` (in order, unaugmented), from one forward per batch.

    Returns one float32 (N, W) CPU tensor per block of ``blocks`` (one (N, 3 H W) for pixels,
    whatever ``blocks``) and the int64 (N,) labels. Noisy draws come from one generator seeded by
    (train.seed, ``stream_step``), so a split's features repeat exactly. ``stats`` (if given)
    receives ``img_per_s`` and ``seconds`` of the pass."""
    denoiser = _prepare(denoiser, rt)
    n = len(dataset)
    feats: list[torch.Tensor] | None = None
    labels = torch.empty(n, dtype=torch.long)
    gen = _generator(rt.device, cfg.train.seed, STREAM_EXTRACT, stream_step) if denoiser is not None else None
    bar = progress(n, desc, enabled=rt.is_main)
    _sync(rt.device)
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
    _sync(rt.device)
    seconds = time.perf_counter() - t0
    bar.close()
    if stats is not None:
        stats.update(img_per_s=n / max(seconds, 1e-9), seconds=seconds)
    return feats or [], labels


# ------------------------------------------------------------------------- training
def _accuracy_counts(logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[int, int]:
    top = logits.topk(k, dim=1).indices  # (B, k)
    hit = top == y[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


@torch.no_grad()
def evaluate(probe: LinearProbe, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
             ) -> list[tuple[float, float]]:
    """(top-1 %, top-5 %) of every head over all (features, labels) batches (BN in eval mode)."""
    was = probe.training
    probe.eval()
    k = min(TOPK, probe.heads[0].out_features)
    c1 = [0] * len(probe.heads)
    c5 = [0] * len(probe.heads)
    n = 0
    for f, y in batches:
        for i, logits in enumerate(probe(f)):
            a, b = _accuracy_counts(logits, y, k)
            c1[i] += a
            c5[i] += b
        n += y.shape[0]
    probe.train(was)
    return [(100.0 * a / max(n, 1), 100.0 * b / max(n, 1)) for a, b in zip(c1, c5)]


def _train(probe: LinearProbe, lrs: list[float], cfg: Config, rt: Runtime, steps_per_epoch: int,
           batch: int, batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
           log: MetricsLog) -> float:
    """MAE's probe loop over every head at once; ``batch_fn(step)`` gives (features, labels).

    Head i sits in its own LARS param group whose ``lr_scale`` is its peak lr; the schedule factor
    (warmup, then half-cycle cosine, per iteration) is shared. Returns train img/s."""
    lp = cfg.linprobe
    groups = [{"params": list(h.parameters()), "lr_scale": lr} for h, lr in zip(probe.heads, lrs)]
    opt = LARS(groups, lr=0.0, weight_decay=lp.weight_decay, momentum=lp.momentum)
    total, warmup = lp.epochs * steps_per_epoch, lp.warmup_epochs * steps_per_epoch
    probe.train()
    bar = progress(total * batch, f"linprobe {'fast' if lp.fast else 'full'}", enabled=rt.is_main)
    _sync(rt.device)
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
    _sync(rt.device)
    rate = total * batch / max(time.perf_counter() - t0, 1e-9)
    bar.close()
    return rate


def _chunks(feats: torch.Tensor, labels: torch.Tensor, size: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, feats.shape[0], size):
        yield feats[i:i + size], labels[i:i + size]


# -------------------------------------------------------------------------- modes
FitResult = tuple[LinearProbe, list[tuple[float, float]], int, float, float]


def _fit_fast(denoiser, train_ds, eval_ds, cfg: Config, rt: Runtime, blocks: list[int], batch: int,
              lrs: list[float], log: MetricsLog) -> FitResult:
    """Features cached once (no aug), one head per lr trained on the same mini-batches."""
    d, lp = cfg.data, cfg.linprobe
    st_tr, st_ev = {}, {}
    ftr, ytr = extract_features(denoiser, train_ds, cfg, rt, blocks, stats=st_tr,
                                desc=f"features {d.train_split}", stream_step=0)
    fev, yev = extract_features(denoiser, eval_ds, cfg, rt, blocks, stats=st_ev,
                                desc=f"features {d.eval_split}", stream_step=1)
    extract_rate = (len(train_ds) + len(eval_ds)) / max(st_tr["seconds"] + st_ev["seconds"], 1e-9)
    ftr, ytr = ftr[0].to(rt.device), ytr.to(rt.device)  # (N, W), cached on the device
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

    train_rate = _train(probe, lrs, cfg, rt, steps_per_epoch, batch, batch_fn, log)
    results = evaluate(probe, _chunks(fev[0].to(rt.device), yev.to(rt.device), lp.batch_size))
    return probe, results, feat_dim, extract_rate, train_rate


def _fit_full(denoiser, train_ds, eval_ds, cfg: Config, rt: Runtime, blocks: list[int], batch: int,
              lrs: list[float], log: MetricsLog) -> FitResult:
    """The protocol: the encoder re-run every step on a random resized crop + flip."""
    d, lp = cfg.data, cfg.linprobe
    augment = BatchAugment("random_resized", lp.rrc_scale, hflip=True)
    stream = iter(BatchStream(train_ds, batch, cfg.train.seed, num_workers=d.num_workers))
    feat_dim = 3 * d.image_size ** 2 if denoiser is None else denoiser.backbone.width
    probe = LinearProbe(feat_dim, d.num_classes, len(lrs), cfg.train.seed).to(rt.device)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = next(stream)  # uint8 (B, C, H, W); augmentation a function of (seed, step)
        x = augment(xb.to(rt.device, non_blocking=True),
                    _generator("cpu", cfg.train.seed, STREAM_AUG, step))
        noise = (_generator(rt.device, cfg.train.seed, STREAM_NOISE, step)
                 if denoiser is not None else None)
        return encode(denoiser, x, cfg, rt, blocks, noise)[0], yb.to(rt.device)

    train_rate = _train(probe, lrs, cfg, rt, len(train_ds) // batch, batch, batch_fn, log)
    st_ev: dict = {}
    fev, yev = extract_features(denoiser, eval_ds, cfg, rt, blocks, stats=st_ev,
                                desc=f"features {d.eval_split}", stream_step=1)
    results = evaluate(probe, _chunks(fev[0].to(rt.device), yev.to(rt.device), lp.batch_size))
    return probe, results, feat_dim, st_ev["img_per_s"], train_rate


# ------------------------------------------------------------------------------ run
def run(cfg: Config, run_dir: Path, denoiser: nn.Module | None, rt: Runtime | None = None) -> dict:
    """Train and evaluate the linear probe of ``cfg.linprobe``; write ``eval/<stem>.json``.

    ``denoiser``: the trained l-DAE (encoder ``ldae``), its random-init twin (``random``) or None
    (``pixels``). Returns the recorded dict (``{}`` on ranks other than 0)."""
    rt = rt or setup(cfg.train.device, cfg.train.threads)
    if not rt.is_main:
        return {}
    lp, d = cfg.linprobe, cfg.data
    if lp.encoder == "pixels":
        denoiser = None
    elif denoiser is None:
        raise ValueError(f"linprobe.encoder={lp.encoder} needs a denoiser (build it with "
                         "engine.common.load_run or build_random); only 'pixels' runs without one.")
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    stem = out_stem(lp.encoder)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    denoiser = _prepare(denoiser, rt)
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

    fit = _fit_fast if lp.fast else _fit_full
    probe, results, feat_dim, extract_rate, train_rate = fit(
        denoiser, train_ds, eval_ds, cfg, rt, blocks, batch, lrs, log)
    log.close()

    best = max(range(len(blrs)), key=lambda i: results[i][0])  # ties: the first in grid order
    head_path = run_dir / "eval" / f"{stem}-head.safetensors"
    with atomic_path(head_path) as tmp:
        save_file(probe.head_state(best), str(tmp),
                  metadata={"encoder": lp.encoder, "blr": repr(blrs[best]), "lr": repr(lrs[best])})
    pixels = denoiser is None
    rec = {
        "encoder": lp.encoder, "mode": "fast" if lp.fast else "full",
        "top1": results[best][0], "top5": results[best][1], "topk": min(TOPK, d.num_classes),
        "best_blr": blrs[best], "blr": blrs[best], "lr": lrs[best],
        "grid": [{"blr": b, "lr": lr, "top1": r[0], "top5": r[1]}
                 for b, lr, r in zip(blrs, lrs, results)],
        "t": None if pixels else lp.t, "noisy": None if pixels else lp.noisy,
        "blocks": blocks[0] if blocks else None, "feat_dim": feat_dim,
        "epochs": lp.epochs, "warmup_epochs": lp.warmup_epochs, "batch_size": batch,
        "batch_size_requested": lp.batch_size, "steps_per_epoch": steps_per_epoch,
        "weight_decay": lp.weight_decay, "momentum": lp.momentum,
        "rrc_scale": None if lp.fast else list(lp.rrc_scale),
        "n_train": n_train, "n_eval": n_eval, "train_split": d.train_split, "eval_split": d.eval_split,
        "num_classes": d.num_classes, "seed": cfg.train.seed, "device": str(rt.device),
        "extract_img_per_s": extract_rate, "train_img_per_s": train_rate,
        "wall_s": time.perf_counter() - t_start, "head": head_path.name, "notes": notes,
    }
    atomic_write_json(run_dir / "eval" / f"{stem}.json", rec)
    return rec


__all__ = ["run", "extract_features", "encode", "evaluate", "LinearProbe", "probe_blocks", "out_stem"]
