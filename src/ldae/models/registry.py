"""Named model sizes (timm's ``register_model`` / DiT's ``DiT_models`` idea, as a plain table).

Encoder + decoder of equal depth; the encoder is the first half unless a config says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import need, register_check, register_choices


@dataclass(frozen=True)
class ModelSize:
    width: int
    depth: int  # encoder + decoder blocks
    heads: int
    mlp_ratio: float = 4.0
    note: str = ""


MODEL_SIZES: dict[str, ModelSize] = {
    "test": ModelSize(32, 2, 2, note="unit tests"),
    "micro": ModelSize(64, 4, 4, note="digits demo (2+2 x 64)"),
    "mini": ModelSize(128, 8, 4, note="CIFAR-10 on CPU (4+4 x 128)"),
    "tiny": ModelSize(192, 12, 3, note="CIFAR-10 on one GPU (6+6 x 192)"),
    "small": ModelSize(384, 12, 6, note="6+6 x 384"),
    # size ladders of the trajectory's scales (Sec. 5 "model size"): *-B keeps the depth at
    # 3/4 of the width (ViT-B 768 vs ViT-1/2L 1024), *-L doubles the depth (ViT-L vs ViT-1/2L)
    "micro-B": ModelSize(48, 4, 4, note="debug scale's ViT-B (2+2 x 48)"),
    "micro-L": ModelSize(64, 8, 4, note="debug scale's ViT-L (4+4 x 64)"),
    "mini-B": ModelSize(96, 8, 4, note="cifar10-cpu scale's ViT-B (4+4 x 96)"),
    "mini-L": ModelSize(128, 16, 4, note="cifar10-cpu scale's ViT-L (8+8 x 128)"),
    "small-B": ModelSize(288, 12, 6, note="cifar10-gpu scale's ViT-B (6+6 x 288)"),
    "small-L": ModelSize(384, 24, 6, note="cifar10-gpu scale's ViT-L (12+12 x 384)"),
    "B": ModelSize(768, 24, 12, note="paper ViT-B encoder (12+12 x 768)"),
    "halfL": ModelSize(1024, 24, 16, note="paper ViT-1/2L = DiT-L (12+12 x 1024)"),
    "L": ModelSize(1024, 48, 16, note="paper ViT-L encoder (24+24 x 1024)"),
}


def get_size(name: str) -> ModelSize:
    if name not in MODEL_SIZES:
        raise KeyError(f"unknown model size {name!r}; choices: {', '.join(MODEL_SIZES)}")
    return MODEL_SIZES[name]


def check_depths(cfg) -> None:
    """Every setting that counts blocks lies within the model's depth."""
    m, lp, ft = cfg.model, cfg.linprobe, cfg.finetune
    depth = MODEL_SIZES[m.name].depth
    need(0 <= m.encoder_blocks <= depth,
         f"model.encoder_blocks={m.encoder_blocks} must be in [0, {depth}] for model {m.name} "
         "(0 = half the depth).")
    need(0 <= lp.blocks <= depth, f"linprobe.blocks={lp.blocks} must be in [0, {depth}].")
    need(all(1 <= v <= depth for v in lp.sweep_blocks),
         f"linprobe.sweep_blocks={list(lp.sweep_blocks)} must hold encoder depths in [1, {depth}] "
         f"(model {m.name} has {depth} blocks).")
    need(0 <= ft.blocks <= depth, f"finetune.blocks={ft.blocks} must be in [0, {depth}].")


register_choices("model.name", lambda: list(MODEL_SIZES))
register_check("model", check_depths)
