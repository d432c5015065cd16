"""Data consistency on the Tweedie estimate: the step that DDS and DiffusionMBIR's Tweedie mode share.

Given the denoised estimate ``x0_hat`` and measurements ``y = A x + noise``, the step solves
approximately

    argmin_x  ||x - x0_hat||^2 / 2 + gamma ||A x - y||^2 / 2,
    i.e.      (I + gamma A^H A) x = x0_hat + gamma A^H y,

by a few conjugate-gradient iterations started at ``x0_hat`` (DDS, Chung, Lee & Ye 2024, Eq. 13 and
Algorithm 1: a Krylov subspace around ``x0_hat`` keeps the update on the clean data manifold; 5
iterations in the paper, which found 10 worse). The CG is deepinv's
(:func:`deepinv.optim.utils.conjugate_gradient`), with inner products per batch item: for a volume
``(B, C, D, H, W)`` they run over the whole volume.

References:
    Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems",
    ICLR 2024.
"""
from __future__ import annotations

import math

import torch
from deepinv.optim.utils import conjugate_gradient
from deepinv.physics import LinearPhysics

__all__ = ["tweedie_data_consistency"]


def tweedie_data_consistency(x0_hat: torch.Tensor, aty: torch.Tensor, physics: LinearPhysics, *, gamma: float,
                             num_iters: int) -> torch.Tensor:
    """``num_iters`` CG iterations on ``(I + gamma A^H A) x = x0_hat + gamma A^H y`` from ``x0_hat``.

    Args:
        x0_hat: ``(B, ...)`` the Tweedie estimate (not modified).
        aty: ``(B, ...)`` ``A^H y``, computed once per run by the caller.
        physics: the linear forward model (its ``A_adjoint_A`` is used).
        gamma: weight of the data term (``> 0``; larger trusts the measurements more).
        num_iters: CG iterations (``>= 1``); with as many iterations as unknowns the solve is exact.

    Returns:
        ``(B, ...)`` the data-consistent estimate, shaped like ``x0_hat``.
    """
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be finite and > 0, got {gamma}")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    if not isinstance(physics, LinearPhysics):
        raise TypeError(f"data consistency by CG needs a linear physics (A^H A), got {type(physics).__name__}")

    def normal(v: torch.Tensor) -> torch.Tensor:
        return v + gamma * physics.A_adjoint_A(v)

    # tol 0: exactly num_iters iterations, as in the paper (not a solve to convergence)
    return conjugate_gradient(normal, x0_hat + gamma * aty, max_iter=num_iters, tol=0.0, init=x0_hat,
                              parallel_dim=0)
