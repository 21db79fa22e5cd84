"""The commands of the ``ldae`` console script: each turns its arguments into a config and
calls one engine's ``run``; it returns the exit status (None = 0).

Each command imports its engine when it runs (the imports inside the functions below), so that
``ldae --help``, argument errors and ``ldae info --keys`` answer without importing torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ..config import Config, describe_keys, dump_yaml, is_file, load_config, preset_names
from ..errors import LdaeError
from .support import emit


def _run_config(args, extra: list[str]) -> "Config":
    """The run dir's saved config, then the flags' overrides, then key=value overrides."""
    from ..engine.common import read_run_config

    flags = [f"sample.{k}={v}" for k, v in (("sampler", args.sampler), ("steps", args.steps),
                                            ("guidance", args.guidance)) if v is not None]
    if args.no_ema:
        flags.append("sample.ema=false")
    base = read_run_config(Path(args.run_dir)).to_dict()
    return load_config(None, flags + extra + list(args.overrides), base=base)


def _load(args) -> "Config":
    return load_config(args.config, args.overrides)


def _source_overrides(args, section_key: str) -> list[str]:
    """``--from SRC [--weights FILE]`` as overrides: ``section_key=vit`` and the ``vit.*`` keys."""
    if args.weights and not args.source:
        raise LdaeError("--weights goes with --from timm:MODEL_NAME.")
    if not args.source:
        return []
    from ..engine.common import CONFIG_FILE

    if is_file(Path(args.source) / CONFIG_FILE):
        raise LdaeError(f"--from {args.source} is an ldae pretraining run: give it as --out "
                        f"{args.source} (results go into the run dir), or `ldae export` it first.")
    out = [f"{section_key}=vit", f"vit.source={args.source}"]
    return out + ([f"vit.weights={args.weights}"] if args.weights else [])


def _run_or_preset_config(args, overrides: list[str]) -> "Config":
    """A run dir's saved config (then overrides) when --out is a pretraining run and no -c is
    given; else the preset (then overrides)."""
    from ..engine.common import CONFIG_FILE, read_run_dict

    out = Path(args.out) if args.out is not None else None  # None: --print-config of a preset
    if out is not None and is_file(out / CONFIG_FILE) and not args.config:
        return load_config(None, overrides, base=read_run_dict(out / CONFIG_FILE))
    return load_config(args.config, overrides)


def _encoder_config(args, flags: list[str], section_key: str) -> Config:
    """The config of a command on an encoder (linprobe, finetune): the run dir's or the preset's,
    then key=value overrides, the flags' overrides and ``--from``'s (``section_key=vit``)."""
    return _run_or_preset_config(args, list(args.overrides) + flags + _source_overrides(args, section_key))


def _print_config(cfg) -> int:
    """``--print-config``: the resolved, checked config on stdout; nothing else happens."""
    print(dump_yaml(cfg), end="")
    return 0


def _linprobe(args) -> dict | int:
    """One probe (``eval/linprobe*.json``), or the App. A sweeps when ``--sweep`` is given or any
    ``linprobe.sweep_*`` is set (without ``--sweep`` only the set axes are swept)."""
    from ..dist import setup
    from ..engine import linprobe, linprobe_sweep
    from ..engine.encoders import encoder_for

    flags = ["linprobe.fast=true"] if args.fast else []
    flags += [f"linprobe.encoder={args.encoder}"] if args.encoder else []
    cfg = _encoder_config(args, flags, "linprobe.encoder")
    if args.print_config:
        return _print_config(cfg)
    out = Path(args.out)
    rt = setup(cfg.train.device, cfg.train.threads)
    if args.ckpt and cfg.linprobe.encoder != "ldae":
        raise LdaeError("--ckpt names a checkpoint of the run's own encoder (--encoder ldae).")
    den = encoder_for(cfg, out, rt.device, use_ema=not args.no_ema,
                      ckpt=Path(args.ckpt) if args.ckpt else None)
    out.mkdir(parents=True, exist_ok=True)
    lp = cfg.linprobe
    if args.sweep or lp.sweep_t or lp.sweep_noisy or lp.sweep_blocks:
        if rt.is_main:
            print("ldae linprobe: sweep with the fast protocol (features cached once, no "
                  "augmentation; lr grid of heads)", file=sys.stderr)
        return linprobe_sweep.run(cfg, out, den, rt, defaults=args.sweep)
    return linprobe.run(cfg, out, den, rt, tag=args.tag)


def cmd_info(args) -> None:
    """``ldae info``: the registries and presets, every config key (``--keys``), or a run."""
    from ..data import SOURCES
    from ..diffusion import LOSS_WEIGHTS, SCHEDULES, TARGETS
    from ..objectives import OBJECTIVES
    from ..models import MODEL_SIZES
    from ..tokenizers import TOKENIZERS

    if args.keys is not None:
        rows = describe_keys(args.keys or None)
        width = max(len(k) + len(v) for k, v, _ in rows) + 3
        for key, value, meaning in rows:
            print(f"{key} = {value}".ljust(width) + (f"  {meaning}" if meaning else ""))
        return
    if args.run_dir:
        from ..engine.common import read_run_config

        run = Path(args.run_dir)
        cfg = read_run_config(run)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        for f in ["train_summary.json", *sorted(str(p.relative_to(run)) for p in run.glob("eval/*.json"))]:
            if (run / f).is_file():
                print(f"# {f}\n{(run / f).read_text()}")
        return
    print("models (width x depth, heads):")
    for k, s in MODEL_SIZES.items():
        print(f"  {k:8s} {s.width:5d} x {s.depth:2d}, {s.heads:2d} heads   {s.note}")
    print(f"tokenizers:    {', '.join(TOKENIZERS)}")
    print(f"schedules:     {', '.join(SCHEDULES)}")
    print(f"targets:       {', '.join(TARGETS)}")
    print(f"loss weights:  {', '.join(LOSS_WEIGHTS)}")
    print(f"objectives:    {', '.join(OBJECTIVES)}   (objective.name; mae, moco_v3: Tab. 4's baselines)")
    print("spaces:        input_space / output_space = latent | image")
    print(f"data sources:  {', '.join(SOURCES)}")
    print(f"presets:       {', '.join(preset_names())}")
    print(f"scales:        {', '.join(preset_names('scale'))}   (ldae trajectory --scale)")
    from ..engine.trajectory import TABLES, row_names

    names = row_names()
    print("trajectory rows (ldae trajectory --rows; `--list` shows their settings):")
    for table in TABLES:
        rows = [n for n in names if n.startswith(table)]
        print(f"  {table}: {', '.join(rows)}")


def cmd_fit_tokenizer(args) -> int | None:
    from ..engine import fit_tokenizer

    cfg = _load(args)
    if args.print_config:
        return _print_config(cfg)
    rec = fit_tokenizer.run(cfg, Path(args.out))
    emit(args, {k: v for k, v in rec.items() if k != "explained_variance"}, args.out)


def cmd_pretrain(args) -> int | None:
    from ..engine import pretrain

    cfg = _load(args)
    if args.print_config:
        return _print_config(cfg)
    summary = pretrain.run(cfg, Path(args.out), resume=args.resume, force=args.force,
                           allow_config_change=args.allow_config_change, max_steps=args.max_steps)
    emit(args, summary, args.out)


def cmd_linprobe(args) -> int | None:
    res = _linprobe(args)
    if args.print_config:
        return 0
    if "cells" in res:  # the sweep: its tables, then the record without the cells
        print((Path(args.out) / "eval" / res["files"]["md"]).read_text())
        if args.json:
            print(json.dumps({k: v for k, v in res.items()
                              if k not in ("grid", "cells", "paper_reference")}, indent=2))
    else:
        emit(args, {k: v for k, v in res.items() if k not in ("grid", "paper_reference")})


def cmd_finetune(args) -> int | None:
    from ..engine import finetune

    cfg = _encoder_config(args, [f"finetune.init={args.init}"] if args.init else [], "finetune.init")
    if args.print_config:
        return _print_config(cfg)
    res = finetune.run(cfg, Path(args.out), resume=args.resume, force=args.force,
                       max_steps=args.max_steps)
    if res:
        emit(args, {k: v for k, v in res.items() if k != "curve"})


def cmd_export(args) -> None:
    from ..engine.export import export

    info = export(Path(args.run_dir), Path(args.out), t=args.t, blocks=args.blocks,
                  use_ema=not args.no_ema, clean=args.clean_input)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"exported blocks 1-{info['blocks']} at t = {info['t']} ({info['params']:,} "
              f"parameters, clean input {info['clean_input']}; {info['input']}) -> "
              f"{info['out']}\nload with timm:\n  {info['timm']}")


def cmd_sample(args) -> int | None:
    from ..engine import sample

    cfg = _run_config(args, [])
    if args.print_config:
        return _print_config(cfg)
    emit(args, sample.run(cfg, Path(args.run_dir), out=Path(args.out) if args.out else None, n=args.n))


def cmd_fid(args) -> int | None:
    from ..engine import fid

    extra = ([f"fid.weights={args.weights}"] if args.weights else []) + \
            ([f"fid.n={args.n}"] if args.n else [])
    cfg = _run_config(args, extra)
    if args.print_config:
        return _print_config(cfg)
    emit(args, fid.run(cfg, Path(args.run_dir), samples=Path(args.samples) if args.samples else None))


def cmd_figures(args) -> None:
    from ..engine import figures

    paths = figures.run(Path(args.target), out=Path(args.out) if args.out else None,
                        tokenizers=[Path(t) for t in args.tokenizer], t=args.t, device=args.device)
    print("\n".join(str(p) for p in paths))


def cmd_prepare_data(args) -> None:
    from ..data.packed import prepare

    meta = prepare(Path(args.src), Path(args.dst), args.size,
                   [x.strip() for x in args.splits.split(",") if x.strip()], args.workers,
                   on_bad_image=args.on_bad_image, max_pixels=args.max_image_pixels)
    emit(args, meta, args.dst)
    print(f"use it with: data.source=packed data.path={args.dst} data.image_size={args.size} "
          f"data.num_classes={len(meta['classes'])}")


def cmd_trajectory(args) -> None:
    from ..engine import trajectory

    if args.list:
        print(trajectory.describe(args.scale, args.rows, args.overrides))
        return
    out = Path(args.out or f"runs/trajectory-{args.scale}")
    trajectory.run(args.scale, out, args.rows, args.overrides, full=args.full)
    md = (out / "results.md").read_text()
    if "\n## Tab. 4" in md:  # the comparison people ask for: shown, not only written
        print(md[md.index("\n## Tab. 4") + 1:].split("\n## ")[0])
    print(f"results: {out / 'results.md'}")


def cmd_demo(args) -> int | None:
    from ..engine import demo

    cfg = _load(argparse.Namespace(config=args.config or "demo", overrides=args.overrides))
    if args.print_config:
        return _print_config(cfg)
    demo.run(cfg, Path(args.out))


#: ``ldae CMD`` -> the function that runs it
COMMANDS = {"fit-tokenizer": cmd_fit_tokenizer, "pretrain": cmd_pretrain, "linprobe": cmd_linprobe,
            "finetune": cmd_finetune, "trajectory": cmd_trajectory, "export": cmd_export,
            "sample": cmd_sample, "fid": cmd_fid, "figures": cmd_figures,
            "prepare-data": cmd_prepare_data, "demo": cmd_demo, "info": cmd_info}
