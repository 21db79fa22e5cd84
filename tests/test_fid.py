"""FID: the Frechet distance against closed forms and torch-fidelity's formula, streamed moments,
safe weight loading, torch-fidelity's real Inception-V3 built from a file, and `ldae fid` end to
end with a small stand-in network (plumbing only: a stand-in's numbers mean nothing)."""
from __future__ import annotations

import json
import os
import numpy as np
import pytest
import torch

from ldae.cli import main
from ldae.config import load_config
from ldae.dist import Runtime
from ldae.engine import fid, pretrain, sample
from ldae.errors import CheckpointError, ConfigError

CPU = Runtime(0, 1, 0, torch.device("cpu"))
RUN = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=48", "data.val_size=16",
       "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
       "optim.epochs=1", "optim.warmup_epochs=0", "diffusion.schedule=linear_gamma2",
       "diffusion.target=z0", "diffusion.loss_weight=none", "diffusion.input_space=latent",
       "diffusion.output_space=latent", "sample.steps=3", "sample.batch_size=16", "fid.n=20",
       "fid.batch_size=7"]


def _psd(rng, n):
    a = rng.normal(size=(n, n))
    return a @ a.T / n


# --------------------------------------------------------------------------- the math
def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s = _psd(rng, 6)
    assert fid.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)
    # diagonal covariances: |dmu|^2 + sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # commuting covariances (same eigenvectors): the same formula in that basis
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)
    # scalar case: (m1 - m2)^2 + (s1 - s2)^2 for variances s1^2, s2^2
    assert fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                                np.array([[9.0]])) == pytest.approx(9.0 + 1.0)
    with pytest.raises(ValueError):
        fid.frechet_distance(mu1, s, mu2[:3], s)


def test_frechet_equals_torch_fidelity_formula():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(1)
    for n in (3, 32):
        m1, m2, s1, s2 = rng.normal(size=n), rng.normal(size=n), _psd(rng, n), _psd(rng, n)
        ref = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, False)
        assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(
            ref["frechet_inception_distance"], rel=1e-8)


def test_streamed_moments_equal_numpy():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(53, 5)) * 3 + 1
    acc = fid.Moments(5, torch.device("cpu"))
    for lo, hi in [(0, 10), (10, 11), (11, 53)]:
        acc.update(torch.from_numpy(f[lo:hi]).float())
    mu, sigma, n = acc.finish()
    f32 = f.astype(np.float32).astype(np.float64)
    assert n == 53
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-10)
    np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-8, atol=1e-10)
    one = fid.Moments(5, torch.device("cpu"))
    one.update(torch.ones(1, 5))
    with pytest.raises(ConfigError, match="at least 2"):
        one.finish()


def test_reference_batches_stream_from_any_dataset():
    """Array datasets are gathered, others (ImageFolder) go through a loader: the same images,
    split over ranks without overlap, the limit respected."""
    from ldae.data.datasets import ArrayDataset

    imgs = torch.randint(0, 256, (11, 3, 4, 4), dtype=torch.uint8)
    arr = ArrayDataset(imgs, torch.zeros(11, dtype=torch.long), ["a"])

    class Plain(torch.utils.data.Dataset):  # no gather: the ImageFolder path
        def __len__(self):
            return 11

        def __getitem__(self, i):
            return imgs[i], 0

    for ds in (arr, Plain()):
        parts = [torch.cat(list(fid._dataset_shard(ds, 9, Runtime(r, 2, r, torch.device("cpu")), 4)))
                 for r in range(2)]
        assert torch.equal(torch.cat(parts), imgs[:9])


# ----------------------------------------------------------------------- the network
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return fid.write_standin_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


