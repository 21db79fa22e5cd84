"""Datasets, batch order and batch transforms (SPEC §7): src/ldae/data/*.py."""
import functools
import re

import numpy as np
import pytest
import torch

from ldae.config import load_config
from ldae.data import (ArrayDataset, BatchAugment, BatchStream, build_dataset, epoch_permutation,
                       iterate_in_order, random_resized_crop, to_float)
from ldae.data import transforms
from ldae.data.transforms import random_flip, rrc_boxes
from ldae.errors import DataError


def cfg_for(*items, check=True):
    return load_config(None, list(items), check=check)


def esc(p) -> str:
    return re.escape(str(p))


# ---------------------------------------------------------------- synthetic
def test_synthetic_source_shapes_and_dtype():
    cfg = cfg_for("data.source=synthetic", "data.synthetic_size=20", "data.val_size=6",
                  "data.image_size=16", "data.num_classes=4")
    train, val, both = (build_dataset(cfg, s) for s in ("train", "val", "all"))
    assert (len(train), len(val), len(both)) == (20, 6, 26)
    img, label = train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
    assert isinstance(label, int) and 0 <= label < 4
    assert train.images.shape == (20, 3, 16, 16) and train.labels.dtype == torch.int64
    assert set(both.labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(both.images[20:], val.images)  # val = the last val_size
    assert train.images.float().std() > 10  # not a constant image
    again = build_dataset(cfg, "train")
    assert torch.equal(again.images, train.images)  # deterministic in the seed


# ---------------------------------------------------------------- npz
def npz_arrays(n, size=8, seed=0, num_classes=10):
    g = np.random.default_rng(seed)
    return (g.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
            g.integers(0, num_classes, size=n).astype(np.int64))


def test_npz_file_split(tmp_path):
    ims, labs = npz_arrays(10)
    f = tmp_path / "data.npz"
    np.savez(f, images=ims, labels=labs)
    cfg = cfg_for("data.source=npz", f"data.path={f}", "data.image_size=8", "data.val_size=3")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 7 and len(val) == 3
    assert torch.equal(train.images, torch.from_numpy(ims[:7]).permute(0, 3, 1, 2))
    assert torch.equal(val.images, torch.from_numpy(ims[7:]).permute(0, 3, 1, 2))
    assert train.labels.tolist() == labs[:7].tolist() and val.labels.tolist() == labs[7:].tolist()
    lim = build_dataset(cfg_for("data.source=npz", f"data.path={f}", "data.image_size=8",
                                "data.val_size=3", "data.limit=2"), "train")
    assert len(lim) == 2


def test_npz_folder_concatenates_sorted_files(tmp_path):
    a_ims, a_labs = npz_arrays(6, seed=1)
    b_ims, b_labs = npz_arrays(4, seed=2)
    np.savez(tmp_path / "b.npz", images=b_ims, labels=b_labs)  # written first, sorted second
    np.savez(tmp_path / "a.npz", images=a_ims, labels=a_labs)
    cfg = cfg_for("data.source=npz", f"data.path={tmp_path}", "data.image_size=8", "data.val_size=3")
    allims = np.concatenate([a_ims, b_ims])
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert torch.equal(train.images, torch.from_numpy(allims[:7]).permute(0, 3, 1, 2))
    assert torch.equal(val.images, torch.from_numpy(b_ims[1:]).permute(0, 3, 1, 2))
    assert val.labels.tolist() == b_labs[1:].tolist()


def test_npz_resizes_to_image_size(tmp_path):
    ims = np.zeros((4, 12, 12, 3), dtype=np.uint8)
    ims[..., 0], ims[..., 1], ims[..., 2] = 10, 200, 77
    np.savez(tmp_path / "d.npz", images=ims, labels=np.arange(4))
    ds = build_dataset(cfg_for("data.source=npz", f"data.path={tmp_path}", "data.image_size=8",
                               "data.val_size=1"), "all")
    assert ds.images.shape == (4, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.images[:, 0].eq(10).all() and ds.images[:, 1].eq(200).all() and ds.images[:, 2].eq(77).all()


@pytest.mark.parametrize("kind", ["shape", "dtype", "labels_range", "no_labels", "garbage", "labels_len"])
def test_npz_bad_file_raises_data_error_naming_file(tmp_path, kind):
    ims, labs = npz_arrays(5)
    f = tmp_path / f"bad_{kind}.npz"
    if kind == "shape":
        np.savez(f, images=ims[..., 0], labels=labs)
    elif kind == "dtype":
        np.savez(f, images=ims.astype(np.float32), labels=labs)
    elif kind == "labels_range":
        np.savez(f, images=ims, labels=np.array([0, 1, 2, 3, 10]))
    elif kind == "no_labels":
        np.savez(f, images=ims)
    elif kind == "labels_len":
        np.savez(f, images=ims, labels=labs[:4])
    else:
        f.write_bytes(b"definitely not a zip archive")
    cfg = cfg_for("data.source=npz", f"data.path={f}", "data.image_size=8", "data.val_size=1")
    with pytest.raises(DataError, match=esc(f)):
        build_dataset(cfg, "train")


def test_missing_paths_raise_data_error(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataError, match=esc(missing)):
        build_dataset(cfg_for("data.source=npz", f"data.path={missing}"), "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .npz file"):
        build_dataset(cfg_for("data.source=npz", f"data.path={empty}"), "train")
    with pytest.raises(DataError, match=esc(tmp_path / "nope")):
        build_dataset(cfg_for("data.source=imagefolder", f"data.path={tmp_path / 'nope'}"), "train")


def test_bad_split_and_val_size(tmp_path):
    ims, labs = npz_arrays(5)
    np.savez(tmp_path / "d.npz", images=ims, labels=labs)
    with pytest.raises(DataError, match="val_size"):
        build_dataset(cfg_for("data.source=npz", f"data.path={tmp_path}", "data.image_size=8",
                              "data.val_size=5"), "train")
    with pytest.raises(DataError, match="split"):
        build_dataset(cfg_for("data.source=npz", f"data.path={tmp_path}", "data.image_size=8",
                              "data.val_size=2"), "bogus")


# ---------------------------------------------------------------- digits
def test_digits_source():
    from sklearn.datasets import load_digits

    cfg = cfg_for("data.source=digits", "data.image_size=8", "data.val_size=297")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) + len(val) == 1797 and len(val) == 297
    d = load_digits()
    grey = np.round(d.images[-297:] * 255.0 / 16.0).astype(np.uint8)
    assert val.images.shape == (297, 3, 8, 8) and val.images.dtype == torch.uint8
    for c in range(3):
        np.testing.assert_array_equal(val.images[:, c].numpy(), grey)
    assert val.labels.tolist() == d.target[-297:].tolist()
    up = build_dataset(cfg_for("data.source=digits", "data.image_size=16", "data.val_size=297"), "val")
    assert up.images.shape == (297, 3, 16, 16)


# ---------------------------------------------------------------- imagefolder
def make_folder(root, classes, per_class=2, size=(12, 10)):
    from PIL import Image

    colours = {}
    for ci, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        for k in range(per_class):
            colour = (20 * ci + 5 * k, 100 + 10 * k, 250 - 30 * ci)
            Image.new("RGB", size, colour).save(root / "train" / name / f"img{k}.png")
            colours[(ci, k)] = colour
    return colours


def test_imagefolder(tmp_path):
    colours = make_folder(tmp_path, ["cat", "dog"])
    cfg = cfg_for("data.source=imagefolder", f"data.path={tmp_path}", "data.image_size=8")
    ds = build_dataset(cfg, "train")
    assert len(ds) == 4 and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    for i, (ci, k) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 8, 8) and label == ci
        expected = torch.tensor(colours[(ci, k)], dtype=torch.int16)[:, None, None]
        assert (img.to(torch.int16) - expected).abs().max() <= 1
    xb, yb = next(iterate_in_order(ds, 3))
    assert xb.shape == (3, 3, 8, 8) and yb.tolist() == [0, 0, 1]


