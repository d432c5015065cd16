"""Small conventions shared across the package: complex magnitude, per-item scalars, prior range.

* :func:`magnitude`: the modulus of a 2-channel complex image (``C = 2``: real, imaginary), the
  channel itself for a 1-channel image; what metrics and figures compare.
* :func:`per_item`: a ``(B,)`` vector of per-item scalars viewed to broadcast over ``(B, ...)``.
* :func:`prior_range_scale` / :func:`to_prior_range` / :func:`from_prior_range`: the intensity
  convention of the shipped priors, "the magnitude's 99.5th percentile is 1" (``docs/design.md``:
  intensities), and its inverse, so that code feeding real data into a prior scales in and back
  in one place.
"""
from __future__ import annotations

import torch

__all__ = ["PRIOR_RANGE_QUANTILE", "magnitude", "per_item", "prior_range_scale", "to_prior_range",
           "from_prior_range"]

PRIOR_RANGE_QUANTILE = 0.995
"""The quantile of the magnitude that the shipped priors' training images have at 1."""


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(B, ...)``: the modulus over the channels (``sqrt(re^2 + im^2)`` for
    ``C = 2``), the channel itself for ``C = 1``."""
    if x.ndim < 2:
        raise ValueError(f"magnitude needs a batch of images (B, C, ...), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x[:, 0]
    return x.square().sum(1).sqrt()


def per_item(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` values viewed as ``(B, 1, ..., 1)`` to broadcast over ``like: (B, ...)``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def prior_range_scale(x: torch.Tensor, *, quantile: float = PRIOR_RANGE_QUANTILE) -> torch.Tensor:
    """``(B,)`` scales ``s`` such that ``x / s`` has its magnitude's ``quantile`` at 1.

    Args:
        x: ``(B, C, ...)`` images (``C = 2`` complex, or 1 real channel).
        quantile: in ``(0, 1]``; the shipped priors' convention is 0.995.

    Returns:
        ``(B,)`` positive scales (clamped at ``1e-12`` for an all-zero image), in ``x``'s dtype.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    mag = magnitude(x).flatten(1)
    return torch.quantile(mag.float(), quantile, dim=1).to(x.dtype).clamp_min(1e-12)


def to_prior_range(x: torch.Tensor, *, quantile: float = PRIOR_RANGE_QUANTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / s, s)``: ``x`` scaled into the prior's range, with the ``(B,)`` scales to undo it."""
    s = prior_range_scale(x, quantile=quantile)
    return x / per_item(s, x), s


def from_prior_range(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Undo :func:`to_prior_range`: ``x * s`` per item (``scale`` a ``(B,)`` tensor or a number)."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return x * (per_item(scale, x) if scale.ndim else scale)
