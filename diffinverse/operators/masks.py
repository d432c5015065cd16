"""Cartesian k-space sampling masks, seeded through an explicit ``torch.Generator``.

Line masks follow fastMRI's ``MaskFunc`` semantics on the phase-encode (last, column) axis:
``round(W * center_fraction)`` fully sampled low-frequency columns starting at
``(W - n_low + 1) // 2``, plus outer columns drawn as in ``RandomMaskFunc`` (each column with
probability ``(W / acceleration - n_low) / (W - n_low)``) or ``EquiSpacedMaskFunc`` (every
``acceleration``-th column from a random offset in ``[0, acceleration)``). The global torch and
numpy random states are never used.

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", arXiv:1811.08839
    (``fastmri/data/subsample.py``).
    Bridson, "Fast Poisson disk sampling in arbitrary dimensions", SIGGRAPH sketches 2007.
    Lustig et al., "Sparse MRI", MRM 58 (2007) 1182-1195 (variable-density sampling).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["random_lines", "equispaced_lines", "variable_density_2d"]


def _check_shape(shape) -> tuple[int, int]:
    if len(tuple(shape)) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be (H, W) with positive integers, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_generator(generator) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _center_columns(w: int, center_fraction: float, acceleration: float) -> tuple[int, int]:
    if not math.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be a finite number >= 1, got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}")
    n_low = round(w * center_fraction)
    return n_low, (w - n_low + 1) // 2


def _lines_to_mask(cols: torch.Tensor, h: int) -> torch.Tensor:
    return cols.to(torch.float32)[None, :].expand(h, -1).contiguous()


def random_lines(shape, acceleration: float, center_fraction: float, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """fastMRI ``RandomMaskFunc``: fully sampled centre plus random phase-encode columns.

    Args:
        shape: ``(H, W)``; columns (last dim) are the phase-encode lines.
        acceleration: nominal acceleration ``R`` (expected number of columns ``W / R``).
        center_fraction: fraction of columns in the fully sampled centre.
        generator: source of randomness (default: a fresh generator seeded with 0).

    Returns:
        ``(H, W)`` float32 0/1 mask, constant along ``H``. The number of outer columns is random
        (Bernoulli per column), as in fastMRI.
    """
    h, w = _check_shape(shape)
    g = _check_generator(generator)
    n_low, pad = _center_columns(w, center_fraction, acceleration)
    prob = (w / acceleration - n_low) / (w - n_low) if w > n_low else 0.0
    cols = torch.rand(w, generator=g, dtype=torch.float64) < prob
    cols[pad:pad + n_low] = True
    return _lines_to_mask(cols, h)


def equispaced_lines(shape, acceleration: int, center_fraction: float, *,
                     offset: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """fastMRI ``EquiSpacedMaskFunc``: fully sampled centre plus every ``acceleration``-th column.

    Args:
        shape: ``(H, W)``; columns (last dim) are the phase-encode lines.
        acceleration: integer spacing ``R`` of the outer columns.
        center_fraction: fraction of columns in the fully sampled centre.
        offset: first outer column in ``[0, R)``; drawn uniformly from ``generator`` when None.
        generator: source of randomness (default: a fresh generator seeded with 0).

    Returns:
        ``(H, W)`` float32 0/1 mask, constant along ``H``: columns
        ``offset, offset + R, ...`` together with the ``round(W * center_fraction)`` centre columns.
    """
    h, w = _check_shape(shape)
    if int(acceleration) != acceleration:
        raise ValueError(f"equispaced acceleration must be an integer, got {acceleration}")
    acceleration = int(acceleration)
    n_low, pad = _center_columns(w, center_fraction, acceleration)
    if offset is None:
        offset = int(torch.randint(0, acceleration, (1,), generator=_check_generator(generator)))
    elif not 0 <= offset < acceleration:
        raise ValueError(f"offset must be in [0, {acceleration}), got {offset}")
    cols = torch.zeros(w, dtype=torch.bool)
    cols[offset::acceleration] = True
    cols[pad:pad + n_low] = True
    return _lines_to_mask(cols, h)


def _normalised_radius(h: int, w: int, calib: tuple[int, int]) -> np.ndarray:
    """Distance from the calibration box, normalised to 1 at the edge midpoints, ``(H, W)``."""
    ky = np.maximum(np.abs(np.arange(h) - h // 2) - calib[0] / 2, 0)
    kx = np.maximum(np.abs(np.arange(w) - w // 2) - calib[1] / 2, 0)
    ky, kx = ky / max(ky.max(), 1), kx / max(kx.max(), 1)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def _calib_box(h: int, w: int, calib: tuple[int, int]) -> np.ndarray:
    box = np.zeros((h, w), dtype=bool)
    box[h // 2 - calib[0] // 2:h // 2 - calib[0] // 2 + calib[0],
        w // 2 - calib[1] // 2:w // 2 - calib[1] // 2 + calib[1]] = True
    return box


def _poisson_disc(order: np.ndarray, radius: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Random sequential dart throwing: visit pixels in ``order``; keep a pixel unless it lies
    within the radius of a pixel kept before it. With slowly varying radii this gives the same
    blue-noise, variable-density pattern as Bridson's Poisson-disc sampling."""
    h, w = shape
    blocked = np.zeros((h, w), dtype=bool)
    keep = np.zeros(h * w, dtype=bool)
    stencils: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    flat_blocked = blocked.reshape(-1)
    for idx in order:
        if flat_blocked[idx]:
            continue
        keep[idx] = True
        i, j = divmod(int(idx), w)
        q = int(round(radius.flat[idx] * 4))  # radii quantised to 1/4 pixel
        if q not in stencils:
            r = q / 4
            n = int(math.ceil(r))
            di, dj = np.mgrid[-n:n + 1, -n:n + 1]
            sel = di ** 2 + dj ** 2 < r ** 2
            stencils[q] = (di[sel], dj[sel])
        di, dj = stencils[q]
        ii, jj = i + di, j + dj
        ok = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        blocked[ii[ok], jj[ok]] = True
    return keep.reshape(h, w)


