"""Sampling: the reverse step against DDPM's and DDIM's own formulas and diffusers' schedulers,
closed-form chains, guidance, every target's map to z0, and `ldae sample` end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ldae.cli import main
from ldae.config import load_config
from ldae.diffusion.objective import build_schedule, SCHEDULES
from ldae.diffusion.sampling import (check_samplable, ddim_step, prior_mismatch, sample_latents,
                                     timesteps)
from ldae.diffusion.schedules import DDPM, Constant, LinearGamma2, SigmaLinear
from ldae.diffusion.targets import TARGETS
from ldae.dist import Runtime
from ldae.engine import pretrain, sample
from ldae.errors import ConfigError
from ldae.tokenizers import PCATokenizer

from _ddp import spawn

T = 1000
COND = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=64", "data.val_size=16",
        "data.num_classes=4", "model.name=test", "model.patch_size=4", "model.class_cond=true",
        "tokenizer.dim=4", "optim.batch_size=16", "optim.epochs=1", "optim.warmup_epochs=0", "optim.blr=0.02",
        "optim.ema=0.9", "train.log_every=2", "train.ckpt_every=100",
        "diffusion.schedule=ddpm", "diffusion.target=eps", "diffusion.loss_weight=none",
        "diffusion.input_space=latent", "diffusion.output_space=latent",
        "sample.steps=5", "sample.n=10", "sample.batch_size=4"]


# ----------------------------------------------------------------------------- steps
def test_timesteps_are_dits_respacing():
    s = DDPM(T)
    ts = timesteps(s, 250, "eps")
    stride = (T - 1) / 249  # DiT's space_timesteps: round(i * frac_stride)
    assert ts.tolist() == sorted({round(i * stride) for i in range(250)}, reverse=True)
    assert ts[0] == T - 1 and ts[-1] == 0 and len(ts) == 250
    assert timesteps(s, 1, "eps").tolist() == [T - 1]
    assert timesteps(s, T, "z0").tolist() == list(range(T - 1, -1, -1))
    # linear gamma^2 reaches gamma = 0 at T-1, where eps cannot give z0: eps starts one step lower
    assert timesteps(LinearGamma2(T), 10, "eps")[0] == T - 2
    assert timesteps(LinearGamma2(T), 10, "z0")[0] == T - 1
    with pytest.raises(ConfigError, match="sample.steps"):
        timesteps(s, T + 1, "eps")


def test_ancestral_step_is_ddpm_posterior():
    """eta = 1 equals Ho et al. 2020 Eq. 6-7 written with betas (respaced: beta = 1 - abar_t/abar_s)."""
    s = DDPM(T)
    abar = s.gamma.double() ** 2
    g = torch.Generator().manual_seed(0)
    z, x0, noise = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for t, prev in [(999, 995), (500, 499), (10, 6), (1, 0)]:
        beta = 1 - abar[t] / abar[prev]
        mean = (beta * abar[prev].sqrt() / (1 - abar[t])) * x0 + \
               ((1 - abar[prev]) * (1 - beta).sqrt() / (1 - abar[t])) * z
        var = beta * (1 - abar[prev]) / (1 - abar[t])
        want = mean + var.sqrt() * noise
        got = ddim_step(z, x0, abar[t].sqrt(), (1 - abar[t]).sqrt(), abar[prev].sqrt(),
                        (1 - abar[prev]).sqrt(), 1.0, noise)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_ddim_step_is_song_eq12():
    """eta = 0: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    s = DDPM(T)
    abar = s.gamma.double() ** 2
    z, x0 = torch.randn(2, 4, 3, dtype=torch.float64)
    t, p = 700, 650
    eps = (z - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
    want = abar[p].sqrt() * x0 + (1 - abar[p]).sqrt() * eps
    got = ddim_step(z, x0, abar[t].sqrt(), (1 - abar[t]).sqrt(), abar[p].sqrt(), (1 - abar[p]).sqrt(),
                    0.0, None)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_equals_diffusers_ddim(eta):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                                    prediction_type="epsilon")
    sched.set_timesteps(50)  # stride 20
    ours = DDPM(T)
    g = torch.Generator().manual_seed(1)
    z, eps, noise = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    for t in [980, 500, 20, 0]:
        prev = t - 20
        want = sched.step(eps, t, z, eta=eta, variance_noise=noise).prev_sample
        gt, st = ours.gamma[t], ours.sigma[t]
        z0 = (z - st * eps) / gt
        if prev < 0:  # diffusers' final step (alpha_prod = 1) returns its x0 estimate
            got = z0
        else:
            got = ddim_step(z, z0, gt, st, ours.gamma[prev], ours.sigma[prev], eta,
                            noise if eta > 0 else None)
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)


