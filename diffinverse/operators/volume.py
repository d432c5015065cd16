"""Volumes from 2D operators: apply one 2D operator to every slice, batched.

``SliceStack(op2d, axis)`` folds the sliced axis of a volume (B, C, D, H, W) into the batch,
calls the 2D operator once on all slices, and unfolds the result. Slice ``s`` of volume ``b``
is item ``b * S + s`` of the 2D operator's batch (S = number of slices), so per-slice
parameters are simply a 2D operator whose batch dimension is ``B * S`` in that order, e.g.
``Inpainting(fold_slices(masks_3d, axis=2))`` for per-slice masks ``(B, 1, D, H, W)``, or an
MRI operator with one mask per slice ``(D, H, W)`` when B = 1.

References:
    Chung, Ryu, Ye, "Solving 3D inverse problems using pre-trained 2D diffusion models",
    CVPR 2023 (DiffusionMBIR: 2D priors and operators applied slice by slice).
"""
from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics

__all__ = ["SliceStack", "fold_slices", "unfold_slices"]

_AXES = (2, 3, 4)


def _check_axis(axis) -> None:
    if isinstance(axis, bool) or axis not in _AXES:
        raise ValueError(f"axis: expected one of {_AXES} (a spatial axis of (B, C, D, H, W)), "
                         f"got {axis!r}")


def fold_slices(x: torch.Tensor, axis: int = 2) -> torch.Tensor:
    """Move the sliced axis of a volume into the batch.

    Args:
        x: (B, C, D, H, W) volume (or any (B, C, ...) tensor with ``axis`` < x.ndim).
        axis: the sliced axis, 2, 3 or 4.

    Returns:
        (B * S, C, ...) with the sliced axis (size S) removed; item ``b * S + s`` is slice
        ``s`` of volume ``b``.
    """
    _check_axis(axis)
    if not isinstance(x, torch.Tensor) or x.ndim <= axis:
        raise ValueError(f"x: expected a tensor with more than {axis} dims, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    x = x.movedim(axis, 1)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_slices(y: torch.Tensor, batch: int, axis: int = 2) -> torch.Tensor:
    """Inverse of :func:`fold_slices`: (B * S, ...) -> (B, ..., S at ``axis``, ...)."""
    _check_axis(axis)
    if y.shape[0] % batch:
        raise ValueError(f"y: leading size {y.shape[0]} is not a multiple of the batch {batch}")
    y = y.reshape(batch, y.shape[0] // batch, *y.shape[1:])
    if y.ndim <= axis:
        raise ValueError(f"y: the 2D operator's output {tuple(y.shape[2:])} has too few dims "
                         f"to put the slice axis back at {axis}")
    return y.movedim(1, axis)


class SliceStack(LinearPhysics):
    """A 2D operator applied to every slice of a volume (one batched call, no Python loop).

    The slice axis keeps its position: for ``axis=2`` and an image operator, (B, C, D, H, W)
    maps to (B, C', D, H', W'); for an operator with more output dims (e.g. multi-coil
    k-space (B, 2, N_coils, H, W)) the slice axis is inserted at ``axis`` of the output too.
    The adjoint is exact when the 2D operator's is; ``A_dagger`` is the 2D ``A_dagger`` of
    each slice; ``physics(x)`` uses the 2D operator's own noise and sensor models.

    Args:
        op2d: any deepinv ``LinearPhysics`` on (N, C, H, W) images. Parameters with a batch
            dimension (e.g. per-slice masks) must have ``B * S`` items, ordered as
            :func:`fold_slices` orders them (volume-major).
        axis: the sliced axis of x: 2 (slices D, images H x W), 3 or 4.

    Shapes:
        x: (B, C, D, H, W); y: op2d's output shape with B * S split and S put back at ``axis``.

    Example:
        >>> vol_op = SliceStack(Blur(gaussian_kernel(1.5)), axis=2)
        >>> y = vol_op(x)                  # x: (1, 1, 32, 64, 64)

    References:
        Chung, Ryu, Ye, CVPR 2023 (DiffusionMBIR).
    """

    def __init__(self, op2d: LinearPhysics, axis: int = 2):
        if not isinstance(op2d, LinearPhysics):
            raise TypeError(f"op2d: expected a deepinv LinearPhysics, got {type(op2d).__name__}")
        _check_axis(axis)
        super().__init__(noise_model=op2d.noise_model, sensor_model=op2d.sensor_model)
        self.op2d = op2d
        self.axis = axis

    def _fold_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 5:
            raise ValueError(f"x: expected a volume (B, C, D, H, W), got {tuple(x.shape)}")
        return fold_slices(x, self.axis)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Apply the 2D forward operator to every slice."""
        return unfold_slices(self.op2d.A(self._fold_x(x)), x.shape[0], self.axis)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Apply the 2D adjoint to every slice: y -> (B, C, D, H, W)."""
        return unfold_slices(self.op2d.A_adjoint(fold_slices(y, self.axis)), y.shape[0], self.axis)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The 2D ``A_dagger`` of every slice (exact pseudo-inverse if the 2D one is)."""
        return unfold_slices(self.op2d.A_dagger(fold_slices(y, self.axis)), y.shape[0], self.axis)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Noisy measurements of every slice, with the 2D operator's own ``forward``."""
        return unfold_slices(self.op2d(self._fold_x(x), **kwargs), x.shape[0], self.axis)
