"""Run an engine under a local multi-process gloo group (the tests' stand-in for torchrun)."""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, engine: str, out: str, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import importlib

    from ldae.config import load_config
    from ldae.dist import teardown

    try:
        importlib.import_module(f"ldae.engine.{engine}").run(load_config(None, overrides), out)
    finally:
        teardown()


def spawn(engine: str, out, overrides: list[str], world: int = 2) -> None:
    """``ldae.engine.<engine>.run(cfg, out)`` on ``world`` CPU processes, as torchrun would."""
    mp.spawn(_worker, args=(world, free_port(), engine, str(out), overrides), nprocs=world, join=True)
