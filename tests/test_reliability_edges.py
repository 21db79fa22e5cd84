"""Issue 15's faults at the edges (docs/reliability.md, rows 24-40): run state that lives in the
checkpoints, verification that never tracebacks, whole-run summaries, OS errors and nonsense
values as one paragraph, decompression bombs, signals from the first moment.

Each test injects the fault as the issue's table describes it and checks the message or the exact
continuation; most run in-process on the tiny synthetic model of ``test_pretrain``.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ldae import checkpoint, cli, preempt
from ldae.engine import pretrain
from ldae.errors import CheckpointError, ConfigError, LdaeError

from test_pretrain import assert_same_state, final_state, tiny

HERE = Path(__file__).resolve().parent
CFG = ("train.ckpt_every=2", "train.keep_ckpts=3", "optim.ema=0.9", "train.log_every=1")  # 8 steps


def steps_logged(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict:
    """The uninterrupted 8-step run the faulted ones must end equal to."""
    out = tmp_path_factory.mktemp("full") / "run"
    pretrain.run(tiny(*CFG), out)
    return final_state(out)


# --- 1. a run's state is its checkpoints -----------------------------------------------------

def test_all_checkpoints_corrupt_never_restarts_silently(tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny(*CFG), out, max_steps=4)
    for p in checkpoint.list_checkpoints(out):
        p.write_bytes(b"")
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="no checkpoint of .* loads"):
        pretrain.run(tiny(*CFG), out, resume="auto")
    assert len(checkpoint.set_aside(out)) == 2 and not checkpoint.list_checkpoints(out)
    with pytest.raises(CheckpointError, match=r"no checkpoint left.*--force"):  # the same command
        pretrain.run(tiny(*CFG), out, resume="auto")
    with pytest.raises(ConfigError, match="set aside as corrupt"):  # and without --resume
        pretrain.run(tiny(*CFG), out)
    assert (out / "metrics.jsonl").read_text() == metrics  # nothing redone, nothing appended
    s = pretrain.run(tiny(*CFG), out, force=True, max_steps=2)  # the way out named
    assert s["steps_this_run"] == 2 and steps_logged(out) == [1, 2]
    assert not checkpoint.set_aside(out)


def test_missing_config_is_recovered_from_the_checkpoint(tmp_path, full, capsys):
    out = tmp_path / "run"
    pretrain.run(tiny(*CFG), out, max_steps=6)
    (out / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="already holds a run .*step 6"):
        pretrain.run(tiny(*CFG), out)  # the never-overwrite guard fires without config.yaml
    s = pretrain.run(tiny(*CFG), out, resume="auto")
    assert "rebuilt it from the config saved in the newest checkpoint" in capsys.readouterr().out
    assert s["steps_this_run"] == 2 and s["steps"] == 8  # from step 6, not from 0
    assert (out / "config.yaml").is_file()
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(out)] == [4, 6, 8]
    assert_same_state(full, final_state(out))
    assert steps_logged(out) == list(range(1, 9))
    (out / "config.yaml").write_bytes(b"\xff\xfe: [")  # unreadable: recovered the same way
    with pytest.raises(ConfigError, match="optim.blr"):  # and then compared as usual
        pretrain.run(tiny(*CFG, "optim.blr=1e-3"), out, resume="auto")


def test_pruning_never_deletes_a_newer_step_than_the_one_written(tmp_path):
    out = tmp_path / "run"
    for step in (80, 84, 88):
        checkpoint.save(checkpoint.checkpoint_path(out, step), {"step": step})
    for step in (2, 4, 6):
        checkpoint.save_rotating(out, step, {"step": step}, keep=2)
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(out)] == [4, 6, 80, 84, 88]


# --- 2. every checkpoint has its digest; verification never tracebacks ------------------------

def test_a_flipped_checkpoint_without_its_sidecar_is_not_trusted(tmp_path, full):
    out = tmp_path / "run"
    pretrain.run(tiny(*CFG), out, max_steps=6)
    newest = checkpoint.latest(out)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    checkpoint.digest_path(newest).unlink()
    warned = []
    state, path = checkpoint.load_latest(out, set_aside=False, warn=warned.append)
    assert state["step"] == 4 and "no sha256 sidecar" in warned[0] and "--resume" in warned[0]
    s = pretrain.run(tiny(*CFG), out, resume="auto")
    assert s["steps_this_run"] == 4  # from step 4
    assert_same_state(full, final_state(out))
    assert checkpoint.set_aside(out)[0].name == "ckpt-00000006.pt.bad"
    # named explicitly, a file without a sidecar loads, with a warning (the documented way in)
    plain = tmp_path / "outside.pt"
    torch.save({"step": 1}, plain)
    warned.clear()
    assert checkpoint.load(plain, warn=warned.append)["step"] == 1 and "unverified" in warned[0]


@pytest.mark.parametrize("sidecar", [b"\xff\xfe\x00garbage", b"abc123", b"", b"Z" * 64])
def test_a_bad_sidecar_is_a_verification_failure_not_a_traceback(tmp_path, sidecar):
    out = tmp_path / "run"
    for step in (2, 4):
        checkpoint.save(checkpoint.checkpoint_path(out, step), {"step": step})
    checkpoint.digest_path(checkpoint.checkpoint_path(out, 4)).write_bytes(sidecar)
    with pytest.raises(CheckpointError, match="cannot be verified"):
        checkpoint.verify(checkpoint.checkpoint_path(out, 4))
    warned = []
    state, path = checkpoint.load_latest(out, warn=warned.append)
    assert state["step"] == 2 and "ckpt-00000004.pt" in warned[0]


class _Evil:
    def __reduce__(self):
        return (print, ("ran",))


def test_the_pickle_refusal_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    for load in (checkpoint.load, checkpoint.load_tensor_file):
        with pytest.raises(CheckpointError) as e:
            load(path)
        msg = str(e.value)
        assert "would run code" in msg and "never load it with weights_only=False" in msg
        assert "likely succeed" not in msg and "Re-running" not in msg and "\n" not in msg


# --- 3. metrics and the summary cover the whole run; orphans are cleaned ---------------------

def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_metrics(tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny(*CFG), out, max_steps=2)
    for p in checkpoint.list_checkpoints(out):  # as if killed before its first checkpoint
        p.unlink()
        checkpoint.digest_path(p).unlink()
    (out / "train_summary.json").unlink()
    pretrain.run(tiny(*CFG), out, resume="auto", max_steps=3)
    assert steps_logged(out) == [1, 2, 3]


def test_a_kill_after_the_final_checkpoint_still_gives_the_whole_runs_summary(tmp_path):
    out = tmp_path / "run"
    first = pretrain.run(tiny(*CFG), out)
    (out / "train_summary.json").unlink()  # killed between the last checkpoint and the summary
    orphan = checkpoint.digest_path(checkpoint.checkpoint_path(out, 2))  # killed inside pruning
    orphan.write_text("0" * 64 + "\n")
    tmp = out / "checkpoints" / ".ckpt-00000008.pt.x1.tmp"
    tmp.write_bytes(b"half")
    s = pretrain.run(tiny(*CFG), out, resume="auto")
    assert s["steps_this_run"] == 0 and s["steps"] == 8
    assert s["final_loss"] == pytest.approx(first["final_loss"])
    assert s["img_per_s"] and s["img_per_s"] > 0 and s["wall_seconds"] >= first["wall_seconds"] * 0.5
    assert json.loads((out / "train_summary.json").read_text())["final_loss"] == s["final_loss"]
    assert not orphan.exists() and not tmp.exists()


# --- 4. OS errors and nonsense values: one paragraph, before any work ------------------------

def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", ["file", "under-file", "empty"])
def test_an_out_that_cannot_be_a_folder_is_refused(tmp_path, capsys, case):
    f = tmp_path / "a-file"
    f.write_text("x")
    out = {"file": str(f), "under-file": str(f / "run"), "empty": ""}[case]
    for argv in (["pretrain", "-c", "demo", "--out", out], ["export", str(tmp_path), "--out", out],
                 ["prepare-data", str(tmp_path), out]):
        rc, err = run_cli(argv, capsys)
        assert rc == 2 and "Traceback" not in err, err
        assert {"file": "is a file, not a folder", "under-file": "is a file, so no folder",
                "empty": "is empty"}[case] in err
    assert f.read_text() == "x" and not (Path.cwd() / "config.yaml").exists()


def test_a_folder_without_write_permission_is_refused(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    rc, err = run_cli(["pretrain", "-c", "demo", "--out", str(ro / "run")], capsys)
    assert rc == 2 and "no permission to write in" in err and str(ro) in err


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk full"), (errno.EFBIG, "disk full"),
                                        (errno.EACCES, "no permission to write"),
                                        (errno.ENOTDIR, "is a file, not a folder")])
def test_os_errors_during_a_run_are_one_paragraph(tmp_path, capsys, monkeypatch, code, words):
    def boom(*a, **k):
        raise OSError(code, os.strerror(code), "/some/run/ckpt.pt")

    monkeypatch.setattr(pretrain, "run", boom)
    rc, err = run_cli(["pretrain", "-c", "demo", "--out", str(tmp_path / "run")], capsys)
    assert rc == cli.EXIT_OS_ERROR and words in err and "/some/run/ckpt.pt" in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,words", [
    (["pretrain", "-c", "demo", "--max-steps", "-5"], "--max-steps -5 must be >= 1"),
    (["finetune", "--max-steps", "0"], "--max-steps 0 must be >= 1"),
    (["sample", "RUN", "--n", "0"], "--n 0 must be >= 1"),
    (["prepare-data", "SRC", "--splits", ","], "names no split"),
    (["prepare-data", "SRC", "--workers", "-3"], "--workers -3 must be >= 0"),
    (["pretrain", "-c", "demo", "train.keep_ckpts=-1"], "train.keep_ckpts=-1 must be >= 1"),
    (["pretrain", "-c", "demo", "data.num_workers=-2"], "data.num_workers=-2 must be >= 0"),
])
def test_nonsense_values_are_refused_before_any_work(tmp_path, capsys, argv, words):
    argv = [a.replace("RUN", str(tmp_path)).replace("SRC", str(tmp_path)) for a in argv]
    if argv[0] in ("pretrain", "finetune"):
        argv += ["--out", str(tmp_path / "run")]
    if argv[0] == "prepare-data":
        argv.insert(2, str(tmp_path / "dst"))
    rc, err = run_cli(argv, capsys)
    assert rc == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "dst").exists()


def test_disk_full_while_writing_a_checkpoint(tmp_path):
    """A real file-size limit (``ulimit -f``) in a child ``ldae pretrain``: the checkpoint write
    fails; one paragraph saying "disk full", exit 74, no temporary left, and once space is back
    ``--resume auto`` finishes the run."""
    probe = tmp_path / "probe"
    pretrain.run(tiny(*CFG), probe, max_steps=2)
    limit = checkpoint.latest(probe).stat().st_size // 2  # config, tokenizer and metrics fit
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ldae.cli", "pretrain", "-c", "demo", "--out", str(out),
            *pretrain_overrides(), "train.threads=1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run(args, env=env, capture_output=True, text=True, preexec_fn=cap, timeout=300)
    assert p.returncode == cli.EXIT_OS_ERROR, p.stderr[-2000:]
    assert "disk full (or file size limit) while writing" in p.stderr and "ckpt-" in p.stderr
    assert "Traceback" not in p.stderr and "--resume auto" in p.stderr
    assert not list(out.rglob("*.tmp")) and not checkpoint.list_checkpoints(out)
    p = subprocess.run([*args[:8], "--resume", "auto", *args[8:]], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


def pretrain_overrides() -> list[str]:
    from test_pretrain import TINY

    return [*TINY, *CFG]


# --- 5. decompression bombs ------------------------------------------------------------------

def _png(path: Path, side: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(path)


def test_an_image_over_the_pixel_ceiling_is_a_bad_image(tmp_path, monkeypatch):
    from PIL import Image

    from ldae.data.folder import ImageFolderDataset

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(2):
            _png(tmp_path / "train" / c / f"{i}.png", 8)
    _png(tmp_path / "train" / "b" / "big.png", 40)  # 1,600 pixels
    ds = ImageFolderDataset(tmp_path, "train", 8, 2, max_pixels=1000)
    big = [i for i, (p, _) in enumerate(ds.samples) if p.name == "big.png"][0]
    with pytest.raises(LdaeError, match=r"big.png .*1,600 pixels exceeds data.max_image_pixels=1,000"):
        ds[big]
    skip = ImageFolderDataset(tmp_path, "train", 8, 2, on_bad_image="skip", max_pixels=1000)
    x, y = skip[big]
    assert x.shape == (3, 8, 8) and skip.read_skipped[0]["path"].endswith("big.png")
    # under the ceiling, Pillow's own DecompressionBombWarning never reaches the console
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert ImageFolderDataset(tmp_path, "train", 8, 2, max_pixels=10 ** 6)[big][0].shape == (3, 8, 8)
    assert not [w for w in seen if "DecompressionBomb" in type(w.message).__name__]


# --- 6. signals ------------------------------------------------------------------------------

def _fault_cli(out: Path, fault: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LDAE_FAULT=fault, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(HERE / "_fault_run.py"), "pretrain", "-c", "demo",
                           "--out", str(out), *pretrain_overrides(), "train.threads=1"],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigterm_during_start_up_exits_75(tmp_path):
    p = _fault_cli(tmp_path / "run", "early:TERM")
    assert p.returncode == preempt.EXIT_PREEMPTED, p.stderr[-2000:]
    assert "while starting up" in p.stderr and "Traceback" not in p.stderr
    assert not checkpoint.list_checkpoints(tmp_path / "run")


@pytest.mark.slow
def test_sigint_stops_at_the_step_saves_and_exits_130(tmp_path):
    p = _fault_cli(tmp_path / "run", "signal:3:INT")
    assert p.returncode == preempt.EXIT_INTERRUPTED, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "interrupt: stopping after this step" in p.stderr
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run")) == 3


def test_a_second_ctrl_c_aborts_at_once_and_the_cli_says_so_in_one_line(capsys, monkeypatch):
    previous = preempt.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert preempt.received() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
        preempt._received.clear()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "linprobe", interrupted)
    rc = cli.main(["linprobe", "--out", "x"])
    err = capsys.readouterr().err
    assert rc == preempt.EXIT_INTERRUPTED and "interrupted" in err and "Traceback" not in err


# --- issue 16 (3, 4): files respect the umask; the package answers --version ------------------

def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.atomic_write_text(tmp_path / "a.txt", "x")
        checkpoint.save(tmp_path / "c.pt", {"x": torch.zeros(2)})
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        assert modes == {"a.txt": 0o644, "c.pt": 0o644, "c.pt.sha256": 0o644}, modes
        os.umask(0o077)
        checkpoint.atomic_write_text(tmp_path / "private.txt", "x")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_python_dash_m_ldae_prints_the_version():
    from ldae import __version__

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "ldae", "--version"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"ldae {__version__}"


# --- issue 16 (2, 5): portable run dirs; --print-config; the key listing -----------------------

def test_a_run_dir_made_in_one_directory_is_probed_from_another(tmp_path, monkeypatch, capsys):
    from test_pretrain import TINY

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    g = np.random.default_rng(0)
    np.savez(a / "data.npz", images=g.integers(0, 256, (80, 8, 8, 3), dtype=np.uint8),
             labels=np.arange(80) % 10)
    monkeypatch.chdir(a)
    over = [o for o in TINY if not o.startswith(("data.source", "data.synthetic_size"))]
    assert cli.main(["pretrain", "-c", "demo", "--out", "run", "--max-steps", "2",
                     "data.source=npz", "data.path=data.npz", *over, "train.threads=1"]) == 0
    saved = (a / "run" / "config.yaml").read_text()
    assert f"path: {a / 'data.npz'}" in saved  # absolute in the saved config
    monkeypatch.chdir(b)
    capsys.readouterr()
    rc = cli.main(["linprobe", "--out", "../a/run", "--fast", "linprobe.epochs=1",
                   "linprobe.warmup_epochs=0", "linprobe.lr_grid=[1.0]", "train.threads=1"])
    assert rc == 0, capsys.readouterr().err
    assert (a / "run" / "eval" / "linprobe.json").is_file()
    # and a resume from elsewhere with the same relative path given anew is the same config
    monkeypatch.chdir(a)
    assert cli.main(["pretrain", "-c", "demo", "--out", str(a / "run"), "--resume", "auto",
                     "--max-steps", "3", "data.source=npz", "data.path=data.npz", *over,
                     "train.threads=1"]) == 0
    monkeypatch.chdir(b)
    rc = cli.main(["pretrain", "-c", "demo", "--out", "x", "data.source=npz",
                   "data.path=data.npz", *over])
    err = capsys.readouterr().err
    assert rc == 2 and f"relative path, read from the current directory {b}" in err


def test_print_config_prints_the_checked_config_and_does_nothing_else(tmp_path, capsys, monkeypatch):
    import yaml

    from ldae.config import load_config

    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "-c", "cifar10-cpu", "--print-config", "optim.epochs=3",
                     "optim.warmup_epochs=1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    want = load_config("cifar10-cpu", ["optim.epochs=3", "optim.warmup_epochs=1"]).to_dict()
    assert printed == json.loads(json.dumps(want)) and not list(tmp_path.iterdir())
    rc = cli.main(["pretrain", "-c", "demo", "--print-config", "optim.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "set the warmup too, e.g. optim.warmup_epochs=0.25" in err


def test_the_key_listing_covers_the_whole_schema(capsys):
    import dataclasses

    from ldae.config import Config, describe_keys

    rows = describe_keys()
    schema = [f"{s.name}.{f.name}" for s in dataclasses.fields(Config)
              for f in dataclasses.fields(type(getattr(Config(), s.name)))]
    assert [k for k, _, _ in rows] == schema
    assert all(meaning for _, _, meaning in rows), [k for k, _, m in rows if not m]
    assert cli.main(["info", "--keys", "optim"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == sum(k.startswith("optim.") for k in schema)
    assert any(ln.startswith("optim.blr = 0.0001") and "App. A" in ln for ln in out)
    assert cli.main(["info", "--keys", "nosuch"]) == 2


# --- issue 16 (6, 7): a human summary line, JSON behind --json; the Python API -----------------

def test_commands_end_with_one_summary_line_and_json_on_request(tmp_path, capsys):
    from test_pretrain import TINY

    out = tmp_path / "run"
    assert cli.main(["pretrain", "-c", "demo", "--out", str(out), *TINY, "train.threads=1"]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("\n") == 1 and cap.out.startswith(f"pretrained {out}: step 8/8")
    assert "final loss" in cap.out and "ldae pretrain: model test" in cap.err  # the header
    assert cli.main(["linprobe", "--out", str(out), "--fast", "linprobe.epochs=1",
                     "linprobe.warmup_epochs=0", "train.threads=1"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "chosen on the holdout" in line and "val top-1" in line
    assert cli.main(["linprobe", "--out", str(out), "--fast", "--tag", "j", "--json",
                     "linprobe.epochs=1", "linprobe.warmup_epochs=0", "train.threads=1"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec == {k: v for k, v in json.loads((out / "eval" / "linprobe-j.json").read_text()).items()
                   if k not in ("grid", "paper_reference")}


def test_the_python_api_is_listed_and_lazy():
    code = ("import sys, ldae; assert 'torch' not in sys.modules; "
            "assert {'load_run', 'load_config', 'export', 'Denoiser'} <= set(dir(ldae)); "
            "cfg = ldae.load_config('demo', ['optim.epochs=7']); assert cfg.optim.epochs == 7; "
            "assert ldae.load_run.__module__ == 'ldae.engine.common'; "
            "import pytest; pytest.raises(AttributeError, getattr, ldae, 'nosuch')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_tensorboard_gets_fig8_denoising_images_at_checkpoints(tmp_path, monkeypatch):
    """With train.tensorboard=true: scalars and, at each checkpoint, one Fig. 8 grid (clean, then
    noisy / denoised per t). A stand-in SummaryWriter records the calls, so the test needs no
    tensorboard install."""
    import types

    calls = []

    class Writer:
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, tag, value, step):
            calls.append(("scalar", tag, step))

        def add_image(self, tag, image, step):
            calls.append(("image", tag, step, tuple(image.shape), float(image.min()), float(image.max())))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    pretrain.run(tiny(*CFG, "train.tensorboard=true", "train.ckpt_every=4"), tmp_path / "run")
    images = [c for c in calls if c[0] == "image"]
    assert [c[2] for c in images] == [4, 8]
    _, tag, _, shape, lo, hi = images[0]
    assert "t = 100, 250, 500" in tag and shape[0] == 3 and 0.0 <= lo <= hi <= 1.0
    # 7 rows (clean + 3 x noisy/denoised) of 8 px tiles with 1 px padding
    assert shape[1] == 7 * (8 + 1) + 1
    assert any(c[0] == "scalar" and c[1] == "loss" for c in calls) and calls[-1] == ("close",)
