"""Issue 7's fault matrix (docs/reliability.md): every fault injected, and what must survive.

Kill -9 at several moments (between steps, half-way through a checkpoint write, between the
checkpoint's digest and its rename, at random times), SIGTERM/SIGUSR1 preemption, crafted and
corrupt checkpoints, non-finite losses, determinism. Subprocess tests run `tests/_fault_run.py`,
which is `ldae` with one fault installed (see its docstring).
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldae import checkpoint
from ldae.diffusion import objective
from ldae.engine import pretrain
from ldae.errors import CheckpointError
from ldae.preempt import EXIT_PREEMPTED

from test_pretrain import assert_same_state, final_state, tiny

HERE = Path(__file__).resolve().parent
# 64 synthetic images, batch 16: 4 steps an epoch, 16 steps; a checkpoint every 2 steps, 2 kept
MICRO = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=64", "data.val_size=16",
         "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
         "optim.blr=2e-3", "optim.epochs=4", "optim.warmup_epochs=1", "optim.ema=0.9",
         "data.crop=random_resized", "train.log_every=1", "train.ckpt_every=2",
         "train.keep_ckpts=2", "train.threads=1", "train.device=cpu"]
STEPS = 16


def launch(out: Path, fault: str = "", resume: bool = True) -> subprocess.Popen:
    env = dict(os.environ, LDAE_FAULT=fault, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(HERE / "_fault_run.py"), "pretrain", "-c", "demo", "--out", str(out),
           *(["--resume", "auto"] if resume else []), *MICRO]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def all_checkpoints_load(out: Path) -> list[int]:
    """Every visible checkpoint loads (and matches its digest); returns their steps."""
    steps = []
    for path in checkpoint.list_checkpoints(out):
        state = checkpoint.load(path)
        assert state["step"] == checkpoint.step_of(path)
        steps.append(state["step"])
    return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run, in a child process like the faulted ones."""
    out = tmp_path_factory.mktemp("ref") / "run"
    rc, err = finish(launch(out, resume=False))
    assert rc == 0, err[-2000:]
    return final_state(out)


@pytest.mark.slow
def test_kill9_anywhere_then_resume_gives_identical_weights(tmp_path, reference):
    """Killed between steps, half-way through a checkpoint write, between a checkpoint's digest
    and its rename, and at random wall-clock moments; each time every visible checkpoint still
    loads, and `--resume auto` ends with the uninterrupted run's weights, EMA and optimizer."""
    out = tmp_path / "run"
    rng = random.Random(7)
    kills, log = 0, []
    # the deterministic kill points first (each must fire), then random moments (each may land
    # after the run's end: a micro step takes milliseconds)
    for fault in ("step:3", "save:2", "digest:2", "step:9", "save:1", "random", "random"):
        if fault == "random":
            metrics = out / "metrics.jsonl"
            before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            p = launch(out)
            deadline = time.time() + 120
            while p.poll() is None and time.time() < deadline:  # wait for a new step, then a bit
                if metrics.exists() and len(metrics.read_text().splitlines()) > before:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        else:
            p = launch(out, fault)
        rc, err = finish(p)
        log.append((fault, rc, checkpoint.latest(out)))
        if rc == 0 and fault == "random":
            break  # the run got to its end before this moment
        assert rc == -signal.SIGKILL, (fault, rc, err[-2000:])
        kills += 1
        assert all_checkpoints_load(out), (fault, "no loadable checkpoint left")
    assert kills >= 5, log
    if log[-1][1] != 0:
        rc, err = finish(launch(out))
        assert rc == 0, err[-2000:]
    assert all_checkpoints_load(out)[-1] == STEPS
    assert_same_state(reference, final_state(out))
    assert not list((out / "checkpoints").glob(".*.tmp")), "stale temporaries are cleaned on resume"
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), "metrics.jsonl: every step once, in order"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["TERM", "USR1"])
def test_preemption_signal_saves_at_the_step_and_exits_75(tmp_path, reference, sig):
    out = tmp_path / "run"
    rc, err = finish(launch(out, f"signal:5:{sig}"))
    assert rc == EXIT_PREEMPTED, err[-2000:]
    assert f"SIG{sig} received" in err and "--resume auto" in err
    assert checkpoint.latest(out).name == "ckpt-00000005.pt"  # not a multiple of ckpt_every
    assert not (out / "train_summary.json").exists()
    rc, err = finish(launch(out))
    assert rc == 0, err[-2000:]
    assert_same_state(reference, final_state(out))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['LDAE_EVIL_MARK'])}",))


