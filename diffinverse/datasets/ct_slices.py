"""Domain-randomised synthetic CT slices: the training data of the ``"ct-ellipses"`` prior.

Plain random-ellipse phantoms are piecewise constant; real CT has thin bright skull shells,
trabecular bone, smooth soft-tissue variation, fine texture and partial-volume blur. A prior
trained on the bare phantoms lost to BM3D on real head and spine CT (the ``ct-ellipses`` model
card; ``benchmarks/priors/eval_priors.py``), so each phantom here is randomised further:

- with probability 1/2 a skull-like shell: a bone ring (2-6 % of the field of view thick)
  along an ellipse enclosing the body, over a brain-like soft-tissue level;
- a smooth multiplicative field (low-pass noise) inside the body;
- fine correlated texture (blurred white noise), stronger inside bone;
- small bright dots (vessels, calcifications) and dark pockets;
- a random gamma on the intensities and a partial-volume blur.

All values stay in ``[0, 1]`` (air 0, dense bone up to 1).

:func:`synthetic_ct_volumes` makes volumes by the same construction in 3-D: ellipsoids
(:func:`~diffinverse.datasets.phantoms.random_ellipsoids`), an ellipsoidal skull shell, 3-D smooth
fields, texture and blur, and as many dots and pockets per volume as make a slice cut, on average,
as many as a 2-D phantom holds.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .phantoms import (
    _check_common,
    _check_shape,
    _random_phantom,
    _z_axis,
    per_volume_count,
)

__all__ = ["synthetic_ct_slices", "synthetic_ct_volumes"]


def _u(shape, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=g.device)


def _ellipse(size: int, a, b, x0, y0, phi, device, z=None) -> torch.Tensor:
    """Quadratic form ``(u/a)^2 + (v/b)^2`` of ``(n,)`` rotated ellipses on ``[-1, 1]^2``: ``(n, size, size)``.

    With ``z = (z_grid (D, 1, 1), c, z0)``: ellipsoids, ``+ ((z - z0)/c)^2``, ``(n, D, size, size)``.
    """
    t = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * (2.0 / size) - 1.0
    x, y = t[None, None, :], -t[None, :, None]
    c, s = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
    a, b, x0, y0 = (v[:, None, None] for v in (a, b, x0, y0))
    u = ((x - x0) * c + (y - y0) * s) / a
    v = ((y - y0) * c - (x - x0) * s) / b
    q = u.square() + v.square()
    if z is None:
        return q
    zg, cz, z0 = z
    return q[:, None] + ((zg - z0[:, None, None, None]) / cz[:, None, None, None]).square()


def _lowpass(n: int, size: int, cells: int, g: torch.Generator, depth: int | None = None) -> torch.Tensor:
    """Smooth zero-mean unit-std random fields ``(n, 1, size, size)`` with ``cells`` blobs across.

    With ``depth``: ``(n, 1, depth, size, size)``, blobs of the same size in voxels along the slice
    axis (bicubic in-plane, then bicubic along the slice axis, then a centred crop).
    """
    if depth is None:
        z = torch.randn((n, 1, cells, cells), generator=g, device=g.device)
        f = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
        return (f - f.mean((2, 3), keepdim=True)) / f.std((2, 3), keepdim=True).clamp_min(1e-6)
    cz = math.ceil(cells * depth / size) + 1              # coarse cells along the slice axis
    z = torch.randn((n * cz, 1, cells, cells), generator=g, device=g.device)
    f = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
    f = F.interpolate(f.reshape(n, 1, cz, size * size), size=(round(cz * size / cells), size * size),
                      mode="bicubic", align_corners=False)
    top = (f.shape[2] - depth) // 2
    f = f[:, :, top:top + depth].reshape(n, 1, depth, size, size)
    dims = (2, 3, 4)
    return (f - f.mean(dims, keepdim=True)) / f.std(dims, keepdim=True).clamp_min(1e-6)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-item isotropic Gaussian blur (``sigma`` in pixels, ``(n,)``) of ``(n, 1, ...)`` images or
    volumes, by FFT (circular)."""
    dims = tuple(range(2, x.ndim))
    shape = x.shape[2:]
    f2 = torch.fft.rfftfreq(shape[-1], device=x.device) ** 2
    for i, m in enumerate(reversed(shape[:-1])):
        f2 = f2 + (torch.fft.fftfreq(m, device=x.device) ** 2).reshape(-1, *([1] * (i + 1)))
    k = torch.exp(-2 * math.pi**2 * sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2 * f2)
    return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * k, s=shape, dim=dims)


