"""What the CLI checks before any work and what it prints at the end: refusals of command-line
values that cannot work (one paragraph, exit 2), OS errors as one paragraph (exit 74), and the
one summary line of each command (the JSON record behind ``--json``)."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import LdaeError, shown

EXIT_OS_ERROR = 74  # sysexits' EX_IOERR: disk full, no permission, ...


def _check_out(value: str | None, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be one, before any work: empty, an existing file, under
    a file, or in a folder this user cannot write."""
    if value is None:
        return
    if not value.strip():
        raise LdaeError(f"{flag} is empty; give a folder, e.g. {flag} runs/my-run.")
    path = Path(value)
    try:
        if path.exists() and not path.is_dir():
            raise LdaeError(f"{flag} {shown(value)} is a file, not a folder; give a new or existing "
                            "folder.")
        base = path
        while not base.exists() and base.parent != base:
            base = base.parent
        if not base.is_dir():
            raise LdaeError(f"{flag} {shown(value)}: {shown(base)} is a file, so no folder can be made "
                            "under it; choose another path.")
        if not os.access(base, os.W_OK | os.X_OK):
            raise LdaeError(f"{flag} {shown(value)}: no permission to write in {shown(base)}; choose a "
                            "folder you can write, or change its permissions.")
    except OSError as e:
        raise LdaeError(f"{flag} {shown(value, 200)} cannot be used as a folder "
                        f"({e.strerror or type(e).__name__}); choose another path.") from None


def _at_least(name: str, value: int | None, low: int, what: str) -> None:
    if value is not None and value < low:
        raise LdaeError(f"{name} {value} must be >= {low} ({what}).")


def check_args(args) -> None:
    """Empty or nonsensical command-line values, refused before any work starts."""
    if args.cmd in ("info", "figures", "trajectory", "sample"):
        _check_out(getattr(args, "out", None))
    elif args.cmd == "prepare-data":
        _check_out(args.dst, "DST")
        _at_least("--size", args.size, 1, "the stored image size in pixels")
        _at_least("--workers", args.workers, 0, "decode processes; 0 = all cores")
        _at_least("--max-image-pixels", args.max_image_pixels, 1, "the decompression-bomb ceiling")
        if not [x for x in args.splits.split(",") if x.strip()]:
            raise LdaeError(f"--splits {args.splits!r} names no split folder; give a comma list "
                            "such as --splits train,val.")
    elif hasattr(args, "out"):
        if args.out is None and not getattr(args, "print_config", False):
            raise LdaeError(f"ldae {args.cmd} needs --out DIR (the run directory).")
        _check_out(args.out)
    if args.cmd in ("pretrain", "finetune"):
        _at_least("--max-steps", args.max_steps, 1, "the run stops after that many steps")
    if args.cmd == "sample":
        _at_least("--n", args.n, 1, "the number of images to generate")
    if args.cmd == "fid":
        _at_least("--n", args.n, 2, "the number of samples scored")
    if args.cmd in ("sample", "fid"):
        _at_least("--steps", args.steps, 1, "reverse diffusion steps")
    if args.cmd == "export":
        _at_least("--t", args.t, 0, "the timestep folded into the ViT")
        _at_least("--blocks", args.blocks, 0, "encoder depth; 0 = the model's split")


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def summary_line(cmd: str, rec: dict, out: str | None = None) -> str:
    """The one line a person reads at the end of a command (the JSON record stays on disk, and on
    stdout with --json)."""
    if cmd == "pretrain":
        mins = (rec.get("wall_seconds") or 0) / 60
        knn = f", kNN top-1 {rec['knn_top1']:.1f}" if rec.get("knn_top1") is not None else ""
        return (f"pretrained {out}: step {rec['steps']:,}/{rec['total_steps']:,} ({rec['epochs']:g} "
                f"epochs, {rec['images']:,} images) in {mins:.1f} min at {_fmt(rec.get('img_per_s'), '.1f')} "
                f"img/s, final loss {_fmt(rec.get('final_loss'), '.4f')}{knn} -> {out}/train_summary.json")
    if cmd == "linprobe":
        chosen = rec.get("selection") or {}
        sel = (f", blr {rec['best_blr']:g} chosen on the {chosen.get('by', 'holdout')}"
               if rec.get("best_blr") is not None and rec.get("mode") == "fast" else "")
        hold = (f" (holdout {chosen['holdout_top1']:.2f})" if chosen.get("holdout_top1") is not None
                else "")
        return (f"linear probe of {rec.get('encoder')} ({rec.get('mode')}{sel}): {rec.get('eval_split')} "
                f"top-1 {_fmt(rec.get('top1'))}{hold}, top-5 {_fmt(rec.get('top5'))}")
    if cmd == "finetune":
        ema = f" (EMA {rec['ema']['top1']:.2f})" if rec.get("ema") else ""
        return (f"fine-tuned ({rec.get('init')}): {rec.get('eval_split')} top-1 "
                f"{_fmt(rec['raw']['top1'])}{ema} after {rec.get('epochs')} epochs -> {rec.get('run')}")
    if cmd == "fit-tokenizer":
        return f"fitted the {rec.get('tokenizer', 'tokenizer')} tokenizer -> {out}/tokenizer.safetensors"
    if cmd == "sample":
        return f"sampled {rec.get('n')} images ({rec.get('sampler')}, {rec.get('steps')} steps)" + \
            (f" -> {rec['out']}" if rec.get("out") else "")
    if cmd == "fid":
        return f"FID {_fmt(rec.get('fid'))} of {rec.get('n')} samples against {rec.get('n_ref')} images"
    if cmd == "prepare-data":
        return (f"packed {', '.join(f'{k} {v:,}' for k, v in rec.get('splits', {}).items())} images "
                f"({rec.get('num_skipped', 0)} left out) -> {out}")
    return json.dumps(rec)


def emit(args, rec: dict, out: str | None = None) -> None:
    """The record as JSON (--json) or one summary line, on rank 0 only."""
    if os.environ.get("RANK", "0") != "0":
        return
    print(json.dumps(rec, indent=2) if getattr(args, "json", False) else summary_line(args.cmd, rec, out))


def os_error_message(e: OSError) -> str:
    """An error of the operating system as one paragraph that names the file and the way out."""
    where = shown(e.filename, 300) if e.filename else "a file"
    if e.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        return (f"disk full (or file size limit) while writing {where}; free space and rerun the "
                "same command (with --resume auto for a training run: it continues from its last "
                "checkpoint; nothing half-written is left).")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"no permission to write {where} ({e.strerror}); choose a folder you can write, or "
                "change its permissions.")
    if e.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder; choose another path."
    if e.errno == errno.EEXIST:
        return f"{where} already exists as a file; choose another path."
    return f"{e.strerror or type(e).__name__}: {where}."
