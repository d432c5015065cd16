"""``diffinverse-reconstruct-volume``: reconstruct a volume from simulated CT or MRI measurements.

Usage::

    diffinverse-reconstruct-volume --demo                                   # bundled CT phantom, ~1 min on a CPU
    diffinverse-reconstruct-volume head.nii.gz --modality ct --views 8 --geometry fan --output out/
    diffinverse-reconstruct-volume brain.nii.gz --modality mri --acceleration 8 --mask equispaced --output out/
    diffinverse-reconstruct-volume file_brain.h5 --modality mri --sampler dds --output out/   # fastMRI file
    diffinverse-reconstruct-volume vol.nii.gz --modality ct --sampler tv --output out/          # 3-D TV baseline

A volume is read (NIfTI with nibabel, :func:`~diffinverse.datasets.volumes.read_volume`; or a
fastMRI ``.h5`` file as the stack of its slices' reference images, :func:`read_fastmri_volume`),
measured slice by slice by a simulated operator (:func:`simulate`: CT sparse-view / limited-angle,
parallel or fan beam; Cartesian MRI with a line or Poisson mask, one for all slices or one per
slice, single-coil or with simulated coils), and reconstructed by one method (:func:`reconstruct`):

- ``mbir``: :class:`~diffinverse.samplers.DiffusionMBIR` (2-D prior on the slices, ADMM-TV across
  them; ``--mbir-dc tweedie`` (default, DDS-style: a reconstruction in ~50 steps) or ``noisy``
  (the paper's predictor-corrector: needs ~1000 steps, ``--steps``, and is then the more accurate;
  ``benchmarks/samplers/mbir_results.md``); each mode has its own ``lam`` and ``rho`` per modality,
  :data:`MBIR_DEFAULTS` and :data:`MBIR_NOISY_DEFAULTS`);
- ``dps``, ``reddiff``, ``dds``: a 2-D sampler of :data:`~diffinverse.samplers.SAMPLERS` on each
  slice independently (``--chunk-size`` slices per batch), at the class's own defaults unless
  ``--SAMPLER-OPTION`` is given;
- ``tv``: 3-D isotropic TV-regularised least squares
  (:func:`~diffinverse.baselines.tv_reconstruction`, run to its tolerance): the TV minimiser that
  ADMM-TV converges to;
- ``adjoint``: ``physics.A_dagger`` per slice (FBP, zero-filled, SENSE).

Intensities: the volume is divided by one scale so that its 99.5th percentile is 1 (the shipped
priors' range, :func:`~diffinverse.imaging.to_prior_range`), measured and reconstructed there, and
multiplied back: outputs are in the input's units. CT volumes must be non-negative attenuations
(e.g. ``(HU + 1000) / 1000``); MRI volumes are magnitudes, reconstructed as complex images with zero
phase. The noise (``--noise``) is white: CT, its std is that fraction of the sinogram's largest
value; MRI, its std on each sampled k-space entry, in the scaled units.

Outputs in ``--output``, each written atomically: ``<name>.nii.gz`` (the magnitude; with
``--num-samples N > 1`` the mean of the samples' magnitudes, and ``<name>_std.nii.gz`` their
standard deviation) with the input's affine (shifted to the first slice with ``--slices``), then
``<name>.metrics.json`` last, which marks the input complete for ``--resume``: the settings, the
network passes, the wall time and per-plane PSNR/SSIM against the input volume (:func:`plane_scores`),
for the method and the adjoint baseline. Existing outputs are never replaced without
``--overwrite``. Configuration errors and unreadable inputs exit with status 2 before any
reconstruction; an input that fails later is reported, and the exit status is 1.

Seeds: the measurement (mask, noise) of an input is drawn from ``--seed`` and the file name, the
sampler's randomness from a second generator seeded likewise (as ``diffinverse-reconstruct``).

References:
    Chung, Ryu & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion Models", CVPR 2023.
    Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems", ICLR 2024.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from diffinverse import metrics as M
from diffinverse._io import atomic_output
from diffinverse.baselines import tv_reconstruction
from diffinverse.datasets.fastmri import FastMRIError, FastMRIFile, center_crop
from diffinverse.datasets.volumes import NIFTI_SUFFIXES, read_volume, write_volume
from diffinverse.imaging import from_prior_range, magnitude, to_prior_range
from diffinverse.operators import (
    CT,
    MultiCoilMRI,
    SingleCoilMRI,
    SliceStack,
    fold_slices,
    unfold_slices,
)
from diffinverse.operators.coils import rss, simulate_coil_maps
from diffinverse.operators.mri import ifft2c
from diffinverse.pipelines.fastmri import MASK_TYPES, crop_readout, retrospective_mask
from diffinverse.reconstruct import (
    ConfigError,
    _device,
    _file_seed,
    _load_prior,
    _parse_slices,
)
from diffinverse.samplers import SAMPLERS, DiffusionMBIR

__all__ = [
    "MBIR_DEFAULTS",
    "MBIR_NOISY_DEFAULTS",
    "METHODS",
    "PLANES",
    "PRIORS",
    "TV_LAMBDA",
    "Reconstruction",
    "VolumeProblem",
    "build_parser",
    "main",
    "plane_scores",
    "read_fastmri_volume",
    "reconstruct",
    "simulate",
]

METHODS = ("mbir", *SAMPLERS, "tv", "adjoint")
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Plane name -> the axis of a ``(D, H, W)`` volume that is cut (axial: along the slices)."""
PRIORS = {"ct": "ct-ellipses", "mri": "mri-brain"}
MBIR_DEFAULTS = {"ct": {"lam": 1.0, "rho": 100.0}, "mri": {"lam": 0.03, "rho": 1.0}}
"""DiffusionMBIR's TV weight and ADMM penalty per modality in its default ``dc="tweedie"`` mode, on
the scaled data (99.5th percentile 1), chosen on tuning volumes at 16 x 64 x 64
(``benchmarks/samplers/mbir_results.md``): CT at 30 views, MRI at 4x single-coil; CT's are for the
torch projector's units (pixel size 1)."""
MBIR_NOISY_DEFAULTS = {"ct": {"lam": 0.04, "rho": 10.0}, "mri": {"lam": 0.005, "rho": 0.01}}
"""The same for ``dc="noisy"``: the official code's values, checked on the tuning volumes (CT at 8
views, MRI at 4x; ``benchmarks/samplers/mbir_results.md`` also shows why the Tweedie mode's values
do not suit this mode)."""
TV_LAMBDA = {"ct": 1.0, "mri": 0.01}
"""The 3-D TV baseline's weight per modality, on the scaled data (the end-to-end tasks' values)."""
DEMO_SHAPE = (16, 64, 64)
DEMO_STEPS = 30


