"""Linear-probe sweeps (App. A; ``ldae linprobe --sweep``, :func:`run`), on top of the probe
of :mod:`ldae.engine.linprobe`.

The fixed-t table (t x clean / noisy input at the encoder depth) and the enc. blocks table (k
around the encoder depth, at linprobe.t / noisy), always with the fast protocol. One pass over
each split: per batch, one forward per (t, noisy) pair up to its deepest needed block, every swept
block's features from it (SPEC §5), all (t, noisy, k) sets cached in host memory (float32, float16
over ``linprobe.sweep_cache_gb``), then one lr grid of heads per set. Each set's features and heads
equal a single fast run at that setting. Outputs ``eval/linprobe-sweep.{json,md,png}``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_write_json, atomic_write_text
from ..config import Config
from ..data import build_dataset, iterate_in_order, to_float
from ..dist import Runtime
from ..errors import ConfigError
from ..logging import MetricsLog, progress
from ..models.vit import VitEncoder
from ..optim import scaled_lr
from ..plots import pyplot, save_png
from ..seeds import STREAM_EXTRACT
from .encoders import prepare_encoder
from .linprobe import Tagged, probe_generator, probe_setup, select_and_fit, sync
from .metrics import TOPK


SWEEP_T = (0, 10, 20, 40, 80)  # App. A's fixed-t table
SWEEP_NOISY = (False, True)  # its two rows: clean / noisy input
SWEEP_BLOCKS_SPAN = 3  # App. A's enc. blocks table: 9..15 around 12 of 24
SWEEP_STEM = "linprobe-sweep"
# App. A of the paper (ImageNet, l-DAE ViT-1/2L, i.e. DiT-L's 24 blocks, 12 in the encoder);
# top-1 %, for reference next to ours (a different dataset and scale).
PAPER_APP_A = {
    "t": [0, 10, 20, 40, 80],
    "clean": [64.1, 64.5, 64.1, 63.3, 62.2],
    "noisy": [64.2, 65.0, 65.0, 65.0, 64.5],
    "blocks": [9, 10, 11, 12, 13, 14, 15],
    "blocks_top1": [58.5, 62.0, 64.1, 64.5, 63.6, 61.9, 59.7],
}

Cell = tuple[int, bool, int]  # (t, noisy, k)


class SweepPlan:
    """Which cells the App. A tables hold and which forwards produce them.

    ``t`` table: every (t, noisy) of ``t_grid`` x ``noisy_grid`` at encoder depth ``k0``;
    ``blocks`` table: every k of ``blocks_grid`` at (``t0``, ``noisy0``). A table is present only
    when one of its axes is swept. ``sets`` are the distinct (t, noisy, k) feature sets (a cell in
    both tables is extracted and trained once); ``passes`` maps each (t, noisy) to the sorted
    blocks one forward must return."""

    def __init__(self, t_grid, noisy_grid, blocks_grid, t0: int, noisy0: bool, k0: int,
                 t_table: bool, blocks_table: bool):
        self.t_grid, self.noisy_grid, self.blocks_grid = list(t_grid), list(noisy_grid), list(blocks_grid)
        self.t0, self.noisy0, self.k0 = t0, noisy0, k0
        self.cells: list[tuple[str, Cell]] = []
        if t_table:
            self.cells += [("t", (t, n, k0)) for n in self.noisy_grid for t in self.t_grid]
        if blocks_table:
            self.cells += [("blocks", (t0, noisy0, k)) for k in self.blocks_grid]
        self.sets: list[Cell] = list(dict.fromkeys(c for _, c in self.cells))
        passes: dict[tuple[int, bool], set[int]] = {}
        for t, n, k in self.sets:
            passes.setdefault((t, n), set()).add(k)
        self.passes = {pair: sorted(ks) for pair, ks in passes.items()}


def sweep_plan(cfg: Config, denoiser: nn.Module, defaults: bool = False) -> SweepPlan:
    """The sweep that ``cfg.linprobe.sweep_*`` asks for on ``denoiser``.

    An empty axis is not swept (it takes linprobe.t / noisy / blocks), unless ``defaults``
    (``ldae linprobe --sweep``), which fills it with App. A's grid: t in {0, 10, 20, 40, 80},
    clean and noisy input, and k = the encoder depth +- 3 clipped to [1, depth]. The encoder
    depth k0 is linprobe.blocks, or the model's encoder split when that is 0."""

    lp = cfg.linprobe
    if isinstance(denoiser, VitEncoder):
        raise ConfigError("the linprobe sweep varies t, noisy input and depth of the run's own "
                          "denoiser; an exported or timm ViT has them fixed. Sweep the run dir.")
    if denoiser is None:
        raise ConfigError("the linprobe sweep needs a network encoder (linprobe.encoder=ldae or "
                          "random): t, noisy input and encoder blocks do not apply to pixels.")
    depth = denoiser.backbone.depth
    k0 = lp.blocks or denoiser.backbone.encoder_blocks
    span = range(max(1, k0 - SWEEP_BLOCKS_SPAN), min(depth, k0 + SWEEP_BLOCKS_SPAN) + 1)
    t_grid = lp.sweep_t or (SWEEP_T if defaults else (lp.t,))
    noisy_grid = lp.sweep_noisy or (SWEEP_NOISY if defaults else (lp.noisy,))
    blocks_grid = lp.sweep_blocks or (tuple(span) if defaults else (k0,))
    t_steps = denoiser.schedule.num_steps
    if not all(0 <= t < t_steps for t in t_grid):  # the defaults against a short schedule
        raise ConfigError(f"linprobe.sweep_t={list(t_grid)} must hold timesteps in [0, "
                          f"{t_steps}) (diffusion.num_steps); set linprobe.sweep_t=[...].")
    if not all(1 <= k <= depth for k in blocks_grid):  # the run's model may differ from cfg's
        raise ConfigError(f"linprobe.sweep_blocks={list(blocks_grid)} must hold encoder depths in "
                          f"[1, {depth}] (the encoder has {depth} blocks).")
    t_table = bool(defaults or lp.sweep_t or lp.sweep_noisy)
    blocks_table = bool(defaults or lp.sweep_blocks)
    if not (t_table or blocks_table):
        raise ConfigError("nothing to sweep: pass --sweep (App. A's grids) or set "
                          "linprobe.sweep_t / linprobe.sweep_noisy / linprobe.sweep_blocks.")
    return SweepPlan(t_grid, noisy_grid, blocks_grid, lp.t, lp.noisy, k0, t_table, blocks_table)


