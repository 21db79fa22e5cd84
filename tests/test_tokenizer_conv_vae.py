"""Convolutional KL autoencoder tokenizer (SPEC §4): src/ldae/tokenizers/{conv_vae,losses}.py."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ldae.config import TokenizerConfig, load_config
from ldae.errors import ConfigError
from ldae.tokenizers import FitData, build_tokenizer, load_tokenizer, patchify
from ldae.tokenizers.conv_vae import ConvVAETokenizer, default_groups, kl_standard_normal
from ldae.tokenizers.losses import (NLayerDiscriminator, PerceptualLoss, adaptive_weight,
                                    disc_layers_for, hinge_d_loss, hinge_g_loss)

TOY = ["data.source=synthetic", "data.synthetic_size=32", "data.val_size=8", "data.image_size=16",
       "model.patch_size=4", "model.name=test", "tokenizer.name=conv_vae", "tokenizer.dim=8",
       "tokenizer.width=16", "tokenizer.res_blocks=1", "tokenizer.fit_epochs=1", "train.device=cpu",
       "train.threads=1",
       "diffusion.input_space=latent", "diffusion.output_space=latent", "diffusion.target=eps"]


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Low-frequency colour images in [-1, 1] (an autoencoder can learn them in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=size, mode="bilinear",
                         align_corners=False)


def fit_data_of(x: torch.Tensor) -> FitData:
    return FitData(x.shape[0], lambda sel: x[sel], torch.device("cpu"), seed=0)


def tcfg(**kw) -> TokenizerConfig:
    base = dict(name="conv_vae", dim=8, width=16, res_blocks=1, fit_epochs=3.0, fit_batch=8,
                fit_lr=2e-3)
    return TokenizerConfig(**{**base, **kw})


# ---------------------------------------------------------------- layout and config
def test_token_is_a_2x2_latent_patch_and_grid_matches_backbone():
    torch.manual_seed(0)
    tok = ConvVAETokenizer(4, 8, width=8, res_blocks=1).eval()  # stride 2, c = 2, d = 4c = 8
    assert (tok.stride, tok.latent_channels, tok.block_out_channels) == (2, 2, [8, 16])
    tok.scale.fill_(2.5)
    x = smooth_images(2)
    with torch.no_grad():
        lat = tok.moments(x)[0] * 2.5  # (2, 2, 8, 8)
        z = tok.encode(x)
        assert lat.shape == (2, 2, 8, 8) and z.shape == (2, 16, 8)  # L = (16 / 4)^2, d = 4 c
        assert torch.equal(z[:, 0], lat[:, :, :2, :2].reshape(2, 8))
        assert torch.equal(z[:, 1], lat[:, :, :2, 2:4].reshape(2, 8))
        assert torch.equal(z[:, 4], lat[:, :, 2:4, :2].reshape(2, 8))
        assert torch.equal(z[1, 5, :4], lat[1, 0, 2:4, 2:4].reshape(4))  # channel slowest in a token
        out = tok.decode(z)
        assert out.shape == (2, 16, 48)  # image tokens, D = 3 p^2
        assert torch.allclose(out, patchify(tok.decode_latent(lat / 2.5), 4), atol=1e-6)
    # from the config: the token grid is the backbone's (H / p)^2
    cfg = load_config(None, TOY)
    t2 = build_tokenizer(cfg)
    assert isinstance(t2, ConvVAETokenizer) and t2.encode(smooth_images(1)).shape == (1, 16, 8)
    # stride 8 is LDM's f8: multipliers (1, 2, 4, 4), three downsamplers; 16 extends with a 4
    f8 = ConvVAETokenizer(16, 16, width=32, res_blocks=1)
    assert f8.block_out_channels == [32, 64, 128, 128] and f8.norm_groups == 32
    assert sum(b.downsamplers is not None for b in f8.encoder.down_blocks) == 3
    assert f8.encode(smooth_images(1)).shape == (1, 1, 16)  # 16 px / 16 = one token
    assert ConvVAETokenizer(32, 4, width=8).block_out_channels == [8, 16, 32, 32, 32]
    assert (default_groups([16, 32]), default_groups([64, 128]), default_groups([24, 48])) == (16, 32, 8)


@pytest.mark.parametrize("extra, needle", [
    (["tokenizer.stride=4"], "power of two"),       # 2 s != patch 4
    (["model.patch_size=8", "tokenizer.stride=3"], "power of two"),
    (["tokenizer.dim=6"], "multiple of 4"),
    (["tokenizer.pretrained=/no/such/vae.safetensors"], "does not exist"),
])
def test_config_checks(extra, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, TOY + extra)


# ---------------------------------------------------------------- losses
def test_kl_closed_form_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_standard_normal(mean, logvar), ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(kl_standard_normal(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)),
                          torch.zeros(2))


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0, 0.0]).view(1, 1, 2, 2)
    fake = torch.tensor([-2.0, 0.5, 1.0, -0.5]).view(1, 1, 2, 2)
    # relu(1 - real) = [0, .5, 2, 1] -> .875;  relu(1 + fake) = [0, 1.5, 2, .5] -> 1.0
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.0))
    assert hinge_g_loss(fake).item() == pytest.approx(0.25)


def test_adaptive_weight_hand_made_case():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (torch.tensor([3.0, 4.0]) * w).sum()  # grad (3, 4), norm 5
    gan = (torch.tensor([0.6, 0.8]) * w).sum()  # grad norm 1
    lam = adaptive_weight(rec, gan, w)
    assert lam.item() == pytest.approx(5.0 / (1.0 + 1e-4)) and not lam.requires_grad
    (rec + lam * gan).backward()  # the graphs were kept for the real backward
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0]) + lam * torch.tensor([0.6, 0.8]))
    sq = (w ** 2).sum()  # grad 2 w = (2, 4)
    gan2 = (torch.tensor([1.2, 1.6]) * w).sum()  # grad norm 2
    assert adaptive_weight(sq, gan2, w).item() == pytest.approx(math.sqrt(20) / (2 + 1e-4))
    rec = (torch.tensor([3.0, 4.0]) * w).sum()
    tiny = (1e-9 * w).sum()  # ||grad g|| ~ 0: the ratio 5 / 1e-4 is clamped at 1e4
    assert adaptive_weight(rec, tiny, w).item() == pytest.approx(1e4)


def test_patch_discriminator_shapes():
    assert [disc_layers_for(s) for s in (256, 32, 16, 8)] == [3, 3, 2, 1]
    with pytest.raises(ValueError):
        disc_layers_for(4)
    d = NLayerDiscriminator(3, 8, 3)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)  # 32 / 8 - 2
    d = NLayerDiscriminator(3, 8, disc_layers_for(16))
    assert d(torch.randn(2, 3, 16, 16)).shape == (2, 1, 2, 2)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


def test_perceptual_refused_without_weights_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, TOY + ["tokenizer.perceptual=true"])
    msg = str(e.value)
    assert "tokenizer.perceptual_weights" in msg and "vgg16-397923af.pth" in msg
    assert "not legitimate" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, TOY + ["tokenizer.perceptual=true",
                                 f"tokenizer.perceptual_weights={tmp_path / 'vgg16.pth'}"])


def test_perceptual_and_adversarial_fit_with_random_vgg(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    feats = make_layers(cfgs["D"])  # torchvision's vgg16().features, random init
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, path)
    cfg = load_config(None, TOY + ["tokenizer.perceptual=true", f"tokenizer.perceptual_weights={path}"])
    ploss = PerceptualLoss.from_file(path)
    x, y = smooth_images(2, seed=1), smooth_images(2, seed=2)
    # the taps equal torchvision's features at relu{1_2, 2_2, 3_3, 4_3, 5_3}
    with torch.no_grad():
        taps = ploss.taps(x)
        xn = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
            torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = [feats[:end](xn) for end in (4, 9, 16, 23, 30)]
        for a, b in zip(taps, ref):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        # LPIPS with unit weights: per layer, channel-normalise, squared diff summed over
        # channels, averaged over space; summed over layers
        ry = [feats[:end]((((y + 1) / 2) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                          / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
              for end in (4, 9, 16, 23, 30)]
        hand = sum(((a / (a.norm(dim=1, keepdim=True) + 1e-10) - b / (b.norm(dim=1, keepdim=True) + 1e-10))
                    ** 2).sum(1).mean((1, 2)) for a, b in zip(ref, ry))
        assert torch.allclose(ploss(x, y), hand, rtol=1e-4)
        assert torch.allclose(ploss(x, x), torch.zeros(2))
    # a fit with both auxiliary losses runs (adversarial from step 1 of 2), deterministically
    data = fit_data_of(smooth_images(8))
    tc = cfg.tokenizer
    tc.fit_batch, tc.adversarial, tc.adv_start = 4, True, 0.5
    runs = []
    for _ in range(2):
        tok = build_tokenizer(cfg)
        stats = tok.fit_data(data, tc, generator=torch.Generator().manual_seed(3), show=False)
        runs.append(tok.state_dict())
    assert stats["steps"] == 2 and stats["adv_start_step"] == 1
    for k in ("perceptual", "g_loss", "d_loss", "adv_lambda", "recon_l1", "kl", "scale"):
        assert math.isfinite(stats[k]), k
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# ---------------------------------------------------------------- fitting
@pytest.fixture(scope="module")
def fitted():
    x = smooth_images(32)
    tok = ConvVAETokenizer(4, 8, width=16, res_blocks=1)
    stats = tok.fit_data(fit_data_of(x), tcfg(), generator=torch.Generator().manual_seed(1), show=False)
    return tok.eval(), stats, x


def test_fit_lowers_reconstruction_loss(fitted):
    tok, stats, x = fitted
    assert stats["steps"] == 12  # 3 epochs x 32 / 8
    assert stats["recon_l1_eval"] < 0.8 * stats["recon_l1_init"]
    assert json.loads(json.dumps(stats)) == stats  # plain numbers for tokenizer.json


def test_scale_factor_gives_unit_std_on_fit_data(fitted):
    tok, stats, x = fitted
    assert stats["scale"] == pytest.approx(float(tok.scale)) and stats["scale_source"] == "measured"
    with torch.no_grad():
        z = tok.encode(x).double()
        raw = tok.moments(x)[0].double()
    assert z.std().item() == pytest.approx(1.0, rel=1e-4)
    assert raw.std().item() == pytest.approx(1.0 / stats["scale"], rel=1e-4)
    f = tok.filters()
    assert f.shape == (16, 3, 3, 3) and torch.all(f.flatten(1).norm(dim=1).diff() <= 0)


def test_save_load_round_trip_gives_identical_encodes(fitted, tmp_path):
    tok, _, x = fitted
    path = tmp_path / "tokenizer.safetensors"
    tok.save(path)
    back = load_tokenizer(path)
    assert isinstance(back, ConvVAETokenizer) and back.meta() == tok.meta()
    assert back.trained and float(back.scale) == float(tok.scale)
    with torch.no_grad():
        z = tok.encode(x[:4])
        assert torch.equal(back.encode(x[:4]), z)
        assert torch.equal(back.decode(z), tok.decode(z))


def test_pretrained_file_loads_strictly_and_scale_is_measured(fitted, tmp_path):
    tok, _, x = fitted
    sd = {k: v.contiguous() for k, v in tok.state_dict().items() if k != "scale"}  # diffusers keys
    save_file(sd, str(tmp_path / "vae.safetensors"))
    loaded = ConvVAETokenizer.load_pretrained(tmp_path / "vae.safetensors")
    assert float(loaded.scale) == 1.0  # no config.json: measured at fit time
    assert loaded.meta() == tok.meta()
    with torch.no_grad():
        assert torch.equal(loaded.moments(x[:2])[0], tok.moments(x[:2])[0])
    # diffusers < 0.14 names of the attention weights load too
    legacy = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in sd.items()}
    (tmp_path / "old").mkdir()
    save_file(legacy, str(tmp_path / "old" / "weights.safetensors"))
    old = ConvVAETokenizer.load_pretrained(tmp_path / "old")  # a folder with one safetensors file
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in sd.items())
    cfg = load_config(None, TOY + [f"tokenizer.pretrained={tmp_path / 'vae.safetensors'}"])
    fresh = build_tokenizer(cfg)
    stats = fresh.fit_data(fit_data_of(x), cfg.tokenizer, show=False)
    assert stats["steps"] == 0 and stats["scale_source"] == "measured"
    assert stats["scale"] == pytest.approx(float(tok.scale), rel=1e-5)
    with pytest.raises(ConfigError, match="tokenizer.dim=8"):  # a file of another shape is refused
        load_config(None, TOY + ["tokenizer.dim=4", f"tokenizer.pretrained={tmp_path / 'vae.safetensors'}"])


def test_cli_fit_tokenizer_writes_files(tmp_path):
    from ldae.cli import main

    out = tmp_path / "tok"
    assert main(["fit-tokenizer", "-c", "demo", "--out", str(out), *TOY]) == 0
    assert (out / "tokenizer.safetensors").is_file() and (out / "figures" / "filters.png").is_file()
    summary = json.loads((out / "tokenizer.json").read_text())
    assert summary["tokenizer"] == "conv_vae" and summary["steps"] == 1 and summary["scale"] > 0
    tok = load_tokenizer(out / "tokenizer.safetensors")
    assert isinstance(tok, ConvVAETokenizer) and tok.encode(smooth_images(1)).shape == (1, 16, 8)


# ---------------------------------------------------------------- the standard
def test_equals_diffusers_autoencoder_kl(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
        norm_num_groups=32).eval()
    with torch.no_grad():  # move norms and biases off their init so every parameter matters
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    tok = ConvVAETokenizer.load_pretrained(tmp_path / "vae.safetensors").eval()
    assert (tok.patch_size, tok.dim, tok.block_out_channels, tok.res_blocks) == (4, 16, [32, 64], 1)
    x = smooth_images(2)
    lat = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        post = ref.encode(x).latent_dist
        mean, logvar = tok.moments(x)
        assert torch.allclose(mean, post.mean, atol=1e-5)
        assert torch.allclose(logvar, post.logvar, atol=1e-5)
        assert torch.allclose(tok.encode(x), patchify(post.mean, 2), atol=1e-5)
        assert torch.allclose(tok.decode_latent(lat), ref.decode(lat).sample, atol=1e-5)
    # a save_pretrained folder: config.json is read, its scaling_factor kept
    ref.save_pretrained(str(tmp_path / "hub"))
    tok2 = ConvVAETokenizer.load_pretrained(tmp_path / "hub")
    assert float(tok2.scale) == pytest.approx(ref.config.scaling_factor)
    with torch.no_grad():
        assert torch.allclose(tok2.encode(x), patchify(post.mean * ref.config.scaling_factor, 2),
                              atol=1e-5)
