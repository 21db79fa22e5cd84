"""``ldae finetune``: end-to-end fine-tuning (paper App. B: MAE's protocol plus EMA; SPEC §5).

The model is a plain timm ``VisionTransformer``: at a fixed t the encoder's conditioning is a
constant, so the run's first k blocks fold into a standard ViT (``engine.export.fold``: clean input,
scale/shift in the LayerNorm affine). Each gate is kept as timm's LayerScale vector
(``init_values``) rather than folded into the Linear that ends its branch as ``ldae export`` does:
the same function, but folded gates (~0.1) would shrink attn.proj / mlp.fc2 ~10x, and AdamW's
steps (about lr in size whatever a weight's scale) would then be ~10x too large for them. The
random-init twin has the same LayerScale, at timm's init (gamma 1). MAE's head goes on top: average pool -> LayerNorm (``fc_norm``) -> Linear
(weights trunc-normal std 2e-5). Three starting points (``finetune.init``):

- ``ldae``: the run's encoder (its pretraining EMA weights when it kept them), folded at
  ``finetune.t`` (default 10) with ``finetune.blocks`` blocks (default: the encoder split);
- ``random``: the same ViT shape with timm's own initialisation (the supervised-from-scratch
  baseline, same recipe);
- ``vit``: an ``ldae export`` dir or any timm ViT checkpoint (``vit.source``, ``vit.weights``);
  a timm model keeps its own pooling and norms.

Recipe (MAE ``main_finetune.py`` + App. B), each piece timm's own implementation:
AdamW (betas 0.9/0.999), ``lr = blr x batch / 256`` (blr 1e-3: 4e-3 at the paper's batch 1024),
per-iteration warmup then half-cycle cosine to ``min_lr``, weight decay 0.05 except biases, norms
and the position embedding, layer-wise lr decay from the model's module tree
(``models.vit.vit_layer_groups``; the head gets 1, block i of N gets decay^(N - i + 1), the
embeddings decay^(N + 1)), drop path 0.1 (timm's stochastic depth), train transform =
``timm.data.create_transform``: RandomResizedCrop(0.08, 1) bicubic + flip + RandAug(9, 0.5)
(``rand-m9-mstd0.5-inc1``) + random erasing 0.25 (pixel mode); MixUp 0.8 / CutMix 1.0 with label
smoothing 0.1 (``timm.data.Mixup``) and ``SoftTargetCrossEntropy``; model EMA 0.9999
(``optim.EMA``) evaluated on its own. Evaluation: the dataset's images as stored (resized
and center-cropped to ``data.image_size``), top-1 / top-5 of the raw and the EMA weights.

Exact resume: every random draw of step s (batch order, the per-image augmentation on any loader
worker, MixUp/CutMix, drop path) comes from Python/NumPy/torch generators seeded by
(train.seed, s, rank) at the start of the step, so k steps + resume + k steps = 2k steps, bit for
bit (tested). A step is the same for any ``data.num_workers``; it depends on the world size.

Files: ``RUN_DIR/<stem>/`` holds the fine-tuning run (config.yaml, checkpoints/, metrics.jsonl,
figures/finetune.png: loss and top-1 curves) and ``RUN_DIR/eval/<stem>.json`` the result, with
stem ``finetune`` (init ldae), ``finetune-random`` or ``finetune-vit``;
``RUN_DIR/figures/finetune.png`` draws every fine-tune of the run side by side.
"""
from __future__ import annotations

import contextlib
import copy
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import checkpoint, dist
from ..config import Config
from ..data import BatchStream, build_dataset, iterate_in_order, to_float
from ..errors import ConfigError
from ..logging import MetricsLog, read_jsonl
from ..models.vit import (VitEncoder, build_vit, load_into, load_vit, no_decay_ids,
                          vit_layer_groups)
from ..optim import EMA, set_lr, warmup_cosine
from ..preempt import PreemptionGuard
from ..seeds import STREAM_FT_DATA, STREAM_FT_STEP, finetune_seed
from ..models.registry import get_size
from ..plots import finetune_comparison, finetune_curves
from .common import load_run, write_run_config
from .export import fold, vit_kwargs
from .loop import Loop, Plan, load_weights, resume, run_loop
from .loop import make_plan as loop_plan
from .metrics import TOPK, accuracy_counts
from .rundir import prepare_run_dir

