"""Image-quality metrics with fastMRI's evaluation conventions.

All three metrics are computed **volume-wise** on magnitude volumes ``(S, H, W)`` (a single
image ``(H, W)`` is treated as a one-slice volume), in float64, with the data range taken from
the *reference* (``reference.max()`` over the whole volume) unless one is given. This is what
fastMRI's ``fastmri/evaluate.py`` does (with ``gt = reference``, ``pred = estimate``):

- ``nmse = ||gt - pred||^2 / ||gt||^2`` over the volume;
- ``psnr = 10 log10(data_range^2 / mean((gt - pred)^2))`` over the volume;
- ``ssim`` = the mean over slices of scikit-image's ``structural_similarity`` with its defaults
  (7x7 uniform window, ``K1 = 0.01``, ``K2 = 0.03``, sample covariance, the border of half a
  window width left out of the mean) and the volume's data range.

The two images are **keyword-only**: ``psnr(reference=gt, estimate=pred)``. fastMRI puts the
reference first and deepinv's ``PSNR()(x_net, x)`` the estimate first; since the data range comes
from the reference, a swap changes the score (by several dB on a noisy estimate) without any
error, so a positional call is refused with a ``TypeError``.

SSIM is implemented here with torch (scikit-image is only a test dependency); the tests check
it against ``skimage.metrics.structural_similarity``.

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", 2018
    (``fastmri/evaluate.py``). Wang et al., "Image quality assessment: from error visibility
    to structural similarity", IEEE TIP 2004.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["nmse", "psnr", "ssim"]


def _as_volumes(gt, pred) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs (reference, estimate) as float64 CPU-or-device tensors of shape ``(S, H, W)``."""
    out = []
    for name, a in (("reference", gt), ("estimate", pred)):
        t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        if t.is_complex():
            raise TypeError(f"{name} must be a real (magnitude) image, got a complex tensor")
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3:
            raise ValueError(f"{name} must have shape (S, H, W) or (H, W), got {tuple(t.shape)}")
        out.append(t.detach().to(torch.float64))
    g, p = out
    if g.shape != p.shape:
        raise ValueError(f"reference and estimate must have the same shape, got {tuple(g.shape)} and {tuple(p.shape)}")
    return g, p.to(g.device)


def _data_range(g: torch.Tensor, data_range: float | None) -> float:
    value = float(g.max()) if data_range is None else float(data_range)
    if not value > 0:
        raise ValueError(f"data_range must be positive, got {value} (an all-zero reference needs an explicit data_range)")
    return value


def nmse(*, reference, estimate) -> float:
    """Normalised mean squared error ``||reference - estimate||^2 / ||reference||^2`` over the volume.

    Args:
        reference: target magnitude volume ``(S, H, W)`` or image ``(H, W)`` (numpy or torch);
            keyword-only.
        estimate: reconstruction, same shape; keyword-only.

    Returns:
        The NMSE as a float (0 for a perfect reconstruction).
    """
    g, p = _as_volumes(reference, estimate)
    denom = float(torch.sum(g**2))
    if denom == 0:
        raise ValueError("nmse is undefined for an all-zero reference")
    return float(torch.sum((g - p) ** 2)) / denom


def psnr(*, reference, estimate, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB over the whole volume.

    Args:
        reference: target magnitude volume ``(S, H, W)`` or image ``(H, W)``; keyword-only.
        estimate: reconstruction, same shape; keyword-only.
        data_range: peak value; default ``reference.max()`` (fastMRI's convention).

    Returns:
        ``10 log10(data_range^2 / MSE)`` as a float (``inf`` when ``estimate == reference``).
    """
    g, p = _as_volumes(reference, estimate)
    peak = _data_range(g, data_range)
    mse = float(torch.mean((g - p) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


def ssim(*, reference, estimate, data_range: float | None = None, win_size: int = 7,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity, mean over slices, as fastMRI computes it.

    Per slice this equals ``skimage.metrics.structural_similarity(reference[s], estimate[s],
    data_range=data_range)``: local means, variances and covariance over a ``win_size`` square
    uniform window with the unbiased (``N / (N - 1)``) covariance normalisation, and the mean of
    the SSIM map over the pixels whose window lies inside the image (scikit-image crops
    ``(win_size - 1) // 2`` pixels at each border, so its padding mode never matters).

    Args:
        reference: target magnitude volume ``(S, H, W)`` or image ``(H, W)``; each side
            >= ``win_size``; keyword-only.
        estimate: reconstruction, same shape; keyword-only.
        data_range: dynamic range; default ``reference.max()`` over the volume (fastMRI's convention).
        win_size: odd window side in pixels.
        k1, k2: stabilising constants, ``C1 = (k1 * L)^2``, ``C2 = (k2 * L)^2``.

    Returns:
        The mean SSIM over slices, a float in [-1, 1].
    """
    g, p = _as_volumes(reference, estimate)
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size}")
    if min(g.shape[-2:]) < win_size:
        raise ValueError(f"images must be at least {win_size}x{win_size} for SSIM, got {tuple(g.shape[-2:])}")
    peak = _data_range(g, data_range)
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    n = win_size**2
    cov_norm = n / (n - 1)

    x, y = g.unsqueeze(1), p.unsqueeze(1)  # (S, 1, H, W)
    # A "valid" box mean gives exactly the window means skimage keeps after its border crop.
    stats = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), win_size, stride=1)
    ux, uy, uxx, uyy, uxy = stats.unbind(1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.mean(dim=(-2, -1)).mean())