def extract_sweep(denoiser: nn.Module, dataset, cfg: Config, rt: Runtime, plan: SweepPlan, *,
                  dtype: torch.dtype = torch.float32, desc: str = "sweep features",
                  stream_step: int = 0, stats: dict | None = None
                  ) -> tuple[dict[Cell, torch.Tensor], torch.Tensor]:
    """Every feature set of ``plan`` for ``dataset`` from one pass over the data.

    Per batch, one forward per (t, noisy) pair through its deepest block, returning all its
    blocks at once. Each noisy pair draws its noise from its own generator seeded exactly as
    :func:`extract_features` seeds a single setting's (train.seed, ``stream_step``): every pair
    sees the same eps (common random numbers across t), and each set equals the single-setting
    extraction of that cell. Returns {(t, noisy, k): (N, W) ``dtype`` CPU tensor} and the labels."""
    denoiser = prepare_encoder(denoiser, rt)
    n, width = len(dataset), denoiser.backbone.width
    feats = {c: torch.empty(n, width, dtype=dtype) for c in plan.sets}
    labels = torch.empty(n, dtype=torch.long)
    gens = {pair: probe_generator(rt.device, cfg.train.seed, STREAM_EXTRACT, stream_step)
            for pair in plan.passes if pair[1]}
    bar = progress(n, desc, enabled=rt.is_main)
    sync(rt.device)
    t0, i = time.perf_counter(), 0
    for xb, yb in iterate_in_order(dataset, cfg.linprobe.batch_size, cfg.data.num_workers):
        x = to_float(xb.to(rt.device, non_blocking=True))
        m = yb.shape[0]
        for (t, noisy), ks in plan.passes.items():
            with torch.no_grad():
                out = denoiser.features(x, t, ks, noisy=noisy, generator=gens.get((t, noisy)),
                                        autocast=rt.autocast(), clean=cfg.linprobe.clean_input)
            for k, f in zip(ks, out):
                feats[(t, noisy, k)][i:i + m].copy_(f)
        labels[i:i + m] = yb
        i += m
        bar.update(m)
    sync(rt.device)
    seconds = time.perf_counter() - t0
    bar.close()
    if stats is not None:
        stats.update(img_per_s=n / max(seconds, 1e-9), seconds=seconds)
    return feats, labels