# --------------------------------------------------------------------------------------------
# the library half: volume -> measurements -> reconstruction
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeProblem:
    """A volume measured by a simulated operator, in the prior's range.

    Attributes:
        x: ``(1, C, D, H, W)`` ground truth, scaled (``C = 1`` CT, ``C = 2`` MRI: real, imaginary).
        y: the noisy measurements of every slice (``physics``'s output shape).
        physics: :class:`~diffinverse.operators.SliceStack` of the 2-D operator (slice axis 2).
        slice_physics: ``(i0, i1) -> `` the 2-D operator of slices ``i0:i1`` (per-slice masks differ).
        scale: the factor that takes the scaled volume back to the input's units.
        description: one line on the operator.
    """

    x: torch.Tensor
    y: torch.Tensor
    physics: SliceStack
    slice_physics: Callable[[int, int], LinearPhysics]
    scale: float
    description: str


def _check_volume(volume: torch.Tensor) -> torch.Tensor:
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"the volume must be a torch.Tensor, got {type(volume).__name__}")
    if volume.ndim == 4:
        raise ValueError(f"got a 4-D tensor {tuple(volume.shape)}: a volume is (D, H, W) or (1, 1, D, H, W); a "
                         f"batch of 2-D images (B, C, H, W) is not a volume (add the slice axis: x[None])")
    if volume.ndim == 3:
        volume = volume[None, None]
    if volume.ndim != 5 or volume.shape[:2] != (1, 1):
        raise ValueError(f"the volume must be (D, H, W) or (1, 1, D, H, W) real values, got shape {tuple(volume.shape)}")
    if volume.is_complex() or not volume.is_floating_point():
        raise TypeError(f"the volume must hold real floating-point values, got {volume.dtype}")
    if not torch.isfinite(volume).all():
        raise ValueError("the volume holds NaN or infinite values")
    return volume.float()


