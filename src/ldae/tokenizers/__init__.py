"""Tokenizers behind one interface (SPEC §4). ``TOKENIZERS`` maps config names to classes."""
from pathlib import Path

from ..errors import CheckpointError
from .base import FitData, Tokenizer, patchify, unpatchify
from .conv_vae import ConvVAETokenizer
from .pca import PCATokenizer
from .patch import PatchAETokenizer, PatchVAETokenizer
from .pixel import PixelTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "pca": PCATokenizer, "patch_ae": PatchAETokenizer, "patch_vae": PatchVAETokenizer,
    "pixel": PixelTokenizer, "conv_vae": ConvVAETokenizer}


def build_tokenizer(cfg) -> Tokenizer:
    """A fresh (unfitted) tokenizer from a ``Config``."""
    return TOKENIZERS[cfg.tokenizer.name].from_config(cfg)


def load_tokenizer(path: str | Path) -> Tokenizer:
    meta, tensors = Tokenizer.read(path)
    cls = TOKENIZERS.get(meta.get("name"))
    if cls is None:
        raise CheckpointError(f"{path} holds tokenizer '{meta.get('name')}', unknown to this "
                              f"version of ldae (known: {', '.join(TOKENIZERS)}).")
    kwargs = {k: v for k, v in meta.items() if k != "name"}
    tok = cls(**kwargs)
    try:
        tok.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"tokenizer {path} does not match its header: {e}") from None
    return tok


__all__ = ["FitData", "Tokenizer", "ConvVAETokenizer", "PCATokenizer", "TOKENIZERS",
           "build_tokenizer", "load_tokenizer",
           "patchify", "unpatchify"]
