"""Patch AE / VAE and pixel tokenizers (SPEC §4): src/ldae/tokenizers/{patch,pixel}.py."""
import json
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldae.cli import main
from ldae.config import load_config
from ldae.errors import ConfigError
from ldae.tokenizers import (TOKENIZERS, FitData, PCATokenizer, load_tokenizer, patchify,
                             unpatchify)
from ldae.tokenizers.patch import PatchAETokenizer, PatchVAETokenizer, warmup_cosine
from ldae.tokenizers.pixel import PixelTokenizer

P, D, d = 2, 12, 3  # patch 2 -> D = 3 * 2 * 2; a rank-3 signal


def low_rank_images(n: int = 256, size: int = 8, noise: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Patches = a rank-d signal (variances ~10, 2.5, 1.2) + isotropic noise (var 0.09) + an offset."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, D, generator=g) * torch.tensor([1.0, 0.7, 0.5])[:, None] * 3 / D ** 0.5
    L = (size // P) ** 2
    tokens = torch.randn(n, L, d, generator=g) @ A + noise * torch.randn(n, L, D, generator=g) + 0.2
    return unpatchify(tokens, P)


def fit_set(x: torch.Tensor) -> FitData:
    return FitData(len(x), lambda sel: x[sel], torch.device("cpu"), seed=0)


def tcfg(**kw) -> SimpleNamespace:
    base = dict(fit_epochs=10.0, fit_batch=8, fit_lr=0.1, kl_weight=0.0)
    return SimpleNamespace(**{**base, **kw})


def fitted(cls, x, seed=0, **kw):
    tok = cls(P, d)
    stats = tok.fit_data(fit_set(x), tcfg(**kw), generator=torch.Generator().manual_seed(seed),
                         show=False)
    return tok, stats


def pca_error(x: torch.Tensor) -> tuple[float, PCATokenizer]:
    """PCA's optimal mean squared error per patch (summed over D): the trailing eigenvalues."""
    pca = PCATokenizer(P, d).fit([x])
    pats = pca.to_tokens(x).reshape(-1, D).double()
    c = pats - pats.mean(0)
    ev = torch.linalg.eigvalsh(c.T @ c / len(c)).flip(0)
    return float(ev[d:].sum()), pca


def patch_error(tok, x: torch.Tensor) -> float:
    pats = tok.to_tokens(x).double()
    return float((tok.decode(tok.encode(x)).double() - pats).pow(2).sum(-1).mean())


@pytest.fixture(scope="module")
def data():
    return low_rank_images()


@pytest.fixture(scope="module")
def ae(data):
    return fitted(PatchAETokenizer, data)


# ---------------------------------------------------------------- patch_ae
def test_tied_orthonormal_ae_is_pca(data):
    """U = V = PCA's top-d basis and the same mean: the AE is PCA (paper Sec. 4.2)."""
    opt, pca = pca_error(data)
    ae = PatchAETokenizer(P, d)
    ae.mean.copy_(pca.mean)
    ae.encoder.copy_(pca.basis[:d])
    ae.decoder.copy_(pca.basis[:d])
    assert torch.allclose(ae.encode(data), pca.encode(data), atol=1e-5)
    assert torch.allclose(ae.decode(ae.encode(data)), pca.decode(pca.encode(data)), atol=1e-5)
    assert patch_error(ae, data) == pytest.approx(opt, rel=1e-4)
    assert patch_error(ae, data) == pytest.approx(patch_error(pca, data), rel=1e-5)


def test_trained_ae_reaches_pca_optimum(data, ae):
    tok, stats = ae
    opt, pca = pca_error(data)
    err = patch_error(tok, data)
    assert opt <= err * (1 + 1e-4) and err < 1.03 * opt  # within 3% of the trailing eigenvalues
    assert stats["recon_mse"] == pytest.approx(err / D, rel=0.1)  # final-epoch training mean
    assert stats["steps"] == 10 * 256 // 8 and "kl" not in stats
    # the decoder spans PCA's top-d subspace: the principal cosines between the two are ~1
    # (the encoder converges more slowly: its components along the noise dims cost only the
    # small noise variance, so the loss is flat there)
    Q = torch.linalg.qr(tok.decoder.T.double())[0]
    assert torch.linalg.svdvals(pca.basis[:d].double() @ Q).min() > 0.999
    assert torch.allclose(tok.mean, pca.mean, atol=1e-5)  # the centring mean is the data's
    # latent dims (and so the filters) come sorted by decreasing variance, as PCA's
    var = tok.encode(data).reshape(-1, d).var(0)
    assert torch.all(var[:-1] > var[1:]) and torch.equal(tok.filters().reshape(d, -1), tok.encoder)


def test_fit_is_deterministic_and_needs_training(data, ae):
    tok, _ = ae
    again, _ = fitted(PatchAETokenizer, data)
    assert torch.equal(again.encoder, tok.encoder) and torch.equal(again.decoder, tok.decoder)
    other, _ = fitted(PatchAETokenizer, data, seed=1)
    assert not torch.equal(other.encoder, tok.encoder)
    short, _ = fitted(PatchAETokenizer, data, fit_epochs=0.1)  # 3 steps: far from the optimum
    assert patch_error(short, data) > 1.5 * pca_error(data)[0]


def test_warmup_cosine_schedule():
    total, warm = 100, 5
    lrs = [warmup_cosine(s, total, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # decays after warmup
    assert lrs[-1] < 1e-2


# ---------------------------------------------------------------- patch_vae
def test_vae_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(PatchVAETokenizer.kl_divergence(mu, logvar), ref, atol=1e-5)
    # the tokenizer's posterior feeds the same formula
    vae = PatchVAETokenizer(P, d)
    vae.encoder.normal_(generator=g)
    vae.encoder_logvar.normal_(generator=g).mul_(0.1)
    xc = torch.randn(4, D, generator=g)
    m, lv = vae.posterior(xc)
    assert torch.allclose(m, xc @ vae.encoder.T)
    assert torch.allclose(lv, xc @ vae.encoder_logvar.T + vae.logvar_bias)


def test_vae_kl_weight_lowers_kl_and_encode_is_the_mean(data):
    free, s0 = fitted(PatchVAETokenizer, data, fit_epochs=4, kl_weight=0.0)
    reg, s1 = fitted(PatchVAETokenizer, data, fit_epochs=4, kl_weight=0.05 * 12)  # D = 12: LDM units sum over pixels
    assert s1["kl"] < 0.5 * s0["kl"], (s0, s1)
    assert s0["recon_mse"] < s1["recon_mse"]  # the KL costs reconstruction
    # encode is the posterior mean, scaled: deterministic, no sampling
    x = data[:4]
    mu, _ = reg.posterior(reg.to_tokens(x) - reg.mean)
    assert torch.equal(reg.encode(x), reg.encode(x))
    assert torch.allclose(reg.encode(x), mu * reg.scale, atol=1e-6)
    assert reg.filters().shape == (d, 3, P, P)
    assert torch.equal(reg.filters().reshape(d, -1), reg.encoder)


# ---------------------------------------------------------------- both
@pytest.mark.parametrize("cls", [PatchAETokenizer, PatchVAETokenizer])
def test_scale_gives_unit_std_latents_and_shapes(data, cls, tmp_path):
    tok, stats = fitted(cls, data, fit_epochs=2, kl_weight=1e-3)
    z = tok.encode(data)
    assert z.shape == (256, 16, d) and tok.decode(z).shape == (256, 16, D)
    assert float(z.double().std()) == pytest.approx(1.0, rel=1e-3)
    assert stats["scale"] == pytest.approx(float(tok.scale)) and stats["scale"] != 1.0
    # decode divides by the scale: reconstructions do not depend on it
    tok2 = cls(P, d)
    tok2.load_state_dict(tok.state_dict())
    tok2.scale.fill_(1.0)
    assert torch.allclose(tok2.decode(tok2.encode(data[:4])), tok.decode(tok.encode(data[:4])),
                          atol=1e-5)
    # plain-number stats for tokenizer.json
    json.dumps(stats)
    # save -> load_tokenizer round trip
    path = tmp_path / "tok.safetensors"
    tok.save(path)
    back = load_tokenizer(path)
    assert type(back) is cls and (back.patch_size, back.dim) == (P, d)
    assert torch.equal(back.encode(data[:8]), tok.encode(data[:8]))
    assert torch.equal(back.decode(z[:8]), tok.decode(z[:8]))


def test_registry_and_from_config():
    assert TOKENIZERS["patch_ae"] is PatchAETokenizer and TOKENIZERS["patch_vae"] is PatchVAETokenizer
    assert TOKENIZERS["pixel"] is PixelTokenizer
    assert PatchAETokenizer.trained and PatchVAETokenizer.trained and not PixelTokenizer.trained
    cfg = load_config(None, ["model.patch_size=4", "data.image_size=16", "tokenizer.name=patch_vae",
                             "tokenizer.dim=6", "diffusion.input_space=latent",
                             "diffusion.output_space=latent", "diffusion.target=z0"])
    tok = TOKENIZERS[cfg.tokenizer.name].from_config(cfg)
    assert (tok.patch_size, tok.dim, tok.full_dim) == (4, 6, 48)
    assert tok.with_dim(6) is tok
    with pytest.raises(ValueError):
        tok.with_dim(5)


# ---------------------------------------------------------------- pixel
LATENT = ["diffusion.input_space=latent", "diffusion.output_space=latent", "diffusion.target=z0"]


@pytest.mark.parametrize("pixel_size, q", [(256, 16), (128, 8), (64, 4), (32, 2)])
def test_pixel_fig5_settings(pixel_size, q):
    """Fig. 5: image 256, backbone patch 16 -> 256 tokens of dim 3 q^2 = 768 / 192 / 48 / 12."""
    dim = 3 * q * q
    cfg = load_config(None, ["data.image_size=256", "model.patch_size=16", "tokenizer.name=pixel",
                             f"tokenizer.pixel_size={pixel_size}", f"tokenizer.dim={dim}", *LATENT])
    tok = TOKENIZERS["pixel"].from_config(cfg)
    assert (tok.pixel_patch, tok.dim, tok.pixel_size) == (q, dim, pixel_size)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    z = tok.encode(x)
    assert z.shape == (1, 256, dim)
    assert tok.decode(z).shape == (1, 256, 768)
    # the tokens are the pixels of the resized image
    small = torch.nn.functional.interpolate(x, size=(pixel_size, pixel_size), mode="bilinear",
                                            antialias=True, align_corners=False)
    assert torch.allclose(z, patchify(small, q), atol=1e-6)
    assert tok.fit_data(None, cfg.tokenizer) == {} and tok.filters() is None


def test_pixel_identity_round_trip_and_save(tmp_path):
    tok = PixelTokenizer(4, 48, 16)  # pixel_size 0 -> image_size: q = p, identity
    assert tok.pixel_size == 16
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(tok.encode(x), patchify(x, 4))
    assert torch.equal(tok.decode(tok.encode(x)), patchify(x, 4))
    # downsized: decode upsamples back to image tokens; a constant image survives exactly
    small = PixelTokenizer(4, 12, 16, 8)
    c = torch.full((2, 3, 16, 16), 0.25)
    assert torch.allclose(small.decode(small.encode(c)), patchify(c, 4), atol=1e-6)
    path = tmp_path / "pixel.safetensors"
    small.save(path)
    back = load_tokenizer(path)
    assert type(back) is PixelTokenizer and back.meta() == small.meta()
    assert back.meta()["pixel_size"] == 8 and back.meta()["image_size"] == 16
    assert torch.equal(back.encode(x), small.encode(x))


@pytest.mark.parametrize("image, patch, pixel_size, dim", [
    (256, 16, 256, 768), (256, 16, 128, 192), (256, 16, 64, 48), (256, 16, 32, 12),  # Fig. 5
    (32, 8, 0, 192), (32, 8, 16, 48), (32, 8, 8, 12), (32, 8, 4, 3)])  # the debug scale
def test_pixel_token_dim(image, patch, pixel_size, dim):
    assert PixelTokenizer.token_dim(image, patch, pixel_size) == dim
    assert PixelTokenizer.token_dim(image, patch, pixel_size, channels=1) == dim // 3
    assert PixelTokenizer(patch, dim, image, pixel_size).dim == dim  # the constructor agrees
    with pytest.raises(ValueError, match="multiple of the grid"):
        PixelTokenizer.token_dim(image, patch, (pixel_size or image) + 1)


def test_pixel_linear_maps_only_at_full_size():
    """q = p: encode and project are the identity on each token; q < p: the antialiased resize
    mixes neighbouring patches, so a change in one patch moves its neighbours' tokens too and no
    per-token map exists (linear_map / projection_map are None)."""
    full, small = PixelTokenizer(4, 48, 16), PixelTokenizer(4, 12, 16, 8)
    for m in (full.linear_map(), full.projection_map()):
        assert torch.equal(m[0], torch.eye(48)) and torch.equal(m[1], torch.zeros(48))
    assert small.linear_map() is None and small.projection_map() is None
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[:, :, :4, :4] += 0.5  # token 0 only
    moved = (small.encode(y) - small.encode(x)).abs().amax(-1)[0]
    assert moved[0] > 0 and moved[1] > 0 and moved[4] > 0  # its right and lower neighbours
    assert torch.equal(full.encode(y)[:, 1:], full.encode(x)[:, 1:])


@pytest.mark.parametrize("overrides, needle", [
    (["tokenizer.pixel_size=10", "tokenizer.dim=12"], "tokenizer.pixel_size=10"),
    (["tokenizer.pixel_size=8", "tokenizer.dim=4"], "tokenizer.dim=12"),
    (["tokenizer.dim=4"], "tokenizer.dim=48"),  # pixel_size 0 = image_size: q = p = 4
    (["tokenizer.pixel_size=-4", "tokenizer.dim=12"], "tokenizer.pixel_size=-4"),
])
def test_pixel_bad_config_raises(overrides, needle):
    base = ["data.image_size=16", "model.patch_size=4", "tokenizer.name=pixel", *LATENT]
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [*base, *overrides])
    assert load_config(None, [*base, "tokenizer.pixel_size=8", "tokenizer.dim=12"])


# ---------------------------------------------------------------- CLI
def test_cli_fit_tokenizer_patch_ae(tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["fit-tokenizer", "-c", "demo", "--out", str(out), "data.source=synthetic",
            "data.synthetic_size=64", "data.val_size=16", "data.image_size=16", "model.patch_size=4",
            "model.name=test", "tokenizer.name=patch_ae", "tokenizer.dim=4",
            "tokenizer.fit_epochs=1", "tokenizer.fit_batch=16", "train.device=cpu", *LATENT, "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer"] == "patch_ae" and summary["steps"] == 4 and summary["scale"] > 0
    assert (out / "tokenizer.safetensors").is_file() and (out / "figures" / "filters.png").is_file()
    stats = json.loads((out / "tokenizer.json").read_text())
    assert stats["recon_mse"] > 0
    tok = load_tokenizer(out / "tokenizer.safetensors")
    assert isinstance(tok, PatchAETokenizer) and tok.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 16, 4)
