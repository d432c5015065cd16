"""2D X-ray CT: parallel- and fan-beam projection with an ASTRA or a pure-torch backend.

Units and coordinates (the same as ASTRA's, so both backends see the same geometry):
    - pixel size 1: an ``img_size``-pixel image spans ``[-img_size/2, img_size/2]^2`` around
      the rotation centre; ``x`` runs along columns (right), ``y`` up (row 0 is the top row);
    - line integrals are in pixel units (a unit-valued pixel crossed straight contributes 1);
    - angles in radians; at angle ``theta`` a parallel ray runs along ``(sin t, -cos t)`` and
      the detector axis is ``(cos t, sin t)``, so a point ``p`` lands at ``s = p . (cos t, sin t)``;
    - parallel beam: detector spacing 1; fan beam: a flat detector, the source at
      ``source_distance`` and the detector at ``detector_distance`` from the rotation centre,
      detector spacing ``(source_distance + detector_distance) / source_distance`` so that the
      spacing, scaled back to the rotation centre, is again one pixel.

Discretisation: parallel beam uses Joseph's method (linear interpolation between the two
pixels a ray crosses in each column or row, ASTRA's ``linear`` projector); fan beam uses exact
ray/pixel intersection lengths (ASTRA's ``line_fanflat``). The torch backend builds the same
matrix itself, so the two backends agree to float32 round-off.

References:
    Joseph, P. M. (1982). An improved algorithm for reprojecting rays through pixel images.
    IEEE Trans. Med. Imaging 1(3). Kak, A. C. and Slaney, M. (1988). Principles of Computerized
    Tomographic Imaging, ch. 3 (ramp filter, fan-beam FBP for flat detectors). van Aarle, W. et
    al. (2016). Fast and flexible X-ray tomography using the ASTRA toolbox. Opt. Express 24(22).
"""
from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence

import numpy as np
import scipy.sparse
import torch
from deepinv.physics import LinearPhysics

__all__ = ["CT", "ramp_filter"]

_GEOMETRIES = ("parallel", "fan")
_BACKENDS = ("astra", "torch")
_FILTERS = ("ram-lak", "hann")


def _astra():
    """The ``astra`` module, imported on first use: the torch backend works without it."""
    try:
        import astra
    except ImportError as e:  # not installed, or its CUDA libraries do not load
        raise ImportError(f"CT backend 'astra' needs the ASTRA toolbox (pip install astra-toolbox), which "
                          f"failed to import ({e}); backend='torch' needs no extra package") from e
    return astra


