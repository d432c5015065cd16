"""A 2-D prior on a stack of images: ``(B, C, S, H, W)`` denoised one image at a time.

Two things in the package are stacks of 2-D images: the images of the ``M`` ESPIRiT map sets of a
soft-SENSE reconstruction, ``(B, 2, M, H, W)`` (:mod:`diffinverse.pipelines.fastmri`), and the
planes of a volume along one axis (:class:`~diffinverse.samplers.mbir.DiffusionMBIR`). Both fold
the stack into the batch of a 2-D prior with :func:`to_planes` and unfold the result with
:func:`from_planes`; :class:`ImageStackPrior` does it inside the prior, so that any sampler works
on a stack unchanged.
"""
from __future__ import annotations

import torch

from diffinverse.priors.base import Prior

__all__ = ["ImageStackPrior", "to_planes", "from_planes"]


def to_planes(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(B * S, C, h, w)``: the 2-D images perpendicular to ``axis`` (of size
    ``S``), batch item by batch item (item ``b``'s planes are rows ``b * S`` to ``b * S + S - 1``).

    Args:
        x: a 5-D tensor ``(B, C, D, H, W)``.
        axis: 2, 3 or 4.
    """
    planes = x.movedim(axis, 1)                                  # (B, S, C, h, w)
    return planes.reshape(-1, *planes.shape[2:])


def from_planes(flat: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """The inverse of :func:`to_planes`: ``(B * S, C, h, w)`` back to ``like``'s shape."""
    planes_shape = like.movedim(axis, 1).shape
    return flat.reshape(planes_shape).movedim(1, axis)


class ImageStackPrior(Prior):
    """``D`` of a 2-D prior applied to each image of a stack ``(B, C, S, H, W)`` on its own.

    The stack's images are treated as independent draws of the prior (a product prior), each at the
    noise level of its batch item. A 4-D input ``(B, C, H, W)`` goes to the prior unchanged.

    Args:
        prior: a 2-D :class:`~diffinverse.priors.base.Prior` (or any deepinv denoiser
            ``prior(x, sigma)``). Its ``channels``, noise range and ``data_range`` are this prior's.
    """

    def __init__(self, prior):
        super().__init__()
        if not callable(prior):
            raise TypeError(f"prior must be a denoiser callable as prior(x, sigma), got {type(prior).__name__}")
        self.prior = prior
        for name in ("channels", "sigma_min", "sigma_max", "data_range"):
            if hasattr(prior, name):
                setattr(self, name, getattr(prior, name))

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x: (B, C, S, H, W)`` (or ``(B, C, H, W)``), ``sigma: (B,)`` -> same shape as ``x``."""
        inner = self.prior.denoise if isinstance(self.prior, Prior) else self.prior
        if x.ndim == 4:
            return inner(x, sigma)
        if x.ndim != 5:
            raise ValueError(f"ImageStackPrior expects (B, C, S, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
        out = inner(to_planes(x, 2), sigma.repeat_interleave(x.shape[2]))
        return from_planes(out, x, 2)
