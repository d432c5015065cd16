"""Input checks shared by the samplers and the classical solvers: each bad input gets a message naming it.

Checks that read a tensor's values (NaN, infinity) return a 0-d bool tensor on its device instead
of a Python bool where a caller wants to queue GPU work before reading the answer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from deepinv.physics import LinearPhysics

__all__ = ["all_finite", "check_batch", "check_batch_physics", "check_finite", "check_physics", "check_x_init",
           "checked_generator", "state_like"]


def all_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """Whether ``t`` holds only finite values, as a 0-d bool tensor on its device (not read back:
    no host synchronisation); raises ``TypeError`` unless ``t`` is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return torch.isfinite(t).all()


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``t`` is a tensor, ``ValueError`` if it holds NaN or infinite values."""
    if not all_finite(t, name):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_batch(y: torch.Tensor) -> None:
    """Raise unless ``y`` is a tensor with a non-empty batch dimension ``(B, ...)``, ``B >= 1``."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim == 0 or y.shape[0] == 0:
        raise ValueError(f"y must be a batch (B, ...) with B >= 1, got shape {tuple(y.shape)}")


def check_physics(physics) -> None:
    """Raise ``TypeError`` unless ``physics`` has a forward operator ``A``."""
    if not callable(getattr(physics, "A", None)):
        raise TypeError(f"physics must be a deepinv Physics (with a forward operator A), got {type(physics).__name__}")


def check_x_init(x_init: torch.Tensor, y: torch.Tensor, physics) -> None:
    """Raise ``ValueError`` unless ``x_init`` has ``y``'s batch size and, for a linear physics, the
    shape of ``A^H y`` (a nonlinear physics checks its input itself, at its first call)."""
    if x_init.shape[0] != y.shape[0]:
        raise ValueError(f"x_init has batch size {x_init.shape[0]}, y has {y.shape[0]}")
    if isinstance(physics, LinearPhysics):
        with torch.no_grad():
            shape = tuple(physics.A_adjoint(y).shape)
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, but the physics' images (A^H y) "
                             f"have shape {shape}")


def checked_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator`` itself, or a fresh one on ``device`` when it is ``None`` (seeded from the OS:
    the global random state is never used)."""
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                        f"got {type(generator).__name__}")
    return generator


def state_like(y: torch.Tensor, physics, x_init: torch.Tensor | None,
               x_shape: Sequence[int] | None) -> torch.Tensor:
    """An uninitialised tensor with the image's shape, dtype and device: ``x_init``'s, ``x_shape``
    (in ``y``'s floating dtype), or that of ``physics.A_adjoint(y)``."""
    if x_init is not None:
        check_x_init(x_init, y, physics)
        return torch.empty_like(x_init)
    if x_shape is not None:
        return torch.empty(tuple(x_shape), dtype=y.dtype if y.is_floating_point() else torch.float32,
                           device=y.device)
    if not hasattr(physics, "A_adjoint"):
        raise ValueError(f"{type(physics).__name__} has no A_adjoint: give x_init or x_shape")
    with torch.no_grad():
        return torch.empty_like(physics.A_adjoint(y))


def check_batch_physics(physics, y_n: torch.Tensor, like: torch.Tensor, n: int) -> None:
    """Raise ``ValueError`` unless ``physics`` maps ``n`` stacked copies of the batch ``like`` to
    measurements shaped like ``y_n``."""
    x = torch.zeros(n * like.shape[0], *like.shape[1:], dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            shape = tuple(physics.A(x).shape)
    except RuntimeError as err:
        raise ValueError(
            f"the physics does not accept a batch of {n} stacked copies of the {like.shape[0]} items "
            f"(per-item parameters?): pass physics_for_batch to posterior()") from err
    if shape != tuple(y_n.shape):
        raise ValueError(f"on {n} stacked copies the physics returns shape {shape}, expected "
                         f"{tuple(y_n.shape)}: pass physics_for_batch to posterior()")