def ramp_filter(sinogram: torch.Tensor, *, spacing: float = 1.0, window: str = "ram-lak") -> torch.Tensor:
    """Filter each projection (last dimension) with the band-limited ramp filter.

    The spatial Ram-Lak kernel (``1/4`` at 0, ``-1/(pi n)^2`` at odd ``n``, 0 at even ``n``) is
    applied by FFT with zero padding to at least twice the length, so there is no wrap-around.

    Args:
        sinogram: ``(..., num_detectors)`` real tensor.
        spacing: detector spacing (at the rotation centre) in pixels.
        window: ``"ram-lak"`` (no window) or ``"hann"`` (Hann window up to Nyquist: less noise,
            slightly blurrier).

    Returns:
        The filtered sinogram, same shape and dtype, in units of ``1 / spacing`` per sample.

    References:
        Kak and Slaney (1988), eq. (61) of ch. 3.
    """
    if window not in _FILTERS:
        raise ValueError(f"window must be one of {_FILTERS}, got {window!r}")
    n = sinogram.shape[-1]
    pad = 1 << (2 * n - 1).bit_length()
    k = torch.arange(pad, device=sinogram.device, dtype=torch.float64)
    k = torch.where(k > pad // 2, k - pad, k)
    h = torch.where(k.remainder(2) == 1, -1.0 / (math.pi * k).square(), torch.zeros_like(k))
    h[0] = 0.25
    response = torch.fft.rfft(h).real
    if window == "hann":
        freq = torch.fft.rfftfreq(pad, device=sinogram.device, dtype=torch.float64)  # cycles/sample
        response = response * 0.5 * (1.0 + torch.cos(2.0 * math.pi * freq))
    spectrum = torch.fft.rfft(sinogram, n=pad, dim=-1) * response.to(sinogram.dtype)
    return torch.fft.irfft(spectrum, n=pad, dim=-1)[..., :n] / spacing


def _rays(img_size: int, angles: np.ndarray, geometry: str, num_detectors: int, spacing: float,
          source_distance: float, detector_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins and unit directions, ``(A * D, 2)`` each, angle-major, in world coordinates."""
    s = (np.arange(num_detectors) - (num_detectors - 1) / 2) * spacing
    c, n = np.cos(angles)[:, None], np.sin(angles)[:, None]
    if geometry == "parallel":
        origin = np.stack([s * c, s * n], -1)
        direction = np.broadcast_to(np.stack([n, -c], -1), origin.shape)
    else:
        source = np.stack([source_distance * n, -source_distance * c], -1)
        target = np.stack([-detector_distance * n + s * c, detector_distance * c + s * n], -1)
        origin = np.broadcast_to(source, target.shape)
        direction = target - source
        direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    return origin.reshape(-1, 2), direction.reshape(-1, 2)


def _system_matrix(img_size: int, origin: np.ndarray, direction: np.ndarray, *,
                   kernel: str, chunk: int = 1 << 22) -> scipy.sparse.csr_matrix:
    """The projection matrix ``(num_rays, img_size**2)`` for rays ``origin + t * direction``.

    Each ray is walked along its major axis (x if ``|d_x| >= |d_y|``, else y), one pixel column
    (or row) per step; in each step it touches at most two pixels of that column, with weights
    from linear interpolation (``kernel="joseph"``) or exact intersection lengths
    (``kernel="line"``). Computed in float64, in chunks of rays to bound memory.
    """
    n = img_size
    steps = np.arange(n) - (n - 1) / 2  # pixel-centre coordinate along the step axis
    counts, cols, vals = [], [], []
    per_chunk = max(1, chunk // n)
    for start in range(0, len(origin), per_chunk):
        p, d = origin[start:start + per_chunk], direction[start:start + per_chunk]
        x_major = np.abs(d[:, 0]) >= np.abs(d[:, 1])
        # Step axis a and other axis b, oriented so that the pixel index grows with each:
        # x-major: (a, b) = (x, -y) -> pixel (row=b, col=a); y-major: (a, b) = (-y, x) -> (row=a, col=b).
        pa = np.where(x_major, p[:, 0], -p[:, 1])[:, None]
        pb = np.where(x_major, -p[:, 1], p[:, 0])[:, None]
        da = np.where(x_major, d[:, 0], -d[:, 1])[:, None]
        db = np.where(x_major, -d[:, 1], d[:, 0])[:, None]
        slope = db / da
        if kernel == "joseph":
            frac = pb + (steps - pa) * slope + (n - 1) / 2
            j0 = np.floor(frac)
            w1 = frac - j0
        else:
            e1 = pb + (steps - 0.5 - pa) * slope + n / 2  # pixel-edge coordinate at the step's edges
            e2 = e1 + slope
            lo, hi = np.minimum(e1, e2), np.maximum(e1, e2)
            j0 = np.floor(lo)
            with np.errstate(invalid="ignore", divide="ignore"):
                w1 = np.where(hi > j0 + 1, (hi - j0 - 1) / (hi - lo), 0.0)
        # Candidates laid out (ray, 2, step) and sorted per ray by pixel index: each ray's two
        # candidate lists are sorted runs (or a few), so the stable (merge) sort is near-linear.
        j = np.stack([j0, j0 + 1], 1)
        w = np.stack([1.0 - w1, w1], 1) / np.abs(da)[:, :, None]  # times the ray length per step
        step = np.arange(n)[None, None, :]
        index = np.where(x_major[:, None, None], j * n + step, step * n + j).astype(np.int64)
        keep = (j >= 0) & (j < n) & (w > 0)
        index = np.where(keep, index, n * n).reshape(len(p), -1)  # dropped ones sort last
        order = np.argsort(index, axis=1, kind="stable")
        index = np.take_along_axis(index, order, 1)
        w = np.take_along_axis(w.reshape(len(p), -1), order, 1)
        keep = index < n * n
        counts.append(keep.sum(1))
        cols.append(index[keep])
        vals.append(w[keep])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    return scipy.sparse.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr),
                                   shape=(len(origin), n * n))


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A torch CSR tensor (silencing torch's one-time "sparse CSR is beta" warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _to_torch_csr(m: scipy.sparse.csr_matrix) -> torch.Tensor:
    index = np.int32 if m.nnz < 2**31 else np.int64
    return _csr(torch.from_numpy(m.indptr.astype(index)), torch.from_numpy(m.indices.astype(index)),
                torch.from_numpy(m.data.astype(np.float32)), m.shape)


class _Apply(torch.autograd.Function):
    """``A x`` (``adjoint=False``) or ``A^T y`` (``adjoint=True``); the backward pass applies the
    other one, so the pair is differentiable to any order."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, op: "CT", adjoint: bool) -> torch.Tensor:
        ctx.op, ctx.adjoint = op, adjoint
        return op._run(t, adjoint=adjoint)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Apply.apply(grad, ctx.op, not ctx.adjoint), None, None


class CT(LinearPhysics):
    """2D X-ray CT, parallel or fan beam: ``y = A x`` (line integrals) ``+ noise``.

    ``x``: ``(B, 1, img_size, img_size)`` attenuation per pixel; ``y``: ``(B, 1, num_angles,
    num_detectors)`` sinogram. Sparse-view and limited-angle CT are chosen by ``angles``.
    Units and conventions are in the module docstring (pixel size 1, ASTRA's geometry).

    Backends (both exact adjoint pairs ``A``/``A_adjoint``, both differentiable, results equal
    to float32 round-off):
      - ``"astra"``: ASTRA's CPU projectors (``linear`` / ``line_fanflat``), wrapped in an
        autograd function (the gradient of a projection is the back-projection). Tensors on a
        GPU use ASTRA's CUDA projectors when ``astra.use_cuda()`` is True (their
        back-projection is ASTRA's pixel-driven one, an adjoint only up to interpolation
        error); otherwise the CPU projectors run and the result goes back to the GPU.
      - ``"torch"``: the same system matrix built once (float32 CSR, ``A`` and ``A^T``) and
        applied with ``torch.sparse`` on any device; float32 and float64 inputs.

    ``A_dagger`` is filtered back-projection (identical for both backends, differentiable):
    ramp filter, then a pixel-driven back-projection with linear interpolation along the
    detector; for fan beam, the flat-detector weighting of Kak and Slaney (cosine pre-weights,
    ``1/U^2`` back-projection weights). Each view is weighted by ``min(period / num_angles,
    median angle step)`` with period pi (parallel) or 2 pi (fan), which is the exact
    quadrature for full uniform scans and keeps limited-angle scans from being over-weighted.
    Fan-beam FBP assumes a full 360-degree scan (no Parker weights for short scans).

    Args:
        img_size: image side in pixels (images are square).
        angles: projection angles in radians, a 1D tensor or sequence.
        geometry: ``"parallel"`` or ``"fan"`` (flat detector).
        backend: ``"astra"`` or ``"torch"``.
        num_detectors: detector elements; the default (even) covers the image's circumscribed
            circle: ``2 * ceil(img_size / sqrt(2))`` for parallel beam, the fan's shadow of that
            circle for fan beam. With an odd count and an even ``img_size`` the central fan ray
            runs exactly along a pixel edge at multiples of 90 degrees; which pixel gets it is
            then decided by round-off, differently in ASTRA (float32) and torch (float64).
        source_distance: fan beam, source to rotation centre in pixels (default
            ``2 * img_size``); must put the source outside the image's circumscribed circle.
        detector_distance: fan beam, rotation centre to detector in pixels (default ``img_size``).
        fbp_filter: ``"ram-lak"`` or ``"hann"``, the ramp filter's window in ``A_dagger``.
        noise_model: a deepinv noise model (default: no noise).

    References:
        Joseph (1982); Kak and Slaney (1988), ch. 3; van Aarle et al. (2016).
    """

    def __init__(self, img_size: int, angles: torch.Tensor | Sequence[float], *, geometry: str = "parallel",
                 backend: str = "astra", num_detectors: int | None = None, source_distance: float | None = None,
                 detector_distance: float | None = None, fbp_filter: str = "ram-lak", noise_model=None):
        super().__init__(noise_model=noise_model)
        if isinstance(img_size, bool) or not isinstance(img_size, int):
            raise TypeError(f"img_size must be an int, got {type(img_size).__name__}")
        if img_size < 2:
            raise ValueError(f"img_size must be >= 2, got {img_size}")
        if geometry not in _GEOMETRIES:
            raise ValueError(f"geometry must be one of {_GEOMETRIES}, got {geometry!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if fbp_filter not in _FILTERS:
            raise ValueError(f"fbp_filter must be one of {_FILTERS}, got {fbp_filter!r}")
        angles = torch.as_tensor(angles, dtype=torch.float64).detach().cpu()
        if angles.ndim != 1 or angles.numel() == 0:
            raise ValueError(f"angles must be a non-empty 1D sequence (radians), got shape {tuple(angles.shape)}")
        if not torch.isfinite(angles).all():
            raise ValueError("angles must be finite")
        self.img_size, self.geometry, self.backend, self.fbp_filter = img_size, geometry, backend, fbp_filter
        self.angles = angles
        radius = img_size / math.sqrt(2.0)  # circumscribed circle of the image
        if geometry == "fan":
            self.source_distance = float(2 * img_size if source_distance is None else source_distance)
            self.detector_distance = float(img_size if detector_distance is None else detector_distance)
            if not self.source_distance > radius:
                raise ValueError(f"source_distance must exceed the image's half-diagonal {radius:.2f} "
                                 f"(source outside the image), got {self.source_distance}")
            if not self.detector_distance >= 0:
                raise ValueError(f"detector_distance must be >= 0, got {self.detector_distance}")
            magnification = (self.source_distance + self.detector_distance) / self.source_distance
            self.detector_spacing = magnification
            half_fan = math.asin(radius / self.source_distance)
            default_count = 2 * math.ceil(self.source_distance * math.tan(half_fan))
        else:
            if source_distance is not None or detector_distance is not None:
                raise ValueError("source_distance and detector_distance apply to geometry='fan' only")
            self.source_distance = self.detector_distance = None
            self.detector_spacing = 1.0
            default_count = 2 * math.ceil(img_size / math.sqrt(2.0))
        if num_detectors is None:
            num_detectors = default_count
        if isinstance(num_detectors, bool) or not isinstance(num_detectors, int) or num_detectors < 2:
            raise ValueError(f"num_detectors must be an int >= 2, got {num_detectors!r}")
        self.num_detectors = num_detectors
        self._matrices: dict = {}
        if backend == "astra":
            astra = _astra()
            self._vol_geom = astra.create_vol_geom(img_size, img_size)
            if geometry == "parallel":
                self._proj_geom = astra.create_proj_geom("parallel", 1.0, num_detectors, angles.numpy())
            else:
                self._proj_geom = astra.create_proj_geom(
                    "fanflat", self.detector_spacing, num_detectors, angles.numpy(),
                    self.source_distance, self.detector_distance)
            kind = "linear" if geometry == "parallel" else "line_fanflat"
            self._projector = astra.create_projector(kind, self._proj_geom, self._vol_geom)
            self._cuda_projector = None
            weakref.finalize(self, astra.projector.delete, self._projector)
        else:
            origin, direction = _rays(img_size, angles.numpy(), geometry, num_detectors, self.detector_spacing,
                                      self.source_distance or 0.0, self.detector_distance or 0.0)
            matrix = _system_matrix(img_size, origin, direction,
                                    kernel="joseph" if geometry == "parallel" else "line")
            self._matrices[(torch.device("cpu"), torch.float32)] = (_to_torch_csr(matrix), _to_torch_csr(matrix.T.tocsr()))

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(num_angles, num_detectors)``."""
        return (self.angles.numel(), self.num_detectors)

    # -- checks ---------------------------------------------------------------------------------
    def _check(self, t: torch.Tensor, shape: tuple[int, int], name: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64 (real), got {t.dtype}")
        if t.ndim != 4 or t.shape[1] != 1 or tuple(t.shape[2:]) != shape:
            raise ValueError(f"{name} must have shape (B, 1, {shape[0]}, {shape[1]}), got {tuple(t.shape)}")
        # On CPU, numpy's single-threaded pass: on a loaded machine torch's OpenMP fork/join for
        # this small reduction can cost more than ASTRA's projection itself.
        finite = np.isfinite(t.detach().numpy()).all() if t.device.type == "cpu" else torch.isfinite(t).all()
        if not finite:
            raise ValueError(f"{name} contains non-finite values (nan or inf)")

    # -- LinearPhysics interface ----------------------------------------------------------------
    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Project: ``x (B, 1, N, N)`` -> sinogram ``(B, 1, num_angles, num_detectors)``."""
        self._check(x, (self.img_size, self.img_size), "x")
        return _Apply.apply(x, self, False)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Back-project (exact transpose of ``A``): ``(B, 1, num_angles, num_detectors)`` -> ``(B, 1, N, N)``."""
        self._check(y, self.sinogram_shape, "y")
        return _Apply.apply(y, self, True)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Filtered back-projection: sinogram ``(B, 1, A, D)`` -> image ``(B, 1, N, N)``."""
        self._check(y, self.sinogram_shape, "y")
        return self._fbp(y)

    # -- backends -------------------------------------------------------------------------------
    def _run(self, t: torch.Tensor, *, adjoint: bool) -> torch.Tensor:
        if self.backend == "torch":
            return self._apply_torch(t, adjoint=adjoint)
        return self._apply_astra(t, adjoint=adjoint)

    def _torch_matrices(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._matrices:
            base = self._matrices[(torch.device("cpu"), torch.float32)]
            self._matrices[key] = tuple(
                _csr(m.crow_indices(), m.col_indices(), m.values().to(dtype), m.shape).to(device)
                for m in base)
        return self._matrices[key]

    def _apply_torch(self, t: torch.Tensor, *, adjoint: bool) -> torch.Tensor:
        forward, transpose = self._torch_matrices(t.device, t.dtype)
        matrix = transpose if adjoint else forward
        out_shape = (self.img_size, self.img_size) if adjoint else self.sinogram_shape
        flat = t.reshape(t.shape[0], -1)
        out = matrix @ (flat[0] if t.shape[0] == 1 else flat.T.contiguous())
        out = out[None] if t.shape[0] == 1 else out.T
        return out.reshape(t.shape[0], 1, *out_shape)

    def _apply_astra(self, t: torch.Tensor, *, adjoint: bool) -> torch.Tensor:
        astra = _astra()
        use_cuda = t.is_cuda and astra.use_cuda()
        if use_cuda and self._cuda_projector is None:
            self._cuda_projector = astra.create_projector("cuda", self._proj_geom, self._vol_geom)
            weakref.finalize(self, astra.projector.delete, self._cuda_projector)
        projector = self._cuda_projector if use_cuda else self._projector
        algorithm = ("BP" if adjoint else "FP") + ("_CUDA" if use_cuda else "")
        src_kind, dst_kind = ("-sino", "-vol") if adjoint else ("-vol", "-sino")
        src_geom, dst_geom = (self._proj_geom, self._vol_geom) if adjoint else (self._vol_geom, self._proj_geom)
        out_shape = (self.img_size, self.img_size) if adjoint else self.sinogram_shape
        src = np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy()[:, 0])
        dst = np.empty((t.shape[0], *out_shape), dtype=np.float32)
        for b in range(t.shape[0]):
            src_id = astra.data2d.link(src_kind, src_geom, src[b])
            dst_id = astra.data2d.link(dst_kind, dst_geom, dst[b])
            cfg = astra.astra_dict(algorithm)
            cfg["ProjectorId"] = projector
            if adjoint:
                cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = src_id, dst_id
            else:
                cfg["ProjectionDataId"], cfg["VolumeDataId"] = dst_id, src_id
            alg = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(alg)
            finally:
                astra.algorithm.delete(alg)
                astra.data2d.delete([src_id, dst_id])
        return torch.from_numpy(dst)[:, None].to(device=t.device, dtype=t.dtype)

    # -- filtered back-projection ---------------------------------------------------------------
    def _fbp(self, y: torch.Tensor) -> torch.Tensor:
        n = self.img_size
        dtype, device = y.dtype, y.device
        theta = self.angles.to(device=device, dtype=dtype)
        period = math.pi if self.geometry == "parallel" else 2.0 * math.pi
        num = theta.numel()
        steps = torch.diff(torch.sort(torch.remainder(self.angles, period)).values)
        step = period / num if steps.numel() == 0 else min(period / num, steps.median().item())
        # Detector coordinate at the rotation centre, in pixels.
        scale = 1.0 if self.geometry == "parallel" else self.source_distance / (self.source_distance + self.detector_distance)
        spacing = self.detector_spacing * scale
        s = (torch.arange(self.num_detectors, device=device, dtype=dtype) - (self.num_detectors - 1) / 2) * spacing
        if self.geometry == "fan":
            big_d = self.source_distance
            y = y * (big_d / torch.sqrt(big_d**2 + s**2))  # cosine pre-weighting
        q = ramp_filter(y[:, 0], spacing=spacing, window=self.fbp_filter)  # (B, A, D)
        if self.geometry == "fan":
            q = q / 2  # every ray is measured twice in a 360-degree scan
        # Pixel-driven back-projection: grid_sample reads each view (a batch item, with the
        # images as channels) at the pixels' detector positions, linear interpolation, zero outside.
        views = q.permute(1, 0, 2)[:, :, None, :]  # (A, B, 1, D)
        coord = torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2
        px, py = coord[None, None, :], -coord[None, :, None]  # x (1, 1, N), y (1, N, 1)
        half_width = spacing * (self.num_detectors - 1) / 2  # maps detector positions to [-1, 1]
        image = torch.zeros(q.shape[0], n * n, device=device, dtype=dtype)
        chunk = max(1, (1 << 20) // (n * n))  # views per pass, to keep temporaries small
        for start in range(0, num, chunk):
            c = torch.cos(theta[start:start + chunk])[:, None, None]
            si = torch.sin(theta[start:start + chunk])[:, None, None]
            u = px * c + py * si  # (a, N, N): coordinate along the detector axis
            if self.geometry == "fan":
                magnify = big_d / (big_d - px * si + py * c)  # D / distance from the source
                u = u * magnify
            grid = torch.stack([u / half_width, torch.zeros_like(u)], -1).reshape(-1, 1, n * n, 2)
            vals = torch.nn.functional.grid_sample(views[start:start + chunk], grid, mode="bilinear",
                                                   padding_mode="zeros", align_corners=True)[:, :, 0]
            if self.geometry == "fan":
                vals = vals * magnify.reshape(-1, 1, n * n).square()  # the 1 / U^2 weight
            image += vals.sum(0)
        return (image * step).reshape(-1, 1, n, n)
