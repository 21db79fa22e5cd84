"""Linear probe engine (SPEC §5): protocol pieces, fast lr-grid mode, full mode, determinism."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ldae.config import load_config
from ldae.data import build_dataset, iterate_in_order, to_float
from ldae.dist import Runtime
from ldae.engine import linprobe, splits
from ldae.engine.encoders import build_random
from ldae.tokenizers import PCATokenizer

torch.set_num_threads(1)

RT = Runtime(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
BASE = ["data.source=synthetic", "data.image_size=16", "model.name=test", "model.patch_size=4",
        "tokenizer.dim=8", "data.val_size=64", "data.synthetic_size=256", "train.device=cpu",
        "linprobe.batch_size=64", "linprobe.epochs=4", "linprobe.warmup_epochs=1"]
KEYS = {"encoder", "mode", "top1", "top5", "best_blr", "lr", "blr", "grid", "t", "noisy", "blocks",
        "feat_dim", "epochs", "batch_size", "n_train", "n_eval", "train_split", "eval_split",
        "extract_img_per_s", "wall_s"}


def _cfg(*extra: str):
    return load_config(None, BASE + list(extra))


@pytest.fixture(scope="module")
def tokenizer():
    cfg = _cfg()
    ds = build_dataset(cfg, "train")
    batches = (to_float(x) for x, _ in iterate_in_order(ds, 64))
    return PCATokenizer(cfg.model.patch_size, cfg.tokenizer.dim).fit(batches)


def _random(cfg, tokenizer):
    return build_random(cfg, tokenizer)


def test_head_is_mae_bn_without_affine_then_linear_std_001():
    probe = linprobe.LinearProbe(2048, 100, num_heads=3, seed=0)
    bn = probe.norm
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert list(bn.parameters()) == []
    w = probe.heads[0].weight
    assert abs(w.std().item() - 0.01) < 5e-4 and abs(w.mean().item()) < 5e-4
    assert torch.count_nonzero(probe.heads[0].bias) == 0
    for h in probe.heads[1:]:  # every head of the grid starts from the same weights
        assert torch.equal(h.weight, w)


def test_pixels_fast_beats_chance_and_writes_json(tmp_path):
    cfg = _cfg("linprobe.encoder=pixels", "linprobe.fast=true", "linprobe.epochs=10",
               "linprobe.lr_grid=[0.01,1.0,30.0]", "linprobe.batch_size=1024")
    rec = linprobe.run(cfg, tmp_path, None, RT)
    path = tmp_path / "eval" / "linprobe-pixels.json"
    assert path.is_file() and json.loads(path.read_text()) == rec
    assert KEYS <= rec.keys()
    assert rec["mode"] == "fast" and rec["feat_dim"] == 3 * 16 * 16
    assert rec["n_train"] == 256 and rec["n_eval"] == 64
    assert rec["batch_size"] == 256 and any("clamped" in n for n in rec["notes"])
    assert rec["top1"] > 50.0, rec  # 10 classes: chance is 10 %
    sel = rec["selection"]
    assert sel["by"] == "holdout" and sel["n_holdout"] == 26 and sel["n_fit"] == 230
    ho = [g["holdout_top1"] for g in rec["grid"]]
    assert len(ho) == 3 and rec["best_blr"] == rec["grid"][ho.index(max(ho))]["blr"]
    assert sel["holdout_top1"] == max(ho)
    assert rec["lr"] == pytest.approx(rec["best_blr"] * 256 / 256)
    assert all(g["top5"] >= g["top1"] for g in rec["grid"])
    assert (tmp_path / "eval" / "linprobe-pixels-head.safetensors").is_file()
    lines = [json.loads(x) for x in
             (tmp_path / "eval" / "linprobe-pixels-train.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines] == ["select"] * 10 + ["refit"] * 10
    assert len(lines[0]["loss"]) == 3 and len(lines[-1]["loss"]) == 1


def _features(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class clusters: features (n, dim) and labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    centers = torch.randn(4, dim, generator=torch.Generator().manual_seed(99))
    return centers[y] + 1.5 * torch.randn(n, dim, generator=g), y


def test_holdout_split_is_seeded_disjoint_and_covers_the_train_rows():
    cfg = _cfg("linprobe.holdout=0.25")
    fit, ho = splits.holdout_split(100, cfg)
    assert ho.numel() == 25 and fit.numel() == 75
    assert torch.equal(torch.cat([fit, ho]).sort().values, torch.arange(100))
    again = splits.holdout_split(100, cfg)
    assert torch.equal(fit, again[0]) and torch.equal(ho, again[1])
    other = splits.holdout_split(100, _cfg("linprobe.holdout=0.25", "train.seed=1"))
    assert not torch.equal(ho, other[1])
    assert splits.holdout_split(3, _cfg("linprobe.holdout=0.01"))[1].numel() == 1  # never empty


def test_selection_never_reads_the_reported_split(tmp_path):
    """The blr is chosen on the train split's holdout: replacing the eval split by anything
    changes the reported number but neither the choice nor the reported head. The reported head
    is the one a single-blr probe at the chosen blr trains on the whole train split."""
    from ldae.logging import MetricsLog

    cfg = _cfg("linprobe.epochs=6", "linprobe.lr_grid=[0.001,0.3,30.0]")
    ftr, ytr = _features(400, 16, 0)
    fev, yev = _features(100, 16, 1)
    log = MetricsLog(tmp_path, enabled=False)
    a = linprobe.select_and_fit(ftr, ytr, fev, yev, cfg, RT, 64, [0.001, 0.3, 30.0], log)
    junk = torch.randn(100, 16) * 50
    b = linprobe.select_and_fit(ftr, ytr, junk, yev.flip(0), cfg, RT, 64, [0.001, 0.3, 30.0], log)
    assert a["best"] == b["best"] and a["top1"] != b["top1"]
    for k, v in a["probe"].state_dict().items():
        assert torch.equal(v, b["probe"].state_dict()[k]), k
    assert [g["holdout_top1"] for g in a["grid"]] == [g["holdout_top1"] for g in b["grid"]]
    blr = [0.001, 0.3, 30.0][a["best"]]
    alone = linprobe.select_and_fit(ftr, ytr, fev, yev, cfg, RT, 64, [blr], log)
    assert alone["selection"]["by"].startswith("none") and alone["top1"] == a["top1"]
    for k, v in a["probe"].state_dict().items():
        assert torch.equal(v, alone["probe"].state_dict()[k]), k
    # select=eval (the old, biased mode) picks by the eval split: the best eval head
    c = linprobe.select_and_fit(ftr, ytr, fev, yev, _cfg("linprobe.select=eval",
                                "linprobe.epochs=6"), RT, 64, [0.001, 0.3, 30.0], log)
    assert c["top1"] == max(g["top1"] for g in c["grid"]) and "biased" in c["selection"]["by"]


def test_ldae_fast_and_full_run_with_random_init(tmp_path, tokenizer):
    for fast in ("true", "false"):
        cfg = _cfg(f"linprobe.fast={fast}", "linprobe.lr_grid=[0.1,1.0]")
        rec = linprobe.run(cfg, tmp_path, _random(cfg, tokenizer), RT)
        assert rec["mode"] == ("fast" if fast == "true" else "full")
        assert rec["blocks"] == 1 and rec["feat_dim"] == 32 and rec["t"] == 10
        assert 0.0 <= rec["top1"] <= rec["top5"] <= 100.0
        assert len(rec["grid"]) == (2 if fast == "true" else 1)
        if fast == "false":  # one blr, nothing selected: the head trained on all of train
            assert rec["top1"] == rec["grid"][0]["top1"] and rec["selection"]["n_holdout"] == 0
        assert json.loads((tmp_path / "eval" / "linprobe.json").read_text()) == rec
    # the baselines get their own file names beside linprobe.json
    cfg = _cfg("linprobe.fast=true", "linprobe.encoder=random", "linprobe.epochs=1")
    linprobe.run(cfg, tmp_path, _random(cfg, tokenizer), RT)
    assert (tmp_path / "eval" / "linprobe-random.json").is_file()


def test_full_mode_is_deterministic(tmp_path, tokenizer):
    cfg = _cfg("linprobe.noisy=true", "linprobe.epochs=2")
    a = linprobe.run(cfg, tmp_path / "a", _random(cfg, tokenizer), RT)
    b = linprobe.run(cfg, tmp_path / "b", _random(cfg, tokenizer), RT)
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"]
    ha = load_file(tmp_path / "a" / "eval" / "linprobe-head.safetensors")
    hb = load_file(tmp_path / "b" / "eval" / "linprobe-head.safetensors")
    assert ha.keys() == hb.keys() and {"linear.weight", "norm.running_var"} <= ha.keys()
    for k in ha:
        assert torch.equal(ha[k], hb[k]), k
    init = linprobe.LinearProbe(32, 10, seed=cfg.train.seed).heads[0].weight
    assert not torch.equal(ha["linear.weight"], init)  # it trained


def test_grid_heads_equal_heads_trained_alone(tmp_path):
    """Training heads together (shared BN, same batches) changes nothing for any one of them."""
    grid = ["linprobe.encoder=pixels", "linprobe.fast=true", "linprobe.epochs=3"]
    sel = ["linprobe.select=eval"]  # every head on the whole train split
    together = linprobe.run(_cfg(*grid, *sel, "linprobe.lr_grid=[0.03,3.0]"), tmp_path / "g", None, RT)
    alone = linprobe.run(_cfg(*grid, *sel, "linprobe.lr_grid=[3.0]"), tmp_path / "s", None, RT)
    assert together["grid"][1] == alone["grid"][0]


def test_extract_features_blocks_from_one_forward_and_seeded_noise(tokenizer):
    cfg = _cfg("linprobe.noisy=true")
    den = _random(cfg, tokenizer)
    ds = build_dataset(cfg, "val")
    stats = {}
    (f1, f2), y = linprobe.extract_features(den, ds, cfg, RT, [1, 2], stats=stats)
    assert f1.shape == (64, 32) and f2.shape == (64, 32) and f1.dtype == torch.float32
    assert torch.equal(y, ds.labels) and stats["img_per_s"] > 0
    (g2,), _ = linprobe.extract_features(den, ds, cfg, RT, [2])
    assert torch.equal(f2, g2)  # same seeded noise, same features
    (c2,), _ = linprobe.extract_features(den, ds, _cfg(), RT, [2])
    assert not torch.allclose(f2, c2)  # clean input differs from noisy
    (px,), _ = linprobe.extract_features(None, ds, cfg, RT, [])
    assert torch.allclose(px, to_float(ds.images).flatten(1))


def test_ldae_without_denoiser_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="needs an encoder"):
        linprobe.run(_cfg(), tmp_path, None, RT)


def test_other_ranks_do_nothing(tmp_path):
    rt = Runtime(rank=1, world=2, local_rank=1, device=torch.device("cpu"))
    assert linprobe.run(_cfg("linprobe.encoder=pixels"), tmp_path, None, rt) == {}
    assert not (tmp_path / "eval").exists()