def test_inception_is_built_from_a_local_file(inception_file, tmp_path):
    path = inception_file
    ex = fid.inception(path, torch.device("cpu"))
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    f = ex.fn(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert (f[0] - f[1]).abs().mean() > 1e-3  # the stand-in's features are not degenerate
    assert ex.info["sha256"] == fid.sha256(path) and ex.ident.startswith("inception-v3-compat-")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        fid.inception(tmp_path / "wrong.pth", torch.device("cpu"))


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_weights_that_would_run_code_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": _Boom()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="run code"):
        fid.read_weights(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        fid.read_weights(tmp_path / "junk.pth")
    with pytest.raises(ConfigError, match="torch-fidelity/releases"):
        fid.read_weights(tmp_path / "missing.pth")


# ------------------------------------------------------------------------ end to end
def standin() -> fid.Extractor:
    """A fixed random projection of 4x4-pooled pixels: plumbing only."""
    proj = torch.randn(48, 6, generator=torch.Generator().manual_seed(0))
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        assert x.dtype == torch.uint8
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1) @ proj

    ex = fid.Extractor(fn, 6, "standin", {"network": "stand-in"})
    ex.calls = calls
    return ex


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidrun")
    pretrain.run(load_config(None, RUN), out)
    return out


def test_fid_end_to_end_with_cache(run_dir, tmp_path):
    cfg = load_config(None, RUN + [f"fid.cache_dir={tmp_path / 'cache'}"])
    ex = standin()
    rec = fid.run(cfg, run_dir, extractor=ex, rt=CPU, show=False)
    assert rec["n"] == 20 and rec["n_ref"] == 48 and rec["fid"] >= 0
    assert rec["sampling"]["sampler"] == "ddpm" and rec["sampling"]["steps"] == 3
    assert not rec["reference"]["cached"]
    saved = json.loads((run_dir / "eval" / f"fid-{sample.tag(cfg, 'model')}-n20.json").read_text())  # no EMA
    assert saved["fid"] == rec["fid"] and saved["reference"]["split"] == "train"
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    ex.calls.clear()
    again = fid.run(cfg, run_dir, extractor=ex, rt=CPU, show=False)
    assert again["reference"]["cached"] and again["fid"] == rec["fid"]
    assert sum(ex.calls) == 20  # the samples only: the reference came from the cache


def test_fid_of_the_reference_against_itself_is_zero(run_dir, tmp_path):
    from ldae.data import build_dataset

    cfg = load_config(None, RUN + [f"fid.cache_dir={tmp_path}", "fid.n=48"])
    ref = build_dataset(cfg, "train").images.permute(0, 2, 3, 1).numpy()
    sample.save_npz(tmp_path / "ref.npz", ref, np.zeros(len(ref), np.int64))
    rec = fid.run(cfg, run_dir, samples=tmp_path / "ref.npz", extractor=standin(), rt=CPU, show=False)
    assert rec["fid"] == pytest.approx(0.0, abs=1e-6)
    shuffled = ref[::-1].copy()  # order does not matter; other images do
    sample.save_npz(tmp_path / "shuf.npz", shuffled, np.zeros(len(ref), np.int64))
    assert fid.run(cfg, run_dir, samples=tmp_path / "shuf.npz", extractor=standin(), rt=CPU,
                   show=False)["fid"] == pytest.approx(0.0, abs=1e-6)
    other = load_config(None, RUN + [f"fid.cache_dir={tmp_path}", "fid.n=16", "fid.ref_split=val"])
    assert fid.run(other, run_dir, samples=tmp_path / "ref.npz", extractor=standin(), rt=CPU,
                   show=False)["fid"] > 1e-3


def test_fid_refusals_come_before_any_work(run_dir, tmp_path, capsys):
    assert main(["fid", str(run_dir), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "fid.weights is not set" in err and "torch-fidelity/releases" in err
    assert main(["fid", str(run_dir), "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = load_config(None, RUN + ["fid.n=30"])
    sample.save_npz(tmp_path / "few.npz", np.zeros((5, 8, 8, 3), np.uint8), np.zeros(5, np.int64))
    with pytest.raises(ConfigError, match="holds 5 images"):
        fid.run(cfg, run_dir, samples=tmp_path / "few.npz", extractor=standin(), rt=CPU, show=False)
    sample.save_npz(tmp_path / "big.npz", np.zeros((40, 16, 16, 3), np.uint8), np.zeros(40, np.int64))
    with pytest.raises(ConfigError, match="not comparable"):
        fid.run(cfg, run_dir, samples=tmp_path / "big.npz", extractor=standin(), rt=CPU, show=False)
    np.savez(tmp_path / "float.npz", images=np.zeros((40, 8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="uint8"):
        fid.run(cfg, run_dir, samples=tmp_path / "float.npz", extractor=standin(), rt=CPU, show=False)


def test_cli_fid_runs_the_real_network_end_to_end(run_dir, inception_file, tmp_path, capsys):
    """`ldae fid` with an Inception file in the real format (random weights: the number is
    meaningless; the network, resize, cache and record are the real ones)."""
    weights = inception_file
    args = ["fid", str(run_dir), "--weights", str(weights), "--n", "4", "--steps", "2",
            f"fid.cache_dir={tmp_path / 'c'}", "data.synthetic_size=4", "fid.batch_size=4", "--json"]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["n"] == 4 and rec["n_ref"] == 4 and np.isfinite(rec["fid"])
    assert rec["network"]["sha256"] == fid.sha256(weights)
