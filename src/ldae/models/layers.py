"""Building blocks of the DiT-style ViT (SPEC §3).

Written after DiT's ``models.py`` (Peebles & Xie) and timm's ``vision_transformer.py``; the
per-block modulation MLP with hidden width W/4 is the l-DAE paper's App. A change.
Shapes: B batch, L tokens, W width, h heads.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: (B, L, W) * (1 + scale) + shift, with (B, W) scale/shift, as one fused op."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y with a (B, W) gate, as one fused op (adaLN-Zero's residual)."""
    return torch.addcmul(x, gate.unsqueeze(1), y)


def sincos_pos_embed_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (grid*grid, width), row-major tokens (MAE/DiT form)."""
    if width % 4 != 0:
        raise ValueError(f"width {width} must be divisible by 4 for the 2-D sin-cos embedding")
    coords = np.arange(grid, dtype=np.float64)
    gy, gx = np.meshgrid(coords, coords, indexing="ij")  # (grid, grid) each

    def emb_1d(pos: np.ndarray, dim: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]  # (L, dim/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # MAE/DiT order: the first half encodes the column (their grid[0] = grid_w), the second the row.
    emb = np.concatenate([emb_1d(gx, width // 2), emb_1d(gy, width // 2)], axis=1)
    return torch.from_numpy(emb).float()


class TimestepEmbedder(nn.Module):
    """t (B,) float -> (B, W): sinusoidal features of dim ``freq_dim`` then a 2-layer MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb)


class LabelEmbedder(nn.Module):
    """Class label -> (B, W); index ``num_classes`` is the null class used for guidance.

    Label dropout (a fraction ``dropout`` of labels replaced by the null class during training,
    DiT) is drawn by the objective (``Denoiser.drop_labels``) so that all training randomness
    lives in one place and is independent of how a batch is split over processes."""

    def __init__(self, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


class Modulation(nn.Module):
    """Conditioning c (B, W) -> ``n`` modulation vectors (B, W) each.

    ``mlp4`` (default, paper App. A): Linear(W, W/4) -> SiLU -> Linear(W/4, nW).
    ``linear`` (DiT): SiLU -> Linear(W, nW). The last Linear starts at zero (adaLN-Zero)."""

    def __init__(self, width: int, n: int, kind: str):
        super().__init__()
        self.n = n
        if kind == "mlp4":
            self.net = nn.Sequential(nn.Linear(width, width // 4), nn.SiLU(), nn.Linear(width // 4, n * width))
        elif kind == "linear":
            self.net = nn.Sequential(nn.SiLU(), nn.Linear(width, n * width))
        else:
            raise ValueError(f"unknown adaln kind {kind!r}; choices: mlp4, linear")
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(c).chunk(self.n, dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash on GPU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, L, W/h) each
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, L, W))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. Exact GELU (timm's default) rather than DiT's tanh approximation:
    the two differ by < 1e-3, exact GELU is ~2x faster on CPU, and an exported encoder is then a
    stock timm ViT."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: LayerNorm without affine, shift/scale/gate for attention and MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, adaln: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.modulation = Modulation(width, 6, adaln)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c)
        x = gated_residual(x, gate_a, self.attn(modulate(self.norm1(x), shift_a, scale_a)))
        x = gated_residual(x, gate_m, self.mlp(modulate(self.norm2(x), shift_m, scale_m)))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then Linear to the output token dim; zero-initialised (DiT)."""

    def __init__(self, width: int, out_dim: int, adaln: str):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = Modulation(width, 2, adaln)
        self.linear = nn.Linear(width, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)
        return self.linear(modulate(self.norm(x), shift, scale))