def variable_density_2d(shape, acceleration: float, *, kind: str = "poisson",
                        calib: int | tuple[int, int] = 24, sigma: float = 0.4,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """2D variable-density mask (e.g. for 3D Cartesian phase encoding) with a fully sampled centre.

    Args:
        shape: ``(H, W)``.
        acceleration: target ``H * W / number of samples``, > 1.
        kind: ``"poisson"``: variable-density Poisson disc, minimum distance
            ``r0 (1 + 4 |k|)`` (``|k|`` the normalised distance from the calibration box, ``r0``
            tuned so the acceleration is within about 2% of the target);
            ``"gaussian"``: exactly ``round(H * W / acceleration)`` samples drawn without
            replacement with probability ``exp(-|k|^2 / (2 sigma^2))``.
        calib: side(s) of the fully sampled central calibration box, int or ``(ch, cw)``.
        sigma: width of the Gaussian density (``kind="gaussian"`` only), in normalised units.
        generator: source of randomness (default: a fresh generator seeded with 0).

    Returns:
        ``(H, W)`` float32 0/1 mask; the calibration box is always 1.

    Raises:
        ValueError: unknown ``kind``, ``acceleration <= 1``, or a calibration box that alone
            exceeds the sample budget.
    """
    h, w = _check_shape(shape)
    g = _check_generator(generator)
    calib = (calib, calib) if isinstance(calib, int) else tuple(int(c) for c in calib)
    if len(calib) != 2 or not (0 <= calib[0] <= h and 0 <= calib[1] <= w):
        raise ValueError(f"calib must be an int or (ch, cw) within shape {shape}, got {calib}")
    if not math.isfinite(acceleration) or acceleration <= 1:
        raise ValueError(f"acceleration must be a finite number > 1, got {acceleration}")
    if kind not in ("poisson", "gaussian"):
        raise ValueError(f"kind must be 'poisson' or 'gaussian', got {kind!r}")
    box = _calib_box(h, w, calib)
    target = round(h * w / acceleration)
    if box.sum() > target:
        raise ValueError(f"the calibration box has {box.sum()} samples, more than the {target} "
                         f"allowed at acceleration {acceleration}")
    r = _normalised_radius(h, w, calib)
    if kind == "gaussian":
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        weights = torch.from_numpy(np.exp(-r ** 2 / (2 * sigma ** 2)) * ~box).reshape(-1)
        mask = torch.from_numpy(box.copy()).reshape(-1)
        n_draw = target - int(box.sum())
        if n_draw > 0:
            mask[torch.multinomial(weights, n_draw, replacement=False, generator=g)] = True
        return mask.reshape(h, w).to(torch.float32)

    order = torch.randperm(h * w, generator=g).numpy()
    # The sample count scales roughly as r0**-2: fixed-point steps on r0, keeping the closest.
    r0, best = 0.5 * math.sqrt(acceleration), None
    for _ in range(12):
        mask = _poisson_disc(order, r0 * (1 + 4 * r), (h, w)) | box
        n = int(mask.sum())
        if best is None or abs(n - target) < abs(int(best.sum()) - target):
            best = mask
        if abs(n - target) <= 0.02 * target:
            break
        r0 *= (n / target) ** 0.5
    return torch.from_numpy(best).to(torch.float32)
