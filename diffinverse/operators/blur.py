"""Convolution blur with exact adjoints for each boundary rule, and blur kernels.

``Blur(kernel)`` applies the same 2D kernel to every channel, so complex images stored as
2 real channels (real, imaginary) are blurred component-wise, as a real kernel must.

Convention: ``y[i, j] = sum_{m, n} k[m, n] x[i - m + kh // 2, j - n + kw // 2]`` (a true
convolution, centred on the kernel pixel ``(kh // 2, kw // 2)``; odd sizes give no shift).

References:
    Hansen, Nagy, O'Leary, "Deblurring Images: Matrices, Spectra, and Filtering", SIAM 2006
    (boundary conditions, Tikhonov/Wiener filtering).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from deepinv.optim.linear import conjugate_gradient
from deepinv.physics import LinearPhysics

__all__ = ["Blur", "gaussian_kernel", "motion_kernel", "pad2d", "pad2d_adjoint", "PADDINGS"]

PADDINGS = ("circular", "reflect", "replicate", "zeros", "valid")
# Kernels with at least this many taps are convolved by FFT (conv2d's cost grows with the
# taps, the FFT's does not): on a CPU conv2d is the faster at 3 x 3, the FFT from 5 x 5 on.
_FFT_MIN_TAPS = 25


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a real (B, C, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name}: expected a real tensor (complex images as 2 real channels), "
                        f"got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected shape (B, C, H, W), got {tuple(x.shape)}")


def pad2d(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Pad the last two dims of ``x`` (B, C, H, W) by ``pads = (top, bottom, left, right)``.

    Args:
        x: (B, C, H, W).
        pads: pixels added above, below, left and right.
        mode: "circular", "reflect" (mirror without repeating the edge), "replicate" or "zeros".

    Returns:
        (B, C, H + top + bottom, W + left + right).
    """
    top, bottom, left, right = pads
    torch_mode = "constant" if mode == "zeros" else mode
    return F.pad(x, (left, right, top, bottom), mode=torch_mode)


def _pad_adjoint_last(y: torch.Tensor, a: int, b: int, mode: str) -> torch.Tensor:
    """Adjoint of 1D padding of the last dim by ``a`` before and ``b`` after."""
    n = y.shape[-1] - a - b
    out = y[..., a:a + n]
    if mode == "zeros":
        return out
    yl, yr = y[..., :a], y[..., a + n:]
    if mode == "circular":
        if a:
            out = out + F.pad(yl, (n - a, 0))
        if b:
            out = out + F.pad(yr, (0, n - b))
    elif mode == "reflect":
        if a:
            out = out + F.pad(yl.flip(-1), (1, n - 1 - a))
        if b:
            out = out + F.pad(yr.flip(-1), (n - 1 - b, 1))
    elif mode == "replicate":
        if a:
            out = out + F.pad(yl.sum(-1, keepdim=True), (0, n - 1))
        if b:
            out = out + F.pad(yr.sum(-1, keepdim=True), (n - 1, 0))
    else:
        raise ValueError(f"padding mode must be one of circular, reflect, replicate, zeros; got {mode!r}")
    return out


