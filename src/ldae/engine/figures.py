"""``ldae figures``: the paper's figures that show data, redrawn from a run or a trajectory dir.

From a **run dir** (``ldae pretrain``) into ``OUT`` (default ``RUN/figures``):

- ``fig3-schedules.png``  Fig. 3: gamma_t^2 and sigma_t against t for every schedule of
  ``diffusion.objective.SCHEDULES`` at the run's T, the run's own schedule drawn bold.
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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from ..checkpoint import atomic_write_text
from ..errors import ConfigError, LdaeError

SIGMA_FIG7 = math.sqrt(1.0 / 3.0)  # the paper's Fig. 7 (and the single-level l-DAE's sigma0)
FIG7_IMAGES = 4  # rows of Fig. 7 (at most n_images)
MAX_FILTERS = 16  # tiles of Fig. 4 (the paper shows d = 16)
LDAE_ROW = "tab3-ldae"  # the trajectory row whose d Fig. 7 uses
SEED = 0


class Skip(Exception):
    """A figure that does not apply to this run (e.g. a tokenizer without filters)."""


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
    from ..plots import training_curves
    from .common import read_run_config

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


def run_tokenizer(cfg, run_dir: Path):
    """The run's tokenizer at the run's d: its own ``tokenizer.safetensors`` when present (a
    trajectory row keeps a copy), else what ``tokenizer.path`` names."""
    from ..tokenizers import load_tokenizer
    from .common import TOKENIZER_FILE, tokenizer_for

    own = Path(run_dir) / TOKENIZER_FILE
    if not own.is_file():
        tok = tokenizer_for(cfg, run_dir)
        if tok is None:
            raise Skip(f"{run_dir} has no {TOKENIZER_FILE} and tokenizer.path is empty")
        return tok
    tok = load_tokenizer(own)
    return tok.with_dim(cfg.tokenizer.dim) if tok.dim != cfg.tokenizer.dim else tok


def val_images(cfg, n: int, device, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` validation images (float, [-1, 1]) spread evenly over the val split, and labels."""
    from ..data import build_dataset, to_float

    key = repr(cfg.data)
    if cache is None or key not in cache:
        ds = build_dataset(cfg, "val")
        if cache is not None:
            cache[key] = ds
    ds = cache[key] if cache is not None else ds
    N = len(ds)
    if N == 0:
        raise Skip("the val split is empty")
    idx = spread_indices(getattr(ds, "labels", None), N, n)
    if hasattr(ds, "gather"):
        x, y = ds.gather(idx)
    else:
        items = [ds[int(i)] for i in idx]
        x, y = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
    return to_float(x).to(device), torch.as_tensor(y).long().to(device)


