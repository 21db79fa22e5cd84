"""``ldae export``: the encoder at a fixed t as a plain timm ``VisionTransformer`` (SPEC §3).

At transfer t is fixed, so every block's conditioning is a constant and the adaLN-Zero block

    x <- x + g_a * Attn(LN(x) * (1 + s_a) + b_a)
    x <- x + g_m * MLP(LN(x) * (1 + s_m) + b_m)

is a standard pre-norm ViT block once the constants are folded into weights:
scale/shift become the LayerNorm's affine (weight = 1 + s, bias = b) and each gate multiplies the
rows of the Linear that ends its branch (attn.proj, mlp.fc2; ``W <- diag(g) W``, ``b <- g * b``).
The input side folds too: for image-space input the linear patch embedding on (C, p, p) patches
is timm's strided conv; for a latent input from a tokenizer whose encoder is affine per patch
(``Tokenizer.linear_map``: z = W x + b; PCA's W = V_d / s, b = -W m), ``embed(z) = E (W x + b) + e``
is one linear map of the pixels, ``E W`` with bias ``E b + e``. The position embedding is our fixed
sin-cos table. The result has no class token, average pooling, no final norm (our feature is the
plain token average of block k's output), and no head: timm's ``forward`` returns the feature.

Writes ``model.safetensors`` (timm's state-dict names), ``config.json`` in timm's hub format
(``architecture``, ``model_args`` = the constructor keywords, and ``pretrained_cfg`` with the
run's input size and the [-1, 1] normalisation, mean = std = 0.5, centre crop 1.0, bicubic), so
that ``timm.create_model('local-dir:DIR', pretrained=True)`` rebuilds and strictly loads it and
``timm.data.resolve_data_config({}, model=m)`` returns the right preprocessing; ldae's own record
(run, t, blocks, clean input) goes to ``export.json``. The same folder can be shared with
``timm.models.push_to_hf_hub`` (or uploaded as is) and loaded with ``hf-hub:USER/NAME``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoint import atomic_path, atomic_write_json
from ..config import Space
from ..errors import ConfigError
from ..models.vit import constructor_kwargs  # noqa: F401 (re-exported)
from .common import load_run

TIMM_CALL = "import timm; m = timm.create_model('local-dir:{d}', pretrained=True)"
#: a registered timm name for the hub config: ``model_args`` override every size it implies
TIMM_ARCH = "vit_base_patch16_224"


def hub_config(kwargs: dict, image_size: int, channels: int = 3) -> dict:
    """timm's hub ``config.json`` of a folded encoder (see the module docstring)."""
    return {"architecture": TIMM_ARCH, "num_classes": 0, "num_features": kwargs["embed_dim"],
            "global_pool": kwargs.get("global_pool", "avg"), "model_args": kwargs,
            "pretrained_cfg": {"input_size": [channels, image_size, image_size],
                               "mean": [0.5] * channels, "std": [0.5] * channels,
                               "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bicubic",
                               "num_classes": 0, "license": "mit",
                               "tag": "ldae", "first_conv": "patch_embed.proj",
                               "classifier": "head"}}


def _patch_map(den, clean: str = "original") -> tuple[torch.Tensor, torch.Tensor]:
    """(A, a) with embed-input tokens = patches @ A.T + a, patches flattened (C, p, p).

    Image-space input: the identity for ``clean=original``; for ``projected`` the tokenizer's
    ``projection_map`` (PCA: decode(encode(x)) = x P + m (I - P), P = V_d^T V_d, so A = P,
    a = m - m P). Latent input: the tokenizer's ``linear_map``."""
    tok, D = den.tokenizer, den.tokenizer.full_dim
    if den.input_space == Space.IMAGE:
        if clean == "original":
            return torch.eye(D), torch.zeros(D)
        proj = tok.projection_map()
        if proj is None:
            raise ConfigError(f"clean_input=projected folds the tokenizer's projection "
                              f"decode(encode(x)) as an affine map (Tokenizer.projection_map); "
                              f"this run's tokenizer {tok.name} has none.")
        return proj[0].float().cpu(), proj[1].float().cpu()
    lin = tok.linear_map()
    if lin is not None:
        return lin[0].float().cpu(), lin[1].float().cpu()
    raise ConfigError(f"ldae export folds a linear input map only: image-space input, or a latent "
                      f"input from a tokenizer whose encoder is affine per patch "
                      f"(Tokenizer.linear_map, e.g. pca; this run: input_space={den.input_space}, "
                      f"tokenizer {tok.name}, which has none).")


