"""MAE (Tab. 4's baseline) on the l-DAE's ViT: src/ldae/objectives/mae.py and DiT's masked
forward. Masking, the loss by hand, the encoder never seeing a hidden patch, exact resume and a
2-process run equal to one, and the probe/export path of the trained encoder."""
import pytest
import torch
from test_pretrain import TINY, assert_same_state, assert_two_processes_equal_one, resumed_pair

from ldae import checkpoint
from ldae.config import load_config
from ldae.engine import pretrain
from ldae.engine.common import load_run
from ldae.engine.export import export
from ldae.errors import ConfigError
from ldae.models.vit import load_vit
from ldae.objectives import MaskedAutoencoder, build
from ldae.objectives.mae import patch_targets, random_masking
from ldae.seeds import Rows
from ldae.tokenizers import build_tokenizer

# 8 px images, patch 4: L = 4 tokens of D = 48 (mask ratio 0.5 keeps 2)
MAE = ["objective.name=mae", "objective.mask_ratio=0.5", "tokenizer.name=pixel", "tokenizer.dim=48",
       "diffusion.input_space=latent", "diffusion.output_space=latent", "diffusion.target=z0",
       "diffusion.schedule=constant"]


def mae_cfg(*extra):
    return load_config(None, TINY + MAE + list(extra))


def test_random_masking_keeps_int_L_times_one_minus_ratio_distinct_tokens():
    g = torch.Generator().manual_seed(0)
    keep, hidden = random_masking(6, 64, 0.75, torch.device("cpu"), g)
    assert keep.shape == (6, 16) and hidden.shape == (6, 64)  # MAE: len_keep = int(64 * 0.25)
    assert (hidden.sum(1) == 48).all()
    for k, h in zip(keep, hidden):
        assert len(set(k.tolist())) == 16 and not h[k].any()
    assert random_masking(6, 64, 0.75, torch.device("cpu"), torch.Generator().manual_seed(0))[0].equal(keep)
    # each row's visible set is uniform: every token is visible about a quarter of the time
    keep, _ = random_masking(4000, 8, 0.75, torch.device("cpu"), torch.Generator().manual_seed(1))
    share = torch.bincount(keep.flatten(), minlength=8).float() / 4000
    assert torch.allclose(share, torch.full((8,), 0.25), atol=0.03)


def test_masking_of_a_shard_is_its_rows_of_the_global_draw():
    full, _ = random_masking(8, 16, 0.5, torch.device("cpu"), torch.Generator().manual_seed(3))
    halves = [random_masking(4, 16, 0.5, torch.device("cpu"), torch.Generator().manual_seed(3),
                             Rows.of(8, r, 2, 0, 4))[0] for r in range(2)]
    for r in range(2):  # rank r holds rows r, r + 2, ... of the global batch
        assert torch.equal(halves[r], full[r::2])


def test_patch_targets_by_hand():
    t = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    mean, var = 3.0, ((2 ** 2 + 1 + 0 + 3 ** 2) / 3)  # unbiased variance, as torch.var and MAE
    want = (t - mean) / (var + 1e-6) ** 0.5
    torch.testing.assert_close(patch_targets(t, True), want)
    assert torch.equal(patch_targets(t, False), t)


def test_loss_is_the_mean_error_of_the_hidden_patches_only():
    cfg = mae_cfg("objective.norm_pix=false")
    mae = build(cfg, build_tokenizer(cfg))
    assert isinstance(mae, MaskedAutoencoder)
    tokens = torch.zeros(2, 4, 48)
    pred = torch.zeros(2, 4, 48)
    pred[0, 1] = 2.0  # hidden: error 4 on each of its 48 values
    pred[1, 0] = 1.0  # hidden: error 1
    pred[1, 3] = 5.0  # visible: must not count
    hidden = torch.tensor([[False, True, True, False], [True, False, True, False]])
    loss, parts = mae.loss_from_prediction(pred, tokens, hidden)
    assert loss.item() == pytest.approx((4.0 + 0 + 1.0 + 0) / 4)
    assert parts["mse_visible"].item() == pytest.approx((0 + 0 + 0 + 25.0) / 4)


def test_encoder_never_sees_a_hidden_patch():
    cfg = mae_cfg()
    torch.manual_seed(0)
    mae = build(cfg, build_tokenizer(cfg)).eval()
    net = mae.backbone
    for p in net.parameters():  # adaLN-Zero starts at zero: give every gate a value
        p.data.normal_(0, 0.3)
    tokens = torch.randn(3, 4, 48)
    keep = torch.tensor([[0, 2], [1, 3], [3, 0]])
    t = torch.zeros(3)
    out = net(tokens, t, None, keep)
    assert out.shape == (3, 4, 48)
    changed = tokens.clone()
    for b, k in enumerate(keep):
        hidden = [i for i in range(4) if i not in k.tolist()]
        changed[b, hidden] = torch.randn(len(hidden), 48) * 5
    torch.testing.assert_close(net(changed, t, None, keep), out)  # hidden inputs change nothing
    moved = tokens.clone()
    moved[0, 0] += 1.0  # a visible one does
    assert not torch.allclose(net(moved, t, None, keep)[0], out[0])


def test_mae_needs_whole_pixel_patches():
    with pytest.raises(ConfigError, match="tokenizer.name=pixel"):
        load_config(None, TINY + ["objective.name=mae"])
    with pytest.raises(ConfigError, match="objective.mask_ratio"):
        mae_cfg("objective.mask_ratio=1.0")


def test_mae_resume_is_exact(tmp_path):
    a, b = resumed_pair(mae_cfg("data.crop=random_resized"), tmp_path)
    assert "mask_token" in a["model"]
    assert_same_state(a, b)


def test_mae_two_process_run_equals_one(tmp_path):
    assert_two_processes_equal_one(MAE, tmp_path)


def trained_and_exported(cfg, tmp_path):
    """Pretrain ``cfg`` for its epochs, load the run, export blocks 1 at t = 0: (the loaded
    model, images, their features from the model, from the exported timm ViT)."""
    pretrain.run(cfg, tmp_path / "run")
    _, den = load_run(tmp_path / "run", use_ema=False)
    assert checkpoint.latest(tmp_path / "run")
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    feats = den.features(x, 0, [1])[0]
    export(tmp_path / "run", tmp_path / "vit", t=0, blocks=1, use_ema=False)
    with torch.no_grad():
        return den, x, feats, load_vit(str(tmp_path / "vit"), "", 8).eval()(x)


def test_trained_mae_loads_probes_and_exports_like_an_ldae_run(tmp_path):
    den, x, feats, vit_feats = trained_and_exported(mae_cfg("optim.epochs=1"), tmp_path)
    assert isinstance(den, MaskedAutoencoder)
    torch.testing.assert_close(den.features(x, 10, [1])[0], feats)  # any t: MAE has none
    torch.testing.assert_close(vit_feats, feats, rtol=1e-4, atol=1e-4)


def test_mae_counts_the_encoder_on_the_visible_tokens_only():
    cfg = mae_cfg()
    mae = build(cfg, build_tokenizer(cfg))
    bb = mae.backbone  # L = 4 tokens, mask ratio 0.5: the encoder block sees 2
    assert mae.train_flops_per_image() == bb.train_flops_per_image(visible=2) < bb.train_flops_per_image()
