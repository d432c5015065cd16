"""Generated phantoms for CT experiments: Shepp-Logan and random CT-like ellipse images.

Coordinates: an image of ``size`` pixels spans ``[-1, 1]`` in both directions, ``x`` to the
right (columns) and ``y`` up (row 0 is the top), pixel values sampled at pixel centres.

References:
    Shepp, L. A. and Logan, B. F. (1974). The Fourier reconstruction of a head section.
    IEEE Trans. Nucl. Sci. 21(3). Toft, P. (1996). The Radon Transform: Theory and
    Implementation (PhD thesis, DTU), for the "modified" (higher-contrast) intensities.
"""
from __future__ import annotations

import math

import torch

__all__ = ["shepp_logan", "random_ellipses"]

# Columns: semi-axis a (x), semi-axis b (y), centre x0, centre y0, rotation (degrees).
_SHEPP_LOGAN_GEOMETRY = (
    (0.69, 0.92, 0.0, 0.0, 0.0),
    (0.6624, 0.874, 0.0, -0.0184, 0.0),
    (0.11, 0.31, 0.22, 0.0, -18.0),
    (0.16, 0.41, -0.22, 0.0, 18.0),
    (0.21, 0.25, 0.0, 0.35, 0.0),
    (0.046, 0.046, 0.0, 0.1, 0.0),
    (0.046, 0.046, 0.0, -0.1, 0.0),
    (0.046, 0.023, -0.08, -0.605, 0.0),
    (0.023, 0.023, 0.0, -0.606, 0.0),
    (0.023, 0.046, 0.06, -0.605, 0.0),
)
_SHEPP_LOGAN_ORIGINAL = (2.0, -0.98, -0.02, -0.02, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01)
_SHEPP_LOGAN_MODIFIED = (1.0, -0.8, -0.2, -0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)


def _axes(size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates spanning ``[-1, 1]``: ``x`` as ``(1, size)``, ``y`` (up) as ``(size, 1)``."""
    t = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * (2.0 / size) - 1.0
    return t[None, :], -t[:, None]


def _inside(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            x0: torch.Tensor, y0: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Indicator of rotated ellipses on the grid ``x (1, W)``, ``y (H, 1)``.

    The parameters are ``(...,)`` tensors; the result is ``(..., H, W)`` float32. The rotated,
    scaled coordinates are sums of a row and a column term, so only a few full-size passes run.
    """
    c, s = (t[..., None, None] for t in (torch.cos(phi), torch.sin(phi)))
    a, b, x0, y0 = (t[..., None, None] for t in (a, b, x0, y0))
    u = (x - x0) * (c / a) + (y - y0) * (s / a)
    v = (y - y0) * (c / b) - (x - x0) * (s / b)
    return (u.square_() + v.square_() <= 1.0).float()


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")


def shepp_logan(size: int, *, modified: bool = True) -> torch.Tensor:
    """The Shepp-Logan head phantom.

    Args:
        size: image size in pixels (the phantom fills ``[-1, 1]^2``).
        modified: Toft's higher-contrast intensities (values already in ``[0, 1]``) if True;
            otherwise the original intensities divided by their maximum (2).

    Returns:
        ``(size, size)`` float32 tensor with values in ``[0, 1]``.

    References:
        Shepp and Logan (1974); Toft (1996), table 3.1.
    """
    _check_size(size)
    values = _SHEPP_LOGAN_MODIFIED if modified else _SHEPP_LOGAN_ORIGINAL
    p = torch.tensor(_SHEPP_LOGAN_GEOMETRY, dtype=torch.float32)
    v = torch.tensor(values, dtype=torch.float32)[:, None, None]
    x, y = _axes(size)
    inside = _inside(x, y, p[:, 0], p[:, 1], p[:, 2], p[:, 3], torch.deg2rad(p[:, 4]))
    image = (inside * v).sum(0)
    if not modified:
        image = image / 2.0
    return image.clamp_(0.0, 1.0)


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def random_ellipses(n: int, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """Random CT-like phantoms: a body outline, soft-tissue organs, bones with bright rims.

    Each image (attenuation scaled to ``[0, 1]``, air = 0) is built from
      - a body ellipse of soft tissue (value 0.25-0.4) filling most of the field of view,
      - 6 organ ellipses inside it adding -0.2..+0.2 (fat/air pockets darker, organs brighter),
      - 2 bones: an elliptical cortical rim (0.8-1.0) around a darker marrow (0.4-0.6).
    Everything is clipped to the body and to ``[0, 1]``. Vectorised over images and ellipses.

    Args:
        n: number of images.
        size: image size in pixels.
        generator: source of all randomness (its device is the output's device); the global
            random state is not touched, and the same generator state gives the same images.

    Returns:
        ``(n, 1, size, size)`` float32 tensor with values in ``[0, 1]``.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_size(size)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    g = generator
    x, y = _axes(size, device=g.device)

    # Body: large ellipse, slightly off-centre and rotated.
    ba, bb = _uniform((n,), 0.7, 0.92, g), _uniform((n,), 0.55, 0.85, g)
    bx, by = _uniform((n,), -0.05, 0.05, g), _uniform((n,), -0.05, 0.05, g)
    body = _inside(x, y, ba, bb, bx, by, _uniform((n,), -0.3, 0.3, g))
    tissue = _uniform((n, 1, 1), 0.25, 0.4, g)

    def inner(k: int, lo: float, hi: float) -> tuple[torch.Tensor, ...]:
        """k ellipses per image, semi-axes in [lo, hi], centres well inside the body: (n, k) each."""
        r = _uniform((n, k), 0.0, 0.55, g).sqrt()
        t = _uniform((n, k), 0.0, 2 * math.pi, g)
        cx = bx[:, None] + r * ba[:, None] * torch.cos(t)
        cy = by[:, None] + r * bb[:, None] * torch.sin(t)
        return (_uniform((n, k), lo, hi, g), _uniform((n, k), lo, hi, g), cx, cy,
                _uniform((n, k), 0.0, math.pi, g))

    # Organs: soft-tissue contrast, summed where they overlap.
    organs = _inside(x, y, *inner(6, 0.06, 0.25))
    contrast = _uniform((n, 6, 1, 1), -0.2, 0.2, g)
    image = tissue + (organs * contrast).sum(1)

    # Bones: a bright cortical rim around darker marrow, painted over the soft tissue.
    ka, kb, kx, ky, kphi = inner(2, 0.06, 0.16)
    keep = 1.0 - _uniform((n, 2), 0.25, 0.45, g)  # marrow semi-axes / bone semi-axes
    outer = _inside(x, y, ka, kb, kx, ky, kphi)
    marrow = _inside(x, y, ka * keep, kb * keep, kx, ky, kphi)
    rim_value, marrow_value = _uniform((n, 2, 1, 1), 0.8, 1.0, g), _uniform((n, 2, 1, 1), 0.4, 0.6, g)
    bone = torch.where(marrow > 0, marrow_value, rim_value)
    for j in range(2):
        image = torch.where(outer[:, j] > 0, bone[:, j], image)

    return (image * body).clamp_(0.0, 1.0)[:, None]
