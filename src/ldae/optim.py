"""Optimisers and schedules: AdamW for pretraining (App. A), LARS for the linear probe (MAE).

lr(it) = peak * it / warmup for it < warmup, then peak * 0.5 (1 + cos(pi (it - warmup) /
(total - warmup))) — MAE's per-iteration warmup + half-cycle cosine.
"""
from __future__ import annotations

import math

import torch


def scaled_lr(blr: float, global_batch: int) -> float:
    """The linear scaling rule: lr = blr x global batch / 256 (Goyal et al.; App. A)."""
    return blr * global_batch / 256.0


def warmup_cosine(it: float, total: float, warmup: float, peak: float, floor: float = 0.0) -> float:
    if it < warmup:
        return peak * it / warmup
    if total <= warmup:
        return peak
    frac = min(1.0, (it - warmup) / (total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def build_adamw(model: torch.nn.Module, lr: float, weight_decay: float,
                betas: tuple[float, float], fused: bool = False) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, **kw)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in MAE's linear probe: SGD with momentum where each weight
    matrix's update is scaled by the trust ratio ||w|| / ||g + wd w||; 1-D parameters
    (biases, norms) are left unscaled and get no weight decay."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where(pn > 0, torch.where(un > 0, g["trust_coefficient"] * pn / un,
                                                        torch.ones_like(pn)), torch.ones_like(pn))
                    dp = dp.mul(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                mu = st["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema <- decay ema + (1 - decay) param, for all tensors in one fused foreach call."""
    torch._foreach_lerp_(ema, params, 1.0 - decay)


class EMA:
    """The exponential moving average of a module's trainable parameters, the one EMA of both
    trainers (pretraining: ``optim.ema``; fine-tuning: ``finetune.ema``, evaluated as a model).

    The averages live either as bare tensors (``into=None``) or as the parameters of ``into``, a
    copy of the module that can be run as it is (fine-tuning evaluates it). ``state_dict`` is the
    module's state dict with the averages in place of its trainable parameters (with ``into``:
    ``into``'s own state dict), what checkpoints store under ``"ema"``."""

    def __init__(self, module: torch.nn.Module, decay: float, into: torch.nn.Module | None = None):
        self.decay, self.into = decay, into
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        own = dict(module.named_parameters())
        self._source = (module, [own[n] for n in self.names])  # looked up once, not every step
        if into is None:
            self.shadow = [own[n].detach().clone() for n in self.names]
        else:
            own = dict(into.named_parameters())
            self.shadow = [own[n].data for n in self.names]

    def update(self, module: torch.nn.Module) -> None:
        src, params = self._source
        if module is not src:
            own = dict(module.named_parameters())
            params = [own[n] for n in self.names]
        ema_update(self.shadow, [p.detach() for p in params], self.decay)

    def state_dict(self, module: torch.nn.Module) -> dict:
        if self.into is not None:
            return self.into.state_dict()
        sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
        sd.update(dict(zip(self.names, self.shadow)))
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if self.into is not None:
            self.into.load_state_dict(sd, strict=True)
            return
        for e, n in zip(self.shadow, self.names):
            e.copy_(sd[n])
