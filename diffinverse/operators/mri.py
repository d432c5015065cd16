"""MRI forward models: centred orthonormal FFT, single-coil and multi-coil (SENSE) operators.

Conventions: complex images are real tensors with 2 channels (real, imaginary), ``(B, 2, H, W)``;
multi-coil k-space is ``(B, 2, C, H, W)``; phase-encode lines are the last dimension (columns).
The transform is fastMRI's centred orthonormal FFT,
``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``.

The centring shifts are not applied as copies (rolls). A shift of a DFT's input or output is a
multiplication by a unit-modulus phase ramp on the other side, so
``fft2c(x) = post * fft2(pre * x)`` with ``pre[n] = exp(2 pi i s n / N)``,
``post[k] = exp(2 pi i s (k - s) / N)``, ``s = N // 2`` per axis (for even ``N`` both are
``+-1`` checkerboards). The operators fold ``pre`` into the coil maps and ``post`` into the
mask once, at construction, so a forward or adjoint costs one map product, one plain FFT and one
mask product.

The normal operator ``A^H A`` of a Cartesian line mask (constant along the readout axis ``H``, as
``random_lines`` and ``equispaced_lines`` are) needs FFTs along the phase-encode axis ``W`` only:
the transform along ``H`` commutes with a mask that does not vary along ``H`` and cancels against
its inverse. The operators detect such masks at construction; ``A^H A`` then costs half the FFT
work (timings in ``benchmarks/README.md``, MRI).
2D masks (``variable_density_2d``) take 2D FFTs.

``compact(y)`` takes this further for solvers that need only ``||A x - y||`` and its gradients.
For a line mask ``A x = U (m_W post_W F_W c)`` with ``c`` the (ramped) coil images, ``F_W`` the
FFT along ``W``, ``m_W post_W`` the mask and output ramp along ``W``, and ``U = diag(post_H) F_H``
unitary along ``H``; so ``||A x - y|| = ||A' x - y'||`` with ``y' = U^H y`` and ``A'`` the
transform along ``W`` kept on the sampled columns only. Data arrays shrink by the acceleration
(e.g. 61 of 256 lines at 4x), and ``A'`` and its adjoint take 1D FFTs.
:func:`~diffinverse.baselines.tv_reconstruction` uses it.

On CPU, batches run in chunks of about 16 MiB of coil images (large temporaries would otherwise be
fresh, page-faulting memory on every call).

Input checks: shapes, channel counts and dtypes on every call (``ValueError``/``TypeError``
naming the expected layout); non-finite values in the mask and maps at construction and in
``y`` in ``A_dagger`` (not in ``A``/``A_adjoint``, where a full scan would add a pass over the
data to every sampler step).

Memory layout: ``A_adjoint_A`` (and the single-coil ``A_adjoint``) return a dense tensor in their
input's layout, standard or channels-last, so that a sampler whose state is kept channels-last (the
network's layout) pays no copies; ``to_complex`` of a channels-last image is itself free.

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", arXiv:1811.08839.
    Pruessmann et al., "SENSE: Sensitivity encoding for fast MRI", MRM 42 (1999) 952-962.
    Uecker et al., "ESPIRiT - an eigenvalue approach to autocalibrating parallel MRI", MRM 71 (2014) 990-1001.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import ZeroNoise

__all__ = ["fft2c", "ifft2c", "to_channels", "to_complex", "SingleCoilMRI", "MultiCoilMRI"]

# CPU chunk of coil images for the operators on the sampled lines (``compact``), in bytes: they make
# more temporaries per chunk than the full operators, and run slower with the full operators'
# 16 MiB chunks than with 4-8 MiB ones
_LINES_CHUNK = 4 << 20


def _axis_ramps(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output phase ramps ``(pre, post)`` of the centred 1D FFT of length ``n``: float64
    ``+-1`` for even ``n``, complex128 otherwise."""
    s = n // 2
    idx = torch.arange(n, dtype=torch.float64)
    if n % 2 == 0:
        return 1.0 - 2.0 * (idx % 2), 1.0 - 2.0 * ((idx - s) % 2)
    return (torch.polar(torch.ones(n, dtype=torch.float64), 2 * torch.pi * s * idx / n),
            torch.polar(torch.ones(n, dtype=torch.float64), 2 * torch.pi * s * (idx - s) / n))


