"""``ldae trajectory``: the paper's deconstruction (Tab. 1, Tab. 2, Fig. 5, Tab. 3, Sec. 5) as runs.

A **row** is a named config in ``configs/trajectory/`` that inherits from the row before it, as
the paper builds each line on the previous one. Its ``row:`` section says where it sits (table,
order, title, the paper's numbers) and what it means in the paper's units: the latent dim ``d``
(8..128 per 16x16x3 patch), the pixel tokenizer's image size (256..32 px), the number of
epochs (400 = the default) and the model ``size`` (B, halfL, L). A **scale** in
``configs/scale/`` maps those units onto a dataset (its ``scale:`` section: the d grid, the pixel
sizes, the model ladder, which paper epoch count its ``optim.epochs`` stands for, and per-tokenizer
fit settings under ``fit:``), so one row runs at any scale. A row's config is built as

    defaults <- scale preset <- row chain <- key=value overrides <- the row's scale-mapped values

(the last: tokenizer.dim, tokenizer.pixel_size, optim.epochs, model.name and the scale's fit
settings for the row's tokenizer, which the row owns).

The runner fits each distinct tokenizer once into ``OUT/tokenizers/`` and shares it between the
rows that use it (one PCA fit serves every d: the full basis is kept), pretrains each row in
``OUT/rows/NAME`` (``--resume auto``: a crash resumes where it stopped), linear-probes it (fast mode
by default), skips rows already finished, and after every row rewrites ``OUT/results.csv``,
``OUT/results.md`` (our number beside the paper's, with the change from the previous line) and the
plots ``OUT/figures/{trajectory,tab2,fig5}.png``. A row whose config cannot be built at this scale
(the perceptual-loss rows without a local VGG16 file, a conv VAE at a d that is not a multiple of
4) is listed with the reason and skipped; ``same_as`` rows reuse another row's run (the paper
reports the same system in two tables).
"""
from __future__ import annotations

import copy
import csv
import fnmatch
import functools
import io
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..checkpoint import atomic_write_json, atomic_write_text
from ..config import Config, load_config, preset_names, read_preset
from ..errors import ConfigError

TABLES = {
    "tab1": "Tab. 1: reorienting the DDM for self-supervised learning",
    "tab2": "Tab. 2: linear probe vs latent dim d, four tokenizers",
    "fig5": "Fig. 5: pixel tokenizer (noise added to pixels), token count fixed",
    "tab3": "Tab. 3: toward a classical DAE (from patch-wise PCA)",
    "sec5": "Sec. 5: random crop, epochs, model size",
}
# Fig. 6 draws the main line of the deconstruction: Tab. 1, the PCA tokenizer, Tab. 3.
FIG6_CHAIN = ("tab1-dit", "tab1-uncond", "tab1-no-perceptual", "tab1-no-adversarial",
              "tab1-linear-gamma2", "tab2-pca-d32", "tab3-predict-z0", "tab3-no-input-scaling",
              "tab3-image-input", "tab3-image-output", "tab3-ldae")
FIG6_LABELS = ("DiT baseline", "- class cond.", "- perceptual", "- adversarial", "linear γ²",
               "patch PCA d=32", "predict z0", "- input scaling", "image input", "image output",
               "predict image (l-DAE)")
PAPER_D = (8, 16, 32, 64, 128)
PAPER_PIXEL = (256, 128, 64, 32)
# row keys that belong to the file itself, never inherited from the row before it
OWN_KEYS = ("title", "paper", "same_as", "order")


@dataclass
class Row:
    name: str
    table: str
    order: int
    title: str
    paper_acc: float | None = None
    paper_fid: float | None = None
    same_as: str | None = None
    cfg: Config | None = None
    skip: str | None = None  # why this row cannot run at this scale
    meta: dict = field(default_factory=dict)


def row_names() -> list[str]:
    """Every row, in the paper's order."""
    names = preset_names("trajectory")
    return sorted(names, key=lambda n: (_own_row(n).get("order", 10 ** 6), n))


@functools.lru_cache(maxsize=None)
def _raw_row(name: str) -> dict:
    """A row file as written (no inheritance resolved)."""
    from ..config import _find_preset

    return yaml.safe_load(_find_preset(name, "trajectory").read_text()) or {}


