"""Reverse processes of Eq. 1: DDPM ancestral sampling and DDIM, for every schedule that has one.

One step from step t down to step s < t (s = -1 is the clean end, gamma = 1, sigma = 0), with
z0_hat the network's estimate of the clean latent (``Target.to_z0``: eps, z0 and image outputs
all give one) and eps_hat = (z_t - gamma_t z0_hat) / sigma_t the noise it implies. In the
(gamma, sigma) notation of Kingma et al. 2021 (VDM), DDIM (Song et al. 2021, Eq. 12) reads

    sigma2_ts = sigma_t^2 - (gamma_t / gamma_s)^2 sigma_s^2        forward transition s -> t
    v         = eta^2 sigma2_ts sigma_s^2 / sigma_t^2              eta = 1: var of q(z_s | z_t, z0)
    z_s       = gamma_s z0_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) xi,   xi ~ N(0, I)

eta = 1 is DDPM's ancestral step exactly (posterior mean and the "fixed small" variance of Ho et
al. 2020 / DiT); eta = 0 is deterministic DDIM. Timesteps are respaced as DiT does
(``space_timesteps``): ``steps`` integers evenly spread over [0, t_max], rounded.

Which schedule x target pairs sample (``check_samplable``):
- ``ddpm``, ``linear_gamma2``: variance preserving; the chain starts from N(0, sigma_T^2 I).
  With target ``eps`` the start is the last t with gamma_t > 0 (``linear_gamma2`` has
  gamma_{T-1} = 0, where z0 = (z_t - sigma_t eps) / gamma_t is undefined).
- ``sigma_linear`` (gamma = 1, sigma_t up to sqrt(2)): the step is defined, but z_T = z0 +
  sqrt(2) eps is far from N(0, 2 I) at the data's scale (PCA latents have std >> 1), so samples
  start off-distribution; allowed, and ``prior_mismatch`` says so in every record.
- ``constant`` (one noise level): no path from noise to data: refused.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from .schedules import Constant, Schedule


def check_samplable(schedule: Schedule, target_name: str) -> None:
    """Raise ``ConfigError`` when this schedule defines no reverse process."""
    if isinstance(schedule, Constant):
        raise ConfigError(
            "diffusion.schedule=constant trains at a single noise level (Sec. 4.3): there is no "
            "chain of noise levels from pure noise down to data, so it cannot sample. Sample a run "
            "trained with ddpm, linear_gamma2 or sigma_linear.")
    if target_name == "eps" and not bool((schedule.gamma > 0).any()):
        raise ConfigError("target eps needs some step with gamma_t > 0 to recover z0.")


def prior_mismatch(schedule: Schedule) -> bool:
    """True when z_T is not close to N(0, sigma_T^2 I): gamma_T is not ~0 (variance exploding)."""
    return float(schedule.gamma[-1]) > 0.05


def timesteps(schedule: Schedule, steps: int, target_name: str) -> torch.Tensor:
    """Descending int64 steps t_max ... 0: DiT's respacing of [0, t_max] into ``steps`` steps."""
    usable = torch.nonzero(schedule.gamma > 0).flatten() if target_name == "eps" else None
    t_max = int(usable.max()) if usable is not None else schedule.num_steps - 1
    if not 1 <= steps <= t_max + 1:
        raise ConfigError(f"sample.steps={steps} must be in [1, {t_max + 1}] for this schedule.")
    if steps == 1:
        return torch.tensor([t_max])
    stride = t_max / (steps - 1)
    ts = [round(i * stride) for i in range(steps)]
    return torch.tensor(ts[::-1], dtype=torch.long)


def ddim_step(zt: torch.Tensor, z0_hat: torch.Tensor, gt: torch.Tensor, st: torch.Tensor,
              gs: torch.Tensor, ss: torch.Tensor, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """z_s from z_t (module docstring). g*, s* broadcast against z (scalars or (B, 1, 1))."""
    eps_hat = (zt - gt * z0_hat) / st
    if eta == 0.0 or noise is None:
        return gs * z0_hat + ss * eps_hat
    var_ts = (st ** 2 - (gt / gs) ** 2 * ss ** 2).clamp_min(0.0)
    v = eta ** 2 * var_ts * ss ** 2 / st ** 2
    return gs * z0_hat + (ss ** 2 - v).clamp_min(0.0).sqrt() * eps_hat + v.sqrt() * noise


def sample_latents(predict_z0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   schedule: Schedule, shape: tuple[int, ...], steps: int, target_name: str,
                   eta: float = 1.0, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu",
                   on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Run the chain: z_T ~ N(0, sigma_T^2 I), then one ``ddim_step`` per respaced step.

    ``predict_z0(z_t, t)`` maps (B, ...) latents and (B,) int64 steps to z0 estimates.
    eta = 1 is DDPM ancestral sampling, eta = 0 DDIM. The last step (to s = -1) returns z0_hat."""
    check_samplable(schedule, target_name)
    ts = timesteps(schedule, steps, target_name).to(device)
    gamma, sigma = schedule.gamma.to(device), schedule.sigma.to(device)

    def randn():
        return torch.randn(shape, device=device, generator=generator)

    z = sigma[ts[0]] * randn()
    for i, t in enumerate(ts):
        tt = t.expand(shape[0])
        z0_hat = predict_z0(z, tt).float()
        if i == len(ts) - 1:
            z = z0_hat
        else:
            s = ts[i + 1]
            noise = randn() if eta > 0 else None
            z = ddim_step(z, z0_hat, gamma[t], sigma[t], gamma[s], sigma[s], eta, noise)
        if on_step is not None:
            on_step()
    return z


def eta_of(sampler: str, eta: float) -> float:
    """The eta a sampler name stands for: ddpm = 1 (ancestral), ddim = the configured eta."""
    if sampler == "ddpm":
        return 1.0
    if sampler == "ddim":
        return float(eta)
    raise ConfigError(f"sample.sampler={sampler!r} is not valid. Choices: ddpm, ddim.")


__all__ = ["check_samplable", "prior_mismatch", "timesteps", "ddim_step", "sample_latents",
           "eta_of"]
