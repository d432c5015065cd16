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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .phantoms import random_ellipses

__all__ = ["synthetic_ct_slices"]


def _u(shape, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=g.device)


def _ellipse(size: int, a, b, x0, y0, phi, device) -> torch.Tensor:
    """Quadratic form ``(u/a)^2 + (v/b)^2`` of ``(n,)`` rotated ellipses on ``[-1, 1]^2``: ``(n, size, size)``."""
    t = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * (2.0 / size) - 1.0
    x, y = t[None, None, :], -t[None, :, None]
    c, s = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
    a, b, x0, y0 = (v[:, None, None] for v in (a, b, x0, y0))
    u = ((x - x0) * c + (y - y0) * s) / a
    v = ((y - y0) * c - (x - x0) * s) / b
    return u.square() + v.square()


def _lowpass(n: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """Smooth zero-mean unit-std random fields ``(n, 1, size, size)`` with ``cells`` blobs across."""
    z = torch.randn((n, 1, cells, cells), generator=g, device=g.device)
    f = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
    return (f - f.mean((2, 3), keepdim=True)) / f.std((2, 3), keepdim=True).clamp_min(1e-6)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image isotropic Gaussian blur (``sigma`` in pixels, ``(n,)``), by FFT."""
    n, _, h, w = x.shape
    fy = torch.fft.fftfreq(h, device=x.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=x.device)[None, :]
    k = torch.exp(-2 * math.pi**2 * sigma[:, None, None, None] ** 2 * (fx**2 + fy**2))
    return torch.fft.irfft2(torch.fft.rfft2(x) * k, s=(h, w))


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
    g, dev = generator, generator.device
    x = random_ellipses(n, size, generator=g)
    body = (x > 0).float()

    # skull-like shell on half of the images: a bone ring around a brain-like interior
    head = (_u((n,), 0, 1, g) < 0.5).float()[:, None, None, None]
    a, b = _u((n,), 0.6, 0.9, g), _u((n,), 0.7, 0.95, g)
    x0, y0, phi = _u((n,), -0.05, 0.05, g), _u((n,), -0.05, 0.05, g), _u((n,), -0.3, 0.3, g)
    thick = _u((n,), 0.04, 0.12, g)[:, None, None]
    q = _ellipse(size, a, b, x0, y0, phi, dev)
    inner = (q <= 1.0).float()
    ring = ((q > 1.0) & (q <= (1.0 + thick) ** 2)).float()
    brain = _u((n, 1, 1, 1), 0.22, 0.32, g) + 0.04 * _lowpass(n, size, 6, g)
    skull = _u((n, 1, 1, 1), 0.75, 1.0, g)
    headimg = (brain * inner[:, None] + skull * ring[:, None]).clamp(0, 1)
    x = head * headimg + (1 - head) * x
    body = head * (inner + ring)[:, None].clamp(max=1) + (1 - head) * body

    # smooth multiplicative variation and fine texture, stronger in dense tissue
    x = x * (1 + _u((n, 1, 1, 1), 0.0, 0.12, g) * _lowpass(n, size, 8, g))
    fine = _blur(torch.randn(x.shape, generator=g, device=dev), _u((n,), 0.4, 1.5, g))
    fine = fine / fine.std((2, 3), keepdim=True).clamp_min(1e-6)
    x = x + _u((n, 1, 1, 1), 0.0, 0.04, g) * fine * (0.3 + x)

    # small bright dots and dark pockets
    for sign, lo, hi in ((1.0, 0.1, 0.5), (-1.0, 0.05, 0.2)):
        k = 6
        r = _u((n * k,), 0.01, 0.035, g)
        dots = _ellipse(size, r, r * _u((n * k,), 0.6, 1.0, g), _u((n * k,), -0.7, 0.7, g),
                        _u((n * k,), -0.7, 0.7, g), _u((n * k,), 0, math.pi, g), dev)
        amp = _u((n, k, 1, 1), lo, hi, g) * (_u((n, k, 1, 1), 0, 1, g) < 0.5)
        x = x + sign * ((dots <= 1.0).float().view(n, k, size, size) * amp).sum(1, keepdim=True)

    x = (x * body).clamp(0, 1) ** _u((n, 1, 1, 1), 0.8, 1.25, g)
    return _blur(x, _u((n,), 0.0, 1.0, g)).clamp(0, 1)
