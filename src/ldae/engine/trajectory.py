"""``ldae trajectory``: the paper's deconstruction (Tab. 1, Tab. 2, Fig. 5, Tab. 3, Sec. 5) and its
comparison with MAE and MoCo v3 (Tab. 4) as runs.

A **row** is a named config in ``configs/trajectory/`` that inherits from the row before it, as
the paper builds each line on the previous one. Its ``row:`` section says where it sits (table,
order, title, the paper's numbers) and what it means in the paper's units: the latent dim ``d``
(8..128 per 16x16x3 patch), the pixel tokenizer's image size (256..32 px), the number of
epochs (400 = the default), the model ``size`` (B, halfL, L) and ``lr_scale`` (a peak lr relative
to the scale's l-DAE lr, for Tab. 4's baselines). A **scale** in
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

An ``equal_time: ROW`` row (Tab. 4 at equal wall time) is its parent trained for as long as ROW
took on this machine: its epochs and warmup are the parent's scaled by the ratio of the two
finished runs' pretraining wall times (``train_summary.json``), so both run before it; selecting
it selects them.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..checkpoint import atomic_write_json
from ..config import (Config, TokenizerConfig, diff_configs, find_preset, load_config, preset_names,
                      read_preset, validate)
from ..dist import setup
from ..errors import ConfigError, LdaeError
from ..tokenizers.pixel import PixelTokenizer
from . import fid, fit_tokenizer, linprobe, pretrain
from .common import CONFIG_FILE, TOKENIZER_FILE, load_run, read_run_config
from .trajectory_report import RowMeta, fid_of, first_sentence, hardware, records, write_results

TABLES = {
    "tab1": "Tab. 1: reorienting the DDM for self-supervised learning",
    "tab2": "Tab. 2: linear probe vs latent dim d, four tokenizers",
    "fig5": "Fig. 5: pixel tokenizer (noise added to pixels), token count fixed",
    "tab3": "Tab. 3: toward a classical DAE (from patch-wise PCA)",
    "sec5": "Sec. 5: random crop, epochs, model size",
    "tab4": "Tab. 4: l-DAE beside MAE and MoCo v3 on the same ViT, data and probe",
}
# row keys that belong to the file itself, never inherited from the row before it
OWN_KEYS = ("title", "paper", "same_as", "order", "equal_time")


@dataclass
class Row:
    name: str
    table: str
    order: int
    title: str
    paper_acc: float | None = None
    paper_fid: float | None = None
    same_as: str | None = None
    equal_time: str | None = None  # trained for as long as this row took (Tab. 4 at equal wall time)
    parent: str | None = None  # the row it inherits
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
    return yaml.safe_load(find_preset(name, "trajectory").read_text()) or {}


def _own_row(name: str) -> dict:
    return _raw_row(name).get("row") or {}


def row_meta() -> RowMeta:
    """What the report needs of every row: the tables' titles, each row's parent (its
    ``inherit:``) and its own paper top-1."""
    names = row_names()
    return RowMeta(tables=TABLES, parents={n: _raw_row(n).get("inherit") for n in names},
                   paper_acc={n: (_own_row(n).get("paper") or {}).get("acc") for n in names},
                   equal_time={n: _own_row(n)["equal_time"] for n in names if _own_row(n).get("equal_time")})


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
        out += [f"tokenizer.pixel_size={px}",
                f"tokenizer.dim={PixelTokenizer.token_dim(cfg0.data.image_size, cfg0.model.patch_size, px)}"]
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
    if meta.get("lr_scale"):
        out.append(f"optim.blr={cfg0.optim.blr * float(meta['lr_scale'])}")
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
              same_as=meta.get("same_as"), equal_time=meta.get("equal_time"),
              parent=_raw_row(name).get("inherit"), meta=meta)
    try:
        cfg0 = load_config(None, overrides, check=False, layers=[copy.deepcopy(layer), merged])
        row.cfg = load_config(None, list(overrides or []) + _derived(meta, smeta, cfg0, name),
                              layers=[copy.deepcopy(layer), merged])
    except ConfigError as e:
        row.skip = str(e)
    return row


def select(spec: str | None) -> list[str]:
    """Row names from a comma list of names, tables (tab1, tab2, fig5, tab3, sec5, tab4) or globs."""
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
    have = fid_of(run_dir)
    if have is not None and have["n"] >= cfg.fid.n:
        return
    try:
        rec = fid.run(cfg, run_dir)
        log(f"{row.name}: FID {rec['fid']:.2f} (n = {rec['n']})")
    except LdaeError as e:
        log(f"{row.name}: FID not computed: {e}")


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
    pending = list(built.values())
    while pending:  # the rows a selected row needs: the one it reuses, or its equal-time references
        for dep in _needs(pending.pop()):
            if dep not in built:
                built[dep] = build_row(dep, scale, overrides)
                pending.append(built[dep])
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
    rmeta = row_meta()
    for r in todo:
        if r.skip:
            results[r.name] = {"status": "skipped", "reason": r.skip}
            continue
        if r.same_as:
            continue
        if r.equal_time and not match_wall_time(r, results):
            results[r.name] = {"status": "skipped", "reason": r.skip}
            continue
        show(f"== {r.name}: {r.title}")
        try:
            results[r.name] = run_row(r, out, show)
        except ConfigError as e:  # e.g. the run dir holds another config: say so, go on
            results[r.name] = {"status": "failed", "reason": str(e)}
            show(f"{r.name}: {e}")
        write_results(out, scale, _with_finished(out, scale, todo, overrides, results), results, rmeta)
    _fill_same_as(todo, results)
    write_results(out, scale, _with_finished(out, scale, todo, overrides, results), results, rmeta)
    return [{"row": r.name, **results.get(r.name, {})} for r in todo]


def _needs(r: Row) -> list[str]:
    """The rows ``r`` cannot run without: the one it reuses, or the two whose wall times set its epochs."""
    if r.same_as:
        return [r.same_as]
    return [r.equal_time, r.parent] if r.equal_time else []


def match_wall_time(r: Row, results: dict[str, dict]) -> bool:
    """Give an ``equal_time`` row its budget: its parent's epochs and warmup scaled by the ratio
    of the two references' measured pretraining wall times (``results[...]["pretrain"]``, which
    a finished row's ``train_summary.json`` also holds). False, with ``r.skip`` saying why, when a
    reference has not finished or the scaled budget is not a valid config."""
    if r.cfg is None:
        return False
    if "time_factor" in r.meta:  # already given its budget
        return True
    walls = {n: ((results.get(n) or {}).get("pretrain") or {}).get("wall_seconds") for n in (r.equal_time, r.parent)}
    missing = [n for n, w in walls.items() if not w]
    if missing:
        r.skip = (f"needs {' and '.join(missing)} finished first: the pretraining wall times of "
                  f"{r.equal_time} and {r.parent} set its epochs. Run them (or select this row: "
                  "that selects them).")
        return False
    f = walls[r.equal_time] / walls[r.parent]
    cfg = copy.deepcopy(r.cfg)
    cfg.optim.epochs = round(cfg.optim.epochs * f, 4)
    cfg.optim.warmup_epochs = round(cfg.optim.warmup_epochs * f, 4)
    try:
        validate(cfg)
    except ConfigError as e:
        r.skip = f"the equal-time budget ({cfg.optim.epochs:g} epochs) is not a valid config: {e}"
        return False
    r.cfg, r.meta["time_factor"] = cfg, round(f, 4)
    return True


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
    for r in todo:
        if r.equal_time and not r.skip:
            match_wall_time(r, results)
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
    for r in extra:  # a rebuilt equal-time row gets its budget from the finished runs
        if r.equal_time:
            match_wall_time(r, results)
    order = row_names()
    return sorted(todo + extra, key=lambda r: order.index(r.name))


def _summary(run_dir: Path) -> dict:
    p = run_dir / "train_summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def describe(scale: str, rows: str | None = None, overrides: list[str] | None = None) -> str:
    """One line per row: its resolved objective and sizes at ``scale`` (``--list``)."""
    lines = [f"rows at scale {scale}:"]
    for n in select(rows):
        r = build_row(n, scale, overrides)
        if r.cfg is None:
            lines.append(f"  {n:24s} [cannot run here: {first_sentence(r.skip)}]")
            continue
        c, dz = r.cfg, r.cfg.diffusion
        extra = f" same as {r.same_as}" if r.same_as else ""
        if r.equal_time:
            extra = f" (epochs x wall time of {r.equal_time} / {r.parent})"
        what = (f"{dz.schedule}/{dz.target}/{dz.loss_weight} in={dz.input_space} out={dz.output_space}"
                if c.objective.name == "diffusion" else f"objective={c.objective.name}")
        lines.append(f"  {n:24s} {c.tokenizer.name}:d={c.tokenizer.dim} {what} "
                     f"cond={'y' if c.model.class_cond else 'n'} {c.model.name} {c.optim.epochs:g}ep "
                     f"crop={c.data.crop}{extra}")
    return "\n".join(lines)


__all__ = ["row_names", "build_row", "select", "run", "describe", "tokenizer_key", "load_scale",
           "load_records", "row_meta", "match_wall_time", "TABLES"]
