"""Pretraining: overfitting, exact resume, DDP equivalence, the loop's files."""
from __future__ import annotations

import json

import pytest
import torch

from ldae import checkpoint
from ldae.config import load_config
from ldae.diffusion.objective import build_denoiser
from ldae.engine import pretrain
from ldae.errors import ConfigError
from ldae.tokenizers import PCATokenizer

from _ddp import spawn

TINY = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=64", "data.val_size=16",
        "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
        "optim.blr=2e-3", "optim.epochs=2", "optim.warmup_epochs=1", "train.log_every=2",
        "train.ckpt_every=3", "train.keep_ckpts=10"]


def tiny(*extra: str):
    return load_config(None, TINY + list(extra))


def final_state(run_dir):
    return checkpoint.load(checkpoint.latest(run_dir))


def assert_same_state(a: dict, b: dict) -> None:
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    if a.get("ema"):
        for k in a["ema"]:
            assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert a["step"] == b["step"]


def resumed_pair(cfg, tmp_path) -> tuple[dict, dict]:
    """(final state of the whole run, of 5 steps then ``--resume auto``); the run has 8 steps."""
    full = pretrain.run(cfg, tmp_path / "full")
    assert full["steps"] == 8  # 64 // 16 = 4 steps per epoch, 2 epochs
    part = pretrain.run(cfg, tmp_path / "split", max_steps=5)
    assert part["steps"] == 5
    resumed = pretrain.run(cfg, tmp_path / "split", resume="auto")
    assert resumed["steps"] == 8 and resumed["steps_this_run"] == 3
    return final_state(tmp_path / "full"), final_state(tmp_path / "split")


def assert_two_processes_equal_one(over: list[str], tmp_path) -> None:
    """Half an epoch (2 steps) on 1 process and on 2 gloo processes: the same weights."""
    over = TINY + over + ["optim.epochs=0.5", "optim.warmup_epochs=0", "train.device=cpu"]
    pretrain.run(load_config(None, over), tmp_path / "one")
    spawn("pretrain", tmp_path / "two", over)
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert a["step"] == b["step"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)


def test_one_batch_overfits():
    cfg = tiny("diffusion.schedule=constant")
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    tok = PCATokenizer(4, 4).fit([x])
    torch.manual_seed(0)
    den = build_denoiser(cfg, tok)
    opt = torch.optim.AdamW(den.backbone.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss, _ = den.loss(x, generator=torch.Generator().manual_seed(0))  # same t and noise each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_is_exact(tmp_path, ema):
    cfg = tiny(f"optim.ema={ema}", "data.crop=random_resized")
    assert_same_state(*resumed_pair(cfg, tmp_path))
    # metrics.jsonl has no duplicated steps after the resume
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """accum_steps=2 sees the same images and the same random draws as one large batch."""
    over = ("optim.epochs=0.5", "optim.warmup_epochs=0", "data.crop=random_resized")
    pretrain.run(tiny(*over), tmp_path / "a")
    pretrain.run(tiny(*over, "optim.accum_steps=2"), tmp_path / "b")
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert a["step"] == b["step"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)


def test_run_dir_layout_and_refusals(tmp_path):
    cfg = tiny()
    out = tmp_path / "run"
    s = pretrain.run(cfg, out, max_steps=3)
    assert (out / "config.yaml").is_file() and (out / "tokenizer.safetensors").is_file()
    assert (out / "train_summary.json").is_file()
    png = (out / "figures" / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "images", "loss", "lr", "img_per_s"} <= lines[0].keys()
    assert checkpoint.latest(out).name == "ckpt-00000003.pt"
    assert s["img_per_s"] > 0
    assert not list(out.rglob("*.tmp")), "no temporary files may be left behind"
    with pytest.raises(ConfigError, match="--resume auto"):
        pretrain.run(cfg, out)  # existing run, neither --resume nor --force
    with pytest.raises(ConfigError, match="optim.blr"):
        pretrain.run(tiny("optim.blr=1e-3"), out, resume="auto")  # changed config
    # evaluation settings do not change the pretraining: resuming with them changed is fine
    pretrain.run(tiny("linprobe.t=20", "sample.steps=10", "fid.n=100", "finetune.blr=1e-2"), out,
                 resume="auto", max_steps=4)
    assert checkpoint.latest(out).name == "ckpt-00000004.pt"
    pretrain.run(cfg, out, force=True, max_steps=1)
    assert checkpoint.latest(out).name == "ckpt-00000001.pt"


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    cfg = tiny("optim.blr=1e30", "optim.warmup_epochs=0")
    with pytest.raises(pretrain.NonFiniteLoss, match="non-finite loss"):
        pretrain.run(cfg, tmp_path / "nan")


@pytest.mark.slow
def test_two_process_gloo_step_equals_one_process(tmp_path):
    assert_two_processes_equal_one(["data.crop=random_resized"], tmp_path)


def test_data_wait_share_is_logged_and_sees_a_slow_loader(tmp_path, monkeypatch):
    """metrics.jsonl and the summary carry the share of wall time spent waiting for batches."""
    import time

    fast = pretrain.run(tiny(), tmp_path / "fast", max_steps=4)
    lines = [json.loads(ln) for ln in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= ln["data_wait"] <= 1.0 for ln in lines)
    real = pretrain.BatchStream

    class Slow(real):
        def __iter__(self):
            for item in super().__iter__():
                time.sleep(0.6)  # well above a step's compute, even on a loaded machine
                yield item

    monkeypatch.setattr(pretrain, "BatchStream", Slow)
    slow = pretrain.run(tiny(), tmp_path / "slow", max_steps=4)
    assert slow["data_wait"] > 0.5 > fast["data_wait"]
