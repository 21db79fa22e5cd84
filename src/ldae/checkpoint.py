"""Atomic, code-free, verified checkpoints (EDM2's CheckpointIO idea, timm's CheckpointSaver
rotation).

A checkpoint is a directory-free single file written with ``torch.save`` of tensors and plain
data (dicts, lists, numbers, strings) only, and read back with ``torch.load(weights_only=True)``,
which refuses anything that would execute code. Files are written to a temporary name in the same
folder, fsynced and renamed, so a crash never leaves a half-written checkpoint under the real name.

Integrity: torch's zip container notices truncation but not flipped bytes inside a tensor (they
load silently), so each checkpoint gets a ``<name>.sha256`` sidecar, written (atomically) before
the checkpoint is renamed into place: a visible checkpoint always has its digest, and ``load``
refuses a file whose bytes no longer match it. ``load_latest`` walks a run's checkpoints newest
first and falls back past any that fail (moving them aside as ``*.bad``), so one corrupt file
costs the steps since the previous checkpoint, never the run.
"""
from __future__ import annotations

import contextlib
import hashlib
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


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, its sha256 sidecar first."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        atomic_write_text(digest_path(path), sha256_file(tmp) + "\n")


def verify(path: str | Path) -> None:
    """Raise CheckpointError if ``path`` does not match its sha256 sidecar (files without one,
    e.g. from outside ldae, are not checked)."""
    path = Path(path)
    side = digest_path(path)
    if side.is_file():
        want = side.read_text().strip()
        got = sha256_file(path)
        if got != want:
            raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 {got[:12]}... does not "
                                  f"match {side.name} ({want[:12]}...).")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    verify(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {path} safely ({type(e).__name__}: {e}). "
                              "It may be truncated, corrupt, or hold objects that would run code; "
                              "ldae loads only tensors and plain data.") from None


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu",
                set_aside: bool = True, warn=print) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint of ``run_dir`` that loads, and its path; None if there is none.
    Each newer one that fails (truncated, corrupt, refused) is reported through ``warn`` and, with
    ``set_aside``, renamed to ``<name>.bad`` so that it leaves the rotation. Raises
    CheckpointError when checkpoints exist but none loads."""
    failed = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load(path, map_location), path
        except CheckpointError as e:
            failed.append(str(e))
            warn(f"warning: skipping {path.name}, falling back to the previous checkpoint: {e}")
            if set_aside:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + ".bad"))
                    side = digest_path(path)
                    if side.exists():
                        os.replace(side, side.with_name(side.name + ".bad"))
    if failed:
        raise CheckpointError(f"no checkpoint of {run_dir} loads: {' | '.join(failed)}")
    return None


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


def save_rotating(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save ``state`` as the run's checkpoint of ``step``, then keep only the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    save(path, state)
    prune(run_dir, keep)
    return path


def prune(run_dir: str | Path, keep: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)
        digest_path(p).unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the ``.ckpt-*.tmp`` files a killed writer left behind (never a finished file)."""
    folder = Path(run_dir) / "checkpoints"
    stale = sorted(folder.glob(".ckpt-*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