def _own_row(name: str) -> dict:
    return _raw_row(name).get("row") or {}


def load_scale(scale: str) -> tuple[dict, dict]:
    """(the config layer, the ``scale:`` mapping) of a scale preset."""
    layer = read_preset(scale, "scale")
    meta = layer.pop("scale", None)
    if not isinstance(meta, dict) or not {"d", "pixel_size", "sizes"} <= set(meta):
        raise ConfigError(f"scale preset '{scale}' needs a 'scale:' section with d, pixel_size and "
                          "sizes (see configs/scale/debug.yaml).")
    meta.setdefault("epochs", 400)
    return layer, meta


def _derived(meta: dict, smeta: dict, cfg0: Config, name: str) -> list[str]:
    """The row's paper-unit values mapped through the scale, as overrides."""
    out = []
    if meta.get("pixel_size"):
        px = smeta["pixel_size"].get(meta["pixel_size"])
        if px is None:
            raise ConfigError(f"row {name}: the scale maps no pixel size for the paper's "
                              f"{meta['pixel_size']} px (scale.pixel_size).")
        grid = cfg0.data.image_size // cfg0.model.patch_size
        if px % grid:
            raise ConfigError(f"row {name}: pixel size {px} is not a multiple of the {grid}-token grid.")
        out += [f"tokenizer.pixel_size={px}", f"tokenizer.dim={3 * (px // grid) ** 2}"]
    elif meta.get("d"):
        d = smeta["d"].get(meta["d"])
        if d is None:
            raise ConfigError(f"row {name}: the scale maps no latent dim for the paper's d = {meta['d']}.")
        out.append(f"tokenizer.dim={d}")
    if meta.get("epochs") and meta["epochs"] != smeta["epochs"]:
        f = meta["epochs"] / smeta["epochs"]
        out.append(f"optim.epochs={cfg0.optim.epochs * f}")
    for k, v in (smeta.get("fit") or {}).get(cfg0.tokenizer.name, {}).items():  # the scale's fit settings per tokenizer
        out.append(f"tokenizer.{k}={v}")
    if meta.get("size"):
        size = smeta["sizes"].get(meta["size"])
        if size is None:
            raise ConfigError(f"row {name}: the scale maps no model for size {meta['size']}.")
        out.append(f"model.name={size}")
    return out


def build_row(name: str, scale: str, overrides: list[str] | None = None) -> Row:
    """The row's resolved config at ``scale`` (``Row.skip`` says why, if it cannot run there)."""
    layer, smeta = load_scale(scale)
    merged = read_preset(name, "trajectory")
    meta = dict(merged.pop("row", None) or {})
    own = _own_row(name)
    for k in OWN_KEYS:
        meta.pop(k, None)
        if k in own:
            meta[k] = own[k]
    paper = meta.get("paper") or {}
    row = Row(name=name, table=meta.get("table", "?"), order=int(meta.get("order", 0)),
              title=meta.get("title", name), paper_acc=paper.get("acc"), paper_fid=paper.get("fid"),
              same_as=meta.get("same_as"), meta=meta)
    try:
        cfg0 = load_config(None, overrides, check=False, layers=[copy.deepcopy(layer), merged])
        row.cfg = load_config(None, list(overrides or []) + _derived(meta, smeta, cfg0, name),
                              layers=[copy.deepcopy(layer), merged])
    except ConfigError as e:
        row.skip = str(e)
    return row


def select(spec: str | None) -> list[str]:
    """Row names from a comma list of names, tables (tab1, tab2, fig5, tab3, sec5) or globs."""
    names = row_names()
    if not spec or spec == "all":
        return names
    out: list[str] = []
    for tok in [s.strip() for s in spec.split(",") if s.strip()]:
        if tok in TABLES:
            hits = [n for n in names if _own_table(n) == tok]
        else:
            hits = [n for n in names if fnmatch.fnmatchcase(n, tok)]
        if not hits:
            import difflib

            close = difflib.get_close_matches(tok, names + list(TABLES), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"--rows: '{tok}' matches no row.{hint} Give row names, tables "
                              f"({', '.join(TABLES)}) or globs; `ldae trajectory --list` shows them.")
        out += [h for h in hits if h not in out]
    return sorted(out, key=names.index)


