"""The encoders an evaluation can probe or fine-tune: a trained run, the same architecture at
random init, an outside ViT, or none (raw pixels); and their features (``encode``), whichever
of the three kinds ``encoder_for`` returned."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..diffusion.objective import Denoiser
from .. import objectives
from ..dist import Runtime
from ..models.vit import VitEncoder, load_vit
from ..tokenizers import Tokenizer
from .common import load_run, tokenizer_for
from .fit_tokenizer import fit


def build_random(cfg: Config, tokenizer: Tokenizer) -> Denoiser:
    """The same architecture at random init (seeded by train.seed): the probe's lower baseline."""
    torch.manual_seed(cfg.train.seed)
    return objectives.build(cfg, tokenizer).eval()


def encoder_for(cfg: Config, run_dir: Path, device: torch.device, use_ema: bool = True,
                ckpt: Path | None = None) -> Denoiser | None:
    """What ``linprobe.encoder`` names: the run's trained denoiser, the same architecture at
    random init (with the run's tokenizer, or one fitted now), an outside ViT (``vit.source``:
    an ``ldae export`` dir or a timm checkpoint, as a ``VitEncoder``), or None for raw pixels."""
    enc = cfg.linprobe.encoder
    if enc == "vit":
        return load_vit(cfg.vit.source, cfg.vit.weights, cfg.data.image_size).to(device)
    if enc == "ldae":
        return load_run(run_dir, use_ema=use_ema, device=device, ckpt=ckpt)[1]
    if enc == "random":
        tok = tokenizer_for(cfg, run_dir) or fit(cfg)
        return build_random(cfg, tok).to(device)
    return None


def encode(denoiser: nn.Module | None, x: torch.Tensor, cfg: Config, rt: Runtime,
           blocks: list[int], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Float images (B, C, H, W) in [-1, 1] on rt.device -> one (B, W) float32 feature per block.

    ``pixels`` (denoiser None): [x flattened, (B, C H W)]."""
    if denoiser is None:
        return [x.flatten(1).float()]
    lp = cfg.linprobe
    if isinstance(denoiser, VitEncoder):  # fixed t and depth are baked into the export
        with torch.no_grad(), rt.autocast():
            return [denoiser(x).float()]
    with torch.no_grad():
        return denoiser.features(x, lp.t, blocks, noisy=lp.noisy, generator=generator,
                                 autocast=rt.autocast(), clean=lp.clean_input)


def prepare_encoder(denoiser: nn.Module | None, rt: Runtime) -> nn.Module | None:
    """Frozen, eval-mode, on rt.device (in place: the caller hands the encoder over)."""
    if denoiser is not None:
        denoiser.to(rt.device).eval().requires_grad_(False)
    return denoiser


__all__ = ["build_random", "encode", "encoder_for", "prepare_encoder"]
