"""``ldae export``: the folded encoder loads strictly into timm's VisionTransformer and gives our
features at fixed t, for every registered size."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from ldae.config import load_config
from ldae.diffusion import build_denoiser
from ldae.engine.export import fold
from ldae.errors import ConfigError
from ldae.models import MODEL_SIZES
from ldae.tokenizers import ConvVAETokenizer, PCATokenizer
from ldae.tokenizers.pixel import PixelTokenizer


def _perturb(den, seed: int = 0) -> None:
    """adaLN-Zero starts with zero gates (an identity encoder): draw every weight instead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in den.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _images(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _check(den, size: int, t: int, k: int, tol: float = 1e-4, layer_scale: bool = False,
           clean: str = "original") -> None:
    sd, kwargs = fold(den, t, k, size, layer_scale=layer_scale, clean=clean)
    vit = VisionTransformer(**kwargs).eval()
    vit.load_state_dict(sd, strict=True)
    x = _images(2, size)
    ours = den.features(x, t, [k], clean=clean)[0]
    with torch.no_grad():
        theirs = vit(x)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, rtol=tol, atol=tol)


@pytest.mark.parametrize("size", [s for s in MODEL_SIZES if s != "test"])
def test_every_size_exports_to_a_strict_timm_vit(size):
    torch.manual_seed(0)
    p, img = 16, 32  # 4 tokens: the widths and depths are what is tested
    cfg = load_config(None, [f"model.name={size}", "data.source=synthetic", f"data.image_size={img}",
                             f"model.patch_size={p}", "tokenizer.dim=32"])
    tok = PCATokenizer(p, 32)
    den = build_denoiser(cfg, tok).eval()
    _perturb(den)
    _check(den, img, t=10, k=den.backbone.encoder_blocks, tol=2e-4)


@pytest.mark.parametrize("size", ["micro", "mini-B"])
def test_gates_kept_as_layer_scale_give_the_same_features(size):
    """Fine-tuning's form: gates as timm LayerScale vectors (ls1/ls2), Linears left unscaled."""
    cfg = load_config(None, [f"model.name={size}", "data.source=synthetic", "data.image_size=32",
                             "model.patch_size=16", "tokenizer.dim=32"])
    den = build_denoiser(cfg, PCATokenizer(16, 32)).eval()
    _perturb(den, 7)
    _check(den, 32, t=10, k=den.backbone.encoder_blocks, tol=2e-4, layer_scale=True)
    sd, _ = fold(den, 10, 1, 32, layer_scale=True)
    assert torch.equal(sd["blocks.0.attn.proj.weight"], den.backbone.blocks[0].attn.proj.weight)


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_latent_input_folds_into_the_patch_embedding(whiten):
    size, p, d = 16, 4, 6
    cfg = load_config(None, ["model.name=test", "data.source=synthetic", f"data.image_size={size}",
                             f"model.patch_size={p}", f"tokenizer.dim={d}", "diffusion.input_space=latent",
                             "diffusion.output_space=latent", "diffusion.target=eps",
                             f"tokenizer.whiten={str(whiten).lower()}"])
    tok = PCATokenizer(p, d, whiten=whiten).fit([_images(32, size)])
    den = build_denoiser(cfg, tok).eval()
    _perturb(den, 3)
    for t, k in [(0, 1), (10, 2), (500, 2)]:
        _check(den, size, t, k)


@pytest.mark.parametrize("scale", ["none", "unit"])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_projected_clean_input_folds_into_the_patch_embedding(scale, layer_scale):
    """clean_input=projected: the ViT takes plain images and computes the encoder's features on
    decode(encode(x)); the PCA projection lives in its patch embedding."""
    size, p, d = 16, 4, 5
    cfg = load_config(None, ["model.name=test", "data.source=synthetic", f"data.image_size={size}",
                             f"model.patch_size={p}", f"tokenizer.dim={d}", f"tokenizer.scale={scale}"])
    tok = PCATokenizer(p, d, scale=scale).fit([_images(32, size)])
    den = build_denoiser(cfg, tok).eval()
    _perturb(den, 4)
    for t, k in [(10, 1), (40, 2)]:
        _check(den, size, t, k, layer_scale=layer_scale, clean="projected")
    sd_o, _ = fold(den, 10, 1, size)
    sd_p, _ = fold(den, 10, 1, size, clean="projected")
    assert not torch.allclose(sd_o["patch_embed.proj.weight"], sd_p["patch_embed.proj.weight"])


