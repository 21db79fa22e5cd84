"""The console script end to end on a toy config, and its errors (one paragraph, exit 2, no work)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ldae.cli import main

TOY = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=64", "data.val_size=32",
       "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
       "optim.epochs=2", "optim.warmup_epochs=1", "optim.blr=1e-3", "linprobe.epochs=3",
       "linprobe.warmup_epochs=1", "linprobe.batch_size=16", "linprobe.lr_grid=[1,10]"]


@pytest.mark.slow
def test_demo_end_to_end_on_a_toy_config(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TOY]) == 0
    text = capsys.readouterr().out
    assert "l-DAE minus random init" in text
    for name in ("linprobe.json", "linprobe-random.json", "linprobe-pixels.json"):
        res = json.loads((out / "eval" / name).read_text())
        assert 0 <= res["top1"] <= res["top5"] <= 100 and res["mode"] == "fast"
    assert (out / "report.md").read_text().count("|") > 10
    # rerunning resumes the finished pretraining instead of refusing or redoing it
    assert main(["demo", "--out", str(out), *TOY]) == 0


def test_pretrain_linprobe_info_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "-c", "demo", "--out", str(out), *TOY, "train.ckpt_every=4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 8 and summary["img_per_s"] > 0
    assert main(["linprobe", "--out", str(out), "--fast", "linprobe.epochs=2"]) == 0
    res = json.loads((out / "eval" / "linprobe.json").read_text())
    assert res["encoder"] == "ldae" and res["epochs"] == 2 and res["eval_split"] == "val"
    # an older checkpoint, probed beside the newest under its own tag, the projected clean input
    ckpts = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    assert main(["linprobe", "--out", str(out), "--fast", "--ckpt", str(ckpts[0]), "--tag", "first",
                 "linprobe.epochs=2", "linprobe.clean_input=original"]) == 0
    first = json.loads((out / "eval" / "linprobe-first.json").read_text())
    assert first["weights"]["step"] == int(ckpts[0].stem.split("-")[1]) < res["weights"]["step"]
    assert first["clean_input"] == "original" and res["clean_input"] == "projected"
    assert (out / "eval" / "linprobe-first-head.safetensors").is_file()
    assert main(["linprobe", "--out", str(out), "--fast", "--tag", "../x"]) == 2
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "train_summary.json" in capsys.readouterr().out
    assert main(["fit-tokenizer", "-c", "demo", "--out", str(tmp_path / "tok"), *TOY]) == 0
    assert (tmp_path / "tok" / "tokenizer.safetensors").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["pretrain", "-c", "demo", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["pretrain", "-c", "demo", "diffusion.schedule=cosine"], "Choices:"),
    (["pretrain", "-c", "demo", "diffusion.target=eps"], "output_space"),
    (["pretrain", "-c", "nosuchpreset"], "unknown preset"),
    (["pretrain", "-c", "cifar10-cpu", "data.path=/no/such/dir"], "does not exist"),
    (["pretrain", "-c", "demo", "optim.epochs=abc"], "wrong type"),
    (["linprobe", "--encoder", "ldae"], "not an ldae run dir"),
])
def test_bad_input_is_one_paragraph_and_no_work(tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    argv = argv[:1] + ["--out", str(out)] + argv[1:]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
    assert not (out / "checkpoints").exists()


def test_console_script_runs_info():
    r = subprocess.run([sys.executable, "-m", "ldae.cli", "info"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "presets:" in r.stdout and "cifar10-cpu" in r.stdout


def test_slurm_example_is_valid_bash_and_a_valid_ldae_command():
    """examples/slurm-pretrain.sbatch parses, and the ldae command it launches parses with the
    default preset (no SLURM needed: the command line is checked, not run)."""
    import re
    import subprocess
    from pathlib import Path

    from ldae.cli import build_parser
    from ldae.config import load_config

    script = Path(__file__).resolve().parents[1] / "examples" / "slurm-pretrain.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    preset = re.search(r'PRESET="\$\{PRESET:-([\w-]+)\}"', text).group(1)
    args = build_parser().parse_args(["pretrain", "-c", preset, "--out", "runs/x", "--resume", "auto",
                                      "data.source=packed", "data.path=/data/in256"])
    cfg = load_config(args.config, args.overrides, check=False)
    assert cfg.data.source == "packed" and cfg.optim.batch_size > 0


def test_demo_says_in_one_line_why_when_raw_pixels_win():
    from ldae.config import load_config
    from ldae.engine.demo import trail_note

    digits = load_config("demo")
    assert trail_note(digits, {"ldae": {"top1": 91.0}, "pixels": {"top1": 90.0}}) is None
    note = trail_note(digits, {"ldae": {"top1": 80.0}, "pixels": {"top1": 89.5}})
    assert "Why raw pixels win here (by 9.5 points)" in note and "\n" not in note
    other = trail_note(load_config("demo", ["data.source=synthetic"]),
                       {"ldae": {"top1": 20.0}, "pixels": {"top1": 30.0}})
    assert "by 10.0 points" in other and "optim.epochs" in other
