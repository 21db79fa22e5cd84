"""What pretraining optimises (``objective.name``): ``OBJECTIVES`` maps each name to the factory
of its model. ``diffusion`` is the denoising objective ``cfg.diffusion`` composes (every row of
the deconstruction, the l-DAE included); ``mae`` and ``moco_v3`` are Tab. 4's baselines on the
same ViT. Each returns a ``Denoiser`` (or a subclass): the same loss signature for pretraining,
the same ``features`` for the probe, the same backbone for fine-tuning and ``ldae export``."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import need, register_check, register_choices
from ..diffusion.objective import Denoiser, build_denoiser
from .mae import MaskedAutoencoder, build_mae
from .moco import MocoV3, build_moco

OBJECTIVES: dict[str, Callable[..., Denoiser]] = {"diffusion": build_denoiser, "mae": build_mae,
                                                   "moco_v3": build_moco}


def build(cfg, tokenizer: nn.Module) -> Denoiser:
    """The model of ``cfg.objective.name`` on ``tokenizer``, at random init."""
    return OBJECTIVES[cfg.objective.name](cfg, tokenizer)


def check_config(cfg) -> None:
    """MAE and MoCo v3 work on whole pixel patches: the pixel tokenizer at full size (q = p)."""
    name = cfg.objective.name
    if name == "diffusion":
        return
    tk, img = cfg.tokenizer, cfg.data.image_size
    need(tk.name == "pixel" and tk.pixel_size in (0, img),
         f"objective.name={name} takes pixel patches: set tokenizer.name=pixel "
         f"tokenizer.pixel_size=0 tokenizer.dim={3 * cfg.model.patch_size ** 2} (this config: "
         f"tokenizer.name={tk.name}, pixel_size={tk.pixel_size}).")
    need(not cfg.model.class_cond, f"objective.name={name} is self-supervised: set model.class_cond=false.")


register_choices("objective.name", lambda: sorted(OBJECTIVES))
register_check("objective", check_config)

__all__ = ["OBJECTIVES", "MaskedAutoencoder", "MocoV3", "build", "build_mae", "build_moco"]