def test_crafted_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("LDAE_EVIL_MARK", str(mark))
    out = tmp_path / "run"
    pretrain.run(tiny("train.ckpt_every=2"), out, max_steps=4)
    good = checkpoint.latest(out)
    evil = checkpoint.checkpoint_path(out, 6)
    torch.save({"model": _Evil(), "step": 6}, evil)  # no digest: looks like an outside file
    with pytest.raises(CheckpointError, match="run code"):
        checkpoint.load(evil)
    assert not mark.exists()
    warnings = []
    state, path = checkpoint.load_latest(out, warn=warnings.append)
    assert path == good and state["step"] == 4 and not mark.exists()
    assert "ckpt-00000006.pt" in warnings[0] and (evil.parent / (evil.name + ".bad")).exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "zero"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    """Truncated, one flipped byte (torch would load it silently: the sha256 sidecar catches
    it), or empty: a clear error, and `--resume auto` continues from the previous checkpoint
    to the same end state."""
    cfg = tiny("train.ckpt_every=2", "optim.ema=0.9")
    pretrain.run(cfg, tmp_path / "full")
    out = tmp_path / "run"
    pretrain.run(cfg, out, max_steps=6)
    latest = checkpoint.latest(out)
    data = bytearray(latest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    latest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt|cannot load"):
        checkpoint.load(latest)
    s = pretrain.run(cfg, out, resume="auto")
    assert s["steps_this_run"] == 4  # from step 4: the steps since that checkpoint are redone
    assert_same_state(final_state(tmp_path / "full"), final_state(out))


def test_no_loadable_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny("train.ckpt_every=2"), out, max_steps=2)
    checkpoint.latest(out).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint of .* loads"):
        pretrain.run(tiny("train.ckpt_every=2"), out, resume="auto")


def _nan_at(monkeypatch, bad_calls: set[int]) -> None:
    """Denoiser.loss returns NaN (loss and parts, with a graph) on the given 1-based calls."""
    real = objective.Denoiser.loss
    calls = {"n": 0}

    def loss(self, *a, **k):
        calls["n"] += 1
        value, parts = real(self, *a, **k)
        if calls["n"] in bad_calls:
            value = value * float("nan")
            parts = {k: v * float("nan") for k, v in parts.items()}
        return value, parts

    monkeypatch.setattr(objective.Denoiser, "loss", loss)


def test_nonfinite_loss_stops_naming_step_parts_lr_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    _nan_at(monkeypatch, {6})
    out = tmp_path / "run"
    with pytest.raises(pretrain.NonFiniteLoss) as e:
        pretrain.run(tiny("train.ckpt_every=4", "train.log_every=2"), out)
    msg = str(e.value)
    assert "steps 5..6" in msg and "mse=nan" in msg and "at lr " in msg
    assert "ckpt-00000004.pt (step 4)" in msg and "on_nonfinite=skip" in msg
    assert all_checkpoints_load(out) == [4]  # nothing written after the bad step
    state = checkpoint.load(checkpoint.latest(out))
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nonfinite_skip_policy_drops_bounded_bad_steps(tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3, 6})
    s = pretrain.run(tiny("train.on_nonfinite=skip", "train.max_nonfinite_skips=2"), tmp_path / "a")
    assert s["steps"] == 8 and s["nonfinite_skips"] == [3, 6] and math.isfinite(s["final_loss"])
    state = final_state(tmp_path / "a")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    adam_steps = {int(v["step"]) for v in state["optimizer"]["state"].values()}
    assert adam_steps == {6}, "skipped steps update nothing"
    _nan_at(monkeypatch, {2, 3, 4})
    with pytest.raises(pretrain.NonFiniteLoss, match="max_nonfinite_skips=2"):
        pretrain.run(tiny("train.on_nonfinite=skip", "train.max_nonfinite_skips=2"), tmp_path / "b")


