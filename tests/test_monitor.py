"""The online kNN monitor (engine/monitor.py): the vote by hand and against scikit-learn, its
sets (train split only, queries from the probe's holdout), and that it changes no training."""
from __future__ import annotations

import json
import math

import torch
from sklearn.neighbors import KNeighborsClassifier

from ldae import checkpoint
from ldae.config import load_config
from ldae.data import build_dataset
from ldae.engine import pretrain, splits
from ldae.engine.monitor import KnnMonitor, knn_predict

TINY = ["data.source=synthetic", "data.image_size=8", "data.synthetic_size=96", "data.val_size=16",
        "model.name=test", "model.patch_size=4", "tokenizer.dim=4", "optim.batch_size=16",
        "optim.blr=2e-3", "optim.epochs=1", "optim.warmup_epochs=0", "train.log_every=2",
        "train.ckpt_every=100", "train.threads=1", "train.device=cpu"]


def test_knn_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[2.0, 0.2]])  # cosine: 0.995, 0.856, 0.0995, -0.995
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    # k = 2: neighbours 0 (class 0) and 1 (class 1): class 0 has the larger weight exp(sim / T)
    kw = {"standardize": False}
    assert knn_predict(bank, labels, q, 3, k=2, **kw).item() == 0
    # k = 3, T large (near-uniform votes): class 1 has two neighbours (1 and 2) against one
    assert knn_predict(bank, labels, q, 3, k=3, temperature=1e6, **kw).item() == 1
    # k = 3, T = 0.07: exp(0.995/0.07) beats exp(0.856/0.07) + exp(0.0995/0.07)
    w = (sims[0] / 0.07).exp()
    assert w[0] > w[1] + w[2]
    assert knn_predict(bank, labels, q, 3, k=3, **kw).item() == 0
    # standardised by the bank: a query's neighbours are those of (q - mean) / std
    mu, sd = bank.mean(0), bank.std(0)
    assert knn_predict(bank, labels, q, 3, k=1).item() == \
        knn_predict((bank - mu) / sd, labels, (q - mu) / sd, 3, k=1, **kw).item()


def test_knn_with_uniform_votes_equals_sklearn_cosine_knn():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(300, 12, generator=g), torch.randn(80, 12, generator=g)
    y = (bank[:, 0] + 0.5 * bank[:, 1] > 0).long()  # two classes, k odd: no tied votes
    bank = bank + torch.tensor([3.0] + [0.0] * 11)  # an offset, as DiT features have
    ours = knn_predict(bank, y, q, 2, k=7, temperature=1e9)
    mu, sd = bank.mean(0), bank.std(0)
    ref = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(((bank - mu) / sd).numpy(), y.numpy())
    assert torch.equal(ours, torch.from_numpy(ref.predict(((q - mu) / sd).numpy())))
    raw = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(bank.numpy(), y.numpy())
    assert torch.equal(knn_predict(bank, y, q, 2, k=7, temperature=1e9, standardize=False),
                       torch.from_numpy(raw.predict(q.numpy())))


def test_monitor_sets_come_from_the_train_split_queries_from_the_probe_holdout():
    cfg = load_config(None, TINY + ["train.monitor_bank=40", "train.monitor_queries=5"])
    ds = build_dataset(cfg, "train")
    mon = KnnMonitor(cfg, ds, torch.device("cpu"))
    fit, ho = splits.holdout_split(len(ds), cfg)
    assert set(mon.queries.tolist()) <= set(ho.tolist()) and len(mon.queries) == 5
    assert set(mon.bank.tolist()) <= set(fit.tolist()) and len(mon.bank) == 40
    assert torch.equal(mon.bank_y, ds.gather(mon.bank)[1])


def test_monitor_logs_knn_and_leaves_training_unchanged(tmp_path):
    on = pretrain.run(load_config(None, TINY + ["train.monitor_every=3"]), tmp_path / "on")
    off = pretrain.run(load_config(None, TINY), tmp_path / "off")
    a = checkpoint.load(checkpoint.latest(tmp_path / "on"))
    b = checkpoint.load(checkpoint.latest(tmp_path / "off"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    steps = on["steps"]
    watched = [r["step"] for r in rows if "knn_top1" in r]
    assert watched == sorted({s for s in range(3, steps + 1, 3)} | {steps})
    assert all(0.0 <= r["knn_top1"] <= 100.0 for r in rows if "knn_top1" in r)
    assert on["knn_top1"] is not None and on["monitor_seconds"] >= 0
    assert all(r["knn_seconds"] >= 0 for r in rows if "knn_top1" in r)
    assert off["knn_top1"] is None and off["monitor_seconds"] is None
    assert not any("knn_top1" in json.loads(x)
                   for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines())
    assert math.isfinite(on["final_loss"]) and on["final_loss"] == off["final_loss"]
    assert (tmp_path / "on" / "figures" / "training.png").stat().st_size > 0
