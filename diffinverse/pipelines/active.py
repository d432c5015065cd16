"""Active acquisition of a fastMRI slice: which phase-encode lines to measure, chosen while sampling.

:func:`active_reconstruct_kspace` runs Active Diffusion Subsampling
(:class:`~diffinverse.samplers.ads.ActiveSubsampling`) retrospectively on one fully sampled slice:
``measure(mask)`` reads the chosen lines from the full k-space, so the run is the one a scanner
callback would drive prospectively. It reuses :mod:`~diffinverse.pipelines.fastmri`'s pieces:

1. **Readout crop** to ``recon_size[0]`` rows (:func:`~diffinverse.pipelines.fastmri.crop_readout`).
2. **Initial lines**: the fully sampled centre, ``round(W * center_fraction)`` columns placed as
   fastMRI's mask functions place them; the remaining ``round(W / acceleration)`` minus those are
   chosen by ADS (one candidate = one phase-encode column, all its readout rows and coils).
3. **Coil maps** (multi-coil): ESPIRiT from that centre, two map sets, with the pipeline's SENSE
   settings in the forward model. Where the second set is not empty (a field of view that wraps)
   each particle is the pair of both sets' images, under the prior one by one
   (:class:`~diffinverse.priors.stack.ImageStackPrior`, one network call on the pair), the second
   zero outside its maps' support, as the fixed-mask pipeline's ``second_map_set="model"``; the
   entropies compare the pairs' predicted k-space. Where it is empty, the particles are images of
   the first set alone.
4. **Intensity scaling** as the pipeline's: measurements divided by the 99.5th percentile of the
   magnitude of the centre-only SENSE's first-set image (single-coil: zero-filled), results
   multiplied back.
5. **Sampling**: ``num_particles`` particles of the particle sampler (DDS by default, with the
   pipeline's :data:`~diffinverse.pipelines.fastmri.SAMPLER_DEFAULTS`: a warm start from the
   centre's SENSE at ``sigma_start``), acquiring lines at evenly spread steps; the image is the
   magnitude of the particles' mean, ``std`` the standard deviation of their magnitudes.

:func:`save_acquisition_order` draws which line was acquired when, as a PNG (one slice's bars, or
one row per slice for several). :func:`line_budget` says how many lines a width, acceleration and
centre fraction give (the centre's and the chosen ones), as :func:`active_reconstruct_kspace`
counts them, so a caller can refuse an acceleration before any work.

References:
    Nolan, Verhaeghe, van Gorp, Wijnen & van Sloun, "Active Diffusion Subsampling", TMLR 2025.
    Zbontar et al., "fastMRI", 2018 (mask layout, centre fractions).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch

from diffinverse._io import atomic_output
from diffinverse.datasets.fastmri import center_crop
from diffinverse.imaging import from_prior_range, per_item, prior_range_scale
from diffinverse.operators.coils import estimate_coil_maps, rss
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI, ifft2c, to_channels
from diffinverse.pipelines.fastmri import (
    SENSE_ITERS,
    SENSE_LAMBDA,
    _as_kspace,
    _rss_maps,
    build_sampler,
    calibration_width,
    crop_readout,
    map_set_support,
    resolve_start,
)
from diffinverse.priors.stack import ImageStackPrior
from diffinverse.samplers import DDS
from diffinverse.samplers.ads import ActiveSubsampling, kspace_line_candidates

__all__ = [
    "ACTIVE_DEFAULTS",
    "PARTICLE_SAMPLERS",
    "ActiveKspaceReconstruction",
    "active_reconstruct_kspace",
    "line_budget",
    "save_acquisition_order",
]

ACTIVE_DEFAULTS: Mapping[str, object] = MappingProxyType({
    "sampler": "dds", "num_particles": 8, "kernel": "ads", "s": 0.1, "window": (0.0, 0.8),
    "predict": "consistent"})
""":func:`active_reconstruct_kspace`'s defaults (its signature reads them from here): particle
sampler (one of :data:`PARTICLE_SAMPLERS`), particles, entropy kernel and width (in the scaled
units, magnitude's 99.5th percentile = 1), acquisition window, and what predicts the lines
(:class:`~diffinverse.samplers.ads.ActiveSubsampling`'s ``predict``)."""
PARTICLE_SAMPLERS = ("dps", "reddiff", "dds")
"""The pipeline's samplers that can move ADS's particles: those on the pixel prior (not STSL)."""


@dataclass(frozen=True)
class ActiveKspaceReconstruction:
    """The result of :func:`active_reconstruct_kspace` for one slice; tensors on the run's device.

    Attributes:
        image: ``(1, h, w)`` float32 magnitude of the particles' mean, in the k-space's units,
            centre-cropped to ``recon_size`` (as :class:`~diffinverse.pipelines.fastmri.KspaceReconstruction`).
        std: ``(1, h, w)`` per-pixel standard deviation of the particles' magnitudes (same units).
        complex_image: ``(1, 2, M, h, w)`` the particles' mean, channels (real, imaginary), ``M``
            map sets (2 where the second is not empty, else 1).
        baselines: ``{"zero-filled": (1, h, w)}`` (root-sum-of-squares of the coil images of the
            chosen lines) and, multi-coil, ``"sense"``: the centre's maps' SENSE of the chosen
            lines (both sets' images, their magnitude together).
        mask: ``(W,)`` float32 0/1 over the phase-encode columns: the chosen mask as fastMRI's
            challenge files store it (``mask`` dataset).
        order: the acquired columns in acquisition order (after the initial centre).
        initial_lines: the centre columns measured before the first step.
        entropies: ``(len(order), W)`` float64: every column's estimated entropy at every
            acquisition (``-inf`` where already measured).
        sampler: the particle sampler's name.
        nfe: network evaluations of the run (one = one call on all particles).
        window: the acquisition window used (fractions of the run).
    """

    image: torch.Tensor
    std: torch.Tensor
    complex_image: torch.Tensor
    baselines: Mapping[str, torch.Tensor]
    mask: torch.Tensor
    order: tuple[int, ...]
    initial_lines: tuple[int, ...]
    entropies: torch.Tensor
    sampler: str
    nfe: int
    window: tuple[float, float]

    @property
    def acceleration(self) -> float:
        """Columns over measured columns."""
        return self.mask.numel() / float(self.mask.sum())


def _centre_lines(w: int, n_low: int) -> torch.Tensor:
    """The ``n_low`` central columns of ``w`` as fastMRI's mask functions place them."""
    start = (w - n_low + 1) // 2
    return torch.arange(start, start + n_low)


def line_budget(width: int, *, acceleration: float, center_fraction: float) -> tuple[int, int]:
    """``(centre lines, lines in all)`` of a ``width``-column slice: ``max(1, round(width *
    center_fraction))`` and ``round(width / acceleration)``; ADS chooses the difference.

    Raises:
        ValueError: ``acceleration`` not finite and > 1, ``center_fraction`` not in ``(0, 1)``, or
            no more lines in all than in the centre (nothing left to choose).
    """
    if not (math.isfinite(acceleration) and acceleration > 1):
        raise ValueError(f"acceleration must be > 1, got {acceleration}")
    if not 0 < center_fraction < 1:
        raise ValueError(f"center_fraction must be in (0, 1), got {center_fraction}")
    n_low, total = max(1, round(width * center_fraction)), round(width / acceleration)
    if total <= n_low:
        raise ValueError(f"acceleration {acceleration:g} measures {total} of {width} lines, no more than the "
                         f"{n_low} centre lines: nothing left to choose (lower the acceleration or the centre)")
    return n_low, total


def active_reconstruct_kspace(kspace: torch.Tensor, *, acceleration: float, prior="mri-brain-v2",
                              recon_size: tuple[int, int] | None = None, center_fraction: float | None = None,
                              sampler: str = ACTIVE_DEFAULTS["sampler"], num_steps: int | None = None,
                              sigma_start: float | None = None, cold_start: bool = False,
                              sampler_options: Mapping | None = None,
                              num_particles: int = ACTIVE_DEFAULTS["num_particles"],
                              kernel: Literal["ads", "gmm"] = ACTIVE_DEFAULTS["kernel"],
                              s: float = ACTIVE_DEFAULTS["s"],
                              window: tuple[float, float] = ACTIVE_DEFAULTS["window"],
                              predict: Literal["tweedie", "consistent"] = ACTIVE_DEFAULTS["predict"],
                              generator: torch.Generator | None = None,
                              device: str | torch.device | None = None, autocast: bool = False,
                              progress: bool = False) -> ActiveKspaceReconstruction:
    """Choose and reconstruct the lines of one fully sampled slice by ADS; see the module docstring.

    Example:
        >>> with FastMRIFile("file1000001.h5") as f:
        ...     k = torch.from_numpy(f.read_kspace(10))                  # (15, 640, 368) complex64
        >>> rec = active_reconstruct_kspace(k, acceleration=4, recon_size=(320, 320),
        ...                                 generator=torch.Generator().manual_seed(0))
        >>> rec.image.shape, rec.mask.shape                               # (1, 320, 320), (368,)

    Args:
        kspace: one fully sampled slice, centred, fastMRI's layout: complex ``(H, W)``
            single-coil or ``(C, H, W)`` multi-coil, or the same with a leading slice
            dimension of 1, or the package's real layouts ``(1, 2, H, W)`` / ``(1, 2, C, H, W)``.
            Any units; results are in the same.
        acceleration: ``R``: ``round(W / R)`` columns are measured in all.
        prior: a 2-channel denoiser, or a shipped prior's name or ``.safetensors`` path.
        recon_size: ``(h, w)`` reconstruction matrix (readout crop and image crop); default ``(H, W)``.
        center_fraction: fraction of central columns measured first (default fastMRI's: 0.08 for
            ``R < 6``, 0.04 otherwise).
        sampler: the particle sampler, one of :data:`PARTICLE_SAMPLERS` (``"dds"``, ``"reddiff"``, ``"dps"``).
        num_steps, sigma_start, cold_start, sampler_options: as in
            :func:`~diffinverse.pipelines.fastmri.reconstruct_kspace` (the warm start is SENSE of
            the centre lines).
        num_particles: particles (their disagreement is the entropy), at least 2.
        kernel, s, window, predict: :class:`~diffinverse.samplers.ads.ActiveSubsampling`'s entropy
            kernel, its width in the scaled units, the acquisition window, and what predicts the
            lines (the particles' estimates made consistent with the lines measured so far, or
            their Tweedie estimates).
        generator: source of all randomness (on ``device``); the same seed gives the same lines.
        device: where to compute (default: ``kspace``'s device).
        autocast: run the network in bfloat16 (the particle sampler's ``autocast``).
        progress: show a progress bar.

    Returns:
        :class:`ActiveKspaceReconstruction`.

    Raises:
        TypeError: ``kspace`` not a complex or floating tensor.
        ValueError: more than one slice; NaN or infinite k-space; ``acceleration`` not in
            ``(1, W / (centre lines + 1)]`` (nothing or everything left to choose); a
            ``recon_size`` larger than the k-space; a centre narrower than 3 columns for
            multi-coil data (no coil maps); unknown sampler or option; ``warm_start`` other than
            SENSE; and the sampler's and ADS's own range checks.
    """
    device = torch.device(device) if device is not None else (
        kspace.device if isinstance(kspace, torch.Tensor) else torch.device("cpu"))
    if isinstance(kspace, torch.Tensor) and kspace.is_complex() and kspace.ndim in (2, 3):
        kspace = kspace[None] if kspace.ndim == 3 else kspace[None, None]
    k = _as_kspace(kspace).to(device)
    if k.shape[0] != 1:
        raise ValueError(f"active_reconstruct_kspace takes one slice (it chooses each slice's lines), got {k.shape[0]}")
    H, W = k.shape[-2:]
    h, w = (H, W) if recon_size is None else (int(recon_size[0]), int(recon_size[1]))
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"recon_size {(h, w)} must be positive and fit in the k-space's {(H, W)}")
    if center_fraction is None:
        center_fraction = 0.08 if acceleration < 6 else 0.04
    n_low, total = line_budget(W, acceleration=acceleration, center_fraction=center_fraction)
    if sampler not in PARTICLE_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; the particle samplers: {', '.join(PARTICLE_SAMPLERS)}")
    if isinstance(prior, str):
        from diffinverse.priors.checkpoints import load

        with torch.random.fork_rng(devices=[]):   # building the network draws from the global RNG
            prior = load(prior, device=device).eval()
    multicoil = k.shape[1] > 1
    if multicoil:
        prior = ImageStackPrior(prior)     # one image per map set (one set unless the second is not empty)
    particle_sampler = build_sampler(sampler, prior, num_steps=num_steps, sampler_options=sampler_options,
                                     autocast=autocast, progress=False)
    _, sigma_start = resolve_start(particle_sampler, method=sampler, warm_start=None if cold_start else "sense",
                                   sigma_start=sigma_start, cold_start=cold_start)
    particle_sampler.sigma_start = sigma_start

    k = crop_readout(k, h)                                                      # (1, C, h, W)
    initial_lines = _centre_lines(W, n_low)
    initial = torch.zeros(h, W, dtype=torch.bool, device=device)
    initial[:, initial_lines] = True
    support = None                      # where the FOV wraps: map_set_support's (1, 1, 2, h, W)
    if multicoil:
        calib = calibration_width(initial.float())
        if calib < 3:
            raise ValueError(f"the centre ({n_low} lines) is too small to estimate coil maps; "
                             "use a larger center_fraction")
        maps = estimate_coil_maps(k * initial, num_maps=2, calib_width=calib,
                                  kernel_width=min(6, max(2, calib // 2))).to(device=device, dtype=torch.complex64)
        support = map_set_support(maps)
        if support is None:
            maps = maps[:, :1]
        else:
            support = support.float()

        def physics_for_mask(mask: torch.Tensor, batch: int = num_particles):
            return MultiCoilMRI(mask.float(), maps.expand(batch, *maps.shape[1:]), cg_iters=SENSE_ITERS,
                                cg_lambda=SENSE_LAMBDA)
        data = to_channels(k)                                                   # (1, 2, C, h, W)
    else:
        def physics_for_mask(mask: torch.Tensor, batch: int = num_particles):
            return SingleCoilMRI(mask.float())
        data = to_channels(k[:, 0])                                             # (1, 2, h, W)
    x_shape = (1, 2, h, W) if support is None else (1, 2, 2, h, W)

    # the pipeline's scaling, from the first set's image of what the centre alone gives (as a
    # prospective run would)
    centre = physics_for_mask(initial, 1).A_dagger(data * initial)
    scale = prior_range_scale(centre if support is None else centre[:, :, 0])
    data = data / per_item(scale, data)

    def measure(mask: torch.Tensor) -> torch.Tensor:
        return data * mask

    candidates, groups = kspace_line_candidates(tuple(data.shape[1:]))
    # consistent predictions weigh the data as the DDS particles do (--dds-gamma), else as DDS's default
    consistency = {"gamma": particle_sampler.gamma} if isinstance(particle_sampler, DDS) else {}
    ads = ActiveSubsampling(particle_sampler, budget=total - n_low, num_particles=num_particles, window=window,
                            kernel=kernel, s=s, predict=predict, progress=progress, **consistency)
    out = ads(measure, physics_for_mask, candidates.to(device), initial_mask=initial, groups=groups.to(device),
              x_shape=x_shape, generator=generator)

    particles = from_prior_range(out.particles, scale.expand(num_particles))   # (N, *x_shape[1:]), data units
    if support is not None:
        particles = particles * support                  # the second image: zero outside its maps, as SENSE's
    mean = particles.mean(0, keepdim=True)
    final = out.mask
    y_c = k * final
    baselines = {"zero-filled": rss(ifft2c(y_c), dim=1)}
    if multicoil:
        baselines["sense"] = _rss_maps(physics_for_mask(final, 1).A_dagger(to_channels(y_c)))
    crop = lambda t: center_crop(t, (h, w)).float()
    return ActiveKspaceReconstruction(
        image=crop(_rss_maps(mean)), std=crop(_rss_maps(particles).std(0, keepdim=True)),
        complex_image=crop(mean if support is not None else mean[:, :, None]),
        baselines=MappingProxyType({n: crop(v) for n, v in baselines.items()}),
        mask=final[0].float(), order=tuple(out.order), initial_lines=tuple(initial_lines.tolist()),
        entropies=out.entropies, sampler=sampler, nfe=ads.last_nfe, window=tuple(window))


def save_acquisition_order(path: str | os.PathLike,
                           result: ActiveKspaceReconstruction | Sequence[ActiveKspaceReconstruction], *,
                           title: str | None = None, first_slice: int = 0, overwrite: bool = False) -> None:
    """Write a PNG of the acquisition order (atomically, :func:`~diffinverse._io.atomic_output`).

    One result (or a sequence of one): one bar per phase-encode column, grey for the initial
    centre lines, coloured by acquisition step (``1 .. len(order)``, colour bar) for the chosen
    ones, empty for lines never measured. Several results (e.g. the slices of a volume, each with
    its own lines): an image with one row per result (top to bottom, in the given order) and one
    column per phase-encode line, coloured the same way; the results must have the same width;
    the rows are numbered from ``first_slice``.

    Raises:
        ValueError: an empty sequence, or results of different widths.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    import matplotlib
    from matplotlib.figure import Figure

    results = [result] if isinstance(result, ActiveKspaceReconstruction) else list(result)
    if not results:
        raise ValueError("save_acquisition_order needs at least one result")
    w = results[0].mask.numel()
    if any(r.mask.numel() != w for r in results):
        raise ValueError(f"the results have different widths: {sorted({r.mask.numel() for r in results})}")
    n = max(max(len(r.order) for r in results), 1)
    cmap = matplotlib.colormaps["viridis"]
    colour = [cmap(i / max(n - 1, 1)) for i in range(n)]
    # a Figure of its own, no pyplot: the caller's backend and figures are left alone
    if len(results) == 1:
        r = results[0]
        fig = Figure(figsize=(8, 2.2), dpi=100)
        ax = fig.add_subplot()
        ax.bar(list(r.initial_lines), [1] * len(r.initial_lines), width=1.0, color="0.6", label="initial centre")
        ax.bar(list(r.order), [1] * len(r.order), width=1.0, color=colour[:len(r.order)])
        ax.set(xlim=(-0.5, w - 0.5), ylim=(0, 1), yticks=[])
        ax.legend(loc="upper right", fontsize=7)
        default = (f"ADS: {len(r.order)} lines chosen after {len(r.initial_lines)} centre lines "
                   f"({r.acceleration:.1f}x)")
    else:
        image = np.ones((len(results), w, 4))                       # white: never measured
        for row, r in enumerate(results):
            image[row, list(r.initial_lines)] = matplotlib.colors.to_rgba("0.6")
            for step, line in enumerate(r.order):
                image[row, line] = colour[step]
        fig = Figure(figsize=(8, min(1.6 + 0.12 * len(results), 12)), dpi=100)
        ax = fig.add_subplot()
        top = first_slice - 0.5
        ax.imshow(image, aspect="auto", interpolation="nearest", extent=(-0.5, w - 0.5, top + len(results), top))
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set(ylabel="slice")
        mean = sum(r.acceleration for r in results) / len(results)
        default = (f"ADS: {len(results)} slices, {len(results[0].order)} lines chosen per slice after "
                   f"{len(results[0].initial_lines)} centre lines ({mean:.1f}x)")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(1, n), cmap=cmap), ax=ax,
                 label="acquisition")
    ax.set(xlabel="phase-encode line" + ("" if len(results) == 1 else " (grey: initial centre, white: not measured)"),
           title=title or default)
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
