"""``ldae pretrain``: train the denoiser (paper App. A "Training").

AdamW without weight decay, lr = blr x global batch / 256, per-iteration linear warmup then
half-cycle cosine; gradient accumulation; optional EMA of the weights; bf16 autocast for the
backbone on CUDA (tokenizer, noise, loss in fp32) and fp32 on CPU; optional torch.compile with an
eager fallback; DDP under torchrun; a progress bar in images (img/s, ETA); ``metrics.jsonl``;
atomic checkpoints; exact resume.

Exact resume without saving RNG states: every random draw of step s (data order, augmentation,
t, noise, label dropout) comes from generators seeded by (seed, s), so "k steps, save, resume,
k steps" replays exactly what 2k uninterrupted steps do. Each rank and micro-batch draws for the
whole global batch and keeps its own rows, so a step is the same on 1 process or N, with or
without gradient accumulation.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import checkpoint, dist
from ..config import Config
from ..data import BatchAugment, BatchStream, build_dataset, full_images
from ..data.datasets import count_skipped, write_skip_log
from ..diffusion.objective import Denoiser
from .. import objectives
from ..errors import EXIT_NONFINITE, LdaeError, NonFiniteLoss
from ..logging import MetricsLog
from ..optim import EMA, build_adamw, set_lr, warmup_cosine
from ..plots import training_curves
from ..preempt import PreemptionGuard
from ..seeds import STREAM_AUG, STREAM_NOISE, Rows, generator, pretrain_seed
from ..tokenizers import Tokenizer
from . import fit_tokenizer
from .common import TOKENIZER_FILE, tokenizer_for, write_run_config
from .loop import Loop, Plan, load_weights, make_plan, nonfinite_error, resume, run_loop
from .monitor import KnnMonitor
from .panels import DenoisingPreview, Skip
from .rundir import last_logged, prepare_run_dir

SKIPPED_FILE = "skipped.jsonl"


def step_generator(seed: int, step: int, stream: int, device: torch.device) -> torch.Generator:
    """The generator of one random stream of ``step`` (``seeds.STREAM_AUG``: flips/crops, on the
    CPU; ``seeds.STREAM_NOISE``: t, noise and label drops, on the device), the same on every rank
    and micro-batch: each draws for the whole global batch and keeps its rows (``seeds.Rows``)."""
    return generator(pretrain_seed(seed, step, stream), device)


def note_skipped(cfg: Config, dataset, out: Path, rt: dist.Runtime) -> Path | None:
    """Under data.on_bad_image=skip: list what the dataset left out in ``out/skipped.jsonl`` (and
    make read-time skips append there too); returns that path, else None."""
    if cfg.data.on_bad_image != "skip":
        return None
    path = out / SKIPPED_FILE
    if rt.is_main:
        n = write_skip_log(dataset, path)
        if n:
            print(f"warning: {n} bad images or files left out (data.on_bad_image=skip); listed in "
                  f"{path}", flush=True)
    elif hasattr(dataset, "skip_log"):
        dataset.skip_log = path
    return path


def get_tokenizer(cfg: Config, out: Path, dataset, rt: dist.Runtime) -> Tokenizer:
    tok = tokenizer_for(cfg, out)
    if tok is None:
        if rt.is_main:
            tok = fit_tokenizer.fit(cfg, dataset, show=True, device=rt.device)
            tok.save(out / TOKENIZER_FILE)
        rt.barrier()
        tok = tokenizer_for(cfg, out)
    elif cfg.tokenizer.path and rt.is_main:
        tok.save(out / TOKENIZER_FILE)
    return tok


class Trainer:
    """One training state: model, optimizer, EMA and step (EDM2/nanochat style)."""

    def __init__(self, cfg: Config, den: Denoiser, plan: Plan, rt: dist.Runtime):
        self.cfg, self.den, self.plan, self.rt = cfg, den, plan, rt
        self.params = [p for p in den.backbone.parameters() if p.requires_grad]
        self.opt = build_adamw(den.backbone, plan.lr, cfg.optim.weight_decay, cfg.optim.betas,
                               fused=rt.device.type == "cuda")
        self.ema = EMA(den.backbone, cfg.optim.ema) if cfg.optim.ema > 0 else None
        self.step = 0
        self.skipped: list[int] = []  # steps dropped for a non-finite loss (train.on_nonfinite=skip)
        self.last_parts: dict = {}  # the loss parts of the last step (device tensors, no sync)
        self.out: Path | None = None  # the run dir (named in errors)
        # training wall time: before this process (from the checkpoint) and since ``t_run``
        self.wall_before, self.t_run = 0.0, time.perf_counter()
        net: torch.nn.Module = den.backbone
        self.compiled = False
        if cfg.model.compile:
            net = torch.compile(net)
            self.compiled = True
        if rt.distributed:
            net = DDP(net, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
        self.net = net

    def state(self) -> dict:
        ema = self.ema.state_dict(self.den.backbone) if self.ema is not None else None
        return {"model": self.den.backbone.state_dict(), "ema": ema,
                "optimizer": self.opt.state_dict(), "step": self.step,
                "nonfinite_skips": list(self.skipped), "wall_seconds": self.wall_seconds(),
                "config": self.cfg.to_dict(), "format": "ldae-pretrain-v1"}

    def wall_seconds(self) -> float:
        """Training wall time of the steps this state holds (a resume adds to the saved time;
        the time of steps lost to a kill is not counted)."""
        return self.wall_before + time.perf_counter() - self.t_run

    def load(self, state: dict) -> None:
        self.step = load_weights(state, self.den.backbone, self.opt, self.ema, "optim.ema")
        self.skipped = [int(s) for s in state.get("nonfinite_skips", [])]
        self.wall_before = float(state.get("wall_seconds", 0.0))

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, augment: BatchAugment
                   ) -> torch.Tensor | None:
        """One optimizer step over the local batch in ``accum_steps`` micro-batches. With
        train.on_nonfinite=skip a step whose loss is not finite (on any rank) changes nothing
        but the step count and returns None; that check is one host sync per step."""
        cfg, rt, plan = self.cfg, self.rt, self.plan
        set_lr(self.opt, warmup_cosine(self.step, plan.total_steps, plan.warmup_steps, plan.lr))
        accum = cfg.optim.accum_steps
        total = torch.zeros((), device=rt.device)
        xs, ys = xb.split(plan.micro_batch), yb.split(plan.micro_batch)
        for i, (x, y) in enumerate(zip(xs, ys)):
            rows = Rows.of(cfg.optim.batch_size, rt.rank, rt.world, i, plan.micro_batch)
            g_aug = step_generator(cfg.train.seed, self.step, STREAM_AUG, torch.device("cpu"))
            g_dev = step_generator(cfg.train.seed, self.step, STREAM_NOISE, rt.device)
            x = augment(x.to(rt.device, non_blocking=True), g_aug, rows)
            y = y.to(rt.device, non_blocking=True) if cfg.model.class_cond else None
            sync = not rt.distributed or i == accum - 1
            ctx = self.net.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                loss, self.last_parts = self.den.loss(x, y, g_dev, rt.autocast(), net=self.net,
                                                      rows=rows)
                (loss / accum).backward()
            total += loss.detach()
        if cfg.train.on_nonfinite == "skip":
            mean = float(rt.all_reduce_mean(total / accum))
            if not math.isfinite(mean):
                return self.skip_step(mean)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.den.after_optimizer_step(self.step + 1, plan.total_steps)
        if self.ema is not None:
            self.ema.update(self.den.backbone)
        self.step += 1
        return total / accum

    def skip_step(self, loss: float) -> None:
        """Drop this step (no update, no EMA), or stop once more than the allowed steps went bad."""
        t = self.cfg.train
        self.opt.zero_grad(set_to_none=True)
        if len(self.skipped) >= t.max_nonfinite_skips:
            lr = self.opt.param_groups[0]["lr"]
            raise nonfinite_error(loss, f"step {self.step + 1}", lr,
                                  checkpoint.latest(self.out) if self.out else None,
                                  f"{len(self.skipped)} bad steps were skipped already "
                                  f"(train.max_nonfinite_skips={t.max_nonfinite_skips}).",
                                  self.last_parts)
        self.skipped.append(self.step + 1)
        if self.rt.is_main:
            print(f"warning: non-finite loss {loss} at step {self.step + 1}: step skipped "
                  f"({len(self.skipped)}/{t.max_nonfinite_skips})", flush=True)
        self.step += 1
        return None


def run(cfg: Config, out: Path, resume: str | None = None, force: bool = False,
        max_steps: int | None = None, allow_config_change: bool = False) -> dict:
    """Pretrain into ``out``. ``max_steps`` stops early (tests), keeping the schedule of the full
    run. ``allow_config_change``: see ``prepare_run_dir``. SIGTERM/SIGUSR1/SIGINT are caught from
    the first moment (before the data and the tokenizer fit): the run stops at the next step
    boundary, or before its first step when the signal came during start-up."""
    rt = dist.setup(cfg.train.device, cfg.train.threads)
    with PreemptionGuard(rt) as guard:
        return _run(cfg, Path(out), rt, guard, resume, force, max_steps, allow_config_change)


def _run(cfg: Config, out: Path, rt: dist.Runtime, guard: PreemptionGuard, resume_arg: str | None,
         force: bool, max_steps: int | None, allow_config_change: bool) -> dict:
    resume_from = prepare_run_dir(cfg, out, resume_arg, force, rt.is_main,
                                  allow_changes=allow_config_change)
    dataset = build_dataset(cfg, cfg.data.train_split)
    plan = make_plan(cfg, len(dataset), rt.world)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, cfg)
    rt.barrier()
    skipped = note_skipped(cfg, dataset, out, rt)
    tok = get_tokenizer(cfg, out, dataset, rt)
    torch.manual_seed(cfg.train.seed)
    den = objectives.build(cfg, tok).to(rt.device).train()
    trainer = Trainer(cfg, den, plan, rt)
    trainer.out = out
    if rt.is_main:  # the header: what is about to run (the summary line comes at the end)
        _print_header(cfg, den, len(dataset), plan, rt, out)
    log = MetricsLog(out, enabled=rt.is_main, tensorboard=cfg.train.tensorboard)
    resume(out, resume_arg, resume_from, rt, trainer, log)
    stop = plan.total_steps if max_steps is None else min(plan.total_steps, max_steps)
    done = out / "train_summary.json"
    if trainer.step >= stop and done.is_file():
        if rt.is_main:
            print(f"{out}: pretraining already finished at step {trainer.step}; nothing to do.")
        return json.loads(done.read_text())
    if trainer.step < stop and guard.requested_now():  # asked to stop while starting up
        raise guard.error(None, trainer.step)
    source = full_images(dataset) if cfg.data.crop == "random_resized" else dataset
    stream = iter(BatchStream(source, cfg.optim.batch_size, cfg.train.seed, rt.rank, rt.world,
                              start=trainer.step, num_workers=cfg.data.num_workers))
    augment = BatchAugment(cfg.data.crop, cfg.data.rrc_scale, cfg.data.hflip, cfg.data.image_size)
    B = cfg.optim.batch_size
    monitor = KnnMonitor(cfg, dataset, rt.device) if cfg.train.monitor_every > 0 and rt.is_main else None
    preview = _preview(cfg, den, rt) if log.tb is not None else None  # Fig. 8 in TensorBoard
    start_step = trainer.step
    step = _step_with_eager_fallback(trainer, augment, start_step)
    every = cfg.train.monitor_every
    loop = Loop(cfg, rt, guard, out, log, trainer, plan, stop, B, "pretrain",
                "Lower optim.blr, enable optim.grad_clip, or check the data.",
                extra=(lambda s: monitor(den)) if monitor is not None else None,
                watch=lambda s: monitor is not None and (s % every == 0 or s == stop),
                data_wait=True, parts=lambda: trainer.last_parts,
                after_checkpoint=((lambda s: log.image(preview.tag, preview.grid(den), s))
                                  if preview is not None else None),
                postfix=lambda rec: {"knn": f"{rec['knn_top1']:.1f}"} if "knn_top1" in rec else {})
    trainer.t_run = time.perf_counter()  # this process's share of the run's wall time starts now
    res = run_loop(loop, step, lambda: next(stream))
    log.close()
    rt.barrier()
    if res.preempted is not None:
        raise res.preempted
    summary = _summary(trainer, plan, res, start_step, out, rt, skipped, monitor)
    if rt.is_main:
        checkpoint.atomic_write_json(out / "train_summary.json", summary)
        training_curves(out)
    return summary


def _print_header(cfg: Config, den, n_images: int, plan: Plan, rt: dist.Runtime, out: Path) -> None:
    print(f"ldae pretrain: model {cfg.model.name} ({den.backbone.num_params() / 1e6:.2f} M "
          f"parameters), {cfg.tokenizer.name} d = {cfg.tokenizer.dim}, {n_images:,} "
          f"{cfg.data.train_split} images at {cfg.data.image_size} px, {plan.total_steps:,} "
          f"steps of batch {cfg.optim.batch_size} ({cfg.optim.epochs:g} epochs), peak lr "
          f"{plan.lr:.2e}, {rt.device} x {rt.world} -> {out}", file=sys.stderr, flush=True)


def _preview(cfg: Config, den, rt: dist.Runtime) -> DenoisingPreview | None:
    """Fig. 8's denoising panel for TensorBoard at each checkpoint (None when it cannot be drawn)."""
    try:
        return DenoisingPreview(cfg, den, rt.device)
    except (LdaeError, Skip) as e:  # e.g. no val split: scalars only
        print(f"warning: no denoising images in TensorBoard ({e})", file=sys.stderr)
        return None


