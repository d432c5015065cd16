"""Coil sensitivities: ESPIRiT estimation (batched over slices), RSS and SENSE coil combination.

ESPIRiT, as implemented here, in four batched steps per slice:
1. calibration matrix: every ``k x k`` patch (all coils) of the fully sampled central
   ``calib_width x calib_width`` k-space block is a row;
2. SVD; the right singular vectors ``v_n`` with singular value above ``threshold * s_max`` span
   the signal subspace, ``P = sum_n v_n v_n^H``;
3. kernel to image space without forming per-kernel images: the pointwise ``C x C`` operator
   ``G(r) = k^-2 sum_d Q(d) exp(2 pi i d.(r - r0) / N)``, where ``Q(d)`` sums the blocks of ``P``
   whose patch offsets differ by ``d`` (so ``C^2`` FFTs of size ``H x W`` instead of one per
   kernel and coil);
4. pointwise eigen-decomposition of ``G(r)``: the eigenvectors with eigenvalue ~1 are the maps;
   ``num_maps`` leading ones are kept, zeroed where their eigenvalue is below ``crop``, and
   phase-referenced to coil 0.

References:
    Uecker et al., "ESPIRiT - an eigenvalue approach to autocalibrating parallel MRI: where SENSE
    meets GRAPPA", MRM 71 (2014) 990-1001.
    Larsson et al., "SNR-optimality of sum-of-squares reconstruction", MRM 49 (2003) 1148-1157.
"""
from __future__ import annotations

import torch

__all__ = ["estimate_coil_maps", "rss", "sense_combine", "simulate_coil_maps"]


def _calibration_operator(acs: torch.Tensor, kernel_width: int, threshold: float) -> torch.Tensor:
    """``Q``: ``(S, C, C, 2k-1, 2k-1)`` from the ACS block ``(S, C, cw, cw)``."""
    s, c = acs.shape[:2]
    k = kernel_width
    patches = acs.unfold(-2, k, 1).unfold(-2, k, 1)  # (S, C, nh, nw, k, k)
    calib = patches.permute(0, 2, 3, 1, 4, 5).reshape(s, -1, c * k * k).to(torch.complex128)
    _, sv, vh = torch.linalg.svd(calib, full_matrices=False)
    keep = (sv > threshold * sv[:, :1]).to(vh.dtype)  # (S, n)
    # The rows of the calibration matrix, as vectors, are combinations of the rows of vh (not
    # their conjugates), so P projects onto the span of vh's rows: P = vh^T conj(vh).
    v = vh.transpose(-2, -1)
    proj = (v * keep[:, None, :]) @ v.conj().transpose(-2, -1)  # (S, Ck^2, Ck^2)
    proj = proj.reshape(s, c, k * k, c, k * k).permute(0, 1, 3, 2, 4).reshape(s, c, c, k ** 4)
    u = torch.arange(k)
    ui, uj = torch.meshgrid(u, u, indexing="ij")
    ui, uj = ui.reshape(-1), uj.reshape(-1)
    # offset d = u - u' of every (u, u') pair, as a flat index into a (2k-1, 2k-1) grid
    d = (ui[:, None] - ui[None, :] + k - 1) * (2 * k - 1) + (uj[:, None] - uj[None, :] + k - 1)
    q = torch.zeros(s, c, c, (2 * k - 1) ** 2, dtype=proj.dtype)
    q.index_add_(-1, d.reshape(-1), proj)
    return q.reshape(s, c, c, 2 * k - 1, 2 * k - 1)