def simulate(volume: torch.Tensor, modality: str, *, views: int = 30, geometry: str = "parallel",
             angle_range: float | None = None, acceleration: float = 4.0, mask_type: str = "random",
             center_fraction: float = 0.08, mask_per_slice: bool = False, coils: int = 1, noise: float = 0.01,
             generator: torch.Generator | None = None) -> VolumeProblem:
    """Scale a volume into the prior's range and measure every slice with a simulated operator.

    Args:
        volume: ``(D, H, W)`` or ``(1, 1, D, H, W)`` real volume, slices ``H x W`` (any units).
        modality: ``"ct"`` or ``"mri"``.
        views: CT projection angles, uniform over ``angle_range``.
        geometry: CT ``"parallel"`` or ``"fan"`` beam (flat detector; torch projector).
        angle_range: CT angular range in degrees (default 180 parallel, 360 fan); smaller values
            give limited-angle CT.
        acceleration, mask_type, center_fraction: the MRI mask
            (:func:`~diffinverse.pipelines.fastmri.retrospective_mask`; lines along ``W``).
        mask_per_slice: draw one MRI mask per slice instead of one for all.
        coils: 1 (single-coil) or the number of simulated birdcage coils (sigpy).
        noise: CT: noise std over the sinogram's largest value; MRI: std on sampled k-space entries
            (scaled units).
        generator: CPU generator of the masks and the noise (default: seeded with 0).

    Returns:
        :class:`VolumeProblem`.

    Raises:
        ValueError: a 4-D tensor or another non-volume shape; an unknown modality or geometry; CT
            with non-square slices or negative values; bad counts or ranges.
        TypeError: a non-tensor or non-real volume.
    """
    vol = _check_volume(volume)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be finite and >= 0, got {noise}")
    _, _, D, H, W = vol.shape
    if modality == "ct":
        if H != W:
            raise ValueError(f"CT needs square slices (the projector's image is img_size x img_size); this volume's "
                             f"slices are {H} x {W} (choose another slice axis or crop the volume)")
        if float(vol.min()) < 0:
            raise ValueError(f"CT volumes must be non-negative attenuations (e.g. (HU + 1000) / 1000); this one's "
                             f"minimum is {float(vol.min()):g}")
        if geometry not in ("parallel", "fan"):
            raise ValueError(f"geometry must be 'parallel' or 'fan', got {geometry!r}")
        if int(views) != views or views < 1:
            raise ValueError(f"views must be an integer >= 1, got {views}")
        full = 360.0 if geometry == "fan" else 180.0
        rng = full if angle_range is None else float(angle_range)
        if not 0 < rng <= 360:
            raise ValueError(f"angle_range must be in (0, 360] degrees, got {angle_range}")
        x, scale = to_prior_range(vol)
        angles = torch.arange(int(views), dtype=torch.float64) * math.radians(rng) / views
        op = CT(H, angles, geometry=geometry, backend="torch")
        physics = SliceStack(op, axis=2)
        y = physics.A(x)
        y = y + noise * y.abs().amax() * torch.randn(y.shape, generator=g)
        limited = "" if rng == full else f", limited angle {rng:g} deg"
        return VolumeProblem(x, y, physics, lambda i0, i1: op, float(scale),
                             f"CT {views} views {geometry} beam{limited}, noise {noise:g}")
    if modality != "mri":
        raise ValueError(f"modality must be 'ct' or 'mri', got {modality!r}")
    if int(coils) != coils or coils < 1:
        raise ValueError(f"coils must be an integer >= 1, got {coils}")
    x, scale = to_prior_range(torch.cat([vol, torch.zeros_like(vol)], 1))   # complex, zero phase
    masks = torch.stack([retrospective_mask((H, W), acceleration=acceleration, mask_type=mask_type,
                                            center_fraction=center_fraction, generator=g)
                         for _ in range(D if mask_per_slice else 1)])
    maps = simulate_coil_maps(int(coils), (H, W)) if coils > 1 else None

    def slice_physics(i0: int, i1: int) -> LinearPhysics:
        m = masks[i0:i1] if mask_per_slice else masks[0]
        return SingleCoilMRI(m) if maps is None else MultiCoilMRI(m, maps)

    physics = SliceStack(slice_physics(0, D), axis=2)
    y = physics.A(x)
    sampled = masks[None, None] if maps is None else masks[:, None][None, None]   # (1, 1, D|1, [1,] H, W)
    y = y + noise * torch.randn(y.shape, generator=g) * sampled
    kind = "single-coil" if maps is None else f"{coils} simulated coils"
    per = "one mask per slice" if mask_per_slice else "one mask for all slices"
    return VolumeProblem(x, y, physics, slice_physics, float(scale),
                         f"MRI {acceleration:g}x {mask_type} ({per}), {kind}, noise {noise:g}")


@dataclass(frozen=True)
class Reconstruction:
    """What :func:`reconstruct` returns.

    Attributes:
        image: ``(1, C, D, H, W)`` the reconstruction (the mean of the samples), scaled units.
        magnitude: ``(D, H, W)`` its magnitude, scaled units (the mean of the samples' magnitudes).
        std: ``(D, H, W)`` standard deviation of the samples' magnitudes, or ``None`` (one sample).
        nfe: network passes (a pass of ``k`` slices counts once), all samples together.
        seconds: wall time.
    """

    image: torch.Tensor
    magnitude: torch.Tensor
    std: torch.Tensor | None
    nfe: int
    seconds: float


