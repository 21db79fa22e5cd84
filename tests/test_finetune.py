"""``ldae finetune`` (App. B) and outside encoders (exported or timm ViTs) in the probe:
layer-wise lr decay against MAE's rule, the folded start, exact resume, learning, bad input."""
from __future__ import annotations

import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from ldae import checkpoint
from ldae.cli import main
from ldae.config import load_config
from ldae.errors import CheckpointError, ConfigError
from ldae.models.vit import VitEncoder, load_vit, no_decay_ids, vit_layer_groups

BASE = ["data.source=synthetic", "data.image_size=16", "data.synthetic_size=64", "data.val_size=32",
        "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "train.threads=1"]
FT = ["finetune.batch_size=16", "finetune.epochs=2", "finetune.warmup_epochs=0.5",
      "finetune.ema=0.9", "train.log_every=1", "train.ckpt_every=3", "train.keep_ckpts=10"]


def cfg_of(*extra: str):
    return load_config(None, BASE + FT + list(extra))


# ------------------------------------------------------------------ layer-wise lr decay
def mae_param_groups(model, weight_decay: float, layer_decay: float) -> dict[str, tuple[float, float]]:
    """MAE's ``util/lr_decay.param_groups_lrd`` (by parameter names): name -> (lr_scale, wd)."""
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    skip = model.no_weight_decay()

    def layer_id(name: str) -> int:
        if name in ("cls_token", "pos_embed", "reg_token") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks"):
            return int(name.split(".")[1]) + 1
        return num_layers

    return {n: (scales[layer_id(n)], 0.0 if p.ndim == 1 or n in skip else weight_decay)
            for n, p in model.named_parameters()}


@pytest.mark.parametrize("kwargs", [
    dict(class_token=False, global_pool="avg", no_embed_class=True, final_norm=True, fc_norm=True),
    dict(class_token=True, global_pool="token"),
    dict(class_token=True, reg_tokens=2, global_pool="avg"),
])
def test_layer_decay_matches_maes_rule(kwargs):
    from ldae.engine.finetune import param_groups

    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
                            num_classes=10, **kwargs)
    ours = {}
    names = {id(p): n for n, p in vit.named_parameters()}
    for g in param_groups(vit, layer_decay=0.75, weight_decay=0.05):
        for p in g["params"]:
            assert id(p) not in ours, "a parameter sits in two groups"
            ours[names[id(p)]] = (g["lr_scale"], g["weight_decay"])
    ref = mae_param_groups(vit, 0.05, 0.75)
    assert ours.keys() == ref.keys()
    for n in ref:
        assert ours[n] == pytest.approx(ref[n]), n


def test_layer_groups_follow_depth_and_cover_every_parameter():
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)
    groups = vit_layer_groups(vit)
    assert len(groups) == 4 + 2
    assert sum(len(g) for g in groups) == len(list(vit.parameters()))
    assert any(p is vit.pos_embed for p in groups[0])
    assert {id(p) for p in groups[2]} == {id(p) for p in vit.blocks[1].parameters()}
    assert any(p is vit.head.weight for p in groups[-1])
    nd = no_decay_ids(vit)
    assert id(vit.pos_embed) in nd and id(vit.head.weight) not in nd and id(vit.head.bias) in nd


# ---------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny pretraining run (image-space l-DAE) and an export of it."""
    from ldae.engine import pretrain

    run = tmp_path_factory.mktemp("ft") / "run"
    cfg = load_config(None, BASE + ["optim.batch_size=16", "optim.epochs=2", "optim.warmup_epochs=1",
                                    "optim.blr=2e-3", "train.ckpt_every=100"])
    pretrain.run(cfg, run)
    assert main(["export", str(run), "--t", "10", "--out", str(run.parent / "export")]) == 0
    return run, run.parent / "export"


@pytest.mark.parametrize("clean", ["original", "projected"])
def test_ldae_start_is_the_folded_encoder(pretrained, clean):
    from ldae.engine.common import load_run
    from ldae.engine.finetune import build_model

    run, _ = pretrained
    cfg = cfg_of(f"finetune.clean_input={clean}")
    enc = build_model(cfg, run).eval()
    assert enc.meta["clean_input"] == clean
    _, den = load_run(run)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = den.features(x, 10, [den.backbone.encoder_blocks], clean=clean)[0]
        pooled = enc.model.forward_head(enc.model.forward_features(enc.normalize(x)), pre_logits=True)
    # the fine-tuning model adds MAE's LayerNorm before the head: undo it to compare the pool
    ln = enc.model.fc_norm
    torch.testing.assert_close(pooled, ln(ours), rtol=2e-4, atol=2e-4)
    assert enc.model.head.weight.abs().max() < 1e-3  # MAE's head init (std 2e-5)
    assert enc.logits(x).shape == (4, 10)


