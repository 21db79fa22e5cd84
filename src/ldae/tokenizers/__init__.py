"""Tokenizers behind one interface (SPEC §4). ``TOKENIZERS`` maps config names to classes."""
from pathlib import Path

from ..config import register_check, register_choices
from ..errors import CheckpointError, ConfigError, shown
from .base import FitData, Tokenizer, patchify, unpatchify
from .conv_vae import ConvVAETokenizer
from .pca import PCATokenizer
from .patch import PatchAETokenizer, PatchVAETokenizer
from .pixel import PixelTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "pca": PCATokenizer, "patch_ae": PatchAETokenizer, "patch_vae": PatchVAETokenizer,
    "pixel": PixelTokenizer, "conv_vae": ConvVAETokenizer}


def check_config(cfg) -> None:
    """The named tokenizer's own checks (``Tokenizer.check_config``)."""
    tk = cfg.tokenizer
    try:
        TOKENIZERS[tk.name].check_config(cfg)
    except OSError as e:  # a path check on a name the OS refuses (e.g. too long)
        raise ConfigError(f"tokenizer.name={tk.name}: a path setting cannot be checked "
                          f"({shown(e, 200)}); give an existing file.") from None


register_choices("tokenizer.name", lambda: sorted(TOKENIZERS))
register_check("tokenizer", check_config)


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
