"""ldae.optim.LARS (MAE's ``util/lars.py`` rule) against timm's ``timm.optim.Lars``.

The two differ in how they are configured, not in the update, once matched like this:
- 2-D params, weight decay 0: timm with ``always_adapt=True, eps=0`` (timm adapts only when the
  group's weight decay is non-zero unless ``always_adapt``); trust ratio tc ||w|| / ||g|| in both.
- 2-D params, weight decay wd > 0: MAE's trust ratio is tc ||w|| / ||g + wd w||, timm's is
  tc ||w|| / (||g|| + wd ||w||) (the LARS paper's bound); these differ unless g is parallel to w.
  MAE's update equals timm's on the L2-regularised gradient g + wd w with weight_decay=0, which is
  how we compare (and we check that timm's own weight decay does *not* match, to pin the rule).
- 1-D params (biases, norms): MAE applies neither adaptation nor weight decay; timm matches when
  they sit in a group with ``weight_decay=0, always_adapt=False`` (what timm's
  ``param_groups_weight_decay`` builds): plain SGD with momentum.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from timm.optim import Lars

from ldae.optim import LARS

torch.set_num_threads(1)

STEPS, LR, MOM, TC = 6, 0.7, 0.9, 0.001


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g), torch.randn(3, 4, 2, generator=g),
            torch.randn(5, generator=g), torch.randn(9, generator=g)]


def _grads(seed: int, step: int, shapes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + step)
    return [torch.randn(s, generator=g) for s in shapes]


def _run(make_opt, init: list[torch.Tensor], seed: int, fold_wd: float = 0.0) -> list[torch.Tensor]:
    """STEPS steps on fixed random grads; ``fold_wd`` adds wd * w to the grads of >=2-D params."""
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = make_opt(ps)
    for s in range(STEPS):
        for p, g in zip(ps, _grads(seed, s, [p.shape for p in ps])):
            p.grad = g + fold_wd * p.detach() if p.ndim > 1 else g.clone()
        opt.step()
    return [p.detach() for p in ps]


def _timm(ps, wd: float, foreach: bool):
    """timm's Lars. The pinned timm has a ``foreach`` path; older ones in pyproject's range
    (1.0.20-1.0.25, tried) have only the per-tensor loop that ``foreach=False`` selects."""
    kw = {"foreach": foreach} if "foreach" in inspect.signature(Lars).parameters else {}
    if foreach and not kw:
        pytest.skip("this timm's Lars has no foreach path")
    mat = [p for p in ps if p.ndim > 1]
    vec = [p for p in ps if p.ndim <= 1]
    return Lars([{"params": mat, "weight_decay": wd, "always_adapt": True},
                 {"params": vec, "weight_decay": 0.0, "always_adapt": False}],
                lr=LR, momentum=MOM, trust_coeff=TC, eps=0.0, **kw)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_lars_equals_timm_without_weight_decay(seed, foreach):
    init = _params(seed)
    ours = _run(lambda ps: LARS(ps, lr=LR, weight_decay=0.0, momentum=MOM, trust_coefficient=TC),
                init, seed)
    ref = _run(lambda ps: _timm(ps, 0.0, foreach), init, seed)
    for a, b, p0 in zip(ours, ref, init):
        assert not torch.equal(a, p0)  # every param moved
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_lars_with_weight_decay_equals_timm_on_l2_gradient(seed):
    wd = 0.3
    init = _params(seed)
    ours = _run(lambda ps: LARS(ps, lr=LR, weight_decay=wd, momentum=MOM, trust_coefficient=TC),
                init, seed)
    ref = _run(lambda ps: _timm(ps, 0.0, False), init, seed, fold_wd=wd)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # timm's own weight decay uses ||g|| + wd ||w|| in the trust ratio: a different rule.
    native = _run(lambda ps: _timm(ps, wd, False), init, seed)
    assert not torch.allclose(ours[0], native[0], atol=1e-6, rtol=1e-6)
    # 1-D params get neither adaptation nor decay in both
    for a, b in zip(ours[2:], native[2:]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_lars_one_dim_params_are_plain_momentum_sgd():
    init = [torch.randn(6)]
    ours = _run(lambda ps: LARS(ps, lr=LR, weight_decay=0.5, momentum=MOM), init, 3)
    sgd = _run(lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOM), init, 3)
    torch.testing.assert_close(ours[0], sgd[0], atol=1e-6, rtol=1e-6)


def test_lars_zero_norms_fall_back_to_unit_ratio():
    p = torch.nn.Parameter(torch.zeros(3, 3))
    opt = LARS([p], lr=1.0, momentum=0.0)
    p.grad = torch.ones(3, 3)
    opt.step()
    torch.testing.assert_close(p.detach(), -torch.ones(3, 3))