def estimate_coil_maps(kspace: torch.Tensor, *, num_maps: int = 1, calib_width: int = 24,
                       kernel_width: int = 6, threshold: float = 0.02, crop: float = 0.95) -> torch.Tensor:
    """ESPIRiT coil sensitivity maps from the fully sampled k-space centre.

    Args:
        kspace: complex centred k-space ``(C, H, W)`` or ``(S, C, H, W)`` (S slices, each with
            its own maps). Only the central ``calib_width x calib_width`` block is used and it
            must be fully sampled (e.g. ``calib_width`` at most the number of centre lines).
        num_maps: number of map sets ``M`` (1, or 2 for soft-SENSE when the FOV wraps).
        calib_width: side of the calibration block, in k-space samples.
        kernel_width: side of the ESPIRiT kernel, in k-space samples.
        threshold: singular values above ``threshold * s_max`` define the signal subspace.
        crop: a map is zeroed where its eigenvalue is below ``crop`` (in [0, 1)).

    Returns:
        complex maps ``(M, C, H, W)`` for ``(C, H, W)`` input, ``(S, M, C, H, W)`` for
        ``(S, C, H, W)`` input; each pixel's maps are orthonormal over coils (or zero), with
        coil 0's phase removed.

    References:
        Uecker et al., "ESPIRiT", MRM 71 (2014) 990-1001.
    """
    if not isinstance(kspace, torch.Tensor):
        raise TypeError(f"kspace must be a complex torch.Tensor, got {type(kspace).__name__}")
    if not kspace.is_complex():
        raise TypeError(f"kspace must be complex (C, H, W) or (S, C, H, W), got dtype {kspace.dtype}")
    if kspace.ndim not in (3, 4):
        raise ValueError(f"kspace must have shape (C, H, W) or (S, C, H, W), got {tuple(kspace.shape)}")
    if not torch.isfinite(torch.view_as_real(kspace)).all():
        raise ValueError("kspace contains non-finite values")
    single = kspace.ndim == 3
    ksp = kspace[None] if single else kspace
    s, c, h, w = ksp.shape
    if not 1 <= num_maps <= c:
        raise ValueError(f"num_maps must be in [1, {c}] (number of coils), got {num_maps}")
    if not 1 <= kernel_width <= calib_width <= min(h, w):
        raise ValueError(f"expected 1 <= kernel_width <= calib_width <= min(H, W) = {min(h, w)}, "
                         f"got kernel_width={kernel_width}, calib_width={calib_width}")
    if not 0 <= crop < 1 or not 0 <= threshold < 1:
        raise ValueError(f"crop and threshold must be in [0, 1), got crop={crop}, threshold={threshold}")
    h0, w0 = h // 2 - calib_width // 2, w // 2 - calib_width // 2
    acs = ksp[:, :, h0:h0 + calib_width, w0:w0 + calib_width]
    k = kernel_width
    q = _calibration_operator(acs.cpu(), k, threshold).to(device=ksp.device, dtype=ksp.dtype)
    rows = torch.arange(-(k - 1), k, device=ksp.device) % h
    cols = torch.arange(-(k - 1), k, device=ksp.device) % w
    grid = torch.zeros(s, c, c, h, w, dtype=ksp.dtype, device=ksp.device)
    grid[..., rows[:, None], cols[None, :]] = q
    # sum_d Q(d) exp(2 pi i d.r / N) is an unnormalised inverse DFT; fftshift moves r to r - r0.
    g = torch.fft.fftshift(torch.fft.ifft2(grid, norm="forward"), dim=(-2, -1)) / k ** 2
    evals, evecs = torch.linalg.eigh(g.permute(0, 3, 4, 1, 2))  # ascending; (S, H, W, C[, C])
    maps = evecs[..., -num_maps:].flip(-1)  # (S, H, W, C, M), leading eigenvector first
    lam = evals[..., -num_maps:].flip(-1)  # (S, H, W, M)
    ref = maps[..., :1, :]
    maps = maps * (ref.conj() / ref.abs().clamp_min(torch.finfo(lam.dtype).tiny))
    maps = maps * (lam > crop)[..., None, :]
    maps = maps.permute(0, 4, 3, 1, 2).contiguous()  # (S, M, C, H, W)
    return maps[0] if single else maps


def rss(x: torch.Tensor, *, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over ``dim``: ``sqrt(sum |x|^2)``.

    Args:
        x: complex (or real) tensor, e.g. coil images ``(..., C, H, W)``.
        dim: the coil dimension (default -3).

    Returns:
        Real tensor with ``dim`` removed.

    References:
        Larsson et al., MRM 49 (2003) 1148-1157.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return torch.sqrt((x.abs() ** 2).sum(dim))


def sense_combine(coil_images: torch.Tensor, coil_maps: torch.Tensor) -> torch.Tensor:
    """Project coil images onto the maps: ``x_m = sum_c conj(S_mc) x_c``.

    The pixelwise least-squares combination when each pixel's maps are orthonormal over coils
    (ESPIRiT maps are).

    Args:
        coil_images: complex ``(..., C, H, W)``.
        coil_maps: complex ``(C, H, W)`` or ``(M, C, H, W)`` (broadcast against the leading dims).

    Returns:
        complex ``(..., H, W)`` for ``(C, H, W)`` maps, ``(..., M, H, W)`` for ``(M, C, H, W)``.
    """
    if not (coil_images.is_complex() and coil_maps.is_complex()):
        raise TypeError(f"coil_images and coil_maps must be complex, got {coil_images.dtype} and {coil_maps.dtype}")
    if coil_maps.ndim not in (3, 4) or coil_images.shape[-3:] != coil_maps.shape[-3:]:
        raise ValueError(f"coil_maps must be (C, H, W) or (M, C, H, W) matching coil_images (..., C, H, W); "
                         f"got {tuple(coil_maps.shape)} and {tuple(coil_images.shape)}")
    if coil_maps.ndim == 3:
        return (coil_maps.conj() * coil_images).sum(-3)
    return (coil_maps.conj() * coil_images.unsqueeze(-4)).sum(-3)


def simulate_coil_maps(num_coils: int, shape: tuple[int, int], *, relative_radius: float = 1.5) -> torch.Tensor:
    """Simulated birdcage coil sensitivities (sigpy), complex64 ``(C, H, W)``.

    Args:
        num_coils: number of coils ``C``.
        shape: image size ``(H, W)``.
        relative_radius: coil radius relative to the field of view.

    References:
        sigpy ``sigpy.mri.birdcage_maps``.
    """
    import sigpy.mri

    maps = sigpy.mri.birdcage_maps((num_coils, *shape), r=relative_radius)
    return torch.from_numpy(maps).to(torch.complex64)