HEAD_INIT_STD = 2e-5  # MAE main_finetune: trunc_normal_(model.head.weight, std=2e-5)


def stem(init: str) -> str:
    """``finetune`` for the run's own encoder, ``finetune-{init}`` otherwise."""
    return "finetune" if init == "ldae" else f"finetune-{init}"


def seed_all(s: int) -> None:
    """Seed every generator timm's augmentations and drop path draw from (Python, NumPy, torch)."""
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# ---------------------------------------------------------------------------- model
def build_model(cfg: Config, run_dir: Path | None) -> VitEncoder:
    """The ViT with a classifier head that ``finetune.init`` names (see the module docstring)."""
    ft, d = cfg.finetune, cfg.data
    C = d.num_classes
    if ft.init == "vit":
        enc = load_vit(cfg.vit.source, cfg.vit.weights, d.image_size, num_classes=C,
                       head_norm=ft.head_norm, drop_path=ft.drop_path, new_head=True)
    elif ft.init == "ldae":
        if run_dir is None:
            raise ConfigError("finetune.init=ldae needs a pretraining run dir as --out.")
        _, den = load_run(run_dir, use_ema=True, device="cpu")
        k = ft.blocks or den.backbone.encoder_blocks
        sd, kwargs = fold(den, ft.t, k, d.image_size, layer_scale=True, clean=ft.clean_input)
        model = build_vit(kwargs, C, ft.head_norm, ft.drop_path)
        load_into(model, sd, f"the folded encoder of {run_dir}", new=("head.", "fc_norm."))
        enc = VitEncoder(model, source=str(run_dir),
                         meta={"t": ft.t, "blocks": k, "clean_input": ft.clean_input})
    else:
        size = get_size(cfg.model.name)
        k = ft.blocks or cfg.model.encoder_blocks or size.depth // 2
        kwargs = vit_kwargs(size.width, size.heads, size.mlp_ratio, k, d.image_size,
                            cfg.model.patch_size, 3, layer_scale=True)
        torch.manual_seed(cfg.train.seed)  # timm's own init, seeded
        model = build_vit(kwargs, C, ft.head_norm, ft.drop_path)
        enc = VitEncoder(model, source="random", meta={"blocks": k})
    head = enc.model.head
    if isinstance(head, nn.Linear):
        g = torch.Generator().manual_seed(cfg.train.seed)
        nn.init.trunc_normal_(head.weight, std=HEAD_INIT_STD, generator=g)
        nn.init.zeros_(head.bias)
    return enc


def param_groups(model: nn.Module, layer_decay: float, weight_decay: float) -> list[dict]:
    """AdamW groups: one (decay, no-decay) pair per layer group, ``lr_scale`` = layer_decay^(n-1-i)
    for group i of n (MAE's ``param_groups_lrd``, from the module tree instead of names)."""
    groups = vit_layer_groups(model)
    nd = no_decay_ids(model)
    n = len(groups)
    out = []
    for i, g in enumerate(groups):
        scale = layer_decay ** (n - 1 - i)
        dec = [p for p in g if id(p) not in nd]
        no = [p for p in g if id(p) in nd]
        if dec:
            out.append({"params": dec, "weight_decay": weight_decay, "lr_scale": scale, "layer": i})
        if no:
            out.append({"params": no, "weight_decay": 0.0, "lr_scale": scale, "layer": i})
    return out


class _Logits(nn.Module):
    """The classifier's forward as a module (what DDP and torch.compile wrap)."""

    def __init__(self, enc: VitEncoder):
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc.logits(x)