def test_latent_input_folds_any_tokenizer_linear_map():
    """The latent side asks the tokenizer for ``linear_map``: the pixel tokenizer at q = p (the
    identity) folds; conv_vae (a conv net) has none, and the error names the capability."""
    latent = ["model.name=test", "data.source=synthetic", "data.image_size=16", "model.patch_size=4",
              "diffusion.input_space=latent", "diffusion.output_space=latent", "diffusion.target=eps"]
    cfg = load_config(None, [*latent, "tokenizer.name=pixel", "tokenizer.dim=48"])
    den = build_denoiser(cfg, PixelTokenizer(4, 48, 16)).eval()
    _perturb(den, 6)
    _check(den, 16, 10, 1)
    cfg = load_config(None, [*latent, "tokenizer.name=conv_vae", "tokenizer.dim=8", "tokenizer.width=8",
                             "tokenizer.res_blocks=1"])
    den = build_denoiser(cfg, ConvVAETokenizer(4, 8, width=8, res_blocks=1)).eval()
    with pytest.raises(ConfigError, match="linear_map"):
        fold(den, 10, 1, 16)


def test_class_conditional_model_exports_with_the_null_class():
    cfg = load_config(None, ["model.name=test", "data.source=synthetic", "data.image_size=16",
                             "model.patch_size=4", "tokenizer.dim=4", "model.class_cond=true"])
    den = build_denoiser(cfg, PCATokenizer(4, 4)).eval()
    _perturb(den, 5)
    _check(den, 16, 10, 1)


def test_export_cli_writes_files_that_timm_loads(tmp_path):
    import json

    from safetensors.torch import load_file

    from ldae.cli import main

    run = tmp_path / "run"
    args = ["-c", "demo", "--out", str(run), "model.name=test", "data.source=synthetic",
            "data.synthetic_size=64", "data.val_size=16", "optim.epochs=1", "optim.warmup_epochs=0",
            "optim.batch_size=16", "train.threads=1"]
    assert main(["pretrain", *args]) == 0
    out = tmp_path / "exp"
    assert main(["export", str(run), "--t", "10", "--blocks", "1", "--out", str(out)]) == 0
    vit = VisionTransformer(**json.loads((out / "config.json").read_text())["model_args"])
    vit.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    # timm's own one line, strictly, and the preprocessing it resolves (issue 16)
    import timm
    from timm.data import resolve_data_config

    hub = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    size = json.loads((out / "config.json").read_text())["model_args"]["img_size"]
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(hub(x), vit.eval()(x), atol=1e-6)
    data = resolve_data_config({}, model=hub)
    # tuple(): older timm (1.0.20-1.0.25, tried) keeps the JSON list as it is
    assert tuple(data["input_size"]) == (3, size, size) and tuple(data["mean"]) == (0.5,) * 3
    assert tuple(data["std"]) == (0.5,) * 3 and data["crop_pct"] == 1.0
    from ldae.engine.common import load_run

    _, den = load_run(run)  # and it is the run's encoder: the folded feature at t = 10, 1 block
    with torch.no_grad():
        want = den.features(x, t=10, blocks=[1], clean="projected")[0]
    assert torch.allclose(hub(x), want, atol=1e-4)
    assert main(["export", str(run), "--blocks", "9", "--out", str(out)]) == 2
    orig = tmp_path / "exp-orig"  # the default follows the run's linprobe.clean_input (projected)
    assert main(["export", str(run), "--blocks", "1", "--clean-input", "original", "--out", str(orig)]) == 0
    assert json.loads((orig / "export.json").read_text())["clean_input"] == "original"
    assert json.loads((out / "export.json").read_text())["clean_input"] == "projected"
