"""The trajectory: every row of the paper as a named config, mapped onto every scale, and the runner."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from ldae.config import Config, DiffusionConfig, preset_names
from ldae.engine import trajectory as tj
from ldae.engine import trajectory_report as tr
from ldae.errors import ConfigError

SCALES = ("debug", "cifar10-cpu", "cifar10-gpu", "imagenet")
PERCEPTUAL_ROWS = {"tab1-dit", "tab1-uncond"}


@pytest.fixture(scope="module")
def built():
    extra = {"imagenet": ["data.path=/data/imagenet"]}  # the one scale without a default path
    return {s: {n: tj.build_row(n, s, extra.get(s)) for n in tj.row_names()} for s in SCALES}


def test_every_paper_row_is_a_named_config():
    names = tj.row_names()
    assert len(names) == 49
    assert names[0] == "tab1-dit" and names[-1] == "tab4-mocov3-vitl"
    # Tab. 4: three systems x two sizes, and the two baselines again at the l-DAE's wall time
    assert len([n for n in names if n.startswith("tab4-")]) == 8
    # Tab. 2: 4 tokenizers x 5 dims (two cells empty in the paper); Fig. 5: 4 sizes
    assert len([n for n in names if n.startswith("tab2-")]) == 20
    assert len([n for n in names if n.startswith("fig5-")]) == 4
    assert {"tab3-pca", "tab3-ldae", "tab3-single-level"} <= set(names)
    assert set(preset_names("trajectory")) == set(names)


def test_every_row_builds_at_every_scale_or_says_why(built):
    for scale, rows in built.items():
        for name, r in rows.items():
            if name in PERCEPTUAL_ROWS:  # need a local VGG16 file: refused, with the key to set
                assert r.cfg is None and "perceptual_weights" in r.skip, (scale, name)
            elif scale != "imagenet" and name == "tab2-conv-vae-d8":  # d = 2 is not 4c
                assert r.cfg is None and "tokenizer.dim" in r.skip
            else:
                assert r.cfg is not None, (scale, name, r.skip)


@pytest.mark.parametrize("scale", SCALES)
def test_scales_keep_the_papers_d_over_D_ratios(built, scale):
    for name, r in built[scale].items():
        if r.cfg is None or r.meta.get("pixel_size") or not r.meta.get("d"):
            continue
        D = 3 * r.cfg.model.patch_size ** 2
        assert r.cfg.tokenizer.dim / D == pytest.approx(r.meta["d"] / 768), (scale, name)


@pytest.mark.parametrize("scale", SCALES)
def test_pixel_rows_keep_the_token_count_and_the_papers_dims(built, scale):
    rows = [built[scale][f"fig5-pixel-{px}"] for px in (256, 128, 64, 32)]
    dims = [r.cfg.tokenizer.dim for r in rows]
    D = 3 * rows[0].cfg.model.patch_size ** 2
    # paper: 768 / 192 / 48 / 12 of D = 768, i.e. D, D/4, D/16, D/64
    assert dims == [D, D // 4, D // 16, D // 64]
    for r in rows:
        c = r.cfg
        grid = c.data.image_size // c.model.patch_size
        q = c.tokenizer.pixel_size // grid
        assert c.tokenizer.pixel_size % grid == 0 and c.tokenizer.dim == 3 * q * q


def test_rows_inherit_the_change_before_them(built):
    rows = {n: r.cfg for n, r in built["debug"].items()}
    dz = lambda n: rows[n].diffusion  # noqa: E731
    assert rows["tab1-no-perceptual"].tokenizer.adversarial and not rows["tab1-no-perceptual"].tokenizer.perceptual
    assert not rows["tab1-no-adversarial"].tokenizer.adversarial
    assert (dz("tab1-no-adversarial").schedule, dz("tab1-linear-gamma2").schedule) == ("ddpm", "linear_gamma2")
    assert (dz("tab1-linear-gamma2").target, dz("tab1-linear-gamma2").loss_weight) == ("eps", "none")
    assert not rows["tab1-linear-gamma2"].model.class_cond
    assert (dz("tab3-predict-z0").target, dz("tab3-predict-z0").loss_weight) == ("z0", "gamma2")
    assert (dz("tab3-no-input-scaling").schedule, dz("tab3-no-input-scaling").loss_weight) == (
        "sigma_linear", "inv1p_sigma2")
    assert (dz("tab3-image-input").input_space, dz("tab3-image-input").output_space) == ("image", "latent")
    assert (dz("tab3-image-output").output_space, dz("tab3-image-output").target) == ("image", "image_pca")
    # the last line of Tab. 3 is the library's default objective: the final l-DAE
    assert dz("tab3-ldae") == DiffusionConfig()
    assert dz("tab3-single-level").schedule == "constant"
    assert dz("tab3-single-level").sigma0 == pytest.approx((1 / 3) ** 0.5)
    assert rows["sec5-random-crop"].data.crop == "random_resized"
    base = rows["sec5-random-crop"].optim.epochs
    assert (rows["sec5-800ep"].optim.epochs, rows["sec5-1600ep"].optim.epochs) == (2 * base, 4 * base)
    assert (rows["sec5-vitb"].model.name, rows["sec5-random-crop"].model.name,
            rows["sec5-vitl"].model.name) == ("micro-B", "micro", "micro-L")
    assert built["imagenet"]["sec5-vitl"].cfg.model.name == "L"


def test_titles_and_paper_numbers_are_not_inherited(built):
    r = built["debug"]
    assert r["tab2-pca-d8"].paper_fid is None and r["tab2-pca-d8"].paper_acc == 56.0
    assert r["tab1-linear-gamma2"].paper_fid == 93.2
    assert r["tab3-pca"].same_as == "tab2-pca-d32" and r["tab3-predict-z0"].same_as is None
    assert r["tab2-conv-vae-d16"].same_as == "tab1-linear-gamma2"


def test_user_overrides_apply_but_the_row_owns_its_d_and_size():
    r = tj.build_row("sec5-vitb", "debug", ["optim.epochs=5", "tokenizer.dim=3", "model.name=test"])
    assert r.cfg.optim.epochs == 5 and r.cfg.tokenizer.dim == 8 and r.cfg.model.name == "micro-B"
    assert tj.build_row("sec5-800ep", "debug", ["optim.epochs=5"]).cfg.optim.epochs == 10


def test_select_rows_tables_and_globs():
    assert tj.select("tab3")[0] == "tab3-pca" and len(tj.select("tab3")) == 7
    assert tj.select("tab4")[:3] == ["tab4-ldae", "tab4-mae", "tab4-mocov3"]
    assert tj.select("tab2-pca-*") == [f"tab2-pca-d{d}" for d in (8, 16, 32, 64, 128)]
    assert tj.select("tab3-ldae,tab1-dit") == ["tab1-dit", "tab3-ldae"]  # paper order
    with pytest.raises(ConfigError, match="tab3-ldea"):
        tj.select("tab3-ldea")
    with pytest.raises(ConfigError, match="unknown scale"):
        tj.load_scale("nope")


def test_one_pca_fit_serves_every_d_other_tokenizers_do_not_share(built):
    r = built["debug"]
    keys = {tj.tokenizer_key(r[f"tab2-pca-d{d}"].cfg) for d in (8, 16, 32, 64, 128)}
    keys.add(tj.tokenizer_key(r["tab3-ldae"].cfg))
    assert len(keys) == 1
    ae = {tj.tokenizer_key(r[f"tab2-patch-ae-d{d}"].cfg) for d in (8, 16)}
    assert len(ae) == 2
    # the VAE of Tab. 1 line 4 is the one Tab. 1 line 5 uses; line 3's differs (adversarial loss)
    assert tj.tokenizer_key(r["tab1-no-adversarial"].cfg) == tj.tokenizer_key(r["tab1-linear-gamma2"].cfg)
    assert tj.tokenizer_key(r["tab1-no-perceptual"].cfg) != tj.tokenizer_key(r["tab1-linear-gamma2"].cfg)


QUICK = ["optim.epochs=1", "optim.warmup_epochs=0", "linprobe.epochs=2", "linprobe.warmup_epochs=0",
         "linprobe.lr_grid=[10]", "model.name=test", "train.threads=1"]


def test_runner_on_a_few_debug_rows_writes_tables_and_resumes(tmp_path):
    out = tmp_path / "traj"
    res = tj.run("debug", out, "tab3-pca,tab3-ldae,fig5-pixel-32,tab1-dit", QUICK, show=lambda s: None)
    by = {r["row"]: r for r in res}
    assert by["tab2-pca-d32"]["status"] == "ran"  # pulled in: tab3-pca reuses it
    assert by["tab3-pca"]["status"] == "same as tab2-pca-d32"
    assert by["tab3-pca"]["probe"]["top1"] == by["tab2-pca-d32"]["probe"]["top1"]
    assert by["tab1-dit"]["status"] == "skipped" and "perceptual_weights" in by["tab1-dit"]["reason"]
    assert len(list((out / "tokenizers").iterdir())) == 2  # one PCA fit for two d's... and the pixel one
    recs = list(csv.DictReader((out / "results.csv").open()))
    assert [r["row"] for r in recs] == ["tab1-dit", "tab2-pca-d32", "fig5-pixel-32", "tab3-pca", "tab3-ldae"]
    for r in recs:
        if r["status"] != "skipped":
            assert 0.0 <= float(r["top1"]) <= 100.0
    md = (out / "results.md").read_text()
    for name in by:
        assert md.count(f"`{name}`") == 1  # one line per row
    assert "64.5" in md and "65.1" in md  # the paper's numbers beside ours
    assert (out / "figures" / "fig5.png").is_file() and (out / "figures" / "trajectory.png").is_file()
    # rerun: every row is cached, nothing is retrained
    before = (out / "rows" / "tab3-ldae" / "train_summary.json").stat().st_mtime_ns
    res2 = tj.run("debug", out, "tab3-ldae", QUICK, show=lambda s: None)
    assert res2[0]["status"] == "done (cached)"
    assert (out / "rows" / "tab3-ldae" / "train_summary.json").stat().st_mtime_ns == before
    # results.md still lists every finished row of the directory
    assert "`fig5-pixel-32`" in (out / "results.md").read_text()
    assert json.loads((out / "trajectory.json").read_text())["scale"] == "debug"


def test_runner_refuses_bad_overrides_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="optim.epocs"):
        tj.run("debug", tmp_path / "t", "tab3-ldae", ["optim.epocs=3"], show=lambda s: None)
    assert not (tmp_path / "t").exists()


def test_cli_lists_rows(capsys):
    from ldae.cli import main

    assert main(["trajectory", "--scale", "debug", "--rows", "tab3", "--list"]) == 0
    out = capsys.readouterr().out
    assert "tab3-ldae" in out and "sigma_linear/image/inv1p_sigma2" in out
    assert main(["trajectory", "--scale", "nope", "--list"]) == 2


def test_config_is_a_plain_config(built):
    assert isinstance(built["debug"]["tab3-ldae"].cfg, Config)


def test_scale_fit_settings_reach_only_their_tokenizer(built):
    r = built["debug"]
    assert r["tab2-patch-ae-d8"].cfg.tokenizer.patch_batch == 256
    assert r["tab2-patch-vae-d8"].cfg.tokenizer.fit_lr == pytest.approx(1e-2)
    assert r["tab2-pca-d8"].cfg.tokenizer.fit_lr == pytest.approx(2e-3)  # the scale's base value
    assert r["tab1-linear-gamma2"].cfg.tokenizer.fit_epochs == 2  # the scale's conv_vae setting
    assert r["tab2-pca-d8"].cfg.tokenizer.fit_epochs == 3


def test_runner_refuses_a_row_dir_run_with_another_config(tmp_path):
    out = tmp_path / "traj"
    tj.run("debug", out, "fig5-pixel-32", QUICK, show=lambda s: None)
    res = tj.run("debug", out, "fig5-pixel-32", QUICK + ["optim.blr=5e-4"], show=lambda s: None)
    assert res[0]["status"] == "failed" and "optim.blr" in res[0]["reason"]
    res = tj.run("debug", out, "fig5-pixel-32", QUICK, show=lambda s: None)  # unchanged: cached
    assert res[0]["status"] == "done (cached)"


def test_tab1_rows_score_fid_when_given_weights_and_the_table_shows_it(tmp_path, monkeypatch):
    from ldae.engine import fid

    calls = []

    def fake_fid(cfg, run_dir, **kw):
        calls.append((cfg.fid.n, run_dir))
        (run_dir / "eval").mkdir(parents=True, exist_ok=True)
        (run_dir / "eval" / "fid-x.json").write_text(json.dumps({"fid": 12.5, "n": cfg.fid.n}))
        return {"fid": 12.5, "n": cfg.fid.n}

    monkeypatch.setattr(fid, "run", fake_fid)
    row = tj.build_row("tab1-linear-gamma2", "debug", ["fid.weights=w.pth", "fid.n=8"])
    tab3 = tj.build_row("tab3-ldae", "debug", ["fid.weights=w.pth"])
    out = tmp_path / "t"
    run_dir = out / "rows" / row.name
    tj._row_fid(tab3, tab3.cfg, out / "rows" / tab3.name, print)
    tj._row_fid(tj.build_row(row.name, "debug"), row.cfg.__class__(), run_dir, print)  # no weights
    assert calls == []  # only Tab. 1 rows, and only with fid.weights
    tj._row_fid(row, row.cfg, run_dir, print)
    tj._row_fid(row, row.cfg, run_dir, print)  # already scored with this n: not redone
    assert calls == [(8, run_dir)]
    recs = tr.records([row], {row.name: {"status": "done"}}, out)
    assert recs[0]["fid"] == 12.5 and recs[0]["fid_n"] == 8
    (out / "trajectory.json").write_text(json.dumps({"scale": "debug"}))
    assert "| 12.50 (8) |" in tr.results_markdown("debug", recs, out, tj.row_meta())


def test_tab4_rows_are_the_baselines_at_the_l_daes_images(built):
    for scale in SCALES:
        r = {n: built[scale][n].cfg for n in tj.select("tab4")}
        ldae = r["tab4-ldae"]
        assert ldae.objective.name == "diffusion" and ldae.data.crop == "random_resized"
        assert ldae.optim.epochs == built[scale]["sec5-1600ep"].cfg.optim.epochs
        for name, objective in (("tab4-mae", "mae"), ("tab4-mocov3", "moco_v3")):
            c = r[name]
            assert c.objective.name == objective and c.tokenizer.name == "pixel"
            assert c.tokenizer.dim == 3 * c.model.patch_size ** 2  # whole patches
            # the same images seen, the same model, the papers' peak lr (3x the l-DAE's)
            assert (c.optim.epochs, c.optim.batch_size, c.data.image_size, c.model.name) == (
                ldae.optim.epochs, ldae.optim.batch_size, ldae.data.image_size, ldae.model.name)
            assert c.optim.blr == pytest.approx(3 * ldae.optim.blr)
        assert r["tab4-mocov3"].objective.frozen_patch_embed and r["tab4-mocov3"].data.crop == "center"
        assert r["tab4-mae"].optim.betas == (0.9, 0.95) and r["tab4-mae"].objective.mask_ratio == 0.75
        for n in ("tab4-ldae", "tab4-mae", "tab4-mocov3"):
            assert r[n + "-vitl"].model.name == built[scale]["sec5-vitl"].cfg.model.name
            assert r[n].model.name == built[scale]["sec5-vitb"].cfg.model.name
    assert built["imagenet"]["tab4-mocov3"].cfg.objective.proj_hidden == 4096  # MoCo v3's own width
    paper = {n: built["debug"][n].paper_acc for n in tj.select("tab4")}
    assert (paper["tab4-mocov3"], paper["tab4-mae"], paper["tab4-ldae"]) == (76.7, 68.0, 66.6)
    assert (paper["tab4-mocov3-vitl"], paper["tab4-mae-vitl"], paper["tab4-ldae-vitl"]) == (77.6, 75.8, 75.0)
    assert paper["tab4-mae-time"] is None  # the paper compares at equal epochs only


def test_equal_time_rows_scale_their_parents_budget_by_the_measured_wall_times():
    row = tj.build_row("tab4-mae-time", "debug")
    assert (row.equal_time, row.parent) == ("tab4-ldae", "tab4-mae")
    epochs, warmup = row.cfg.optim.epochs, row.cfg.optim.warmup_epochs
    assert not tj.match_wall_time(row, {"tab4-ldae": {"pretrain": {"wall_seconds": 300.0}}})
    assert "tab4-mae" in row.skip and "finished first" in row.skip
    row.skip = None
    results = {"tab4-ldae": {"pretrain": {"wall_seconds": 300.0}},
               "tab4-mae": {"pretrain": {"wall_seconds": 200.0}}}
    assert tj.match_wall_time(row, results)
    assert row.cfg.optim.epochs == pytest.approx(1.5 * epochs)
    assert row.cfg.optim.warmup_epochs == pytest.approx(1.5 * warmup)
    assert row.meta["time_factor"] == 1.5


def test_tab4_equal_time_rows_run_after_their_references_and_get_their_own_table(tmp_path, capsys):
    out = tmp_path / "traj"
    quick = QUICK + ["objective.proj_hidden=32", "objective.proj_dim=16"]
    res = {r["row"]: r for r in tj.run("debug", out, "tab4-mocov3-time", quick, show=lambda s: None)}
    assert list(res) == ["tab4-ldae", "tab4-mocov3", "tab4-mocov3-time"]  # pulled in, in order
    assert all(r["status"] == "ran" for r in res.values()), res
    walls = {n: res[n]["pretrain"]["wall_seconds"] for n in res}
    f = walls["tab4-ldae"] / walls["tab4-mocov3"]
    cfgs = {n: yaml.safe_load((out / "rows" / n / "config.yaml").read_text()) for n in res}
    assert cfgs["tab4-mocov3-time"]["optim"]["epochs"] == pytest.approx(f * cfgs["tab4-mocov3"]["optim"]["epochs"], abs=1e-3)
    assert cfgs["tab4-mocov3-time"]["objective"]["name"] == "moco_v3"
    md = (out / "results.md").read_text()
    assert "At equal pretraining images seen" in md and "At equal pretraining wall time" in md
    same_images, same_time = md.split("At equal pretraining wall time")
    assert "`tab4-mocov3-time`" not in same_images and "`tab4-mocov3-time`" in same_time
    assert "`tab4-ldae`" in same_time  # the reference sits beside it
    line = next(ln for ln in same_images.splitlines() if ln.startswith("| `tab4-mocov3`"))
    d_ours = res["tab4-mocov3"]["probe"]["top1"] - res["tab4-ldae"]["probe"]["top1"]
    assert f"+10.1 / {d_ours:+.1f}" in line  # Δ vs the l-DAE: paper 76.7 - 66.6, ours
    # a rerun finds every row done, and the equal-time budget the same (no config conflict)
    again = tj.run("debug", out, "tab4-mocov3-time", quick, show=lambda s: None)
    assert [r["status"] for r in again] == ["done (cached)"] * 3
    # the command prints the Tab. 4 tables (all cached: nothing retrains)
    from ldae.cli import main

    capsys.readouterr()
    assert main(["trajectory", "--scale", "debug", "--rows", "tab4", "--out", str(out), "--list"]) == 0
    assert "tab4-mae-time" in capsys.readouterr().out
    assert main(["trajectory", "--scale", "debug", "--rows", "tab4-mocov3-time", "--out", str(out), *quick]) == 0
    printed = capsys.readouterr().out
    assert printed.count("At equal pretraining") == 2 and "`tab4-mocov3-time`" in printed
