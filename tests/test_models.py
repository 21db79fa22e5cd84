"""DiT-style backbone (SPEC §3): src/ldae/models/{layers,dit,registry}.py."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from ldae.models import MODEL_SIZES, DiT, get_size
from ldae.models.layers import (Attention, DiTBlock, FinalLayer, LabelEmbedder, Modulation,
                                sincos_pos_embed_2d)

ADALN = ["mlp4", "linear"]


def tiny(adaln="mlp4", in_dim=12, out_dim=12, num_tokens=16, **kw) -> DiT:
    return DiT.from_size("test", in_dim=in_dim, out_dim=out_dim, num_tokens=num_tokens, adaln=adaln, **kw)


def randomize_zero_inits(m: nn.Module) -> None:
    """Give the zero-initialised layers (gates, final Linear) random values, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("adaln", ADALN)
def test_forward_shapes(adaln):
    m = tiny(adaln, in_dim=4, out_dim=12, num_tokens=16)
    x = torch.randn(3, 16, 4)
    out = m(x, torch.tensor([0.0, 5.0, 999.0]))
    assert out.shape == (3, 16, 12)
    feats = m.forward_blocks(x, torch.zeros(3), [1, 2], pool=False)
    assert [f.shape for f in feats] == [(3, 16, 32), (3, 16, 32)]
    assert m.features(x, torch.zeros(3)).shape == (3, 32)


def test_non_square_token_count_rejected():
    with pytest.raises(ValueError, match="square"):
        tiny(num_tokens=15)


# ---------------------------------------------------------------- init
@pytest.mark.parametrize("adaln", ADALN)
def test_adaln_zero_block_is_identity_at_init(adaln):
    torch.manual_seed(0)
    blk = DiTBlock(32, heads=2, mlp_ratio=4.0, adaln=adaln)
    x, c = torch.randn(2, 9, 32), torch.randn(2, 32)
    assert torch.equal(blk(x, c), x)
    # Every block inside a freshly built model, fed its real conditioning, is the identity too.
    m = tiny(adaln)
    c = m.condition(torch.tensor([3.0, 700.0]))
    h = torch.randn(2, 16, 32)
    for b in m.blocks:
        assert torch.equal(b(h, c), h)
    # ... and it is the zero gates that make it so.
    with torch.no_grad():
        blk.modulation.net[-1].bias.fill_(0.5)
    assert not torch.allclose(blk(x, c), x)


@pytest.mark.parametrize("adaln", ADALN)
def test_final_layer_outputs_zero_at_init(adaln):
    m = tiny(adaln)
    out = m(torch.randn(2, 16, 12), torch.tensor([1.0, 500.0]))
    assert torch.equal(out, torch.zeros_like(out))
    fl = FinalLayer(32, 7, adaln)
    assert torch.equal(fl(torch.randn(2, 5, 32), torch.randn(2, 32)), torch.zeros(2, 5, 7))


