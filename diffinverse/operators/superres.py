"""Super-resolution: anti-alias filter then decimation by an integer factor, exact adjoint.

The filter is separable and acts on every channel alike, so complex images stored as 2 real
channels are downsampled component-wise. Output pixel ``n`` is centred on the input block
``[s n, s n + s)``, as in MATLAB's ``imresize``; the filter is computed at the low-resolution
samples only (a strided convolution), never at full resolution.

References:
    Keys, "Cubic convolution interpolation for digital image processing", IEEE TASSP 1981
    (the bicubic kernel, a = -0.5); MATLAB ``imresize`` (anti-aliasing by stretching the kernel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from deepinv.optim.linear import conjugate_gradient
from deepinv.physics import LinearPhysics

from diffinverse.operators.blur import _check_image, pad2d, pad2d_adjoint

__all__ = ["SuperResolution", "bicubic_taps"]

_FILTERS = ("bicubic", "box")
_PADDINGS = ("reflect", "replicate", "circular", "zeros")


def _keys_cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def bicubic_taps(factor: int) -> torch.Tensor:
    """1D anti-alias taps of bicubic downsampling by ``factor`` (Keys' kernel stretched).

    Returns:
        (L,) float64 taps summing to 1, symmetric about the block centre; ``L = 4 factor``
        for even factors and ``4 factor - 1`` for odd ones (so every tap lands on a pixel).
    """
    n = 4 * factor if factor % 2 == 0 else 4 * factor - 1
    t = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / factor
    w = _keys_cubic(t)
    return w / w.sum()


def _down_last(x: torch.Tensor, w: torch.Tensor, s: int, pad: int, mode: str) -> torch.Tensor:
    """Filter and decimate the last dim: (B, C, H, W) -> (B, C, H, W // s)."""
    xp = pad2d(x, (0, 0, pad, pad), mode)
    b, c, h, wp = xp.shape
    y = F.conv2d(xp.reshape(b * c, 1, h, wp), w.view(1, 1, 1, -1), stride=(1, s))
    return y.reshape(b, c, h, -1)


def _down_last_adjoint(y: torch.Tensor, w: torch.Tensor, s: int, pad: int, mode: str,
                       n: int) -> torch.Tensor:
    """Exact adjoint of :func:`_down_last` for an input of last-dim size ``n``."""
    b, c, h, m = y.shape
    extra = n + 2 * pad - ((m - 1) * s + w.numel())
    xp = F.conv_transpose2d(y.reshape(b * c, 1, h, m), w.view(1, 1, 1, -1), stride=(1, s),
                            output_padding=(0, extra))
    return pad2d_adjoint(xp.reshape(b, c, h, -1), (0, 0, pad, pad), mode)


class SuperResolution(LinearPhysics):
    """Downsampling ``y = S_s (h * x)`` (+ noise): separable anti-alias filter ``h``, decimation.

    Args:
        factor: integer downsampling factor ``s >= 1``.
        filter: ``"bicubic"`` (Keys' cubic stretched by ``s``: MATLAB ``imresize``'s
            anti-aliased bicubic) or ``"box"`` (the mean of each ``s x s`` block).
        padding: boundary rule of the filter: ``"reflect"``, ``"replicate"``, ``"circular"``
            or ``"zeros"`` (irrelevant for ``"box"``, whose blocks never cross the border).
        img_size: ``(H, W)`` or ``(C, H, W)`` of ``x``. Needed only when H or W is not a
            multiple of ``s`` (then ``A_adjoint`` cannot infer the size); when given, inputs
            are checked against it.
        noise_model: a deepinv noise model (default: none).
        cg_iters: maximum conjugate-gradient iterations of ``A_dagger``.
        cg_tol: relative residual at which that CG stops.

    Shapes:
        x: (B, C, H, W), any C (C = 2 for complex images); y: (B, C, H // s, W // s).

    Example:
        >>> op = SuperResolution(4)
        >>> y = op(x)                      # (B, C, H / 4, W / 4)
        >>> x_ls = op.A_dagger(y)          # minimum-norm least squares, A(x_ls) == y

    References:
        Keys, IEEE TASSP 29(6), 1981.
    """

    def __init__(self, factor: int, *, filter: str = "bicubic", padding: str = "reflect",
                 img_size: tuple[int, ...] | None = None, noise_model=None, cg_iters: int = 100,
                 cg_tol: float = 1e-6):
        if isinstance(factor, bool) or not isinstance(factor, int):
            raise TypeError(f"factor: expected an int, got {type(factor).__name__}")
        if factor < 1:
            raise ValueError(f"factor: expected an integer >= 1, got {factor}")
        if filter not in _FILTERS:
            raise ValueError(f"filter: expected one of {_FILTERS}, got {filter!r}")
        if padding not in _PADDINGS:
            raise ValueError(f"padding: expected one of {_PADDINGS}, got {padding!r}")
        if img_size is not None:
            img_size = tuple(img_size)
            if len(img_size) not in (2, 3) or not all(isinstance(n, int) and n > 0 for n in img_size):
                raise ValueError(f"img_size: expected (H, W) or (C, H, W) positive integers, "
                                 f"got {img_size!r}")
        super().__init__(noise_model=noise_model, img_size=img_size)
        self.factor = factor
        self.filter = filter
        self.padding = padding
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        taps = bicubic_taps(factor) if filter == "bicubic" else torch.full((factor,), 1.0 / factor,
                                                                           dtype=torch.float64)
        self._pad = (taps.numel() - factor) // 2
        self.register_buffer("taps", taps.float())

    def _taps_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.taps.to(device=x.device, dtype=x.dtype)

    def _check_x(self, x: torch.Tensor) -> None:
        _check_image(x, "x")
        h, w = x.shape[-2:]
        if self.img_size is not None and tuple(x.shape[-len(self.img_size):]) != self.img_size:
            raise ValueError(f"x: expected trailing shape {self.img_size}, got {tuple(x.shape)}")
        limit = self._pad + 1 if self.padding == "reflect" else self._pad
        if min(h, w) < max(self.factor, limit):
            raise ValueError(f"x: image {h}x{w} too small for factor {self.factor} "
                             f"({self.filter} filter, {self.padding} padding)")

    def _x_size(self, y: torch.Tensor) -> tuple[int, int]:
        if self.img_size is not None:
            h, w = self.img_size[-2:]
            expected = (h // self.factor, w // self.factor)
            if tuple(y.shape[-2:]) != expected:
                raise ValueError(f"y: expected size {expected} for img_size {self.img_size}, "
                                 f"got {tuple(y.shape[-2:])}")
            return h, w
        return y.shape[-2] * self.factor, y.shape[-1] * self.factor

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Filter and decimate: (B, C, H, W) -> (B, C, H // s, W // s)."""
        self._check_x(x)
        w, s, p, mode = self._taps_like(x), self.factor, self._pad, self.padding
        y = _down_last(x, w, s, p, mode)
        return _down_last(y.transpose(-1, -2), w, s, p, mode).transpose(-1, -2)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Exact adjoint: (B, C, h, w) -> (B, C, H, W) (``H = h s`` unless ``img_size`` says)."""
        _check_image(y, "y")
        h, w_ = self._x_size(y)
        w, s, p, mode = self._taps_like(y), self.factor, self._pad, self.padding
        z = _down_last_adjoint(y.transpose(-1, -2), w, s, p, mode, h).transpose(-1, -2)
        return _down_last_adjoint(z, w, s, p, mode, w_)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Minimum-norm least-squares image ``A^T (A A^T)^{-1} y`` (Moore-Penrose inverse).

        ``(A A^T) u = y`` is solved by conjugate gradients on the low-resolution grid (it is
        well conditioned for bicubic, exactly ``I / s^2`` for box, where the result is
        nearest-neighbour upsampling).
        ``A(A_dagger(y)) == y``; the result is smooth where the filter removed detail, a
        baseline rather than a prior-based guess.

        Args:
            y: (B, C, h, w) low-resolution measurements.

        Returns:
            x: (B, C, H, W).
        """
        _check_image(y, "y")
        u = conjugate_gradient(lambda v: self.A(self.A_adjoint(v)), y, max_iter=self.cg_iters,
                               tol=self.cg_tol, eps=1e-30)
        return self.A_adjoint(u)
