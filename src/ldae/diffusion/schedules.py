"""Noise schedules of Eq. 1, z_t = gamma_t z_0 + sigma_t eps (paper Fig. 3, Sec. 4.1, Sec. 4.3).

Each schedule is a pair of length-T tables (gamma_t, sigma_t), t = 0..T-1, computed in float64
and stored as float32 buffers, plus ``t_cond``: the value fed to the network's t embedding.

| name            | gamma_t                              | sigma_t              |
| ddpm            | sqrt(prod_{s<=t} (1 - beta_s)), beta linear 1e-4..0.02 | sqrt(1 - gamma_t^2) |
| linear_gamma2   | sqrt(1 - (t+1)/T)                    | sqrt(1 - gamma_t^2)  |
| sigma_linear    | 1                                    | sqrt(2) (t+1)/T      |
| constant        | 1                                    | sigma0 (t fed as 0)  |
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import register_choices


class Schedule(nn.Module):
    name = "base"

    def __init__(self, gamma: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        self.register_buffer("gamma", gamma.float(), persistent=False)
        self.register_buffer("sigma", sigma.float(), persistent=False)

    @property
    def num_steps(self) -> int:
        return self.gamma.shape[0]

    def t_cond(self, t: torch.Tensor) -> torch.Tensor:
        """What the network's timestep embedding sees for integer steps t."""
        return t.float()

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gamma[t], self.sigma[t]


class DDPM(Schedule):
    name = "ddpm"

    def __init__(self, T: int, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, 0)
        super().__init__(abar.sqrt(), (1.0 - abar).sqrt())


class LinearGamma2(Schedule):
    name = "linear_gamma2"

    def __init__(self, T: int):
        g2 = 1.0 - torch.arange(1, T + 1, dtype=torch.float64) / T
        super().__init__(g2.sqrt(), (1.0 - g2).sqrt())


class SigmaLinear(Schedule):
    name = "sigma_linear"

    def __init__(self, T: int):
        sigma = math.sqrt(2.0) * torch.arange(1, T + 1, dtype=torch.float64) / T
        super().__init__(torch.ones(T, dtype=torch.float64), sigma)


class Constant(Schedule):
    name = "constant"

    def __init__(self, T: int, sigma0: float = math.sqrt(1.0 / 3.0)):
        super().__init__(torch.ones(T, dtype=torch.float64), torch.full((T,), sigma0, dtype=torch.float64))

    def t_cond(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t, dtype=torch.float32)


#: the ``diffusion.schedule`` names (Fig. 3)
SCHEDULES: dict[str, type[Schedule]] = {"ddpm": DDPM, "linear_gamma2": LinearGamma2,
                                        "sigma_linear": SigmaLinear, "constant": Constant}
register_choices("diffusion.schedule", lambda: sorted(SCHEDULES))


def build_schedule(d) -> Schedule:
    """The schedule of a ``DiffusionConfig`` (``constant`` takes its ``sigma0``)."""
    if d.schedule == "constant":
        return Constant(d.num_steps, d.sigma0)
    return SCHEDULES[d.schedule](d.num_steps)
