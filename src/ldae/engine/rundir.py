"""A run dir's state before a training loop starts: whether it may be written, what to resume
from, and the records a resume reads back (used by ``pretrain`` and ``finetune``).

A run's state is its checkpoints (and the ``*.bad`` ones ``--resume auto`` set aside), not its
``config.yaml``; see ``prepare_run_dir`` and docs/reliability.md.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import checkpoint, dist
from ..config import Config, config_from_dict, diff_configs, resume_free_keys
from ..errors import CheckpointError, ConfigError, LdaeError
from ..logging import read_jsonl
from .common import read_run_config


#: settings that do not change what pretraining computes: a resume may change them
EVAL_SECTIONS = ("linprobe.", "finetune.", "vit.", "sample.", "fid.")


def prepare_run_dir(cfg: Config, out: Path, resume: str | None, force: bool, is_main: bool,
                    ignore: tuple[str, ...] = EVAL_SECTIONS, allow_changes: bool = False
                    ) -> Path | None:
    """Check the run dir before any work; return the checkpoint to resume from, if any.

    A run's state is its checkpoints (and the ``*.bad`` ones ``--resume auto`` set aside), not its
    config.yaml: without ``--resume`` a dir holding either is refused unless ``--force``; with
    ``--resume auto`` and only ``*.bad`` files left it is refused too (never a silent restart at
    step 0); a missing or unreadable config.yaml next to checkpoints is rebuilt from the newest
    checkpoint that loads (each carries its config) before the comparison below.
    A resume refuses a changed config, except run-time settings and the ``ignore`` prefixes,
    unless ``allow_changes`` (then it prints the diff and the run's config.yaml becomes the new
    config: the resumed run is no longer the one the old config describes)."""
    ckpts, bad = checkpoint.list_checkpoints(out), checkpoint.set_aside(out)
    if resume not in (None, "none") and is_main:
        checkpoint.remove_stale_temporaries(out)  # left by a writer that was killed
    if resume in (None, "none"):
        if (ckpts or bad) and not force:
            what = f"checkpoints up to step {checkpoint.step_of(ckpts[-1])}" if ckpts else \
                f"{len(bad)} checkpoints set aside as corrupt ({bad[-1].name}, ...)"
            raise ConfigError(f"{out} already holds a run ({what}); pass --resume auto to continue "
                              "it or --force to start over (its checkpoints and metrics are deleted).")
        if force and is_main:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            for name in ("metrics.jsonl", "train_summary.json"):
                (out / name).unlink(missing_ok=True)
        return None
    if resume == "auto":
        if not ckpts and bad:
            raise CheckpointError(
                f"{out} has no checkpoint left to resume from: every one failed verification and "
                f"was set aside as *.bad ({', '.join(p.name for p in bad[-3:])}). Starting again at "
                "step 0 would silently redo the run: pass --force to start over (the checkpoints, "
                "metrics and summary are deleted), or repair a .bad file and rename it back.")
        path = ckpts[-1] if ckpts else None
    else:
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"--resume {resume}: no such checkpoint file; use --resume auto.")
    if path is None:
        return None
    try:
        saved = read_run_config(out)
    except ConfigError as e:
        saved = recover_run_config(out, resume, path, e, is_main)
    changed = diff_configs(cfg, saved)
    ignorable = (*resume_free_keys(), *ignore)
    changed = [c for c in changed if not c.startswith(ignorable)]
    if changed and not allow_changes:
        raise ConfigError(f"--resume: the config differs from the run's config.yaml in "
                          f"{'; '.join(changed)}. Resume with the same config, start a new run "
                          "dir, or pass --allow-config-change to continue with the new values.")
    if changed and is_main:
        print(f"warning: resuming with a changed config (--allow-config-change): "
              f"{'; '.join(changed)}", flush=True)
    return path


def recover_run_config(out: Path, resume: str, path: Path, why: ConfigError, is_main: bool) -> Config:
    """The config of a run whose config.yaml is missing or unreadable, from the checkpoint it
    resumes from (the newest that loads under ``--resume auto``); ``run`` rewrites config.yaml
    once the comparison with it has passed."""
    try:
        if resume == "auto":
            found = checkpoint.load_latest(out, set_aside=False, warn=lambda *a: None)
            state = found[0] if found else {}
        else:
            state = checkpoint.load(path)
        saved = config_from_dict(state["config"])
    except (LdaeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{out}: {why} It has checkpoints, so it is a run, but its config cannot "
                          f"be recovered from them either ({type(e).__name__}: {e}). Restore "
                          "config.yaml, or pass --force to start over.") from None
    if is_main:
        print(f"warning: {out}/config.yaml was missing or unreadable; rebuilt it from the config "
              f"saved in {path.name if resume != 'auto' else 'the newest checkpoint'}.", flush=True)
    return saved


def load_resume_state(out: Path, resume: str | None, path: Path | None, rt: dist.Runtime
                      ) -> dict | None:
    """The state to resume from: ``--resume auto`` takes the newest checkpoint that loads (a
    truncated, corrupt or unverifiable newer one is reported and set aside); an explicit path must
    load (without a sha256 sidecar it loads unverified, with a warning)."""
    if path is None:
        return None
    say = print if rt.is_main else (lambda *a: None)
    if resume == "auto":
        found = checkpoint.load_latest(out, rt.device, set_aside=rt.is_main, warn=say)
        if found is None:
            return None
        state, path = found
    else:
        state = checkpoint.load(path, map_location=rt.device, warn=say)
    if rt.is_main:
        print(f"resuming from {path} (step {state.get('step')})", flush=True)
    return state



def last_logged(path: Path) -> dict:
    """The newest values of ``loss`` and ``knn_top1`` in a ``metrics.jsonl`` ({} if none)."""
    found: dict = {}
    try:
        for rec in read_jsonl(path) if path.is_file() else []:
            found.update({k: rec[k] for k in ("loss", "knn_top1") if k in rec})
    except ValueError:  # a line cut by a kill: the summary goes without these
        pass
    return found