def _cache_dtype(plan: SweepPlan, n_rows: int, width: int, budget_gb: float
                 ) -> tuple[torch.dtype, float]:
    """float32 if the whole cache fits ``budget_gb``, else float16; ConfigError if neither."""

    for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
        gb = len(plan.sets) * n_rows * width * size / 2 ** 30
        if gb <= budget_gb:
            return dtype, gb
    raise ConfigError(f"the sweep's feature cache ({len(plan.sets)} sets x {n_rows} images x "
                      f"{width} dims) needs {gb:.1f} GiB even in float16, over "
                      f"linprobe.sweep_cache_gb={budget_gb}; raise it, sweep fewer cells or set "
                      "data.limit.")


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def sweep_markdown(rec: dict) -> str:
    """App. A's two tables (ours), then the paper's for reference."""
    plan = rec["plan"]
    by = {(c["table"], c["t"], c["noisy"], c["blocks"]): c for c in rec["cells"]}
    lines = [f"# Linear-probe sweeps (paper App. A) — encoder `{rec['encoder']}`", "",
             f"Top-1 (%) on `{rec['eval_split']}` ({rec['n_eval']} images), heads trained on "
             f"`{rec['train_split']}` ({rec['n_train']} images), {rec['epochs']} epochs, batch "
             f"{rec['batch_size']}. **Fast protocol** (always, for sweeps): features cached once "
             "without augmentation; one head per blr of linprobe.lr_grid "
             f"{rec['lr_grid']}, selected by `linprobe.select={rec.get('select', 'eval')}` "
             "(holdout: on a held-out share of the train split, then refit on all of it; the eval "
             "split is only reported), a deviation from MAE's protocol, which re-runs the encoder "
             "on augmented crops. "
             f"Feature cache: {rec['cache_dtype']}.", ""]
    if plan["t_table"]:
        ts = plan["t_grid"]
        lines += [f"## Fixed t (encoder blocks k = {plan['k0']})", "",
                  "| fixed t | " + " | ".join(str(t) for t in ts) + " |",
                  "|---|" + "---:|" * len(ts)]
        for n in plan["noisy_grid"]:
            row = [by.get(("t", t, n, plan["k0"]), {}).get("top1") for t in ts]
            lines.append(f"| w/ {'noisy' if n else 'clean'} input | "
                         + " | ".join(_fmt(v) for v in row) + " |")
        lines.append("")
    if plan["blocks_table"]:
        ks = plan["blocks_grid"]
        inp = "noisy" if plan["noisy0"] else "clean"
        lines += [f"## Encoder blocks (t = {plan['t0']}, {inp} input; "
                  f"{rec['depth']} blocks in all)", "",
                  "| enc. blocks | " + " | ".join(str(k) for k in ks) + " |",
                  "|---|" + "---:|" * len(ks),
                  "| acc. | " + " | ".join(
                      _fmt(by.get(("blocks", plan["t0"], plan["noisy0"], k), {}).get("top1"))
                      for k in ks) + " |", ""]
    lines += ["## Every cell", "", "| table | t | input | k | top-1 | top-5 | best blr |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for c in rec["cells"]:
        lines.append(f"| {c['table']} | {c['t']} | {'noisy' if c['noisy'] else 'clean'} | "
                     f"{c['blocks']} | {c['top1']:.2f} | {c['top5']:.2f} | {c['best_blr']:g} |")
    p = PAPER_APP_A
    lines += ["", "## Paper, for reference (ImageNet, ViT-½L = DiT-L's first 12 of 24 blocks; "
              "not this run)", "",
              "| fixed t | " + " | ".join(str(t) for t in p["t"]) + " |",
              "|---|" + "---:|" * len(p["t"]),
              "| w/ clean input | " + " | ".join(_fmt(v) for v in p["clean"]) + " |",
              "| w/ noisy input | " + " | ".join(_fmt(v) for v in p["noisy"]) + " |", "",
              "| enc. blocks | " + " | ".join(str(k) for k in p["blocks"]) + " |",
              "|---|" + "---:|" * len(p["blocks"]),
              "| acc. | " + " | ".join(_fmt(v) for v in p["blocks_top1"]) + " |", ""]
    return "\n".join(lines)


def _panel(ax, swept: bool, draw, ticks, missing: str) -> None:
    """One panel of the sweep figure: ``draw()`` the curves of a swept table, else say so."""
    if swept:
        draw()
        ax.set_xticks(ticks)
        ax.legend()
    else:
        ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes)


