"""Inpainting: observe a subset of pixels (a 0/1 mask), and the masks that choose them.

The mask multiplies every channel, so complex images stored as 2 real channels lose both
components of a missing pixel.

References:
    Bertalmio, Sapiro, Caselles, Ballester, "Image inpainting", SIGGRAPH 2000.
"""
from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics

from diffinverse.operators.blur import _check_image

__all__ = ["Inpainting", "box_mask", "random_mask"]


def _as_mask(mask) -> torch.Tensor:
    """Validate a 0/1 mask and return it as float32 of shape (B, 1|C, H, W)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mask: expected a real 0/1 tensor, got dtype {mask.dtype}")
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4:
        raise ValueError(f"mask: expected shape (H, W) or (B, 1|C, H, W), got {tuple(mask.shape)}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask: expected only 0 (missing) and 1 (observed) values")
    return mask.detach().to(torch.float32)


class Inpainting(LinearPhysics):
    """Pixel mask ``y = m * x`` (+ noise); missing pixels read 0 in ``y``.

    ``A`` is an orthogonal projection, so ``A_adjoint = A`` and the Moore-Penrose inverse is
    ``A`` itself: ``A_dagger(y)`` is the zero-filled image ``m * y`` (the baseline; it leaves
    the missing pixels at 0 and does not guess them). Noise added by ``physics(x)`` is masked
    too, so ``y`` is exactly 0 where nothing was observed.

    Args:
        mask: 1 = observed, 0 = missing. (H, W) for every image and channel, or
            (B, 1, H, W) / (B, C, H, W) per batch item (and per channel); B may be 1.
        noise_model: a deepinv noise model (default: none).

    Shapes:
        x, y: (B, C, H, W), any C (C = 2 for complex images).

    Example:
        >>> op = Inpainting(box_mask((64, 64), (16, 16, 32, 32)))
        >>> x_zf = op.A_dagger(op(x))

    References:
        Bertalmio et al., "Image inpainting", SIGGRAPH 2000.
    """

    def __init__(self, mask: torch.Tensor, *, noise_model=None):
        super().__init__(noise_model=noise_model)
        self.register_buffer("mask", _as_mask(mask))

    def with_mask(self, mask: torch.Tensor) -> "Inpainting":
        """A new operator with ``mask`` and the same noise model; ``self`` is unchanged."""
        return Inpainting(mask, noise_model=self.noise_model).to(self.mask.device)

    def _mask_like(self, x: torch.Tensor, name: str) -> torch.Tensor:
        _check_image(x, name)
        mb, mc, mh, mw = self.mask.shape
        b, c, h, w = x.shape
        if (mh, mw) != (h, w):
            raise ValueError(f"{name}: image size {h}x{w} does not match the mask's {mh}x{mw}")
        if mb not in (1, b) or mc not in (1, c):
            raise ValueError(f"{name}: shape {tuple(x.shape)} does not broadcast with the mask's "
                             f"{tuple(self.mask.shape)} (batch and channels must be 1 or equal)")
        return self.mask.to(device=x.device, dtype=x.dtype)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Keep the observed pixels: (B, C, H, W) -> (B, C, H, W), zeros elsewhere."""
        return x * self._mask_like(x, "x")

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Exact adjoint, equal to ``A`` (a diagonal 0/1 matrix)."""
        return y * self._mask_like(y, "y")

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Zero-filled image ``m * y`` (the exact Moore-Penrose inverse of a projection)."""
        return y * self._mask_like(y, "y")

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Noisy measurements ``m * sensor(noise(m * x))``: missing pixels stay exactly 0."""
        return self.A_adjoint(self.sensor(self.noise(self.A(x), **kwargs)))


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Mask with one missing rectangle.

    Args:
        shape: ``(H, W)`` image size.
        box: ``(top, left, height, width)`` of the missing region, in pixels, inside the image.

    Returns:
        (H, W) float32: 0 inside the box, 1 elsewhere.
    """
    if len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"shape: expected (H, W) positive integers, got {shape!r}")
    if len(box) != 4 or not all(isinstance(v, int) for v in box):
        raise ValueError(f"box: expected (top, left, height, width) integers, got {box!r}")
    top, left, bh, bw = box
    h, w = shape
    if top < 0 or left < 0 or bh <= 0 or bw <= 0 or top + bh > h or left + bw > w:
        raise ValueError(f"box: {box!r} is empty or not inside an image of size {h}x{w}")
    mask = torch.ones(h, w)
    mask[top:top + bh, left:left + bw] = 0
    return mask


def random_mask(shape: tuple[int, ...], fraction: float, *, generator: torch.Generator
                ) -> torch.Tensor:
    """Mask observing a uniformly random subset of exactly ``round(fraction * H * W)`` pixels.

    Args:
        shape: ``(H, W)`` or ``(..., H, W)`` (e.g. ``(B, 1, H, W)``); each (H, W) plane gets
            its own independent subset.
        fraction: fraction of pixels observed (kept), in [0, 1].
        generator: source of randomness (required: same seed, same mask).

    Returns:
        float32 tensor of ``shape`` on the generator's device, 1 = observed, 0 = missing.
    """
    shape = tuple(shape)
    if len(shape) < 2 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"shape: expected (..., H, W) positive integers, got {shape!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction: expected a number in [0, 1], got {fraction!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    npix = shape[-1] * shape[-2]
    planes = 1
    for n in shape[:-2]:
        planes *= n
    kept = round(fraction * npix)
    scores = torch.rand(planes, npix, generator=generator, device=generator.device)
    order = scores.argsort(dim=1)[:, :kept]
    mask = torch.zeros(planes, npix, device=generator.device).scatter_(1, order, 1.0)
    return mask.reshape(shape)
