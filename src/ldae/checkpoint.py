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
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file

from .errors import CheckpointError

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
#: a checkpoint (or its sidecar) that failed verification, moved aside by ``load_latest``
BAD_SUFFIX = ".bad"


def umask() -> int:
    """The process's umask (read from /proc on Linux, so it is never changed even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync and rename it into place. The
    file gets the mode a plain ``open`` would give it (0666 less the umask: 0644 under umask
    022), not ``mkstemp``'s private 0600, so collaborators on a shared disk can read results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # name the file the user knows, not the temporary (disk full, ...)
        if e.filename not in (None, str(tmp)) or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
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
    """Write ``state`` to ``path`` atomically, its sha256 sidecar first. A write that fails
    (disk full, file size limit) raises OSError naming ``path`` and leaves nothing behind."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:  # a Python file: a failed write keeps its errno
                torch.save(state, f)
        except RuntimeError as e:  # torch's zip writer reports a short write as "unexpected pos"
            cause = e.__context__
            if isinstance(cause, OSError) and cause.errno is not None:
                raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from None
            raise OSError(errno.EIO, f"writing the checkpoint failed ({e})", str(path)) from None
        except OSError as e:  # closing the file flushes its last buffer: the error may come here
            raise OSError(e.errno, e.strerror, str(path)) from None
        atomic_write_text(digest_path(path), sha256_file(tmp) + "\n")


def verify(path: str | Path, require_digest: bool = False) -> bool:
    """Check ``path`` against its sha256 sidecar; True if it matched, False if there is no
    sidecar and ``require_digest`` is off (a file from outside ldae). Raises CheckpointError when
    the digest differs, when the sidecar is unreadable or not a digest (wrong encoding or
    length), or when it is missing and ``require_digest`` is on: every checkpoint ldae writes has
    one, so a run's own checkpoint without it cannot be trusted."""
    path = Path(path)
    side = digest_path(path)
    try:
        if not side.is_file():
            if require_digest:
                raise CheckpointError(
                    f"checkpoint {path} has no sha256 sidecar ({side.name}), so it cannot be "
                    "verified (ldae writes one with every checkpoint: the file may have been "
                    f"altered or copied without it). To use it anyway, name it: --resume {path} "
                    "(or --ckpt) loads it unverified, with a warning.")
            return False
        want = side.read_bytes().decode("ascii").strip()
        if not DIGEST_RE.match(want):
            raise CheckpointError(f"checkpoint {path} cannot be verified: {side.name} does not hold "
                                  "a sha256 digest (64 hexadecimal characters).")
        got = sha256_file(path)
    except CheckpointError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be verified ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}).") from None
    if got != want:
        raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 {got[:12]}... does not "
                              f"match {side.name} ({want[:12]}...).")
    return True


def _refusal(path: Path, e: Exception, what: str) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, without torch's advice to retry
    with ``weights_only=False`` (that is the one thing never to do with a file one did not make)."""
    msg = str(e)
    if "Weights only load failed" in msg or "Unsupported global" in msg or "Unpickler" in msg:
        reason = next((ln.strip() for ln in msg.splitlines() if "Unpickler error" in ln
                       or "Unsupported" in ln), "").removeprefix("WeightsUnpickler error: ")
        reason = reason.split(". ")[0]  # without torch's advice on allowing the global
        return (f"refused to load {what} {path}: it holds objects that would run code when "
                f"unpickled ({reason[:200] or type(e).__name__}). ldae loads only tensors and plain "
                "data. Do not bypass this (never load it with weights_only=False); re-save the "
                "weights as tensors (a state_dict, or .safetensors) from code you trust.")
    return (f"cannot load {what} {path} safely ({type(e).__name__}: {' '.join(msg.split())[:300]}). "
            "It may be truncated, corrupt, or hold objects that would run code; ldae loads only "
            "tensors and plain data.")


def load(path: str | Path, map_location: str | torch.device = "cpu", require_digest: bool = False,
         warn=None) -> dict[str, Any]:
    """A checkpoint's state, verified against its sidecar (see ``verify``); with ``warn``, a file
    loaded without a sidecar is reported through it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if not verify(path, require_digest) and warn is not None:
        warn(f"warning: {path} has no sha256 sidecar; it is loaded unverified.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(_refusal(path, e, "checkpoint")) from None


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu",
                set_aside: bool = True, warn=print) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint of ``run_dir`` that loads, and its path; None if there is none.
    Each newer one that fails (truncated, corrupt, refused) is reported through ``warn`` and, with
    ``set_aside``, renamed to ``<name>.bad`` so that it leaves the rotation. Raises
    CheckpointError when checkpoints exist but none loads."""
    failed = []
    for path in reversed(list_checkpoints(run_dir)):
        try:  # a run's own checkpoint must carry its digest
            return load(path, map_location, require_digest=True), path
        except CheckpointError as e:
            failed.append(str(e))
            warn(f"warning: skipping {path.name}, falling back to the previous checkpoint: {e}")
            if set_aside:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + BAD_SUFFIX))
                    side = digest_path(path)
                    if side.exists():
                        os.replace(side, side.with_name(side.name + BAD_SUFFIX))
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
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(_refusal(path, e, "weights file") + (f" {hint}" if hint else "")) from None


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


def set_aside(run_dir: str | Path) -> list[Path]:
    """The checkpoints ``load_latest`` moved aside as ``*.bad``: a run that has them had state."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob(f"ckpt-*.pt{BAD_SUFFIX}")) if folder.is_dir() else []


def save_rotating(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save ``state`` as the run's checkpoint of ``step``, then keep only the newest ``keep`` of
    those up to ``step`` (a newer one, from another history of the run dir, is never deleted)."""
    path = checkpoint_path(run_dir, step)
    save(path, state)
    prune(run_dir, keep, up_to=step)
    return path


def prune(run_dir: str | Path, keep: int, up_to: int | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (of steps <= ``up_to`` when given), each
    file before its sidecar (a kill in between leaves an orphan sidecar, never an unverifiable
    checkpoint; ``remove_stale_temporaries`` cleans orphans)."""
    ckpts = [p for p in list_checkpoints(run_dir) if up_to is None or step_of(p) <= up_to]
    for p in ckpts[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)
        digest_path(p).unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete what a killed writer left behind: ``.ckpt-*.tmp`` files (never a finished file)
    and sidecars whose checkpoint is gone (killed while pruning, or before the rename)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(".ckpt-*.tmp"))
    stale += sorted(p for p in folder.glob("ckpt-*.pt.sha256")
                    if not p.with_name(p.name[: -len(".sha256")]).exists())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