def _own_table(name: str) -> str:
    return read_preset(name, "trajectory").get("row", {}).get("table", "?")


def tokenizer_key(cfg: Config) -> str:
    """What makes two rows' tokenizers the same fit: its config (not the PCA d: one fit serves
    all), the images it sees and the patch size."""
    import hashlib

    from ..config import TokenizerConfig

    default = TokenizerConfig().__dict__
    # only the settings that differ from the defaults: a field added to the schema later (with
    # a default) leaves every existing key unchanged
    t = {k: v for k, v in cfg.tokenizer.__dict__.items() if v != default[k] or k in ("name", "dim")}
    t.pop("path", None)
    if t["name"] == "pca":  # one fit serves every d and every latent scale
        t.pop("dim")
        t.pop("scale", None)
    d = cfg.data
    src = {k: getattr(d, k) for k in ("source", "path", "image_size", "val_size", "train_split", "limit")}
    blob = json.dumps({"t": t, "d": src, "p": cfg.model.patch_size, "seed": cfg.train.seed},
                      sort_keys=True, default=str)
    h = hashlib.sha256(blob.encode()).hexdigest()[:8]
    dim = "" if t["name"] == "pca" else f"-d{cfg.tokenizer.dim}"
    return f"{t['name']}{dim}-{h}"


# ------------------------------------------------------------------------------------- running
def _fit_tokenizer(cfg: Config, out: Path, log) -> Path:
    from . import fit_tokenizer
    from .common import TOKENIZER_FILE

    tdir = out / "tokenizers" / tokenizer_key(cfg)
    path = tdir / TOKENIZER_FILE
    if not path.is_file():
        log(f"fitting tokenizer {tdir.name}")
        fit_tokenizer.run(cfg, tdir)
    return path


def _done(run_dir: Path) -> dict | None:
    p = run_dir / "eval" / "linprobe.json"
    return json.loads(p.read_text()) if p.is_file() else None


def run_row(row: Row, out: Path, log) -> dict:
    """Fit (or reuse) the tokenizer, pretrain, probe. Returns the result record."""
    from . import linprobe, pretrain
    from .common import load_run

    from ..config import diff_configs
    from .common import CONFIG_FILE, read_run_config

    run_dir = out / "rows" / row.name
    cfg = copy.deepcopy(row.cfg)
    shared = not cfg.tokenizer.path  # else the user named a fitted tokenizer for every row
    if shared:
        cfg.tokenizer.path = str(out / "tokenizers" / tokenizer_key(cfg) / "tokenizer.safetensors")
    if (run_dir / CONFIG_FILE).is_file():  # a finished or interrupted row must be this row
        ignorable = ("train.threads", "train.device", "train.log_every", "train.ckpt_every",
                     "train.keep_ckpts", "train.tensorboard", "data.num_workers", "linprobe.", "sample.", "fid.",
                     "tokenizer.path")  # the tokenizer's own settings are compared key by key
        changed = [c for c in diff_configs(cfg, read_run_config(run_dir)) if not c.startswith(ignorable)]
        if changed:
            raise ConfigError(f"{run_dir} was run with another config ({'; '.join(changed)}); use "
                              "another --out, or delete that row's directory to rerun it.")
    res = _done(run_dir)
    summary_path = run_dir / "train_summary.json"
    if res is not None and summary_path.is_file():
        _row_fid(row, cfg, run_dir, log)
        return {"status": "done (cached)", "probe": res, "pretrain": json.loads(summary_path.read_text())}
    if shared:
        _fit_tokenizer(cfg, out, log)
    t0 = time.perf_counter()
    summary = pretrain.run(cfg, run_dir, resume="auto")
    t1 = time.perf_counter()
    from ..dist import setup

    rt = setup(cfg.train.device, cfg.train.threads)
    den = load_run(run_dir, use_ema=True, device=rt.device)[1]
    probe = linprobe.run(cfg, run_dir, den, rt)
    t2 = time.perf_counter()
    _row_fid(row, cfg, run_dir, log)
    return {"status": "ran", "probe": probe, "pretrain": summary,
            "seconds": {"pretrain": round(t1 - t0, 1), "probe": round(t2 - t1, 1)}}