def sweep_figure(rec: dict, path: Path) -> Path:
    """Two panels: top-1 vs t (clean, noisy), top-1 vs encoder blocks; written atomically."""
    plt = pyplot()

    plan, cells = rec["plan"], rec["cells"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)

    def t_panel() -> None:
        for n in plan["noisy_grid"]:
            row = [c for c in cells if c["table"] == "t" and c["noisy"] == n]
            a.plot([c["t"] for c in row], [c["top1"] for c in row], marker="o",
                   label=f"w/ {'noisy' if n else 'clean'} input")

    def blocks_panel() -> None:
        row = [c for c in cells if c["table"] == "blocks"]
        b.plot([c["blocks"] for c in row], [c["top1"] for c in row], marker="o", color="tab:green")
        b.axvline(rec["depth"] / 2, color="gray", ls=":", lw=1,
                  label=f"half of the {rec['depth']} blocks")

    _panel(a, plan["t_table"], t_panel, plan["t_grid"], "t not swept")
    a.set_xlabel(f"fixed t (encoder blocks k = {plan['k0']})")
    _panel(b, plan["blocks_table"], blocks_panel, plan["blocks_grid"], "blocks not swept")
    b.set_xlabel(f"encoder blocks (t = {plan['t0']}, {'noisy' if plan['noisy0'] else 'clean'} input)")
    for ax in (a, b):
        ax.set_ylabel("linear-probe top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"App. A sweeps, encoder {rec['encoder']} (fast protocol)")
    return save_png(fig, path)


def _sweep_notes(cfg: Config, n_train: int, batch: int, dtype: torch.dtype, cache_gb: float
                 ) -> list[str]:
    """The record's notes on how the sweep departs from the asked-for probe (printed too)."""
    lp = cfg.linprobe
    notes = ["sweep: fast protocol (features cached once without augmentation, lr grid of "
             f"heads selected by linprobe.select={lp.select}) - a deviation from MAE's protocol"]
    if not lp.fast:
        notes.append("linprobe.fast=false ignored: sweeps always use the fast protocol")
    if batch < lp.batch_size:
        notes.append(f"linprobe.batch_size={lp.batch_size} exceeds the {n_train} train images; "
                     f"clamped to {batch}")
    if dtype != torch.float32:
        notes.append(f"feature cache in float16: float32 would need {2 * cache_gb:.1f} GiB, "
                     f"over linprobe.sweep_cache_gb={lp.sweep_cache_gb}")
    return notes


def _fit_sets(plan: SweepPlan, ftr: dict[Cell, torch.Tensor], ytr: torch.Tensor,
              fev: dict[Cell, torch.Tensor], yev: torch.Tensor, cfg: Config, rt: Runtime,
              batch: int, blrs: list[float], lrs: list[float], log_path: Path
              ) -> tuple[dict[Cell, dict], list[float]]:
    """One lr grid of heads per feature set of ``plan``, one set after the other (each set's
    features popped from ``ftr`` / ``fev`` once used); every epoch's line in ``log_path``, tagged
    with its cell. Returns {(t, noisy, k): the set's result} and the train img/s of each set."""
    log_path.unlink(missing_ok=True)
    log = MetricsLog(log_path.parent, enabled=True, name=log_path.name)
    fits: dict[Cell, dict] = {}
    rates = []
    for j, (t, noisy, k) in enumerate(plan.sets):
        key = (t, noisy, k)
        fit = select_and_fit(
            ftr.pop(key), ytr, fev.pop(key), yev, cfg, rt, batch, blrs,
            Tagged(log, t=t, noisy=noisy, blocks=k),
            desc=f"sweep heads {j + 1}/{len(plan.sets)} t={t} {'noisy' if noisy else 'clean'} k={k}")
        rates.append(fit["train_rate"])
        best = fit["best"]
        fits[key] = {"top1": fit["top1"], "top5": fit["top5"], "best_blr": blrs[best],
                     "lr": lrs[best], "selection": fit["selection"], "grid": fit["grid"]}
    log.close()
    return fits, rates


def run(cfg: Config, run_dir: Path, denoiser: nn.Module, rt: Runtime | None = None,
              defaults: bool = False) -> dict:
    """App. A's sweeps from one pass over the data: ``eval/linprobe-sweep.{json,md,png}``.

    Always the fast protocol (whatever linprobe.fast says): every (t, noisy, k) feature set of
    :func:`sweep_plan` is extracted in one pass per split (one forward per (t, noisy) pair per
    batch, all blocks from it) and cached in host memory — float32, or float16 when float32
    would exceed ``linprobe.sweep_cache_gb`` — then each set gets the fast mode's lr grid of
    heads (sets trained one after the other, on the device). A set's result is what a single
    ``linprobe.fast=true`` run at that (t, noisy, blocks) gives. The json holds one cell per
    table entry: |t| x |noisy| (t table) + |blocks| (blocks table), a cell in both tables
    appearing twice with the same numbers. Returns the record (``{}`` on ranks other than 0)."""
    rt, denoiser = probe_setup(cfg, rt, denoiser)
    if not rt.is_main:
        return {}
    lp, d = cfg.linprobe, cfg.data
    plan = sweep_plan(cfg, denoiser, defaults)
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    denoiser = prepare_encoder(denoiser, rt)
    train_ds, eval_ds = build_dataset(cfg, d.train_split), build_dataset(cfg, d.eval_split)
    n_train, n_eval = len(train_ds), len(eval_ds)
    batch = min(lp.batch_size, n_train)
    width = denoiser.backbone.width
    dtype, cache_gb = _cache_dtype(plan, n_train + n_eval, width, lp.sweep_cache_gb)
    notes = _sweep_notes(cfg, n_train, batch, dtype, cache_gb)
    for note in notes:
        print(f"linprobe sweep: {note}", file=sys.stderr)

    n_pass = len(plan.passes)
    st_tr, st_ev = {}, {}
    ftr, ytr = extract_sweep(denoiser, train_ds, cfg, rt, plan, dtype=dtype, stats=st_tr,
                             desc=f"sweep features {d.train_split} ({n_pass} fwd/batch)",
                             stream_step=0)
    fev, yev = extract_sweep(denoiser, eval_ds, cfg, rt, plan, dtype=dtype, stats=st_ev,
                             desc=f"sweep features {d.eval_split} ({n_pass} fwd/batch)",
                             stream_step=1)
    extract_rate = (n_train + n_eval) / max(st_tr["seconds"] + st_ev["seconds"], 1e-9)

    blrs = list(lp.lr_grid)
    lrs = [scaled_lr(b, batch) for b in blrs]
    fits, rates = _fit_sets(plan, ftr, ytr, fev, yev, cfg, rt, batch, blrs, lrs,
                            run_dir / "eval" / f"{SWEEP_STEM}-train.jsonl")

    cells = [{"table": table, "t": t, "noisy": noisy, "blocks": k, **fits[(t, noisy, k)]}
             for table, (t, noisy, k) in plan.cells]
    files = {ext: f"{SWEEP_STEM}.{ext}" for ext in ("json", "md", "png")}
    rec = {
        "encoder": lp.encoder, "mode": "fast", "cells": cells,
        "plan": {"t_grid": plan.t_grid, "noisy_grid": plan.noisy_grid,
                 "blocks_grid": plan.blocks_grid, "t0": plan.t0, "noisy0": plan.noisy0,
                 "k0": plan.k0, "t_table": any(c[0] == "t" for c in plan.cells),
                 "blocks_table": any(c[0] == "blocks" for c in plan.cells)},
        "depth": denoiser.backbone.depth, "feat_dim": width, "topk": min(TOPK, d.num_classes),
        "lr_grid": blrs, "select": lp.select, "holdout": lp.holdout,
        "epochs": lp.epochs, "warmup_epochs": lp.warmup_epochs,
        "batch_size": batch, "batch_size_requested": lp.batch_size,
        "steps_per_epoch": n_train // batch, "weight_decay": lp.weight_decay,
        "momentum": lp.momentum, "n_train": n_train, "n_eval": n_eval,
        "train_split": d.train_split, "eval_split": d.eval_split, "num_classes": d.num_classes,
        "seed": cfg.train.seed, "device": str(rt.device),
        "feature_sets": len(plan.sets), "forwards_per_batch": n_pass,
        "cache_dtype": str(dtype).removeprefix("torch."), "cache_gib": cache_gb,
        "cache_budget_gib": lp.sweep_cache_gb,
        "extract_img_per_s": extract_rate, "train_img_per_s": sum(rates) / max(len(rates), 1),
        "paper_reference": PAPER_APP_A, "notes": notes, "files": files,
    }
    eval_dir = run_dir / "eval"
    atomic_write_text(eval_dir / files["md"], sweep_markdown(rec))
    sweep_figure(rec, eval_dir / files["png"])
    rec["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(eval_dir / files["json"], rec)
    return rec


__all__ = ["run", "sweep_plan", "extract_sweep", "SweepPlan"]
