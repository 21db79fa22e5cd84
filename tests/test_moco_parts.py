"""MoCo v3's parts (src/ldae/objectives/moco.py): batch norm over the global batch (equal to
BatchNorm1d in one process, and on 2 processes equal to one), InfoNCE by hand, the momentum
schedule and update, the MLPs' layout."""
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _ddp import free_port
from torch import nn

from ldae.objectives.moco import GlobalBatchNorm1d, info_nce, mlp, momentum_at, momentum_update


def test_global_batch_norm_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    ours, ref = GlobalBatchNorm1d(5), nn.BatchNorm1d(5)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(5) + 0.5), ours.bias.copy_(torch.randn(5))
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(12, 5)
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb)
    (ya * w).sum().backward(), (yb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def _bn_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x, w = torch.randn(8, 3), torch.randn(8, 3)
        bn = GlobalBatchNorm1d(3)
        mine = x[rank::world].clone().requires_grad_()
        y = bn(mine)
        (y * w[rank::world]).sum().backward()
        torch.save({"y": y.detach(), "grad": mine.grad, "wgrad": bn.weight.grad,
                    "mean": bn.running_mean}, f"{out}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_global_batch_norm_on_two_processes_equals_one(tmp_path):
    mp.spawn(_bn_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    x, w = torch.randn(8, 3), torch.randn(8, 3)
    bn = GlobalBatchNorm1d(3)
    xs = x.clone().requires_grad_()
    y = bn(xs)
    (y * w).sum().backward()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for r in range(2):
        torch.testing.assert_close(parts[r]["y"], y[r::2].detach())
        torch.testing.assert_close(parts[r]["grad"], xs.grad[r::2])
        torch.testing.assert_close(parts[r]["mean"], bn.running_mean)
    # the weight's gradient summed over ranks (DDP averages it; the loss here is a sum)
    torch.testing.assert_close(parts[0]["wgrad"] + parts[1]["wgrad"], bn.weight.grad)


def test_info_nce_by_hand():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    tau, offset = 0.2, 2
    qn = q.numpy() / np.linalg.norm(q.numpy(), axis=1, keepdims=True)
    kn = k.numpy() / np.linalg.norm(k.numpy(), axis=1, keepdims=True)
    logits = qn @ kn.T / tau
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = -np.mean([logp[i, offset + i] for i in range(3)]) * 2 * tau
    assert info_nce(q, k, tau, offset).item() == pytest.approx(want, rel=1e-5)
    # aligned pairs have a lower loss than shuffled ones
    assert info_nce(k[:3], k[:3], tau) < info_nce(k[:3], k[[1, 2, 0]], tau)


def test_momentum_schedule_and_update():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(25, 100, 0.99) == pytest.approx(1 - 0.01 * 0.5 * (1 + math.cos(math.pi / 4)))
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(online.parameters(), target.parameters(), 0.9)
    for p_o, p_t, b in zip(online.parameters(), target.parameters(), before):
        torch.testing.assert_close(p_t, 0.9 * b + 0.1 * p_o.detach())


def test_mlp_layout_is_moco_v3s():
    proj = mlp(3, 8, 16, 4)
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "GlobalBatchNorm1d", "ReLU", "Linear", "GlobalBatchNorm1d", "ReLU",
                     "Linear", "GlobalBatchNorm1d"]
    assert all(m.bias is None for m in proj if isinstance(m, nn.Linear))
    assert proj[-1].weight is None  # the last BN has no affine parameters
    pred = mlp(2, 4, 16, 4, last_bn=False)
    assert [type(m).__name__ for m in pred] == ["Linear", "GlobalBatchNorm1d", "ReLU", "Linear"]
    assert proj(torch.randn(6, 8)).shape == (6, 4)