def _states_equal(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["step"] == b["step"]


def test_resume_is_exact_with_every_augmentation_on(tmp_path):
    """k steps, stop, resume (with a loader worker this time), k steps == 2k steps, bit for bit:
    RandAug, random erasing, MixUp/CutMix, drop path, EMA and the optimizer state included."""
    from ldae.engine import finetune

    cfg = cfg_of("finetune.init=random")
    full = finetune.run(cfg, tmp_path / "a")
    assert full["steps"] == 8
    finetune.run(cfg, tmp_path / "b", max_steps=3)
    cfg_w = cfg_of("finetune.init=random", "data.num_workers=1")
    again = finetune.run(cfg_w, tmp_path / "b", resume="auto")
    a = checkpoint.load(checkpoint.latest(tmp_path / "a" / "finetune-random"))
    b = checkpoint.load(checkpoint.latest(tmp_path / "b" / "finetune-random"))
    _states_equal(a, b)
    assert again["raw"] == full["raw"] and again["ema"] == full["ema"]
    metrics = (tmp_path / "b" / "finetune-random" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(m)["step"] for m in metrics if "loss" in json.loads(m)]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume
    assert (tmp_path / "a" / "finetune-random" / "figures" / "finetune.png").is_file()
    assert (tmp_path / "a" / "figures" / "finetune.png").is_file()  # the side-by-side plot


def test_changed_config_refuses_to_resume(tmp_path):
    from ldae.engine import finetune

    finetune.run(cfg_of("finetune.init=random"), tmp_path, max_steps=3)
    with pytest.raises(ConfigError, match="finetune.blr"):
        finetune.run(cfg_of("finetune.init=random", "finetune.blr=5e-3"), tmp_path, resume="auto")
    with pytest.raises(ConfigError, match="--resume auto"):
        finetune.run(cfg_of("finetune.init=random"), tmp_path)


def test_finetuning_learns_the_synthetic_classes(tmp_path):
    """Plain recipe (no MixUp/RandAug) from random init: far above chance (10 %) on val."""
    from ldae.engine import finetune

    cfg = cfg_of("finetune.init=random", "finetune.epochs=12", "finetune.mixup=0",
                 "finetune.cutmix=0", "finetune.randaug=''", "finetune.reprob=0",
                 "finetune.drop_path=0", "finetune.blr=2e-2", "finetune.eval_every=0",
                 "finetune.layer_decay=1.0", "train.log_every=10", "train.ckpt_every=1000")
    rec = finetune.run(cfg, tmp_path)
    assert rec["raw"]["top1"] >= 60.0, rec["raw"]


# ------------------------------------------------------------------ outside encoders
def test_exported_model_probes_like_the_run(pretrained, tmp_path):
    """The probe's features through ``--from EXPORT`` equal the run's own at the same t."""
    from ldae.data import build_dataset
    from ldae.dist import setup
    from ldae.engine.encoders import encoder_for
    from ldae.engine.linprobe import extract_features, probe_blocks

    run, export = pretrained
    rt = setup("cpu", 1)
    cfg_run = cfg_of()
    cfg_vit = cfg_of("linprobe.encoder=vit", f"vit.source={export}")
    ds = build_dataset(cfg_run, "val")
    den = encoder_for(cfg_run, run, rt.device)
    vit = encoder_for(cfg_vit, run, rt.device)
    assert isinstance(vit, VitEncoder)
    f_run, y_run = extract_features(den, ds, cfg_run, rt, probe_blocks(cfg_run, den))
    f_vit, y_vit = extract_features(vit, ds, cfg_vit, rt, probe_blocks(cfg_vit, vit))
    assert torch.equal(y_run, y_vit)
    torch.testing.assert_close(f_vit[0], f_run[0], rtol=2e-4, atol=2e-4)

    out = tmp_path / "probe"
    assert main(["linprobe", "--from", str(export), "--out", str(out), "--fast"] + BASE
                + ["linprobe.epochs=2", "linprobe.warmup_epochs=1", "linprobe.lr_grid=[1.0]"]) == 0
    rec = json.loads((out / "eval" / "linprobe-vit.json").read_text())
    assert rec["source"] == str(export) and rec["t"] == 10 and rec["feat_dim"] == 32


def test_finetune_from_an_export_dir(pretrained, tmp_path):
    _, export = pretrained
    assert main(["finetune", "--from", str(export), "--out", str(tmp_path)] + BASE + FT
                + ["finetune.epochs=1"]) == 0
    rec = json.loads((tmp_path / "eval" / "finetune-vit.json").read_text())
    assert rec["init"] == "vit" and rec["steps"] == 4 and rec["ema"] is not None


def test_any_timm_vit_checkpoint_loads_strictly_with_its_normalisation(tmp_path):
    """A timm checkpoint made at 64 px loads at 32 px (position embedding resampled by timm) and
    the encoder equals timm's own pooled features under the model's mean/std."""
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=7)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    enc = load_vit("timm:vit_tiny_patch16_224", str(f), image_size=32).eval()
    assert enc.width == 192 and enc.model.pos_embed.shape[1] == 1 + 4
    sd = enc.model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith(("head.", "pos_embed")):
            assert torch.equal(sd[k], v), k
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0)
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor(ref.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ref.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(((x + 1) / 2 - mean) / std))

    # the same file through the probe's CLI
    out = tmp_path / "probe"
    args = ["linprobe", "--from", "timm:vit_tiny_patch16_224", "--weights", str(f), "--out", str(out),
            "--fast", "data.source=synthetic", "data.image_size=32", "data.synthetic_size=32",
            "data.val_size=16", "linprobe.epochs=1", "linprobe.warmup_epochs=0", "linprobe.lr_grid=[1.0]",
            "linprobe.batch_size=16", "train.threads=1"]
    assert main(args) == 0
    rec = json.loads((out / "eval" / "linprobe-vit.json").read_text())
    assert rec["feat_dim"] == 192 and rec["source"] == "timm:vit_tiny_patch16_224"


