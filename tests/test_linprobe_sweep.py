"""App. A sweeps of the linear probe (SPEC §5 "Sweeps"): one pass, cells equal single runs."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from ldae.cli import main
from ldae.config import load_config
from ldae.data import build_dataset, iterate_in_order, to_float
from ldae.dist import Runtime
from ldae.engine import linprobe, linprobe_sweep
from ldae.engine.encoders import build_random
from ldae.errors import ConfigError
from ldae.tokenizers import PCATokenizer

torch.set_num_threads(1)

RT = Runtime(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
BASE = ["data.source=synthetic", "data.image_size=16", "model.name=test", "model.patch_size=4",
        "tokenizer.dim=8", "data.val_size=64", "data.synthetic_size=256", "train.device=cpu",
        "linprobe.batch_size=64", "linprobe.epochs=4", "linprobe.warmup_epochs=1"]
# model "test": 2 blocks, encoder split 1, width 32
GRID = ["linprobe.sweep_t=[0,10]", "linprobe.sweep_noisy=[false,true]", "linprobe.sweep_blocks=[1,2]"]


def _cfg(*extra: str):
    return load_config(None, BASE + list(extra))


@pytest.fixture(scope="module")
def denoiser():
    cfg = _cfg()
    ds = build_dataset(cfg, "train")
    tok = PCATokenizer(cfg.model.patch_size, cfg.tokenizer.dim).fit(
        to_float(x) for x, _ in iterate_in_order(ds, 64))
    den = build_random(cfg, tok)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adaLN-Zero makes a fresh DiT ignore t: perturb so t matters
        for p in den.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return den


def _big(*extra: str):
    return _cfg("model.name=halfL", *extra)  # 24 blocks, as App. A's table (nothing is built)


def test_plan_defaults_overrides_and_clipping():
    fake = SimpleNamespace(backbone=SimpleNamespace(depth=24, encoder_blocks=12),
                           schedule=SimpleNamespace(num_steps=1000))
    p = linprobe_sweep.sweep_plan(_big(), fake, defaults=True)
    assert p.t_grid == [0, 10, 20, 40, 80] and p.noisy_grid == [False, True]
    assert p.blocks_grid == list(range(9, 16)) and (p.t0, p.noisy0, p.k0) == (10, False, 12)
    assert len(p.cells) == 5 * 2 + 7 and len(p.sets) == 5 * 2 + 7 - 1  # (10, clean, 12) shared
    assert p.passes[(10, False)] == list(range(9, 16)) and p.passes[(10, True)] == [12]
    assert len(p.passes) == 10  # one forward per (t, noisy) pair
    # explicit grids override the defaults; linprobe.blocks moves the centre; clipped to [1, 24]
    p = linprobe_sweep.sweep_plan(_big("linprobe.sweep_t=[0,10]"), fake, defaults=True)
    assert p.t_grid == [0, 10] and p.noisy_grid == [False, True] and p.blocks_grid == list(range(9, 16))
    p = linprobe_sweep.sweep_plan(_big("linprobe.blocks=2"), fake, defaults=True)
    assert p.blocks_grid == [1, 2, 3, 4, 5] and p.k0 == 2
    # without --sweep only the axes that are set are swept, and only their table is made
    p = linprobe_sweep.sweep_plan(_big("linprobe.sweep_blocks=[3,4]"), fake)
    assert [c for _, c in p.cells] == [(10, False, 3), (10, False, 4)]
    with pytest.raises(ConfigError, match="nothing to sweep"):
        linprobe_sweep.sweep_plan(_big(), fake)
    # a defaults grid that does not fit the run's model fails clearly
    short = SimpleNamespace(backbone=fake.backbone, schedule=SimpleNamespace(num_steps=50))
    with pytest.raises(ConfigError, match="linprobe.sweep_t"):
        linprobe_sweep.sweep_plan(_big(), short, defaults=True)


def test_sweep_features_equal_single_setting_extraction(denoiser):
    """Every cached (t, noisy, k) set equals extract_features at that linprobe.t/noisy/blocks,
    over several batches (the seeded noise advances alike), from one forward per pair per batch."""
    cfg = _cfg(*GRID, "linprobe.batch_size=16")
    ds = build_dataset(cfg, "val")  # 64 images: 4 batches
    plan = linprobe_sweep.sweep_plan(cfg, denoiser)
    assert len(plan.sets) == 5 and len(plan.passes) == 4
    calls = []
    fb = denoiser.backbone.forward_blocks

    def counting(tokens, t, blocks, *a, **k):
        calls.append(list(blocks))
        return fb(tokens, t, blocks, *a, **k)

    denoiser.backbone.forward_blocks = counting
    try:
        feats, y = linprobe_sweep.extract_sweep(denoiser, ds, cfg, RT, plan, stream_step=1)
    finally:
        del denoiser.backbone.forward_blocks
    assert len(calls) == 4 * 4 and [1, 2] in calls  # 4 batches x 4 pairs, blocks 1 and 2 together
    assert torch.equal(y, ds.labels) and set(feats) == set(plan.sets)
    for t, noisy, k in plan.sets:
        one = _cfg(f"linprobe.t={t}", f"linprobe.noisy={str(noisy).lower()}", f"linprobe.blocks={k}",
                   "linprobe.batch_size=16")
        (ref,), _ = linprobe.extract_features(denoiser, ds, one, RT, [k], stream_step=1)
        assert feats[(t, noisy, k)].dtype == torch.float32
        assert torch.equal(feats[(t, noisy, k)], ref), (t, noisy, k)
    assert not torch.allclose(feats[(10, True, 1)], feats[(10, False, 1)])  # noise is used
    assert not torch.allclose(feats[(0, False, 1)], feats[(10, False, 1)])  # t conditions
    # the float16 cache holds the same numbers rounded
    half, _ = linprobe_sweep.extract_sweep(denoiser, ds, cfg, RT, plan, dtype=torch.float16, stream_step=1)
    assert half[(10, False, 2)].dtype == torch.float16
    assert torch.equal(half[(10, False, 2)], feats[(10, False, 2)].half())


def test_cache_budget_picks_float16_then_fails():
    plan = linprobe_sweep.SweepPlan([0, 10], [False], [1], 10, False, 1, True, False)
    assert linprobe_sweep._cache_dtype(plan, 1000, 256, 1.0)[0] == torch.float32
    gib32 = 2 * 1000 * 256 * 4 / 2 ** 30
    dtype, gib = linprobe_sweep._cache_dtype(plan, 1000, 256, 0.75 * gib32)
    assert dtype == torch.float16 and gib == pytest.approx(gib32 / 2)
    with pytest.raises(ConfigError, match="linprobe.sweep_cache_gb"):
        linprobe_sweep._cache_dtype(plan, 1000, 256, 0.4 * gib32)


def test_sweep_cells_equal_single_fast_runs_and_write_outputs(tmp_path, denoiser):
    fast = ["linprobe.epochs=2", "linprobe.lr_grid=[0.1,3.0]"]
    rec = linprobe_sweep.run(_cfg(*GRID, *fast), tmp_path / "sweep", denoiser, RT)
    ev = tmp_path / "sweep" / "eval"
    assert json.loads((ev / "linprobe-sweep.json").read_text()) == rec
    assert rec["mode"] == "fast" and any("fast protocol" in n for n in rec["notes"])
    assert len(rec["cells"]) == 2 * 2 + 2  # |t| x |noisy| + |blocks|
    assert rec["feature_sets"] == 5 and rec["forwards_per_batch"] == 4 and rec["cache_dtype"] == "float32"
    cell = {(c["table"], c["t"], c["noisy"], c["blocks"]): c for c in rec["cells"]}
    assert {"t", "noisy", "blocks", "top1", "top5", "best_blr", "grid"} <= rec["cells"][0].keys()
    # the shared cell (t=10, clean, k=1) is in both tables with the same numbers
    assert cell[("t", 10, False, 1)] | {"table": "x"} == cell[("blocks", 10, False, 1)] | {"table": "x"}
    for t, noisy, k in [(0, True, 1), (10, False, 2)]:
        one = linprobe.run(_cfg(*fast, "linprobe.fast=true", f"linprobe.t={t}",
                                f"linprobe.noisy={str(noisy).lower()}", f"linprobe.blocks={k}"),
                           tmp_path / f"one-{t}-{noisy}-{k}", denoiser, RT)
        table = "t" if k == 1 else "blocks"
        got = cell[(table, t, noisy, k)]
        assert got["grid"] == one["grid"], (t, noisy, k)
        assert (got["top1"], got["top5"], got["best_blr"]) == (one["top1"], one["top5"], one["best_blr"])
        assert got["selection"] == one["selection"] and got["selection"]["by"] == "holdout"
    md = (ev / "linprobe-sweep.md").read_text()
    for s in ("| w/ clean input |", "| w/ noisy input |", "| enc. blocks | 1 | 2 |", "Fast protocol",
              "64.1 | 64.5 | 64.1 | 63.3 | 62.2", "58.5 | 62.0 | 64.1 | 64.5 | 63.6 | 61.9 | 59.7"):
        assert s in md, s
    assert f"| w/ noisy input | {cell[('t', 0, True, 1)]['top1']:.1f} |" in md
    png = (ev / "linprobe-sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (ev / "linprobe-sweep-train.jsonl").read_text().splitlines()
    assert len(lines) == 5 * 2 * 2  # per set: 2 epochs of grid heads on the holdout split, 2 of refit
    assert {"t", "noisy", "blocks", "phase", "loss"} <= json.loads(lines[0]).keys()
    assert not [p for p in ev.iterdir() if p.name.endswith(".tmp")]


def test_cli_sweep_defaults(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["linprobe", "--out", str(out), "--encoder", "random", "--sweep", *BASE,
            "linprobe.epochs=1", "linprobe.warmup_epochs=0", "linprobe.lr_grid=[1.0]", "train.threads=1"]
    assert main(args) == 0
    rec = json.loads((out / "eval" / "linprobe-sweep.json").read_text())
    plan = rec["plan"]
    assert plan["t_grid"] == [0, 10, 20, 40, 80] and plan["noisy_grid"] == [False, True]
    assert plan["blocks_grid"] == [1, 2] and plan["k0"] == 1  # 1 +- 3 clipped to the 2 blocks
    assert len(rec["cells"]) == 5 * 2 + 2 and rec["encoder"] == "random"
    assert (out / "eval" / "linprobe-sweep.md").is_file() and (out / "eval" / "linprobe-sweep.png").is_file()
    printed = capsys.readouterr()
    assert "| w/ noisy input |" in printed.out and "fast protocol" in printed.err


@pytest.mark.parametrize("bad, key", [
    ("linprobe.sweep_t=[0,1000]", "linprobe.sweep_t"),
    ("linprobe.sweep_t=[-1]", "linprobe.sweep_t"),
    ("linprobe.sweep_t=[10,10]", "linprobe.sweep_t"),
    ("linprobe.sweep_blocks=[0]", "linprobe.sweep_blocks"),
    ("linprobe.sweep_blocks=[3]", "linprobe.sweep_blocks"),  # model "test" has 2 blocks
    ("linprobe.sweep_noisy=[0,1]", "linprobe.sweep_noisy"),
    ("linprobe.sweep_noisy=[true,true]", "linprobe.sweep_noisy"),
    ("linprobe.sweep_cache_gb=0", "linprobe.sweep_cache_gb"),
])
def test_bad_sweep_values_raise_config_error(bad, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(bad)


def test_sweep_of_pixels_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="network encoder"):
        linprobe_sweep.run(_cfg("linprobe.encoder=pixels", *GRID), tmp_path, None, RT)
    assert main(["linprobe", "--out", str(tmp_path), "--encoder", "pixels", "--sweep", *BASE]) == 2
    assert "network encoder" in capsys.readouterr().err
