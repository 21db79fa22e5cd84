"""The report of ``ldae trajectory``: ``OUT/results.csv``, ``OUT/results.md`` (our number beside the
paper's, with the change from the previous line) and the plots ``OUT/figures/{trajectory,tab2,fig5}.png``.

It knows the rows only through what it is given: the result records (:func:`records`) and a
:class:`RowMeta` (the tables' titles, each row's parent and its paper top-1), which
``trajectory.row_meta`` builds from the row files; it never imports the runner.
"""
from __future__ import annotations

import csv
import io
import json
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import torch

from ..checkpoint import atomic_write_text
from ..dist import pick_threads
from ..plots import pyplot, save_png

if TYPE_CHECKING:  # annotations only: the report does not import the runner
    from .trajectory import Row

# Fig. 6 draws the main line of the deconstruction: Tab. 1, the PCA tokenizer, Tab. 3.
FIG6_CHAIN = ("tab1-dit", "tab1-uncond", "tab1-no-perceptual", "tab1-no-adversarial",
              "tab1-linear-gamma2", "tab2-pca-d32", "tab3-predict-z0", "tab3-no-input-scaling",
              "tab3-image-input", "tab3-image-output", "tab3-ldae")
FIG6_LABELS = ("DiT baseline", "- class cond.", "- perceptual", "- adversarial", "linear γ²",
               "patch PCA d=32", "predict z0", "- input scaling", "image input", "image output",
               "predict image (l-DAE)")
PAPER_D = (8, 16, 32, 64, 128)
PAPER_PIXEL = (256, 128, 64, 32)
CSV_FIELDS = ("row", "table", "title", "paper_acc", "paper_fid", "top1", "top5", "fid", "fid_n", "status",
              "objective", "tokenizer", "d", "full_dim", "model", "epochs", "images", "pretrain_s", "probe_s",
              "img_per_s", "final_loss", "probe_mode", "reason")


@dataclass(frozen=True)
class RowMeta:
    """What the report needs to know of every row, beyond its record."""
    tables: Mapping[str, str]  # table key -> its title (the section headings)
    parents: Mapping[str, str | None]  # row -> the row it modifies (its ``inherit:``)
    paper_acc: Mapping[str, float | None]  # every row -> its own paper top-1 (None: not given)
    # Tab. 4 at equal wall time: row -> the row whose pretraining wall time it was given
    equal_time: Mapping[str, str] = field(default_factory=dict)


def hardware(threads: int = 0) -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {pick_threads(threads)} torch threads (torch {torch.__version__})"


def fid_of(run_dir: Path) -> dict | None:
    """A row's FID with the most samples (the newest among equals): {"fid", "n"}, or None."""
    best = None
    for p in (run_dir / "eval").glob("fid-*.json"):
        rec = json.loads(p.read_text())
        key = (rec.get("n") or 0, p.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, {"fid": rec.get("fid"), "n": rec.get("n")})
    return best[1] if best else None


# ------------------------------------------------------------------------------------- results
def _record(r: Row, res: dict) -> dict:
    probe, pre = res.get("probe") or {}, res.get("pretrain") or {}
    c = r.cfg
    rec = {"row": r.name, "table": r.table, "title": r.title, "paper_acc": r.paper_acc,
           "paper_fid": r.paper_fid, "top1": probe.get("top1"), "top5": probe.get("top5"),
           "status": res.get("status", "not run"), "reason": res.get("reason", "") or "",
           "tokenizer": c.tokenizer.name if c else "", "d": c.tokenizer.dim if c else "",
           "full_dim": 3 * c.model.patch_size ** 2 if c else "", "model": c.model.name if c else "",
           "objective": c.objective.name if c else "",
           "epochs": c.optim.epochs if c else "", "images": pre.get("images"),
           "pretrain_s": pre.get("wall_seconds"),
           "probe_s": probe.get("seconds"), "img_per_s": pre.get("img_per_s"),
           "final_loss": pre.get("final_loss"), "probe_mode": probe.get("mode", ""),
           "fid": (res.get("fid") or {}).get("fid"), "fid_n": (res.get("fid") or {}).get("n")}
    return rec


