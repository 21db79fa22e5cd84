"""Convolutional KL autoencoder: LDM's tokenizer, the DiT baseline's (paper Sec. 4.1, 4.2,
Tab. 1, Tab. 2 "conv. VAE"; SPEC §4).

Architecture: LDM's KL autoencoder (Rombach et al. 2022) in diffusers' ``AutoencoderKL`` layout,
with parameter names identical to diffusers' state dict, so a diffusers safetensors file loads
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

Tokens (paper footnote 3, DiT's layout): the latent is (B, c, H/s, W/s); a token is a 2 x 2
patch of latents flattened as (c, 2, 2), so d = 4c and L = (H/2s)(W/2s), the token grid of a
backbone with patch size p = 2s.

    encode(x) = patchify_2( scale * mu(x) )                 (B, L, 4c)
    decode(z) = patchify_p( g( unpatchify_2(z) / scale ) )  (B, L, 3 p^2)   (no clamp)

encode is deterministic (the posterior mean); DiT samples the posterior instead. ``scale`` is
LDM's scale_factor: 1 / std of the posterior-mean latents, measured on the first fit batches after
fitting (or after loading pretrained weights, unless their config.json gives
``scaling_factor``), so the latents have unit variance like the DDM's noise.

Fit (LDM's ``LPIPSWithDiscriminator`` with a fixed logvar = 0), per image, averaged over the batch:

    L = sum_pixels |x - g(z)| + w_p * 3HW * LPIPS(x, g(z)) + w_kl * KL + lambda * w_adv * L_G
    KL = KL[N(mu, sigma^2) || N(0, I)] = 1/2 sum_latents (mu^2 + sigma^2 - 1 - log sigma^2)

with z = mu + sigma * eps sampled from the posterior, KL summed over latent elements and
averaged over the batch, L1 summed over pixel elements (LDM's convention: w_kl = 1e-6 is LDM's
f8 default relative to that sum), and the perceptual term added to every pixel element as in LDM.
The paper's Sec. 4.2 formula writes an L2 reconstruction; LDM's autoencoder, which the baseline
used, was trained with L1. The adversarial term (hinge, PatchGAN, VQGAN's adaptive lambda, see
``losses.py``) switches on after ``adv_start`` of the steps, with its own optimiser.
Optimiser: AdamW with LDM's betas (0.5, 0.9) and no weight decay (LDM uses Adam), linear warmup
over 5% of the steps then cosine to 0. ``fit_data`` starts from a fresh initialisation drawn
from ``generator``, so a fit is a function of (data, config, generator).

Credits: LDM (Rombach et al. 2022) for the autoencoder and its loss; VQGAN (Esser et al. 2021)
for the adversarial loss and the adaptive weight; LPIPS (Zhang et al. 2018) for the perceptual
loss; diffusers for the parameter layout.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .base import Tokenizer, patchify, unpatchify
from .losses import adaptive_weight, hinge_d_loss, hinge_g_loss

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


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mean, exp(logvar)) || N(0, I)] summed over all but the batch dim: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


# ---------------------------------------------------------------- pretrained files
def _resolve_pretrained(path: str | Path) -> Path:
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
    from safetensors import safe_open

    file = _resolve_pretrained(path)
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


def _modern_attention_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


# ---------------------------------------------------------------- the tokenizer
class ConvVAETokenizer(Tokenizer):
    name = "conv_vae"
    trained = True

    def __init__(self, patch_size: int, dim: int, width: int = 64, res_blocks: int = 2,
                 block_out_channels: list[int] | None = None, norm_groups: int = 0,
                 channels: int = 3):
        super().__init__(patch_size, dim, channels)
        stride = patch_size // 2
        if dim % 4 or stride < 1 or stride & (stride - 1) or 2 * stride != patch_size:
            raise ValueError(f"conv_vae needs dim % 4 == 0 and patch_size = 2 s with s a power of "
                             f"two (got dim={dim}, patch_size={patch_size})")
        levels = stride.bit_length()  # log2(s) + 1
        widths = list(block_out_channels or [width * m for m in channel_mults(levels)])
        if len(widths) != levels:
            raise ValueError(f"{len(widths)} levels give stride {2 ** (len(widths) - 1)}, but "
                             f"patch_size={patch_size} needs stride {stride}")
        self.stride, self.latent_channels = stride, dim // 4
        self.width, self.res_blocks, self.block_out_channels = widths[0], res_blocks, widths
        self.norm_groups = norm_groups or default_groups(widths)
        g, c = self.norm_groups, self.latent_channels
        self.encoder = Encoder(channels, widths, res_blocks, c, g)
        self.decoder = Decoder(c, widths, res_blocks, channels, g)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.register_buffer("scale", torch.tensor(1.0))

    # ---------------------------------------------------------------- config
    @staticmethod
    def effective_stride(cfg) -> int:
        return cfg.tokenizer.stride or cfg.model.patch_size // 2

    @classmethod
    def check_config(cls, cfg) -> None:
        tk, p = cfg.tokenizer, cfg.model.patch_size
        s = cls.effective_stride(cfg)
        if s < 1 or s & (s - 1) or 2 * s != p:
            raise ConfigError(
                f"tokenizer.name=conv_vae: the latent stride s (tokenizer.stride={tk.stride}, 0 = "
                f"model.patch_size/2) must be a power of two with 2 s = model.patch_size={p}, since a "
                "token is a 2x2 patch of latents and the token grid must be the backbone's; set "
                "model.patch_size to 2, 4, 8, 16, ... and tokenizer.stride=0.")
        if tk.dim % 4:
            raise ConfigError(f"tokenizer.dim={tk.dim}: conv_vae tokens are 2x2 patches of c-channel "
                              "latents, so tokenizer.dim = 4 c must be a multiple of 4.")
        if tk.width < 1 or tk.res_blocks < 1:
            raise ConfigError("tokenizer.width and tokenizer.res_blocks must be >= 1 for conv_vae.")
        if not (0.0 <= tk.adv_start <= 1.0 and tk.adv_weight >= 0 and tk.perceptual_weight >= 0):
            raise ConfigError("tokenizer.adv_start must be in [0, 1] and tokenizer.adv_weight, "
                              "tokenizer.perceptual_weight >= 0.")
        if tk.perceptual and not tk.pretrained and not Path(tk.perceptual_weights).is_file():
            where = f"'{tk.perceptual_weights}' does not exist" if tk.perceptual_weights else "is not set"
            raise ConfigError(
                f"tokenizer.perceptual=true needs tokenizer.perceptual_weights=PATH, which {where}: "
                "a local file with torchvision's VGG16 ImageNet weights (IMAGENET1K_V1, the "
                "vgg16-397923af.pth that torchvision downloads; fetch it on a machine with internet "
                "and copy it here, or give a safetensors file of the same state dict). ldae never "
                "downloads weights. Note that the paper (Sec. 4.1, Tab. 1) treats a tokenizer "
                "trained with this supervised perceptual loss as not legitimate for self-supervised "
                "learning; set tokenizer.perceptual=false for a legitimate run.")
        if tk.pretrained:
            if not Path(tk.pretrained).exists():
                raise ConfigError(f"tokenizer.pretrained='{tk.pretrained}' does not exist; give a "
                                  "diffusers-layout AutoencoderKL safetensors file (or its folder).")
            try:
                arch = pretrained_arch(tk.pretrained)
            except CheckpointError as e:
                raise ConfigError(f"tokenizer.pretrained: {e}") from None
            ps, dim = 2 ** len(arch["block_out_channels"]), 4 * arch["latent_channels"]
            if ps != p or dim != tk.dim or arch["in_channels"] != 3:
                raise ConfigError(
                    f"tokenizer.pretrained={tk.pretrained} has stride {ps // 2} and "
                    f"{arch['latent_channels']} latent channels, so it needs model.patch_size={ps} "
                    f"and tokenizer.dim={dim} (got {p} and {tk.dim}).")

    @classmethod
    def from_config(cls, cfg) -> "ConvVAETokenizer":
        tk = cfg.tokenizer
        if tk.pretrained:  # the file's architecture (check_config made sure it fits the model)
            arch = pretrained_arch(tk.pretrained)
            return cls(cfg.model.patch_size, tk.dim, res_blocks=arch["res_blocks"],
                       block_out_channels=arch["block_out_channels"], norm_groups=arch["norm_groups"])
        return cls(cfg.model.patch_size, tk.dim, width=tk.width, res_blocks=tk.res_blocks)

    def meta(self) -> dict:
        return {**super().meta(), "width": self.width, "res_blocks": self.res_blocks,
                "block_out_channels": list(self.block_out_channels), "norm_groups": self.norm_groups}

    # ---------------------------------------------------------------- model
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior N(mean, exp(logvar)) of the (unscaled) latent, each (B, c, H/s, W/s)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_latent(self, lat: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, c, h, w) -> image (B, 3, h s, w s)."""
        return self.decoder(self.post_quant_conv(lat))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (deterministic; DiT samples the posterior) x scale, 2x2 latent tokens."""
        return patchify(self.moments(x)[0] * self.scale, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lat = unpatchify(z, 2, self.latent_channels) / self.scale
        return self.to_tokens(self.decode_latent(lat))

    def filters(self) -> torch.Tensor:
        """conv_in's 3x3 RGB filters (width, 3, 3, 3), by decreasing norm."""
        w = self.encoder.conv_in.weight.detach()
        return w[w.flatten(1).norm(dim=1).argsort(descending=True)]

    # ---------------------------------------------------------------- pretrained
    @classmethod
    def load_pretrained(cls, path: str | Path, patch_size: int | None = None) -> "ConvVAETokenizer":
        """A tokenizer from a diffusers-layout AutoencoderKL safetensors file (or its folder),
        strict load; ``scale`` = the config's scaling_factor if given, else 1 (measure it with
        :meth:`measure_scale`)."""
        arch = pretrained_arch(path)
        ps = 2 ** len(arch["block_out_channels"])
        if patch_size not in (None, ps):
            raise ConfigError(f"{path} has stride {ps // 2}: it needs model.patch_size={ps}.")
        tok = cls(ps, 4 * arch["latent_channels"], res_blocks=arch["res_blocks"],
                  block_out_channels=arch["block_out_channels"], norm_groups=arch["norm_groups"],
                  channels=arch["in_channels"])
        tok.load_pretrained_weights(path)
        return tok

    def load_pretrained_weights(self, path: str | Path) -> str:
        """Strict load of a diffusers state dict into this architecture; returns where ``scale``
        came from ("config" or "unset")."""
        from safetensors.torch import load_file

        file = _resolve_pretrained(path)
        arch = pretrained_arch(path)
        sd = _modern_attention_names(load_file(str(file)))
        sf = arch["scaling_factor"]
        sd["scale"] = torch.tensor(float(sf) if sf else 1.0)
        try:
            self.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{file} does not match the conv_vae architecture "
                                  f"{self.meta()}: {e}") from None
        return "config" if sf else "unset"

    # ---------------------------------------------------------------- fitting
    @torch.no_grad()
    def measure_scale(self, batches, max_batches: int = 8) -> tuple[float, float]:
        """Set ``scale`` = 1 / std of the posterior-mean latents over the first ``max_batches``
        batches (LDM's scale_factor, all elements pooled). Returns (scale, mean |x - x_hat|)."""
        n, n_img, s1, s2, l1 = 0, 0, 0.0, 0.0, 0.0
        for i, x in enumerate(batches):
            if i >= max_batches:
                break
            mean = self.moments(x)[0].double()
            n += mean.numel()
            s1, s2 = s1 + float(mean.sum()), s2 + float(mean.pow(2).sum())
            l1 += float((self.decode_latent(mean.float()) - x).abs().mean(dim=(1, 2, 3)).sum())
            n_img += x.shape[0]
        if n < 2:
            raise ValueError("need at least 2 latent elements to measure the scale")
        std = math.sqrt(max(s2 - s1 * s1 / n, 0.0) / (n - 1))
        self.scale.fill_(1.0 / max(std, 1e-12))
        return float(self.scale), l1 / n_img

    def _fresh_init(self, seed: int) -> None:
        """Re-draw every parameter from PyTorch's default inits with a CPU generator seeded by
        ``seed`` (independent of the global RNG state), keeping the device."""
        device = self.scale.device
        self.cpu()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            for m in self.modules():
                if m is not self and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.scale.fill_(1.0)
        self.to(device)

    def fit_data(self, data, tcfg, generator: torch.Generator | None = None,
                 show: bool = True) -> dict:
        """Train from a fresh initialisation drawn from ``generator`` (or, with
        ``tcfg.pretrained``, load that file instead), then measure ``scale``. Statistics:
        recon_l1 / kl / loss (and perceptual, g_loss, d_loss, adv_lambda when on) averaged over
        the last epoch's steps, recon_l1_init / recon_l1_eval (posterior-mean reconstruction on
        the scale batches before / after), scale, steps."""
        from ..logging import progress

        device = data.device
        if tcfg.pretrained:
            self.to(device)
            src = self.load_pretrained_weights(tcfg.pretrained)
            stats: dict = {"pretrained": str(tcfg.pretrained), "steps": 0}
            self.eval()
            scale, rec = self.measure_scale(data.batches(tcfg.fit_batch, 0, shuffle=False))
            if src == "config":  # keep the published factor; report what the data say
                stats["scale_measured"] = scale
                self.scale.fill_(float(pretrained_arch(tcfg.pretrained)["scaling_factor"]))
            stats.update(scale=float(self.scale), scale_source=src if src == "config" else "measured",
                         recon_l1_eval=rec)
            return stats

        g = generator if generator is not None else torch.Generator().manual_seed(0)
        seeds = torch.randint(0, 2 ** 62, (3,), generator=g).tolist()
        self._fresh_init(seeds[0])
        noise_gen = torch.Generator(device).manual_seed(seeds[1])
        self.to(device).eval()
        _, rec_init = self.measure_scale(data.batches(tcfg.fit_batch, 0, shuffle=False))
        self.train()

        perceptual = None
        if tcfg.perceptual:
            from .losses import PerceptualLoss

            perceptual = PerceptualLoss.from_file(tcfg.perceptual_weights).to(device)
        disc = d_opt = None
        steps_per_epoch = math.ceil(data.n / tcfg.fit_batch)
        total = max(1, round(tcfg.fit_epochs * steps_per_epoch))
        adv_from = math.ceil(tcfg.adv_start * total)
        if tcfg.adversarial:
            from .losses import NLayerDiscriminator, disc_layers_for

            first = next(iter(data.batches(1, 0, shuffle=False)))
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seeds[2])
                disc = NLayerDiscriminator(self.channels, 64, disc_layers_for(min(first.shape[-2:])))
            disc = disc.to(device).train()
            d_opt = torch.optim.AdamW(disc.parameters(), lr=tcfg.fit_lr, betas=(0.5, 0.9),
                                      weight_decay=0.0)
        opt = torch.optim.AdamW(self.parameters(), lr=tcfg.fit_lr, betas=(0.5, 0.9), weight_decay=0.0)
        warmup = max(1, round(0.05 * total))
        last = self.decoder.conv_out.weight

        sums: dict[str, torch.Tensor] = {}  # on the device: no host sync per step
        counts: dict[str, int] = {}
        last_epoch_from = max(0, total - steps_per_epoch)  # statistics over the last epoch's steps

        def log(k: str, v: torch.Tensor, step: int) -> None:
            if step >= last_epoch_from:
                sums[k] = sums[k] + v.detach() if k in sums else v.detach().float().clone()
                counts[k] = counts.get(k, 0) + 1

        bar = progress(int(round(tcfg.fit_epochs * data.n)), f"fit {self.name} tokenizer", enabled=show)
        step, epoch = 0, 0
        while step < total:
            for x in data.batches(tcfg.fit_batch, epoch):
                if step >= total:
                    break
                lr = (tcfg.fit_lr * (step + 1) / warmup if step < warmup else
                      tcfg.fit_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
                for o in (opt, d_opt):
                    if o is not None:
                        for grp in o.param_groups:
                            grp["lr"] = lr
                B = x.shape[0]
                mean, logvar = self.moments(x)
                eps = torch.randn(mean.shape, device=device, generator=noise_gen)
                rec = self.decode_latent(mean + (0.5 * logvar).exp() * eps)
                l1 = (x - rec).abs()
                nll = l1.sum() / B
                if perceptual is not None:
                    p = perceptual(x, rec)
                    nll = nll + tcfg.perceptual_weight * p.sum() * l1[0].numel() / B
                    log("perceptual", p.mean(), step)
                kl = kl_standard_normal(mean, logvar).mean()
                loss = nll + tcfg.kl_weight * kl
                adv = disc is not None and step >= adv_from
                if adv:
                    disc.requires_grad_(False)
                    g_loss = hinge_g_loss(disc(rec))
                    lam = adaptive_weight(nll, g_loss, last) * tcfg.adv_weight
                    loss = loss + lam * g_loss
                    log("g_loss", g_loss.detach(), step)
                    log("adv_lambda", lam, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if adv:
                    disc.requires_grad_(True)
                    d_loss = hinge_d_loss(disc(x), disc(rec.detach()))
                    d_opt.zero_grad(set_to_none=True)
                    d_loss.backward()
                    d_opt.step()
                    log("d_loss", d_loss.detach(), step)
                log("recon_l1", l1.detach().mean(), step)
                log("kl", kl.detach(), step)
                log("loss", loss.detach(), step)
                step += 1
                bar.update(B)
            epoch += 1
        bar.close()
        self.eval()
        scale, rec_eval = self.measure_scale(data.batches(tcfg.fit_batch, 0, shuffle=False))
        stats = {k: float(sums[k]) / counts[k] for k in sums}
        stats.update(scale=scale, scale_source="measured", recon_l1_init=rec_init,
                     recon_l1_eval=rec_eval, steps=step,
                     adv_start_step=adv_from if disc is not None else None)
        return stats

__all__ = ["ConvVAETokenizer", "kl_standard_normal", "pretrained_arch", "channel_mults"]
