"""`ldae prepare-data` and data.source=packed: equal to the ImageFolder it came from, image for
image; usable by pretraining; clear errors; nothing half-written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldae.cli import main
from ldae.config import load_config
from ldae.data import build_dataset
from ldae.data.folder import ImageFolderDataset
from ldae.engine import pretrain
from ldae.errors import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of JPEGs and PNGs of various sizes and modes (train: 3 classes, val)."""
    root = tmp_path_factory.mktemp("imgs")
    g = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog", "eel"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = g.integers(20, 48, size=2)
                arr = g.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                im = Image.fromarray(arr)
                if i % 3 == 1:
                    im = im.convert("L")  # grayscale files become RGB
                im.save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_packed_equals_the_imagefolder(folder, tmp_path):
    assert main(["prepare-data", str(folder), str(tmp_path / "p"), "--size", "16", "--workers", "2"]) == 0
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["splits"] == {"train": 18, "val": 6} and meta["classes"] == ["cat", "dog", "eel"]
    cfg = load_config(None, ["data.source=packed", f"data.path={tmp_path / 'p'}", "data.image_size=16",
                             "model.patch_size=4"])
    for split in ("train", "val"):
        packed = build_dataset(cfg, split)
        ref = ImageFolderDataset(folder, split, 16, 10)
        assert len(packed) == len(ref)
        x, y = packed.gather(torch.arange(len(packed)))
        for i in range(len(ref)):
            xi, yi = ref[i]
            assert torch.equal(x[i], xi) and int(y[i]) == yi
            assert torch.equal(packed[i][0], xi)
    assert not list((tmp_path / "p").glob(".*tmp"))


def test_pretraining_reads_a_packed_folder(folder, tmp_path):
    main(["prepare-data", str(folder), str(tmp_path / "p"), "--size", "8", "--workers", "1"])
    cfg = load_config(None, ["data.source=packed", f"data.path={tmp_path / 'p'}", "data.image_size=8",
                             "data.train_split=train", "data.eval_split=val", "model.name=test",
                             "model.patch_size=4", "optim.batch_size=6", "optim.epochs=1",
                             "optim.warmup_epochs=0"])
    s = pretrain.run(cfg, tmp_path / "run")
    assert s["steps"] == 3 and np.isfinite(s["final_loss"])


def test_packed_larger_than_the_image_size(folder, tmp_path):
    """Stored at 12 px, trained at 8: the dataset gives the central 8 px (the evaluation view);
    random resized crops see the whole stored image and come out at 8 px."""
    main(["prepare-data", str(folder), str(tmp_path / "p12"), "--size", "12", "--workers", "1"])
    base = ["data.source=packed", f"data.path={tmp_path / 'p12'}", "model.patch_size=4",
            "data.num_classes=3", "data.train_split=train", "data.eval_split=val"]
    ds = build_dataset(load_config(None, base + ["data.image_size=8"]), "train")
    full = ds.full_view()
    assert full.full and not ds.full  # a view: the dataset itself still center-crops
    x, _ = ds.gather(torch.arange(4))
    xf, _ = full.gather(torch.arange(4))
    assert x.shape == (4, 3, 8, 8) and xf.shape == (4, 3, 12, 12)
    assert torch.equal(x, xf[:, :, 2:10, 2:10]) and torch.equal(ds[1][0], x[1])
    cfg = load_config(None, base + ["data.image_size=8", "data.crop=random_resized", "model.name=test",
                                    "optim.batch_size=6", "optim.epochs=1", "optim.warmup_epochs=0"])
    s = pretrain.run(cfg, tmp_path / "run")
    assert s["steps"] == 3 and np.isfinite(s["final_loss"])


def test_packed_refusals(folder, tmp_path, capsys):
    main(["prepare-data", str(folder), str(tmp_path / "p"), "--size", "8", "--workers", "1",
          "--splits", "train"])
    base = ["data.source=packed", f"data.path={tmp_path / 'p'}", "model.patch_size=4"]
    with pytest.raises(DataError, match="below data.image_size=16.*repack with --size 16"):
        build_dataset(load_config(None, base + ["data.image_size=16"]), "train")
    with pytest.raises(DataError, match="not 'val'"):
        build_dataset(load_config(None, base + ["data.image_size=8"]), "val")
    with pytest.raises(DataError, match="data.num_classes=3"):
        build_dataset(load_config(None, base + ["data.image_size=8", "data.num_classes=2"]), "train")
    (tmp_path / "p" / "meta.json").unlink()  # as if the packing had been killed
    with pytest.raises(DataError, match="never finished"):
        build_dataset(load_config(None, base + ["data.image_size=8"]), "train")
    assert main(["prepare-data", str(tmp_path / "nope"), str(tmp_path / "q")]) == 2
    assert "does not exist" in capsys.readouterr().err
