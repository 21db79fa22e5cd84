"""Plain ViT encoders from outside a run: an ``ldae export`` folder or any timm ViT checkpoint.

``linprobe`` and ``finetune`` see every encoder the same way: a module that maps images in
[-1, 1] (B, C, H, W) to pooled features (B, W). :class:`VitEncoder` wraps a timm
``VisionTransformer`` with the input normalisation its weights expect (an ``ldae export`` eats
[-1, 1] as is; a timm model its ``pretrained_cfg`` mean/std on [0, 1]) and pools the model's own
way (``forward_head(pre_logits=True)``: average for an export, the class token for most timm ViTs).

Sources (``vit.source``):
- an ``ldae export`` dir: ``config.json`` (the constructor keywords) + ``model.safetensors``;
- ``timm:MODEL_NAME`` with ``vit.weights=FILE``: the model built by ``timm.create_model`` at this
  run's image size, the file read without running code (safetensors, or ``torch.load`` with
  ``weights_only=True``), converted by timm's own ``checkpoint_filter_fn`` (position-embedding
  resampling, older layouts) and loaded strictly. Nothing is ever downloaded.

Layer groups for layer-wise lr decay come from the module tree (:func:`vit_layer_groups`), never
from parameter names: [patch embedding, position embedding, class/register tokens], each block,
[final norms, head].
"""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from ..checkpoint import load_tensor_file
from ..errors import CheckpointError, ConfigError

EXPORT_CONFIG, EXPORT_WEIGHTS = "config.json", "model.safetensors"
TIMM_PREFIX = "timm:"
IDENTITY_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [0, 1] -> [-1, 1]: what an export eats


class VitEncoder(nn.Module):
    """A timm VisionTransformer behind the encoder protocol: [-1, 1] images -> (B, W) features.

    ``mean``/``std`` are the normalisation of [0, 1] images the weights were trained with."""

    def __init__(self, model: nn.Module, mean=IDENTITY_NORM[0], std=IDENTITY_NORM[1],
                 source: str = "", meta: dict | None = None):
        super().__init__()
        self.model, self.source, self.meta = model, source, dict(meta or {})
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    @property
    def width(self) -> int:
        return self.model.num_features

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the model's input normalisation."""
        return ((x + 1) * 0.5 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.forward_head(m.forward_features(self.normalize(x)), pre_logits=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's output (fine-tuning): features -> head."""
        return self.model(self.normalize(x))


def vit_layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Trainable parameters of a timm ViT in depth order, from its module tree:
    [patch embed + position embed + class/register tokens], block 1, ..., block N,
    [everything after the blocks: norms, head]. Every trainable parameter lands in exactly one
    group (checked), so a new timm attribute cannot silently escape the lr decay."""
    seen: set[int] = set()

    def take(params) -> list[nn.Parameter]:
        out = []
        for p in params:
            if p is not None and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    first = take([getattr(model, a, None) for a in ("pos_embed", "cls_token", "reg_token")]
                 + list(model.patch_embed.parameters()))
    blocks = [take(b.parameters()) for b in model.blocks]
    emb_ids = {id(p) for p in first}
    block_ids = {id(p) for g in blocks for p in g}
    rest = take(p for p in model.parameters() if id(p) not in emb_ids and id(p) not in block_ids)
    groups = [first] + blocks + [rest]
    n_all = sum(1 for p in model.parameters() if p.requires_grad)
    if sum(len(g) for g in groups) != n_all:  # pragma: no cover - defensive
        raise RuntimeError("vit_layer_groups: the groups do not cover the model's parameters")
    return groups


def no_decay_ids(model: nn.Module) -> set[int]:
    """Parameters without weight decay (MAE): biases and norm weights (1-D), the position
    embedding and class/register tokens; by identity, not by name."""
    ids = {id(p) for p in model.parameters() if p.ndim <= 1}
    ids |= {id(getattr(model, a)) for a in ("pos_embed", "cls_token", "reg_token")
            if isinstance(getattr(model, a, None), nn.Parameter)}
    return ids


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file, without running code. Unwraps the usual
    containers ('model_ema', 'state_dict_ema', 'state_dict', 'model') and a DDP 'module.' prefix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"vit.weights={path}: no such file. Give a local checkpoint "
                          "(.safetensors or a torch file); ldae never downloads weights.")
    sd = load_tensor_file(path)
    if isinstance(sd, dict):
        for key in ("model_ema", "state_dict_ema", "state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], where: str,
               new: tuple[str, ...] = ()) -> None:
    """Strict load, except that keys under ``new`` (a fresh head / fc_norm) may be missing; a
    checkpoint's own head is dropped when the model has none or a different one."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items()
          if not (k.startswith(("head.", "fc_norm.")) and (k not in own or own[k].shape != v.shape))}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{where} does not fit the model: {str(e).splitlines()[-1].strip()} "
                              "Check vit.source (timm model name) against the file.") from None
    missing = [k for k in missing if not k.startswith(new)]
    if missing or unexpected:
        raise CheckpointError(f"{where} does not fit the model: missing {missing[:8]}, unexpected "
                              f"{unexpected[:8]}. Check vit.source (timm model name) against the file.")