def _slice_by_slice(sampler, problem: VolumeProblem, chunk: int, generator, progress: bool) -> tuple[torch.Tensor, int]:
    """A 2-D sampler on ``chunk`` slices at a time (each slice independent)."""
    y, D = problem.y, problem.x.shape[2]
    outs, nfe = [], 0
    for i0 in tqdm(range(0, D, chunk), desc=f"{type(sampler).__name__} slices", unit="chunk", disable=not progress,
                   leave=False):
        i1 = min(i0 + chunk, D)
        outs.append(sampler(fold_slices(y.narrow(2, i0, i1 - i0), 2), problem.slice_physics(i0, i1).to(y.device),
                            generator=generator))
        nfe += sampler.last_nfe
    return unfold_slices(torch.cat(outs), 1, 2), nfe


def reconstruct(problem: VolumeProblem, method: str, *, prior=None, num_steps: int | None = None,
                options: dict | None = None, chunk_size: int = 16, num_samples: int = 1, tv_lam: float = 0.01,
                sigma_start: float | None = None, generator: torch.Generator | None = None,
                progress: bool = False) -> Reconstruction:
    """Reconstruct a :class:`VolumeProblem` with one method (see the module docstring).

    Args:
        problem: from :func:`simulate`.
        method: ``"mbir"``, a key of :data:`~diffinverse.samplers.SAMPLERS` (slice by slice), ``"tv"``
            or ``"adjoint"``.
        prior: the 2-D denoiser (diffusion methods), with as many channels as ``problem.x``.
        num_steps: the sampler's steps of the full grid (default: the class's).
        options: the sampler's keyword options (MBIR: ``dc, lam, rho, tv, boundary, cg_iters, eta,
            snr``; the 2-D samplers: their ``SamplerSpec.options``), over the class's defaults.
        chunk_size: slices per network call (MBIR's ``chunk_size``; the 2-D samplers' batch), ``>= 1``.
        num_samples: posterior samples (diffusion methods), drawn one after another.
        tv_lam: the TV baseline's weight.
        sigma_start: warm-start level from the sampler's default warm start (``None``: the class's
            default, a cold start for MBIR).
        generator: the samplers' randomness (CPU or the problem's device).
        progress: show progress bars.

    Raises:
        ValueError: an unknown method, ``chunk_size < 1`` or ``num_samples < 1``, sampler settings
            for a classical method, a prior whose channels differ from the volume's.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    options = dict(options or {})
    t0 = time.perf_counter()
    if method in ("tv", "adjoint"):
        if options or num_samples > 1 or num_steps is not None or sigma_start is not None:
            raise ValueError(f"{method} takes no sampler settings (options, steps, samples, sigma_start)")
        if method == "adjoint":
            out = problem.physics.A_dagger(problem.y)
        else:
            bar = tqdm(desc="3-D TV", unit="it", disable=not progress, leave=False)
            out = tv_reconstruction(problem.y, problem.physics, lam=tv_lam, callback=lambda i, _: bar.update(1))
            bar.close()
        mag = magnitude(out)[0]
        return Reconstruction(out, mag, None, 0, time.perf_counter() - t0)

    channels = getattr(prior, "channels", None)
    if channels != problem.x.shape[1]:
        raise ValueError(f"the prior has {channels} channel(s), the volume {problem.x.shape[1]} "
                         f"(CT: a 1-channel prior such as 'ct-ellipses'; MRI: a 2-channel one such as 'mri-brain')")
    steps = {} if num_steps is None else {"num_steps": num_steps}
    start = {} if sigma_start is None else {"sigma_start": sigma_start}
    if method == "mbir":
        sampler = DiffusionMBIR(prior, chunk_size=int(chunk_size), progress=progress, **steps, **start, **options)
    else:
        sampler = SAMPLERS[method].cls(prior, progress=progress, **steps, **start, **options)
    images, nfe = [], 0
    for _ in tqdm(range(num_samples), desc="samples", disable=not progress or num_samples == 1, leave=False):
        if method == "mbir":
            images.append(sampler(problem.y, problem.physics, generator=generator))
            nfe += sampler.last_nfe
        else:
            out, n = _slice_by_slice(sampler, problem, int(chunk_size), generator, progress)
            images.append(out)
            nfe += n
    stack = torch.stack(images)
    mags = torch.stack([magnitude(im)[0] for im in images])
    return Reconstruction(stack.mean(0), mags.mean(0), mags.std(0) if num_samples > 1 else None, nfe,
                          time.perf_counter() - t0)


def plane_scores(reference: torch.Tensor, estimate: torch.Tensor) -> dict[str, float]:
    """Per-plane PSNR and SSIM of two ``(D, H, W)`` magnitude volumes, and the volume's PSNR.

    The volume is cut into axial (along ``D``), coronal (along ``H``) and sagittal (along ``W``)
    slices; ``psnr_<plane>`` is the mean PSNR over the slices that hold part of the object
    (a slice of air only would score the background), ``ssim_<plane>`` the mean SSIM over all of
    them (:mod:`diffinverse.metrics`; ``None`` where the plane is narrower than SSIM's 7-pixel
    window), both with the data range of the whole reference volume.
    """
    if reference.ndim != 3 or reference.shape != estimate.shape:
        raise ValueError(f"expected two (D, H, W) volumes of one shape, got {tuple(reference.shape)} and "
                         f"{tuple(estimate.shape)}")
    gt, pred = reference.double(), estimate.double()
    peak = float(gt.max())
    res = {"psnr_volume": M.psnr(reference=gt, estimate=pred, data_range=peak)}
    for name, dim in PLANES.items():
        g, p = gt.movedim(dim, 0), pred.movedim(dim, 0)
        full = [i for i in range(g.shape[0]) if g[i].any()]
        res[f"psnr_{name}"] = sum(M.psnr(reference=g[i], estimate=p[i], data_range=peak) for i in full) / len(full)
        res[f"ssim_{name}"] = M.ssim(reference=g, estimate=p, data_range=peak) if min(g.shape[1:]) >= 7 else None
    return res


def read_fastmri_volume(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """A fastMRI file as a magnitude volume: ``(1, 1, S, h, w)`` float32 and a ``(4, 4)`` affine.

    The slices are the file's reference reconstruction (``reconstruction_rss``, else
    ``reconstruction_esc``) when present, else the root-sum-of-squares over the coils of the
    inverse FFT of the k-space (readout cropped to the header's reconstruction size, centre
    cropped). The affine is ``diag(dx, dy, dz, 1)`` from the header's voxel size (1 mm where the
    header does not state it), for the ``(h, w, S)`` order that ``write_volume(..., axis=2)``
    writes, as :func:`diffinverse.reconstruct.save_nifti`; fastMRI headers carry no orientation.
    """
    with FastMRIFile(path) as f:
        if f.targets:
            vol = torch.from_numpy(f.read_target(f.targets[0]))
        else:
            k = torch.from_numpy(f.read_kspace(slice(None)))
            k = k if f.multicoil else k[:, None]
            h, w = f.recon_size
            vol = center_crop(rss(ifft2c(crop_readout(k, h)), dim=1), (h, w))
        vox = f.voxel_size_mm or (1.0, 1.0, 1.0)
    return vol.float()[None, None].contiguous(), np.diag([float(vox[0]), float(vox[1]), float(vox[2]), 1.0])


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
_MBIR_OPTIONS = {"dc": str, "lam": float, "rho": float, "tv": str, "boundary": str, "cg_iters": int, "eta": float,
                 "snr": float}
_MBIR_CHOICES = {"dc": ("tweedie", "noisy"), "tv": ("slice", "all"), "boundary": ("neumann", "circular")}


def _option_table() -> list[tuple[str, str, type]]:
    """``(method, option, type)`` of every sampler option offered as ``--METHOD-OPTION``."""
    return ([("mbir", o, t) for o, t in _MBIR_OPTIONS.items()]
            + [(name, o, t) for name, spec in SAMPLERS.items() for o, t in spec.options.items()])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffinverse-reconstruct-volume``."""
    p = argparse.ArgumentParser(prog="diffinverse-reconstruct-volume",
                                description="Reconstruct volumes (NIfTI or fastMRI .h5) from simulated CT or MRI "
                                            "measurements with a 2-D diffusion prior (DiffusionMBIR) or a baseline.")
    p.add_argument("inputs", nargs="*", type=Path, help="NIfTI (.nii, .nii.gz) or fastMRI (.h5) files")
    p.add_argument("--demo", action="store_true",
                   help=f"reconstruct a synthetic CT phantom {DEMO_SHAPE} at 30 views ({DEMO_STEPS} MBIR steps)")
    p.add_argument("--modality", choices=("ct", "mri"), default=None, help="the simulated operator (required)")
    p.add_argument("--sampler", choices=METHODS, default="mbir", help="reconstruction method (default: mbir)")
    p.add_argument("--prior", default=None, help="shipped prior or .safetensors (default: ct-ellipses / mri-brain)")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                   help="NIfTI voxel axis that is the slice axis (default: 2)")
    p.add_argument("--volume-index", type=int, default=None, help="the volume of a 4-D NIfTI series to read")
    p.add_argument("--allow-missing-affine", action="store_true",
                   help="accept a NIfTI without qform/sform (outputs get nibabel's voxel-size-only affine)")
    p.add_argument("--slices", default=None, help="slices to reconstruct, e.g. 10:26 (default: all)")
    ct = p.add_argument_group("CT (--modality ct)")
    ct.add_argument("--views", type=int, default=30, help="projection angles (default: 30)")
    ct.add_argument("--geometry", choices=("parallel", "fan"), default="parallel")
    ct.add_argument("--angle-range", type=float, default=None,
                    help="degrees covered by the views (default 180 parallel, 360 fan; less: limited angle)")
    mri = p.add_argument_group("MRI (--modality mri)")
    mri.add_argument("--acceleration", type=float, default=4.0)
    mri.add_argument("--mask", choices=MASK_TYPES, default="random")
    mri.add_argument("--center-fraction", type=float, default=None,
                     help="fully sampled central lines (default: 0.08 at <= 4x, 0.04 above)")
    mri.add_argument("--mask-per-slice", action="store_true", help="a new mask for every slice")
    mri.add_argument("--coils", type=int, default=1, help="1: single-coil; N > 1: N simulated coils")
    p.add_argument("--noise", type=float, default=0.01,
                   help="CT: std over the sinogram's maximum; MRI: std per sampled k-space entry (default 0.01)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps of the full grid (default: the class's)")
    p.add_argument("--sigma-start", type=float, default=None,
                   help="warm-start level from the sampler's default warm start (default: the class's; MBIR cold)")
    p.add_argument("--chunk-size", type=int, default=16, help="slices per network call (default: 16)")
    p.add_argument("--tv-lam", type=float, default=None, help="TV baseline weight (default: per modality)")
    for method, option, kind in _option_table():
        flag, dest = f"--{method}-{option.replace('_', '-')}", f"{method}_{option}"
        help_text = f"{method} option {option}"
        if method == "mbir" and option in ("lam", "rho"):
            help_text += (f" (default: {MBIR_DEFAULTS['ct'][option]:g} CT, {MBIR_DEFAULTS['mri'][option]:g} MRI; "
                          f"with --mbir-dc noisy {MBIR_NOISY_DEFAULTS['ct'][option]:g} CT, "
                          f"{MBIR_NOISY_DEFAULTS['mri'][option]:g} MRI)")
        if kind is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=dest, type=kind, default=None, choices=_MBIR_CHOICES.get(option)
                           if method == "mbir" else None, metavar=None if option in _MBIR_CHOICES else option.upper(),
                           help=help_text)
    p.add_argument("--num-samples", type=int, default=1, help="posterior samples; > 1 also writes the std volume")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurements and the sampler (default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--output", type=Path, default=None, help="output directory (required, except with --demo)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--resume", action="store_true", help="skip inputs whose outputs are complete")
    return p


def _options_of(args: argparse.Namespace) -> dict:
    """The chosen method's options from the command line, over MBIR's per-modality defaults."""
    opts = {o: getattr(args, f"{m}_{o}") for m, o, _ in _option_table()
            if m == args.sampler and getattr(args, f"{m}_{o}") is not None}
    if args.sampler == "mbir":
        defaults = MBIR_NOISY_DEFAULTS if opts.get("dc") == "noisy" else MBIR_DEFAULTS
        opts = {**defaults[args.modality], **opts}
    return opts


def _check_options(args: argparse.Namespace) -> None:
    if args.modality is None:
        raise ConfigError("give --modality ct or --modality mri (the simulated operator)")
    for name in ("views", "steps", "num_samples", "chunk_size", "coils"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.acceleration < 1:
        raise ConfigError(f"--acceleration must be >= 1, got {args.acceleration}")
    if args.center_fraction is not None and not 0 < args.center_fraction <= 1:
        raise ConfigError(f"--center-fraction must be in (0, 1], got {args.center_fraction}")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise ConfigError(f"--noise must be finite and >= 0, got {args.noise}")
    if args.angle_range is not None and not 0 < args.angle_range <= 360:
        raise ConfigError(f"--angle-range must be in (0, 360] degrees, got {args.angle_range}")
    for m, o, _ in _option_table():
        if getattr(args, f"{m}_{o}") is not None and m != args.sampler:
            raise ConfigError(f"--{m}-{o.replace('_', '-')} applies to --sampler {m}, not {args.sampler}")
    classical = args.sampler in ("tv", "adjoint")
    for name in ("steps", "sigma_start"):
        if classical and getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} applies to the diffusion samplers, not {args.sampler}")
    if classical and args.num_samples > 1:
        raise ConfigError(f"--num-samples > 1 needs a diffusion sampler, not {args.sampler}")
    if args.tv_lam is not None and args.sampler != "tv":
        raise ConfigError(f"--tv-lam applies to --sampler tv, not {args.sampler}")
    if args.slices is not None:
        _parse_slices(args.slices, 10**9)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, ".h5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _output_paths(out_dir: Path, stem: str, with_std: bool) -> dict[str, Path]:
    paths = {"nifti": out_dir / f"{stem}.nii.gz"}
    if with_std:
        paths["std"] = out_dir / f"{stem}_std.nii.gz"
    paths["metrics"] = out_dir / f"{stem}.metrics.json"   # written last: marks the input complete
    return paths


def _read_input(path: Path, args: argparse.Namespace) -> tuple[torch.Tensor, np.ndarray, int]:
    """``(volume (1, 1, D, H, W), affine, file axis of D)`` of one input; ``ValueError`` naming the problem."""
    if path.name.lower().endswith(".h5"):
        vol, aff = read_fastmri_volume(path)
        return vol, aff, 2
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: expected a NIfTI (.nii, .nii.gz) or fastMRI (.h5) file")
    vol, aff = read_volume(path, axis=args.axis, volume=args.volume_index,
                           allow_missing_affine=args.allow_missing_affine)
    return vol, aff, args.axis


def _input_files(args: argparse.Namespace) -> list[Path]:
    if args.demo:
        if args.inputs:
            raise ConfigError("--demo takes no input files")
        return []
    if not args.inputs:
        raise ConfigError("give NIfTI or fastMRI files (or --demo)")
    for p in args.inputs:
        if not p.is_file():
            raise ConfigError(f"{p}: no such file")
    stems = [_stem(p) for p in args.inputs]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ConfigError(f"several inputs share the output name(s) {dup}; reconstruct them into separate --output "
                          f"directories")
    return list(args.inputs)


def _write_demo_input(out_dir: Path) -> Path:
    """The demo's phantom, ``DEMO_SHAPE`` (1 mm voxels), written to ``out_dir/demo_input/``."""
    from diffinverse.datasets.ct_slices import synthetic_ct_volumes

    x = synthetic_ct_volumes(1, DEMO_SHAPE, generator=torch.Generator().manual_seed(0))
    return write_volume(out_dir / "demo_input" / "ct_phantom.nii.gz", x, np.eye(4), axis=2, overwrite=True)


def reconstruct_input(path: Path, args: argparse.Namespace, prior, device: torch.device) -> dict:
    """Read, simulate, reconstruct and write one input; returns its record (``<name>.metrics.json``)."""
    stem = _stem(path)
    vol, aff, file_axis = _read_input(path, args)
    sl = _parse_slices(args.slices, vol.shape[2])
    if sl.stop <= sl.start:
        raise ValueError(f"{path}: --slices {args.slices} selects none of its {vol.shape[2]} slices")
    vol = vol[:, :, sl]
    aff = aff.copy()
    aff[:3, 3] += sl.start * aff[:3, file_axis]           # the first kept slice's position
    seed = _file_seed(args.seed, path.name)
    acc = args.acceleration
    cf = args.center_fraction if args.center_fraction is not None else (0.08 if acc <= 4 else 0.04)
    problem = simulate(vol, args.modality, views=args.views, geometry=args.geometry, angle_range=args.angle_range,
                       acceleration=acc, mask_type=args.mask, center_fraction=cf, mask_per_slice=args.mask_per_slice,
                       coils=args.coils, noise=args.noise, generator=torch.Generator().manual_seed(seed))
    problem = VolumeProblem(problem.x.to(device), problem.y.to(device), problem.physics.to(device),
                            problem.slice_physics, problem.scale, problem.description)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    options = _options_of(args)
    tv_lam = args.tv_lam if args.tv_lam is not None else TV_LAMBDA[args.modality]
    rec = reconstruct(problem, args.sampler, prior=prior, num_steps=args.steps, options=options,
                      chunk_size=args.chunk_size, num_samples=args.num_samples, tv_lam=tv_lam,
                      sigma_start=args.sigma_start, generator=g, progress=True)
    ref = magnitude(problem.x)[0].cpu()
    adjoint = magnitude(problem.physics.A_dagger(problem.y))[0].cpu()
    record = {"input": str(path), "name": stem, "shape": list(vol.shape[2:]), "slices": [sl.start, sl.stop],
              "operator": problem.description, "method": args.sampler,
              "options": options if args.sampler != "tv" else {"lam": tv_lam},
              "steps": args.steps, "sigma_start": args.sigma_start, "chunk_size": args.chunk_size,
              "num_samples": args.num_samples, "seed": args.seed, "nfe": rec.nfe, "seconds": round(rec.seconds, 2),
              "scale": problem.scale,
              "metrics": {args.sampler: plane_scores(ref, rec.magnitude.cpu()), "adjoint": plane_scores(ref, adjoint)}}
    paths = _output_paths(args.output, stem, rec.std is not None)
    ow = args.overwrite or args.resume
    to_units = (lambda v: from_prior_range(v.cpu(), problem.scale)[None, None])
    write_volume(paths["nifti"], to_units(rec.magnitude), aff, axis=file_axis, overwrite=ow)
    if rec.std is not None:
        write_volume(paths["std"], to_units(rec.std), aff, axis=file_axis, overwrite=ow)
    with atomic_output(paths["metrics"], overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def format_record(r: dict) -> str:
    """A short table of one input's per-plane scores."""
    lines = [f"{r['name']}: {r['operator']}, {r['method']}, {r['nfe']} network passes, {r['seconds']:.1f} s",
             f"  {'method':<10}{'PSNR vol':>9}" + "".join(f"{p + ' PSNR/SSIM':>22}" for p in PLANES)]
    for name, m in r["metrics"].items():
        lines.append(f"  {name:<10}{m['psnr_volume']:>9.2f}" +
                     "".join(f"{m['psnr_' + p]:>15.2f} / " + ("  -  " if m["ssim_" + p] is None else f"{m['ssim_' + p]:.3f}")
                             for p in PLANES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 an input failed, 2 bad options or inputs)."""
    args = build_parser().parse_args(argv)
    err = "diffinverse-reconstruct-volume: error:"
    try:
        if args.demo:
            args.modality = args.modality or "ct"
            if args.steps is None and args.sampler not in ("tv", "adjoint"):
                args.steps = DEMO_STEPS
        _check_options(args)
        files = _input_files(args)
        device = _device(args.device)
        if args.output is None:
            if not args.demo:
                raise ConfigError("--output DIR is required")
            args.output = Path(tempfile.mkdtemp(prefix="diffinverse-volume-demo-"))
        if args.demo:
            files = [_write_demo_input(args.output)]
        problems = []
        for f in files:   # read every header before any work: bad inputs stop the run here
            try:
                vol, _, _ = _read_input(f, args)
                if args.modality == "ct" and vol.shape[-1] != vol.shape[-2]:
                    problems.append(f"{f}: CT needs square slices; its slices are {tuple(vol.shape[-2:])} "
                                    f"(choose another --axis)")
            except (ValueError, FastMRIError, OSError) as e:
                problems.append(str(e))
            paths = _output_paths(args.output, _stem(f), args.num_samples > 1)
            if any(p.exists() and p.resolve() == f.resolve() for p in paths.values()):
                problems.append(f"{f}: an output would replace the input; choose another --output")
            existing = [str(p) for p in paths.values() if p.exists()]
            if existing and not (args.overwrite or args.resume):
                problems.append(f"{f}: outputs already exist ({', '.join(existing)}); pass --overwrite or --resume")
        prior = None
        if not problems and args.sampler not in ("tv", "adjoint"):
            prior = _load_prior(args.prior or PRIORS[args.modality], device)
            if prior.channels != (1 if args.modality == "ct" else 2):
                problems.append(f"the prior has {prior.channels} channel(s); --modality {args.modality} needs "
                                f"{1 if args.modality == 'ct' else 2} (e.g. {PRIORS[args.modality]!r})")
    except ConfigError as e:
        print(f"{err} {e}", file=sys.stderr)
        return 2
    if problems:
        for msg in problems:
            print(f"{err} {msg}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    done, skipped, failed = 0, 0, {}
    for f in tqdm(files, desc="volumes", unit="volume", disable=len(files) < 2):
        paths = _output_paths(args.output, _stem(f), args.num_samples > 1)
        if args.resume and all(p.exists() for p in paths.values()):
            skipped += 1
            continue
        try:
            tqdm.write(format_record(reconstruct_input(f, args, prior, device)))
            done += 1
        except Exception as e:  # noqa: BLE001 - one input's failure is reported, the run goes on
            failed[str(f)] = f"{type(e).__name__}: {e}"
            tqdm.write(f"FAILED {f}: {e}")
    print(f"\n{done} reconstructed, {skipped} skipped (complete, --resume), {len(failed)} failed; "
          f"outputs in {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
