"""ldae: latent Denoising Autoencoders, after Chen, Liu, Xie & He, "Deconstructing Denoising
Diffusion Models for Self-Supervised Learning" (2024).

The Python API (each name is imported on first use, so ``import ldae`` stays light)::

    import ldae
    cfg, den = ldae.load_run("runs/c10")              # the trained Denoiser (EMA weights), eval mode
    feats = den.features(x, t=10, blocks=[4])[0]      # x: images in [-1, 1]; (B, width) features
    cfg = ldae.load_config("cifar10-cpu", ["optim.epochs=3"])
    ldae.export("runs/c10", "runs/c10-vit")           # a plain timm ViT (timm.create_model('local-dir:...'))
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "load_run": "ldae.engine.common",
    "load_config": "ldae.config",
    "Config": "ldae.config",
    "describe_keys": "ldae.config",
    "build_denoiser": "ldae.diffusion.objective",
    "Denoiser": "ldae.diffusion.objective",
    "load_tokenizer": "ldae.tokenizers",
    "export": "ldae.engine.export",
    "LdaeError": "ldae.errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ldae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
