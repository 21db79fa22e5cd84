"""Tables and plots of the l-DAE study (issue 14) from the run dirs it produced.

    .venv/bin/python bench/ldae_study.py --final runs/final --chain runs/inv \
        --keep docs/data/ldae-study --out docs/figures

Reads only what the runs wrote (``eval/linprobe*.json``, ``train_summary.json``,
``metrics.jsonl``): the final ``cifar10-cpu`` runs of ``bench/ldae_final.sh``
(``FINAL/{ldae,ddm,pixel,mae,mocov3}-s{SEED}`` with probes tagged ``ep1``, ``ep2``, ``ep4``, the final
``linprobe.json`` and, for the l-DAE, ``linprobe-original.json``; ``FINAL/pixels{32,64}-s{SEED}``
raw-pixel probes) and the 1-epoch Tab. 3 chain (``CHAIN/traj-{none,unit}/rows/ROW``, probed with
the original image and, tagged ``projected``, the projected one). ``--keep DIR`` copies those small
files into DIR (the final runs' layout under ``DIR/final``; the chain as ``DIR/chain-1ep.json``,
merged with what DIR already holds) so that the record outlives the run dirs; DIR can then be
given as ``--final DIR/final`` and is read for the chain whenever it exists. Prints Markdown tables
(mean and spread over seeds, val and the train-split holdout the probe selected on) and writes two
figures:
``cifar10-cpu-ldae-vs-ddm.png`` (probe top-1 and the online kNN against epochs) and
``cifar10-cpu-tab3-chain.png`` (Tab. 3 at one epoch, latent scale none / unit, beside the paper).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

KINDS = {"ldae": "l-DAE (Tab. 3 last line)", "ddm": "PCA DDM (Tab. 3 line 1)",
         "pixel": "pixel DDM (Fig. 5, d = D = 192)", "mae": "MAE (Tab. 4; cifar10-cpu-mae)",
         "mocov3": "MoCo v3 (Tab. 4; cifar10-cpu-mocov3)"}
CHAIN = [("tab2-pca-d32", "patch-wise PCA baseline", 65.1), ("tab3-predict-z0", "+ predict z0", 62.4),
         ("tab3-no-input-scaling", "+ remove input scaling", 63.6),
         ("tab3-image-input", "+ image input", 63.6), ("tab3-image-output", "+ image output", 63.9),
         ("tab3-ldae", "+ predict original image (l-DAE)", 64.5),
         ("tab3-single-level", "single noise level", 61.5)]
EPOCHS = (1, 2, 4)


def probe(path: Path) -> dict | None:
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    return {"top1": r["top1"], "top5": r["top5"], "holdout": (r.get("selection") or {}).get("holdout_top1"),
            "blr": r.get("best_blr"), "step": (r.get("weights") or {}).get("step")}


def stats(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {(max(vals) - min(vals)) / 2:.2f}"


def seeds(final: Path, kind: str) -> list[Path]:
    return sorted(p for p in final.glob(f"{kind}-s*") if p.is_dir())


def final_tables(final: Path) -> str:
    lines = ["| system | seeds | val top-1 | val top-5 | holdout top-1 | pretrain wall (s) | img/s | knn top-1 (end) |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, title in KINDS.items():
        runs = seeds(final, kind)
        if not runs:
            continue
        ps = [probe(r / "eval" / "linprobe.json") for r in runs]
        ss = [json.loads((r / "train_summary.json").read_text()) if (r / "train_summary.json").is_file()
              else {} for r in runs]
        ps = [p for p in ps if p]
        lines.append(f"| {title} | {len(ps)} | {stats([p['top1'] for p in ps])} | "
                     f"{stats([p['top5'] for p in ps])} | {stats([p['holdout'] for p in ps])} | "
                     f"{stats([s.get('wall_seconds') for s in ss])} | {stats([s.get('img_per_s') for s in ss])} | "
                     f"{stats([s.get('knn_top1') for s in ss])} |")
        if kind == "ldae":
            po = [probe(r / "eval" / "linprobe-original.json") for r in runs]
            po = [p for p in po if p]
            if po:
                lines.append(f"| {title}, clean input = original image | {len(po)} | "
                             f"{stats([p['top1'] for p in po])} | {stats([p['top5'] for p in po])} | "
                             f"{stats([p['holdout'] for p in po])} | | | |")
    for size in (32, 64):
        ps = [probe(p / "eval" / "linprobe-pixels.json") for p in sorted(final.glob(f"pixels{size}-s*"))]
        ps = [p for p in ps if p]
        if ps:
            lines.append(f"| raw pixels, {size} px ({3 * size * size} dims) | {len(ps)} | "
                         f"{stats([p['top1'] for p in ps])} | {stats([p['top5'] for p in ps])} | "
                         f"{stats([p['holdout'] for p in ps])} | | | |")
    lines += ["", "| system | " + " | ".join(f"epoch {e}" for e in EPOCHS) + " | end |",
              "|---|" + "---|" * (len(EPOCHS) + 1)]
    for kind, title in KINDS.items():
        runs = seeds(final, kind)
        if not runs:
            continue
        cells = []
        for e in EPOCHS:
            vals = [(probe(r / "eval" / f"linprobe-ep{e}.json") or {}).get("top1") for r in runs]
            n = sum(v is not None for v in vals)
            cells.append(stats(vals) + (f" ({n} of {len(runs)} seeds)" if 0 < n < len(runs) else ""))
        cells.append(stats([(probe(r / "eval" / "linprobe.json") or {}).get("top1") for r in runs]))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect_chain(chain: Path) -> dict:
    """{row: {scale: {"original" | "projected": probe}}} from the chain's run dirs."""
    rec: dict = {}
    for row, _, _ in CHAIN:
        for scale in ("none", "unit"):
            d = chain / f"traj-{scale}" / "rows" / row / "eval"
            for name, f in (("original", "linprobe.json"), ("projected", "linprobe-projected.json")):
                p = probe(d / f)
                if p:
                    rec.setdefault(row, {}).setdefault(scale, {})[name] = p
    return rec