def test_step_equals_diffusers_ddpm_respaced():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear", clip_sample=False,
                                    variance_type="fixed_small", prediction_type="epsilon")
    sched.set_timesteps(250)  # diffusers' own (leading) spacing: stride 4
    ours = DDPM(T)
    z, eps = torch.randn(2, 2, 3, 4, 4)
    for t in [996, 400, 8]:
        prev = t - 4
        want = sched.step(eps, t, z, generator=torch.Generator().manual_seed(5)).prev_sample
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
        z0 = (z - ours.sigma[t] * eps) / ours.gamma[t]
        got = ddim_step(z, z0, ours.gamma[t], ours.sigma[t], ours.gamma[prev], ours.sigma[prev], 1.0, noise)
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------- chains
@pytest.mark.parametrize("name", ["ddpm", "linear_gamma2", "sigma_linear"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_point_mass_data_is_recovered_exactly(name, eta):
    """With data = one point m, the exact denoiser returns m; every chain must end at m."""
    sched = SCHEDULES[name](T)
    m = torch.tensor([0.7, -1.3, 2.0])
    out = sample_latents(lambda z, t: m.expand_as(z), sched, (6, 3), 25, "z0", eta=eta,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, m.expand(6, 3))


@pytest.mark.parametrize("name", ["ddpm", "linear_gamma2"])
def test_gaussian_data_ancestral_chain_matches_its_law(name):
    """Data z0 ~ N(mu, s^2): the exact denoiser is E[z0 | z_t] = mu + g s^2 (z_t - g mu) / (g^2 s^2 + sig^2).
    1000 ancestral steps from N(0, sigma_T^2) must give samples with mean mu and std s."""
    sched = SCHEDULES[name](T)
    mu, s = 0.8, 0.5

    def oracle(z, t):
        g, sg = sched.gamma[t][:, None], sched.sigma[t][:, None]
        return mu + g * s ** 2 * (z - g * mu) / (g ** 2 * s ** 2 + sg ** 2)

    out = sample_latents(oracle, sched, (20000, 1), T, "z0", eta=1.0,
                         generator=torch.Generator().manual_seed(0))
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() - s) / s < 0.03


def test_which_schedules_sample():
    with pytest.raises(ConfigError, match="single noise level"):
        check_samplable(Constant(T), "z0")
    for name in ("ddpm", "linear_gamma2", "sigma_linear"):
        check_samplable(SCHEDULES[name](T), "eps")
    assert prior_mismatch(SigmaLinear(T)) and not prior_mismatch(DDPM(T)) \
        and not prior_mismatch(LinearGamma2(T))
    with pytest.raises(ConfigError, match="single noise level"):
        sample_latents(lambda z, t: z, build_schedule(load_config(None, ["diffusion.schedule=constant"]).diffusion),
                       (2, 3), 5, "image")


# --------------------------------------------------------------- targets and guidance
def _pca(dim=4, whiten=False):
    tok = PCATokenizer(4, dim, whiten=whiten)
    g = torch.Generator().manual_seed(0)
    tok.fit([torch.rand(16, 3, 8, 8, generator=g) * 2 - 1])
    return tok


@pytest.mark.parametrize("whiten", [False, True])
def test_every_target_maps_back_to_z0(whiten):
    tok = _pca(whiten=whiten)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    z0 = tok.encode(x)
    eps = torch.randn_like(z0)
    gamma, sigma = torch.tensor([0.8, 0.5, 0.1]), torch.tensor([0.6, 0.9, 1.2])
    zt = gamma[:, None, None] * z0 + sigma[:, None, None] * eps
    outs = {"eps": eps, "z0": z0, "image_pca": tok.decode(z0), "image": tok.to_tokens(x)}
    for name, out in outs.items():
        got = TARGETS[name]().to_z0(out, zt, gamma, sigma, tok)
        torch.testing.assert_close(got, z0, rtol=1e-4, atol=1e-4, msg=name)


class _Echo(torch.nn.Module):
    """A stand-in backbone whose output is a known function of (input, t, y)."""

    def __init__(self, num_classes):
        super().__init__()
        from ldae.models.layers import LabelEmbedder

        self.y_embed = LabelEmbedder(num_classes, 4, 0.1)
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return x * 0.5 + (y.float()[:, None, None] + 1)


def test_classifier_free_guidance_formula():
    from ldae.diffusion.objective import Denoiser

    net = _Echo(3)
    den = Denoiser(net, _pca(), DDPM(T), TARGETS["z0"](), "none", "latent", "latent")
    zt = torch.randn(4, 4, 4)
    t = torch.full((4,), 100)
    y = torch.tensor([0, 1, 2, 0])
    for w in (0.0, 1.5, 4.0):
        got = den.predict_z0(zt, t, y, guidance=w)
        cond, null = zt * 0.5 + (y[:, None, None] + 1), zt * 0.5 + (3 + 1)
        torch.testing.assert_close(got, null + w * (cond - null))
    net.calls.clear()
    den.predict_z0(zt, t, y, guidance=1.0)
    assert net.calls == [4]  # no unconditional pass without guidance


# ------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond")
    pretrain.run(load_config(None, COND), out)
    return out


def test_sample_writes_npz_grid_and_record_and_reuses(cond_run, tmp_path):
    cfg = load_config(None, COND)
    rec = sample.run(cfg, cond_run, out=tmp_path / "s", show=False)
    images, labels = sample.read_npz(tmp_path / "s" / "samples.npz")
    assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % 4 for i in range(10)]  # balanced: one column per class
    assert rec["weights"] == "ema" and rec["steps"] == 5 and rec["eta"] == 1.0
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert meta["checkpoint"].endswith(".pt") and meta["n"] == 10 and not meta["prior_mismatch"]
    from PIL import Image

    assert Image.open(tmp_path / "s" / "grid.png").size[0] > 4 * 8
    again = sample.run(cfg, cond_run, out=tmp_path / "s", n=6, show=False)
    assert again["reused"]
    other = sample.run(load_config(None, COND + ["sample.seed=1"]), cond_run, out=tmp_path / "s",
                       show=False)
    assert not other["reused"]
    assert not np.array_equal(sample.read_npz(tmp_path / "s" / "samples.npz")[0], images)