# ----------------------------------------------------------------------------- data
def _posterize_keep(img, bits_to_keep, **_):
    """Posterize that keeps 0 bits as a black image, as TF's RandAugment and Pillow < 13 do;
    Pillow 13 raises instead, which timm's ``PosterizeIncreasing`` reaches at magnitude 10
    (m9 + mstd 0.5 gets there). Same result as the reference, for any Pillow."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def train_transform(cfg: Config, enc: VitEncoder):
    """timm's training transform (MAE ``build_transform(is_train=True)``) at data.image_size."""
    ft = cfg.finetune
    tf = create_transform(
        input_size=cfg.data.image_size, is_training=True, scale=tuple(ft.rrc_scale),
        hflip=0.5 if cfg.data.hflip else 0.0, color_jitter=None, auto_augment=ft.randaug or None,
        interpolation="bicubic", re_prob=ft.reprob, re_mode="pixel", re_count=1,
        mean=tuple(enc.mean.flatten().tolist()), std=tuple(enc.std.flatten().tolist()))
    for t in getattr(tf, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize_keep
    return tf


class TrainSteps(torch.utils.data.Dataset):
    """Item i = this rank's augmented batch of global step ``start + i``: float (B, C, H, W) in the
    encoder's normalisation and int64 labels. Seeded per step, so any number of loader workers
    (or none) gives the same batches."""

    def __init__(self, dataset, transform, global_batch: int, seed: int, rank: int, world: int,
                 start: int, stop: int):
        self.dataset, self.transform, self.seed, self.rank = dataset, transform, seed, rank
        self.order = BatchStream(dataset, global_batch, seed, rank, world)
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.start + i
        idx = self.order.local_indices(step)
        if hasattr(self.dataset, "gather"):
            xb, yb = self.dataset.gather(idx)
        else:
            items = [self.dataset[int(j)] for j in idx]
            xb, yb = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
        seed_all(finetune_seed(self.seed, step, self.rank, STREAM_FT_DATA))
        out = [self.transform(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in xb]
        return torch.stack(out), yb


def _loader(ds: TrainSteps, num_workers: int):
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False,
                                            num_workers=num_workers,
                                            pin_memory=torch.cuda.is_available()))


@torch.no_grad()
def evaluate(enc: VitEncoder, dataset, cfg: Config, rt: dist.Runtime) -> dict:
    """Top-1 / top-5 (%) of the classifier on ``dataset`` (images as stored, no augmentation)."""
    was = enc.training
    enc.eval()
    k = min(TOPK, cfg.data.num_classes)
    c1 = c5 = n = 0
    for xb, yb in iterate_in_order(dataset, cfg.linprobe.batch_size, cfg.data.num_workers):
        x = to_float(xb.to(rt.device, non_blocking=True))
        with rt.autocast():
            logits = enc.logits(x).float()
        a, b = accuracy_counts(logits, yb.to(rt.device), k)
        c1, c5, n = c1 + a, c5 + b, n + yb.shape[0]
    enc.train(was)
    return {"top1": 100.0 * c1 / max(n, 1), "top5": 100.0 * c5 / max(n, 1)}


# -------------------------------------------------------------------------- trainer
def make_plan(cfg: Config, n_images: int, world: int) -> Plan:
    """The loop's plan over ``cfg.finetune``, plus MixUp's even micro-batch."""
    plan = loop_plan(cfg, n_images, world, "finetune")
    ft = cfg.finetune
    if (ft.mixup > 0 or ft.cutmix > 0) and plan.micro_batch % 2:
        raise ConfigError(f"MixUp/CutMix need an even micro-batch; finetune.batch_size / (world x "
                          f"accum_steps) = {plan.micro_batch}. Change finetune.batch_size.")
    return plan


def criterion(cfg: Config) -> nn.Module:
    ft = cfg.finetune
    if ft.mixup > 0 or ft.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup's targets already carry the smoothing
    if ft.smoothing > 0:
        return LabelSmoothingCrossEntropy(ft.smoothing)
    return nn.CrossEntropyLoss()


