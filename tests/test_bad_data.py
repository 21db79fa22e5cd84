"""Bad data (data.on_bad_image=error|skip): corrupt, truncated, zero-byte files, empty class folders
and bad .npz files stop with a DataError naming the file (error) or are left out and listed
(skip); grayscale, palette, CMYK, RGBA, 16-bit and tiny images are not bad."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ldae.cli import main
from ldae.config import load_config
from ldae.data import build_dataset, iterate_in_order
from ldae.data.datasets import count_skipped, read_skip_log, write_skip_log
from ldae.data.folder import load_image
from ldae.data.packed import prepare
from ldae.errors import DataError

SIZE = 8


def esc(p) -> str:
    return re.escape(str(p))


def cfg_for(*items):
    return load_config(None, list(items))


def folder_cfg(root, policy="error"):
    return cfg_for("data.source=imagefolder", f"data.path={root}", f"data.image_size={SIZE}",
                   "data.num_classes=3", f"data.on_bad_image={policy}")


def rand_rgb(seed, h=40, w=50):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def make_bad_folder(root, zero=True, empty=True):
    """train/a: good images of unusual kinds; train/b: good and bad files (a bad one last, so a
    skip wraps to the start); train/c_empty: no image. Returns (good paths, bad paths by kind)."""
    a, b = root / "train" / "a", root / "train" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    Image.fromarray(rand_rgb(0)).save(a / "a0_rgb.jpg")
    Image.fromarray(rand_rgb(1)).convert("L").save(a / "a1_grey.png")
    Image.fromarray(rand_rgb(2)).convert("CMYK").save(a / "a2_cmyk.jpg")
    Image.fromarray(np.dstack([rand_rgb(3), np.full((40, 50), 128, np.uint8)]), "RGBA").save(a / "a3_rgba.png")
    Image.new("RGB", (1, 1), (200, 30, 90)).save(a / "a4_tiny.png")
    Image.fromarray(rand_rgb(5)).save(b / "b0_good.png")
    (b / "b1_corrupt.jpg").write_bytes(np.random.default_rng(6).bytes(3000))
    Image.fromarray(rand_rgb(7)).save(root / "full.jpg")
    whole = (root / "full.jpg").read_bytes()
    (b / "b2_trunc.jpg").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(rand_rgb(8)).save(b / "b3_good.jpg")
    if zero:
        (b / "b4_zero.png").write_bytes(b"")
    Image.fromarray(rand_rgb(9)).save(root / "full.png")
    whole = (root / "full.png").read_bytes()
    (b / "b5_trunc.png").write_bytes(whole[: len(whole) // 2])
    if empty:
        (root / "train" / "c_empty").mkdir()
        (root / "train" / "c_empty" / "notes.txt").write_text("no images here")
    good = [a / n for n in ("a0_rgb.jpg", "a1_grey.png", "a2_cmyk.jpg", "a3_rgba.png", "a4_tiny.png")]
    good += [b / "b0_good.png", b / "b3_good.jpg"]
    bad = {"corrupt": b / "b1_corrupt.jpg", "trunc_jpg": b / "b2_trunc.jpg",
           "trunc_png": b / "b5_trunc.png", "zero": b / "b4_zero.png",
           "empty": root / "train" / "c_empty"}
    return good, bad


# ---------------------------------------------------------------- unusual but valid images
@pytest.mark.parametrize("kind", ["L", "P", "P_transparent", "CMYK", "RGBA", "LA", "I;16", "1x1", "2x3"])
def test_unusual_images_load_as_rgb(tmp_path, kind):
    rgb = rand_rgb(0, 12, 10)
    f = tmp_path / f"img.{'jpg' if kind == 'CMYK' else 'png'}"
    if kind == "I;16":
        grey = np.full((12, 10), 32896, dtype=np.uint16)  # 128 * 257: half scale, not clipped
        grey[:, :5] = 65535
        Image.fromarray(grey).save(f)
        with Image.open(f) as im:
            assert im.mode == "I;16"
    elif kind in ("1x1", "2x3"):
        Image.new("RGB", (1, 1) if kind == "1x1" else (2, 3), (200, 30, 90)).save(f)
    elif kind == "P_transparent":
        Image.fromarray(rgb).convert("P").save(f, transparency=0)
    elif kind == "RGBA":
        Image.fromarray(np.dstack([rgb, np.zeros((12, 10), np.uint8)]), "RGBA").save(f)
    else:
        Image.fromarray(rgb).convert(kind).save(f)
        with Image.open(f) as im:
            assert im.mode == kind
    x = load_image(f, SIZE)
    assert x.shape == (SIZE, SIZE, 3) and x.dtype == np.uint8
    if kind == "I;16":
        assert x[:, -1].tolist() == [[128] * 3] * SIZE and x[:, 0].tolist() == [[255] * 3] * SIZE
    elif kind in ("1x1", "2x3"):
        assert np.abs(x.astype(int) - [200, 30, 90]).max() <= 1
    elif kind == "RGBA":  # alpha dropped: the colour under it is kept, not black or white
        assert torch.equal(torch.from_numpy(x), torch.from_numpy(load_image(_save_rgb(tmp_path, rgb), SIZE)))
    elif kind == "CMYK":
        assert abs(x.astype(float).mean() - load_image(_save_rgb(tmp_path, rgb), SIZE).mean()) < 12


def _save_rgb(tmp_path, rgb):
    f = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(f)
    return f


def test_truncated_files_are_never_padded(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    _, bad = make_bad_folder(tmp_path, zero=False, empty=False)
    for kind in ("trunc_jpg", "trunc_png", "corrupt"):
        with pytest.raises(DataError, match=esc(bad[kind]) + ".*data.on_bad_image=skip"):
            load_image(bad[kind], SIZE)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---------------------------------------------------------------- ImageFolder, error
def test_imagefolder_error_stops_naming_the_file(tmp_path):
    good, bad = make_bad_folder(tmp_path / "all")
    with pytest.raises(DataError, match=esc(bad["zero"]) + ".*0 bytes.*data.on_bad_image=skip"):
        build_dataset(folder_cfg(tmp_path / "all"), "train")  # when built, before any decode
    make_bad_folder(tmp_path / "noz", zero=False)
    with pytest.raises(DataError, match=esc(tmp_path / "noz" / "train" / "c_empty") + ".*no images"):
        build_dataset(folder_cfg(tmp_path / "noz"), "train")
    good, bad = make_bad_folder(tmp_path / "dec", zero=False, empty=False)
    ds = build_dataset(folder_cfg(tmp_path / "dec"), "train")
    assert ds.skipped == [] and len(ds) == len(good) + 3
    paths = [p for p, _ in ds.samples]
    for kind in ("corrupt", "trunc_jpg", "trunc_png"):  # when read
        with pytest.raises(DataError, match=esc(bad[kind]) + ".*remove or repair it, or set "
                           "data.on_bad_image=skip"):
            ds[paths.index(bad[kind])]
    for g in good:
        assert torch.equal(ds[paths.index(g)][0], torch.from_numpy(load_image(g, SIZE)).permute(2, 0, 1))


# ---------------------------------------------------------------- ImageFolder, skip
def test_imagefolder_skip_yields_only_good_images_and_lists_the_bad(tmp_path):
    good, bad = make_bad_folder(tmp_path)
    ds = build_dataset(folder_cfg(tmp_path, "skip"), "train")
    assert ds.classes == ["a", "b", "c_empty"]  # the empty class keeps its index
    assert ds.skipped == [{"path": str(bad["zero"]), "reason": "zero-byte file"},
                          {"path": str(bad["empty"]), "reason": "empty class folder"}]
    paths = [p for p, _ in ds.samples]
    assert bad["zero"] not in paths and len(ds) == len(good) + 3
    ref = {p: torch.from_numpy(load_image(p, SIZE)).permute(2, 0, 1) for p in good}
    label = {p: y for p, y in ds.samples}
    for i, p in enumerate(paths):  # a bad file reads as the next good one in order, wrapping
        j = i
        while paths[j] not in ref:
            j = (j + 1) % len(paths)
        x, y = ds[i]
        assert torch.equal(x, ref[paths[j]]) and y == label[paths[j]]
    assert ds[len(ds) - 1][1] == 0  # b5_trunc.png, the last, wrapped to a0_rgb.jpg
    decoded = [e["path"] for e in ds.read_skipped]
    assert decoded == [str(bad[k]) for k in ("corrupt", "trunc_jpg", "trunc_png")]
    assert all("truncated" in e["reason"] for e in ds.read_skipped[1:])
    n_read = len(ds.read_skipped)
    for i in range(len(ds)):  # known-bad files are not decoded (or listed) again
        ds[i]
    assert len(ds.read_skipped) == n_read


def test_skip_log_collects_build_and_read_time_skips_across_workers(tmp_path):
    good, bad = make_bad_folder(tmp_path / "d")
    ds = build_dataset(folder_cfg(tmp_path / "d", "skip"), "train")
    log = tmp_path / "run" / "skipped.jsonl"
    assert write_skip_log(ds, log) == 2 and ds.skip_log == log
    assert count_skipped(log) == 2
    seen = [x for xb, _ in iterate_in_order(ds, 3, num_workers=2) for x in xb]
    assert len(seen) == len(ds)
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line whole
    assert {e["path"] for e in entries} == {str(p) for p in bad.values()}
    assert all(e["reason"] for e in entries)
    assert count_skipped(log) == 5
    assert {e["path"] for e in read_skip_log(log)} == {str(p) for p in bad.values()}
    assert count_skipped(tmp_path / "nope.jsonl") == 0


def test_all_files_bad_under_skip(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no usable images"):
        build_dataset(folder_cfg(tmp_path, "skip"), "train")
    (tmp_path / "train" / "a" / "y.png").write_bytes(b"junk")
    ds = build_dataset(folder_cfg(tmp_path, "skip"), "train")
    with pytest.raises(DataError, match="can be decoded"):
        ds[0]


# ---------------------------------------------------------------- prepare-data
@pytest.fixture
def fork_pool(monkeypatch):
    """prepare's decode pool forked rather than spawned: the same imap path, without paying
    for fresh interpreters on a slow test machine."""
    import multiprocessing

    real = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: real("fork"))


def test_prepare_data_skip_packs_only_good_images(tmp_path, fork_pool):
    good, bad = make_bad_folder(tmp_path / "src")
    dst = tmp_path / "p"
    assert main(["prepare-data", str(tmp_path / "src"), str(dst), "--size", str(SIZE), "--workers",
                 "2", "--splits", "train", "--on-bad-image", "skip"]) == 0
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["splits"] == {"train": len(good)} and meta["classes"] == ["a", "b", "c_empty"]
    assert meta["num_skipped"] == 5
    assert {e["path"]: e["split"] for e in meta["skipped"]} == {str(p): "train" for p in bad.values()}
    assert (dst / "train-images.u8").stat().st_size == len(good) * SIZE * SIZE * 3
    ds = build_dataset(cfg_for("data.source=packed", f"data.path={dst}", f"data.image_size={SIZE}",
                               "data.num_classes=3"), "train")
    assert ds.skipped == meta["skipped"]
    x, y = ds.gather(torch.arange(len(ds)))
    want = np.stack([load_image(p, SIZE) for p in good])
    assert torch.equal(x, torch.from_numpy(want).permute(0, 3, 1, 2))
    assert y.tolist() == [0] * 5 + [1] * 2
    assert not list(dst.glob(".*tmp"))


def test_prepare_data_error_stops_naming_the_file_and_leaves_no_meta(tmp_path, capsys, fork_pool):
    good, bad = make_bad_folder(tmp_path / "src", zero=False, empty=False)
    dst = tmp_path / "p"
    args = ["prepare-data", str(tmp_path / "src"), str(dst), "--size", str(SIZE), "--workers", "2",
            "--splits", "train"]
    assert main(args + ["--on-bad-image", "skip"]) == 0 and (dst / "meta.json").is_file()
    capsys.readouterr()
    assert main(args) == 2  # default: error
    err = capsys.readouterr().err
    assert str(bad["corrupt"]) in err and "--on-bad-image skip" in err
    assert not (dst / "meta.json").exists() and not list(dst.glob(".*tmp"))
    with pytest.raises(DataError, match="never finished"):
        build_dataset(cfg_for("data.source=packed", f"data.path={dst}", f"data.image_size={SIZE}"), "train")
    make_bad_folder(tmp_path / "src2")  # zero-byte file: refused before any decoding
    zero = tmp_path / "src2" / "train" / "b" / "b4_zero.png"
    with pytest.raises(DataError, match=esc(zero) + ".*--on-bad-image skip"):
        prepare(tmp_path / "src2", tmp_path / "q", SIZE, ["train"], workers=1, show=False)
    assert not (tmp_path / "q" / "meta.json").exists()


# ---------------------------------------------------------------- npz
def npz(f, n, size=SIZE, seed=0, labels=None):
    g = np.random.default_rng(seed)
    ims = g.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labs = g.integers(0, 10, size=n) if labels is None else np.asarray(labels)
    np.savez(f, images=ims, labels=labs)
    return ims, labs


def npz_cfg(path, policy="error", *extra):
    return cfg_for("data.source=npz", f"data.path={path}", f"data.image_size={SIZE}",
                   "data.val_size=1", f"data.on_bad_image={policy}", *extra)


def make_bad_npz(root):
    a_ims, a_labs = npz(root / "a.npz", 5, seed=1)
    b_ims, b_labs = npz(root / "b.npz", 6, seed=2, labels=[0, 10, 3, -1, 9, 2])
    np.savez(root / "c.npz", images=a_ims[..., 0], labels=a_labs)  # no channel axis
    npz(root / "d.npz", 4, size=SIZE + 2, seed=3)  # another image shape than a.npz
    (root / "e.npz").write_bytes(b"not a zip archive")
    np.savez(root / "f.npz", images=a_ims)  # no labels
    np.savez(root / "g.npz", images=a_ims.astype(np.float32), labels=a_labs)
    keep = np.array([0, 10, 3, -1, 9, 2]) < 10
    keep &= np.array([0, 10, 3, -1, 9, 2]) >= 0
    return np.concatenate([a_ims, b_ims[keep]]), np.concatenate([a_labs, b_labs[keep]])


@pytest.mark.parametrize("name,match", [("b", "labels span.*data.on_bad_image=skip to drop"),
                                        ("c", "'images' must be uint8.*data.on_bad_image=skip"),
                                        ("d", "differs from.*of .*a.npz.*data.on_bad_image=skip"),
                                        ("e", "cannot read.*data.on_bad_image=skip"),
                                        ("f", "needs arrays 'images' and 'labels'.*on_bad_image=skip"),
                                        ("g", "'images' must be uint8.*data.on_bad_image=skip")])
def test_npz_error_names_the_file_and_the_fix(tmp_path, name, match):
    make_bad_npz(tmp_path)
    for f in tmp_path.glob("*.npz"):
        if f.stem not in ("a", name):
            f.unlink()
    with pytest.raises(DataError, match=f"(?s)(?=.*{esc(tmp_path / f'{name}.npz')})(?=.*{match})"):
        build_dataset(npz_cfg(tmp_path), "all")


def test_npz_skip_leaves_out_bad_files_and_rows(tmp_path):
    ims, labs = make_bad_npz(tmp_path)
    ds = build_dataset(npz_cfg(tmp_path, "skip"), "all")
    assert torch.equal(ds.images, torch.from_numpy(ims).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == labs.tolist()
    why = {e["file"]: e["reason"] for e in ds.skipped}
    assert set(why) == {str(tmp_path / f"{n}.npz") for n in "bcdefg"}
    assert why[str(tmp_path / "b.npz")] == "2 labels out of range [0, 10): rows dropped"
    assert "differs from" in why[str(tmp_path / "d.npz")]
    assert why[str(tmp_path / "e.npz")].startswith("cannot read")
    assert "needs arrays" in why[str(tmp_path / "f.npz")]
    log = tmp_path / "skip.jsonl"
    assert write_skip_log(ds, log) == 6 and count_skipped(log) == 6
    assert not hasattr(ds, "skip_log")
    train = build_dataset(npz_cfg(tmp_path, "skip"), "train")
    assert len(train) == len(labs) - 1 and train.skipped == ds.skipped
    with pytest.raises(DataError, match=esc(tmp_path / "b.npz")):
        build_dataset(npz_cfg(tmp_path), "all")  # error: the first bad file in sorted order


def test_npz_skip_with_nothing_left_raises(tmp_path):
    npz(tmp_path / "a.npz", 3, labels=[10, 11, 12])
    (tmp_path / "b.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="no usable images left.*a.npz"):
        build_dataset(npz_cfg(tmp_path, "skip"), "all")


def test_sources_with_nothing_to_skip(tmp_path):
    ds = build_dataset(cfg_for("data.source=synthetic", "data.synthetic_size=8", "data.val_size=2",
                               f"data.image_size={SIZE}", "data.num_classes=2",
                               "data.on_bad_image=skip"), "train")
    assert ds.skipped == []
    npz(tmp_path / "a.npz", 4)
    assert build_dataset(npz_cfg(tmp_path, "skip"), "all").skipped == []
    log = tmp_path / "skip.jsonl"
    assert write_skip_log(ds, log) == 0 and log.is_file() and count_skipped(log) == 0
