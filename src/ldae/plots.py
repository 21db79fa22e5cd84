"""Plots that people would rather look at than tables; written into the run dir as PNG."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import atomic_path
from .logging import read_jsonl


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (110 dpi) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path


def training_curves(run_dir: str | Path) -> Path | None:
    """loss and lr against images seen, from ``metrics.jsonl`` -> ``figures/training.png``."""
    plt = pyplot()
    from matplotlib.ticker import EngFormatter


    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    rows = [r for r in rows if "images" in r and "loss" in r]
    if not rows:
        return None
    imgs = [r["images"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    a.plot(imgs, [r["loss"] for r in rows], lw=1.2)
    a.set_yscale("log")
    a.set_xlabel("images seen")
    a.set_ylabel("training loss (mean per log window)")
    a.grid(alpha=0.3)
    b.plot(imgs, [r["lr"] for r in rows], lw=1.2, color="tab:orange")
    b.set_xlabel("images seen")
    b.set_ylabel("learning rate")
    b.grid(alpha=0.3)
    for ax in (a, b):
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    fig.suptitle(run_dir.name)
    return save_png(fig, run_dir / "figures" / "training.png")


def finetune_curves(work_dir: str | Path, title: str = "") -> Path | None:
    """Fine-tuning: training loss against epochs, and eval top-1 of the raw and EMA weights,
    from ``metrics.jsonl`` -> ``figures/finetune.png``."""
    plt = pyplot()


    work_dir = Path(work_dir)
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "raw_top1" in r]
    if not train:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    a.plot([r["epoch"] for r in train], [r["loss"] for r in train], lw=1.2)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (soft-target CE)")
    for tag, colour in (("raw", "tab:blue"), ("ema", "tab:orange")):
        pts = [(r["epoch"], r[f"{tag}_top1"]) for r in evals if f"{tag}_top1" in r]
        if pts:
            b.plot(*zip(*pts), marker="o", color=colour, label=f"{tag} weights")
    if evals:
        b.legend()
        b.set_ylabel(f"top-1 (%) on {evals[-1].get('split', 'eval')}")
    b.set_xlabel("epoch")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title or work_dir.name)
    return save_png(fig, work_dir / "figures" / "finetune.png")


def finetune_comparison(run_dir: str | Path) -> Path | None:
    """Every fine-tune of a run side by side (``eval/finetune*.json``: l-DAE init, random init,
    outside ViTs): val top-1 per epoch, raw weights solid and EMA dashed, with the run's linear
    probe as a reference line -> ``figures/finetune.png``."""
    plt = pyplot()


    run_dir = Path(run_dir)
    import json

    recs = {f.stem: json.loads(f.read_text()) for f in sorted((run_dir / "eval").glob("finetune*.json"))}
    recs = {k: r for k, r in recs.items() if r.get("curve")}
    if not recs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for i, (name, r) in enumerate(recs.items()):
        colour = f"C{i}"
        ep = [c["epoch"] for c in r["curve"]]
        ax.plot(ep, [c["raw_top1"] for c in r["curve"]], marker="o", color=colour,
                label=f"{r['init']} init, raw")
        if r.get("ema"):
            ax.plot(ep, [c["ema_top1"] for c in r["curve"]], ls="--", color=colour,
                    label=f"{r['init']} init, EMA")
    probe = run_dir / "eval" / "linprobe.json"
    if probe.is_file():
        lp = json.loads(probe.read_text())
        ax.axhline(lp["top1"], color="gray", ls=":", label=f"linear probe ({lp['mode']}): {lp['top1']:.1f}")
    split = next(iter(recs.values()))["eval_split"]
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel(f"top-1 (%) on {split}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"fine-tuning (App. B recipe), {run_dir.name}")
    return save_png(fig, run_dir / "figures" / "finetune.png")


def filter_grid(filters, path: str | Path, title: str = "", keep: int | None = None,
                max_tiles: int = 64) -> Path:
    """Tokenizer filters (n, C, p, p) as a grid of RGB tiles (paper Fig. 4), each tile scaled
    to its own [min, max]; tiles past ``keep`` (the latent dim d) are drawn faded."""
    plt = pyplot()
    import numpy as np


    f = filters.detach().float().cpu()[:max_tiles]
    n = f.shape[0]
    cols = min(16, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.7 + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        tile = f[i]
        lo, hi = float(tile.min()), float(tile.max())
        tile = (tile - lo) / max(hi - lo, 1e-12)
        img = tile.permute(1, 2, 0).numpy()
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        ax.imshow(img, interpolation="nearest", alpha=1.0 if keep is None or i < keep else 0.35)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path)
