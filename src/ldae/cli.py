"""The one console script. Thin: parse arguments, build the config, call ``engine.X.run``.

    ldae fit-tokenizer -c PRESET [key=value ...] --out DIR
    ldae pretrain      -c PRESET [key=value ...] --out RUN_DIR [--resume auto|CKPT] [--force]
                       [--allow-config-change]
    ldae linprobe      --out RUN_DIR [--fast] [--encoder ldae|random|pixels] [key=value ...]
    ldae linprobe      --out RUN_DIR --sweep [linprobe.sweep_t=[...] ...]   (App. A sweeps)
    ldae linprobe      --from EXPORT_DIR|timm:NAME [--weights FILE] --out DIR -c PRESET
    ldae finetune      --out RUN_DIR [--init ldae|random] [--resume auto] [key=value ...]
    ldae finetune      --from EXPORT_DIR|timm:NAME [--weights FILE] --out DIR -c PRESET
    ldae trajectory    --scale debug|cifar10-cpu|cifar10-gpu|imagenet [--rows ROWS] [--out DIR]
                       [--full] [--list] [key=value ...]   (the paper's tables, row by row)
    ldae export        RUN_DIR [--t 10] [--blocks k] --out DIR   (a plain timm ViT)
    ldae sample        RUN_DIR [--n N] [--sampler ddpm|ddim] [--steps S] [--guidance G] [--out DIR]
    ldae fid           RUN_DIR [--samples NPZ] [--weights INCEPTION_FILE] [--n N] [key=value ...]
    ldae figures       RUN_DIR|TRAJECTORY_DIR [--out DIR] [--tokenizer FILE ...] [--t T ...]
    ldae prepare-data  SRC DST [--size 256] [--splits train,val] [--workers N] [--on-bad-image skip]
    ldae demo          [--out DIR] [key=value ...]
    ldae info          [RUN_DIR]

Errors caused by input print one paragraph and exit with status 2; an error of the operating
system (disk full, no permission) one paragraph and status 74; a run stopped by SIGTERM/SIGUSR1
after saving exits 75, by Ctrl-C 130 (see ``ldae.preempt``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .cli_support import EXIT_OS_ERROR, _emit, _os_error, check_args  # noqa: F401 (EXIT_OS_ERROR: API)
from .errors import LdaeError

if TYPE_CHECKING:  # the CLI imports config (and torch) only once a command runs
    from .config import Config


def _common(p: argparse.ArgumentParser, preset_required: bool = False, default_out: str | None = None) -> None:
    p.add_argument("-c", "--config", required=preset_required,
                   help="preset name (see `ldae info`) or path to a YAML file")
    p.add_argument("--out", default=default_out,
                   help="run directory" + ("" if default_out else " (required unless --print-config)"))
    _print_config_arg(p)
    if default_out is None:
        _json_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.epochs=10 data.path=../shared/data/cifar10")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result record as JSON on stdout instead of the one-line summary "
                        "(the record is in the run dir either way)")


def _print_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--print-config", action="store_true",
                   help="resolve and check the config (preset, run dir, overrides), print it as "
                        "YAML and exit without doing anything (`ldae info --keys` lists every key)")


def _from_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", default=None, metavar="SRC",
                   help="an encoder from outside the run: an `ldae export` dir, or timm:MODEL_NAME "
                        "(any timm ViT) with --weights FILE")
    p.add_argument("--weights", default=None, help="checkpoint file of a timm:MODEL_NAME source "
                   "(.safetensors or a torch file; read without running code, never downloaded)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="ldae", description="latent Denoising Autoencoders (l-DAE)")
    ap.add_argument("--version", action="version", version=f"ldae {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit-tokenizer", help="fit the tokenizer (PCA) on the training split")
    _common(p, preset_required=True)
    p = sub.add_parser("pretrain", help="pretrain an l-DAE (or any objective of the trajectory)")
    _common(p, preset_required=True)
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint of --out) or a checkpoint path")
    p.add_argument("--force", action="store_true", help="start over in an existing run dir")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the config differs from the run's "
                        "(the diff is printed; the resume is then no longer exact)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p = sub.add_parser("linprobe", help="linear-probe a frozen encoder (MAE protocol)")
    _common(p)
    p.add_argument("--fast", action="store_true", help="cache features once; train an lr grid of heads")
    p.add_argument("--encoder", choices=["ldae", "random", "pixels"], default=None,
                   help="probe the trained encoder, the same architecture at random init, or raw pixels")
    p.add_argument("--no-ema", action="store_true", help="probe the raw weights even if EMA weights exist")
    p.add_argument("--sweep", action="store_true",
                   help="App. A sweeps from one pass over the data, always with the fast protocol: "
                        "t in 0,10,20,40,80 x clean/noisy input at the encoder depth, and encoder "
                        "blocks = that depth +-3 at linprobe.t, clean input; linprobe.sweep_t / "
                        "sweep_noisy / sweep_blocks=[...] choose other grids. Writes "
                        "eval/linprobe-sweep.{json,md,png}")
    p.add_argument("--ckpt", default=None, metavar="FILE",
                   help="probe this checkpoint of the run (e.g. RUN/checkpoints/ckpt-00000351.pt) "
                        "instead of the newest; name it with --tag")
    p.add_argument("--tag", default="",
                   help="suffix of the result files (eval/linprobe-TAG.json), to keep several probes "
                        "of one run side by side, e.g. --tag projected linprobe.clean_input=projected")
    _from_args(p)
    p = sub.add_parser("finetune", help="fine-tune an encoder end to end (App. B: MAE's recipe + EMA)")
    _common(p)
    p.add_argument("--init", choices=["ldae", "random"], default=None,
                   help="start from the run's encoder (folded at finetune.t; default) or the same ViT "
                        "at random init (the from-scratch baseline)")
    _from_args(p)
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint) or a checkpoint path")
    p.add_argument("--force", action="store_true", help="start the fine-tuning run over")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p = sub.add_parser("trajectory", help="run rows of the paper's deconstruction at a scale and "
                       "write results.md/csv + plots (Tab. 1, Tab. 2, Fig. 5, Tab. 3, Sec. 5)")
    p.add_argument("--scale", required=True, help="scale preset: debug, cifar10-cpu, cifar10-gpu, imagenet")
    p.add_argument("--rows", default=None,
                   help="comma list of row names, tables (tab1,tab2,fig5,tab3,sec5) or globs "
                        "(e.g. 'tab2-pca-*'); default: all")
    p.add_argument("--out", default=None, help="output dir (default runs/trajectory-SCALE)")
    p.add_argument("--full", action="store_true", help="full linear-probe protocol (default: --fast)")
    p.add_argument("--list", action="store_true", help="print the rows' resolved settings and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides applied to every row (before the row's own d, size and epochs)")
    p = sub.add_parser("export", help="fold the encoder at a fixed t into a plain timm VisionTransformer")
    p.add_argument("run_dir", help="a pretraining run dir")
    p.add_argument("--t", type=int, default=10, help="the fixed timestep (default 10)")
    p.add_argument("--blocks", type=int, default=0, help="encoder depth k (default: the model's split)")
    p.add_argument("--out", required=True, help="output dir: model.safetensors + config.json")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even if EMA exists")
    _json_arg(p)
    p.add_argument("--clean-input", choices=["original", "projected"], default=None,
                   help="what the ViT's clean input means for an image-space encoder: the image "
                        "(original) or its PCA projection decode(encode(x)), folded into the patch "
                        "embedding (projected); default: the run's linprobe.clean_input")
    p = sub.add_parser("sample", help="generate images from a trained run (DDPM ancestral or DDIM, "
                       "classifier-free guidance): samples.npz + grid.png")
    p.add_argument("run_dir", help="a pretraining run dir")
    _sample_args(p)
    p.add_argument("--n", type=int, default=None, help="number of images (default sample.n = 64)")
    p.add_argument("--out", default=None, help="output dir (default RUN_DIR/samples/<settings>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. sample.batch_size=512")
    _print_config_arg(p)
    _json_arg(p)
    p = sub.add_parser("fid", help="FID of a run's samples against its training images "
                       "(Inception-V3 from a local weights file)")
    p.add_argument("run_dir", help="a pretraining run dir (its data config gives the reference set)")
    p.add_argument("--samples", default=None, help="score this .npz instead of sampling the run "
                   "(images uint8 (n, H, W, 3))")
    p.add_argument("--weights", default=None, help="Inception-V3 FID weights file (= fid.weights)")
    p.add_argument("--n", type=int, default=None, help="samples scored (= fid.n, default 10000)")
    _sample_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. fid.ref_limit=10000 fid.cache_dir=DIR sample.batch_size=512")
    _print_config_arg(p)
    _json_arg(p)
    p = sub.add_parser("figures", help="the paper's figures for a run or a trajectory: Fig. 3, 4, "
                       "7, 8, training curves (and Fig. 5, 6, Tab. 2 for a trajectory)")
    p.add_argument("target", help="a pretraining run dir or an `ldae trajectory` output dir")
    p.add_argument("--out", default=None, help="output dir (default TARGET/figures)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="FILE",
                   help="another fitted tokenizer (.safetensors) to draw in Fig. 4 (repeatable)")
    p.add_argument("--t", type=int, action="append", default=None,
                   help="noise level(s) of Fig. 8 (repeatable; default: three levels)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p = sub.add_parser("prepare-data", help="pack an ImageFolder (ImageNet layout) into "
                       "pre-resized, center-cropped uint8 memory maps (data.source=packed)")
    p.add_argument("src", help="folder with <split>/<class>/<image> (e.g. ImageNet's train/ and val/)")
    p.add_argument("dst", help="output folder (then data.source=packed data.path=DST)")
    p.add_argument("--size", type=int, default=256, help="stored image size (= data.image_size)")
    p.add_argument("--splits", default="train,val", help="comma list of split folders to pack")
    p.add_argument("--workers", type=int, default=0, help="decode processes (default: all cores)")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error",
                   help="a corrupt, truncated or empty image file or an empty class folder: stop "
                   "naming it (error, default) or leave it out and list it in meta.json (skip)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="an image with more pixels is a bad image (decompression-bomb guard; "
                   "default: data.max_image_pixels = 40,000,000)")
    _json_arg(p)
    p = sub.add_parser("demo", help="fit, pretrain and probe on the bundled digits, with baselines")
    _common(p, default_out="runs/demo")
    p = sub.add_parser("info", help="list models, tokenizers, objectives and presets, or describe a run")
    p.add_argument("run_dir", nargs="?", default=None)
    p.add_argument("--keys", nargs="?", const="", default=None, metavar="SECTION",
                   help="list every config setting (of SECTION, e.g. optim) with its default and "
                        "meaning, read from the schema")
    return ap


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None,
                   help="ddpm: ancestral (default); ddim: deterministic (sample.eta=0)")
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default 250)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale for class-conditional runs (1 = none)")
    p.add_argument("--no-ema", action="store_true", help="the raw weights even if EMA weights exist")


def _run_config(args, extra: list[str]) -> "Config":  # noqa: F821
    """The run dir's saved config, then the flags' overrides, then key=value overrides."""
    from .config import load_config
    from .engine.common import read_run_config

    flags = [f"sample.{k}={v}" for k, v in (("sampler", args.sampler), ("steps", args.steps),
                                            ("guidance", args.guidance)) if v is not None]
    if args.no_ema:
        flags.append("sample.ema=false")
    base = read_run_config(Path(args.run_dir)).to_dict()
    return load_config(None, flags + extra + list(args.overrides), base=base)


def _load(args) -> "Config":  # noqa: F821
    from .config import load_config

    return load_config(args.config, args.overrides)


def _source_overrides(args, section_key: str) -> list[str]:
    """``--from SRC [--weights FILE]`` as overrides: ``section_key=vit`` and the ``vit.*`` keys."""
    if args.weights and not args.source:
        raise LdaeError("--weights goes with --from timm:MODEL_NAME.")
    if not args.source:
        return []
    from .config import _is_file
    from .engine.common import CONFIG_FILE

    if _is_file(Path(args.source) / CONFIG_FILE):
        raise LdaeError(f"--from {args.source} is an ldae pretraining run: give it as --out "
                        f"{args.source} (results go into the run dir), or `ldae export` it first.")
    out = [f"{section_key}=vit", f"vit.source={args.source}"]
    return out + ([f"vit.weights={args.weights}"] if args.weights else [])


def _run_or_preset_config(args, overrides: list[str]) -> "Config":  # noqa: F821
    """A run dir's saved config (then overrides) when --out is a pretraining run and no -c is
    given; else the preset (then overrides)."""
    from .config import _is_file, load_config
    from .engine.common import CONFIG_FILE, read_run_dict

    out = Path(args.out) if args.out is not None else None  # None: --print-config of a preset
    if out is not None and _is_file(out / CONFIG_FILE) and not args.config:
        return load_config(None, overrides, base=read_run_dict(out / CONFIG_FILE))
    return load_config(args.config, overrides)


def cmd_linprobe(args) -> dict:
    """One probe (``eval/linprobe*.json``), or the App. A sweeps when ``--sweep`` is given or any
    ``linprobe.sweep_*`` is set (without ``--sweep`` only the set axes are swept)."""
    from .dist import setup
    from .engine import linprobe
    from .engine.encoders import encoder_for

    overrides = list(args.overrides)
    if args.fast:
        overrides.append("linprobe.fast=true")
    if args.encoder:
        overrides.append(f"linprobe.encoder={args.encoder}")
    overrides += _source_overrides(args, "linprobe.encoder")
    cfg = _run_or_preset_config(args, overrides)
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
        return linprobe.run_sweep(cfg, out, den, rt, defaults=args.sweep)
    return linprobe.run(cfg, out, den, rt, tag=args.tag)


def _print_config(cfg) -> int:
    """``--print-config``: the resolved, checked config on stdout; nothing else happens."""
    from .config import dump_yaml

    print(dump_yaml(cfg), end="")
    return 0


def cmd_info(args) -> None:
    from .config import preset_names
    from .data import SOURCES
    from .diffusion import LOSS_WEIGHTS, SCHEDULES, TARGETS
    from .models import MODEL_SIZES
    from .tokenizers import TOKENIZERS

    if args.keys is not None:
        from .config import describe_keys

        rows = describe_keys(args.keys or None)
        width = max(len(k) + len(v) for k, v, _ in rows) + 3
        for key, value, meaning in rows:
            print(f"{key} = {value}".ljust(width) + (f"  {meaning}" if meaning else ""))
        return
    if args.run_dir:
        from .engine.common import read_run_config

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
    print("spaces:        input_space / output_space = latent | image")
    print(f"data sources:  {', '.join(SOURCES)}")
    print(f"presets:       {', '.join(preset_names())}")
    print(f"scales:        {', '.join(preset_names('scale'))}   (ldae trajectory --scale)")
    from .engine.trajectory import TABLES, row_names

    names = row_names()
    print("trajectory rows (ldae trajectory --rows; `--list` shows their settings):")
    for table in TABLES:
        rows = [n for n in names if n.startswith(table)]
        print(f"  {table}: {', '.join(rows)}")


def _one_paragraph(e: BaseException) -> str:
    """An error's message as one line: line breaks (from a path, a library's message) folded,
    control characters escaped. A DataLoader worker re-raises an error with the worker's
    traceback prepended ("Caught DataError in DataLoader worker process 0. Original Traceback
    ..."); its last line is the original "module.Class: message", which is what is kept."""
    from .config import shown

    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        msg = last[len(prefix):] if last.startswith(prefix) else last
    return shown(" ".join(msg.split()), 2000) or type(e).__name__


#: the commands that train (their signal handlers go in before anything slow)
TRAINING = ("pretrain", "finetune")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.cmd in TRAINING:  # SIGTERM/SIGUSR1/SIGINT set a flag from here on (ldae.preempt)
        from .preempt import install

        install()
    # key=value overrides may also follow the flags (argparse stops the positional list at the
    # first flag): collect them; anything else is a real error
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        from .config import shown

        parser.error(f"unrecognized arguments: {shown(' '.join(extra), 300)}")
    try:
        check_args(args)
        if args.cmd == "info":
            cmd_info(args)
        elif args.cmd == "fit-tokenizer":
            from .engine import fit_tokenizer

            cfg = _load(args)
            if args.print_config:
                return _print_config(cfg)
            rec = fit_tokenizer.run(cfg, Path(args.out))
            _emit(args, {k: v for k, v in rec.items() if k != "explained_variance"}, args.out)
        elif args.cmd == "pretrain":
            from .engine import pretrain

            cfg = _load(args)
            if args.print_config:
                return _print_config(cfg)
            summary = pretrain.run(cfg, Path(args.out), resume=args.resume, force=args.force,
                                   allow_config_change=args.allow_config_change,
                                   max_steps=args.max_steps)
            _emit(args, summary, args.out)
        elif args.cmd == "linprobe":
            res = cmd_linprobe(args)
            if args.print_config:
                return 0
            if "cells" in res:  # the sweep: its tables, then the record without the cells
                print((Path(args.out) / "eval" / res["files"]["md"]).read_text())
                if args.json:
                    print(json.dumps({k: v for k, v in res.items()
                                      if k not in ("grid", "cells", "paper_reference")}, indent=2))
            else:
                _emit(args, {k: v for k, v in res.items() if k not in ("grid", "paper_reference")})
        elif args.cmd == "finetune":
            from .engine import finetune

            overrides = list(args.overrides)
            if args.init:
                overrides.append(f"finetune.init={args.init}")
            overrides += _source_overrides(args, "finetune.init")
            cfg = _run_or_preset_config(args, overrides)
            if args.print_config:
                return _print_config(cfg)
            res = finetune.run(cfg, Path(args.out), resume=args.resume, force=args.force,
                               max_steps=args.max_steps)
            if res:
                _emit(args, {k: v for k, v in res.items() if k != "curve"})
        elif args.cmd == "export":
            from .engine.export import export

            info = export(Path(args.run_dir), Path(args.out), t=args.t, blocks=args.blocks,
                          use_ema=not args.no_ema, clean=args.clean_input)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(f"exported blocks 1-{info['blocks']} at t = {info['t']} ({info['params']:,} "
                      f"parameters, clean input {info['clean_input']}; {info['input']}) -> "
                      f"{info['out']}\nload with timm:\n  {info['timm']}")
        elif args.cmd == "sample":
            from .engine import sample

            cfg = _run_config(args, [])
            if args.print_config:
                return _print_config(cfg)
            rec = sample.run(cfg, Path(args.run_dir),
                             out=Path(args.out) if args.out else None, n=args.n)
            _emit(args, rec)
        elif args.cmd == "fid":
            from .engine import fid

            extra = ([f"fid.weights={args.weights}"] if args.weights else []) + \
                    ([f"fid.n={args.n}"] if args.n else [])
            cfg = _run_config(args, extra)
            if args.print_config:
                return _print_config(cfg)
            rec = fid.run(cfg, Path(args.run_dir), samples=Path(args.samples) if args.samples else None)
            _emit(args, rec)
        elif args.cmd == "figures":
            from .engine import figures

            paths = figures.run(Path(args.target), out=Path(args.out) if args.out else None,
                                tokenizers=[Path(t) for t in args.tokenizer], t=args.t,
                                device=args.device)
            print("\n".join(str(p) for p in paths))
        elif args.cmd == "prepare-data":
            from .data.packed import prepare

            meta = prepare(Path(args.src), Path(args.dst), args.size,
                           [x.strip() for x in args.splits.split(",") if x.strip()], args.workers,
                           on_bad_image=args.on_bad_image, max_pixels=args.max_image_pixels)
            _emit(args, meta, args.dst)
            print(f"use it with: data.source=packed data.path={args.dst} data.image_size={args.size} "
                  f"data.num_classes={len(meta['classes'])}")
        elif args.cmd == "trajectory":
            from .engine import trajectory

            if args.list:
                print(trajectory.describe(args.scale, args.rows, args.overrides))
                return 0
            out = Path(args.out or f"runs/trajectory-{args.scale}")
            trajectory.run(args.scale, out, args.rows, args.overrides, full=args.full)
            print(f"results: {out / 'results.md'}")
        elif args.cmd == "demo":
            from .engine import demo

            cfg = _load(argparse.Namespace(config=args.config or "demo", overrides=args.overrides))
            if args.print_config:
                return _print_config(cfg)
            demo.run(cfg, Path(args.out))
    except LdaeError as e:
        print(f"ldae {args.cmd}: error: {_one_paragraph(e)}", file=sys.stderr)
        from .errors import EXIT_NONFINITE, NonFiniteLoss
        from .preempt import Preempted

        if isinstance(e, Preempted):
            return e.exit_code
        return EXIT_NONFINITE if isinstance(e, NonFiniteLoss) else 2
    except OSError as e:
        print(f"ldae {args.cmd}: error: {_one_paragraph(_os_error(e))}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        from .preempt import EXIT_INTERRUPTED

        print(f"ldae {args.cmd}: interrupted; files are written atomically, so nothing "
              "half-written is left (a training run continues with --resume auto from its last "
              "checkpoint).", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
