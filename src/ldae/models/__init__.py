"""Backbones: the DiT-style ViT and its size registry."""
from .dit import DiT
from .registry import MODEL_SIZES, ModelSize, get_size

__all__ = ["DiT", "MODEL_SIZES", "ModelSize", "get_size"]
