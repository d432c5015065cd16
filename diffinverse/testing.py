"""Reusable correctness checks for operators and priors.

These are the checks the package's own tests use; they are public so that users can test
their own operators (any deepinv ``LinearPhysics``) and priors the same way.

Example:
    >>> from diffinverse.testing import assert_adjoint
    >>> assert_adjoint(my_operator, (1, 2, 64, 64))
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["adjoint_mismatch", "assert_adjoint", "assert_linear", "assert_composition_adjoint"]


def _randn(shape: Sequence[int], like: torch.Tensor | None, generator: torch.Generator,
           dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    shape = tuple(shape) if like is None else tuple(like.shape)
    return torch.randn(shape, generator=generator, dtype=dtype, device="cpu").to(device)


def adjoint_mismatch(op, x_shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu", seed: int = 0) -> float:
    """Relative dot-product mismatch ``|<A x, y> - <x, A^H y>| / (||A x|| ||y||)``.

    Args:
        op: any object with ``A(x)`` and ``A_adjoint(y)`` (e.g. a deepinv ``LinearPhysics``).
        x_shape: shape of the input ``x``, e.g. ``(B, C, H, W)``.
        dtype: dtype of the random test vectors (float64 isolates the operator's maths from
            round-off; use float32 for float-only backends such as ASTRA).
        device: where the test vectors live.
        seed: seed of the random test vectors (a local generator; the global RNG is untouched).

    Returns:
        The relative mismatch, a float; 0 for an exact adjoint pair.
    """
    g = torch.Generator().manual_seed(seed)
    x = _randn(x_shape, None, g, dtype, device)
    Ax = op.A(x)
    y = _randn(Ax.shape, Ax, g, dtype, device)
    Aty = op.A_adjoint(y)
    if Aty.shape != x.shape:
        raise AssertionError(f"A_adjoint returned shape {tuple(Aty.shape)}, expected {tuple(x.shape)}")
    lhs = torch.sum(Ax * y).item()
    rhs = torch.sum(x * Aty).item()
    scale = (Ax.norm() * y.norm()).item()
    if scale == 0:
        raise AssertionError("A(x) is identically zero for a random x: the adjoint test is vacuous")
    return abs(lhs - rhs) / scale


def assert_adjoint(op, x_shape: Sequence[int], *, rtol: float = 1e-6,
                   dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                   seed: int = 0) -> None:
    """Assert the dot-product test ``<A x, y> == <x, A^H y>`` to ``rtol`` (relative).

    Raises:
        AssertionError: naming the mismatch when the test fails.
    """
    err = adjoint_mismatch(op, x_shape, dtype=dtype, device=device, seed=seed)
    if not err <= rtol:
        raise AssertionError(f"{type(op).__name__}: adjoint mismatch {err:.3e} > {rtol:.1e}")


def assert_linear(op, x_shape: Sequence[int], *, rtol: float = 1e-6,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                  seed: int = 0) -> None:
    """Assert ``A(a x1 + b x2) == a A(x1) + b A(x2)`` to ``rtol`` (relative to the norm)."""
    g = torch.Generator().manual_seed(seed)
    x1 = _randn(x_shape, None, g, dtype, device)
    x2 = _randn(x_shape, None, g, dtype, device)
    a, b = 0.7, -1.3
    lhs = op.A(a * x1 + b * x2)
    rhs = a * op.A(x1) + b * op.A(x2)
    err = ((lhs - rhs).norm() / rhs.norm().clamp_min(1e-30)).item()
    if not err <= rtol:
        raise AssertionError(f"{type(op).__name__}: linearity error {err:.3e} > {rtol:.1e}")


def assert_composition_adjoint(op_outer, op_inner, x_shape: Sequence[int], *, rtol: float = 1e-6,
                               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                               seed: int = 0) -> None:
    """Assert that ``op_outer * op_inner`` applies ``A_outer(A_inner(x))`` and is adjoint-consistent."""
    comp = op_outer * op_inner
    g = torch.Generator().manual_seed(seed)
    x = _randn(x_shape, None, g, dtype, device)
    expected = op_outer.A(op_inner.A(x))
    err = ((comp.A(x) - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    if not err <= rtol:
        raise AssertionError(f"composition A differs from A_outer(A_inner(x)) by {err:.3e}")
    assert_adjoint(comp, x_shape, rtol=rtol, dtype=dtype, device=device, seed=seed)
