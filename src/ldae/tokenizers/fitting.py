"""The training loop that the gradient-fitted tokenizers share (conv_vae, patch_ae, patch_vae).

A fit takes ``total`` optimiser steps over epochs of image batches (``FitData.batches``: epoch e's
order is a function of (seed, e) only); the last epoch stops part way when the steps run out.
Before each step the learning rate of every parameter group of the fit's optimisers is set from
the step number: a linear warmup over the first 5% of the steps, then a half-cycle cosine to 0.
Statistics are summed on the device (no host sync per step) and read once at the end.

    loop = StepLoop(total, lr_at)
    for batches in loop.epochs(data, batch_size, bar):   # one iterator per epoch
        for x in batches:                                # stops when loop.done
            loop.set_lr(opt)
            ...one optimiser step...
            loop.step += 1

``StepLoop`` draws no random numbers itself; the batch order, the weight initialisation and the
noise draws stay with the data and the tokenizer, so a fit is a function of (data, config,
generator) as before.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .base import FitData

WARMUP_FRACTION = 0.05


def warmup_steps(total: int) -> int:
    """Warmup length of a fit of ``total`` steps: 5% of them, at least one."""
    return max(1, round(WARMUP_FRACTION * total))


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base lr at ``step`` (0-based): linear warmup then half-cycle cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def warmup_cosine_lr(base: float, step: int, total: int, warmup: int) -> float:
    """``base * warmup_cosine(step, total, warmup)`` up to float rounding, evaluated in the order
    conv_vae always has (base times the factors left to right), so its fits stay bit-identical."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(optimizers, lr: float) -> None:
    """Set ``lr`` on every parameter group of each optimiser (None entries are skipped)."""
    for opt in optimizers:
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr


class StepLoop:
    """Epochs of batches until ``total`` optimiser steps; the caller counts the steps
    (``loop.step += 1``, several per batch if it cuts batches into chunks)."""

    def __init__(self, total: int, lr_at: Callable[[int], float]):
        self.total, self.lr_at = total, lr_at
        self.step, self.epoch = 0, 0

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def set_lr(self, *optimizers) -> None:
        """The scheduled lr of the current step on every group of ``optimizers``."""
        set_lr(optimizers, self.lr_at(self.step))

    def epochs(self, data: FitData, batch_size: int, bar) -> Iterator[Iterator[torch.Tensor]]:
        """One batch iterator per epoch, until the steps run out; ``bar`` advances by each batch's
        images once the caller is done with it."""
        while not self.done:
            yield self._batches(data.batches(batch_size, self.epoch), bar)
            self.epoch += 1

    def _batches(self, batches: Iterator[torch.Tensor], bar) -> Iterator[torch.Tensor]:
        for x in batches:
            if self.done:
                return
            yield x
            bar.update(x.shape[0])


class StepStats:
    """Weighted means of scalar statistics, summed on the device (no host sync per step)."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, int] = {}

    def add(self, key: str, value: torch.Tensor, weight: int = 1) -> None:
        v = value.detach() if weight == 1 else value.detach() * weight
        self._sums[key] = self._sums[key] + v if key in self._sums else v.float().clone()
        self._weights[key] = self._weights.get(key, 0) + weight

    def means(self) -> dict[str, float]:
        """Plain floats, in the order the keys were first added (one host sync per key)."""
        return {k: float(s) / self._weights[k] for k, s in self._sums.items()}


def skip(key: str, value: torch.Tensor, weight: int = 1) -> None:
    """A ``StepStats.add`` that records nothing (steps outside the statistics' window)."""


__all__ = ["WARMUP_FRACTION", "warmup_steps", "warmup_cosine", "warmup_cosine_lr", "set_lr",
           "StepLoop", "StepStats", "skip"]
