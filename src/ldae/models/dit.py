"""The DiT-style ViT backbone (SPEC §3; paper App. A "DiT architecture").

Tokens in, tokens out: the backbone knows nothing about noise, tokenizers or images. It maps
(B, L, in_dim) tokens and a timestep t (plus an optional class label) to (B, L, out_dim) tokens.
The first ``encoder_blocks`` blocks are the encoder; its feature is the token average of block k's
output (no extra norm), and any block's output can be read in one forward (App. A sweeps).

Deviations from DiT: the per-block modulation MLP has hidden width W/4 by default (paper App. A);
``adaln=linear`` gives DiT's form. Patch embedding is a Linear on token vectors (the tokenizer does
the patchifying), which equals DiT's strided conv on patches flattened as (C, p, p).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import (DiTBlock, FinalLayer, LabelEmbedder, Modulation, TimestepEmbedder,
                     sincos_pos_embed_2d)
from .registry import get_size


class DiT(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, width: int, depth: int,
                 heads: int, mlp_ratio: float = 4.0, adaln: str = "mlp4",
                 num_classes: int = 0, label_dropout: float = 0.1, encoder_blocks: int = 0,
                 mask_token: bool = False):
        super().__init__()
        grid = int(round(num_tokens ** 0.5))
        if grid * grid != num_tokens:
            raise ValueError(f"num_tokens {num_tokens} must be a square (an H/p x W/p grid)")
        self.in_dim, self.out_dim, self.num_tokens = in_dim, out_dim, num_tokens
        self.width, self.depth = width, depth
        self.encoder_blocks = encoder_blocks or depth // 2
        self.patch_embed = nn.Linear(in_dim, width)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, grid)[None], persistent=False)
        self.t_embed = TimestepEmbedder(width)
        self.y_embed = LabelEmbedder(num_classes, width, label_dropout) if num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, adaln) for _ in range(depth))
        self.final = FinalLayer(width, out_dim, adaln)
        # MAE (``keep`` in forward): the learned token put where the encoder saw no patch
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if mask_token else None
        self._init_weights()

    @classmethod
    def from_size(cls, name: str, **kw) -> "DiT":
        s = get_size(name)
        return cls(width=s.width, depth=s.depth, heads=s.heads, mlp_ratio=s.mlp_ratio, **kw)

    def _init_weights(self) -> None:
        """DiT's init: xavier-uniform Linears, zero biases, N(0, 0.02) for t/label embeddings;
        the adaLN-Zero gates and the final Linear were zeroed by their constructors."""
        zeroed = {id(m.net[-1]) for m in self.modules() if isinstance(m, Modulation)}
        zeroed.add(id(self.final.linear))
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in zeroed:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)  # MAE's init

    # ------------------------------------------------------------------ protocol
    def condition(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """c = t embedding (+ label embedding; y=None means the null class)."""
        c = self.t_embed(t)
        if self.y_embed is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.y_embed.num_classes, device=t.device, dtype=torch.long)
            c = c + self.y_embed(y)
        return c

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(tokens) + self.pos_embed.to(tokens.dtype)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, in_dim), t (B,) -> (B, L, out_dim).

        ``keep`` (B, n) (MAE, He et al. 2022): indices of the visible tokens; the encoder blocks
        see only those, the decoder blocks all L, the mask token in place of the hidden ones."""
        c = self.condition(t, y)  # (B, W): timestep (+ class) embedding, modulates every block
        x = self.embed(tokens)  # (B, L, W): tokens embedded, plus the fixed 2-D sin-cos positions
        if keep is not None:
            return self._masked(x, c, keep)
        for blk in self.blocks:
            x = blk(x, c)  # (B, L, W): adaLN-Zero attention and MLP
        return self.final(x, c)  # (B, L, out_dim): adaLN-modulated norm, then a Linear

    def _masked(self, x: torch.Tensor, c: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """MAE's forward: encoder on the visible tokens, decoder on all (MAE's decoder adds its
        positions again to every token, visible ones included; here the same fixed sin-cos)."""
        if self.mask_token is None:
            raise ValueError("a masked forward needs a DiT built with mask_token=True")
        B, L, W = x.shape
        idx = keep[..., None].expand(-1, -1, W)  # (B, n, W)
        v = x.gather(1, idx)  # (B, n, W): the visible tokens
        for blk in self.blocks[: self.encoder_blocks]:
            v = blk(v, c)  # (B, n, W)
        full = self.mask_token.to(v.dtype).expand(B, L, W).scatter(1, idx, v)  # (B, L, W)
        x = full + self.pos_embed.to(v.dtype)
        for blk in self.blocks[self.encoder_blocks:]:
            x = blk(x, c)  # (B, L, W)
        return self.final(x, c)  # (B, L, out_dim)

    def forward_blocks(self, tokens: torch.Tensor, t: torch.Tensor, blocks: list[int],
                       y: torch.Tensor | None = None, pool: bool = True) -> list[torch.Tensor]:
        """Outputs of the given blocks (1-based: block k = after k blocks), from one forward that
        stops at the deepest one. Pooled to (B, W) by token average when ``pool``."""
        if not blocks or min(blocks) < 1 or max(blocks) > self.depth:
            raise ValueError(f"blocks must be in [1, {self.depth}], got {blocks}")
        c = self.condition(t, y)  # (B, W)
        x = self.embed(tokens)  # (B, L, W)
        out: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(blocks)], start=1):
            x = blk(x, c)  # (B, L, W)
            if i in blocks:
                out[i] = x.mean(dim=1) if pool else x  # (B, W) token average, or (B, L, W)
        return [out[k] for k in blocks]

    def features(self, tokens: torch.Tensor, t: torch.Tensor, k: int | None = None,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder feature: token average of block k's output (k = encoder depth by default)."""
        return self.forward_blocks(tokens, t, [k or self.encoder_blocks], y)[0]

    def num_params(self, per_token: bool = False) -> int:
        """Weights; ``per_token`` counts only those applied to every token (SPEC §8 FLOPs)."""
        if not per_token:
            return sum(p.numel() for p in self.parameters())
        n = self.patch_embed.weight.numel() + self.final.linear.weight.numel()
        for b in self.blocks:
            n += sum(m.weight.numel() for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2))
        return n

    def encoder_flops_per_image(self, k: int | None = None) -> float:
        """Forward FLOPs of the frozen encoder (the first k blocks) on one image:
        2 N_k L + 4 k W L^2, N_k = the patch embedding and the blocks' qkv, proj, fc1, fc2
        (the modulation runs once per image at fixed t, not per token)."""
        k = k or self.encoder_blocks
        L, W = self.num_tokens, self.width
        n = self.patch_embed.weight.numel()
        for b in self.blocks[:k]:
            n += sum(m.weight.numel() for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2))
        return 2.0 * n * L + 4.0 * k * W * L * L

    def train_flops_per_image(self, visible: int | None = None) -> float:
        """SPEC §8: 6 N L + 12 depth W L^2 (forward + backward). ``visible`` (MAE): the encoder
        blocks run on that many tokens, the embedding, decoder blocks and final layer on all L."""
        L, W = self.num_tokens, self.width
        if visible is None:
            return 6.0 * self.num_params(per_token=True) * L + 12.0 * self.depth * W * L * L
        n, k = visible, self.encoder_blocks
        per_block = [sum(m.weight.numel() for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2))
                     for b in self.blocks]
        ends = self.patch_embed.weight.numel() + self.final.linear.weight.numel()
        matmul = ends * L + sum(per_block[:k]) * n + sum(per_block[k:]) * L
        return 6.0 * matmul + 12.0 * W * (k * n * n + (self.depth - k) * L * L)
