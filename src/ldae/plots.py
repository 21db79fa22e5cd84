"""Plots that people would rather look at than tables; written into the run dir as PNG."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from .checkpoint import atomic_path
from .logging import read_jsonl


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib  # lazy: start-up time; matplotlib loads only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: start-up time (as above)

    return plt


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (110 dpi) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path


def _metrics(folder: Path) -> list[dict]:
    """The records of ``folder/metrics.jsonl`` ([] when there is none)."""
    path = folder / "metrics.jsonl"
    return read_jsonl(path) if path.is_file() else []


def training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """loss, lr and (when the run has the online monitor) kNN top-1 against images seen, from
    ``metrics.jsonl`` -> ``figures/training.png``
    (or the file ``out``: ``ldae figures --out`` writes elsewhere without touching the run dir)."""
    plt = pyplot()
    from matplotlib.ticker import EngFormatter  # lazy: start-up time (matplotlib)

    run_dir = Path(run_dir)
    rows = [r for r in _metrics(run_dir) if "images" in r and "loss" in r]
    if not rows:
        return None
    imgs = [r["images"] for r in rows]
    knn = [(r["images"], r["knn_top1"]) for r in rows if r.get("knn_top1") is not None]
    fig, axes = plt.subplots(1, 3 if knn else 2, figsize=(15 if knn else 10, 3.6),
                             constrained_layout=True)
    a, b = axes[0], axes[1]
    a.plot(imgs, [r["loss"] for r in rows], lw=1.2)
    a.set_yscale("log")
    a.set_xlabel("images seen")
    a.set_ylabel("training loss (mean per log window)")
    a.grid(alpha=0.3)
    b.plot(imgs, [r["lr"] for r in rows], lw=1.2, color="tab:orange")
    b.set_xlabel("images seen")
    b.set_ylabel("learning rate")
    b.grid(alpha=0.3)
    if knn:
        c = axes[2]
        c.plot(*zip(*knn), marker="o", lw=1.2, color="tab:green")
        c.set_xlabel("images seen")
        c.set_ylabel("kNN top-1 (%), train-split holdout")
        c.grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    fig.suptitle(run_dir.name)
    return save_png(fig, out if out is not None else run_dir / "figures" / "training.png")


def finetune_curves(work_dir: str | Path, title: str = "") -> Path | None:
    """Fine-tuning: training loss against epochs, and eval top-1 of the raw and EMA weights,
    from ``metrics.jsonl`` -> ``figures/finetune.png``."""
    plt = pyplot()
    work_dir = Path(work_dir)
    rows = _metrics(work_dir)
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


# ------------------------------------------------------------------ image grids (Fig. 4, 7, 8)
def _hwc(x):
    """A channel-first image (C, H, W), tensor or array -> float32 numpy (H, W, 3)."""
    a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    a = a.transpose(1, 2, 0)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def to_rgb01(x):
    """A channel-first image (C, H, W) in [-1, 1] -> (H, W, 3) numpy array in [0, 1], clipped:
    for display only (the values themselves are not changed)."""
    return np.clip((_hwc(x) + 1.0) / 2.0, 0.0, 1.0)


def minmax01(x):
    """A filter (C, p, p) scaled to its own [min, max] -> (p, p, 3) in [0, 1] (the paper's
    Fig. 4 normalisation: each tile independently)."""
    a = _hwc(x)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / max(hi - lo, 1e-12)


def upscale_nearest(img, min_px: int = 64):
    """(H, W, C) array -> nearest-neighbour upscaled by an integer factor so that its short side
    is at least ``min_px`` pixels (small patches and 8-32 px images stay crisp on screen)."""
    k = max(1, -(-min_px // max(1, min(img.shape[:2]))))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1) if k > 1 else img


def image_grid(cells, path: str | Path, col_titles=None, row_titles=None, cell_titles=None,
               title: str = "", tile_in: float = 1.3, faded=None, framed=None,
               fontsize: float = 9, min_px: int = 64, min_width_in: float = 6.0) -> Path:
    """A grid of RGB images (paper Fig. 4 / 7 / 8 layout) -> PNG.

    ``cells``: rows of (H, W, 3) arrays in [0, 1] (None = an empty cell). ``col_titles`` go over
    the first row, ``row_titles`` left of each row, ``cell_titles`` (same shape as cells) over
    every cell; ``faded`` (same shape, bools) draws a cell at 35 % opacity, ``framed`` (same
    shape, bools) draws a green frame around it. Each tile is about ``tile_in`` inches wide,
    upscaled by an integer nearest-neighbour factor and drawn 1:1 onto the PNG's pixels (crisp,
    never smoothed). The grid is one composed image in one axes, with the margins for the titles
    measured from the text: fast even for 8 x 7 tiles. A narrow grid is centred in a figure at
    least ``min_width_in`` wide, so that its titles need not wrap."""
    from matplotlib.patches import Rectangle  # lazy: start-up time (matplotlib)

    plt = pyplot()
    dpi = 110  # save_png's
    rows = len(cells)
    cols = max(len(r) for r in cells)
    sizes = [c.shape[:2] for r in cells for c in r if c is not None]
    if not sizes:
        raise ValueError("image_grid: no images to draw")
    h0, w0 = max(s[0] for s in sizes), max(s[1] for s in sizes)
    k = max(1, round(tile_in * dpi / w0), -(-min_px // max(1, min(h0, w0))))
    th, tw = h0 * k, w0 * k  # tile size in PNG pixels
    gap = max(4, tw // 12)
    line = 1.35 * fontsize / 72 * dpi  # one text line, pixels
    cell_h = round(line * 1.1) if cell_titles else 0
    canvas = np.ones((rows * (th + cell_h) + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), np.float32)
    origin = {}
    for i, r in enumerate(cells):
        for j, img in enumerate(r):
            y0, x0 = i * (th + gap + cell_h) + cell_h, j * (tw + gap)
            origin[i, j] = (y0, x0)
            if img is None:
                continue
            up = np.repeat(np.repeat(np.asarray(img, np.float32)[..., :3], k, 0), k, 1)
            if faded is not None and faded[i][j]:
                up = 0.35 * up + 0.65
            canvas[y0:y0 + up.shape[0], x0:x0 + up.shape[1]] = up
    ch, cw = canvas.shape[:2]
    left = (line * 1.6 if row_titles else 0) + 6
    right = 6
    pad = max(0.0, min_width_in * dpi - (cw + left + right)) / 2
    left, right = left + pad, right + pad
    fig_w = (cw + left + right) / dpi
    if title:  # wrap to the figure's width (about 0.55 em per character) so no line is clipped
        width = max(20, int(fig_w * 72 / (0.55 * (fontsize + 1))))
        title = "\n".join(textwrap.fill(ln, width) for ln in title.split("\n"))
    top_title = (title.count("\n") + 1) * line * (fontsize + 1) / fontsize + 10 if title else 4
    top_cols = max(str(c).count("\n") + 1 for c in col_titles) * line + 6 if col_titles else 0
    bottom = 6
    H = ch + top_title + top_cols + bottom
    fig = plt.figure(figsize=(fig_w, H / dpi))
    ax = fig.add_axes([left / (cw + left + right), bottom / H, cw / (cw + left + right), ch / H])
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for (i, j), (y0, x0) in origin.items():
        cx = x0 + tw / 2 - 0.5
        if i == 0 and col_titles and j < len(col_titles):
            ax.text(cx, y0 - cell_h - 6, str(col_titles[j]), ha="center", va="bottom",
                    fontsize=fontsize, clip_on=False)
        if cell_titles and j < len(cell_titles[i]) and cell_titles[i][j]:
            ax.text(cx, y0 - 3, str(cell_titles[i][j]), ha="center", va="bottom",
                    fontsize=fontsize - 1, clip_on=False)
        if framed is not None and j < len(framed[i]) and framed[i][j]:
            ax.add_patch(Rectangle((x0 - 2.5, y0 - 2.5), tw + 4, th + 4, fill=False,
                                   edgecolor="tab:green", lw=3, clip_on=False))
        if j == 0 and row_titles and i < len(row_titles):
            ax.text(-line * 0.5, y0 + th / 2, str(row_titles[i]), ha="right", va="center",
                    rotation=90, fontsize=fontsize, clip_on=False)
    if title:
        fig.suptitle(title, fontsize=fontsize + 1, y=1 - 4 / H, va="top")
    return save_png(fig, path)