def pad2d_adjoint(y: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Exact adjoint of :func:`pad2d`: folds the padded borders back onto the image.

    Args:
        y: (B, C, H + top + bottom, W + left + right).
        pads: the ``(top, bottom, left, right)`` given to :func:`pad2d`.
        mode: the mode given to :func:`pad2d`.

    Returns:
        (B, C, H, W).
    """
    top, bottom, left, right = pads
    out = _pad_adjoint_last(y, left, right, mode)
    return _pad_adjoint_last(out.transpose(-1, -2), top, bottom, mode).transpose(-1, -2)


def _same_pads(kh: int, kw: int) -> tuple[int, int, int, int]:
    # output pixel i sees input i - m + kh // 2, so (kh - 1) // 2 rows above, kh // 2 below
    return (kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2


def _conv_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Valid true convolution of every channel of x (B, C, Hp, Wp) with k (kh, kw)."""
    b, c, hp, wp = x.shape
    kh, kw = k.shape
    if k.numel() >= _FFT_MIN_TAPS:
        kf = torch.fft.rfft2(k, s=(hp, wp))
        full = torch.fft.irfft2(torch.fft.rfft2(x) * kf, s=(hp, wp))
        return full[..., kh - 1:, kw - 1:]
    y = F.conv2d(x.reshape(b * c, 1, hp, wp), k.flip(-1, -2)[None, None])
    return y.reshape(b, c, *y.shape[-2:])


def _conv_valid_adjoint(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Exact adjoint of :func:`_conv_valid`: (B, C, h, w) -> (B, C, h + kh - 1, w + kw - 1)."""
    b, c, h, w = y.shape
    kh, kw = k.shape
    hp, wp = h + kh - 1, w + kw - 1
    if k.numel() >= _FFT_MIN_TAPS:
        kf = torch.fft.rfft2(k, s=(hp, wp))
        z = F.pad(y, (kw - 1, 0, kh - 1, 0))
        return torch.fft.irfft2(torch.fft.rfft2(z) * kf.conj(), s=(hp, wp))
    x = F.conv_transpose2d(y.reshape(b * c, 1, h, w), k.flip(-1, -2)[None, None])
    return x.reshape(b, c, hp, wp)


class Blur(LinearPhysics):
    """Blur every channel with one 2D kernel: ``y = k * x`` (+ noise).

    Args:
        kernel: (kh, kw) real, finite kernel (e.g. :func:`gaussian_kernel`); not renormalised.
        padding: boundary rule.
            ``"circular"``: periodic image, computed by FFT; ``A_dagger`` is an exact Wiener filter.
            ``"reflect"`` (mirror, edge not repeated), ``"replicate"``, ``"zeros"``: output the
            size of the input. ``"valid"``: no padding, output (H - kh + 1, W - kw + 1).
            Every mode has an exact adjoint (the padding's adjoint folds borders back).
        reg: Tikhonov weight of ``A_dagger``, relative to the kernel's gain (see :meth:`A_dagger`).
        noise_model: a deepinv noise model (default: none).
        cg_iters: conjugate-gradient iterations of ``A_dagger`` for non-circular padding.
        cg_tol: relative residual at which that CG stops.

    Shapes:
        x: (B, C, H, W), any C (C = 2 for complex images); y: (B, C, H', W').

    Example:
        >>> op = Blur(gaussian_kernel(2.0), padding="reflect")
        >>> y = op(x)                      # blurred image, same shape as x

    References:
        Hansen, Nagy, O'Leary, "Deblurring Images", SIAM 2006, ch. 4 (boundary conditions)
        and ch. 5 (Tikhonov regularisation).
    """

    def __init__(self, kernel: torch.Tensor, *, padding: str = "circular", reg: float = 1e-2,
                 noise_model=None, cg_iters: int = 100, cg_tol: float = 1e-6):
        super().__init__(noise_model=noise_model)
        if not isinstance(kernel, torch.Tensor):
            raise TypeError(f"kernel: expected a torch.Tensor, got {type(kernel).__name__}")
        if kernel.is_complex() or not kernel.is_floating_point():
            raise TypeError(f"kernel: expected a real floating tensor, got dtype {kernel.dtype}")
        if kernel.ndim != 2 or kernel.numel() == 0:
            raise ValueError(f"kernel: expected shape (kh, kw), got {tuple(kernel.shape)}")
        if not torch.isfinite(kernel).all() or not kernel.abs().sum() > 0:
            raise ValueError("kernel: expected finite values, not all zero")
        if padding not in PADDINGS:
            raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")
        if not reg > 0:
            raise ValueError(f"reg: expected a positive float, got {reg}")
        self.padding = padding
        self.reg = float(reg)
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.register_buffer("kernel", kernel.detach().clone())

    def _kernel_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.to(device=x.device, dtype=x.dtype)

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        _check_image(x, name)
        kh, kw = self.kernel.shape
        h, w = x.shape[-2:]
        if self.padding in ("circular", "valid") and (kh > h or kw > w):
            raise ValueError(f"{name}: image {h}x{w} is smaller than the kernel {kh}x{kw} "
                             f"({self.padding} padding)")
        if self.padding == "reflect" and (kh // 2 >= h or kw // 2 >= w):
            raise ValueError(f"{name}: reflect padding by {kh // 2}x{kw // 2} needs an image larger "
                             f"than that, got {h}x{w}")

    def _transfer(self, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """rfft2 of the kernel embedded periodically in an (H, W) grid, centre at the origin."""
        k = self._kernel_like(like)
        kh, kw = k.shape
        h, w = shape
        k = torch.roll(F.pad(k, (0, w - kw, 0, h - kh)), (-(kh // 2), -(kw // 2)), dims=(0, 1))
        return torch.fft.rfft2(k)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Blur: (B, C, H, W) -> (B, C, H, W), or (B, C, H - kh + 1, W - kw + 1) for "valid"."""
        self._check_input(x, "x")
        if self.padding == "circular":
            s = x.shape[-2:]
            return torch.fft.irfft2(torch.fft.rfft2(x) * self._transfer(s, x), s=s)
        k = self._kernel_like(x)
        if self.padding != "valid":
            x = pad2d(x, _same_pads(*k.shape), self.padding)
        return _conv_valid(x, k)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Exact adjoint (correlation with the kernel, then the padding's adjoint)."""
        _check_image(y, "y")
        if self.padding == "circular":
            self._check_input(y, "y")
            s = y.shape[-2:]
            return torch.fft.irfft2(torch.fft.rfft2(y) * self._transfer(s, y).conj(), s=s)
        k = self._kernel_like(y)
        x = _conv_valid_adjoint(y, k)
        if self.padding != "valid":
            x = pad2d_adjoint(x, _same_pads(*k.shape), self.padding)
        return x

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Tikhonov-regularised inverse ``argmin_x ||A x - y||^2 + lam ||x||^2``.

        ``lam = reg * (sum |k|)^2``, so ``reg`` is relative to the kernel's largest gain (its
        DC gain when non-negative). For circular padding this is the Wiener filter
        ``conj(K) Y / (|K|^2 + lam)`` (white signal and noise, noise-to-signal power ratio
        ``lam``), computed exactly by FFT. Other paddings solve the
        normal equations ``(A^T A + lam I) x = A^T y`` by conjugate gradients. The default
        ``reg = 1e-2`` bounds the noise gain by ``1 / (2 sqrt(lam)) = 5``, chosen for images in
        [0, 1] with noise std about 0.01: a smaller ``reg`` lets the noise blow up there, a
        larger one over-smooths. Lower it for cleaner data.

        Args:
            y: (B, C, H', W') measurements.

        Returns:
            x: (B, C, H, W).
        """
        _check_image(y, "y")
        lam = self.reg * float(self.kernel.double().abs().sum()) ** 2
        if self.padding == "circular":
            self._check_input(y, "y")
            s = y.shape[-2:]
            kf = self._transfer(s, y)
            return torch.fft.irfft2(torch.fft.rfft2(y) * kf.conj() / (kf.abs() ** 2 + lam), s=s)
        return conjugate_gradient(lambda x: self.A_adjoint(self.A(x)) + lam * x, self.A_adjoint(y),
                                  max_iter=self.cg_iters, tol=self.cg_tol, eps=1e-30)


def _pair(v, name: str) -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected a number or a pair, got {v!r}")
        return tuple(v)
    return (v, v)


def gaussian_kernel(sigma: float | tuple[float, float], size: int | tuple[int, int] | None = None
                    ) -> torch.Tensor:
    """Sampled, normalised 2D Gaussian kernel.

    Args:
        sigma: standard deviation in pixels, one value or ``(sigma_y, sigma_x)``; > 0.
        size: kernel size, one value or ``(h, w)``; default ``2 * ceil(4 * sigma) + 1`` per axis
            (truncating at 4 sigma keeps the kernel's std within 0.1 % of ``sigma``).

    Returns:
        (h, w) float32 kernel summing to 1, centred at ``((h - 1) / 2, (w - 1) / 2)``.
    """
    sigmas = _pair(sigma, "sigma")
    if not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in sigmas):
        raise ValueError(f"sigma: expected positive finite numbers, got {sigma!r}")
    sizes = _pair(size, "size") if size is not None else tuple(2 * math.ceil(4 * s) + 1 for s in sigmas)
    if not all(isinstance(n, int) and n >= 1 for n in sizes):
        raise ValueError(f"size: expected positive integers, got {size!r}")
    axes = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in sizes]
    gy, gx = (torch.exp(-0.5 * (a / s) ** 2) for a, s in zip(axes, sigmas))
    k = gy[:, None] * gx[None, :]
    return (k / k.sum()).float()


def motion_kernel(size: int, *, length: float | None = None, curvature: float = 0.5,
                  generator: torch.Generator) -> torch.Tensor:
    """Random camera-shake kernel: a smooth random path, rasterised and normalised.

    The path starts in a uniformly random direction and turns by Gaussian increments (a
    random walk of the heading, ``curvature`` radians per sqrt(pixel)); it is centred on its
    centroid (so the blur does not shift the image), shrunk if needed to fit the grid, and
    splatted bilinearly.

    Args:
        size: kernel width and height in pixels (odd sizes keep the centroid on a pixel).
        length: path length in pixels; default ``size / 2``.
        curvature: heading diffusion in radians per sqrt(pixel); 0 gives a straight line.
        generator: the source of randomness (required: same seed, same kernel).

    Returns:
        (size, size) float32 kernel, non-negative, summing to 1.

    References:
        Boracchi, Foi, "Modeling the performance of image restoration from motion blur",
        IEEE TIP 2012 (random-trajectory motion kernels).
    """
    if not isinstance(size, int) or size < 3:
        raise ValueError(f"size: expected an integer >= 3, got {size!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    length = size / 2 if length is None else float(length)
    if not (math.isfinite(length) and length > 0):
        raise ValueError(f"length: expected a positive number of pixels, got {length}")
    if not curvature >= 0:
        raise ValueError(f"curvature: expected >= 0, got {curvature}")
    n = max(8, int(4 * length))
    ds = length / (n - 1)
    g = dict(generator=generator, dtype=torch.float64, device=generator.device)
    turns = curvature * math.sqrt(ds) * torch.randn(n - 1, **g)
    heading = 2 * math.pi * torch.rand((), **g) + turns.cumsum(0)
    steps = ds * torch.stack([torch.sin(heading), torch.cos(heading)], dim=-1)
    path = F.pad(steps.cumsum(0), (0, 0, 1, 0)).cpu()
    path = path - path.mean(0)
    half = (size - 1) / 2
    path = path * min(1.0, half / float(path.abs().max().clamp_min(1e-12))) + half
    # bilinear splatting: each point spreads unit mass over its four neighbours
    lo = path.floor().clamp(0, size - 2)
    frac = path - lo
    lo = lo.long()
    k = torch.zeros(size * size, dtype=torch.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            wy = frac[:, 0] if dy else 1 - frac[:, 0]
            wx = frac[:, 1] if dx else 1 - frac[:, 1]
            k.index_add_(0, (lo[:, 0] + dy) * size + lo[:, 1] + dx, wy * wx)
    k = k.reshape(size, size)
    return (k / k.sum()).float()