class Trainer:
    """Model, EMA, optimizer and step of one fine-tuning run."""

    def __init__(self, cfg: Config, enc: VitEncoder, plan: Plan, rt: dist.Runtime):
        ft = cfg.finetune
        self.cfg, self.enc, self.plan, self.rt = cfg, enc, plan, rt
        kw = {"fused": True} if rt.device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(param_groups(enc.model, ft.layer_decay, ft.weight_decay),
                                     lr=plan.lr, betas=ft.betas, **kw)
        self.ema = None  # the EMA model (a VitEncoder), evaluated on its own
        if ft.ema > 0:
            self.ema = copy.deepcopy(enc).eval().requires_grad_(False)
            self.averager = EMA(enc.model, ft.ema, into=self.ema.model)
        self.mixup = (Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix,
                            label_smoothing=ft.smoothing, num_classes=cfg.data.num_classes)
                      if ft.mixup > 0 or ft.cutmix > 0 else None)
        self.loss_fn = criterion(cfg)
        net: nn.Module = _Logits(enc)
        if cfg.model.compile:
            net = torch.compile(net)
        if rt.distributed:
            net = DDP(net, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
        self.net = net
        self.step = 0

    def state(self) -> dict:
        return {"model": self.enc.model.state_dict(),
                "ema": self.averager.state_dict(self.enc.model) if self.ema is not None else None,
                "optimizer": self.opt.state_dict(), "step": self.step,
                "config": self.cfg.to_dict(), "format": "ldae-finetune-v1"}

    def load(self, state: dict) -> None:
        if state.get("format") != "ldae-finetune-v1":
            raise ConfigError(f"not a fine-tuning checkpoint (format {state.get('format')!r}).")
        self.step = load_weights(state, self.enc.model, self.opt,
                                 self.averager if self.ema is not None else None, "finetune.ema")

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        cfg, rt, plan = self.cfg, self.rt, self.plan
        ft = cfg.finetune
        set_lr(self.opt, warmup_cosine(self.step, plan.total_steps, plan.warmup_steps, plan.lr,
                                       floor=min(ft.min_lr, plan.lr)))
        seed_all(finetune_seed(cfg.train.seed, self.step, rt.rank, STREAM_FT_STEP))
        self.enc.train()
        accum = ft.accum_steps
        total = torch.zeros((), device=rt.device)
        for i, (x, y) in enumerate(zip(xb.split(plan.micro_batch), yb.split(plan.micro_batch))):
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            sync = not rt.distributed or i == accum - 1
            ctx = self.net.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with rt.autocast():
                    logits = self.net(x)
                loss = self.loss_fn(logits.float(), y)
                (loss / accum).backward()
            total += loss.detach()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.averager.update(self.enc.model)
        self.step += 1
        return total / accum


def run(cfg: Config, out: Path, resume: str | None = None, force: bool = False,
        max_steps: int | None = None) -> dict:
    """Fine-tune into ``out/<stem>``; write ``out/eval/<stem>.json``. ``out`` is the pretraining
    run dir for init ldae/random, any folder for init vit. ``max_steps`` stops early (tests),
    keeping the schedule of the full run. Signals are caught from the start (see
    ``pretrain.run``)."""
    rt = dist.setup(cfg.train.device, cfg.train.threads)
    with PreemptionGuard(rt) as guard:
        return _run(cfg, Path(out), rt, guard, resume, force, max_steps)


def _run(cfg: Config, out: Path, rt: dist.Runtime, guard: PreemptionGuard, resume_arg: str | None,
         force: bool, max_steps: int | None) -> dict:
    ft = cfg.finetune
    out = Path(out)
    name = stem(ft.init)
    work = out / name
    resume_from = prepare_run_dir(cfg, work, resume_arg, force, rt.is_main,
                                  ignore=("linprobe.", "sample.", "fid."))
    train_ds = build_dataset(cfg, cfg.data.train_split)
    eval_ds = build_dataset(cfg, cfg.data.eval_split)
    plan = make_plan(cfg, len(train_ds), rt.world)
    enc = build_model(cfg, out if ft.init != "vit" else None).to(rt.device)
    if rt.is_main:
        work.mkdir(parents=True, exist_ok=True)
        write_run_config(work, cfg)
    rt.barrier()
    trainer = Trainer(cfg, enc, plan, rt)
    if rt.is_main:
        print(f"ldae finetune ({ft.init}): {sum(p.numel() for p in enc.model.parameters()) / 1e6:.2f} M "
              f"parameters, {len(train_ds):,} {cfg.data.train_split} images at {cfg.data.image_size} "
              f"px, {plan.total_steps:,} steps of batch {ft.batch_size} ({ft.epochs:g} epochs), peak "
              f"lr {plan.lr:.2e}, evaluated on {cfg.data.eval_split} -> {work}", file=sys.stderr,
              flush=True)
    log = MetricsLog(work, enabled=rt.is_main, tensorboard=cfg.train.tensorboard)
    resume(work, resume_arg, resume_from, rt, trainer, log)
    stop = plan.total_steps if max_steps is None else min(plan.total_steps, max_steps)
    if trainer.step < stop and guard.requested_now():  # asked to stop while starting up
        raise guard.error(None, trainer.step)
    B = ft.batch_size
    steps = TrainSteps(train_ds, train_transform(cfg, enc), B, cfg.train.seed, rt.rank, rt.world,
                       trainer.step, stop)
    batches = _loader(steps, cfg.data.num_workers)
    eval_steps = plan.steps_per_epoch * ft.eval_every if ft.eval_every else 0
    last_eval: dict = {}

    def do_eval(s: int) -> dict:
        rec = {"step": s, "epoch": round(s / plan.steps_per_epoch, 4), "split": cfg.data.eval_split}
        for tag, model in (("raw", enc), ("ema", trainer.ema)):
            if model is not None:
                for k, v in evaluate(model, eval_ds, cfg, rt).items():
                    rec[f"{tag}_{k}"] = v
        return rec

    def after_step(s: int, bar) -> None:
        nonlocal last_eval
        if (eval_steps and s % eval_steps == 0) or s == stop:
            if rt.is_main:
                last_eval = do_eval(s)
                log.write(last_eval)
                bar.set_postfix(top1=f"{last_eval['raw_top1']:.2f}")
            rt.barrier()

    loop = Loop(cfg, rt, guard, work, log, trainer, plan, stop, B, f"finetune ({ft.init})",
                "Lower finetune.blr or check the data.", after_step=after_step)
    res = run_loop(loop, lambda batch: trainer.train_step(*batch), lambda: next(batches))
    log.close()
    if res.preempted is not None:
        raise res.preempted
    rt.barrier()
    if not rt.is_main:
        return {}
    if not last_eval or last_eval["step"] != trainer.step:  # resumed at the end: evaluate now
        last_eval = do_eval(trainer.step)
    rec = _record(cfg, trainer, enc, plan, res, last_eval, work, rt, len(train_ds), len(eval_ds))
    checkpoint.atomic_write_json(out / "eval" / f"{name}.json", rec)
    finetune_curves(work, title=f"fine-tune ({ft.init}) {out.name}")
    finetune_comparison(out)
    return rec


def _record(cfg: Config, trainer: Trainer, enc, plan: Plan, res, last_eval: dict, work: Path,
            rt: dist.Runtime, n_train: int, n_eval: int) -> dict:
    """eval/<stem>.json: the final raw and EMA accuracy, the curve and every hyper-parameter."""
    ft, B = cfg.finetune, cfg.finetune.batch_size
    wall, steps_run = res.wall, trainer.step - res.start_step
    metrics = work / "metrics.jsonl"
    curve = [r for r in read_jsonl(metrics) if "raw_top1" in r] if metrics.is_file() else []
    groups = vit_layer_groups(enc.model)
    return {
        "init": ft.init, "source": enc.source, "encoder": enc.meta,
        "raw": {"top1": last_eval["raw_top1"], "top5": last_eval["raw_top5"]},
        "ema": ({"top1": last_eval["ema_top1"], "top5": last_eval["ema_top5"]}
                if trainer.ema is not None else None),
        "topk": min(TOPK, cfg.data.num_classes), "curve": curve,
        "steps": trainer.step, "total_steps": plan.total_steps,
        "epochs": round(trainer.step / plan.steps_per_epoch, 4), "epochs_planned": ft.epochs,
        "batch_size": B, "lr": plan.lr, "blr": ft.blr, "min_lr": ft.min_lr,
        "warmup_epochs": ft.warmup_epochs, "weight_decay": ft.weight_decay,
        "layer_decay": ft.layer_decay, "layer_groups": len(groups), "drop_path": ft.drop_path,
        "mixup": ft.mixup, "cutmix": ft.cutmix, "randaug": ft.randaug, "smoothing": ft.smoothing,
        "reprob": ft.reprob, "rrc_scale": list(ft.rrc_scale), "ema_decay": ft.ema,
        "head_norm": ft.head_norm, "params": sum(p.numel() for p in enc.model.parameters()),
        "n_train": n_train, "n_eval": n_eval, "train_split": cfg.data.train_split,
        "eval_split": cfg.data.eval_split, "num_classes": cfg.data.num_classes,
        "seed": cfg.train.seed, "device": str(rt.device), "world_size": rt.world,
        "wall_s": round(wall, 2),
        "img_per_s": round(steps_run * B / wall, 2) if steps_run and wall > 0 else None,
        "run": str(work),
    }


__all__ = ["run", "build_model", "param_groups", "evaluate", "stem", "TrainSteps", "Trainer",
           "make_plan", "train_transform"]
