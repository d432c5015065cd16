"""The prior interface: a denoiser ``D(x, sigma) = E[x0 | x0 + sigma * n = x]``.

The variance-exploding (VE) form is the package's single internal convention: a noisy image is
``x = x0 + sigma * n`` with ``n ~ N(0, I)`` and ``sigma`` in the units of the data. By Tweedie's
formula the MMSE denoiser and the score of the noisy density are tied by
``score(x, sigma) = grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma**2``.

A :class:`Prior` is a ``deepinv.models.Denoiser``, so it can be handed to deepinv's samplers and
iterative algorithms unchanged.
"""
from __future__ import annotations

import torch
from deepinv.models import Denoiser

__all__ = ["Prior", "as_sigma", "sigma_like"]


def as_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a ``(B,)`` tensor on ``x``'s device and dtype.

    Args:
        sigma: a float, a 0-d tensor, or a ``(B,)`` tensor (one noise level per batch item).
        x: the batch ``(B, ...)`` the noise levels belong to.

    Raises:
        ValueError: if ``sigma`` has the wrong shape, or is negative or non-finite.
    """
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    elif s.ndim != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a float or a ({x.shape[0]},) tensor, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must be finite and non-negative")
    return s


def sigma_like(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` sigma to ``(B, 1, ..., 1)`` so it broadcasts against ``x``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Prior(Denoiser):
    """Base class of all priors: an MMSE denoiser in VE form.

    Subclasses implement :meth:`denoise` on a validated ``(B,)`` sigma tensor.

    Attributes:
        channels: number of image channels (1 real, 2 for complex images as real/imag).
        sigma_min: smallest noise level the prior was trained for (data units).
        sigma_max: largest noise level; samplers start from pure noise at this level.
        data_range: ``(low, high)`` range of the training images, e.g. ``(-1.0, 1.0)``;
            code feeding real data scales into it (see each prior's model card).
    """

    channels: int = 1
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    data_range: tuple[float, float] = (-1.0, 1.0)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Tweedie mean for ``x: (B, C, ...)`` and ``sigma: (B,)``; implemented by subclasses."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``E[x0 | x0 + sigma n = x]``.

        Args:
            x: noisy images ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` where a prior supports it).
            sigma: noise standard deviation, a float or a ``(B,)`` tensor, in data units.

        Returns:
            The denoised estimate, same shape as ``x``.
        """
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.channels} channel(s) in dim 1, got shape {tuple(x.shape)}")
        return self.denoise(x, as_sigma(sigma, x))

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma**2``, same shape as ``x``."""
        s = sigma_like(as_sigma(sigma, x), x)
        return (self(x, sigma) - x) / s**2
