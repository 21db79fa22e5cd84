"""The panels of the paper's figures that show data (Fig. 3, 4, 7, 8), each from a run's own
tokenizer, denoiser and validation images; ``ldae figures`` (``engine.figures``) lays them out
into files, and pretraining logs Fig. 8 to TensorBoard (``DenoisingPreview``). No module here
imports an engine, so any engine can draw a panel.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
from torchvision.utils import make_grid

from .. import plots  # module, not names: tests patch ldae.plots.image_grid
from ..config import Space
from ..data import build_dataset, to_float
from ..diffusion.schedules import SCHEDULES, build_schedule
from ..errors import ConfigError
from ..tokenizers import load_tokenizer
from .common import TOKENIZER_FILE, load_run, tokenizer_for

SIGMA_FIG7 = math.sqrt(1.0 / 3.0)  # the paper's Fig. 7 (and the single-level l-DAE's sigma0)
FIG7_IMAGES = 4  # rows of Fig. 7 (at most n_images)
MAX_FILTERS = 16  # tiles of Fig. 4 (the paper shows d = 16)
SEED = 0


class Skip(Exception):
    """A figure that does not apply to this run (e.g. a tokenizer without filters)."""


def run_tokenizer(cfg, run_dir: Path):
    """The run's tokenizer at the run's d: its own ``tokenizer.safetensors`` when present (a
    trajectory row keeps a copy), else what ``tokenizer.path`` names."""
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
    plt = plots.pyplot()
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
    return plots.save_png(fig, path), (f"Fig. 3: noise schedules at T={T}, γ_t² (left) and σ_t (right) against "
                                 f"t{'; bold: this run (' + mark + ')' if mark else ''}.")


# --------------------------------------------------------------------------------- Fig. 4
def fig4_filters(tok, path: Path, label: str, keep: int | None = None) -> tuple[Path, str]:
    """The first ``MAX_FILTERS`` encoder filters of ``tok`` as RGB tiles in rows of 8, each scaled
    to its own [min, max]; tiles past ``keep`` (the d a run uses) faded."""
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
    tiles = [plots.minmax01(f[i]) for i in range(n)]
    cells = [[tiles[r * cols + c] if r * cols + c < n else None for c in range(cols)] for r in range(rows)]
    titles = [[f"#{r * cols + c + 1}" if r * cols + c < n else "" for c in range(cols)] for r in range(rows)]
    framed = [[keep is not None and keep < n and r * cols + c < keep for c in range(cols)] for r in range(rows)]
    title = (f"Fig. 4: {label}: {tok.name}, patch {tok.patch_size}x{tok.patch_size}x3 "
             f"(D = {tok.full_dim}){dtxt}\n{what}\neach tile scaled to its own [min, max]")
    p = plots.image_grid(cells, path, cell_titles=titles, title=title, tile_in=1.05, framed=framed, min_px=64)
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
    tok = tok.to(x.device).eval()
    g = torch.Generator(device=x.device).manual_seed(seed)
    pan = noise_panels(tok, x, sigma, g)
    kind = "PCA" if tok.name == "pca" else tok.name
    inv = "inverse PCA" if tok.name == "pca" else f"{tok.name} decode"
    cols = ["clean x", "pixel noise\nx + σε", f"what {kind} d={tok.dim} keeps\ndecode(encode(x))",
            f"latent noise{'' if tok.name == 'pca' else ' through ' + tok.name}\ndecode(encode(x) + σε)"]
    order = ("clean", "pixel_noise", "latent_clean", "latent_noise")
    cells = [[plots.to_rgb01(pan[k][i]) for k in order] for i in range(x.shape[0])]
    pix_std = float((pan["pixel_noise"] - pan["clean"]).std())
    lat_std = float((pan["latent_noise"] - pan["latent_clean"]).std())
    title = (f"Fig. 7: pixel noise vs latent noise, σ = √(1/3) ≈ {sigma:.3f} in both\n"
             f"{where + ': ' if where else ''}{tok.name} d = {tok.dim} of D = {tok.full_dim}, patch {tok.patch_size}; "
             f"decode = {inv}\nnoise std in image space: pixel {pix_std:.3f}, latent {lat_std:.3f}\n"
             f"(images in [-1, 1], clipped for display)")
    p = plots.image_grid(cells, path, col_titles=cols, title=title, tile_in=1.75, min_px=128)
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
    noisy = tok.to_image(inp) if den.input_space == Space.IMAGE else tok.to_image(tok.decode(zt))
    raw = den.output_space == Space.IMAGE if raw is None else raw
    if raw:
        if den.output_space != Space.IMAGE:
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
        self.raw = den.output_space == Space.IMAGE

    @torch.no_grad()
    def grid(self, den) -> torch.Tensor:
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
    cfg, den = load_run(run_dir, use_ema=True, device=device)
    T = den.schedule.num_steps
    steps = list(t) if t else default_steps(den.schedule)
    bad = [s for s in steps if not 0 <= int(s) < T]
    if bad:
        raise ConfigError(f"t = {bad} is outside 0..{T - 1} (diffusion.num_steps = {T}).")
    x, y = val_images(cfg, n_images, device, cache)
    y = y if cfg.model.class_cond else None
    raw = den.output_space == Space.IMAGE
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
    per_image = [[plots.to_rgb01(x[i])] + [plots.to_rgb01(p[k][i]) for p in per_t for k in ("noisy", "denoised")]
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
    p = plots.image_grid(cells, path, col_titles=cols, title=title, tile_in=1.2, min_px=96, fontsize=8.5)
    ts = ", ".join(str(s) for s in steps)
    return p, (f"Fig. 8: clean / noisy (the network's input) / denoised ({how}), t = {ts} of T = {T}, "
               f"{run_dir.name}, validation images.")


__all__ = ["Skip", "SIGMA_FIG7", "run_tokenizer", "val_images", "spread_indices", "fig3_schedules",
           "fig4_filters", "noise_panels", "fig7_noise", "default_steps", "denoise_panels",
           "DenoisingPreview", "fig8_denoising"]