def test_imagefolder_corrupt_image_names_file(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    bad = tmp_path / "train" / "b" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG not really")
    ds = build_dataset(cfg_for("data.source=imagefolder", f"data.path={tmp_path}",
                               "data.image_size=8"), "train")
    assert ds.samples[-1][0] == bad
    ds[0]  # good images still load
    with pytest.raises(DataError, match=esc(bad)):
        ds[len(ds) - 1]


def test_imagefolder_empty_class_folder(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "train" / "c_empty").mkdir()
    (tmp_path / "train" / "c_empty" / "notes.txt").write_text("no images here")
    cfg = cfg_for("data.source=imagefolder", f"data.path={tmp_path}", "data.image_size=8")
    with pytest.raises(DataError, match="c_empty"):
        build_dataset(cfg, "train")
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(cfg, "val")  # no val/ sub-folder


# ---------------------------------------------------------------- batch order
def small_dataset(n=30):
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 2, 2).contiguous()
    return ArrayDataset(images, torch.arange(n) % 3, ["0", "1", "2"])


def take(stream, k):
    it = iter(stream)
    return [next(it) for _ in range(k)]


def test_global_batch_independent_of_world_size():
    ds = small_dataset()
    steps = 7  # 30 // 8 = 3 steps per epoch: crosses two epoch boundaries
    one = take(BatchStream(ds, 8, seed=3), steps)
    for world in (2, 4):
        ranks = [take(BatchStream(ds, 8, seed=3, rank=r, world=world), steps) for r in range(world)]
        for s in range(steps):
            union = torch.cat([ranks[r][s][0][:, 0, 0, 0] for r in range(world)])
            assert all(ranks[r][s][0].shape[0] == 8 // world for r in range(world))
            assert sorted(union.tolist()) == sorted(one[s][0][:, 0, 0, 0].tolist())
            assert sorted(torch.cat([ranks[r][s][1] for r in range(world)]).tolist()) == \
                sorted(one[s][1].tolist())


def test_epochs_are_permutations_and_differ():
    ds = small_dataset(24)
    st = BatchStream(ds, 8, seed=0)
    ep0 = torch.cat([st.local_indices(s) for s in range(3)])
    ep1 = torch.cat([st.local_indices(s) for s in range(3, 6)])
    assert sorted(ep0.tolist()) == list(range(24)) == sorted(ep1.tolist())
    assert not torch.equal(ep0, ep1)
    assert torch.equal(epoch_permutation(24, 0, 1), ep1)
    assert not torch.equal(BatchStream(ds, 8, seed=1).local_indices(0), st.local_indices(0))
    with pytest.raises(ValueError):
        BatchStream(ds, 25, seed=0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_resume_equals_skipping(k):
    ds = small_dataset()
    full = take(BatchStream(ds, 8, seed=5), k + 5)
    resumed = take(BatchStream(ds, 8, seed=5, start=k), 5)
    for (xa, ya), (xb, yb) in zip(full[k:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resume_equals_skipping_folder_dataset(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], per_class=2)
    ds = build_dataset(cfg_for("data.source=imagefolder", f"data.path={tmp_path}", "data.image_size=4"),
                       "train")
    assert not hasattr(ds, "gather")  # goes through the DataLoader path
    full = take(BatchStream(ds, 2, seed=1), 7)  # 3 steps per epoch
    resumed = take(BatchStream(ds, 2, seed=1, start=2), 5)
    for (xa, ya), (xb, yb) in zip(full[2:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    st = BatchStream(ds, 2, seed=1)
    assert full[4][1].tolist() == ds.labels[st.local_indices(4)].tolist()


# ---------------------------------------------------------------- transforms
def test_to_float_range():
    x = torch.tensor([0, 255, 51, 204], dtype=torch.uint8).reshape(1, 1, 2, 2)
    y = to_float(x)
    assert y.dtype == torch.float32
    assert y[0, 0, 0, 0].item() == -1.0 and y[0, 0, 0, 1].item() == 1.0
    assert y[0, 0, 1, 0].item() == pytest.approx(51 / 127.5 - 1)
    assert x[0, 0, 0, 1].item() == 255  # the input is not modified


def test_rrc_full_square_box_is_the_whole_image():
    boxes = rrc_boxes(5, 16, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(5, 4))
    b = rrc_boxes(200, 16, 24, scale=(0.2, 0.6), generator=torch.Generator().manual_seed(1))
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 24).all() and (b[:, 3] <= 16).all()
    frac = w * h / (16 * 24)
    assert frac.min() >= 0.2 - 1e-4 and frac.max() <= 0.6 + 1e-4
    ar = w / h
    assert ar.min() >= 3 / 4 - 1e-4 and ar.max() <= 4 / 3 + 1e-4


def test_random_resized_crop_identity_box_returns_input(monkeypatch):
    monkeypatch.setattr(transforms, "rrc_boxes", functools.partial(rrc_boxes, ratio=(1.0, 1.0)))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not smooth
    out = random_resized_crop(x, (1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


def test_random_resized_crop_from_a_larger_stored_image_is_an_area_average(monkeypatch):
    """A full crop of a 2N-px stored image to N px is exactly a 2x2 average pool (anti-aliased),
    not every other pixel."""
    monkeypatch.setattr(transforms, "rrc_boxes", functools.partial(rrc_boxes, ratio=(1.0, 1.0)))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop(x, (1.0, 1.0), generator=torch.Generator().manual_seed(0), size=8)
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)


def test_random_resized_crop_upsampling_matches_torchvision(monkeypatch):
    """A crop smaller than the output is torchvision's bilinear resized_crop (no antialias: it
    only upsamples), box for box, inside a one-pixel border. On the border torchvision, which cuts
    the crop out first, clamps to the crop's edge pixels; roi_align interpolates with the real
    pixels just outside the box."""
    from torchvision.transforms.v2 import functional as TF

    box = torch.tensor([[2.0, 3.0, 12.0, 13.0]])  # x1, y1, x2, y2: a 10 x 10 crop to 12 px
    monkeypatch.setattr(transforms, "rrc_boxes", lambda n, *a, **k: box.expand(n, 4))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = random_resized_crop(x, (0.2, 1.0), size=12)
    ref = TF.resized_crop(x, top=3, left=2, height=10, width=10, size=[12, 12],
                          interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    assert torch.allclose(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(out, ref, atol=1e-3)


def test_batch_augment_center_crops_a_larger_input():
    x = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    out = BatchAugment("center", hflip=False, size=8)(x)
    assert torch.equal(out, to_float(x[:, :, 2:10, 2:10]))
    assert BatchAugment("random_resized", size=8)(x, torch.Generator().manual_seed(0)).shape == (2, 3, 8, 8)


def test_random_resized_crop_deterministic_with_generator():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = random_resized_crop(x, (0.2, 1.0), generator=torch.Generator().manual_seed(5))
    b = random_resized_crop(x, (0.2, 1.0), generator=torch.Generator().manual_seed(5))
    c = random_resized_crop(x, (0.2, 1.0), generator=torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)
    # a crop of a constant image is that constant
    k = torch.full((2, 3, 16, 16), 0.25)
    assert torch.allclose(random_resized_crop(k, (0.2, 1.0), torch.Generator().manual_seed(0)), k)


def test_random_flip_flips_exactly_the_drawn_samples():
    x = torch.randn(16, 3, 4, 5)
    out = random_flip(x, torch.Generator().manual_seed(3))
    flip = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < flip.sum() < 16
    for i in range(16):
        assert torch.equal(out[i], x[i].flip(-1) if flip[i] else x[i])


def test_batch_augment():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(BatchAugment("center", hflip=False)(x), to_float(x))
    a = BatchAugment("random_resized", (0.3, 1.0))(x, torch.Generator().manual_seed(0))
    b = BatchAugment("random_resized", (0.3, 1.0))(x, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 8, 8) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
