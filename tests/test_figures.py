"""``ldae figures`` (Fig. 3, 4, 7, 8, training curves, the trajectory's plots) and the demo report."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from ldae.config import load_config
from ldae.diffusion.objective import build_denoiser
from ldae.engine import demo, figures, pretrain
from ldae.engine import panels as panels_mod
from ldae.engine.common import load_run
from ldae.errors import ConfigError
from ldae.tokenizers import PCATokenizer, load_tokenizer
from ldae.tokenizers.pixel import PixelTokenizer

TINY = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=32", "data.val_size=8",
        "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
        "optim.epochs=1", "optim.warmup_epochs=0.5", "train.log_every=1", "train.ckpt_every=100"]
RUN_PNGS = {"fig3-schedules.png", "fig4-filters-pca.png", "fig7-noise.png", "fig8-denoising.png",
            "training.png"}


def tiny(*extra: str):
    return load_config(None, TINY + list(extra))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A micro l-DAE run (synthetic 8 px images, patch 4, PCA d = 4, 2 steps)."""
    out = tmp_path_factory.mktemp("figs") / "run"
    pretrain.run(tiny(), out)
    return out


def png_ok(path, min_w=150, min_h=100):
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_w and im.size[1] >= min_h, (path, im.size)
        return im.size


def snapshot(d):
    return {p.relative_to(d): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")}


def test_run_dir_writes_every_figure_and_leaves_the_run_alone(run_dir, tmp_path):
    PixelTokenizer(4, 48, 8).save(tmp_path / "pix.safetensors")  # no filters: its Fig. 4 is skipped
    load_tokenizer(run_dir / "tokenizer.safetensors").save(tmp_path / "extra" / "tokenizer.safetensors")
    before = snapshot(run_dir)
    caps: dict = {}
    lines: list[str] = []
    out = tmp_path / "figs"
    paths = figures.run(run_dir, out=out, n_images=2, show=lines.append, captions=caps,
                        tokenizers=[tmp_path / "pix.safetensors", tmp_path / "extra" / "tokenizer.safetensors"])
    assert [p.name for p in paths] == ["fig3-schedules.png", "fig4-filters-pca.png", "fig4-filters-extra.png",
                                       "fig7-noise.png", "fig8-denoising.png", "training.png"]
    assert len(lines) == 1 and lines[0].startswith("figures: skipped fig4-filters-pix: ") \
        and "no encoder filters" in lines[0]
    for p in paths:
        assert p.parent == out
        png_ok(p)
        assert caps[p]
    w8, h8 = png_ok(out / "fig8-denoising.png")
    assert w8 > h8  # clean + 3 (noisy, denoised) pairs side by side: a wide figure
    assert "Fig. 8" in caps[out / "fig8-denoising.png"] and "t = 100, 250, 500" in caps[out / "fig8-denoising.png"]
    assert "this run (sigma_linear)" in caps[out / "fig3-schedules.png"]
    md = (out / "figures.md").read_text()
    assert "![fig7-noise](fig7-noise.png)" in md
    assert snapshot(run_dir) == before  # --out: nothing written into the run


def test_noise_panels_are_pixel_noise_and_inverse_pca_of_latent_noise():
    g0 = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g0) * 2 - 1
    tok = PCATokenizer(4, 6).fit([x])
    sigma = figures.SIGMA_FIG7
    pan = figures.noise_panels(tok, x, sigma, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    eps_pix = torch.randn(x.shape, generator=g)
    z = tok.encode(x)
    eps_lat = torch.randn(z.shape, generator=g)
    assert torch.equal(pan["clean"], x)
    assert torch.allclose(pan["pixel_noise"], x + sigma * eps_pix)
    assert torch.allclose(pan["latent_clean"], tok.to_image(tok.decode(z)))
    assert torch.allclose(pan["latent_noise"], tok.to_image(tok.decode(z + sigma * eps_lat)), atol=1e-6)
    # pixel noise has std sigma per pixel; latent noise only lives in the d of D PCA directions
    # (orthonormal basis), so its per-pixel std is sigma * sqrt(d / D)
    assert (pan["pixel_noise"] - x).std().item() == pytest.approx(sigma, rel=0.03)
    lat = (pan["latent_noise"] - pan["latent_clean"]).std().item()
    assert lat == pytest.approx(sigma * math.sqrt(6 / 48), rel=0.1)
    assert math.isclose(sigma, math.sqrt(1 / 3))


@pytest.mark.parametrize("space", ["image", "latent"])
def test_denoise_panels_follow_the_objective(space):
    extra = [] if space == "image" else ["diffusion.target=z0", "diffusion.input_space=latent",
                                         "diffusion.output_space=latent", "diffusion.schedule=linear_gamma2"]
    cfg = tiny(*extra)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tok = PCATokenizer(4, 4).fit([x])
    torch.manual_seed(0)
    den = build_denoiser(cfg, tok).eval()
    t = 300
    pan = figures.denoise_panels(den, x, t, generator=torch.Generator().manual_seed(3))
    # the same draw, by hand: z_t = gamma z0 + sigma eps
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(tok.encode(x).shape, generator=g)
    tt = torch.full((3,), t)
    gamma, sigma = den.schedule.coefficients(tt)
    zt = gamma[:, None, None] * tok.encode(x) + sigma[:, None, None] * eps
    assert torch.allclose(pan["noisy"], tok.to_image(tok.decode(zt)), atol=1e-5)
    with torch.no_grad():
        via_z0 = tok.to_image(tok.decode(den.predict_z0(zt, tt)))
        if space == "image":  # default: the network's raw image output (all D dims)
            raw = tok.to_image(den.backbone(den.net_input(zt), den.schedule.t_cond(tt)))
            assert torch.allclose(pan["denoised"], raw, atol=1e-5)
            assert not torch.allclose(raw, via_z0, atol=1e-4)  # the raw output is not projected to d
    asked = figures.denoise_panels(den, x, t, generator=torch.Generator().manual_seed(3), raw=False)
    assert torch.allclose(asked["denoised"], via_z0, atol=1e-5)
    if space == "latent":
        assert torch.allclose(pan["denoised"], via_z0, atol=1e-5)
        with pytest.raises(ValueError):
            figures.denoise_panels(den, x, t, raw=True)


def test_fig8_of_a_run_is_its_ema_denoiser_and_seeded(run_dir, tmp_path, monkeypatch):
    seen = []
    real = figures.denoise_panels

    def spy(den, x, t, y=None, generator=None, raw=None):
        out = real(den, x, t, y, generator, raw)
        seen.append((t, y, out))
        return out

    monkeypatch.setattr(panels_mod, "denoise_panels", spy)  # where fig8_denoising looks it up
    path, caption = figures.fig8_denoising(run_dir, tmp_path / "a.png", t=[50, 900], n_images=2)
    png_ok(path)
    assert [s[0] for s in seen] == [50, 900] and seen[0][1] is None  # unconditional run
    assert "t = 50, 900" in caption
    # seeded (generator seed = t), and the panels are the trained run's own network on that draw
    cfg, den = load_run(run_dir)
    x = seen[0][2]["clean"]
    assert torch.equal(x, figures.val_images(cfg, 2, "cpu")[0])
    for t, _, panels in seen:
        again = real(den, x, t, None, torch.Generator().manual_seed(t))
        for k in ("noisy", "denoised"):
            assert torch.allclose(again[k], panels[k], atol=1e-6), (t, k)
    with pytest.raises(ConfigError, match="outside"):
        figures.fig8_denoising(run_dir, tmp_path / "c.png", t=[1000], n_images=1)


def test_class_conditional_fig8_passes_the_true_labels(tmp_path, monkeypatch):
    run = tmp_path / "cond"
    pretrain.run(tiny("model.class_cond=true"), run, max_steps=1)
    seen = []
    real = figures.denoise_panels
    monkeypatch.setattr(panels_mod, "denoise_panels",
                        lambda den, x, t, y=None, generator=None, raw=None: seen.append(y) or real(den, x, t, y, generator, raw))
    monkeypatch.setattr("ldae.plots.image_grid", lambda cells, path, **kw: path)  # no drawing needed
    figures.fig8_denoising(run, tmp_path / "f8.png", t=[10], n_images=3)
    x, y = figures.val_images(load_run(run)[0], 3, "cpu")
    assert seen and torch.equal(seen[0], y)


def test_a_bad_target_dir_raises_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config.yaml.*trajectory.json"):
        figures.run(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        figures.run(tmp_path / "nope")


def test_a_figure_that_cannot_be_made_is_skipped_and_the_others_are_drawn(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "checkpoints")  # Fig. 8 needs a trained network
    (run / "metrics.jsonl").unlink()  # the training curves need the log
    lines: list[str] = []
    paths = figures.run(run, out=tmp_path / "figs", n_images=1, show=lines.append)
    assert {p.name for p in paths} == RUN_PNGS - {"fig8-denoising.png", "training.png"}
    assert any(ln.startswith("figures: skipped fig8-denoising:") and "checkpoint" in ln for ln in lines)
    assert any(ln.startswith("figures: skipped training:") and "metrics.jsonl" in ln for ln in lines)
    for p in paths:
        png_ok(p)


def test_fig4_tiles_are_normalised_each_on_its_own(tmp_path):
    from ldae.plots import minmax01, to_rgb01

    f = torch.stack([torch.linspace(-5, 3, 48).reshape(3, 4, 4), torch.full((3, 4, 4), 0.2)])
    a = minmax01(f[0])
    assert a.shape == (4, 4, 3) and a.min() == 0.0 and a.max() == 1.0
    assert (minmax01(f[1]) == 0).all()  # a constant tile does not divide by zero
    img = to_rgb01(torch.tensor([[[-3.0, 0.0], [1.0, 9.0]]] * 3))
    assert img.min() == 0.0 and img.max() == 1.0 and img[0, 1, 0] == 0.5  # [-1, 1] -> [0, 1], clipped
    tok = PCATokenizer(4, 4).fit([torch.rand(2, 3, 8, 8) * 2 - 1])
    path, caption = figures.fig4_filters(tok, tmp_path / "f4.png", "test", keep=4)
    w, h = png_ok(path)
    assert w > 2 * h  # two rows of eight tiles
    assert "first 16 of D = 48" in caption


def test_trajectory_dir_redraws_plots_and_each_rows_figures(run_dir, tmp_path):
    traj = tmp_path / "traj"
    (traj / "rows").mkdir(parents=True)
    (traj / "trajectory.json").write_text(json.dumps(
        {"scale": "debug", "overrides": [], "rows": ["tab2-pca-d8", "tab3-ldae"]}))
    shutil.copytree(run_dir, traj / "rows" / "tab3-ldae")
    (traj / "rows" / "tab3-ldae" / "eval").mkdir(exist_ok=True)
    (traj / "rows" / "tab3-ldae" / "eval" / "linprobe.json").write_text(
        json.dumps({"top1": 42.0, "top5": 90.0, "mode": "fast"}))
    (traj / "rows" / "tab2-pca-d8").mkdir()  # started, never trained
    shutil.copy(run_dir / "config.yaml", traj / "rows" / "tab2-pca-d8" / "config.yaml")
    (traj / "tokenizers" / "pca-abc").mkdir(parents=True)
    shutil.copy(run_dir / "tokenizer.safetensors", traj / "tokenizers" / "pca-abc" / "tokenizer.safetensors")
    before = snapshot(traj)
    lines: list[str] = []
    out = tmp_path / "figs"
    paths = figures.run(traj, out=out, n_images=1, t=[100], show=lines.append)
    rel = {p.relative_to(out).as_posix() for p in paths}
    assert rel == {"trajectory.png", "fig3-schedules.png", "fig4-filters-pca-abc.png", "fig7-noise.png",
                   "rows/tab3-ldae/fig8-denoising.png", "rows/tab3-ldae/training.png"}, (rel, lines)
    assert any("rows/tab2-pca-d8" in ln and "no checkpoint" in ln for ln in lines)
    for p in paths:
        png_ok(p)
    assert snapshot(traj) == before


def test_trajectory_records_are_the_ones_write_results_uses(run_dir, tmp_path):
    from ldae.engine import trajectory as tj

    traj = tmp_path / "traj"
    (traj / "rows" / "tab3-ldae" / "eval").mkdir(parents=True)
    (traj / "rows" / "tab3-ldae" / "eval" / "linprobe.json").write_text(json.dumps({"top1": 42.0, "top5": 90.0}))
    (traj / "trajectory.json").write_text(json.dumps({"scale": "debug", "overrides": [],
                                                      "rows": ["tab1-dit", "tab3-pca", "tab3-ldae"]}))
    scale, recs = tj.load_records(traj)
    by = {r["row"]: r for r in recs}
    assert scale == "debug" and by["tab3-ldae"]["top1"] == 42.0
    assert by["tab1-dit"]["status"] == "skipped"  # needs a VGG16 file at this scale
    assert by["tab3-pca"]["status"] == "same as tab2-pca-d32"
    with pytest.raises(ConfigError, match="trajectory.json"):
        tj.load_records(tmp_path)


def test_summary_markdown_links_relative_to_the_report(tmp_path):
    a, b = tmp_path / "figures" / "fig3-schedules.png", tmp_path / "figures" / "fig8-denoising.png"
    md = figures.summary_markdown([a, b], tmp_path, {b: "Fig. 8: clean / noisy / denoised, t = 100."})
    assert "![fig3-schedules](figures/fig3-schedules.png)" in md
    assert "![fig8-denoising](figures/fig8-denoising.png)" in md
    assert "*Fig. 8: clean / noisy / denoised, t = 100.*" in md
    assert "*Fig. 3: noise schedules" in md  # a default caption from the file name


def test_demo_report_embeds_the_figures(run_dir, tmp_path, monkeypatch):
    run = tmp_path / "demo"
    shutil.copytree(run_dir, run)
    summary = json.loads((run / "train_summary.json").read_text())
    probe = {"top1": 50.0, "top5": 90.0, "best_blr": 10, "mode": "fast", "n_eval": 8}
    monkeypatch.setattr(demo.pretrain, "run", lambda cfg, out, resume=None: summary)
    monkeypatch.setattr(demo, "probe_all", lambda cfg, out: {k: dict(probe) for k in demo.ENCODERS})
    real = figures.run
    monkeypatch.setattr(figures, "run", lambda target, **kw: real(target, n_images=2, **kw))
    demo.run(tiny(), run)  # figures.run with out=None: into the run's figures/ folder
    text = (run / "report.md").read_text()
    assert "| l-DAE encoder (pretrained) | 50.00 |" in text  # the table stays
    for name in RUN_PNGS:
        stem = name[:-4]
        assert f"![{stem}](figures/{name})" in text, name
        assert (run / "figures" / name).is_file()
    assert "Fig. 8: clean / noisy (the network's input) / denoised" in text
    assert "Fig. 7:" in text and "Fig. 3:" in text and "Fig. 4:" in text


def test_cli_figures(run_dir, tmp_path, capsys):
    from ldae.cli import main

    assert main(["figures", str(run_dir), "--out", str(tmp_path / "f"), "--t", "5", "--t", "50"]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1] for p in printed if p.endswith(".png")} == RUN_PNGS
    assert main(["figures", str(tmp_path / "nothing")]) == 2
    assert "config.yaml" in capsys.readouterr().err
