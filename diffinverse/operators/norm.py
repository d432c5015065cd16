"""The operator norm of a linear forward model: the scale that makes step sizes scale-free.

A CT projector's ``||A||`` grows with the number of views and the image size, a 4x
super-resolution's is 1/4, an orthonormal MRI operator's is 1. Step sizes and weights that
multiply ``A^H A`` (DPS's guidance, RED-Diff's data term, the CG weight of DDS) are divided by
``||A||^2`` in the samplers, so that one setting means the same on every operator.
"""
from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics

__all__ = ["operator_norm_squared"]


@torch.no_grad()
def operator_norm_squared(physics: LinearPhysics, like: torch.Tensor, *, num_iters: int = 30) -> float:
    """``||A||^2``, the largest eigenvalue of ``A^H A``, by power iteration.

    Starts from a seeded standard normal draw of a local generator (the global RNG is untouched and
    every call returns the same value for the same operator). The estimate approaches ``||A||^2``
    from below; for a projection (masked orthonormal MRI, inpainting) it is exact after one
    iteration.

    Args:
        physics: a linear forward model.
        like: a tensor shaped like ``x`` (its shape, dtype and device are used; ``(B, ...)``: the
            norm of the operator on the whole batch).
        num_iters: power iterations (``>= 1``).

    Returns:
        ``||A||^2`` as a float (0 for the zero operator).
    """
    if not isinstance(physics, LinearPhysics):
        raise TypeError(f"the operator norm needs a linear physics (A^H A), got {type(physics).__name__}")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    g = torch.Generator().manual_seed(0)
    v = torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    value = 0.0
    for _ in range(num_iters):
        w = physics.A_adjoint_A(v)
        value = w.norm().item()
        if value == 0.0:
            return 0.0
        v = w / value
    return value
