"""MoCo v3 on the l-DAE's ViT (src/ldae/objectives/moco.py): the momentum encoder starts as a
copy and moves by the schedule, gradients reach only the trained encoder and MLPs, exact
resume, 2 processes = 1, and the trained encoder probes and exports like an l-DAE run."""
import pytest
import torch
from test_mae import trained_and_exported
from test_pretrain import TINY, assert_same_state, assert_two_processes_equal_one, resumed_pair

from ldae.config import load_config
from ldae.errors import ConfigError
from ldae.objectives import MocoV3, build
from ldae.objectives.moco import momentum_at
from ldae.tokenizers import build_tokenizer

MOCO = ["objective.name=moco_v3", "objective.proj_hidden=16", "objective.proj_dim=8",
        "tokenizer.name=pixel", "tokenizer.dim=48", "diffusion.input_space=latent",
        "diffusion.output_space=latent", "diffusion.target=z0", "diffusion.schedule=constant",
        "data.hflip=false"]


def moco_cfg(*extra):
    return load_config(None, TINY + MOCO + list(extra))


def test_momentum_encoder_starts_as_a_copy_and_follows_the_schedule():
    cfg = moco_cfg()
    torch.manual_seed(0)
    moco = build(cfg, build_tokenizer(cfg))
    assert isinstance(moco, MocoV3)
    online, target = moco.backbone.momentum_pairs()
    assert len(online) == len(target) > 0
    for a, b in zip(online, target):
        assert torch.equal(a, b) and not b.requires_grad
    before = [p.detach().clone() for p in target]
    with torch.no_grad():
        for p in online:
            p.add_(1.0)
    moco.after_optimizer_step(3, 10)
    m = momentum_at(3, 10, 0.99)
    for a, b, b0 in zip(online, target, before):
        torch.testing.assert_close(b, m * b0 + (1 - m) * a.detach())


def test_loss_trains_the_encoder_and_mlps_but_not_the_momentum_copy():
    cfg = moco_cfg()
    torch.manual_seed(0)
    moco = build(cfg, build_tokenizer(cfg)).train()
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    loss, parts = moco.loss(x, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and parts["loss"] == loss.detach()
    loss.backward()
    bb = moco.backbone
    assert bb.blocks[0].attn.qkv.weight.grad is not None and bb.predictor[0].weight.grad is not None
    assert all(p.grad is None for p in bb.momentum.parameters())
    assert all(p.grad is None for p in bb.final.parameters())  # no output layer in MoCo


def test_moco_needs_pixel_patches():
    with pytest.raises(ConfigError, match="objective.name=moco_v3 takes pixel patches"):
        load_config(None, TINY + ["objective.name=moco_v3"])
    with pytest.raises(ConfigError, match="objective.temperature"):
        moco_cfg("objective.temperature=0")


def test_moco_resume_is_exact(tmp_path):
    a, b = resumed_pair(moco_cfg(), tmp_path)
    assert any(k.startswith("momentum.") for k in a["model"])
    assert_same_state(a, b)
    for k in a["model"]:  # batch-norm statistics too
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_moco_two_process_run_equals_one(tmp_path):
    # the random patch projection (MoCo v3's option) kept frozen: at init the blocks are the
    # identity (adaLN-Zero) and the projector's batch norm removes a constant shift, so the patch
    # embedding's bias has a gradient of rounding noise only, which Adam scales up to a full step
    assert_two_processes_equal_one(MOCO + ["objective.frozen_patch_embed=true"], tmp_path)


def test_trained_moco_loads_probes_and_exports_like_an_ldae_run(tmp_path):
    den, _, feats, vit_feats = trained_and_exported(moco_cfg("optim.epochs=1"), tmp_path)
    assert isinstance(den, MocoV3) and den.backbone.encoder_blocks == den.backbone.depth == 1
    torch.testing.assert_close(vit_feats, feats, rtol=1e-4, atol=1e-4)