def _synthetic_ct(n: int, size: int, depth: int | None, g: torch.Generator) -> torch.Tensor:
    """The construction of :func:`synthetic_ct_slices` (``depth=None``) and
    :func:`synthetic_ct_volumes`: ``(n, 1, [depth,] size, size)``."""
    dev = g.device
    ones = (1,) * (2 if depth is None else 3)
    dims = tuple(range(2, 2 + len(ones)))
    zg = None if depth is None else _z_axis(depth, size, device=dev)
    x = _random_phantom(n, size, depth, g)[:, None]
    body = (x > 0).float()

    # skull-like shell on half of the images: a bone ring around a brain-like interior
    head = (_u((n,), 0, 1, g) < 0.5).float().reshape(n, 1, *ones)
    a, b = _u((n,), 0.6, 0.9, g), _u((n,), 0.7, 0.95, g)
    x0, y0, phi = _u((n,), -0.05, 0.05, g), _u((n,), -0.05, 0.05, g), _u((n,), -0.3, 0.3, g)
    thick = _u((n,), 0.04, 0.12, g).reshape(n, *ones)
    # a volume's head: an ellipsoid with semi-axis 0.75-1 along the slice axis, centre within +-0.1
    zs = None if depth is None else (zg, _u((n,), 0.75, 1.0, g), _u((n,), -0.1, 0.1, g))
    q = _ellipse(size, a, b, x0, y0, phi, dev, zs)
    inner = (q <= 1.0).float()
    ring = ((q > 1.0) & (q <= (1.0 + thick) ** 2)).float()
    brain = _u((n, 1, *ones), 0.22, 0.32, g) + 0.04 * _lowpass(n, size, 6, g, depth)
    skull = _u((n, 1, *ones), 0.75, 1.0, g)
    headimg = (brain * inner[:, None] + skull * ring[:, None]).clamp(0, 1)
    x = head * headimg + (1 - head) * x
    body = head * (inner + ring)[:, None].clamp(max=1) + (1 - head) * body

    # smooth multiplicative variation and fine texture, stronger in dense tissue
    x = x * (1 + _u((n, 1, *ones), 0.0, 0.12, g) * _lowpass(n, size, 8, g, depth))
    fine = _blur(torch.randn(x.shape, generator=g, device=dev), _u((n,), 0.4, 1.5, g))
    fine = fine / fine.std(dims, keepdim=True).clamp_min(1e-6)
    x = x + _u((n, 1, *ones), 0.0, 0.04, g) * fine * (0.3 + x)

    # small bright dots and dark pockets (6 of each per image; per volume, as many as make a slice
    # cut 6 on average); a volume's indicators are computed a few dots at a time
    for sign, lo, hi in ((1.0, 0.1, 0.5), (-1.0, 0.05, 0.2)):
        k = 6 if depth is None else per_volume_count(6, 0.01, 0.035, depth, size)
        r = _u((n * k,), 0.01, 0.035, g)
        params = (r, r * _u((n * k,), 0.6, 1.0, g), _u((n * k,), -0.7, 0.7, g),
                  _u((n * k,), -0.7, 0.7, g), _u((n * k,), 0, math.pi, g))
        amp = _u((n, k, *ones), lo, hi, g) * (_u((n, k, *ones), 0, 1, g) < 0.5)
        if depth is None:
            dots = _ellipse(size, *params, dev)
            x = x + sign * ((dots <= 1.0).float().view(n, k, size, size) * amp).sum(1, keepdim=True)
            continue
        half = depth / size
        zs = (r * _u((n * k,), 0.6, 1.0, g), _u((n * k,), -half - 0.035, half + 0.035, g))
        total = torch.zeros_like(x)
        for j in range(0, k, 16):
            sel = slice(j, min(j + 16, k))
            p = [v.view(n, k)[:, sel].reshape(-1) for v in params + zs]
            dots = _ellipse(size, *p[:5], dev, (zg, p[5], p[6]))
            total += ((dots <= 1.0).float().view(n, -1, depth, size, size) * amp[:, sel]).sum(1, keepdim=True)
        x = x + sign * total

    x = (x * body).clamp(0, 1) ** _u((n, 1, *ones), 0.8, 1.25, g)
    return _blur(x, _u((n,), 0.0, 1.0, g)).clamp(0, 1)


def synthetic_ct_slices(n: int, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` domain-randomised CT slices.

    Args:
        n: number of images.
        size: side in pixels.
        generator: source of all randomness; its device is the output's device (the global RNG
            is untouched).

    Returns:
        ``(n, 1, size, size)`` float32 attenuation images in ``[0, 1]``.
    """
    return _synthetic_ct(n, size, None, generator)


def synthetic_ct_volumes(n: int, shape: tuple[int, int, int], *, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` domain-randomised CT volumes: :func:`synthetic_ct_slices` in 3-D.

    The same steps with the same value ranges (module notes), on
    :func:`~diffinverse.datasets.phantoms.random_ellipsoids`: a head-like half has an ellipsoidal
    skull shell (semi-axis 0.75-1 along the slice axis); the smooth fields, fine texture and blur
    are 3-D and isotropic in voxels; dots and pockets are small ellipsoids. Voxels are isotropic,
    ``z`` spanning ``[-D / H, D / H]`` against ``[-1, 1]`` in-plane.

    Args:
        n: number of volumes.
        shape: ``(D, H, W)`` with ``H == W``, in voxels.
        generator: source of all randomness; its device is the output's device (the global RNG
            is untouched).

    Returns:
        ``(n, 1, D, H, W)`` float32 attenuation volumes in ``[0, 1]``.

    Raises:
        ValueError: ``shape`` not three sizes ``>= 2`` with ``H == W``; TypeError for a non-int
            ``n`` or a missing generator.
    """
    depth, size = _check_shape(shape)
    _check_common(n, size, generator)
    return _synthetic_ct(n, size, depth, generator)
