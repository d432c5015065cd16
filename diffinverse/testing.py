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

__all__ = ["adjoint_mismatch", "assert_adjoint", "assert_linear", "assert_composition_adjoint",
           "assert_pseudo_inverse"]


def _randn(shape: Sequence[int], like: torch.Tensor | None, generator: torch.Generator,
           dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    shape = tuple(shape) if like is None else tuple(like.shape)
    return torch.randn(shape, generator=generator, dtype=dtype, device="cpu").to(device)


def adjoint_mismatch(op, x_shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu", seed: int = 0) -> float:
    """Relative dot-product mismatch of ``A`` and ``A_adjoint``, the larger of two probes.

    1. Random ``y``: ``|<A x, y> - <x, A^H y>| / (||A x|| ||y||)``. It catches any error in
       ``A^H``, but for random ``x, y`` it is diluted by their near-orthogonality (a 1e-4 scale
       error in ``A^H`` shows up as ~1e-4 / sqrt(number of pixels)).
    2. ``y = A x``: ``|<A x, A x> - <x, A^H A x>| / ||A x||^2``, which shows a scale or
       symmetric error in ``A^H`` at its full relative size.

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
    norm_ax = Ax.norm().item()
    if norm_ax == 0:
        raise AssertionError("A(x) is identically zero for a random x: the adjoint test is vacuous")
    random_probe = abs(torch.sum(Ax * y).item() - torch.sum(x * Aty).item()) / (norm_ax * y.norm().item())
    normal_probe = abs(norm_ax ** 2 - torch.sum(x * op.A_adjoint(Ax)).item()) / norm_ax ** 2
    return max(random_probe, normal_probe)


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


def assert_pseudo_inverse(op, x_shape: Sequence[int], *, rtol: float = 1e-6,
                          dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                          seed: int = 0) -> None:
    """Assert the first Moore-Penrose condition ``A(A_dagger(A x)) == A x`` to ``rtol`` (relative).

    It holds for an exact pseudo-inverse (zero-filled inpainting/MRI, SENSE, minimum-norm least
    squares) and fails for a regularised inverse (Wiener, Tikhonov) or a wrong ``A_dagger``.

    Raises:
        AssertionError: naming the error when the condition fails.
    """
    g = torch.Generator().manual_seed(seed)
    x = _randn(x_shape, None, g, dtype, device)
    y = op.A(x)
    err = ((op.A(op.A_dagger(y)) - y).norm() / y.norm().clamp_min(1e-30)).item()
    if not err <= rtol:
        raise AssertionError(f"{type(op).__name__}: A(A_dagger(A x)) differs from A x by "
                             f"{err:.3e} > {rtol:.1e}")
