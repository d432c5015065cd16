"""Decomposed Diffusion Sampling (DDS): data consistency by CG on the Tweedie estimate, then DDIM.

Each step (Chung, Lee & Ye 2024, Algorithm 1), in VE variables:

    x0_hat  = D(x, sigma),  eps_hat = (x - x0_hat) / sigma                          (Tweedie)
    x0_dc   = CG_M[(I + gamma A^H A) x = x0_hat + gamma A^H y], from x0_hat           (Eq. 13)
    x_next  = x0_dc + sigma_next (eta n + sqrt(1 - eta^2) eps_hat)                   (DDIM re-noising)

The network is evaluated, never differentiated (one forward pass per step, no backpropagation).
The re-noising is the official code's (github.com/HJ-harry/DDS): it divides ``sqrt(1 - abar_next)``
between fresh noise (weight ``eta``, 0.85 in every shipped script) and the network's own noise
estimate; written for ``x_ve = x_vp / sqrt(abar)`` it is the line above. The last step returns
``x0_dc``.

Scale: ``gamma`` is given relative to ``||A||^2`` (the system solved is ``(I + gamma / ||A||^2 A^H A)``,
:func:`~diffinverse.samplers.base.operator_scale`), so one value suits a CT projector and an
orthonormal MRI operator alike; for MRI (``||A|| = 1``) it is the paper's ``gamma``.

``data_consistency="projection"`` replaces the CG by ``x0_hat - A^dagger (A x0_hat - y)``, the exact
projection onto ``{x : A x = y}`` where ``physics.A_dagger`` is the pseudo-inverse (single-coil
MRI, inpainting; not the regularised SENSE of the multi-coil operator).

References:
    Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems",
    ICLR 2024.
    Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from deepinv.physics import LinearPhysics

from diffinverse.samplers.base import DiffusionSampler, operator_scale
from diffinverse.samplers.data_consistency import cg_data_consistency

__all__ = ["DDS", "renoise"]

NUM_STEPS, GAMMA, ETA, SIGMA_START = 50, 10.0, 1.0, 0.2
"""Defaults: steps of the full grid, the relative CG weight, the share of fresh noise and the
warm-start level, chosen on the tuning images of every task of :mod:`diffinverse.tasks`
(``benchmarks/samplers/tune_defaults.py``; the official scripts use ``eta`` 0.85 from a cold start)."""


class DDS(DiffusionSampler):
    """Decomposed Diffusion Sampling on a VE prior, for linear physics.

    Args:
        prior: the denoiser ``D(x, sigma)``.
        num_steps: steps of the full grid (one network forward each; the paper uses 50).
        gamma: weight of the data term in the CG system, relative to ``||A||^2`` (the paper's
            multi-coil MRI setting: 1).
        cg_iters: CG iterations per step (the paper: 5).
        eta: share of fresh noise in the re-noising, in ``[0, 1]`` (official scripts: 0.85;
            0 is deterministic DDIM).
        data_consistency: ``"cg"`` (default) or ``"projection"`` (see the module notes).
        sigma_start: warm-start level (default ``SIGMA_START``, from the Tikhonov warm start;
            ``None``: a cold start over the whole grid).
        **kwargs: schedule, progress, callback, autocast, channels_last and compile options of
            :class:`~diffinverse.samplers.base.DiffusionSampler`.

    References:
        Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse
        Problems", ICLR 2024.
    """

    step_size_hint = "gamma"

    def __init__(self, prior, *, num_steps: int = NUM_STEPS, gamma: float = GAMMA, cg_iters: int = 5,
                 eta: float = ETA, data_consistency: Literal["cg", "projection"] = "cg",
                 sigma_start: float | None = SIGMA_START, **kwargs):
        super().__init__(prior, num_steps=num_steps, sigma_start=sigma_start, **kwargs)
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be finite and > 0, got {gamma}")
        if int(cg_iters) != cg_iters or cg_iters < 1:
            raise ValueError(f"cg_iters must be an integer >= 1, got {cg_iters}")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if data_consistency not in ("cg", "projection"):
            raise ValueError(f"data_consistency must be 'cg' or 'projection', got {data_consistency!r}")
        self.gamma = float(gamma)
        self.cg_iters = int(cg_iters)
        self.eta = float(eta)
        self.data_consistency = data_consistency

    def init_state(self, x, y, physics):
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"DDS needs a linear physics (A^H A in its CG), got {type(physics).__name__}")
        # the CG weight relative to ||A||^2 (a float: DDS's step is not captured as a CUDA graph)
        return {"aty": physics.A_adjoint(y), "gamma": self.gamma / operator_scale(physics, x)}

    def draws_noise(self, sigma, sigma_next):
        return sigma_next > 0

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        # Tweedie: x0_hat = D(x, sigma), and the network's noise estimate eps_hat = (x - x0_hat) / sigma
        with torch.no_grad():
            x0_hat = self.denoise(x, sigma)
        # Eq. 13: data consistency on the clean estimate (CG from x0_hat, or the exact projection)
        if self.data_consistency == "cg":
            x0_dc = cg_data_consistency(x0_hat, state["aty"], physics, gamma=state["gamma"],
                                        num_iters=self.cg_iters)
        else:
            x0_dc = x0_hat - physics.A_dagger(physics.A(x0_hat) - y)
        if noise is None:   # the last step, sigma_next = 0
            return x0_dc, x0_dc
        # DDIM re-noising with the network's eps_hat and fresh noise n, mixed by eta
        return renoise(x0_dc, (x - x0_hat) / sigma.to(x.dtype), noise, sigma_next, self.eta), x0_dc


def renoise(x0: torch.Tensor, eps_hat: torch.Tensor, noise: torch.Tensor, sigma_next: torch.Tensor,
            eta: float) -> torch.Tensor:
    """DDS's re-noising to ``sigma_next``: ``x0 + sigma_next (eta n + sqrt(1 - eta^2) eps_hat)``, the
    official code's ``sqrt(abar') x0 + sqrt(1 - abar') (eta z + sqrt(1 - eta^2) eps)`` in VE units."""
    return x0 + sigma_next.to(x0.dtype) * (eta * noise + math.sqrt(1 - eta**2) * eps_hat)