def _row_fid(row: Row, cfg: Config, run_dir: Path, log) -> None:
    """Tab. 1 reports FID beside accuracy: with ``fid.weights`` set, a Tab. 1 row also samples
    ``fid.n`` images and scores them (``eval/fid-*.json``); a failure is reported, not fatal."""
    if row.table != "tab1" or not cfg.fid.weights:
        return
    have = _fid_of(run_dir)
    if have is not None and have["n"] >= cfg.fid.n:
        return
    from ..errors import LdaeError
    from . import fid

    try:
        rec = fid.run(cfg, run_dir)
        log(f"{row.name}: FID {rec['fid']:.2f} (n = {rec['n']})")
    except LdaeError as e:
        log(f"{row.name}: FID not computed: {e}")


def _fid_of(run_dir: Path) -> dict | None:
    """A row's FID with the most samples (the newest among equals): {"fid", "n"}, or None."""
    best = None
    for p in (run_dir / "eval").glob("fid-*.json"):
        rec = json.loads(p.read_text())
        key = (rec.get("n") or 0, p.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, {"fid": rec.get("fid"), "n": rec.get("n")})
    return best[1] if best else None


def run(scale: str, out: Path, rows: str | None = None, overrides: list[str] | None = None,
        full: bool = False, show=print) -> list[dict]:
    """Run the selected rows at ``scale`` into ``out``; returns the result records."""
    out = Path(out)
    overrides = list(overrides or [])
    overrides.append(f"linprobe.fast={'false' if full else 'true'}")
    layer, _ = load_scale(scale)
    base = load_config(None, overrides, layers=[copy.deepcopy(layer)])  # bad overrides fail here, before any work
    names = select(rows)
    built = {n: build_row(n, scale, overrides) for n in names}
    for r in list(built.values()):  # a reused row needs the row it reuses
        if r.same_as and r.same_as not in built:
            built[r.same_as] = build_row(r.same_as, scale, overrides)
    order = row_names()
    todo = sorted(built.values(), key=lambda r: order.index(r.name))
    skipped = [r for r in todo if r.skip]
    if rows and rows != "all" and skipped and len(skipped) == len(todo):
        raise ConfigError(f"row {skipped[0].name} cannot run at scale {scale}: {skipped[0].skip}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"scale": scale, "overrides": overrides, "rows": [r.name for r in todo],
            "hardware": hardware(base.train.threads),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(out / "trajectory.json", meta)
    show(f"trajectory at scale {scale}: {len(todo)} rows into {out} "
         f"({len(skipped)} cannot run here: {', '.join(r.name for r in skipped) or 'none'})")
    results: dict[str, dict] = {}
    for r in todo:
        if r.skip:
            results[r.name] = {"status": "skipped", "reason": r.skip}
            continue
        if r.same_as:
            continue
        show(f"== {r.name}: {r.title}")
        try:
            results[r.name] = run_row(r, out, show)
        except ConfigError as e:  # e.g. the run dir holds another config: say so, go on
            results[r.name] = {"status": "failed", "reason": str(e)}
            show(f"{r.name}: {e}")
        write_results(out, scale, _with_finished(out, scale, todo, overrides, results), results)
    _fill_same_as(todo, results)
    write_results(out, scale, _with_finished(out, scale, todo, overrides, results), results)
    return [{"row": r.name, **results.get(r.name, {})} for r in todo]


def _fill_same_as(todo: list[Row], results: dict[str, dict]) -> None:
    """A ``same_as`` row reports the result of the row it reuses."""
    for r in todo:
        if r.same_as and not r.skip:
            src = results.get(r.same_as, {"status": "skipped", "reason": f"{r.same_as} did not run"})
            results[r.name] = {**src, "status": f"same as {r.same_as}"}


def load_records(out: Path) -> tuple[str, list[dict]]:
    """(scale, result records) of a trajectory dir as it stands on disk, from ``trajectory.json``
    and the rows' ``eval/linprobe.json``: what ``write_results`` tabulates and ``plot_all`` draws,
    for redrawing the plots (``ldae figures``) without running anything."""
    out = Path(out)
    path = out / "trajectory.json"
    if not path.is_file():
        raise ConfigError(f"{out} is not a trajectory dir: trajectory.json is missing. Give the --out "
                          "folder of an `ldae trajectory` run.")
    meta = json.loads(path.read_text())
    scale, overrides = meta["scale"], list(meta.get("overrides") or [])
    todo = [build_row(n, scale, overrides) for n in meta.get("rows") or []]
    results: dict[str, dict] = {}
    for r in todo:
        if r.skip:
            results[r.name] = {"status": "skipped", "reason": r.skip}
        elif not r.same_as and (probe := _done(out / "rows" / r.name)) is not None:
            results[r.name] = {"status": "done (cached)", "probe": probe,
                               "pretrain": _summary(out / "rows" / r.name)}
    _fill_same_as(todo, results)
    return scale, records(_with_finished(out, scale, todo, overrides, results), results, out)


def _with_finished(out: Path, scale: str, todo: list[Row], overrides: list[str],
                   results: dict[str, dict]) -> list[Row]:
    """``todo`` plus every row already finished in ``out`` (by this or an earlier or concurrent
    invocation), so results.md always shows everything the directory holds."""
    names = {r.name for r in todo}
    extra = []
    for n in row_names():
        probe = None if n in names else _done(out / "rows" / n)
        if probe is None:
            continue
        extra.append(build_row(n, scale, overrides))
        results.setdefault(n, {"status": "done (cached)", "probe": probe,
                               "pretrain": _summary(out / "rows" / n)})
    order = row_names()
    return sorted(todo + extra, key=lambda r: order.index(r.name))


def _summary(run_dir: Path) -> dict:
    p = run_dir / "train_summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def hardware(threads: int = 0) -> str:
    import torch

    from ..dist import pick_threads

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


# ------------------------------------------------------------------------------------- results
CSV_FIELDS = ("row", "table", "title", "paper_acc", "paper_fid", "top1", "top5", "fid", "fid_n", "status", "tokenizer",
              "d", "full_dim", "model", "epochs", "pretrain_s", "probe_s", "img_per_s", "final_loss",
              "probe_mode", "reason")


def _record(r: Row, res: dict) -> dict:
    probe, pre = res.get("probe") or {}, res.get("pretrain") or {}
    c = r.cfg
    rec = {"row": r.name, "table": r.table, "title": r.title, "paper_acc": r.paper_acc,
           "paper_fid": r.paper_fid, "top1": probe.get("top1"), "top5": probe.get("top5"),
           "status": res.get("status", "not run"), "reason": res.get("reason", "") or "",
           "tokenizer": c.tokenizer.name if c else "", "d": c.tokenizer.dim if c else "",
           "full_dim": 3 * c.model.patch_size ** 2 if c else "", "model": c.model.name if c else "",
           "epochs": c.optim.epochs if c else "", "pretrain_s": pre.get("wall_seconds"),
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
        if out is not None and (f := _fid_of(out / "rows" / r.name)) is not None:
            got["fid"] = f
        return got

    return [_record(r, res(r)) for r in rows]


def write_results(out: Path, scale: str, rows: list[Row], results: dict[str, dict]) -> None:
    recs = records(rows, results, out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in recs:
        w.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in CSV_FIELDS})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", results_markdown(scale, recs, out))
    try:
        plot_all(out, recs)
    except Exception as e:  # a plot must never lose the table
        print(f"trajectory: plotting failed ({type(e).__name__}: {e})")


def results_markdown(scale: str, recs: list[dict], out: Path) -> str:
    meta = json.loads((out / "trajectory.json").read_text()) if (out / "trajectory.json").is_file() else {}
    lines = [f"# ldae trajectory at scale `{scale}`", "",
             f"Hardware: {meta.get('hardware', '?')}. Started {meta.get('started', '?')}. "
             f"Command: `ldae trajectory --scale {scale} --out {out}"
             f"{' ' + ' '.join(meta.get('overrides', [])) if meta.get('overrides') else ''}`.",
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
        lines += [f"## {TABLES.get(table, table)}", "",
                  "| row | system | d | paper acc | paper FID | ours top-1 | ours top-5 | ours FID (n) | Δ vs parent: paper / ours | status |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for rec in rs:
            delta = "—"
            prev = by_name.get(_parent(rec["row"]))
            if prev is not None and table in ("tab1", "tab3", "sec5") and not rec["status"].startswith("same as"):
                dp = _diff(rec["paper_acc"], prev["paper_acc"])
                do = _diff(rec["top1"], prev["top1"])
                if dp is not None or do is not None:
                    agree = "" if dp is None or do is None else (" ✓" if dp * do > 0 else " ✗")
                    delta = f"{_sgn(dp)} / {_sgn(do)}{agree}"
            status = rec["status"] + (f": {_first_sentence(rec['reason'])}" if rec["reason"] else "")
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


def _parent(name: str) -> str | None:
    return _raw_row(name).get("inherit")


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].replace("|", "/").replace("\n", " ")


def _diff(a, b):
    return None if a in (None, "") or b in (None, "") else float(a) - float(b)


def _sgn(v) -> str:
    return "—" if v is None else f"{v:+.1f}"


def plot_all(out: Path, recs: list[dict], figdir: Path | None = None) -> list[Path]:
    """Fig. 6 (the trajectory), Tab. 2's plot and Fig. 5, paper beside ours, as PNG into
    ``figdir`` (default ``out/figures``); returns the files written (a plot without data is not
    drawn)."""
    from ..plots import pyplot, save_png

    plt = pyplot()
    by = {r["row"]: r for r in recs}
    figdir = Path(figdir) if figdir is not None else out / "figures"
    written: list[Path] = []

    def save(fig, name):
        written.append(save_png(fig, figdir / f"{name}.png"))

    def paper(name):
        return _nan((_own_row(name).get("paper") or {}).get("acc"))

    def ours(name):
        return _nan((by.get(name) or {}).get("top1"))

    if any(not math.isnan(ours(n)) for n in FIG6_CHAIN):
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
        save(fig, "trajectory")

    tab2 = [r for r in recs if r["table"] == "tab2" or r["row"] == "tab1-linear-gamma2"]
    if any(r["top1"] is not None for r in tab2):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        for tok, mk in (("conv_vae", "s"), ("patch_vae", "^"), ("patch_ae", "v"), ("pca", "o")):
            stem = f"tab2-{tok.replace('_', '-')}-d"
            names = {d: f"{stem}{d}" for d in PAPER_D}
            axes[0].plot(PAPER_D, [paper(names[d]) if names[d] in _all_rows() else math.nan
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
        save(fig, "tab2")

    f5 = [f"fig5-pixel-{px}" for px in PAPER_PIXEL]
    if any(not math.isnan(ours(n)) for n in f5):
        fig, ax = plt.subplots(figsize=(6, 3.9), constrained_layout=True)
        dims = {n: (by.get(n) or {}).get("d") for n in f5}
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
        save(fig, "fig5")
    return written


def _all_rows() -> set[str]:
    return set(preset_names("trajectory"))


def _nan(v) -> float:
    return float("nan") if v in (None, "") else float(v)


def describe(scale: str, rows: str | None = None, overrides: list[str] | None = None) -> str:
    """One line per row: its resolved objective and sizes at ``scale`` (``--list``)."""
    lines = [f"rows at scale {scale}:"]
    for n in select(rows):
        r = build_row(n, scale, overrides)
        if r.cfg is None:
            lines.append(f"  {n:24s} [cannot run here: {_first_sentence(r.skip)}]")
            continue
        c, dz = r.cfg, r.cfg.diffusion
        extra = f" same as {r.same_as}" if r.same_as else ""
        lines.append(f"  {n:24s} {c.tokenizer.name}:d={c.tokenizer.dim} {dz.schedule}/{dz.target}/"
                     f"{dz.loss_weight} in={dz.input_space} out={dz.output_space} "
                     f"cond={'y' if c.model.class_cond else 'n'} {c.model.name} {c.optim.epochs:g}ep "
                     f"crop={c.data.crop}{extra}")
    return "\n".join(lines)


__all__ = ["row_names", "build_row", "select", "run", "describe", "tokenizer_key", "load_scale",
           "load_records", "plot_all", "TABLES"]