def test_samples_do_not_depend_on_the_number_of_processes(cond_run):
    cfg = load_config(None, COND)
    from ldae.engine.common import load_run

    _, den = load_run(cond_run)
    one = sample.generate(den, cfg, 10, Runtime(0, 1, 0, torch.device("cpu")), show=False)
    parts = [sample.generate(den, cfg, 10, Runtime(r, 3, r, torch.device("cpu")), show=False)
             for r in range(3)]
    idx = np.concatenate([p[0] for p in parts])
    imgs = np.concatenate([p[1] for p in parts])[np.argsort(idx)]
    assert sorted(idx.tolist()) == list(range(10))
    assert np.array_equal(imgs, one[1])


def test_two_process_sampling_merges_in_order(cond_run, tmp_path):
    cfg = load_config(None, COND)
    single = sample.run(cfg, cond_run, out=tmp_path / "one", show=False)
    spawn("sample", cond_run, COND)
    merged = cond_run / "samples" / sample.tag(cfg) / "samples.npz"
    assert np.array_equal(sample.read_npz(merged)[0], sample.read_npz(single["files"]["npz"])[0])
    assert not list(merged.parent.glob(".part-*"))


def test_guidance_reaches_the_chain(cond_run):
    from ldae.engine.common import load_run

    _, den = load_run(cond_run)
    y = torch.arange(4)
    outs = []
    for w in (1.0, 4.0):
        outs.append(sample_latents(lambda z, t: den.predict_z0(z, t, y, guidance=w), den.schedule,
                                   (4, 4, 4), 5, "eps", generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(outs[0], outs[1])


def test_cli_sample_and_refusals(cond_run, tmp_path, capsys):
    assert main(["sample", str(cond_run), "--n", "4", "--sampler", "ddim", "--steps", "3",
                 "--out", str(tmp_path / "c"), "sample.batch_size=2", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["sampler"] == "ddim" and rec["eta"] == 0.0 and rec["n"] == 4 and rec["batch_size"] == 2
    assert main(["sample", str(cond_run), "sample.steps=0"]) == 2
    assert "sample.steps" in capsys.readouterr().err
    assert main(["sample", str(tmp_path)]) == 2
    assert "not an ldae run dir" in capsys.readouterr().err


def test_single_level_run_refuses_to_sample(tmp_path, capsys):
    over = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=32", "data.val_size=8",
            "model.name=test", "model.patch_size=4", "optim.batch_size=16", "optim.epochs=1",
            "optim.warmup_epochs=0", "diffusion.schedule=constant"]
    pretrain.run(load_config(None, over), tmp_path / "r")
    assert main(["sample", str(tmp_path / "r"), "--n", "2"]) == 2
    assert "single noise level" in capsys.readouterr().err
    assert not (tmp_path / "r" / "samples").exists()


def test_image_space_ldae_run_samples_with_prior_mismatch_recorded(tmp_path):
    over = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=32", "data.val_size=8",
            "model.name=test", "model.patch_size=4", "optim.batch_size=16", "optim.epochs=1",
            "optim.warmup_epochs=0", "sample.steps=4", "sample.n=3"]
    cfg = load_config(None, over)  # the default objective is the final l-DAE (sigma_linear, image)
    pretrain.run(cfg, tmp_path / "r")
    rec = sample.run(cfg, tmp_path / "r", show=False)
    assert rec["prior_mismatch"] and rec["target"] == "image" and rec["classes"] == "unconditional"
    assert sample.read_npz(rec["files"]["npz"])[1].tolist() == [-1, -1, -1]
    assert math.isfinite(float(sample.read_npz(rec["files"]["npz"])[0].mean()))
