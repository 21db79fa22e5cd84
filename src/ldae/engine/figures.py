"""``ldae figures``: the paper's figures that show data, redrawn from a run or a trajectory dir.

From a **run dir** (``ldae pretrain``) into ``OUT`` (default ``RUN/figures``):

- ``fig3-schedules.png``  Fig. 3: gamma_t^2 and sigma_t against t for every schedule of
  ``diffusion.schedules.SCHEDULES`` at the run's T, the run's own schedule drawn bold.
- ``fig4-filters-<name>.png``  Fig. 4: the tokenizer's encoder filters as RGB tiles, each scaled
  to its own [min, max]: the first 16 rows of V (PCA: the first 16 of its D principal
  components, the d the run keeps framed; patch AE/VAE: its d rows; conv VAE: the 16 largest 3x3 filters
  of its first conv, which is not a patch projection). The pixel tokenizer has no filters: skipped.
- ``fig7-noise.png``  Fig. 7: clean | pixel noise x + sigma eps | what the tokenizer keeps of x,
  decode(encode(x)) | latent noise decode(encode(x) + sigma eps), the l-DAE's image-space input;
  sigma = sqrt(1/3) in both, on validation images. A tokenizer other than PCA is used as it is
  ("latent noise through <name>").
- ``fig8-denoising.png``  Fig. 8: per validation image, clean | noisy network input | denoised,
  at a few t (default T/10, T/4, T/2; levels with the same sigma drawn once). Denoised = the
  network's raw output for image-space outputs (Eq. 4's prediction of all D dims, what the paper
  shows), else decode(predict_z0). EMA weights when the run kept them; seeded.
- ``training.png``  loss and lr against images seen (``plots.training_curves``).

From a **trajectory dir** (``ldae trajectory``): the trajectory's plots (Fig. 6, Tab. 2, Fig. 5)
from ``trajectory.json`` and the rows' results, Fig. 3, Fig. 4 for every tokenizer in
``tokenizers/``, Fig. 7 with the PCA fit at row tab3-ldae's d; and per finished row (one with a
checkpoint) its ``training.png`` and ``fig8-denoising.png`` in ``rows/<row>/figures/`` (or
``OUT/rows/<row>/`` when ``out`` is given, leaving the trajectory untouched).

A figure that cannot be made is skipped with ``figures: skipped <name>: <reason>``; the others
are still drawn. ``OUT/figures.md`` lists every figure with a one-line caption.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from ..checkpoint import atomic_write_text, latest
from ..errors import ConfigError, LdaeError
from ..plots import training_curves
from ..tokenizers import load_tokenizer
from .common import read_run_config
from .panels import (FIG7_IMAGES, SIGMA_FIG7, Skip, denoise_panels, fig3_schedules,  # noqa: F401
                     fig4_filters, fig7_noise, fig8_denoising, noise_panels, run_tokenizer,
                     val_images)
from .trajectory import build_row, load_records, row_meta
from .trajectory_report import plot_all

LDAE_ROW = "tab3-ldae"  # the trajectory row whose d Fig. 7 uses


@dataclass
class Figures:
    """The figures written so far, with captions; ``make`` reports and skips failures."""
    show: Callable[[str], None] = print
    items: list[tuple[Path, str]] = field(default_factory=list)

    def make(self, name: str, fn: Callable[[], "tuple[Path | None, str] | list[tuple[Path, str]]"]
             ) -> None:
        try:
            got = fn()
        except (Skip, LdaeError, OSError, ValueError) as e:
            self.show(f"figures: skipped {name}: {e}")
            return
        except Exception as e:  # one figure must never stop the others
            self.show(f"figures: skipped {name}: {type(e).__name__}: {e}")
            return
        for path, caption in got if isinstance(got, list) else [got]:
            if path is None:
                self.show(f"figures: skipped {name}: {caption}")
            else:
                self.items.append((Path(path), caption))


# ------------------------------------------------------------------------------------ entry
def target_kind(target: Path) -> str:
    """'trajectory' (has trajectory.json) or 'run' (has config.yaml); else ConfigError."""
    target = Path(target)
    if (target / "trajectory.json").is_file():
        return "trajectory"
    if (target / "config.yaml").is_file():
        return "run"
    what = "does not exist" if not target.exists() else "holds neither config.yaml nor trajectory.json"
    raise ConfigError(f"ldae figures: {target} {what}. Give a run dir (the --out of `ldae pretrain`, "
                      "with config.yaml) or a trajectory dir (the --out of `ldae trajectory`, with "
                      "trajectory.json).")


def run(target: Path, out: Path | None = None, tokenizers: Sequence[Path] = (),
        t: Sequence[int] | None = None, n_images: int = 8, device: str = "cpu",
        show: Callable[[str], None] = print, captions: dict | None = None) -> list[Path]:
    """Draw every figure ``target`` (a run or trajectory dir) supports into ``out``; returns the
    PNG paths. ``tokenizers``: extra tokenizer files for Fig. 4; ``t``: Fig. 8's steps;
    ``captions``: a dict to fill with {path: one-line caption} (see ``summary_markdown``)."""
    target = Path(target)
    kind = target_kind(target)
    out = Path(out) if out is not None else target / "figures"
    figs = Figures(show)
    dev = torch.device(device)
    cache: dict = {}
    if kind == "run":
        _run_figures(target, out, figs, t, n_images, dev, cache, extra_tokenizers=tokenizers)
    else:
        _trajectory_figures(target, out, figs, tokenizers, t, n_images, dev, cache,
                            rows_out=None if out == target / "figures" else out / "rows")
    if figs.items:
        atomic_write_text(out / "figures.md", summary_markdown([p for p, _ in figs.items], out,
                                                               dict(figs.items), heading=f"# Figures of {target}"))
    if captions is not None:
        captions.update(dict(figs.items))
    return [p for p, _ in figs.items]


def summary_markdown(paths: Sequence[Path], relative_to: Path, captions: dict | None = None,
                     heading: str = "## Figures") -> str:
    """Markdown that embeds ``paths`` (links relative to ``relative_to``, the folder of the report),
    each with its caption (from ``captions``, else one derived from the file name)."""
    captions = {Path(k): v for k, v in (captions or {}).items()}
    lines = [heading, ""] if heading else []
    for p in paths:
        p = Path(p)
        rel = Path(os.path.relpath(p, relative_to)).as_posix()
        parts = rel.split("/")
        alt = f"{parts[parts.index('rows') + 1]}: {p.stem}" if "rows" in parts[:-2] else p.stem
        lines += [f"![{alt}]({rel})", "", f"*{captions.get(p) or default_caption(p)}*", ""]
    return "\n".join(lines)


def default_caption(path: Path) -> str:
    name = Path(path).stem
    known = {"fig3-schedules": "Fig. 3: noise schedules, γ_t² and σ_t against t.",
             "fig7-noise": "Fig. 7: pixel noise vs latent noise (inverse PCA), σ = √(1/3).",
             "fig8-denoising": "Fig. 8: clean / noisy (the network's input) / denoised.",
             "training": "Training loss, learning rate and (when monitored) online kNN top-1 against images seen.",
             "trajectory": "Fig. 6: the deconstructive trajectory, paper beside ours.",
             "tab2": "Tab. 2: linear probe accuracy against the latent dim d, four tokenizers.",
             "fig5": "Fig. 5: pixel tokenizer at several image sizes, token count fixed."}
    if name.startswith("fig4-filters-"):
        return f"Fig. 4: filters of the tokenizer {name[len('fig4-filters-'):]}."
    return known.get(name, name)


def _names(figs: Figures) -> set[str]:
    return {p.stem[len("fig4-filters-"):] for p, _ in figs.items if p.stem.startswith("fig4-filters-")}


# ------------------------------------------------------------------------------- run dir
def _run_figures(run_dir: Path, out: Path, figs: Figures, t, n_images: int, dev, cache: dict,
                 schedules: bool = True, filters: bool = True, noise: bool = True,
                 extra_tokenizers: Sequence[Path] = ()) -> None:
    cfg = read_run_config(run_dir)
    if schedules:
        figs.make("fig3-schedules", lambda: fig3_schedules(out / "fig3-schedules.png", cfg.diffusion.num_steps,
                                                           cfg.diffusion.sigma0, mark=cfg.diffusion.schedule))
    tok = None
    if filters or noise:
        try:
            tok = run_tokenizer(cfg, run_dir)
        except LdaeError as e:
            figs.show(f"figures: skipped fig4-filters, fig7-noise: {e}")
    if tok is not None and filters:
        figs.make(f"fig4-filters-{tok.name}", lambda: fig4_filters(
            tok, out / f"fig4-filters-{tok.name}.png", f"{run_dir.name}'s tokenizer", keep=tok.dim))
    if filters:
        _filter_figures(figs, out, _extra_tokenizers(extra_tokenizers, taken=_names(figs)))
    if tok is not None and noise:
        figs.make("fig7-noise", lambda: fig7_noise(tok, val_images(cfg, min(n_images, FIG7_IMAGES), dev, cache)[0],
                                                   out / "fig7-noise.png", where=run_dir.name))
    figs.make("fig8-denoising", lambda: fig8_denoising(run_dir, out / "fig8-denoising.png", t, n_images,
                                                       dev, cache))

    def curves():
        p = training_curves(run_dir, out / "training.png")
        return p, (f"Training loss, learning rate and (when monitored) online kNN top-1 of {run_dir.name} against images seen." if p
                   else f"{run_dir}/metrics.jsonl is missing or holds no loss lines")
    figs.make("training", curves)


def _filter_figures(figs: Figures, out: Path, named: list[tuple[str, Path]], keep: int | None = None) -> None:
    for name, path in named:
        def one(name=name, path=path):
            tok = load_tokenizer(path)
            return fig4_filters(tok, out / f"fig4-filters-{name}.png", name, keep=keep)
        figs.make(f"fig4-filters-{name}", one)


def _extra_tokenizers(paths: Sequence[Path], taken: set[str]) -> list[tuple[str, Path]]:
    """(unique figure name, file) for tokenizer files: the file's stem, or its folder's name for
    the usual ``<dir>/tokenizer.safetensors``."""
    out = []
    for p in paths:
        p = Path(p)
        base = p.parent.name if p.stem == "tokenizer" and p.parent.name else p.stem
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        out.append((name, p))
    return out


# ---------------------------------------------------------------------------- trajectory
def _trajectory_figures(tdir: Path, out: Path, figs: Figures, tokenizers, t, n_images: int, dev,
                        cache: dict, rows_out: Path | None) -> None:
    scale = None

    def plots():
        nonlocal scale
        scale, recs = load_records(tdir)
        paths = plot_all(tdir, recs, row_meta(), figdir=out)
        if not paths:
            return [(None, "no row has a result yet")]
        return [(p, default_caption(p)) for p in paths]
    figs.make("trajectory plots", plots)

    ref = _reference_config(tdir, scale)
    d = ref.diffusion if ref is not None else SimpleNamespace(num_steps=1000, sigma0=SIGMA_FIG7)
    figs.make("fig3-schedules", lambda: fig3_schedules(out / "fig3-schedules.png", d.num_steps, d.sigma0))

    found = sorted((tdir / "tokenizers").glob("*/tokenizer.safetensors")) + sorted((tdir / "tokenizers").glob("*.safetensors"))
    named = _extra_tokenizers(found, set()) + _extra_tokenizers(tokenizers, {p.parent.name for p in found})
    _filter_figures(figs, out, named)

    def noise():
        if ref is None:
            raise Skip("no row config to read the data settings from")
        pca = None
        for _, p in sorted(named, key=lambda item: not item[0].startswith("pca")):  # PCA files first
            tok = load_tokenizer(p)
            if tok.full_basis and tok.patch_size == ref.model.patch_size:  # with_dim serves any d
                pca = tok
                break
        if pca is None:
            raise Skip("no PCA tokenizer in tokenizers/")
        dim = ref.tokenizer.dim if ref.tokenizer.name == "pca" else pca.dim
        pca = pca.with_dim(dim)
        x = val_images(ref, min(n_images, FIG7_IMAGES), dev, cache)[0]
        return fig7_noise(pca, x, out / "fig7-noise.png", where=f"{tdir.name}, d of {LDAE_ROW}")
    figs.make("fig7-noise", noise)

    for row in sorted(p for p in (tdir / "rows").glob("*") if p.is_dir()):
        if latest(row) is None:
            figs.show(f"figures: skipped rows/{row.name}: no checkpoint (the row has not trained)")
            continue
        dest = row / "figures" if rows_out is None else rows_out / row.name
        _run_figures(row, dest, figs, t, n_images, dev, cache, schedules=False, filters=False, noise=False)


def _reference_config(tdir: Path, scale: str | None):
    """The config Fig. 3 and Fig. 7 use in a trajectory: row tab3-ldae's (its run dir, else the
    row built at the trajectory's scale), else any row's run config; None when there is none."""
    p = tdir / "rows" / LDAE_ROW
    if (p / "config.yaml").is_file():
        return read_run_config(p)
    if scale is not None:
        try:
            meta = json.loads((tdir / "trajectory.json").read_text())
            r = build_row(LDAE_ROW, scale, list(meta.get("overrides") or []))
            if r.cfg is not None:
                return r.cfg
        except LdaeError:
            pass
    for c in sorted((tdir / "rows").glob("*/config.yaml")):
        return read_run_config(c.parent)
    return None


__all__ = ["run", "summary_markdown", "noise_panels", "denoise_panels", "fig3_schedules",
           "fig4_filters", "fig7_noise", "fig8_denoising", "target_kind", "SIGMA_FIG7"]
