"""Named model sizes (timm's ``register_model`` / DiT's ``DiT_models`` idea, as a plain table).

Encoder + decoder of equal depth; the encoder is the first half unless a config says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass


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
    "B": ModelSize(768, 24, 12, note="paper ViT-B encoder (12+12 x 768)"),
    "halfL": ModelSize(1024, 24, 16, note="paper ViT-1/2L = DiT-L (12+12 x 1024)"),
    "L": ModelSize(1024, 48, 16, note="paper ViT-L encoder (24+24 x 1024)"),
}


def get_size(name: str) -> ModelSize:
    if name not in MODEL_SIZES:
        raise KeyError(f"unknown model size {name!r}; choices: {', '.join(MODEL_SIZES)}")
    return MODEL_SIZES[name]