@torch.no_grad()
def fold(den, t: int, blocks: int, image_size: int, layer_scale: bool = False,
         clean: str = "original") -> tuple[dict[str, torch.Tensor], dict]:
    """timm state dict and constructor keywords of the first ``blocks`` blocks at fixed ``t``.

    ``clean``: the clean-input reading the ViT computes (``Denoiser.clean_input``); for an
    image-space encoder ``projected`` folds the tokenizer's projection into the patch embedding,
    so the ViT still takes plain images.

    ``layer_scale``: keep each gate as a timm LayerScale vector (``ls1``/``ls2.gamma``, the
    model built with ``init_values``) instead of folding it into ``attn.proj``/``mlp.fc2``. Same
    function; what fine-tuning uses, since folded gates (~0.1) shrink those Linears ~10x and
    AdamW's steps, about lr in size whatever the weight's scale, would then be ~10x too large
    for them relative to the rest."""
    net = den.backbone.float().cpu().eval()
    if not 1 <= blocks <= net.depth:
        raise ConfigError(f"--blocks {blocks} must be in [1, {net.depth}] for this model.")
    if not 0 <= t < den.schedule.num_steps:
        raise ConfigError(f"--t {t} must be in [0, {den.schedule.num_steps}).")
    p, C = den.tokenizer.patch_size, den.tokenizer.channels
    tt = den.schedule.t_cond(torch.tensor([t]))
    c = net.condition(tt)  # (1, W); the null class for a class-conditional model
    A, a = _patch_map(den, clean)
    E, e = net.patch_embed.weight.float(), net.patch_embed.bias.float()
    sd = {"patch_embed.proj.weight": (E @ A).reshape(net.width, C, p, p).contiguous(),
          "patch_embed.proj.bias": E @ a + e,
          "pos_embed": net.pos_embed.float().clone()}
    for i, blk in enumerate(net.blocks[:blocks]):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (v[0] for v in blk.modulation(c))
        q = f"blocks.{i}."
        sd[q + "norm1.weight"], sd[q + "norm1.bias"] = 1 + scale_a, shift_a
        sd[q + "attn.qkv.weight"], sd[q + "attn.qkv.bias"] = blk.attn.qkv.weight, blk.attn.qkv.bias
        sd[q + "norm2.weight"], sd[q + "norm2.bias"] = 1 + scale_m, shift_m
        sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"] = blk.mlp.fc1.weight, blk.mlp.fc1.bias
        if layer_scale:
            sd[q + "attn.proj.weight"], sd[q + "attn.proj.bias"] = blk.attn.proj.weight, blk.attn.proj.bias
            sd[q + "mlp.fc2.weight"], sd[q + "mlp.fc2.bias"] = blk.mlp.fc2.weight, blk.mlp.fc2.bias
            sd[q + "ls1.gamma"], sd[q + "ls2.gamma"] = gate_a, gate_m
        else:
            sd[q + "attn.proj.weight"] = gate_a[:, None] * blk.attn.proj.weight
            sd[q + "attn.proj.bias"] = gate_a * blk.attn.proj.bias
            sd[q + "mlp.fc2.weight"] = gate_m[:, None] * blk.mlp.fc2.weight
            sd[q + "mlp.fc2.bias"] = gate_m * blk.mlp.fc2.bias
    sd = {k: v.detach().float().contiguous().clone() for k, v in sd.items()}
    mlp_ratio = net.blocks[0].mlp.fc1.out_features / net.width
    return sd, vit_kwargs(net.width, net.blocks[0].attn.heads, mlp_ratio, blocks, image_size, p, C,
                          layer_scale)


def vit_kwargs(width: int, heads: int, mlp_ratio: float, blocks: int, image_size: int,
               patch_size: int, channels: int, layer_scale: bool = False) -> dict:
    """timm ``VisionTransformer`` keywords of a folded encoder: no class token, average pool,
    no final norm, no head (the feature is the plain token average of block k's output);
    ``layer_scale`` adds LayerScale after each branch (gamma 1 at timm's init: a plain ViT)."""
    kw = {"img_size": image_size, "patch_size": patch_size, "in_chans": channels,
          "num_classes": 0, "global_pool": "avg", "embed_dim": width, "depth": blocks,
          "num_heads": heads, "mlp_ratio": mlp_ratio, "qkv_bias": True, "class_token": False,
          "no_embed_class": True, "final_norm": False, "fc_norm": False}
    if layer_scale:
        kw["init_values"] = 1.0
    return kw


def export(run_dir: Path, out: Path, t: int = 10, blocks: int = 0, use_ema: bool = True,
           clean: str | None = None) -> dict:
    """``clean``: original | projected; None = the run's ``linprobe.clean_input``."""
    cfg, den = load_run(Path(run_dir), use_ema=use_ema, device="cpu")
    k = blocks or den.backbone.encoder_blocks
    clean = clean or cfg.linprobe.clean_input
    sd, kwargs = fold(den, t, k, cfg.data.image_size, clean=clean)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"ldae_export": json.dumps({"run": str(run_dir), "t": t,
                                                                      "blocks": k, "clean_input": clean})})
    atomic_write_json(out / "config.json", hub_config(kwargs, cfg.data.image_size,
                                                      den.tokenizer.channels))
    info = {"out": str(out), "t": t, "blocks": k, "clean_input": clean, "params": sum(v.numel() for v in sd.values()),
            "input": f"images in [-1, 1], {cfg.data.image_size} px",
            "timm": TIMM_CALL.format(d=out)}
    atomic_write_json(out / "export.json", info)
    return info


__all__ = ["fold", "export", "vit_kwargs", "hub_config", "constructor_kwargs", "TIMM_CALL"]