def _fmt(v, nd: int = 1) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def records(rows: list[Row], results: dict[str, dict], out: Path | None = None) -> list[dict]:
    """One flat record per row (the CSV's fields), in ``rows`` order; with ``out``, each row's
    measured FID (``rows/<row>/eval/fid-*.json``) too."""
    def res(r):
        got = dict(results.get(r.name, {}))
        if out is not None and (f := fid_of(out / "rows" / r.name)) is not None:
            got["fid"] = f
        return got

    return [_record(r, res(r)) for r in rows]


def write_results(out: Path, scale: str, rows: list[Row], results: dict[str, dict], meta: RowMeta) -> None:
    recs = records(rows, results, out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in recs:
        w.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in CSV_FIELDS})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", results_markdown(scale, recs, out, meta))
    try:
        plot_all(out, recs, meta)
    except Exception as e:  # a plot must never lose the table
        print(f"trajectory: plotting failed ({type(e).__name__}: {e})")


def results_markdown(scale: str, recs: list[dict], out: Path, meta: RowMeta) -> str:
    info = json.loads((out / "trajectory.json").read_text()) if (out / "trajectory.json").is_file() else {}
    lines = [f"# ldae trajectory at scale `{scale}`", "",
             f"Hardware: {info.get('hardware', '?')}. Started {info.get('started', '?')}. "
             f"Command: `ldae trajectory --scale {scale} --out {out}"
             f"{' ' + ' '.join(info.get('overrides', [])) if info.get('overrides') else ''}`.",
             "Paper numbers: ImageNet-1k linear probe top-1 (%), ViT-1/2L, 400 epochs (FID-50K where "
             "given). Ours: linear probe top-1 / top-5 (%) on this scale's eval split, the "
             "probe's blr chosen on a holdout share of the train split (`linprobe.select`), the "
             "eval split only reported. "
             "Δ = change from the row it modifies (its `inherit:` "
             "parent; Tab. 1, Tab. 3, Sec. 5), paper / ours; ✓ when both move the same way, ✗ when not.", ""]
    by_name = {rec["row"]: rec for rec in recs}
    by_table: dict[str, list[dict]] = {}
    for rec in recs:
        by_table.setdefault(rec["table"], []).append(rec)
    for table, rs in by_table.items():
        if table == "tab4":
            lines += tab4_markdown(rs, by_name, meta)
            continue
        lines += [f"## {meta.tables.get(table, table)}", "",
                  "| row | system | d | paper acc | paper FID | ours top-1 | ours top-5 | ours FID (n) | Δ vs parent: paper / ours | status |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for rec in rs:
            delta = "—"
            prev = by_name.get(meta.parents.get(rec["row"]))
            if prev is not None and table in ("tab1", "tab3", "sec5") and not rec["status"].startswith("same as"):
                dp = _diff(rec["paper_acc"], prev["paper_acc"])
                do = _diff(rec["top1"], prev["top1"])
                if dp is not None or do is not None:
                    agree = "" if dp is None or do is None else (" ✓" if dp * do > 0 else " ✗")
                    delta = f"{_sgn(dp)} / {_sgn(do)}{agree}"
            status = rec["status"] + (f": {first_sentence(rec['reason'])}" if rec["reason"] else "")
            fid_n = f" ({rec['fid_n']})" if rec["fid_n"] else ""
            lines.append(f"| `{rec['row']}` | {rec['title']} | {_fmt(rec['d'])} | {_fmt(rec['paper_acc'])} | "
                         f"{_fmt(rec['paper_fid'])} | {_fmt(rec['top1'], 2)} | {_fmt(rec['top5'], 2)} | "
                         f"{_fmt(rec['fid'], 2)}{fid_n} | "
                         f"{delta} | {status} |")
        lines.append("")
    figs = [f for f in ("trajectory", "tab2", "fig5") if (out / "figures" / f"{f}.png").is_file()]
    if figs:
        lines += ["## Plots", ""] + [f"![{f}](figures/{f}.png)" for f in figs] + [""]
    return "\n".join(lines)


def _baseline(rec: dict, tab4: list[dict], meta: RowMeta) -> dict | None:
    """The l-DAE a Tab. 4 row is compared with: the row whose wall time it was given, else the
    diffusion row (the l-DAE) of the same model."""
    if rec["row"] in meta.equal_time:
        return next((r for r in tab4 if r["row"] == meta.equal_time[rec["row"]]), None)
    return next((r for r in tab4 if r["objective"] == "diffusion" and r["model"] == rec["model"]
                 and r["row"] not in meta.equal_time), None)


def tab4_markdown(tab4: list[dict], by_name: Mapping[str, dict], meta: RowMeta) -> list[str]:
    """Tab. 4 twice: at equal pretraining images (the paper's comparison, every row but the
    equal-time ones) and at equal wall time on this machine (each equal-time row beside the
    l-DAE whose wall time it was given). Δ = the row minus its l-DAE, paper / ours."""
    head = ("| row | system | model | paper acc | ours top-1 | ours top-5 | Δ vs l-DAE: paper / ours | "
            "epochs | images seen | pretrain wall (s) | img/s | status |")

    def line(rec):
        base = _baseline(rec, tab4, meta)
        delta = "—"
        if base is not None and base is not rec:
            delta = f"{_sgn(_diff(rec['paper_acc'], base['paper_acc']))} / {_sgn(_diff(rec['top1'], base['top1']))}"
        status = rec["status"] + (f": {first_sentence(rec['reason'])}" if rec["reason"] else "")
        images = f"{rec['images']:,}" if isinstance(rec["images"], int) else "—"
        return (f"| `{rec['row']}` | {rec['title']} | {rec['model']} | {_fmt(rec['paper_acc'])} | "
                f"{_fmt(rec['top1'], 2)} | {_fmt(rec['top5'], 2)} | {delta} | {_fmt(rec['epochs'], 2)} | "
                f"{images} | {_fmt(rec['pretrain_s'], 0)} | {_fmt(rec['img_per_s'], 1)} | {status} |")

    timed = [r for r in tab4 if r["row"] in meta.equal_time]
    refs = {meta.equal_time[r["row"]] for r in timed}
    lines = [f"## {meta.tables.get('tab4', 'Tab. 4')}", "", "At equal pretraining images seen (the paper's "
             "comparison; its numbers at ImageNet scale):", "", head, "|---" * 12 + "|"]
    lines += [line(r) for r in tab4 if r["row"] not in meta.equal_time]
    if timed:
        lines += ["", "At equal pretraining wall time on this machine (each baseline's epochs scaled by "
                  "the l-DAE's wall time over its own; no paper numbers):", "", head, "|---" * 12 + "|"]
        lines += [line(by_name[n]) for n in sorted(refs) if n in by_name] + [line(r) for r in timed]
    return lines + [""]


def first_sentence(text: str) -> str:
    """The text up to its first full stop (not the one of "e.g." or "i.e."), fit for a table cell."""
    return re.split(r"(?<!e\.g)(?<!i\.e)\. ", text)[0].replace("|", "/").replace("\n", " ")


def _diff(a, b):
    return None if a in (None, "") or b in (None, "") else float(a) - float(b)


def _sgn(v) -> str:
    return "—" if v is None else f"{v:+.1f}"


# --------------------------------------------------------------------------------------- plots
def plot_all(out: Path, recs: list[dict], meta: RowMeta, figdir: Path | None = None) -> list[Path]:
    """Fig. 6 (the trajectory), Tab. 2's plot and Fig. 5, paper beside ours, as PNG into
    ``figdir`` (default ``out/figures``); returns the files written (a plot without data is not
    drawn)."""
    plt = pyplot()
    by = {r["row"]: r for r in recs}
    figdir = Path(figdir) if figdir is not None else out / "figures"
    written: list[Path] = []

    def save(fig, name):
        written.append(save_png(fig, figdir / f"{name}.png"))

    def paper(name):
        return _nan(meta.paper_acc.get(name))

    def ours(name):
        return _nan((by.get(name) or {}).get("top1"))

    if any(not math.isnan(ours(n)) for n in FIG6_CHAIN):
        save(_plot_fig6(plt, paper, ours), "trajectory")
    tab2 = [r for r in recs if r["table"] == "tab2" or r["row"] == "tab1-linear-gamma2"]
    if any(r["top1"] is not None for r in tab2):
        save(_plot_tab2(plt, paper, ours, set(meta.paper_acc)), "tab2")
    f5 = [f"fig5-pixel-{px}" for px in PAPER_PIXEL]
    if any(not math.isnan(ours(n)) for n in f5):
        save(_plot_fig5(plt, paper, ours, {n: (by.get(n) or {}).get("d") for n in f5}), "fig5")
    return written


def _plot_fig6(plt, paper: Callable[[str], float], ours: Callable[[str], float]):
    fig, ax = plt.subplots(figsize=(10, 4.4), constrained_layout=True)
    x = list(range(len(FIG6_CHAIN)))
    ax.plot(x, [paper(n) for n in FIG6_CHAIN], "o--", color="tab:gray", label="paper (ImageNet, left axis)")
    ax.set_ylabel("paper: ImageNet top-1 (%)")
    ax2 = ax.twinx()
    ax2.plot(x, [ours(n) for n in FIG6_CHAIN], "o-", color="tab:blue", label="ours (right axis)")
    ax2.set_ylabel("ours: top-1 (%) at this scale", color="tab:blue")
    ax.set_xticks(x, FIG6_LABELS, rotation=30, ha="right")
    ax.grid(alpha=0.3)
    ax.set_title("Fig. 6: the deconstructive trajectory (each point modifies the one before)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    return fig


def _plot_tab2(plt, paper: Callable[[str], float], ours: Callable[[str], float], all_rows: set[str]):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for tok, mk in (("conv_vae", "s"), ("patch_vae", "^"), ("patch_ae", "v"), ("pca", "o")):
        stem = f"tab2-{tok.replace('_', '-')}-d"
        names = {d: f"{stem}{d}" for d in PAPER_D}
        axes[0].plot(PAPER_D, [paper(names[d]) if names[d] in all_rows else math.nan
                               for d in PAPER_D], marker=mk, label=tok)
        ours_d = {d: ours(n) for d, n in names.items()}
        if tok == "conv_vae" and math.isnan(ours_d[16]):
            ours_d[16] = ours("tab1-linear-gamma2")  # the same system
        axes[1].plot(PAPER_D, [ours_d[d] for d in PAPER_D], marker=mk, label=tok)
    for ax, title in zip(axes, ("paper (ImageNet, D = 768)", "ours (d mapped by the scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(PAPER_D, [str(d) for d in PAPER_D])
        ax.set_xlabel("latent dim d per token (paper units)")
        ax.set_ylabel("linear probe top-1 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Tab. 2: accuracy vs latent dimension")
    return fig


def _plot_fig5(plt, paper: Callable[[str], float], ours: Callable[[str], float], dims: dict):
    f5 = list(dims)
    fig, ax = plt.subplots(figsize=(6, 3.9), constrained_layout=True)
    labels = [f"{px} px, paper d={3 * (px // 16) ** 2}\n(ours d={dims[n] or '?'})"
              for px, n in zip(PAPER_PIXEL, f5)]
    x = list(range(len(f5)))
    ax.plot(x, [ours(n) for n in f5], "o-", label="ours")
    ax.plot(x, [paper(n) for n in f5], "s", color="tab:gray", label="paper (only 256 px given in text)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Fig. 5: pixel tokenizer, token count fixed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _nan(v) -> float:
    return float("nan") if v in (None, "") else float(v)


__all__ = ["CSV_FIELDS", "RowMeta", "fid_of", "first_sentence", "hardware", "plot_all", "records",
           "results_markdown", "write_results"]