def test_modulation_shapes():
    W = 64
    mlp4 = Modulation(W, 6, "mlp4")
    lin1, act, lin2 = mlp4.net
    assert isinstance(act, nn.SiLU)
    assert lin1.weight.shape == (W // 4, W) and lin1.bias.shape == (W // 4,)
    assert lin2.weight.shape == (6 * W, W // 4) and lin2.bias.shape == (6 * W,)
    lin = Modulation(W, 6, "linear")
    assert isinstance(lin.net[0], nn.SiLU)
    assert lin.net[1].weight.shape == (6 * W, W)
    # W/4 hidden: W*W/4 + W/4 + W/4*6W + 6W parameters, vs W*6W + 6W for DiT's linear form.
    assert sum(p.numel() for p in mlp4.parameters()) == W * W // 4 + W // 4 + (W // 4) * 6 * W + 6 * W
    assert sum(p.numel() for p in lin.parameters()) == W * 6 * W + 6 * W
    outs = mlp4(torch.randn(3, W))
    assert len(outs) == 6 and all(o.shape == (3, W) for o in outs)
    with pytest.raises(ValueError, match="mlp4, linear"):
        Modulation(W, 6, "conv")


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("adaln", ADALN)
def test_every_parameter_gets_a_nonzero_gradient(adaln):
    """timm's test_model_backward checks ``grad is not None``, which zero-initialised adaLN-Zero
    layers pass trivially with all-zero gradients. Check that gradients are non-zero instead.

    With the gates and the final Linear at zero, the gradient reaches the parameters in stages:
    backward 1 only the final Linear; backward 2 (after one step) also the gates, the final
    modulation and the patch embedding; backward 3 (after two steps) everything."""
    torch.manual_seed(0)
    m = tiny(adaln, num_classes=3, label_dropout=0.1)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, target = torch.randn(4, 16, 12), torch.randn(4, 16, 12)
    t, y = torch.tensor([0.0, 10.0, 500.0, 999.0]), torch.tensor([0, 1, 2, 0])

    def backward():
        opt.zero_grad(set_to_none=True)
        (m(x, t, y) - target).square().mean().backward()

    def nonzero():
        return {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    names = {n for n, _ in m.named_parameters()}
    backward()
    assert all(p.grad is not None for p in m.parameters())  # the (insufficient) timm check
    assert nonzero() == {"final.linear.weight", "final.linear.bias"}
    opt.step()
    backward()
    second = nonzero()
    assert "blocks.0.attn.qkv.weight" not in second  # still behind a zero gate
    opt.step()
    backward()
    assert nonzero() == names
    # Every one of the modulation vectors (shift, scale, gate for attn and MLP) gets a gradient.
    for mod in (mm for mm in m.modules() if isinstance(mm, Modulation)):
        gw = mod.net[-1].weight.grad
        for chunk in gw.chunk(mod.n, dim=0):
            assert chunk.abs().sum() > 0


# ---------------------------------------------------------------- label embedding
def test_label_embedder_has_a_null_class():
    emb = LabelEmbedder(num_classes=10, width=8, dropout=0.1)
    assert emb.table.weight.shape == (11, 8)  # row 10 is the null class
    assert emb.dropout == 0.1  # applied by the objective in training (test_diffusion.py)
    y = torch.tensor([0, 9, 10, 3])
    for mode in (emb.train, emb.eval):
        mode()
        assert torch.equal(emb(y), emb.table.weight[y])


def test_class_conditional_without_labels_uses_null_class():
    m = tiny(num_classes=5)
    m.eval()
    t = torch.tensor([3.0, 40.0])
    null = m.y_embed.table.weight[5]
    assert torch.allclose(m.condition(t, None), m.t_embed(t) + null)
    randomize_zero_inits(m)
    x = torch.randn(2, 16, 12)
    out_none = m(x, t)
    assert torch.allclose(out_none, m(x, t, torch.full((2,), 5)))
    assert not torch.allclose(out_none, m(x, t, torch.zeros(2, dtype=torch.long)))
    # An unconditional model has no label table at all.
    assert tiny().y_embed is None


# ---------------------------------------------------------------- blocks and features
def test_forward_blocks_matches_manual_loop_and_features():
    torch.manual_seed(0)
    m = DiT.from_size("micro", in_dim=12, out_dim=12, num_tokens=16)  # 4 blocks, encoder = 2
    randomize_zero_inits(m)
    m.eval()
    x, t = torch.randn(2, 16, 12), torch.tensor([10.0, 10.0])
    c = m.t_embed(t)
    h = m.patch_embed(x) + m.pos_embed
    manual = []
    for blk in m.blocks:
        h = blk(h, c)
        manual.append(h)
    assert torch.allclose(m.final(h, c), m(x, t), atol=1e-6)
    full = m.forward_blocks(x, t, [1, 3, 4], pool=False)
    for got, k in zip(full, [1, 3, 4]):
        assert torch.allclose(got, manual[k - 1], atol=1e-6)
    pooled = m.forward_blocks(x, t, [4, 2])
    assert torch.allclose(pooled[0], manual[3].mean(1), atol=1e-6)
    assert torch.allclose(pooled[1], manual[1].mean(1), atol=1e-6)
    for k in (1, 2, 3):
        assert torch.allclose(m.features(x, t, k), manual[k - 1].mean(1), atol=1e-6)
    assert m.encoder_blocks == 2
    assert torch.allclose(m.features(x, t), manual[1].mean(1), atol=1e-6)
    assert not torch.allclose(manual[0].mean(1), manual[1].mean(1))  # blocks do differ
    for bad in ([], [0], [5]):
        with pytest.raises(ValueError):
            m.forward_blocks(x, t, bad)


# ---------------------------------------------------------------- attention
def test_sdpa_attention_matches_hand_written():
    torch.manual_seed(0)
    B, L, W, h = 2, 5, 16, 4
    attn = Attention(W, h)
    x = torch.randn(B, L, W)
    got = attn(x).detach().numpy()

    xn = x.double().numpy()
    Wqkv, bqkv = attn.qkv.weight.detach().double().numpy(), attn.qkv.bias.detach().double().numpy()
    Wp, bp = attn.proj.weight.detach().double().numpy(), attn.proj.bias.detach().double().numpy()
    qkv = xn @ Wqkv.T + bqkv  # (B, L, 3W): [q | k | v], each split into h heads of W/h
    dh = W // h
    out = np.zeros((B, L, W))
    for b in range(B):
        for head in range(h):
            q = qkv[b, :, 0 * W + head * dh: 0 * W + (head + 1) * dh]
            k = qkv[b, :, 1 * W + head * dh: 1 * W + (head + 1) * dh]
            v = qkv[b, :, 2 * W + head * dh: 2 * W + (head + 1) * dh]
            s = q @ k.T / math.sqrt(dh)
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            out[b, :, head * dh:(head + 1) * dh] = p @ v
    ref = out @ Wp.T + bp
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ---------------------------------------------------------------- position embedding
def test_sincos_pos_embed_closed_form():
    """MAE/DiT ``get_2d_sincos_pos_embed``: token i*g + j sits at row i, column j; the first W/2
    dims encode the column (DiT's grid[0] = grid_w), the last W/2 the row; each half is
    [sin(pos * omega_k), cos(pos * omega_k)], omega_k = 10000^(-k / (W/4))."""
    W, g = 16, 4
    pe = sincos_pos_embed_2d(W, g).double().numpy()
    assert pe.shape == (g * g, W)
    omega = 1.0 / 10000 ** (np.arange(W // 4) / (W / 4))

    def one_d(pos):
        return np.concatenate([np.sin(pos * omega), np.cos(pos * omega)])

    for row, col in [(0, 0), (1, 2), (3, 1), (2, 3)]:
        expected = np.concatenate([one_d(col), one_d(row)])
        np.testing.assert_allclose(pe[row * g + col], expected, atol=1e-6)
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(6, 2)


# ---------------------------------------------------------------- FLOPs and sizes
def test_train_flops_per_image_test_size():
    m = tiny(in_dim=12, out_dim=12, num_tokens=16)  # W=32, depth 2, MLP 4W, L=16
    W, depth, L = 32, 2, 16
    n_token = 12 * W + W * 12 + depth * (3 * W * W + W * W + W * 4 * W + 4 * W * W)
    assert n_token == 25344
    assert m.num_params(per_token=True) == n_token
    assert m.train_flops_per_image() == 6 * n_token * L + 12 * depth * W * L * L == 2629632
    assert m.train_flops_per_image(visible=L) == m.train_flops_per_image()
    # MAE: block 1 (the encoder) on 4 visible tokens, embedding, block 2 and final on all 16
    blk = 3 * W * W + W * W + W * 4 * W + 4 * W * W
    by_hand = 6 * (12 * W * L + W * 12 * L + blk * 4 + blk * L) + 12 * W * (4 * 4 + L * L)
    assert m.train_flops_per_image(visible=4) == by_hand


def test_encoder_flops_per_image_by_hand():
    m = tiny(in_dim=12, out_dim=12, num_tokens=16)  # W=32, encoder = 1 of 2 blocks, L=16
    W, L = 32, 16
    n_enc = 12 * W + (3 * W * W + W * W + W * 4 * W + 4 * W * W)  # embedding + one block
    assert m.encoder_flops_per_image() == 2 * n_enc * L + 4 * 1 * W * L * L == 438272
    assert m.encoder_flops_per_image(2) > m.encoder_flops_per_image(1)


def expected_params(W, depth, mlp_ratio, in_dim, out_dim, adaln, num_classes=0):
    hidden = int(W * mlp_ratio)

    def mod(n):
        return W * (W // 4) + W // 4 + (W // 4) * n * W + n * W if adaln == "mlp4" else W * n * W + n * W

    block = (3 * W * W + 3 * W) + (W * W + W) + (W * hidden + hidden) + (hidden * W + W) + mod(6)
    embed = (in_dim * W + W) + (256 * W + W) + (W * W + W)
    final = mod(2) + W * out_dim + out_dim
    labels = (num_classes + 1) * W if num_classes else 0
    return embed + labels + depth * block + final


@pytest.mark.parametrize("name", list(MODEL_SIZES))
def test_every_registry_size_builds(name):
    s = get_size(name)
    in_dim, L = 3 * 16 * 16, 256  # ImageNet 256px, p=16 (sizes are independent of L otherwise)
    with torch.device("meta"):
        m = DiT.from_size(name, in_dim=in_dim, out_dim=in_dim, num_tokens=L)
    assert all(p.is_meta for p in m.parameters())  # no real memory for B / halfL / L
    assert m.width == s.width and m.depth == s.depth and len(m.blocks) == s.depth
    assert m.encoder_blocks == s.depth // 2
    assert m.blocks[0].attn.heads == s.heads and s.width % s.heads == 0
    assert m.num_params() == expected_params(s.width, s.depth, s.mlp_ratio, in_dim, in_dim, "mlp4")


def test_registry_paper_sizes_and_unknown_name():
    assert (get_size("B").width, get_size("B").depth) == (768, 24)
    assert (get_size("halfL").width, get_size("halfL").depth) == (1024, 24)
    assert (get_size("L").width, get_size("L").depth) == (1024, 48)
    with pytest.raises(KeyError, match="choices"):
        get_size("XXL")


def test_param_count_formula_on_real_model():
    m = tiny("linear", in_dim=4, out_dim=12, num_classes=7)
    assert m.num_params() == expected_params(32, 2, 4.0, 4, 12, "linear", num_classes=7)