def test_bad_outside_encoders_fail_with_a_clear_message(tmp_path, pretrained, capsys):
    import pickle

    run, export = pretrained
    with pytest.raises(ConfigError, match="needs vit.weights"):
        load_vit("timm:vit_tiny_patch16_224", "", 32)
    with pytest.raises(ConfigError, match="timm has no model"):
        load_vit("timm:vit_nonexistent_patch3", "x", 32)
    with pytest.raises(ConfigError, match="neither an `ldae export` dir"):
        load_vit(str(tmp_path), "", 32)
    with pytest.raises(ConfigError, match="exported for 16 px"):
        load_vit(str(export), "", 32)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_vit("timm:vit_tiny_patch16_224", str(wrong), 32)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="would run code"):
        load_vit("timm:vit_tiny_patch16_224", str(evil), 32)
    assert "code ran" not in capsys.readouterr().out
    # CLI: a run dir given as --from, and noisy input for an outside ViT
    assert main(["finetune", "--from", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "give it as --out" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="linprobe.noisy"):
        cfg_of("linprobe.encoder=vit", f"vit.source={export}", "linprobe.noisy=true")


@pytest.mark.parametrize("override,match", [
    ("finetune.layer_decay=0", "layer_decay"),
    ("finetune.batch_size=15", "even"),
    ("finetune.init=vit", "vit.source"),
    ("finetune.randaug=m9", "RandAugment"),
    ("finetune.warmup_epochs=5", "warmup_epochs"),
])
def test_bad_finetune_config_fails_before_any_work(override, match):
    with pytest.raises(ConfigError, match=match):
        cfg_of(override)


def test_randaug_posterize_at_full_magnitude_gives_a_black_image_on_any_pillow():
    """timm's PosterizeIncreasing keeps 0 bits at magnitude 10 (reached by m9 + mstd 0.5):
    the reference (TF, Pillow < 13) blacks the image out; Pillow 13 raises. Ours blacks out."""
    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    from ldae.engine.finetune import train_transform

    cfg = cfg_of()
    tf = train_transform(cfg, VitEncoder(torch.nn.Identity()))
    ra = next(t for t in tf.transforms if isinstance(t, RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(op(img)).max() == 0
    op.magnitude = 5  # 4 - int(0.5 * 4) = 2 bits: 200 = 0b11001000 -> 0b11000000
    assert np.asarray(op(img)).max() == 192


@pytest.mark.slow
def test_two_process_gloo_finetune_runs_and_evaluates_once(tmp_path):
    """DDP: each rank augments its half of the global batch, rank 0 evaluates and writes."""
    from _ddp import spawn

    spawn("finetune", tmp_path, BASE + FT + ["finetune.init=random", "finetune.epochs=1",
                                             "train.device=cpu"])
    rec = json.loads((tmp_path / "eval" / "finetune-random.json").read_text())
    assert rec["world_size"] == 2 and rec["steps"] == 4
    evals = [json.loads(ln) for ln in (tmp_path / "finetune-random" / "metrics.jsonl").read_text()
             .splitlines() if "raw_top1" in ln]
    assert [e["step"] for e in evals] == [4]  # one evaluation, by rank 0
