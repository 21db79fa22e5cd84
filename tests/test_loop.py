"""engine.loop and optim.EMA: the shared pieces of the pretraining and fine-tuning trainers."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ldae.config import load_config
from ldae.engine.loop import make_plan
from ldae.errors import ConfigError
from ldae.optim import EMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    net[1].weight.requires_grad_(False)  # a frozen parameter is not averaged
    return net


@pytest.mark.parametrize("into", [False, True])
def test_ema_matches_the_closed_form_of_k_updates(into):
    net, d, k = _net(), 0.9, 5
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    copy_ = copy.deepcopy(net).requires_grad_(False) if into else None
    ema = EMA(net, d, into=copy_)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(1.0)  # the weights jump once and stay: ema_k = d^k e0 + (1 - d^k) p
    for _ in range(k):
        ema.update(net)
    sd = ema.state_dict(net)
    for n, p in net.named_parameters():
        want = d ** k * start[n] + (1 - d ** k) * p.detach() if p.requires_grad else p.detach()
        torch.testing.assert_close(sd[n], want)
    assert "1.weight" not in ema.names


def test_ema_state_round_trips_and_both_forms_agree():
    net = _net()
    a, b = EMA(net, 0.5), EMA(net, 0.5, into=copy.deepcopy(net).requires_grad_(False))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    a.update(net)
    b.update(net)
    sa, sb = a.state_dict(net), b.state_dict(net)
    for n in a.names:
        torch.testing.assert_close(sa[n], sb[n])
    fresh = EMA(_net(), 0.5)
    fresh.load_state_dict(sa)
    for x, y in zip(fresh.shadow, a.shadow):
        assert torch.equal(x, y)


def test_plan_by_hand_and_its_errors():
    cfg = load_config("demo", ["optim.batch_size=64", "optim.epochs=2", "optim.warmup_epochs=0.5",
                               "optim.blr=1e-3", "optim.accum_steps=2"])
    plan = make_plan(cfg, 1000, world=2)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (15, 30, 8)  # round(7.5)
    assert plan.lr == pytest.approx(1e-3 * 64 / 256) and plan.micro_batch == 16
    with pytest.raises(ConfigError, match="exceeds"):
        make_plan(cfg, 10, world=1)
    with pytest.raises(ConfigError, match="divisible"):
        make_plan(cfg, 1000, world=3)


def test_named_objectives_are_the_defaults_and_the_ddm_rows_settings():
    import dataclasses

    from ldae.config import DiffusionConfig
    from ldae.diffusion.objective import LDAE_OBJECTIVE, PCA_DDM_OBJECTIVE, classifier_free_guidance

    d = DiffusionConfig()
    assert {k: getattr(d, k) for k in LDAE_OBJECTIVE} == LDAE_OBJECTIVE
    ddm = load_config("cifar10-cpu", [f"diffusion.{k}={v}" for k, v in PCA_DDM_OBJECTIVE.items()]
                      + ["model.class_cond=false"])  # a valid combination
    assert {k: getattr(ddm.diffusion, k) for k in PCA_DDM_OBJECTIVE} == PCA_DDM_OBJECTIVE
    assert dataclasses.is_dataclass(ddm.diffusion)
    c, u = torch.tensor([3.0]), torch.tensor([1.0])
    assert classifier_free_guidance(c, u, 1.0) == 3.0 and classifier_free_guidance(c, u, 0.0) == 1.0
    assert classifier_free_guidance(c, u, 4.0) == 9.0  # 1 + 4 * (3 - 1)
