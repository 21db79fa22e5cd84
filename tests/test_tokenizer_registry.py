"""The tokenizer interface contract (SPEC §4), checked for every registered tokenizer
(``ldae.tokenizers.TOKENIZERS``) at debug size: from_config -> fit_data -> encode / decode shapes,
project = decode(encode), save / load and ``meta()`` rebuild it exactly, and the capabilities
(``full_basis``, ``linear_map``, ``projection_map``) agree with what encode / project compute."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from ldae.config import load_config
from ldae.errors import ConfigError
from ldae.tokenizers import TOKENIZERS, FitData, load_tokenizer

IMAGE, PATCH = 32, 8  # the debug scale: 16 tokens of D = 3 * 8 * 8 = 192
L, D = (IMAGE // PATCH) ** 2, 3 * PATCH ** 2
BASE = ["data.source=synthetic", "data.image_size=32", "model.patch_size=8", "model.name=test",
        "train.device=cpu", "train.threads=1", "tokenizer.fit_epochs=1", "tokenizer.fit_batch=4",
        "tokenizer.fit_lr=1e-2", "tokenizer.patch_batch=32", "tokenizer.width=8",
        "tokenizer.res_blocks=1"]
LATENT = ["diffusion.input_space=latent", "diffusion.output_space=latent", "diffusion.target=eps"]

#: per case: registered name, overrides, and the capabilities it must offer
#: (full_basis, linear_map() is not None, projection_map() is not None)
CASES = {
    "pca": (["tokenizer.dim=8"], (True, True, True)),
    "pca-unit-whiten": (["tokenizer.dim=8", "tokenizer.scale=unit", "tokenizer.whiten=true"],
                        (True, True, True)),
    "patch_ae": (["tokenizer.dim=8", *LATENT], (False, False, False)),
    "patch_vae": (["tokenizer.dim=8", *LATENT], (False, False, False)),
    "conv_vae": (["tokenizer.dim=8", *LATENT], (False, False, False)),
    "pixel": (["tokenizer.pixel_size=16", "tokenizer.dim=48", *LATENT], (False, False, False)),
    "pixel-full-size": (["tokenizer.dim=192", *LATENT], (False, True, True)),  # q = p: identity
}


def registered(case: str) -> str:
    return case.split("-")[0]


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth colour images in [-1, 1] plus a little pixel noise (every patch has full rank)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=IMAGE, mode="bilinear",
                      align_corners=False)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_every_registered_tokenizer_has_a_case():
    assert set(TOKENIZERS) == {registered(c) for c in CASES}


@pytest.fixture(scope="module", params=sorted(CASES))
def fitted(request):
    case = request.param
    overrides, caps = CASES[case]
    name = registered(case)
    cfg = load_config(None, BASE + [f"tokenizer.name={name}", *overrides])
    tok = TOKENIZERS[name].from_config(cfg)
    x = images()
    data = FitData(len(x), lambda sel: x[sel], torch.device("cpu"), seed=0)
    stats = tok.fit_data(data, cfg.tokenizer, generator=torch.Generator().manual_seed(0), show=False)
    return case, cfg, tok.eval(), stats, caps


def test_from_config_and_fit(fitted):
    case, cfg, tok, stats, _ = fitted
    assert type(tok) is TOKENIZERS[registered(case)] and tok.name == registered(case)
    assert (tok.patch_size, tok.dim, tok.full_dim) == (PATCH, cfg.tokenizer.dim, D)
    assert isinstance(stats, dict) and json.loads(json.dumps(stats)) == stats  # plain numbers


@torch.no_grad()
def test_encode_decode_shapes_and_project(fitted):
    _, cfg, tok, _, _ = fitted
    x = images(3, seed=1)
    z = tok.encode(x)
    assert z.shape == (3, L, cfg.tokenizer.dim) and torch.isfinite(z).all()
    out = tok.decode(z)
    assert out.shape == (3, L, D) and torch.isfinite(out).all()
    assert tok.to_tokens(x).shape == (3, L, D)
    torch.testing.assert_close(tok.project(x), out, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_save_load_and_meta_rebuild_it_exactly(fitted, tmp_path):
    case, _, tok, _, _ = fitted
    x = images(2, seed=2)
    z = tok.encode(x)
    path = tmp_path / f"{case}.safetensors"
    tok.save(path)
    back = load_tokenizer(path).eval()
    assert type(back) is type(tok) and back.meta() == tok.meta()
    assert torch.equal(back.encode(x), z) and torch.equal(back.decode(z), tok.decode(z))
    meta = json.loads(json.dumps(tok.meta()))  # the file header is JSON
    assert meta["name"] == registered(case)
    rebuilt = TOKENIZERS[meta.pop("name")](**meta)
    rebuilt.load_state_dict(tok.state_dict(), strict=True)
    rebuilt.eval()
    assert rebuilt.meta() == tok.meta() and torch.equal(rebuilt.encode(x), z)


@torch.no_grad()
def test_capabilities_agree_with_encode_and_project(fitted):
    _, cfg, tok, _, caps = fitted
    lin, proj = tok.linear_map(), tok.projection_map()
    assert (tok.full_basis, lin is not None, proj is not None) == caps
    x = images(2, seed=3)
    tokens = tok.to_tokens(x)
    if lin is not None:
        W, b = lin
        assert W.shape == (cfg.tokenizer.dim, D) and b.shape == (cfg.tokenizer.dim,)
        torch.testing.assert_close(tokens @ W.T + b, tok.encode(x), rtol=1e-4, atol=1e-4)
    if proj is not None:
        A, a = proj
        assert A.shape == (D, D) and a.shape == (D,)
        torch.testing.assert_close(tokens @ A.T + a, tok.project(x), rtol=1e-4, atol=1e-4)
    if tok.full_basis:  # an orthonormal basis: project_full keeps norms and inner products
        r = torch.randn(2, L, D, generator=torch.Generator().manual_seed(4))
        c = tok.project_full(r)
        torch.testing.assert_close((c * c).sum(-1), (r * r).sum(-1), rtol=1e-4, atol=1e-4)
        other = tok.with_dim(cfg.tokenizer.dim + 1)  # any d from the same fit
        assert other.encode(x).shape == (2, L, cfg.tokenizer.dim + 1)


def test_image_space_diffusion_needs_a_full_basis(fitted):
    _, cfg, tok, _, _ = fitted
    image = copy.deepcopy(cfg)
    image.diffusion.input_space = image.diffusion.output_space = "image"
    if tok.full_basis:
        type(tok).check_config(image)  # passes
    else:
        with pytest.raises(ConfigError, match="needs a tokenizer with a full basis"):
            type(tok).check_config(image)
    type(tok).check_config(cfg)  # the config the case was built from passes
