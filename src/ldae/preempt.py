"""Preemption and interrupts: SIGTERM / SIGUSR1 / SIGINT ask a training run to save at the next
step boundary and exit.

SLURM (``#SBATCH --signal=USR1@120``, or the SIGTERM of ``scancel`` and of a preemption), Kubernetes
and most schedulers warn a job with one of these signals before they kill it. The handler only sets
a flag; the training loop checks it after each optimizer step, writes a checkpoint of that step,
and the CLI exits with ``EXIT_PREEMPTED`` (75, sysexits' EX_TEMPFAIL: "try again later"), so a
job script can requeue itself and the requeued job continues with ``--resume auto``. Ctrl-C
(SIGINT) does the same and exits with ``EXIT_INTERRUPTED`` (130 = 128 + SIGINT, the shell's
code); a second Ctrl-C aborts at once (KeyboardInterrupt, reported in one line by the CLI).

The handlers are installed before any slow start-up work: ``install()`` is called by the CLI
first thing for the training commands, and ``PreemptionGuard`` (entered by ``pretrain.run`` and
``finetune.run`` before they read data or fit a tokenizer) installs them for library callers. A
signal that arrives during start-up stops the run before its first step (nothing new to save).

Under torchrun each rank gets the signal at a slightly different step, so the flag is agreed on
(all-reduced, max) every ``check_every`` steps: all ranks stop at the same step and rank 0 saves.
One tiny all-reduce per ``check_every`` steps is the only cost; one process checks its flag every
step for free (a Python bool, no device sync).
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import torch

from .errors import LdaeError

EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

_received: list[str] = []  # the signals caught since the handlers were installed (this process)


class Preempted(LdaeError):
    """The run stopped (after saving a checkpoint, if it had taken a step) because a preemption
    signal or an interrupt arrived."""

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.signal = signal_name

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal == "SIGINT" else EXIT_PREEMPTED


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if name == "SIGINT" and "SIGINT" in _received:
        raise KeyboardInterrupt  # the second Ctrl-C: abort now
    _received.append(name)
    if name == "SIGINT":
        print("\ninterrupt: stopping after this step and saving it (Ctrl-C again aborts at once, "
              "losing the steps since the last checkpoint)", file=sys.stderr, flush=True)


def install() -> dict:
    """Route SIGTERM/SIGUSR1/SIGINT to the flag (main thread only); returns the previous handlers."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, _handler)
    return previous


def received() -> str | None:
    """The first signal caught since ``install`` (None if none)."""
    return _received[0] if _received else None


class PreemptionGuard:
    """Context manager: while active, SIGTERM/SIGUSR1/SIGINT set a flag instead of killing the
    process (the previous handlers come back on exit; a signal caught by the CLI's early
    ``install`` before the guard was entered counts)."""

    def __init__(self, rt, check_every: int = 10):
        self.rt, self.check_every = rt, check_every
        self._previous: dict = {}

    @property
    def signal(self) -> str | None:
        return received()

    def __enter__(self) -> "PreemptionGuard":
        self._previous = install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
        _received.clear()  # handled: a later run in this process starts clean

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (the same answer on every rank)."""
        if not self.rt.distributed:
            return self.signal is not None
        if step % self.check_every:
            return False
        return self.requested_now()

    def requested_now(self) -> bool:
        """Whether any rank was asked to stop (one all-reduce under torchrun, whatever the step)."""
        if not self.rt.distributed:
            return self.signal is not None
        flag = torch.tensor(float(self.signal is not None), device=self.rt.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def error(self, saved: Path | None, step: int) -> Preempted:
        """What the run raises once it has written ``saved`` (None: stopped before its first step;
        the CLI exits with EXIT_PREEMPTED, or EXIT_INTERRUPTED after Ctrl-C)."""
        self.rt.barrier()
        what = self.signal or "a preemption signal on another rank"
        if saved is None:
            return Preempted(f"{what} received while starting up: stopped before training (the run "
                             f"is at step {step}; nothing new to save). Continue with the same "
                             "command and --resume auto.", self.signal)
        code = EXIT_INTERRUPTED if self.signal == "SIGINT" else EXIT_PREEMPTED
        return Preempted(f"{what} received: saved {saved} at step {step} and stopped (exit code "
                         f"{code}). Continue with the same command and --resume auto.", self.signal)
