"""The argument parser of the ``ldae`` command: one function per command, each adding its
sub-parser (the commands themselves are in :mod:`ldae.cli.commands`)."""
from __future__ import annotations

import argparse

from .. import __version__


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


def _overrides_config_json(p: argparse.ArgumentParser, example: str) -> None:
    """key=value overrides of a command on a trained run, --print-config and --json."""
    p.add_argument("overrides", nargs="*", metavar="key=value", help=example)
    _print_config_arg(p)
    _json_arg(p)


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None,
                   help="ddpm: ancestral (default); ddim: deterministic (sample.eta=0)")
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default 250)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale for class-conditional runs (1 = none)")
    p.add_argument("--no-ema", action="store_true", help="the raw weights even if EMA weights exist")


def _add_fit_tokenizer(sub) -> None:
    p = sub.add_parser("fit-tokenizer", help="fit the tokenizer (tokenizer.name; PCA by default) on the training split")
    _common(p, preset_required=True)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an l-DAE (or any objective of the trajectory)")
    _common(p, preset_required=True)
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint of --out) or a checkpoint path")
    p.add_argument("--force", action="store_true", help="start over in an existing run dir")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the config differs from the run's "
                        "(the diff is printed; the resume is then no longer exact)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")


def _add_linprobe(sub) -> None:
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


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune an encoder end to end (App. B: MAE's recipe + EMA)")
    _common(p)
    p.add_argument("--init", choices=["ldae", "random"], default=None,
                   help="start from the run's encoder (folded at finetune.t; default) or the same ViT "
                        "at random init (the from-scratch baseline)")
    _from_args(p)
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint) or a checkpoint path")
    p.add_argument("--force", action="store_true", help="start the fine-tuning run over")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")


def _add_trajectory(sub) -> None:
    p = sub.add_parser("trajectory", help="run rows of the paper's deconstruction at a scale and "
                       "write results.md/csv + plots (Tab. 1, Tab. 2, Fig. 5, Tab. 3, Sec. 5, Tab. 4)")
    p.add_argument("--scale", required=True, help="scale preset: debug, cifar10-cpu, cifar10-gpu, imagenet")
    p.add_argument("--rows", default=None,
                   help="comma list of row names, tables (tab1,tab2,fig5,tab3,sec5,tab4) or globs "
                        "(e.g. 'tab2-pca-*'); default: all")
    p.add_argument("--out", default=None, help="output dir (default runs/trajectory-SCALE)")
    p.add_argument("--full", action="store_true", help="full linear-probe protocol (default: --fast)")
    p.add_argument("--list", action="store_true", help="print the rows' resolved settings and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides applied to every row (before the row's own d, size and epochs)")


def _add_export(sub) -> None:
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


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a trained run (DDPM ancestral or DDIM, "
                       "classifier-free guidance): samples.npz + grid.png")
    p.add_argument("run_dir", help="a pretraining run dir")
    _sample_args(p)
    p.add_argument("--n", type=int, default=None, help="number of images (default sample.n = 64)")
    p.add_argument("--out", default=None, help="output dir (default RUN_DIR/samples/<settings>)")
    _overrides_config_json(p, "e.g. sample.batch_size=512")


def _add_fid(sub) -> None:
    p = sub.add_parser("fid", help="FID of a run's samples against its training images "
                       "(Inception-V3 from a local weights file)")
    p.add_argument("run_dir", help="a pretraining run dir (its data config gives the reference set)")
    p.add_argument("--samples", default=None, help="score this .npz instead of sampling the run "
                   "(images uint8 (n, H, W, 3))")
    p.add_argument("--weights", default=None, help="Inception-V3 FID weights file (= fid.weights)")
    p.add_argument("--n", type=int, default=None, help="samples scored (= fid.n, default 10000)")
    _sample_args(p)
    _overrides_config_json(p, "e.g. fid.ref_limit=10000 fid.cache_dir=DIR sample.batch_size=512")


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="the paper's figures for a run or a trajectory: Fig. 3, 4, "
                       "7, 8, training curves (and Fig. 5, 6, Tab. 2 for a trajectory)")
    p.add_argument("target", help="a pretraining run dir or an `ldae trajectory` output dir")
    p.add_argument("--out", default=None, help="output dir (default TARGET/figures)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="FILE",
                   help="another fitted tokenizer (.safetensors) to draw in Fig. 4 (repeatable)")
    p.add_argument("--t", type=int, action="append", default=None,
                   help="noise level(s) of Fig. 8 (repeatable; default: three levels)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")


def _add_prepare_data(sub) -> None:
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


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="fit, pretrain and probe on the bundled digits, with baselines")
    _common(p, default_out="runs/demo")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="list models, tokenizers, objectives and presets, or describe a run")
    p.add_argument("run_dir", nargs="?", default=None)
    p.add_argument("--keys", nargs="?", const="", default=None, metavar="SECTION",
                   help="list every config setting (of SECTION, e.g. optim) with its default and "
                        "meaning, read from the schema")


#: the commands in the order ``ldae --help`` lists them, each with the function adding its parser
PARSERS = {"fit-tokenizer": _add_fit_tokenizer,
           "pretrain": _add_pretrain,
           "linprobe": _add_linprobe,
           "finetune": _add_finetune,
           "trajectory": _add_trajectory,
           "export": _add_export,
           "sample": _add_sample,
           "fid": _add_fid,
           "figures": _add_figures,
           "prepare-data": _add_prepare_data,
           "demo": _add_demo,
           "info": _add_info}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ldae", description="latent Denoising Autoencoders (l-DAE)")
    ap.add_argument("--version", action="version", version=f"ldae {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in PARSERS.values():
        add(sub)
    return ap
