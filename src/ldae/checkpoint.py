"""Atomic, code-free checkpoints (EDM2's CheckpointIO idea, timm's CheckpointSaver rotation).

A checkpoint is a directory-free single file written with ``torch.save`` of tensors and plain
data (dicts, lists, numbers, strings) only, and read back with ``torch.load(weights_only=True)``,
which refuses anything that would execute code. Files are written to a temporary name in the same
folder, fsynced and renamed, so a crash never leaves a half-written checkpoint under the real name.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import CheckpointError

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {path} safely ({type(e).__name__}: {e}). "
                              "It may be truncated, corrupt, or hold objects that would run code; "
                              "ldae loads only tensors and plain data.") from None


def load_tensor_file(path: str | Path, hint: str = "") -> Any:
    """The contents of a weights file from outside ldae: safetensors, or a torch file read with
    ``weights_only=True`` (tensors and plain containers only; nothing that would run code).
    Callers check that the file exists and what it holds; ``hint`` ends the error message."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} safely ({type(e).__name__}: {e}). It may be "
                              "truncated or corrupt, or hold objects that would run code; ldae "
                              f"loads only tensors and plain data.{' ' + hint if hint else ''}") from None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_RE.match(p.name))


def step_of(path: str | Path) -> int | None:
    """The training step in a checkpoint's file name (ckpt-00001234.pt -> 1234), else None."""
    m = CKPT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def latest(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune(run_dir: str | Path, keep: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)
