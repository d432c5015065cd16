"""DiffusionMBIR: a 2-D diffusion prior on the slices of a volume, ADMM-TV across them.

A volume ``(B, C, D, H, W)`` is reconstructed with a prior trained on 2-D images: the prior
denoises the planes perpendicular to ``axis`` (in chunks of ``chunk_size`` planes: memory is
bounded by the chunk, not the volume), and a total-variation term along ``axis`` (or all three
axes) ties the slices together, by ADMM whose split variables ``z, u`` persist across the
diffusion steps (Chung, Ryu & Ye 2023, Algorithm 1). Two modes:

``dc="noisy"`` (the paper's): per step, a VE predictor-corrector step on the noisy state
(reverse-diffusion predictor from ``sigma`` to ``sigma_next``, then one Langevin corrector at
``sigma_next`` with signal-to-noise ratio ``snr``), then one ADMM-TV iteration on that state with
``cg_iters`` CG iterations (official code: 1). Two network passes per step; the official code runs
2000 steps.

``dc="tweedie"`` (DDS, Chung, Lee & Ye 2024): per step, the Tweedie estimate ``x0_hat``, one
ADMM-TV iteration on it (5 CG iterations), then DDIM re-noising with the network's own noise
estimate mixed with fresh noise (``eta``, 0.85 in the official scripts), as :class:`~diffinverse.
samplers.dds.DDS`. One network pass per step; 50 steps.

The ADMM's ``x`` update is the CG step that DDS uses (:mod:`~diffinverse.samplers.data_consistency`),
with inner products over the whole volume. ``last_nfe`` counts network calls, one per chunk.

Official defaults (github.com/HJ-harry/DiffusionMBIR): CT (8 views) ``lam = 0.04, rho = 10``; MRI
``lam = 0.005, rho = 0.01``; chunks of 12 (CT) / 20 (MRI) slices; TV along the slice axis with a
circular boundary (here Neumann by default: the first and last slices of a volume are not
neighbours).

References:
    Chung, Ryu & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion Models", CVPR 2023.
    Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems",
    ICLR 2024.
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR
    2021 (predictor-corrector, Algorithms 2-3).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from deepinv.physics import LinearPhysics

from diffinverse.imaging import per_item
from diffinverse.priors.stack import from_planes, to_planes
from diffinverse.samplers.admm_tv import AdmmTV
from diffinverse.samplers.base import DiffusionSampler
from diffinverse.samplers.dds import renoise

__all__ = ["DiffusionMBIR"]


class DiffusionMBIR(DiffusionSampler):
    """3-D reconstruction from a 2-D prior: slice-wise diffusion and ADMM-TV across slices.

    Args:
        prior: a 2-D denoiser ``D(x, sigma)`` on ``(N, C, H, W)`` planes.
        dc: ``"tweedie"`` (DDS-style, default) or ``"noisy"`` (the paper's predictor-corrector).
        num_steps: steps of the full grid (default 50; the paper's noisy mode used 2000).
        axis: the volume axis the prior slices along (2, 3 or 4 of ``(B, C, D, H, W)``): it sees
            the planes perpendicular to it.
        tv: ``"slice"`` (TV along ``axis`` only, the paper's) or ``"all"`` (all three axes).
        lam, rho: TV weight and ADMM penalty (default the official CT values).
        cg_iters: CG iterations per ADMM step (default 5 for ``"tweedie"``, 1 for ``"noisy"``).
        boundary: ``"neumann"`` or ``"circular"`` (the official code's).
        eta: share of fresh noise in the Tweedie mode's re-noising.
        snr: the noisy mode's Langevin corrector signal-to-noise ratio.
        chunk_size: planes per network call (``>= 1``).
        **kwargs: schedule, warm start, progress, callback, autocast and compile options of
            :class:`~diffinverse.samplers.base.DiffusionSampler`.

    References:
        Chung, Ryu & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion Models",
        CVPR 2023.
    """

    step_size_hint = "the ADMM weights lam and rho (or use dc=\"tweedie\")"

    def __init__(self, prior, *, dc: Literal["tweedie", "noisy"] = "tweedie", num_steps: int = 50, axis: int = 2,
                 tv: Literal["slice", "all"] = "slice", lam: float = 0.04, rho: float = 10.0,
                 cg_iters: int | None = None, boundary: Literal["neumann", "circular"] = "neumann",
                 eta: float = 0.85, snr: float = 0.16, chunk_size: int = 12, **kwargs):
        super().__init__(prior, num_steps=num_steps, **kwargs)
        if dc not in ("tweedie", "noisy"):
            raise ValueError(f"dc must be 'tweedie' or 'noisy', got {dc!r}")
        if axis not in (2, 3, 4):
            raise ValueError(f"axis must be 2, 3 or 4 (a spatial axis of (B, C, D, H, W)), got {axis!r}")
        if tv not in ("slice", "all"):
            raise ValueError(f"tv must be 'slice' or 'all', got {tv!r}")
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if not (math.isfinite(snr) and snr > 0):
            raise ValueError(f"snr must be finite and > 0, got {snr}")
        self.dc, self.axis, self.tv = dc, axis, tv
        self.eta, self.snr, self.chunk_size = float(eta), float(snr), int(chunk_size)
        self.admm = AdmmTV(lam=lam, rho=rho, axes=(axis,) if tv == "slice" else (2, 3, 4), boundary=boundary,
                           cg_iters=cg_iters if cg_iters is not None else (5 if dc == "tweedie" else 1))

    @property
    def noise_draws(self) -> int:   # the noisy mode's predictor and corrector each draw noise
        return 2 if self.dc == "noisy" else 1

    def init_state(self, x, y, physics):
        if x.ndim != 5:
            raise ValueError(f"DiffusionMBIR reconstructs volumes (B, C, D, H, W); the physics' images have shape "
                             f"{tuple(x.shape)}")
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"DiffusionMBIR needs a linear physics (A^H A in its CG), got {type(physics).__name__}")
        return {"aty": physics.A_adjoint(y), **self.admm.init_state(x)}

    def draws_noise(self, sigma, sigma_next):
        return sigma_next > 0

    def denoise_volume(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D`` applied to the planes perpendicular to ``axis``, ``chunk_size`` planes per call."""
        with torch.no_grad():
            out = torch.cat([self.denoise(chunk, sigma) for chunk in to_planes(x, self.axis).split(self.chunk_size)])
        return from_planes(out, x, self.axis)

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        s, s_next = sigma.to(x.dtype), sigma_next.to(x.dtype)
        if self.dc == "tweedie":
            # DDS: Tweedie estimate, ADMM-TV on it, DDIM re-noising with eps_hat and fresh noise
            x0_hat = self.denoise_volume(x, sigma)
            x0_dc = self.admm.step(x0_hat, state["aty"], physics, state)
            if noise is None:
                return x0_dc, x0_dc
            return renoise(x0_dc, (x - x0_hat) / s, noise, sigma_next, self.eta), x0_dc
        # predictor (reverse diffusion, VE): x + (sigma^2 - sigma_next^2) score + sqrt(sigma^2 - sigma_next^2) z
        x0_hat = self.denoise_volume(x, sigma)
        x = x0_hat + (s_next / s) ** 2 * (x - x0_hat)   # the mean, x + (s^2 - s_next^2) (x0_hat - x) / s^2
        if noise is not None:
            x = x + (s**2 - s_next**2).sqrt() * noise[0]
            # corrector: one Langevin step at sigma_next, step size from the signal-to-noise ratio
            score = (self.denoise_volume(x, sigma_next) - x) / s_next**2
            ratio = noise[1].flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp_min(1e-12)
            step = per_item(2 * (self.snr * ratio) ** 2, x)
            x = x + step * score + (2 * step).sqrt() * noise[1]
        # one ADMM-TV iteration on the state
        return self.admm.step(x, state["aty"], physics, state), x0_hat
