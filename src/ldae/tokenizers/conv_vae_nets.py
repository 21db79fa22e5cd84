"""LDM's KL autoencoder (Rombach et al. 2022) in diffusers' ``AutoencoderKL`` layout: the
networks of the ``conv_vae`` tokenizer (``conv_vae.py``) and the reading of diffusers files.

Parameter names are identical to diffusers' state dict, so a diffusers safetensors file loads
with a strict ``load_state_dict``:

    encoder: conv_in -> per level [res_blocks x ResnetBlock (+ stride-2 Downsample but at the
             last level)] -> mid (ResnetBlock, single-head self-attention, ResnetBlock)
             -> GroupNorm, SiLU, conv_out to 2c channels;  quant_conv (1x1) -> (mu, log sigma^2)
    decoder: post_quant_conv (1x1) -> conv_in -> mid -> per level, deepest first,
             [(res_blocks + 1) x ResnetBlock (+ nearest x2 upsample, conv) but at the last]
             -> GroupNorm, SiLU, conv_out to 3 channels

ResnetBlock = GroupNorm(eps 1e-6), SiLU, conv3x3, GroupNorm, SiLU, (dropout 0), conv3x3, plus a
1x1 shortcut when the width changes. A stride s = 2^k needs k + 1 levels with channel multipliers
(1, 2, 4, 4) truncated or extended with 4s (s = 8: LDM's f8 = (1, 2, 4, 4)); base width =
``tokenizer.width``. GroupNorm uses 32 groups like diffusers when every width is a multiple of 32;
narrower nets (width < 32, for CPU tests) use gcd(width, 32) groups, which divides every width.

Credits: LDM (Rombach et al. 2022) for the architecture; diffusers for the parameter layout.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..errors import CheckpointError

EPS = 1e-6  # GroupNorm eps of LDM / diffusers
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def channel_mults(levels: int) -> tuple[int, ...]:
    """LDM's (1, 2, 4, 4) cut to ``levels`` entries, or extended with 4s."""
    base = (1, 2, 4, 4)
    return base[:levels] if levels <= 4 else base + (4,) * (levels - 4)


def default_groups(widths: list[int] | tuple[int, ...]) -> int:
    """32 (diffusers) when every width is a multiple of 32, else gcd(32, widths)."""
    return math.gcd(32, *widths)


# ---------------------------------------------------------------- building blocks (diffusers names)
class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout 0
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over the H W positions, with a residual (LDM's AttnBlock)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=EPS)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).reshape(B, C, H * W).transpose(1, 2)
        h = F.scaled_dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))
        h = self.to_out[0](h)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.attentions = nn.ModuleList([Attention(ch, groups)])
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups), ResnetBlock(ch, ch, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample(nn.Module):
    """Asymmetric zero pad (right, bottom) then a stride-2 3x3 conv (LDM)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, down: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n)])
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, cin: int, widths: list[int], layers: int, latent: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[max(i - 1, 0)], w, layers, groups, down=i < len(widths) - 1)
            for i, w in enumerate(widths))
        self.mid_block = MidBlock(widths[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for b in self.down_blocks:
            h = b(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, latent: int, widths: list[int], layers: int, cout: int, groups: int):
        super().__init__()
        rev = list(reversed(widths))
        self.conv_in = nn.Conv2d(latent, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], groups)
        self.up_blocks = nn.ModuleList(
            UpBlock(rev[max(i - 1, 0)], w, layers + 1, groups, up=i < len(rev) - 1)
            for i, w in enumerate(rev))
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=EPS)
        self.conv_out = nn.Conv2d(widths[0], cout, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            h = b(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# ---------------------------------------------------------------- pretrained files
def resolve_pretrained(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        cand = p / DIFFUSERS_WEIGHTS
        if not cand.is_file():
            found = sorted(p.glob("*.safetensors"))
            if len(found) != 1:
                raise CheckpointError(f"{p} holds no single safetensors file (expected "
                                      f"{DIFFUSERS_WEIGHTS}, diffusers' AutoencoderKL layout).")
            cand = found[0]
        return cand
    if not p.is_file():
        raise CheckpointError(f"pretrained autoencoder {p} does not exist (tokenizer.pretrained).")
    return p


def pretrained_arch(path: str | Path) -> dict:
    """Architecture of a diffusers-layout KL autoencoder file, from the ``config.json`` beside it
    if there is one, else from the tensor shapes (read from the header only): keys
    block_out_channels, res_blocks, latent_channels, in_channels, norm_groups, scaling_factor."""
    file = resolve_pretrained(path)
    try:
        with safe_open(str(file), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"cannot read pretrained autoencoder {file}: {e}") from None
    try:
        widths, i = [], 0
        while f"encoder.down_blocks.{i}.resnets.0.conv2.weight" in shapes:
            widths.append(shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0])
            i += 1
        layers = 0
        while f"encoder.down_blocks.0.resnets.{layers}.conv1.weight" in shapes:
            layers += 1
        arch = {"block_out_channels": widths, "res_blocks": layers,
                "latent_channels": shapes["post_quant_conv.weight"][0],
                "in_channels": shapes["encoder.conv_in.weight"][1],
                "norm_groups": default_groups(widths),
                "scaling_factor": None}
    except KeyError as e:
        raise CheckpointError(f"{file} is not a diffusers AutoencoderKL state dict (no {e}).") from None
    if not widths or not layers:
        raise CheckpointError(f"{file} is not a diffusers AutoencoderKL state dict "
                              "(no encoder.down_blocks.*).")
    cfg_file = file.parent / "config.json"
    if cfg_file.is_file():
        c = json.loads(cfg_file.read_text())
        bad = [k for k, ok in (("use_quant_conv", c.get("use_quant_conv", True)),
                               ("use_post_quant_conv", c.get("use_post_quant_conv", True)),
                               ("mid_block_add_attention", c.get("mid_block_add_attention", True)),
                               ("act_fn", c.get("act_fn", "silu") == "silu"),
                               ("shift_factor", c.get("shift_factor") in (None, 0, 0.0)))
               if not ok]
        if bad:
            raise CheckpointError(f"{cfg_file}: this AutoencoderKL variant ({', '.join(bad)}) is "
                                  "not LDM's KL autoencoder; conv_vae loads the SD / LDM f8 layout only.")
        arch.update(block_out_channels=list(c.get("block_out_channels", widths)),
                    res_blocks=int(c.get("layers_per_block", layers)),
                    latent_channels=int(c.get("latent_channels", arch["latent_channels"])),
                    in_channels=int(c.get("in_channels", arch["in_channels"])),
                    norm_groups=int(c.get("norm_num_groups", 32)),
                    scaling_factor=c.get("scaling_factor"))
    return arch


_LEGACY_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                     ".proj_attn.": ".to_out.0."}


def modern_attention_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files written by diffusers < 0.14 name the mid-block attention query/key/value/proj_attn;
    rename to to_q/to_k/to_v/to_out.0 (and flatten 1x1-conv attention weights to Linear)."""
    out = {}
    for k, v in sd.items():
        if ".attentions." in k:
            for old, new in _LEGACY_ATTENTION.items():
                k = k.replace(old, new)
            if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) and v.ndim == 4:
                v = v[:, :, 0, 0]
        out[k] = v
    return out


__all__ = ["EPS", "DIFFUSERS_WEIGHTS", "channel_mults", "default_groups", "ResnetBlock", "Attention",
           "MidBlock", "Downsample", "Upsample", "DownBlock", "UpBlock", "Encoder", "Decoder",
           "resolve_pretrained", "pretrained_arch", "modern_attention_names"]