def is_export_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / EXPORT_CONFIG).is_file() and (p / EXPORT_WEIGHTS).is_file()


def load_vit(source: str, weights: str = "", image_size: int | None = None,
             num_classes: int = 0, head_norm: bool = False, drop_path: float = 0.0,
             new_head: bool = False) -> VitEncoder:
    """The encoder named by ``source`` (see the module docstring) as a :class:`VitEncoder`.

    ``num_classes`` > 0 adds a classifier head (and, for an export, with ``head_norm``, MAE's
    LayerNorm after the pool; a timm model keeps its own pooling and norms); ``drop_path`` sets timm's stochastic depth; ``new_head`` allows the head/fc_norm to be
    absent from the weights (fine-tuning). ``image_size`` must match an export's; a timm model is
    built at it (the position embedding resampled by timm)."""
    if source.startswith(TIMM_PREFIX):
        name = source[len(TIMM_PREFIX):]
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8] if name else []
            raise ConfigError(f"vit.source={source}: timm has no model {name!r}"
                              f"{' (similar: ' + ', '.join(close) + ')' if close else ''}.")
        if not weights:
            raise ConfigError(f"vit.source={source} needs vit.weights=FILE (--weights on the CLI): "
                              "a local checkpoint of that model; ldae never downloads weights.")
        kw = {"num_classes": num_classes, "drop_path_rate": drop_path}  # its own pool and norms
        if image_size:
            kw["img_size"] = image_size
        try:
            model = timm.create_model(name, pretrained=False, **kw)
        except TypeError as e:
            raise ConfigError(f"vit.source={source}: not a timm VisionTransformer-style model ({e}).") from None
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise ConfigError(f"vit.source={source} is not a ViT (no patch_embed/blocks).")
        sd = read_state_dict(weights)
        if isinstance(model, VisionTransformer):
            try:
                sd = checkpoint_filter_fn(sd, model)
            except Exception as e:
                raise CheckpointError(f"{weights} does not fit {source}: timm could not convert "
                                      f"it ({type(e).__name__}: {e}).") from None
        load_into(model, sd, weights, new=("head.", "fc_norm.") if new_head else ())
        cfg = model.pretrained_cfg or {}
        mean, std = cfg.get("mean", IDENTITY_NORM[0]), cfg.get("std", IDENTITY_NORM[1])
        return VitEncoder(model, mean, std, source=source, meta={"weights": str(weights)})

    path = Path(source)
    if not is_export_dir(path):
        raise ConfigError(f"vit.source={source} is neither an `ldae export` dir ({EXPORT_CONFIG} + "
                          f"{EXPORT_WEIGHTS}) nor timm:MODEL_NAME. An ldae pretraining run is "
                          "probed/fine-tuned through --out RUN_DIR itself.")
    kwargs = constructor_kwargs(json.loads((path / EXPORT_CONFIG).read_text()))
    if image_size and kwargs.get("img_size") != image_size:
        raise ConfigError(f"{path} was exported for {kwargs.get('img_size')} px images but "
                          f"data.image_size={image_size}; set data.image_size={kwargs.get('img_size')}.")
    model = build_vit(kwargs, num_classes=num_classes, head_norm=head_norm, drop_path=drop_path)
    load_into(model, load_file(str(path / EXPORT_WEIGHTS)), str(path / EXPORT_WEIGHTS),
               new=("head.", "fc_norm.") if new_head else ())
    meta = {}
    if (path / "export.json").is_file():
        meta = json.loads((path / "export.json").read_text())
    return VitEncoder(model, source=str(path), meta=meta)


def constructor_kwargs(config: dict) -> dict:
    """The VisionTransformer keywords of an export's ``config.json`` (hub format, or the flat
    keywords older ldae versions wrote)."""
    return dict(config["model_args"]) if "model_args" in config else dict(config)


def build_vit(kwargs: dict, num_classes: int = 0, head_norm: bool = False,
              drop_path: float = 0.0) -> nn.Module:
    """timm VisionTransformer from an export's keywords, optionally with a classifier head
    (MAE's fine-tuning form: average pool -> LayerNorm -> Linear when ``head_norm``)."""
    kw = dict(kwargs, num_classes=num_classes, drop_path_rate=drop_path)
    if head_norm and num_classes:  # timm builds fc_norm only with final_norm (norm stays Identity)
        kw.update(final_norm=True, fc_norm=True)
    return VisionTransformer(**kw)


__all__ = ["constructor_kwargs", "VitEncoder", "vit_layer_groups", "no_decay_ids", "read_state_dict", "load_vit", "load_into",
           "build_vit", "is_export_dir", "TIMM_PREFIX"]
