"""The one training loop of pretraining and fine-tuning: resume, the step loop, logging,
preemption, checkpoint rotation, and the plan (steps, warmup, peak lr) both derive the same way.

An engine supplies a ``Trainer``-like object (``step``, ``opt``, ``state()``, ``load(state)``)
and a function that runs one optimizer step on a batch; the loop owns everything around it:

    state  = resume(out, resume, resume_from, rt, trainer, log)      # load + truncate metrics.jsonl
    result = run_loop(Loop(...), step_fn, next_batch)                # steps until ``stop``
    raise result.preempted (if any); write the engine's own summary

Log lines come every ``train.log_every`` steps and at checkpoints, the last step and a
preemption; checkpoints every ``train.ckpt_every`` steps and at the last step (rotated, keeping
``train.keep_ckpts``). A preemption signal (``PreemptionGuard``) saves the step just finished and
stops; the caller raises ``result.preempted`` once it has closed its own resources. The hooks add
what only one engine has: extra fields per log line (pretraining: data wait and the kNN monitor),
work after a step (fine-tuning: evaluation) and after a checkpoint (TensorBoard's Fig. 8).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import checkpoint, dist
from ..config import Config
from ..errors import ConfigError, LdaeError, NonFiniteLoss
from ..logging import MetricsLog, Timer, progress
from ..optim import scaled_lr
from ..preempt import PreemptionGuard
from .rundir import load_resume_state


def nonfinite_error(loss: float, where: str, lr: float, last_good: Path | None, hint: str,
                    parts: dict | None = None) -> NonFiniteLoss:
    """The error that stops a run: where, the loss and its parts (of the last step), the lr and
    the checkpoint to go back to."""
    detail = ", ".join(f"{k}={float(v):.4g}" for k, v in (parts or {}).items())
    return NonFiniteLoss(f"non-finite loss {loss} in {where} (last step: {detail or 'no parts'}) at lr "
                         f"{lr:.3e}; the last good checkpoint is {last_good} (step "
                         f"{checkpoint.step_of(last_good) if last_good else None}). {hint} "
                         "(train.on_nonfinite=skip drops up to train.max_nonfinite_skips bad steps.)")


class LossWindow:
    """Step losses summed on the device between log lines (no host sync per step); ``flush``
    gives the window's mean (averaged over processes) and img/s, and stops a non-finite run."""

    def __init__(self, device: torch.device, batch: int):
        self.sum = torch.zeros((), device=device)
        self.batch, self.n, self.t0 = batch, 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss
        self.n += 1

    def flush(self, rt: dist.Runtime, step: int, lr: float, last_good: Path | None, hint: str,
              parts: dict | None = None) -> tuple[float, float]:
        mean = float(rt.all_reduce_mean(self.sum / max(self.n, 1)))
        if not math.isfinite(mean):
            raise nonfinite_error(mean, f"steps {step - self.n + 1}..{step}", lr, last_good, hint, parts)
        rate = self.n * self.batch / max(time.perf_counter() - self.t0, 1e-9)
        self.sum.zero_()
        self.n, self.t0 = 0, time.perf_counter()
        return mean, rate


@dataclass
class Plan:
    """Derived quantities, computed once and written into metrics and the summary."""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float
    micro_batch: int  # per process and accumulation step


