"""Patch-wise PCA tokenizer (SPEC §4): src/ldae/tokenizers/{base,pca}.py."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ldae.errors import CheckpointError
from ldae.tokenizers import PCATokenizer, load_tokenizer, patchify, unpatchify
from ldae.tokenizers.pca import CovarianceAccumulator

P, D = 2, 12  # patch size 2 -> D = 3 * 2 * 2


def correlated_images(n=64, size=8, seed=0, offset=0.0) -> torch.Tensor:
    """Images whose patches are Gaussian with a random full-rank covariance and distinct spectrum."""
    g = np.random.default_rng(seed)
    L = (size // P) ** 2
    A = g.normal(size=(D, D)) * np.geomspace(1.0, 0.05, D)[:, None]  # anisotropic
    mean = g.normal(size=D) * 0.3 + offset
    tokens = g.normal(size=(n, L, D)) @ A + mean
    return unpatchify(torch.from_numpy(tokens).float(), P)


def all_patches(x: torch.Tensor) -> np.ndarray:
    return patchify(x, P).reshape(-1, D).double().numpy()


def batches(x: torch.Tensor, bs=16):
    return list(x.split(bs))


# ---------------------------------------------------------------- patchify
def test_patchify_order_and_round_trip():
    x = torch.randn(2, 3, 8, 12)  # non-square: 4 x 6 grid of 2x2 patches
    tok = patchify(x, P)
    assert tok.shape == (2, 24, D)
    # token k = (row k // 6, col k % 6), flattened as (C, p, p): a strided conv's weight layout
    assert torch.equal(tok[:, 0], x[:, :, :2, :2].reshape(2, -1))
    assert torch.equal(tok[:, 1], x[:, :, :2, 2:4].reshape(2, -1))
    assert torch.equal(tok[:, 6], x[:, :, 2:4, :2].reshape(2, -1))
    assert torch.equal(tok[0, 7], x[0, :, 2:4, 2:4].reshape(-1))
    # the channel is the slowest index inside a token
    assert torch.equal(tok[0, 0, :4], x[0, 0, :2, :2].reshape(-1))
    sq = torch.randn(3, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(sq, 4), 4), sq)
    assert torch.equal(unpatchify(patchify(sq, 2), 2), sq)
    # a Linear on the tokens equals a strided conv with the same weights (DiT's patch embed)
    w = torch.randn(5, 3, 2, 2)
    conv = torch.nn.functional.conv2d(sq, w, stride=2).flatten(2).transpose(1, 2)
    assert torch.allclose(patchify(sq, 2) @ w.reshape(5, -1).T, conv, atol=1e-5)


# ---------------------------------------------------------------- fit
def test_basis_orthonormal_and_matches_numpy_pca():
    x = correlated_images()
    tok = PCATokenizer(P, dim=4).fit(batches(x))
    V = tok.basis.double().numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(D), atol=1e-5)
    pats = all_patches(x)
    np.testing.assert_allclose(tok.mean.numpy(), pats.mean(0), atol=1e-5)
    ref = np.sort(np.linalg.eigvalsh(np.cov(pats, rowvar=False)))[::-1]
    np.testing.assert_allclose(tok.eigvals.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_full_rank_round_trip_is_exact():
    x = correlated_images(n=16)
    tok = PCATokenizer(P, dim=D).fit(batches(x))
    z = tok.encode(x)
    assert z.shape == (16, 16, D)
    assert torch.allclose(tok.decode(z), tok.to_tokens(x), atol=1e-5)
    assert torch.allclose(tok.to_image(tok.decode(z)), x, atol=1e-5)


def test_eigenvalues_descending_and_equal_projected_variance():
    x = correlated_images()
    tok = PCATokenizer(P, dim=D).fit(batches(x))
    ev = tok.eigvals.double().numpy()
    assert np.all(np.diff(ev) < 0)  # strictly descending on this spectrum
    z = tok.encode(x).reshape(-1, D).double().numpy()
    cz = np.cov(z, rowvar=False)
    np.testing.assert_allclose(np.diag(cz), ev, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(cz - np.diag(np.diag(cz)), 0, atol=1e-4 * ev[0])  # decorrelated
    ex = tok.explained_variance().numpy()
    np.testing.assert_allclose(ex, np.cumsum(ev) / ev.sum(), rtol=1e-5)
    assert ex[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("dim", [5, 301])  # 301: the blocked upper-triangle update (D >= 256)
def test_streaming_covariance_equals_numpy(offset, dim):
    g = np.random.default_rng(1)
    data = g.normal(size=(300, dim)) @ g.normal(size=(dim, dim)) / dim ** 0.5 + offset
    acc = CovarianceAccumulator(dim)
    for lo, hi in [(0, 7), (7, 100), (100, 101), (101, 300)]:  # uneven chunks, one of a single row
        acc.update(torch.from_numpy(data[lo:hi]))
    mean, cov = acc.finish()
    assert mean.dtype == torch.float64 and cov.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), data.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), np.cov(data, rowvar=False), rtol=0, atol=1e-10)
    assert acc.n == 300


def test_streaming_covariance_shift_avoids_cancellation():
    """At a huge offset the textbook E[xx^T] - mm^T loses every digit; the shifted form does not."""
    g = np.random.default_rng(2)
    data = g.normal(size=(1000, 3)) + 1e8
    ref = np.cov(data, rowvar=False)
    acc = CovarianceAccumulator(3)
    for chunk in np.array_split(data, 5):
        acc.update(torch.from_numpy(chunk))
    _, cov = acc.finish()
    np.testing.assert_allclose(cov.numpy(), ref, rtol=0, atol=1e-6)
    naive = (data.T @ data - len(data) * np.outer(data.mean(0), data.mean(0))) / (len(data) - 1)
    assert np.abs(naive - ref).max() > 1e-2  # the test data do exercise cancellation
    with pytest.raises(ValueError):
        CovarianceAccumulator(3).finish()


def test_whiten_gives_unit_variance_latents():
    x = correlated_images()
    tok = PCATokenizer(P, dim=5, whiten=True).fit(batches(x))
    z = tok.encode(x).reshape(-1, 5).double().numpy()
    np.testing.assert_allclose(z.var(0, ddof=1), np.ones(5), rtol=1e-4)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    # decode undoes the scaling: whitened and plain tokenizers reconstruct identically
    plain = PCATokenizer(P, dim=5).fit(batches(x))
    assert torch.allclose(tok.decode(tok.encode(x)), plain.decode(plain.encode(x)), atol=1e-4)
    assert plain.encode(x).reshape(-1, 5).var(0)[0] > 2.0  # the default does not whiten


@pytest.mark.parametrize("d", [1, 4, 9])
def test_truncated_reconstruction_error_is_sum_of_dropped_eigenvalues(d):
    x = correlated_images()
    tok = PCATokenizer(P, dim=d).fit(batches(x))
    pats = all_patches(x)
    rec = tok.decode(tok.encode(x)).reshape(-1, D).double().numpy()
    err = ((pats - rec) ** 2).sum() / (len(pats) - 1)
    dropped = tok.eigvals.double().numpy()[d:].sum()
    assert err == pytest.approx(dropped, rel=1e-4)
    # the PCA optimum: another orthonormal d-dim projection through the mean does worse
    Q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(D, d)))
    c = pats - pats.mean(0)
    other = ((c - c @ Q @ Q.T) ** 2).sum() / (len(pats) - 1)
    assert other > err


# ---------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    x = correlated_images(n=16)
    tok = PCATokenizer(P, dim=6, whiten=True).fit(batches(x))
    path = tmp_path / "sub" / "tokenizer.safetensors"
    tok.save(path)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    back = load_tokenizer(path)
    assert isinstance(back, PCATokenizer)
    assert (back.patch_size, back.dim, back.whiten, back.full_dim) == (P, 6, True, D)
    for name in ("mean", "basis", "eigvals"):
        assert torch.equal(getattr(back, name), getattr(tok, name))
    assert torch.equal(back.encode(x), tok.encode(x))


def test_load_corrupt_or_foreign_file_raises(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError, match="garbage"):
        load_tokenizer(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.safetensors")
    # a valid file cut short
    tok = PCATokenizer(P, dim=3)
    good = tmp_path / "good.safetensors"
    tok.save(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CheckpointError):
        load_tokenizer(cut)
    # a safetensors file without the ldae header, and one naming an unknown tokenizer
    plain = tmp_path / "plain.safetensors"
    save_file({"mean": torch.zeros(D)}, str(plain))
    with pytest.raises(CheckpointError):
        load_tokenizer(plain)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"mean": torch.zeros(D)}, str(foreign), metadata={"ldae_tokenizer": json.dumps({"name": "vqgan"})})
    with pytest.raises(CheckpointError, match="vqgan"):
        load_tokenizer(foreign)
    # the header disagrees with the tensors (basis of the wrong size)
    bad = tmp_path / "bad.safetensors"
    meta = {"name": "pca", "patch_size": 4, "dim": 3, "channels": 3, "whiten": False}
    save_file({k: v for k, v in tok.state_dict().items()}, str(bad),
              metadata={"ldae_tokenizer": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="does not match"):
        load_tokenizer(bad)


def test_patches_per_image_subsampling(monkeypatch):
    x = correlated_images(n=200)
    rows = []
    orig = CovarianceAccumulator.update
    monkeypatch.setattr(CovarianceAccumulator, "update",
                        lambda self, r: (rows.append(r.reshape(-1, self.dim).shape[0]), orig(self, r))[1])
    sub = PCATokenizer(P, dim=3).fit(batches(x, 50), patches_per_image=4,
                                     generator=torch.Generator().manual_seed(0))
    assert sum(rows) == 200 * 4  # 4 of the 16 patches of each image
    rows.clear()
    full = PCATokenizer(P, dim=3).fit(batches(x, 50))
    assert sum(rows) == 200 * 16
    V = sub.basis.double().numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(D), atol=1e-5)
    assert np.all(np.diff(sub.eigvals.numpy()) <= 0)
    assert not torch.equal(sub.eigvals, full.eigvals)  # it did subsample
    np.testing.assert_allclose(sub.eigvals[:3].numpy(), full.eigvals[:3].numpy(), rtol=0.2)
    # the top-3 subspaces nearly coincide: singular values of V_sub V_full^T (cosines) near 1
    cos = np.linalg.svd(sub.basis[:3].double().numpy() @ full.basis[:3].double().numpy().T,
                        compute_uv=False)
    assert cos.min() > 0.95
    # subsampling is a function of the generator
    again = PCATokenizer(P, dim=3).fit(batches(x, 50), patches_per_image=4,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.basis, sub.basis)


# ---------------------------------------------------------------- latent scale (tokenizer.scale)
def test_unit_scale_factor_is_the_kept_latents_std_on_the_fit_data():
    x = correlated_images(n=128)
    tok = PCATokenizer(P, dim=4, scale="unit").fit(batches(x))
    raw = (all_patches(x) - all_patches(x).mean(0)) @ tok.basis[:4].double().numpy().T
    s = np.sqrt((raw ** 2).sum() / (raw.shape[0] - 1) / 4)  # overall std of the kept latent
    assert float(tok.global_scale()) == pytest.approx(s, rel=1e-5)
    assert float(tok.global_scale()) == pytest.approx(float(tok.eigvals[:4].mean().sqrt()), rel=1e-6)
    z = tok.encode(x).double().numpy().reshape(-1, 4)
    assert z.var(axis=0, ddof=1).mean() == pytest.approx(1.0, rel=1e-4)  # unit overall std
    assert z.var(axis=0, ddof=1)[0] > 3 * z.var(axis=0, ddof=1)[-1]  # no per-dim whitening
    none = PCATokenizer(P, dim=4).fit(batches(x))
    assert float(none.global_scale()) == 1.0
    torch.testing.assert_close(tok.encode(x), none.encode(x) / tok.global_scale(), rtol=1e-5, atol=1e-6)


def test_unit_scale_round_trip_and_projection_do_not_depend_on_the_scale():
    x = correlated_images(n=32)
    unit = PCATokenizer(P, dim=5, scale="unit").fit(batches(x))
    none = PCATokenizer(P, dim=5).fit(batches(x))
    z = torch.randn(3, 16, 5)
    torch.testing.assert_close(unit.encode(unit.to_image(unit.decode(z))), z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unit.decode(unit.encode(x)), none.decode(none.encode(x)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit.project(x), none.decode(none.encode(x)), rtol=1e-5, atol=1e-5)
    # noise sigma on the unit latent is noise sigma * s on the raw one, in image space
    s = unit.global_scale()
    torch.testing.assert_close(unit.decode(unit.encode(x) + 0.3 * z[:1]),
                               none.decode(none.encode(x) + 0.3 * s * z[:1]), rtol=1e-4, atol=1e-4)


def test_unit_scale_follows_d_survives_save_load_and_old_files_load_as_none(tmp_path):
    x = correlated_images(n=32)
    tok = PCATokenizer(P, dim=3, scale="unit").fit(batches(x))
    d6 = tok.with_dim(6)
    assert d6.scale == "unit"
    assert float(d6.global_scale()) == pytest.approx(float(tok.eigvals[:6].mean().sqrt()), rel=1e-6)
    assert float(d6.global_scale()) < float(tok.global_scale())  # the later dims hold less energy
    tok.save(tmp_path / "t.safetensors")
    back = load_tokenizer(tmp_path / "t.safetensors")
    assert back.scale == "unit" and torch.equal(back.encode(x), tok.encode(x))
    # a file written before the key existed (no "scale" in its header) loads as scale=none
    meta = {k: v for k, v in tok.meta().items() if k != "scale"}
    save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"ldae_tokenizer": json.dumps(meta)})
    assert load_tokenizer(tmp_path / "old.safetensors").scale == "none"
    with pytest.raises(ValueError, match="scale"):
        PCATokenizer(P, dim=3, scale="whiten")


def test_whiten_with_unit_scale_is_plain_whitening():
    x = correlated_images(n=32)
    w = PCATokenizer(P, dim=4, whiten=True).fit(batches(x))
    wu = PCATokenizer(P, dim=4, whiten=True, scale="unit").fit(batches(x))
    assert float(wu.global_scale()) == 1.0
    torch.testing.assert_close(w.encode(x), wu.encode(x))


def test_a_fitted_file_is_read_at_the_configs_scale(tmp_path):
    """`tokenizer.path` (a shared fit, as the trajectory's) serves any d and any latent scale:
    the config decides both."""
    from ldae.config import load_config
    from ldae.engine.common import tokenizer_for

    x = correlated_images(n=32)
    PCATokenizer(P, dim=3).fit(batches(x)).save(tmp_path / "t.safetensors")
    for scale in ("none", "unit"):
        cfg = load_config(None, ["data.source=synthetic", "data.image_size=8", f"model.patch_size={P}",
                                 "tokenizer.dim=5", f"tokenizer.scale={scale}",
                                 f"tokenizer.path={tmp_path / 't.safetensors'}"])
        tok = tokenizer_for(cfg, None)
        assert tok.scale == scale and tok.dim == 5
        assert (float(tok.global_scale()) == 1.0) == (scale == "none")
