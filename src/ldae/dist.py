"""Processes, devices and precision, decided in one place (nanochat's ``common.py`` idea).

Works at world size 1 without torchrun, and under torchrun with gloo (CPU) or nccl (GPU).
The global batch is the unit: each rank gets ``global_batch // world`` images per step.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import ConfigError


@dataclass
class Runtime:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the backbone on CUDA; fp32 (no-op) on CPU (no fast bf16 there)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            x = x.clone()
            tdist.all_reduce(x)
            x /= self.world
        return x


def pick_threads(requested: int, local_world: int = 1) -> int:
    """CPU threads per process: the config's value, else this process's share of the usable
    cores. Measured on this project's 2-vCPU machines (bench/cpu_threads.py, docs/results.md):
    with the machine otherwise idle, 2 threads train the cifar10-cpu model ~1.6x faster than 1;
    when another job shares the machine, set train.threads=1."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))


def setup(device: str = "auto", threads: int = 0) -> Runtime:
    """Initialise the process group when launched by torchrun; choose the device; set threads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu.")
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(pick_threads(threads, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank, world, local_rank, dev)


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