def test_same_seed_gives_bit_identical_weights_on_cpu(tmp_path):
    cfg = tiny("optim.ema=0.9", "data.crop=random_resized")
    pretrain.run(cfg, tmp_path / "a")
    pretrain.run(cfg, tmp_path / "b")
    assert_same_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    pretrain.run(tiny("optim.ema=0.9", "data.crop=random_resized", "train.seed=1"), tmp_path / "c")
    a, c = final_state(tmp_path / "a"), final_state(tmp_path / "c")
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


def test_slurm_example_requeues_after_the_preemption_signal(tmp_path):
    """examples/slurm-pretrain.sbatch with srun/scancel/scontrol/python faked on PATH: SIGUSR1
    to the batch script -> SIGTERM reaches the training step -> the step exits -> requeue."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fakes = {
        # the "training step": records its pid, exits 75 on SIGTERM (as ldae does after saving)
        "srun": f'echo $$ > {tmp_path}/step.pid; trap "echo saved > {tmp_path}/step.out; exit 75" TERM\n'
                'for i in $(seq 300); do sleep 0.1; done; exit 0',
        "scancel": f'[ "$1" = "--signal=TERM" ] && kill -TERM "$(cat {tmp_path}/step.pid)"',
        "scontrol": f'[ "$1" = "requeue" ] && echo "$2" > {tmp_path}/requeued; '
                    '[ "$1" = "show" ] && echo node1; true',
    }
    for name, body in fakes.items():
        (bin_ / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
        (bin_ / name).chmod(0o755)
    script = HERE.parent / "examples" / "slurm-pretrain.sbatch"
    env = dict(os.environ, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="42",
               SLURM_JOB_NODELIST="node1", SLURM_JOB_NUM_NODES="1")
    p = subprocess.Popen(["bash", str(script)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (tmp_path / "step.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGUSR1)
    _, err = p.communicate(timeout=30)
    assert (tmp_path / "step.out").read_text().strip() == "saved", err
    assert (tmp_path / "requeued").read_text().strip() == "42", err
    assert p.returncode == EXIT_PREEMPTED, err


def test_a_half_written_metrics_line_is_dropped_on_resume(tmp_path):
    """kill -9 during a metrics.jsonl append leaves a cut line: the resume drops it (and the
    lines past the checkpoint) instead of failing to parse the log."""
    from ldae.logging import MetricsLog

    log = MetricsLog(tmp_path)
    for s in (1, 2, 3):
        log.write({"step": s, "loss": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    log.truncate_after(2)
    assert [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_pretraining_under_on_bad_image_skip_lists_what_it_left_out(tmp_path):
    """An ImageFolder with a corrupt, a zero-byte and a truncated file: `error` stops naming the
    file; `skip` trains on the rest and lists all three in the run's skipped.jsonl."""
    import numpy as np
    from PIL import Image

    from ldae.config import load_config
    from ldae.errors import DataError

    g = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(9):
            Image.fromarray(g.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / "train" / c / f"{i}.png")
    bad = tmp_path / "imgs" / "train" / "a"
    (bad / "corrupt.jpg").write_bytes(b"not an image at all" * 10)
    (bad / "empty.png").write_bytes(b"")
    whole = (bad / "0.png").read_bytes()
    (bad / "cut.png").write_bytes(whole[: len(whole) // 2])
    base = ["data.source=imagefolder", f"data.path={tmp_path / 'imgs'}", "data.image_size=8",
            "data.num_classes=2", "data.train_split=train", "model.name=test", "model.patch_size=4",
            "tokenizer.dim=4", "optim.batch_size=6", "optim.epochs=1", "optim.warmup_epochs=0"]
    with pytest.raises(DataError, match="empty.png"):
        pretrain.run(load_config(None, base), tmp_path / "err")
    s = pretrain.run(load_config(None, base + ["data.on_bad_image=skip"]), tmp_path / "skip")
    assert s["steps"] == 3 and math.isfinite(s["final_loss"])
    listed = [json.loads(ln) for ln in (tmp_path / "skip" / "skipped.jsonl").read_text().splitlines()]
    names = {Path(e["path"]).name for e in listed}
    assert names == {"corrupt.jpg", "empty.png", "cut.png"} and s["skipped_images"] == 3


def test_resume_with_a_changed_config_is_refused_with_the_diff_unless_allowed(tmp_path, capsys):
    from ldae.cli import main
    from ldae.errors import ConfigError

    out = tmp_path / "run"
    pretrain.run(tiny(), out, max_steps=3)
    with pytest.raises(ConfigError, match=r"optim.blr.*--allow-config-change"):
        pretrain.run(tiny("optim.blr=1e-3"), out, resume="auto")
    assert checkpoint.latest(out).name == "ckpt-00000003.pt"  # nothing was touched
    s = pretrain.run(tiny("optim.blr=1e-3"), out, resume="auto", allow_config_change=True,
                     max_steps=5)
    assert s["steps"] == 5 and "optim.blr" in capsys.readouterr().out
    assert "blr: 0.001" in (out / "config.yaml").read_text()
    # the CLI: exit code 2 and one paragraph naming the flag; never overwritten without a flag
    assert main(["pretrain", "-c", "demo", "--out", str(out), "--resume", "auto"]) == 2
    assert "--allow-config-change" in capsys.readouterr().err
    assert main(["pretrain", "-c", "demo", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_a_bad_image_in_a_dataloader_worker_is_one_paragraph_on_the_cli(tmp_path, capsys):
    """A read-time DataError raised inside a DataLoader worker reaches the user as the original
    one-line message naming the file, not the worker's traceback."""
    import numpy as np
    from PIL import Image

    from ldae.cli import main

    for c in ("a", "b"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / "train" / c / f"{i}.png")
    (tmp_path / "imgs" / "train" / "b" / "zz-corrupt.jpg").write_bytes(b"\xff\xd8 broken" * 20)
    rc = main(["fit-tokenizer", "-c", "demo", "--out", str(tmp_path / "run"), "data.source=imagefolder",
               f"data.path={tmp_path / 'imgs'}", "data.image_size=8", "data.num_classes=2",
               "model.patch_size=4", "data.num_workers=1", "data.val_size=2"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and "zz-corrupt.jpg" in lines[0], err
    assert "Traceback" not in err and "DataLoader worker" not in err, err


@pytest.mark.slow
def test_preemption_under_ddp_stops_every_rank_at_the_same_step(tmp_path):
    """Only rank 1 of 2 gets SIGTERM (after step 3); the ranks agree at the next check (every 10
    steps), rank 0 saves step 10, both stop; a 1-process resume then finishes the run and equals
    an uninterrupted 2-process run (to fp32 all-reduce rounding)."""
    import torch.multiprocessing as mp

    from _ddp import free_port, spawn
    from _fault_run import ddp_worker

    over = [o for o in MICRO if not o.startswith("train.threads")]
    spawn("pretrain", tmp_path / "ref", over)
    out = tmp_path / "run"
    mp.spawn(ddp_worker, args=(2, free_port(), str(out), over, "signal:3:TERM", 1), nprocs=2,
             join=True)
    assert (out / "preempted-0").is_file() and (out / "preempted-1").is_file()
    assert "saved" in (out / "preempted-0").read_text()
    assert checkpoint.latest(out).name == "ckpt-00000010.pt"
    assert not (out / "train_summary.json").exists()
    from ldae.config import load_config

    s = pretrain.run(load_config(None, over), out, resume="auto")
    assert s["steps"] == STEPS and s["steps_this_run"] == STEPS - 10
    a, b = final_state(tmp_path / "ref"), final_state(out)
    assert a["step"] == b["step"] == STEPS
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
