"""Reproducible randomness: every random draw in ldae is a pure function of the run's seed and the
coordinates of the draw (epoch, step, stream, rank, batch), never of how many draws came before.

That is what makes a resume exact without saving RNG states ("k steps, save, resume, k steps" ==
2k steps) and what makes a step the same on 1 process or N: each process derives the generator of
the draw it is about to make, and draws made for a whole global batch keep only this call's
``Rows`` (``sharded``). The idea is the counter-based seeding of JAX's ``fold_in`` and of
EDM2's / nanochat's per-step seeding, written with integers only.

Derivations (the constants are those the first releases used, so old runs replay bit for bit):

- ``mix(seed, a, b, ...)`` = ((seed * P + a) * P + b) ..., P = 1_000_003: data order and tokenizer
  fit batches per epoch, the kNN monitor's subset, sampling's labels and per-batch noise, the
  linear probe's streams (``probe_seed``, reduced mod 2^63);
- ``pretrain_seed(seed, step, stream)`` = mix(seed, step) * 2 + stream (two streams per step:
  ``STREAM_AUG`` on the CPU, ``STREAM_NOISE`` on the device);
- ``finetune_seed(seed, step, rank, stream)`` = ((mix(seed, step) * 1009 + rank) * 31 + stream)
  mod 2^32 (NumPy's seed range: fine-tuning seeds Python, NumPy and torch for timm's transforms).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

P = 1_000_003  # a prime larger than any step, epoch or stream count

# pretraining's two streams of each step
STREAM_AUG, STREAM_NOISE = 0, 1
# fine-tuning: per-image augmentation (loader workers) / MixUp + drop path (the step)
STREAM_FT_DATA, STREAM_FT_STEP = 11, 12
# linear probe: head init, augmentation, noise, feature extraction, holdout split
STREAM_INIT, STREAM_PROBE_AUG, STREAM_PROBE_NOISE, STREAM_EXTRACT, STREAM_HOLDOUT = 1, 2, 3, 4, 5
# one-off draws of a run (the kNN monitor's subset, sampling's random labels)
STREAM_FIXED = 7


def mix(seed: int, *parts: int) -> int:
    """Fold ``parts`` into ``seed`` in base P: ``mix(s, a) = s * P + a``, ``mix(s, a, b) =
    (s * P + a) * P + b``. Distinct (seed, parts) below P give distinct results."""
    x = int(seed)
    for p in parts:
        x = x * P + int(p)
    return x


def probe_seed(seed: int, stream: int, step: int = 0) -> int:
    """The linear probe's seed of (stream, step), in torch's seed range."""
    return mix(seed, stream, step) % (2 ** 63)


def pretrain_seed(seed: int, step: int, stream: int) -> int:
    """Pretraining's seed of one of the two streams of ``step``."""
    return mix(seed, step) * 2 + stream


def finetune_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """Fine-tuning's seed of (step, rank, stream), in NumPy's seed range."""
    return ((mix(seed, step) * 1_009 + rank) * 31 + stream) % (2 ** 32)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (one of the derivations above)."""
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Rows:
    """The rows of a global batch that one call sees (a rank's share, or one micro-batch of it).

    Every random draw is made for all ``total`` rows and then indexed, so a step's randomness
    does not depend on how its global batch is split over processes and accumulation steps."""
    total: int
    index: torch.Tensor  # (B_local,) int64 positions in the global batch

    @staticmethod
    def of(total: int, rank: int = 0, world: int = 1, micro: int = 0, micro_size: int | None = None
           ) -> "Rows":
        mine = torch.arange(rank, total, world)
        if micro_size is not None:
            mine = mine[micro * micro_size:(micro + 1) * micro_size]
        return Rows(total, mine)


def sharded(draw, local: int, rows: Rows | None) -> torch.Tensor:
    """``draw(n)`` for the whole global batch, then this call's rows (all of them if None)."""
    if rows is None:
        return draw(local)
    out = draw(rows.total)
    return out[rows.index.to(out.device)]


__all__ = ["P", "mix", "probe_seed", "pretrain_seed", "finetune_seed", "generator", "Rows",
           "sharded", "STREAM_AUG", "STREAM_NOISE", "STREAM_FT_DATA", "STREAM_FT_STEP",
           "STREAM_INIT", "STREAM_PROBE_AUG", "STREAM_PROBE_NOISE", "STREAM_EXTRACT",
           "STREAM_HOLDOUT", "STREAM_FIXED"]
