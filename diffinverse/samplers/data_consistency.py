"""Data consistency by a few CG iterations: the step that DDS and DiffusionMBIR share.

Given a starting estimate ``x_start`` (the Tweedie estimate ``x0_hat`` in DDS, the noisy state or
``x0_hat`` in DiffusionMBIR) and measurements ``y = A x + noise``, the step runs a few
conjugate-gradient iterations, started at ``x_start``, on

    (mu I + gamma A^H A + P) x = mu x_start + gamma A^H y + p,

the normal equations of ``mu ||x - x_start||^2 / 2 + gamma ||A x - y||^2 / 2`` plus an optional
quadratic penalty with normal operator ``P`` and right-hand side ``p`` (ADMM-TV's
``rho D^T D`` and ``rho D^T (z - u)``). DDS (Chung, Lee & Ye 2024, Eq. 13, Algorithm 1) uses
``mu = 1``, no penalty and 5 iterations (a Krylov subspace around ``x0_hat`` keeps the update near
the clean data manifold; 10 were worse in the paper); DiffusionMBIR (Chung, Ryu & Ye 2023,
Algorithm 1) uses ``mu = 0``, ``gamma = 1``, the ADMM penalty and 1 iteration.

The CG is deepinv's (:func:`deepinv.optim.utils.conjugate_gradient`), with inner products per
batch item: for a volume ``(B, C, D, H, W)`` they run over the whole volume.

The samplers' default warm start, :func:`tikhonov_start`, is the same solve from zero with a small
proximity weight: Tikhonov-regularised least squares.

References:
    Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems",
    ICLR 2024.
    Chung, Ryu & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion Models", CVPR 2023.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from deepinv.optim.utils import conjugate_gradient
from deepinv.physics import LinearPhysics

from diffinverse.operators.norm import operator_norm_squared

__all__ = ["TIKHONOV_LAMBDA", "cg_data_consistency", "tikhonov_start"]

TIKHONOV_LAMBDA = 0.01
"""Weight of :func:`tikhonov_start`'s penalty, relative to ``||A||^2``."""


def cg_data_consistency(x_start: torch.Tensor, aty: torch.Tensor, physics: LinearPhysics, *, num_iters: int,
                        gamma: float = 1.0, mu: float = 1.0,
                        penalty: tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor] | None = None
                        ) -> torch.Tensor:
    """``num_iters`` CG iterations on ``(mu I + gamma A^H A + P) x = mu x_start + gamma A^H y + p``
    from ``x_start``.

    Args:
        x_start: ``(B, ...)`` the starting point and proximity centre (not modified).
        aty: ``(B, ...)`` ``A^H y``, computed once per run by the caller.
        physics: the linear forward model (its ``A_adjoint_A`` is used).
        num_iters: CG iterations (``>= 1``); with as many iterations as unknowns the solve is exact.
        gamma: weight of the data term (``> 0``).
        mu: weight of the proximity term ``||x - x_start||^2 / 2`` (``>= 0``).
        penalty: ``(P, p)``: a symmetric positive semi-definite operator and its right-hand side,
            or ``None``.

    Returns:
        ``(B, ...)`` the data-consistent estimate, shaped like ``x_start``.
    """
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be finite and > 0, got {gamma}")
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be finite and >= 0, got {mu}")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    if not isinstance(physics, LinearPhysics):
        raise TypeError(f"data consistency by CG needs a linear physics (A^H A), got {type(physics).__name__}")
    normal_penalty, rhs_penalty = penalty if penalty is not None else (None, None)

    def normal(v: torch.Tensor) -> torch.Tensor:
        out = gamma * physics.A_adjoint_A(v)
        if mu:
            out = out + mu * v
        return out if normal_penalty is None else out + normal_penalty(v)

    rhs = gamma * aty
    if mu:
        rhs = rhs + mu * x_start
    if rhs_penalty is not None:
        rhs = rhs + rhs_penalty
    # tol 0: exactly num_iters iterations, as in the papers (not a solve to convergence)
    return conjugate_gradient(normal, rhs, max_iter=num_iters, tol=0.0, init=x_start, parallel_dim=0)


@torch.no_grad()
def tikhonov_start(y: torch.Tensor, physics: LinearPhysics, *, lam: float = TIKHONOV_LAMBDA,
                   num_iters: int = 30) -> torch.Tensor:
    """``argmin_x ||A x - y||^2 + lam ||A||^2 ||x||^2`` by ``num_iters`` CG iterations from zero.

    The default warm start of the samplers: unlike an unregularised pseudo-inverse (which blows
    up the noise of a blur or a sparse-view CT) it is bounded by the data, and with the weight
    relative to ``||A||^2`` (:func:`~diffinverse.operators.operator_norm_squared`) the same
    ``lam`` suits every operator scale. For a masked orthonormal operator (single-coil MRI,
    inpainting) it is the zero-filled reconstruction divided by ``1 + lam``.

    Args:
        y: ``(B, ...)`` measurements.
        physics: the linear forward model.
        lam: the penalty's weight relative to ``||A||^2`` (``> 0``).
        num_iters: CG iterations.

    Returns:
        ``(B, ...)`` shaped like ``physics.A_adjoint(y)``.
    """
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be finite and > 0, got {lam}")
    aty = physics.A_adjoint(y)
    scale = operator_norm_squared(physics, aty)
    return cg_data_consistency(torch.zeros_like(aty), aty, physics, num_iters=num_iters, mu=lam * scale)