@lru_cache(maxsize=32)
def _ramps(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output phase ramps ``(pre, post)``, each ``(H, W)``, of the centred 2D FFT.

    Real ``+-1`` tensors of ``dtype`` when both sizes are even, complex otherwise.
    """
    (pre_h, post_h), (pre_w, post_w) = _axis_ramps(h), _axis_ramps(w)
    pre, post = pre_h[:, None] * pre_w[None, :], post_h[:, None] * post_w[None, :]
    if pre.is_complex():
        out_dtype = torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64
    else:
        out_dtype = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    return pre.to(device=device, dtype=out_dtype), post.to(device=device, dtype=out_dtype)


def _check_complex(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_complex():
        raise TypeError(f"{name} must be a complex tensor (use to_complex on a (B, 2, ...) real "
                        f"tensor), got dtype {z.dtype}")
    if z.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., H, W), got shape {tuple(z.shape)}")


def fft2c(z: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two dims (fastMRI's ``fft2c``).

    Args:
        z: complex tensor ``(..., H, W)`` (image domain, centre of the FOV at ``(H // 2, W // 2)``).

    Returns:
        Complex tensor ``(..., H, W)``: k-space with the DC sample at ``(H // 2, W // 2)``.

    References:
        fastMRI ``fastmri.fft2c``: ``fftshift(fft2(ifftshift(z), norm="ortho"))``.
    """
    _check_complex(z, "z")
    pre, post = _ramps(z.shape[-2], z.shape[-1], z.dtype, z.device)
    return torch.fft.fft2(z * pre, norm="ortho") * post


def ifft2c(z: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT over the last two dims (fastMRI's ``ifft2c``).

    Args:
        z: complex k-space ``(..., H, W)``, DC at ``(H // 2, W // 2)``.

    Returns:
        Complex image ``(..., H, W)``; ``ifft2c(fft2c(z)) == z``.
    """
    _check_complex(z, "z")
    pre, post = _ramps(z.shape[-2], z.shape[-1], z.dtype, z.device)
    return torch.fft.ifft2(z * post.conj(), norm="ortho") * pre.conj()


def to_channels(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, ...)`` -> real ``(B, 2, ...)`` with channels (real, imaginary).

    The result is a view of ``z`` (no copy); call ``.contiguous()`` if a dense layout is needed.
    """
    _check_complex(z, "z")
    return torch.view_as_real(z).movedim(-1, 1)


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real ``(B, 2, ...)`` with channels (real, imaginary) -> complex ``(B, ...)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"expected a real tensor with 2 channels (real, imag) in dim 1, got complex "
                        f"dtype {x.dtype}; use to_channels(z) to convert")
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"expected a floating tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[1] != 2:
        raise ValueError(f"expected shape (B, 2, ...) with channels (real, imag), got {tuple(x.shape)}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.view_as_complex(x.movedim(1, -1).contiguous())


def _to_image(z: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    """``to_channels(z)`` as a dense tensor in the memory layout of ``like``: channels-last (free:
    it is the view's own layout) when ``like`` is a channels-last 4-D tensor, else the standard one."""
    channels_last = (like is not None and like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last)
                     and not like.is_contiguous())
    return to_channels(z).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _as_mask(mask, name: str = "mask") -> torch.Tensor:
    """Validate a 0/1 mask ``(H, W)`` or ``(B, H, W)``; return it as ``(Bm, 1, H, W)`` float."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (H, W) or (B, H, W), got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"{name} must be a real 0/1 tensor, got complex dtype {mask.dtype}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (B, H, W), got {tuple(mask.shape)}")
    mask = mask.to(torch.float64 if mask.dtype == torch.float64 else torch.float32)
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name} contains non-finite values")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return mask.reshape(-1, 1, *mask.shape[-2:])


def _masked_normal(z: torch.Tensor, w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``F^H diag(w) F z`` with the plain orthonormal FFT ``F`` over ``dims`` (``w`` broadcasts)."""
    return torch.fft.ifftn(torch.fft.fftn(z, dim=dims, norm="ortho").mul_(w), dim=dims, norm="ortho")


def _check_batch(b: int, bm: int, what: str) -> None:
    if bm not in (1, b):
        raise ValueError(f"batch size {b} does not match the {what} batch size {bm}")


def _check_real_input(x: torch.Tensor, name: str, ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real with 2 channels (real, imag) {layout}, got complex dtype "
                        f"{x.dtype}; use to_channels")
    if x.ndim != ndim or x.shape[1] != 2:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")


class _CartesianMRI(LinearPhysics):
    """Shared set-up of the MRI operators: mask buffers and the noise model."""

    def __init__(self, mask: torch.Tensor, *, noise_model=None, **kwargs):
        super().__init__(noise_model=ZeroNoise() if noise_model is None else noise_model, **kwargs)
        m = _as_mask(mask)
        self.register_buffer("_mask", m)
        _, post = _ramps(m.shape[-2], m.shape[-1], torch.float64, m.device)
        # A^H A transforms only the axes the mask varies along: W for a line mask (see the module notes)
        lines = bool((m == m[..., :1, :]).all())
        self._normal_dims = (-1,) if lines else (-2, -1)
        # k-space weights with the FFT's output ramp folded in (|kmask| == mask), and the weights
        # of A^H A over _normal_dims ((Bm, 1, 1, W) for a line mask), kept in double and single
        # precision: each call takes the data's without a cast (a kernel per call on GPUs)
        kmask = m.double() * post
        for name, w in (("_kmask", kmask), ("_kmask_conj", kmask.conj().resolve_conj()),
                        ("_normal_w", self._normal_weights(m[..., :1, :].double() if lines else m.double()))):
            self.register_buffer(name, w, persistent=False)
            self.register_buffer(name + "_single", w.to(torch.complex64 if w.is_complex() else torch.float32),
                                 persistent=False)

    def _in_precision(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The buffer ``name`` in ``dtype``'s precision (double, or the ``_single`` copy)."""
        return getattr(self, name if dtype in (torch.float64, torch.complex128) else name + "_single")

    def _normal_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask as ``A^H A`` applies it between plain FFTs over ``_normal_dims``."""
        raise NotImplementedError

    def _kweights(self, dtype: torch.dtype, *, conj: bool = False) -> torch.Tensor:
        """The k-space weights ``(Bm, 1, H, W)`` (or their conjugate) in ``dtype``'s precision."""
        return self._in_precision("_kmask_conj" if conj else "_kmask", dtype)

    @property
    def mask(self) -> torch.Tensor:
        """The sampling mask, ``(H, W)`` or ``(B, H, W)`` as given."""
        return self._mask[:, 0] if self._mask.shape[0] > 1 else self._mask[0, 0]

    @property
    def img_shape(self) -> tuple[int, int]:
        return tuple(self._mask.shape[-2:])

    def noise(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Noise on sampled k-space locations only (unsampled locations stay 0)."""
        m = self._mask if y.ndim == 4 else self._mask[:, None]
        return m * self.noise_model(y, **kwargs)

    def compact(self, y: torch.Tensor) -> tuple[LinearPhysics, torch.Tensor] | None:
        """The same least-squares problem on the sampled lines only, or ``None`` for a 2D mask.

        Returns ``(physics, y_lines)`` with ``||physics.A(x) - y_lines|| = ||A(x) - y||`` for every
        ``x`` and ``physics.A_adjoint(y_lines) = A^H y``, for ``y`` that is 0 off the mask (as
        ``A``'s outputs and ``noise`` are; other entries of ``y`` are dropped, which changes
        ``||A x - y||^2`` by a constant and not its minimiser). Its data are the sampled columns
        (the union over the batch for per-item masks), transformed back along the readout ``H``
        (see the module notes): a forward or adjoint costs 1D FFTs along ``W``, and a solver's
        arrays in data space (``(B, 2, C, H, n)`` for ``n`` sampled lines) are ``W / n`` times
        smaller. For solvers that need only ``||A x - y||`` and its gradients, such as
        :func:`~diffinverse.baselines.tv_reconstruction`, which uses it.
        """
        if self._normal_dims != (-1,):
            return None
        line_mask = self._mask[:, 0, 0]                                 # (Bm, W): constant along H
        cols = torch.nonzero(line_mask.amax(0) > 0).flatten()
        h, w = self.img_shape
        y = self._check_data(y)
        _, post_h = _axis_ramps(h)
        _, post_w = _axis_ramps(w)
        post_w = post_w.to(line_mask.device)[cols]
        # y' = U^H y with U = diag(post_h) F_H (see the module notes), on the sampled columns only
        lines = torch.fft.ifft(torch.index_select(y, -1, cols) * post_h.to(y.device, y.dtype).conj()[:, None],
                               dim=-2, norm="ortho")
        # (Bm, n): mask and output ramp, in the data's precision (a call in another one casts them)
        weights = (line_mask[:, cols].double() * post_w).to(lines.dtype)
        return _SampledLines(self, cols, weights), to_channels(lines)


class SingleCoilMRI(_CartesianMRI):
    """Single-coil Cartesian MRI: ``y = M F x`` with ``F`` the centred orthonormal 2D FFT.

    Args:
        mask: 0/1 sampling mask ``(H, W)`` or ``(B, H, W)`` (one per batch item).
        noise_model: a deepinv noise model (default: no noise); noise is added on sampled
            locations only.

    Shapes:
        ``A``: ``x (B, 2, H, W)`` -> ``y (B, 2, H, W)`` (masked k-space, unsampled = 0).
        ``A_adjoint`` = ``A_dagger`` (zero-filled; exact pseudo-inverse for a 0/1 mask).

    References:
        Zbontar et al., "fastMRI", arXiv:1811.08839.
    """

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        k = torch.fft.fft2(self._ramped_image(x), norm="ortho")
        return to_channels(k * self._kweights(k.dtype)[:, 0])

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        k = self._check_data(y)
        pre, _ = _ramps(*self.img_shape, y.dtype, y.device)
        z = torch.fft.ifft2(k * self._kweights(k.dtype, conj=True)[:, 0], norm="ortho") * pre.conj()
        return _to_image(z, y)

    def _normal_weights(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifftshift(mask, dim=self._normal_dims)

    def A_adjoint_A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``A^H A x = F_u^H diag(ifftshift(mask)) F_u x`` with the uncentred FFT ``F_u``.

        The centring ramps cancel: the input ramp shifts k-space by ``(H // 2, W // 2)``, so
        masking the shifted spectrum with the unshifted mask is masking the plain spectrum with
        ``ifftshift(mask)``, and the output ramp (modulus 1) drops out. For a line mask ``F_u``
        is the 1D FFT along ``W`` (see the module notes). Fewer kernels than ``A_adjoint(A(x))``,
        same result.
        """
        _check_real_input(x, "x", 4, "(B, 2, H, W)")
        self._check_size(x)
        z = to_complex(x)
        w = self._in_precision("_normal_w", z.dtype)
        return _to_image(_masked_normal(z, w[:, 0], self._normal_dims), x)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Zero-filled reconstruction ``F^H y`` (the pseudo-inverse for a 0/1 mask)."""
        if isinstance(y, torch.Tensor) and not torch.isfinite(y).all():
            raise ValueError("y contains non-finite values")
        return self.A_adjoint(y)

    def _check_data(self, y: torch.Tensor) -> torch.Tensor:
        """Validate k-space ``(B, 2, H, W)``; return it complex ``(B, H, W)``."""
        _check_real_input(y, "y", 4, "(B, 2, H, W)")
        self._check_size(y)
        return to_complex(y)

    def _ramped_image(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an image ``(B, 2, H, W)``; return it complex, times the FFT's input ramp."""
        _check_real_input(x, "x", 4, "(B, 2, H, W)")
        self._check_size(x)
        pre, _ = _ramps(*self.img_shape, x.dtype, x.device)
        return to_complex(x) * pre

    def _lines_forward(self, x: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = torch.fft.fft(self._ramped_image(x), dim=-1, norm="ortho")
        return torch.index_select(k, -1, cols) * weights[:, None]

    def _lines_adjoint(self, k: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        full = k.new_zeros((*k.shape[:-1], self.img_shape[1])).index_copy_(-1, cols, k * weights.conj()[:, None])
        pre, _ = _ramps(*self.img_shape, k.dtype, k.device)
        return _to_image(torch.fft.ifft(full, dim=-1, norm="ortho") * pre.conj(), None)

    def with_mask(self, mask: torch.Tensor) -> "SingleCoilMRI":
        """A new operator with ``mask`` and the same noise model (this one is unchanged)."""
        return SingleCoilMRI(mask, noise_model=self.noise_model)

    def _check_size(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != self.img_shape:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} does not match the mask size {self.img_shape}")
        _check_batch(x.shape[0], self._mask.shape[0], "mask")


class MultiCoilMRI(_CartesianMRI):
    """Multi-coil Cartesian MRI (SENSE): ``y_c = M F (sum_m S_{m,c} x_m)``.

    With one map set (``M = 1``) ``x`` is one complex image ``(B, 2, H, W)``; with ``M`` sets
    (soft-SENSE, e.g. the two ESPIRiT eigenvector maps of a wrapping field of view) ``x`` is
    ``(B, 2, M, H, W)``, one image per set, and the coil signals are their sum.

    Args:
        mask: 0/1 sampling mask ``(H, W)`` or ``(B, H, W)``.
        coil_maps: complex sensitivities ``(C, H, W)`` (one set), ``(M, C, H, W)`` (M sets) or
            ``(B, M, C, H, W)`` (one stack per batch item, e.g. per slice).
        noise_model: a deepinv noise model (default: none); noise on sampled locations only.
        cg_iters: maximum conjugate-gradient iterations of ``A_dagger``.
        cg_tol: relative residual ``||A^H A x - A^H y|| / ||A^H y||`` at which CG stops.
        cg_lambda: Tikhonov weight ``lambda`` of ``A_dagger``: solves
            ``(A^H A + lambda I) x = A^H y``; 0 = plain least squares. With ESPIRiT maps
            (orthonormal per pixel) the eigenvalues of ``A^H A`` lie in [0, 1], so ``lambda`` is
            relative to them and independent of the data's scale. Unregularised CG on real
            undersampled data amplifies noise as it converges; with ``lambda = 0.01`` it
            converges without that blow-up (``benchmarks/README.md``, MRI, real data) at the
            cost of a ``1 / (1 + lambda)`` shrinkage on fully sampled data.

    Shapes:
        ``A``: ``x (B, 2, H, W)`` or ``(B, 2, M, H, W)`` -> ``y (B, 2, C, H, W)``.
        ``A_adjoint``: the reverse. ``A_dagger``: SENSE by CG on the normal equations.
        Outputs of ``A`` are views in deepinv's layout (call ``.contiguous()`` if needed).

    References:
        Pruessmann et al., "SENSE", MRM 42 (1999); Uecker et al., "ESPIRiT", MRM 71 (2014).
    """

    def __init__(self, mask: torch.Tensor, coil_maps: torch.Tensor, *, noise_model=None,
                 cg_iters: int = 50, cg_tol: float = 1e-6, cg_lambda: float = 1e-2, **kwargs):
        super().__init__(mask, noise_model=noise_model, **kwargs)
        if not isinstance(coil_maps, torch.Tensor):
            raise TypeError(f"coil_maps must be a complex torch.Tensor, got {type(coil_maps).__name__}")
        if not coil_maps.is_complex():
            raise TypeError(f"coil_maps must be complex (C, H, W), (M, C, H, W) or (B, M, C, H, W), "
                            f"got dtype {coil_maps.dtype}")
        if coil_maps.ndim not in (3, 4, 5):
            raise ValueError(f"coil_maps must have shape (C, H, W), (M, C, H, W) or (B, M, C, H, W), "
                             f"got {tuple(coil_maps.shape)}")
        if tuple(coil_maps.shape[-2:]) != self.img_shape:
            raise ValueError(f"coil_maps size {tuple(coil_maps.shape[-2:])} does not match the mask "
                             f"size {self.img_shape}")
        if not torch.isfinite(torch.view_as_real(coil_maps)).all():
            raise ValueError("coil_maps contains non-finite values")
        if cg_iters < 1 or cg_tol < 0 or cg_lambda < 0:
            raise ValueError(f"expected cg_iters >= 1, cg_tol >= 0, cg_lambda >= 0, got "
                             f"{cg_iters}, {cg_tol}, {cg_lambda}")
        maps = coil_maps[(None,) * (5 - coil_maps.ndim)]  # (Bs, M, C, H, W)
        if self._mask.shape[0] > 1 and maps.shape[0] > 1 and maps.shape[0] != self._mask.shape[0]:
            raise ValueError(f"mask batch {self._mask.shape[0]} and coil_maps batch {maps.shape[0]} differ")
        self.register_buffer("coil_maps", coil_maps)
        self.cg_iters, self.cg_tol, self.cg_lambda = int(cg_iters), float(cg_tol), float(cg_lambda)
        pre, _ = _ramps(*self.img_shape, maps.dtype, maps.device)
        ramped = maps * pre  # (Bs, M, C, H, W): FFT input ramp folded into the maps
        self.register_buffer("_maps", ramped, persistent=False)
        self.register_buffer("_maps_conj", ramped.conj().resolve_conj(), persistent=False)

    @property
    def num_maps(self) -> int:
        return self._maps.shape[1]

    @property
    def num_coils(self) -> int:
        return self._maps.shape[2]

    # --- complex core: z (B, M, H, W) <-> k (B, C, H, W) ------------------------------------
    def _coil_images(self, z: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        maps = maps.to(z.dtype)
        if self.num_maps == 1:
            return maps[:, 0] * z
        return (maps * z[:, :, None]).sum(1)

    def _combine(self, coil: torch.Tensor, maps_conj: torch.Tensor) -> torch.Tensor:
        # coil is always a fresh FFT output here, so it can be overwritten in place
        maps_conj = maps_conj.to(coil.dtype)
        if self.num_maps == 1:
            return coil.mul_(maps_conj[:, 0]).sum(1, keepdim=True)
        return (maps_conj * coil[:, None]).sum(2)

    def _chunks(self, b: int, dtype: torch.dtype, device: torch.device, budget: int = 16 << 20) -> list[slice]:
        """Batch slices whose coil-image working set stays small (CPU only).

        Large temporaries are fresh ``mmap`` pages on every call (page faults on each pass),
        so on CPU the batch runs in chunks of about 16 MiB of coil images; on GPUs one pass.
        """
        if device.type != "cpu":
            return [slice(0, b)]
        item = self.num_coils * self.img_shape[0] * self.img_shape[1] * torch.empty((), dtype=dtype).element_size()
        step = max(1, budget // item)
        return [slice(i, min(i + step, b)) for i in range(0, b, step)]

    def _normal_weights(self, mask: torch.Tensor) -> torch.Tensor:
        # the maps carry the FFT's input ramp, so the spectrum A^H A masks is the centred one
        return mask

    def _per_chunk(self, b: int, t: torch.Tensor, budget: int = 16 << 20):
        """Yield ``(slice, maps, maps_conj, normal_w, kmask, kmask_conj)`` for each batch chunk."""
        dtype = torch.promote_types(t.dtype, self._maps.dtype)
        for sl in self._chunks(b, t.dtype, t.device, budget):
            yield (sl, *(_batch_rows(buf, sl) for buf in (self._maps, self._maps_conj,
                                                           self._in_precision("_normal_w", dtype),
                                                           self._kweights(dtype), self._kweights(dtype, conj=True))))

    def _forward_c(self, z: torch.Tensor) -> torch.Tensor:
        chunks = list(self._per_chunk(z.shape[0], z))
        if len(chunks) > 1 and not (torch.is_grad_enabled() and (z.requires_grad or self._maps.requires_grad)):
            # no autograd graph needed: write each chunk into the output (no concatenation copy)
            dtype = torch.promote_types(z.dtype, self._maps.dtype)
            out = torch.empty(z.shape[0], self.num_coils, *self.img_shape, dtype=dtype, device=z.device)
            for sl, maps, _, _, kmask, _ in chunks:
                torch.fft.fft2(self._coil_images(z[sl], maps), norm="ortho", out=out[sl])
                out[sl].mul_(kmask)
            return out
        out = []
        for sl, maps, _, _, kmask, _ in chunks:
            k = torch.fft.fft2(self._coil_images(z[sl], maps), norm="ortho")
            out.append(k.mul_(kmask))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _adjoint_c(self, k: torch.Tensor) -> torch.Tensor:
        out = []
        for sl, _, maps_conj, _, _, kmask_conj in self._per_chunk(k.shape[0], k):
            out.append(self._combine(torch.fft.ifft2(k[sl] * kmask_conj, norm="ortho"), maps_conj))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _normal(self, z: torch.Tensor) -> torch.Tensor:
        """``A^H A`` on complex images ``(B, M, H, W)``; the output ramp cancels (|post| = 1).

        For a line mask the FFTs run along ``W`` only, and the input ramp's ``H`` factor cancels
        between the maps and their conjugates (see the module notes).
        """
        out = []
        for sl, maps, maps_conj, normal_w, _, _ in self._per_chunk(z.shape[0], z):
            coil = _masked_normal(self._coil_images(z[sl], maps), normal_w, self._normal_dims)
            out.append(self._combine(coil, maps_conj))
        return out[0] if len(out) == 1 else torch.cat(out)

    # --- channel-layout interface --------------------------------------------------------------
    def _image_to_complex(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_maps == 1:
            _check_real_input(x, "x", 4, "(B, 2, H, W)")
        else:
            _check_real_input(x, "x", 5, f"(B, 2, M={self.num_maps}, H, W)")
            if x.shape[2] != self.num_maps:
                raise ValueError(f"x has {x.shape[2]} images in dim 2, expected M={self.num_maps} "
                                 f"(one per coil-map set)")
        self._check_size(x)
        z = to_complex(x)
        return z[:, None] if self.num_maps == 1 else z

    def _complex_to_image(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Complex images -> real channels, in the layout of the image ``x`` (default standard)."""
        return _to_image(z[:, 0] if self.num_maps == 1 else z, x)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return to_channels(self._forward_c(self._image_to_complex(x)))

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._complex_to_image(self._adjoint_c(self._check_data(y)))

    def A_adjoint_A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._complex_to_image(self._normal(self._image_to_complex(x)), x)

    def _check_data(self, y: torch.Tensor) -> torch.Tensor:
        """Validate k-space ``(B, 2, C, H, W)``; return it complex ``(B, C, H, W)``."""
        _check_real_input(y, "y", 5, f"(B, 2, C={self.num_coils}, H, W)")
        if y.shape[2] != self.num_coils:
            raise ValueError(f"y has {y.shape[2]} coils in dim 2, expected {self.num_coils} (as the coil maps)")
        self._check_size(y)
        return to_complex(y)

    def _lines_forward(self, x: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        z = self._image_to_complex(x)
        out = []
        for sl, maps, _, _, _, _ in self._per_chunk(z.shape[0], z, _LINES_CHUNK):
            k = torch.fft.fft(self._coil_images(z[sl], maps), dim=-1, norm="ortho")
            out.append(torch.index_select(k, -1, cols) * _batch_rows(weights, sl)[:, None, None])
        return out[0] if len(out) == 1 else torch.cat(out)

    def _lines_adjoint(self, k: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = []
        for sl, _, maps_conj, _, _, _ in self._per_chunk(k.shape[0], k, _LINES_CHUNK):
            part = k[sl] * _batch_rows(weights, sl).conj()[:, None, None]
            full = part.new_zeros((*part.shape[:-1], self.img_shape[1])).index_copy_(-1, cols, part)
            out.append(self._combine(torch.fft.ifft(full, dim=-1, norm="ortho"), maps_conj))
        return self._complex_to_image(out[0] if len(out) == 1 else torch.cat(out))

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """SENSE: conjugate gradient on ``(A^H A + lambda I) x = A^H y``.

        Runs at most ``cg_iters`` iterations, stopping when every batch item's relative residual
        is below ``cg_tol``. Returns ``x`` in the layout ``A`` takes.
        """
        if isinstance(y, torch.Tensor) and not torch.isfinite(y).all():
            raise ValueError("y contains non-finite values")
        b = self._image_to_complex(self.A_adjoint(y))
        return self._complex_to_image(self._cg(b))

    def _cg(self, b: torch.Tensor) -> torch.Tensor:
        def dot(u, v):  # per batch item <u, v>, real part (the system is Hermitian PD)
            return (u.conj() * v).real.sum(dim=(1, 2, 3), keepdim=True)

        def op(z):
            return self._normal(z) + self.cg_lambda * z if self.cg_lambda else self._normal(z)

        x = torch.zeros_like(b)
        r, p = b.clone(), b.clone()
        rs = dot(r, r)
        stop = (self.cg_tol ** 2) * rs
        for _ in range(self.cg_iters):
            if bool((rs <= stop).all()):
                break
            ap = op(p)
            alpha = rs / dot(p, ap).clamp_min(torch.finfo(rs.dtype).tiny)
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = dot(r, r)
            p = r + (rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny)) * p
            rs = rs_new
        return x

    def with_mask(self, mask: torch.Tensor) -> "MultiCoilMRI":
        """A new operator with ``mask`` and the same maps, noise model and CG settings."""
        return MultiCoilMRI(mask, self.coil_maps, noise_model=self.noise_model, cg_iters=self.cg_iters,
                            cg_tol=self.cg_tol, cg_lambda=self.cg_lambda)

    def _check_size(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != self.img_shape:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} does not match the mask/coil_maps size "
                             f"{self.img_shape}")
        _check_batch(x.shape[0], self._mask.shape[0], "mask")
        _check_batch(x.shape[0], self._maps.shape[0], "coil_maps")


def _batch_rows(t: torch.Tensor, sl: slice) -> torch.Tensor:
    """Rows ``sl`` of a per-item tensor, or the tensor itself when it has one row for all items."""
    return t if t.shape[0] == 1 else t[sl]


class _SampledLines(LinearPhysics):
    """A Cartesian MRI operator on its sampled lines only (see ``compact``): ``x`` as for the
    operator, data ``(B, 2, [C,] H, n)`` for ``n`` sampled lines."""

    def __init__(self, op: _CartesianMRI, cols: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        self.op = op
        self.register_buffer("cols", cols)
        self.register_buffer("weights", weights)   # (Bm, n), complex

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        return to_channels(self.op._lines_forward(x, self.cols, self.weights.to(dtype)))

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        coils = (self.op.num_coils,) if isinstance(self.op, MultiCoilMRI) else ()
        expected = (2, *coils, self.op.img_shape[0], len(self.cols))
        layout = f"(B, 2{', C' if coils else ''}, H, lines) = (B, {', '.join(map(str, expected))})"
        _check_real_input(y, "y", len(expected) + 1, layout)
        if tuple(y.shape[1:]) != expected:
            raise ValueError(f"y must have shape {layout} on these sampled lines, got {tuple(y.shape)}")
        k = to_complex(y)
        return self.op._lines_adjoint(k, self.cols, self.weights.to(k.dtype))
