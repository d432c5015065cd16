"""Generated phantoms for CT experiments: Shepp-Logan, random CT-like ellipse images and volumes.

Coordinates: an image of ``size`` pixels spans ``[-1, 1]`` in both directions, ``x`` to the
right (columns) and ``y`` up (row 0 is the top), pixel values sampled at pixel centres. A volume
``(D, size, size)`` has isotropic voxels of the same pitch ``2 / size``: its slice axis ``z`` spans
``[-D / size, D / size]`` (slice 0 at the negative end).

References:
    Shepp, L. A. and Logan, B. F. (1974). The Fourier reconstruction of a head section.
    IEEE Trans. Nucl. Sci. 21(3). Toft, P. (1996). The Radon Transform: Theory and
    Implementation (PhD thesis, DTU), for the "modified" (higher-contrast) intensities.
"""
from __future__ import annotations

import math

import torch

__all__ = ["shepp_logan", "random_ellipses", "random_ellipsoids", "per_volume_count"]

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


def _z_axis(depth: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Slice-centre coordinates of ``depth`` slices at the in-plane pitch ``2 / size``: ``(depth, 1, 1)``."""
    t = (torch.arange(depth, dtype=torch.float32, device=device) + 0.5 - depth / 2) * (2.0 / size)
    return t[:, None, None]


def _quadratic(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor,
               y0: torch.Tensor, phi: torch.Tensor, z: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
               ) -> torch.Tensor:
    """``(u/a)^2 + (v/b)^2 [+ ((z - z0)/c)^2]`` of rotated ellipses (ellipsoids) on a grid.

    ``x (1, W)``, ``y (H, 1)``; parameters ``(...,)``; with ``z = (z_grid (D, 1, 1), c, z0)`` the
    ellipses become ellipsoids with semi-axis ``c`` along the slice axis (rotated about it by
    ``phi``), and the result is ``(..., D, H, W)`` instead of ``(..., H, W)``.
    """
    c, s = (t[..., None, None] for t in (torch.cos(phi), torch.sin(phi)))
    a, b, x0, y0 = (t[..., None, None] for t in (a, b, x0, y0))
    u = (x - x0) * (c / a) + (y - y0) * (s / a)
    v = (y - y0) * (c / b) - (x - x0) * (s / b)
    q = u.square_() + v.square_()
    if z is None:
        return q
    zg, cz, z0 = z
    w = (zg - z0[..., None, None, None]) / cz[..., None, None, None]   # (..., D, 1, 1)
    return q.unsqueeze(-3) + w.square()


def _inside(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            x0: torch.Tensor, y0: torch.Tensor, phi: torch.Tensor,
            z: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Indicator of rotated ellipses on the grid ``x (1, W)``, ``y (H, 1)`` (ellipsoids with ``z``).

    The parameters are ``(...,)`` tensors; the result is ``(..., H, W)`` (``(..., D, H, W)`` with
    ``z``, see :func:`_quadratic`) float32. The rotated, scaled coordinates are sums of a row and a
    column term, so only a few full-size passes run.
    """
    return (_quadratic(x, y, a, b, x0, y0, phi, z) <= 1.0).float()


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


def _check_common(n: int, size: int, generator: torch.Generator) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_size(size)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def per_volume_count(per_slice: float, lo: float, hi: float, depth: int, size: int) -> int:
    """How many ellipsoids a volume needs so that a slice cuts ``per_slice`` of them on average.

    An ellipsoid with semi-axis ``c`` along the slice axis and its centre uniform on the slab
    widened by ``hi`` at both ends, ``[-L/2 - hi, L/2 + hi]`` (``L = 2 depth / size``), is cut by a
    given slice with probability ``2 c / (L + 2 hi)``; ``c`` is uniform on ``[lo, hi]``.
    """
    extent = 2.0 * depth / size + 2.0 * hi
    return max(1, math.ceil(per_slice * extent / (lo + hi)))


def _random_phantom(n: int, size: int, depth: int | None, g: torch.Generator) -> torch.Tensor:
    """:func:`random_ellipses` (``depth=None``: ``(n, size, size)``) or :func:`random_ellipsoids`
    (``(n, depth, size, size)``): one construction, the volume's adding a slice axis to every shape."""
    x, y = _axes(size, device=g.device)
    if depth is not None:
        zg, half = _z_axis(depth, size, device=g.device), depth / size
    ones = (1,) * (2 if depth is None else 3)

    # Body: large ellipse (an ellipsoid long along the slice axis), slightly off-centre and rotated.
    ba, bb = _uniform((n,), 0.7, 0.92, g), _uniform((n,), 0.55, 0.85, g)
    bx, by = _uniform((n,), -0.05, 0.05, g), _uniform((n,), -0.05, 0.05, g)
    bphi = _uniform((n,), -0.3, 0.3, g)
    bz = None if depth is None else (zg, _uniform((n,), 1.0, 2.0, g), torch.zeros(n, device=g.device))
    body = _inside(x, y, ba, bb, bx, by, bphi, bz)
    tissue = _uniform((n, *ones), 0.25, 0.4, g)

    def inner(k: int, lo: float, hi: float) -> tuple[tuple[torch.Tensor, ...], int]:
        """k ellipses per image (per slice, for a volume), semi-axes in [lo, hi], centres well inside
        the body: parameters (n, k') each, and k' (k, or per_volume_count for a volume)."""
        if depth is not None:
            k = per_volume_count(k, lo, hi, depth, size)
        r = _uniform((n, k), 0.0, 0.55, g).sqrt()
        t = _uniform((n, k), 0.0, 2 * math.pi, g)
        cx = bx[:, None] + r * ba[:, None] * torch.cos(t)
        cy = by[:, None] + r * bb[:, None] * torch.sin(t)
        params = (_uniform((n, k), lo, hi, g), _uniform((n, k), lo, hi, g), cx, cy,
                  _uniform((n, k), 0.0, math.pi, g))
        if depth is not None:  # semi-axis along the slice axis, centre on the widened slab
            params += (_uniform((n, k), lo, hi, g), _uniform((n, k), -half - hi, half + hi, g))
        return params, k

    def indicator(params: tuple[torch.Tensor, ...], scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        a, b, cx, cy, phi, *zc = params
        z = (zg, zc[0] * scale, zc[1]) if zc else None
        return _inside(x, y, a * scale, b * scale, cx, cy, phi, z)

    # Organs: soft-tissue contrast, summed where they overlap.
    params, k = inner(6, 0.06, 0.25)
    organs = indicator(params)
    contrast = _uniform((n, k, *ones), -0.2, 0.2, g)
    image = tissue + (organs * contrast).sum(1)

    # Bones: a bright cortical rim around darker marrow, painted over the soft tissue.
    params, k = inner(2, 0.06, 0.16)
    keep = 1.0 - _uniform((n, k), 0.25, 0.45, g)  # marrow semi-axes / bone semi-axes
    outer = indicator(params)
    marrow = indicator(params, keep)
    rim_value, marrow_value = _uniform((n, k, *ones), 0.8, 1.0, g), _uniform((n, k, *ones), 0.4, 0.6, g)
    bone = torch.where(marrow > 0, marrow_value, rim_value)
    for j in range(k):
        image = torch.where(outer[:, j] > 0, bone[:, j], image)

    return (image * body).clamp_(0.0, 1.0)


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
    _check_common(n, size, generator)
    return _random_phantom(n, size, None, generator)[:, None]


def random_ellipsoids(n: int, shape: tuple[int, int, int], *, generator: torch.Generator) -> torch.Tensor:
    """Random CT-like volumes: :func:`random_ellipses` with ellipsoids in place of ellipses.

    The same body, organs and bones with the same value ranges, each an ellipsoid rotated about
    the slice axis (so every axial slice shows ellipses as :func:`random_ellipses` draws them):
      - the body's semi-axis along the slice axis is 1-2 (it runs through a slab like a torso),
      - organs and bones have slice-axis semi-axes in their in-plane ranges (0.06-0.25 and
        0.06-0.16), centres uniform along a slab widened by that range, and a count per volume
        (:func:`per_volume_count`) such that a slice cuts on average as many (6 and 2) as a 2-D
        phantom holds; a bone's marrow is the same ellipsoid shrunk, its rim a shell.
    Voxels are isotropic (see the module notes). Memory: about ``4 k D H W`` bytes for ``k`` organs
    at once (``k`` grows with ``D / H``).

    Args:
        n: number of volumes.
        shape: ``(D, H, W)`` with ``H == W`` (the in-plane field of view is ``[-1, 1]^2``).
        generator: source of all randomness (its device is the output's device); the global
            random state is not touched, and the same generator state gives the same volumes.

    Returns:
        ``(n, 1, D, H, W)`` float32 tensor with values in ``[0, 1]``.

    Raises:
        ValueError: ``shape`` not three sizes ``>= 2`` with ``H == W``.
    """
    depth, size = _check_shape(shape)
    _check_common(n, size, generator)
    return _random_phantom(n, size, depth, generator)[:, None]


def _check_shape(shape) -> tuple[int, int]:
    """``(D, H, W)`` with sizes >= 2 and ``H == W``: returns ``(D, H)``."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ValueError(f"shape must be (D, H, W), got {shape!r}")
    for s in shape:
        _check_size(s)
    if shape[1] != shape[2]:
        raise ValueError(f"shape must have square slices (H == W), got {tuple(shape)}")
    return int(shape[0]), int(shape[1])