def _step_with_eager_fallback(trainer: Trainer, augment: BatchAugment, start_step: int):
    """The loop's step function: one training step; if torch.compile fails on the run's first
    step (it can on some platforms), continue in eager mode once."""
    def step(batch) -> torch.Tensor | None:
        xb, yb = batch
        try:
            return trainer.train_step(xb, yb, augment)
        except Exception as e:  # torch.compile can fail on a platform: fall back to eager once
            if not (trainer.compiled and trainer.step == start_step) or isinstance(e, LdaeError):
                raise
            print(f"torch.compile failed ({type(e).__name__}); continuing in eager mode", flush=True)
            trainer.net = DDP(trainer.den.backbone) if trainer.rt.distributed else trainer.den.backbone
            trainer.compiled = False
            trainer.opt.zero_grad(set_to_none=True)
            return trainer.train_step(xb, yb, augment)

    return step


def _summary(trainer: Trainer, plan: Plan, res, start_step: int, out: Path, rt: dist.Runtime,
             skipped, monitor) -> dict:
    """train_summary.json: the figures of the whole run. A resume (even one that finds the last
    step already saved, as after a kill between the final checkpoint and this summary) adds to
    the saved totals."""
    den, B = trainer.den, trainer.cfg.optim.batch_size
    last, wall, wait_run = res.last, res.wall, res.wait
    steps_run = trainer.step - start_step
    wall_total = trainer.wall_seconds()
    logged = {} if last or not rt.is_main else last_logged(out / "metrics.jsonl")
    return {"steps": trainer.step, "total_steps": plan.total_steps, "steps_this_run": steps_run,
               "epochs": round(trainer.step / plan.steps_per_epoch, 4), "images": trainer.step * B,
               "wall_seconds": round(wall_total, 2), "wall_seconds_this_run": round(wall, 2),
               "img_per_s": round(trainer.step * B / wall_total, 2) if wall_total > 0 else None,
               "data_wait": round(wait_run / wall, 4) if steps_run and wall > 0 else None,
               "final_loss": last.get("loss", logged.get("loss")), "lr_peak": plan.lr,
               "world_size": rt.world,
               "device": str(rt.device), "params": den.backbone.num_params(),
               "train_gflops_per_image": round(den.train_flops_per_image() / 1e9, 4),
               "nonfinite_skips": list(trainer.skipped),
               "skipped_images": count_skipped(skipped) if skipped else 0,
               "knn_top1": last.get("knn_top1", logged.get("knn_top1")),
               "monitor_seconds": round(monitor.seconds, 2) if monitor is not None else None}


__all__ = ["run", "Trainer", "Plan", "make_plan", "step_generator", "get_tokenizer", "note_skipped",
           "NonFiniteLoss", "EXIT_NONFINITE", "SKIPPED_FILE"]
