"""Noise-level (sigma) grids for the reverse diffusion, in the VE convention.

Every function returns a decreasing float64 tensor of ``num_steps + 1`` values whose last entry
is 0 (k-diffusion's convention): step ``i`` goes from ``sigmas[i]`` to ``sigmas[i + 1]``.
Schedules stay in float64 so that the small differences between consecutive sigmas near 0 are
not rounded away; samplers cast a single sigma to the image dtype when they use it.

VP (DDPM) schedules are converted with ``sigma = sqrt((1 - abar) / abar)``, the noise level of
``x_t / sqrt(abar)``.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021.
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021.
"""
from __future__ import annotations

import math

import torch

__all__ = ["karras", "ve_geometric", "vp_linear", "vp_cosine", "vp_alpha_bar_to_sigma"]


def _check(num_steps: int, sigma_min: float, sigma_max: float) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM grid ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Karras et al. 2022, Eq. 5. ``rho = 7`` spends more steps at small sigma.
    """
    _check(num_steps, sigma_min, sigma_max)
    if num_steps == 1:
        return _append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def ve_geometric(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Geometric grid ``sigma_max (sigma_min / sigma_max)^(i/(n-1))`` (Song et al. 2021, VE SDE)."""
    _check(num_steps, sigma_min, sigma_max)
    if num_steps == 1:
        return _append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    return _append_zero(sigma_max * (sigma_min / sigma_max) ** ramp)


def vp_alpha_bar_to_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """VE noise level ``sqrt((1 - abar) / abar)`` of a VP state ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``."""
    alpha_bar = alpha_bar.to(torch.float64)
    return torch.sqrt((1 - alpha_bar) / alpha_bar)


def _vp_subsample(alpha_bar: torch.Tensor, num_steps: int) -> torch.Tensor:
    total = alpha_bar.numel()
    if not 1 <= num_steps <= total:
        raise ValueError(f"num_steps must be in [1, {total}], got {num_steps}")
    # evenly spaced training timesteps, from the noisiest down (DDIM's "uniform" skip)
    t = torch.linspace(total - 1, 0, num_steps, dtype=torch.float64).round().long()
    return _append_zero(vp_alpha_bar_to_sigma(alpha_bar[t]))


def vp_linear(num_steps: int, *, beta_min: float = 1e-4, beta_max: float = 0.02,
              num_train_steps: int = 1000) -> torch.Tensor:
    """DDPM linear-beta schedule (Ho et al. 2020) converted to sigma, ``num_steps`` of its timesteps."""
    betas = torch.linspace(beta_min, beta_max, num_train_steps, dtype=torch.float64)
    return _vp_subsample(torch.cumprod(1 - betas, 0), num_steps)


def vp_cosine(num_steps: int, *, s: float = 0.008, num_train_steps: int = 1000,
              max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17) converted to sigma."""
    t = torch.arange(num_train_steps + 1, dtype=torch.float64) / num_train_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return _vp_subsample(torch.cumprod(1 - betas, 0), num_steps)

