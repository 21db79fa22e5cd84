"""Preemption: SIGTERM / SIGUSR1 ask a training run to save at the next step boundary and exit.

SLURM (``#SBATCH --signal=USR1@120``, or the SIGTERM of ``scancel`` and of a preemption), Kubernetes
and most schedulers warn a job with one of these signals before they kill it. The handler only sets
a flag; the training loop checks it after each optimizer step, writes a checkpoint of that step,
and the CLI exits with ``EXIT_PREEMPTED`` (75, sysexits' EX_TEMPFAIL: "try again later"), so a
job script can requeue itself and the requeued job continues with ``--resume auto``.

Under torchrun each rank gets the signal at a slightly different step, so the flag is agreed on
(all-reduced, max) every ``check_every`` steps: all ranks stop at the same step and rank 0 saves.
One tiny all-reduce per ``check_every`` steps is the only cost; one process checks its flag every
step for free (a Python bool, no device sync).
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from .errors import LdaeError

EXIT_PREEMPTED = 75
SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(LdaeError):
    """The run saved a checkpoint and stopped because a preemption signal arrived."""


class PreemptionGuard:
    """Context manager: while active, SIGTERM/SIGUSR1 set ``self.signal`` instead of killing the
    process (the previous handlers come back on exit)."""

    def __init__(self, rt, check_every: int = 10):
        self.rt, self.check_every = rt, check_every
        self.signal: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (the same answer on every rank)."""
        if not self.rt.distributed:
            return self.signal is not None
        if step % self.check_every:
            return False
        flag = torch.tensor(float(self.signal is not None), device=self.rt.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def error(self, saved: Path, step: int) -> Preempted:
        """What the run raises once it has written ``saved`` (the CLI exits with EXIT_PREEMPTED)."""
        self.rt.barrier()
        return Preempted(f"{self.signal or 'a preemption signal on another rank'} received: saved "
                         f"{saved} at step {step} and stopped (exit code {EXIT_PREEMPTED}). "
                         "Continue with the same command and --resume auto.")