def spread_indices(labels: torch.Tensor | None, N: int, n: int) -> torch.Tensor:
    """``n`` of ``N`` indices that show many classes: the first image of each class in turn
    (class 0, 1, ..., then each class's second image, ...), or an even stride without labels."""
    n = min(n, N)
    if labels is None or len(labels) != N:
        return torch.arange(n) * max(1, N // max(1, n))
    labels = torch.as_tensor(labels).long()
    order = torch.argsort(labels, stable=True)
    sorted_l = labels[order]
    start = torch.searchsorted(sorted_l, sorted_l)  # first position of each label's block
    occ = torch.empty_like(labels)
    occ[order] = torch.arange(N) - start  # how many earlier images share the label
    key = occ * (int(labels.max()) + 1) + (labels - int(labels.min()))
    return torch.argsort(key, stable=True)[:n]


# --------------------------------------------------------------------------------- Fig. 3
def fig3_schedules(path: Path, T: int = 1000, sigma0: float = SIGMA_FIG7, mark: str | None = None
                   ) -> tuple[Path, str]:
    from ..diffusion.objective import SCHEDULES, build_schedule
    from ..plots import pyplot, save_png

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.9), constrained_layout=True)
    styles = {"ddpm": "-", "linear_gamma2": "-", "sigma_linear": "--", "constant": ":"}
    t = torch.arange(T)
    for i, name in enumerate(SCHEDULES):
        s = build_schedule(SimpleNamespace(schedule=name, num_steps=T, sigma0=sigma0))
        bold = name == mark
        kw = dict(ls=styles.get(name, "-"), lw=3.0 if bold else 1.5, color=f"C{i}",
                  label=name + (" (this run)" if bold else "") + (" (γ ≡ 1)" if name in ("sigma_linear", "constant") else ""))
        a.plot(t, s.gamma.double() ** 2, **kw)
        b.plot(t, s.sigma, **kw)
    a.set_ylabel(r"$\gamma_t^2$  (signal kept in $z_t$)")
    b.set_ylabel(r"$\sigma_t$  (noise std in $z_t$)")
    for ax, ttl in ((a, r"$\gamma_t^2$ against t"), (b, r"$\sigma_t$ against t")):
        ax.set_xlabel(f"time step t (T = {T})")
        ax.set_title(ttl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    run = f"; this run: {mark}" if mark else ""
    fig.suptitle(r"Fig. 3: noise schedules, $z_t = \gamma_t z_0 + \sigma_t \epsilon$"
                 f" (constant: σ0 = {sigma0:.3f}){run}")
    return save_png(fig, path), (f"Fig. 3: noise schedules at T={T}, γ_t² (left) and σ_t (right) against "
                                 f"t{'; bold: this run (' + mark + ')' if mark else ''}.")


# --------------------------------------------------------------------------------- Fig. 4
def fig4_filters(tok, path: Path, label: str, keep: int | None = None) -> tuple[Path, str]:
    """The first ``MAX_FILTERS`` encoder filters of ``tok`` as RGB tiles in rows of 8, each scaled
    to its own [min, max]; tiles past ``keep`` (the d a run uses) faded."""
    from ..plots import image_grid, minmax01

    f = tok.filters()
    if f is None:
        raise Skip(f"the {tok.name} tokenizer has no encoder filters to draw")
    n_all = f.shape[0]
    f = f[:MAX_FILTERS].detach().float().cpu()
    n = f.shape[0]
    k = f.shape[-1]
    dtxt = dcap = f", d = {tok.dim}"
    if tok.name == "pca":
        if keep is None:  # a shared fit (trajectory): every d is a truncation of the same basis
            dtxt = ", any d (the full basis is kept; latent dim d = its first d rows)"
            dcap = ", one fit for every d"
        what = (f"first {n} of D = {n_all} principal components (rows of V)"
                + (f"; green frame: the d = {keep} the run keeps" if keep is not None and keep < n else ""))
    elif tok.name == "conv_vae":
        what = f"first conv's {k}x{k}x3 filters, {n} of {n_all} by norm (not a patch projection)"
        keep = None
    else:
        what = f"{'first ' if n < n_all else ''}{n} of d = {n_all} rows of the encoder V"
        keep = None
    cols = min(8, n)
    rows = -(-n // cols)
    tiles = [minmax01(f[i]) for i in range(n)]
    cells = [[tiles[r * cols + c] if r * cols + c < n else None for c in range(cols)] for r in range(rows)]
    titles = [[f"#{r * cols + c + 1}" if r * cols + c < n else "" for c in range(cols)] for r in range(rows)]
    framed = [[keep is not None and keep < n and r * cols + c < keep for c in range(cols)] for r in range(rows)]
    title = (f"Fig. 4: {label}: {tok.name}, patch {tok.patch_size}x{tok.patch_size}x3 "
             f"(D = {tok.full_dim}){dtxt}\n{what}\neach tile scaled to its own [min, max]")
    p = image_grid(cells, path, cell_titles=titles, title=title, tile_in=1.05, framed=framed, min_px=64)
    return p, f"Fig. 4: {label} ({tok.name}, patch {tok.patch_size}{dcap}): {what}."


# --------------------------------------------------------------------------------- Fig. 7
@torch.no_grad()
def noise_panels(tok, x: torch.Tensor, sigma: float = SIGMA_FIG7,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Fig. 7's columns as images (B, 3, H, W), unclipped: ``clean`` x, ``pixel_noise``
    x + sigma eps_pix, ``latent_clean`` decode(encode(x)) and ``latent_noise``
    decode(encode(x) + sigma eps_lat) (the l-DAE's image-space input at this sigma). The noise is
    drawn from ``generator`` in that order: eps_pix (shape of x), then eps_lat (shape of z)."""
    x = x.float()
    eps_pix = torch.randn(x.shape, generator=generator, device=x.device)
    z = tok.encode(x)
    eps_lat = torch.randn(z.shape, generator=generator, device=z.device)
    return {"clean": x, "pixel_noise": x + sigma * eps_pix,
            "latent_clean": tok.to_image(tok.decode(z)),
            "latent_noise": tok.to_image(tok.decode(z + sigma * eps_lat))}


def fig7_noise(tok, x: torch.Tensor, path: Path, sigma: float = SIGMA_FIG7, seed: int = SEED,
               where: str = "") -> tuple[Path, str]:
    from ..plots import image_grid, to_rgb01

    tok = tok.to(x.device).eval()
    g = torch.Generator(device=x.device).manual_seed(seed)
    pan = noise_panels(tok, x, sigma, g)
    kind = "PCA" if tok.name == "pca" else tok.name
    inv = "inverse PCA" if tok.name == "pca" else f"{tok.name} decode"
    cols = ["clean x", "pixel noise\nx + σε", f"what {kind} d={tok.dim} keeps\ndecode(encode(x))",
            f"latent noise{'' if tok.name == 'pca' else ' through ' + tok.name}\ndecode(encode(x) + σε)"]
    order = ("clean", "pixel_noise", "latent_clean", "latent_noise")
    cells = [[to_rgb01(pan[k][i]) for k in order] for i in range(x.shape[0])]
    pix_std = float((pan["pixel_noise"] - pan["clean"]).std())
    lat_std = float((pan["latent_noise"] - pan["latent_clean"]).std())
    title = (f"Fig. 7: pixel noise vs latent noise, σ = √(1/3) ≈ {sigma:.3f} in both\n"
             f"{where + ': ' if where else ''}{tok.name} d = {tok.dim} of D = {tok.full_dim}, patch {tok.patch_size}; "
             f"decode = {inv}\nnoise std in image space: pixel {pix_std:.3f}, latent {lat_std:.3f}\n"
             f"(images in [-1, 1], clipped for display)")
    p = image_grid(cells, path, col_titles=cols, title=title, tile_in=1.75, min_px=128)
    return p, (f"Fig. 7: clean / pixel noise x+σε / {kind} d={tok.dim} reconstruction / latent noise "
               f"{inv}(encode(x)+σε) (the l-DAE's input), σ = √(1/3), validation images.")


# --------------------------------------------------------------------------------- Fig. 8
def default_steps(schedule) -> list[int]:
    """T/10, T/4, T/2, keeping only steps with distinct sigma (a constant schedule: one)."""
    T = schedule.num_steps
    out, seen = [], set()
    for t in (T // 10, T // 4, T // 2):
        s = round(float(schedule.sigma[t]), 6)
        if s not in seen:
            seen.add(s)
            out.append(t)
    return out


@torch.no_grad()
def denoise_panels(den, x: torch.Tensor, t: int, y: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, raw: bool | None = None
                   ) -> dict[str, torch.Tensor]:
    """Fig. 8's columns as images (B, 3, H, W), unclipped: ``clean``; ``noisy``, the network's
    input z_t = gamma_t z0 + sigma_t eps shown as an image (image-space input: the input itself;
    latent input: decode(z_t)); ``denoised``. ``raw`` (default: for image-space outputs) shows the
    network's raw image output, else decode(predict_z0(z_t))."""
    tok = den.tokenizer
    x = x.float()
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    inp, b = den.noisy_input(x, tt, generator)
    gamma, sigma = den.schedule.coefficients(tt)
    zt = gamma[:, None, None] * b.z0 + sigma[:, None, None] * b.eps
    noisy = tok.to_image(inp) if den.input_space == "image" else tok.to_image(tok.decode(zt))
    raw = den.output_space == "image" if raw is None else raw
    if raw:
        if den.output_space != "image":
            raise ValueError("raw output is an image only for diffusion.output_space=image")
        out = den.backbone(den.net_input(zt), den.schedule.t_cond(tt), y).float()
        denoised = tok.to_image(out)
    else:
        denoised = tok.to_image(tok.decode(den.predict_z0(zt, tt, y)))
    return {"clean": x, "noisy": noisy, "denoised": denoised}


class DenoisingPreview:
    """Fig. 8 during training, for TensorBoard: ``n`` fixed validation images, and for each of
    ``default_steps`` (T/10, T/4, T/2) the network's noisy input and its denoised output, as one
    grid (rows: clean, then noisy / denoised per t; fixed noise, so frames compare over steps).
    Drawn with the weights being trained (not EMA), in eval mode, at checkpoint steps."""

    def __init__(self, cfg, den, device, n: int = 8, seed: int = SEED):
        self.x, y = val_images(cfg, n, device)
        self.y = y if cfg.model.class_cond else None
        self.steps, self.seed = default_steps(den.schedule), seed
        self.raw = den.output_space == "image"

    @torch.no_grad()
    def grid(self, den) -> torch.Tensor:
        from torchvision.utils import make_grid

        was = den.training
        den.eval()
        rows = [self.x]
        for s in self.steps:
            g = torch.Generator(device=self.x.device).manual_seed(self.seed * 100_003 + int(s))
            p = denoise_panels(den, self.x, int(s), self.y, g, raw=self.raw)
            rows += [p["noisy"], p["denoised"]]
        den.train(was)
        tiles = (torch.cat(rows).float().clamp(-1, 1) + 1) / 2
        return make_grid(tiles.cpu(), nrow=self.x.shape[0], padding=1)

    @property
    def tag(self) -> str:
        return f"denoising/clean, then noisy | denoised at t = {', '.join(map(str, self.steps))}"


def fig8_denoising(run_dir: Path, path: Path, t: Sequence[int] | None = None, n_images: int = 8,
                   device="cpu", cache: dict | None = None, seed: int = SEED) -> tuple[Path, str]:
    from ..plots import image_grid, to_rgb01
    from .common import load_run

    cfg, den = load_run(run_dir, use_ema=True, device=device)
    T = den.schedule.num_steps
    steps = list(t) if t else default_steps(den.schedule)
    bad = [s for s in steps if not 0 <= int(s) < T]
    if bad:
        raise ConfigError(f"t = {bad} is outside 0..{T - 1} (diffusion.num_steps = {T}).")
    x, y = val_images(cfg, n_images, device, cache)
    y = y if cfg.model.class_cond else None
    raw = den.output_space == "image"
    cols, per_t = ["clean"], []
    for s in steps:
        g = torch.Generator(device=x.device).manual_seed(seed * 100_003 + int(s))
        per_t.append(denoise_panels(den, x, int(s), y, g, raw=raw))
        gam, sig = (float(v) for v in den.schedule.coefficients(torch.tensor([int(s)])))
        if cfg.diffusion.schedule == "constant":  # t is not fed: one noise level
            cols += [f"noisy input\nσ={sig:.2f} (single level)", "denoised"]
        else:
            coef = f"σ={sig:.2f}" if cfg.diffusion.schedule == "sigma_linear" else f"γ={gam:.2f}, σ={sig:.2f}"
            cols += [f"noisy input\nt={s} ({coef})", f"denoised\nt={s}"]
    per_image = [[to_rgb01(x[i])] + [to_rgb01(p[k][i]) for p in per_t for k in ("noisy", "denoised")]
                 for i in range(x.shape[0])]
    group = max(1, 6 // len(cols))  # few columns (one t): several images side by side per row
    cells = [sum(per_image[i:i + group], []) for i in range(0, len(per_image), group)]
    cols = cols * min(group, len(per_image))
    d = cfg.diffusion
    how = ("the network's raw image output (all D dims)" if raw
           else f"decode(predict_z0(z_t)) (target {d.target})")
    weights = "EMA" if cfg.optim.ema > 0 else "final"
    cond = ", class-conditional (true labels)" if cfg.model.class_cond else ""
    title = (f"Fig. 8: denoising by {run_dir.name}, validation images\n"
             f"{d.schedule}, target {d.target}, input {d.input_space}, {cfg.tokenizer.name} "
             f"d = {cfg.tokenizer.dim}, {weights} weights{cond}\n"
             f"noise added in the latent; denoised = {how}\n(clipped to [-1, 1] for display)")
    p = image_grid(cells, path, col_titles=cols, title=title, tile_in=1.2, min_px=96, fontsize=8.5)
    ts = ", ".join(str(s) for s in steps)
    return p, (f"Fig. 8: clean / noisy (the network's input) / denoised ({how}), t = {ts} of T = {T}, "
               f"{run_dir.name}, validation images.")


def _filter_figures(figs: Figures, out: Path, named: list[tuple[str, Path]], keep: int | None = None) -> None:
    from ..tokenizers import load_tokenizer

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
    from ..checkpoint import latest
    from ..tokenizers import load_tokenizer
    from . import trajectory as tj

    scale = None

    def plots():
        nonlocal scale
        scale, recs = tj.load_records(tdir)
        paths = tj.plot_all(tdir, recs, figdir=out)
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
            if tok.name == "pca" and tok.patch_size == ref.model.patch_size:
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
    from .common import read_run_config

    p = tdir / "rows" / LDAE_ROW
    if (p / "config.yaml").is_file():
        return read_run_config(p)
    if scale is not None:
        from . import trajectory as tj

        try:
            meta = json.loads((tdir / "trajectory.json").read_text())
            r = tj.build_row(LDAE_ROW, scale, list(meta.get("overrides") or []))
            if r.cfg is not None:
                return r.cfg
        except LdaeError:
            pass
    for c in sorted((tdir / "rows").glob("*/config.yaml")):
        return read_run_config(c.parent)
    return None


__all__ = ["run", "summary_markdown", "noise_panels", "denoise_panels", "fig3_schedules",
           "fig4_filters", "fig7_noise", "fig8_denoising", "target_kind", "SIGMA_FIG7"]