def merge_chain(chain: Path, keep: Path | None) -> dict:
    """The kept record (if any) updated with what the run dirs hold now."""
    rec: dict = {}
    if keep is not None and (keep / "chain-1ep.json").is_file():
        rec = json.loads((keep / "chain-1ep.json").read_text())
    for row, scales in collect_chain(chain).items():
        for scale, probes in scales.items():
            rec.setdefault(row, {}).setdefault(scale, {}).update(probes)
    return rec


def keep_final(final: Path, keep: Path) -> None:
    """Copy the final runs' small result files into KEEP/final/RUN (eval JSONs, summary, metrics)."""
    if final.resolve() == (keep / "final").resolve():  # reading the record itself: nothing to copy
        return
    for run in sorted(p for p in final.iterdir() if p.is_dir()):
        dst = keep / "final" / run.name
        files = [run / "train_summary.json", run / "metrics.jsonl", run / "config.yaml"]
        files += sorted((run / "eval").glob("linprobe*.json"))
        for f in files:
            if f.is_file():
                (dst / f.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst / f.relative_to(run))


def chain_table(rec: dict) -> str:
    lines = ["| row | paper | none: val (holdout) | none, projected | unit: val (holdout) | unit, projected |",
             "|---|---|---|---|---|---|"]
    for row, title, paper in CHAIN:
        cells = []
        for scale in ("none", "unit"):
            got = rec.get(row, {}).get(scale, {})
            main, proj = got.get("original"), got.get("projected")
            cells.append(f"{main['top1']:.2f} ({main['holdout']:.2f})" if main else "–")
            cells.append(f"{proj['top1']:.2f} ({proj['holdout']:.2f})" if proj else "")
        lines.append(f"| `{row}` {title} | {paper} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(final: Path, rec: dict, out: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ldae.plots import pyplot, save_png

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    colours = {"ldae": "tab:blue", "ddm": "tab:orange", "pixel": "tab:gray", "mae": "tab:green",
               "mocov3": "tab:purple"}
    for kind, title in KINDS.items():
        runs = seeds(final, kind)
        if not runs:
            continue
        for i, r in enumerate(runs):
            summ = json.loads((r / "train_summary.json").read_text()) if (r / "train_summary.json").is_file() else {}
            end = summ.get("epochs")
            pts = [(e, (probe(r / "eval" / f"linprobe-ep{e}.json") or {}).get("top1")) for e in EPOCHS]
            pts.append((end, (probe(r / "eval" / "linprobe.json") or {}).get("top1")))
            pts = [(e, v) for e, v in pts if e is not None and v is not None]
            if pts:
                a.plot(*zip(*pts), marker="o", color=colours[kind], alpha=0.9 if i == 0 else 0.5,
                       label=title if i == 0 else None)
            rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
            if rows:
                b.plot([x["epoch"] for x in rows], [x["knn_top1"] for x in rows], marker=".",
                       color=colours[kind], alpha=0.9 if i == 0 else 0.5, label=title if i == 0 else None)
    for size, ls in ((32, "--"), (64, ":")):
        ps = [probe(p / "eval" / "linprobe-pixels.json") for p in sorted(final.glob(f"pixels{size}-s*"))]
        ps = [p["top1"] for p in ps if p]
        if ps:
            a.axhline(statistics.mean(ps), color="k", ls=ls, lw=1, label=f"raw pixels, {size} px")
    a.set_xlabel("pretraining epochs (45,000 images each)")
    a.set_ylabel("linear probe top-1 (%), val")
    a.set_title("probe of the epoch's checkpoint (--fast, blr on a train holdout)")
    b.set_xlabel("pretraining epochs")
    b.set_ylabel("online kNN top-1 (%), train-split holdout")
    b.set_title("online monitor (train.monitor_every)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = max((len(seeds(final, k)) for k in KINDS), default=0)
    fig.suptitle(f"cifar10-cpu preset (64 px, patch 8, d = 8, mini), {n} seed{'' if n == 1 else 's'}")
    save_png(fig, out / "cifar10-cpu-ldae-vs-ddm.png")

    fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
    xs = list(range(len(CHAIN)))
    ax.plot(xs, [p for _, _, p in CHAIN], marker="s", color="k", label="paper (ImageNet, 400 ep)")
    for scale, c in (("none", "tab:red"), ("unit", "tab:blue")):
        vals = [(rec.get(r, {}).get(scale, {}).get("original") or {}).get("top1") for r, _, _ in CHAIN]
        pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=c, label=f"ours, 1 epoch, tokenizer.scale={scale}")
    ax.set_xticks(xs, [t for _, t, _ in CHAIN], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("linear probe top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Tab. 3 at the cifar10-cpu scale (CIFAR-10 val; clean input = original image)")
    save_png(fig, out / "cifar10-cpu-tab3-chain.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--final", type=Path, default=Path("runs/final"))
    ap.add_argument("--chain", type=Path, default=Path("runs/inv"))
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy the small result files here (a record that outlives the run dirs)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    rec = merge_chain(args.chain, args.keep)
    if args.keep is not None:
        if args.final.is_dir():
            keep_final(args.final, args.keep)
        args.keep.mkdir(parents=True, exist_ok=True)
        (args.keep / "chain-1ep.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    print(final_tables(args.final), "\n")
    print(chain_table(rec))
    if args.out:
        plots(args.final, rec, args.out)


if __name__ == "__main__":
    main()
