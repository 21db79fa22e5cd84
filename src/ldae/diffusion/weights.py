"""Loss weights lambda_t of Eq. 3 / Eq. 4 as functions of (gamma_t, sigma_t)."""
from __future__ import annotations

import torch

from ..config import register_choices


def weight_none(gamma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(sigma)


def weight_snr(gamma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """gamma^2 / sigma^2 (the eps-loss expressed on z0)."""
    return gamma ** 2 / sigma.clamp_min(1e-12) ** 2


def weight_gamma2(gamma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """gamma^2 (Tab. 3 row 2: predict z0 with lambda = gamma^2)."""
    return gamma ** 2


def weight_inv1p_sigma2(gamma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """1 / (1 + sigma^2) (Sec. 4.3, Tab. 3 rows 3 on)."""
    return 1.0 / (1.0 + sigma ** 2)


LOSS_WEIGHTS = {"none": weight_none, "snr": weight_snr, "gamma2": weight_gamma2,
                "inv1p_sigma2": weight_inv1p_sigma2}
register_choices("diffusion.loss_weight", lambda: sorted(LOSS_WEIGHTS))
