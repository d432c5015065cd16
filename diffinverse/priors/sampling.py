"""Unconditional sampling from a prior: the deterministic Heun sampler of EDM.

Used to check what a prior has learned (samples should look like, and have the intensity
statistics of, its training data) — not for reconstruction, which is the samplers' job.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, Algorithm 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Prior
from .schedules import karras

__all__ = ["sample_heun"]


@torch.inference_mode()
def sample_heun(prior: Prior, shape: Sequence[int], *, num_steps: int = 32,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                sigma_max: float | None = None) -> torch.Tensor:
    """Draw ``shape[0]`` images from ``prior`` by integrating the probability-flow ODE.

    Args:
        prior: the denoiser ``D(x, sigma)``.
        shape: ``(N, C, H, W)`` of the samples; ``C`` must equal ``prior.channels``.
        num_steps: number of sigma levels (Heun: ``2 * num_steps - 1`` network evaluations).
        generator: source of the initial noise (CPU generator; the global RNG is untouched).
        device: where the samples are computed.
        sigma_max: start level, default ``prior.sigma_max``.

    Returns:
        Samples ``(N, C, H, W)`` in the prior's data units.
    """
    sigmas = karras(num_steps, prior.sigma_min, sigma_max or prior.sigma_max)
    x = torch.randn(tuple(shape), generator=generator).to(device) * sigmas[0].item()
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        # Algorithm 1, lines 4-5: Euler step along dx/dsigma = (x - D(x, sigma)) / sigma
        d = (x - prior(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            # lines 6-8: second-order (trapezoidal) correction
            d_next = (x_next - prior(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x