def make_plan(cfg: Config, n_images: int, world: int, section: str = "optim") -> Plan:
    """Steps, warmup, peak lr and micro-batch of the schedule in ``cfg.<section>`` (``optim`` for
    pretraining, ``finetune`` for fine-tuning: both have blr, batch_size, accum_steps, epochs,
    warmup_epochs)."""
    o = getattr(cfg, section)
    if o.batch_size > n_images:
        raise ConfigError(f"{section}.batch_size={o.batch_size} exceeds the {n_images} training "
                          f"images; lower {section}.batch_size.")
    if o.batch_size % (world * o.accum_steps) != 0:
        raise ConfigError(f"{section}.batch_size={o.batch_size} must be divisible by world size x "
                          f"{section}.accum_steps = {world} x {o.accum_steps}.")
    spe = n_images // o.batch_size
    local = o.batch_size // world
    return Plan(steps_per_epoch=spe, total_steps=max(1, round(o.epochs * spe)),
                warmup_steps=round(o.warmup_epochs * spe), lr=scaled_lr(o.blr, o.batch_size),
                micro_batch=local // o.accum_steps)


def resume(out: Path, resume_arg: str | None, resume_from: Path | None, rt: dist.Runtime,
           trainer: Any, log: MetricsLog) -> None:
    """Load the checkpoint to resume from into ``trainer`` (if any) and cut ``metrics.jsonl``
    back to its step (at step 0 too: a run killed before its first checkpoint)."""
    state = load_resume_state(out, resume_arg, resume_from, rt)
    if state is not None:
        trainer.load(state)
        del state
    log.truncate_after(trainer.step)


@dataclass
class Loop:
    """What the loop needs besides the step: where to write, when to stop, and the hooks."""
    cfg: Config
    rt: dist.Runtime
    guard: PreemptionGuard
    out: Path  # the run dir its checkpoints go to
    log: MetricsLog
    trainer: Any  # step, opt, state()
    plan: Plan
    stop: int
    batch: int  # global batch size (images per step)
    desc: str  # the progress bar's label
    hint: str  # what to try when the loss is not finite
    #: extra fields of a log line, given the step (its time is kept out of img/s and data_wait)
    extra: Callable[[int], dict] | None = None
    #: called as watch(step): whether this step needs a log line for ``extra`` (e.g. the monitor)
    watch: Callable[[int], bool] = lambda s: False
    data_wait: bool = False  # log the share of time spent waiting for batches
    parts: Callable[[], dict] = dict  # the loss parts named when the loss is not finite
    after_step: Callable[[int, Any], None] | None = None  # (step, progress bar)
    after_checkpoint: Callable[[int], None] | None = None
    postfix: Callable[[dict], dict] = lambda rec: {}


@dataclass
class Result:
    last: dict = field(default_factory=dict)  # the last log line written
    start_step: int = 0
    wall: float = 0.0  # seconds of this process's loop
    wait: float = 0.0  # of which, waiting for batches
    preempted: LdaeError | None = None  # raise it once the caller closed its resources


def load_weights(state: dict, model: nn.Module, opt: torch.optim.Optimizer, ema, ema_key: str) -> int:
    """Put a checkpoint's model, optimizer and (when ``ema`` is not None) EMA weights in place;
    return its step. ``ema_key`` names the setting that asked for an EMA (for the error)."""
    model.load_state_dict(state["model"], strict=True)
    opt.load_state_dict(state["optimizer"])
    if ema is not None:
        if not state.get("ema"):
            raise ConfigError(f"the checkpoint has no EMA weights but {ema_key} > 0.")
        ema.load_state_dict(state["ema"])
    return int(state["step"])


def run_loop(loop: Loop, step_fn: Callable[[Any], torch.Tensor | None],
             next_batch: Callable[[], Any]) -> Result:
    """Run ``step_fn(next_batch())`` until ``trainer.step`` reaches ``loop.stop`` (see the module
    docstring). ``step_fn`` returns the step's loss (a device scalar) or None for a skipped step."""
    cfg, rt, tr, B = loop.cfg, loop.rt, loop.trainer, loop.batch
    t = cfg.train
    bar = progress(loop.stop * B, loop.desc, enabled=rt.is_main, initial=tr.step * B)
    timer = Timer()
    res = Result(start_step=tr.step)
    window = LossWindow(rt.device, B)
    # time the host spends waiting for the next batch, per log window and in all: on the CPU the
    # share of the step lost to data; on CUDA an upper bound (queued GPU work may hide it)
    wait_win = 0.0
    t_win = time.perf_counter()
    while tr.step < loop.stop:
        t0 = time.perf_counter()
        batch = next_batch()
        waited = time.perf_counter() - t0
        res.wait, wait_win = res.wait + waited, wait_win + waited
        loss = step_fn(batch)
        if loss is not None:  # None: a non-finite step skipped (train.on_nonfinite=skip)
            window.add(loss)
        bar.update(B)
        s = tr.step
        stop_now = s < loop.stop and loop.guard.requested(s)  # a preemption signal: save and exit
        watch = loop.watch(s)
        if s % t.log_every == 0 or s == loop.stop or s % t.ckpt_every == 0 or stop_now or watch:
            lr = max(g["lr"] for g in tr.opt.param_groups)  # fine-tuning: the head's (scale 1)
            mean_loss, rate = window.flush(rt, s, lr, checkpoint.latest(loop.out), loop.hint,
                                           loop.parts())
            now = time.perf_counter()
            rec = {"step": s, "epoch": round(s / loop.plan.steps_per_epoch, 4), "images": s * B,
                   "loss": mean_loss, "lr": lr, "img_per_s": round(rate, 2)}
            if loop.data_wait:
                rec["data_wait"] = round(wait_win / max(now - t_win, 1e-9), 4)
            wait_win, t_win = 0.0, now
            if watch and loop.extra is not None:  # its time is kept out of the next window
                rec.update(loop.extra(s))
                window.t0 = t_win = time.perf_counter()
            res.last = rec
            loop.log.write(rec)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", **loop.postfix(rec))
        if loop.after_step is not None:
            loop.after_step(s, bar)
        if rt.is_main and (s % t.ckpt_every == 0 or s == loop.stop or stop_now):
            checkpoint.save_rotating(loop.out, s, tr.state(), t.keep_ckpts)
            if loop.after_checkpoint is not None:
                loop.after_checkpoint(s)
        if stop_now:
            res.preempted = loop.guard.error(checkpoint.checkpoint_path(loop.out, s), s)
            break
    bar.close()
    res.wall = timer.elapsed()
    return res


__all__ = ["Loop", "Result", "Plan", "make_plan", "run_loop", "resume", "LossWindow",
           "NonFiniteLoss", "nonfinite_error"]
