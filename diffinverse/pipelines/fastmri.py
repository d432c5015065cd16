"""The MRI pipeline on tensors: fastMRI-layout k-space (+ mask) -> magnitude image (+ std).

:func:`reconstruct_kspace` is what ``diffinverse-reconstruct`` runs on each batch of slices, callable
from a notebook or another program on tensors. For one batch of slices it does:

1. **Readout crop** (``recon_size``). fastMRI k-space is oversampled along the readout (rows,
   e.g. ``H = 640`` for a 320-row reconstruction). The rows are inverse-transformed, centre-cropped
   to the reconstruction height ``h`` and transformed back, so every method works on a ``(h, W)``
   grid whose image equals the centre rows of the full image exactly.
2. **Mask**: the one given (``(W,)`` lines or ``(h, W)``), or, with ``acceleration``, a
   retrospective one (:func:`retrospective_mask`) for fully sampled data.
3. **Coil maps** (multi-coil): ESPIRiT from the fully sampled centre (its width read from the
   mask, at most :data:`MAX_CALIB`), two map sets (soft-SENSE, which copes with a field of view
   that wraps). The SENSE baseline uses both sets. The second set is non-zero only where the
   field of view wraps; where it is, TV and the diffusion samplers reconstruct both sets' images
   under the measurement model (``second_map_set="model"``): TV on each image, the second
   constrained to its maps' support, or the prior on each
   (:class:`~diffinverse.priors.stack.ImageStackPrior`: one network call on the pair); the second
   image is zero outside that support, as SENSE's. With ``"sense"`` (STSL, whose latent prior
   models one image) the first set's image is reconstructed from the measurements less the
   k-space of SENSE's second-set image, which is added back in the magnitude. Where the second
   set is empty both give the same result.
4. **Baselines**: zero-filled (root-sum-of-squares of the coil images) and SENSE (multi-coil):
   Tikhonov-regularised least squares ``(A^H A + SENSE_LAMBDA I) x = A^H y`` by at most
   :data:`SENSE_ITERS` conjugate-gradient iterations (plain least squares amplifies noise as CG
   converges). Single-coil ``"sense"`` is the zero-filled image. ``method="tv"``:
   TV-regularised least squares (PDHG, weight :data:`TV_LAMBDA` on the scaled data of step 5, run
   to convergence) on the map sets' images of step 3, slice by slice, so that each slice stops at its
   own tolerance and its image does not depend on the batch.
5. **Intensity scaling** (:mod:`diffinverse.imaging`). The shipped priors were trained on complex
   images whose magnitude's 99.5th percentile is 1. Each slice's measurements are divided by
   that percentile of the magnitude of SENSE's first-set image (single-coil: zero-filled) before
   sampling, and the result is multiplied back, so outputs are in the k-space's units (for
   fastMRI files, the units of ``reconstruction_rss``).
6. **Sampling**: the diffusion sampler (:data:`~diffinverse.samplers.SAMPLERS`, with this
   pipeline's settings :data:`SAMPLER_DEFAULTS`) warm-starts from that image (``warm_start="tv"``:
   from the TV reconstruction) plus noise at ``sigma_start`` (Come-Closer-Diffuse-Faster), or
   runs the whole grid from its own initialisation (``cold_start``); with ``num_samples > 1``
   the image is the magnitude of the posterior mean and ``std`` the per-pixel standard
   deviation of the samples' magnitudes.

Measurements behind the settings (the scores that chose them, run times) are in ``benchmarks/``.

References:
    Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI", 2018.
    Uecker et al., "ESPIRiT", MRM 71 (2014). Pruessmann et al., "SENSE", MRM 42 (1999).
    Chung, Sim & Ye, "Come-Closer-Diffuse-Faster", CVPR 2022.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from diffinverse.baselines import tv_reconstruction
from diffinverse.datasets.fastmri import center_crop
from diffinverse.imaging import from_prior_range, per_item, prior_range_scale
from diffinverse.operators.coils import estimate_coil_maps, rss
from diffinverse.operators.masks import equispaced_lines, random_lines, variable_density_2d
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI, ifft2c, to_channels, to_complex
from diffinverse.priors.latent import LatentPrior
from diffinverse.priors.stack import ImageStackPrior
from diffinverse.samplers.adaptation import Adaptation
from diffinverse.samplers.table import SAMPLERS

__all__ = ["KspaceReconstruction", "SamplerDefaults", "SAMPLER_DEFAULTS", "BASELINES", "METHODS", "MASK_TYPES",
           "WARM_STARTS", "SECOND_MAP_SETS", "TV_LAMBDA", "SENSE_LAMBDA", "SENSE_ITERS", "MAX_CALIB",
           "reconstruct_kspace", "resolve_second_map_set", "build_sampler", "resolve_start", "retrospective_mask",
           "max_acceleration", "acceleration_of", "crop_readout", "calibration_width",
           "map_set_support"]


@dataclass(frozen=True)
class SamplerDefaults:
    """This pipeline's settings for one diffusion sampler (chosen on the bundled demo file at 4x;
    the grids and scores are in ``benchmarks/``).

    Attributes:
        num_steps: steps of the full noise grid (a warm start runs only its tail).
        warm_start: the baseline the sampler starts from, ``"sense"`` or ``"tv"``.
        sigma_start: warm-start noise level in the scaled units (99.5th percentile of the
            magnitude = 1).
        options: the sampler's own keyword options (its :class:`~diffinverse.samplers.SamplerSpec`
            ``options``, and schedule options such as ``sigma_max``).
        prior: the shipped prior it runs with unless another is given: ``mri-brain-v2`` (fine-tuned
            on real head images; its comparison with ``mri-brain`` is in ``benchmarks/README.md``),
            ``mri-brain-latent`` for STSL.
    """

    num_steps: int
    warm_start: str
    sigma_start: float
    options: Mapping[str, object] = field(default_factory=dict)
    prior: str = "mri-brain-v2"

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


SAMPLER_DEFAULTS: dict[str, SamplerDefaults] = {
    "dps": SamplerDefaults(num_steps=50, warm_start="sense", sigma_start=0.2,
                           options={"zeta": 4.0, "squared_norm": False}),
    "reddiff": SamplerDefaults(num_steps=50, warm_start="sense", sigma_start=0.2, options={"lam": 0.08, "lr": 0.05}),
    "dds": SamplerDefaults(num_steps=50, warm_start="sense", sigma_start=0.3, options={"gamma": 10.0, "eta": 1.0}),
    # on the latent prior: a 50-step grid from latent sigma 0.1, zeta chosen on the tuning images of
    # the single-coil 4x task (benchmarks/samplers/stsl_results.md)
    "stsl": SamplerDefaults(num_steps=50, warm_start="sense", sigma_start=0.1, prior="mri-brain-latent",
                            options={"zeta": 0.3, "inner_steps": 5, "eta": 0.02, "sigma_max": 0.1}),
}
"""Name (a key of :data:`~diffinverse.samplers.SAMPLERS`) -> this pipeline's settings."""

BASELINES = ("zero-filled", "sense")
METHODS = (*SAMPLER_DEFAULTS, *BASELINES, "tv")
MASK_TYPES = ("random", "equispaced", "poisson")
WARM_STARTS = ("sense", "tv")
SECOND_MAP_SETS = ("model", "sense")
"""How a second ESPIRiT map set is reconstructed: under the measurement model, or kept from SENSE."""
TV_LAMBDA = 0.002
"""TV weight on the scaled data (99.5th percentile of the magnitude = 1)."""
SENSE_LAMBDA = 0.01
"""SENSE's Tikhonov weight, relative to ``A^H A`` (whose eigenvalues are <= 1 for ESPIRiT maps)."""
SENSE_ITERS = 30
"""SENSE's conjugate-gradient iterations (at most)."""
MAX_CALIB = 24
"""Largest calibration width (k-space samples) given to ESPIRiT."""


@dataclass(frozen=True)
class KspaceReconstruction:
    """The result of :func:`reconstruct_kspace` for ``S`` slices; tensors on the run's device.

    Attributes:
        image: ``(S, h, w)`` float32 magnitude in the k-space's units (the posterior mean's
            magnitude when ``num_samples > 1``), centre-cropped to ``recon_size``; for
            multi-coil data the root-sum-of-squares over the two map sets' images.
        std: ``(S, h, w)`` per-pixel standard deviation of the samples' magnitudes (same units),
            or ``None`` with one sample or a method that is not a sampler.
        complex_image: ``(S, 2, M, h, w)`` float32 complex image (channels real, imaginary) of
            each of the ``M`` map sets (``M = 2`` multi-coil, 1 single-coil), the posterior mean
            with several samples; ``None`` for ``"zero-filled"`` on multi-coil data (a
            root-sum-of-squares has no complex image).
        baselines: ``{"zero-filled": (S, h, w), "sense": (S, h, w)}`` magnitudes (``"sense"`` for
            multi-coil data only), for comparison.
        mask: ``(h, W)`` float32 0/1 sampling mask used (on the readout-cropped grid).
        method: the method's name.
        nfe: network evaluations of the run (0 for the classical methods).
    """

    image: torch.Tensor
    std: torch.Tensor | None
    complex_image: torch.Tensor | None
    baselines: Mapping[str, torch.Tensor]
    mask: torch.Tensor
    method: str
    nfe: int


#: side of the fully sampled calibration box of the "poisson" masks (``variable_density_2d``'s default)
_POISSON_CALIB = 24


def max_acceleration(shape: tuple[int, int], *, mask_type: str = "random", center_fraction: float = 0.08) -> float:
    """The largest acceleration a :func:`retrospective_mask` of ``shape = (h, W)`` can meet.

    A line mask keeps its ``n = round(W * center_fraction)`` central columns whatever the
    acceleration, so it samples at least ``n`` of ``W`` columns: the bound is ``W / n``
    (``floor(W / n)`` for ``"equispaced"``, whose acceleration is an integer; ``inf`` when
    ``n = 0``). A ``"poisson"`` mask keeps its 24 x 24 calibration box: ``h W / 576``.
    """
    h, w = int(shape[0]), int(shape[1])
    if mask_type == "poisson":
        return h * w / (min(_POISSON_CALIB, h) * min(_POISSON_CALIB, w))
    n_low = round(w * center_fraction)
    if n_low == 0:
        return math.inf
    return float(w // n_low) if mask_type == "equispaced" else w / n_low


def acceleration_of(mask: torch.Tensor) -> float:
    """The achieved acceleration of a 0/1 mask: its number of entries over the sampled ones.

    A ``(W,)`` line mask gives ``W / lines``; an ``(h, W)`` mask ``h W / samples`` (for a line
    mask constant along ``h`` the same number).
    """
    m = torch.as_tensor(mask)
    return m.numel() / float(m.sum())


def retrospective_mask(shape: tuple[int, int], *, acceleration: float, mask_type: str = "random",
                       center_fraction: float = 0.08, generator: torch.Generator | None = None) -> torch.Tensor:
    """A retrospective undersampling mask for fully sampled k-space of ``shape = (h, W)``.

    Args:
        shape: ``(h, W)``: readout rows (after the readout crop) and phase-encode columns.
        acceleration: undersampling factor ``R >= 1`` (an integer for ``"equispaced"``).
        mask_type: ``"random"`` (fastMRI ``RandomMaskFunc``), ``"equispaced"`` (fastMRI
            ``EquiSpacedMaskFunc``) or ``"poisson"`` (2-D variable-density Poisson disc with a
            24 x 24 calibration box; ``center_fraction`` unused).
        center_fraction: fraction of fully sampled central columns (line masks).
        generator: a CPU generator (default: seeded with 0, as :mod:`diffinverse.operators.masks`).

    Returns:
        ``(h, W)`` float32 0/1 mask on the CPU.

    Raises:
        ValueError: unknown ``mask_type``, ``acceleration < 1``, a ``center_fraction`` outside
            ``(0, 1]``, a non-integer equispaced ``acceleration``, or an acceleration above
            :func:`max_acceleration` (the message gives the largest achievable).
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
    if not 0 < center_fraction <= 1:
        raise ValueError(f"center_fraction must be in (0, 1], got {center_fraction}")
    largest = max_acceleration(shape, mask_type=mask_type, center_fraction=center_fraction)
    if math.isfinite(acceleration) and acceleration > largest:
        fixed = (f"its {_POISSON_CALIB} x {_POISSON_CALIB} calibration box" if mask_type == "poisson" else
                 f"its {round(shape[1] * center_fraction)} central line(s) (center fraction {center_fraction:g})")
        raise ValueError(f"a {mask_type} mask of {shape[1]} phase-encode lines cannot reach acceleration "
                         f"{acceleration:g}: {fixed} are always sampled, so the largest achievable is "
                         f"{largest:.2f}x")
    if mask_type == "poisson":
        m = variable_density_2d(shape, acceleration, kind="poisson", generator=generator)
    else:
        fn = random_lines if mask_type == "random" else equispaced_lines
        m = fn(shape, acceleration, center_fraction, generator=generator)
    return m.to(torch.float32)


def crop_readout(kspace: torch.Tensor, h: int) -> torch.Tensor:
    """Remove readout oversampling: complex k-space ``(..., H, W)`` -> ``(..., h, W)``.

    The rows are inverse-transformed (centred, orthonormal), the central ``h`` image rows kept
    (fastMRI's crop, from ``(H - h) // 2``), and transformed back, so that ``ifft2c`` of the result
    equals the central rows of ``ifft2c(kspace)`` exactly.
    """
    H = kspace.shape[-2]
    if not 0 < h <= H:
        raise ValueError(f"the reconstruction height must be in [1, {H}] (the k-space's rows), got {h}")
    if h == H:
        return kspace
    img = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(kspace, dim=-2), dim=-2, norm="ortho"), dim=-2)
    top = (H - h) // 2
    img = img[..., top:top + h, :]
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(img, dim=-2), dim=-2, norm="ortho"), dim=-2)


def calibration_width(mask: torch.Tensor, *, max_width: int = MAX_CALIB) -> int:
    """Side of the fully sampled central square of an ``(h, W)`` mask, capped at ``max_width``
    (odd, centred on ``(h // 2, W // 2)``; 0 when the centre is not sampled): ESPIRiT's
    calibration region."""
    h, w = mask.shape
    row, col = mask[h // 2] > 0, mask[:, w // 2] > 0

    def run(v: torch.Tensor) -> int:
        c, n = v.shape[0] // 2, 0
        while c - n - 1 >= 0 and c + n + 1 < v.shape[0] and v[c - n - 1] and v[c + n + 1]:
            n += 1
        return 2 * n + 1 if v[c] else 0

    return min(max_width, run(row), run(col))


def build_sampler(method: str, prior, *, num_steps: int | None = None, sampler_options: Mapping | None = None,
                  autocast: bool = False, progress: bool = False, adapt: Adaptation | None = None):
    """The diffusion sampler ``method`` with this pipeline's settings (:data:`SAMPLER_DEFAULTS`).

    Args:
        method: a key of :data:`SAMPLER_DEFAULTS` (``"dps"``, ``"reddiff"``, ``"dds"``).
        prior: a 2-channel (complex) denoiser, e.g. ``priors.load("mri-brain")``.
        num_steps: steps of the full noise grid (default: the pipeline's).
        sampler_options: the sampler's own options (its ``SamplerSpec.options``, e.g.
            ``{"zeta": 2.0}`` for DPS), over the pipeline's defaults.
        autocast: run the network in bfloat16 (the sampler's ``autocast``).
        progress: show the sampler's progress bar.
        adapt: test-time adaptation of the prior during sampling
            (:class:`~diffinverse.samplers.adaptation.Adaptation`), or ``None``.

    Raises:
        ValueError: unknown method or option, a prior without 2 channels, ``num_steps < 1``, or an
            option value the sampler refuses (its own range checks).
    """
    if getattr(prior, "channels", None) != 2:
        raise ValueError(f"the prior has {getattr(prior, 'channels', '?')} channel(s); MRI reconstruction "
                         f"needs a 2-channel (complex: real, imaginary) prior such as 'mri-brain'")
    if method not in SAMPLER_DEFAULTS:
        raise ValueError(f"unknown sampler {method!r}; the MRI pipeline's samplers: {', '.join(SAMPLER_DEFAULTS)}")
    spec, defaults = SAMPLERS[method], SAMPLER_DEFAULTS[method]
    options = dict(sampler_options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for sampler {method!r}; its options: "
                         f"{', '.join(spec.options) or 'none'}")
    num_steps = defaults.num_steps if num_steps is None else num_steps
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    # the start (warm or cold) is chosen per call (resolve_start), never by the sampler's default
    return spec.cls(prior, num_steps=num_steps, progress=progress, autocast=autocast, sigma_start=None, adapt=adapt,
                    **{**defaults.options, **options})


def _as_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """Validated complex64 ``(S, C, H, W)`` (``C = 1`` for single-coil input)."""
    if not isinstance(kspace, torch.Tensor):
        raise TypeError(f"kspace must be a torch.Tensor, got {type(kspace).__name__}")
    layouts = ("complex (S, H, W) single-coil or (S, C, H, W) multi-coil, or real (S, 2, H, W) / "
               "(S, 2, C, H, W) with channels (real, imaginary)")
    if kspace.is_complex():
        if kspace.ndim not in (3, 4):
            raise ValueError(f"kspace must be {layouts}; got complex shape {tuple(kspace.shape)} "
                             f"(one slice: add the slice dimension, kspace[None])")
        k = kspace.to(torch.complex64)
    elif kspace.is_floating_point():
        if kspace.ndim not in (4, 5) or kspace.shape[1] != 2:
            raise ValueError(f"kspace must be {layouts}; got real shape {tuple(kspace.shape)}")
        k = to_complex(kspace).to(torch.complex64)
    else:
        raise TypeError(f"kspace must be complex or floating point, got dtype {kspace.dtype}")
    if min(k.shape) == 0:
        raise ValueError(f"kspace is empty, shape {tuple(kspace.shape)}")
    if not torch.isfinite(torch.view_as_real(k)).all():
        raise ValueError("kspace holds NaN or infinite values")
    return k if k.ndim == 4 else k[:, None]


def _as_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Validated float32 ``(h, W)`` mask from ``(W,)`` lines or ``(h, W)``."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    h, w = grid
    if mask.ndim == 1 and mask.shape[0] == w:
        mask = mask.expand(h, w)
    elif tuple(mask.shape) != (h, w):
        raise ValueError(f"mask must be ({w},) phase-encode lines or ({h}, {w}) (the readout-cropped grid), "
                         f"got shape {tuple(mask.shape)}")
    mask = mask.to(torch.float32).contiguous()
    if not ((mask == 0) | (mask == 1)).all() or not mask.any():
        raise ValueError("mask must hold 0/1 values with at least one sample")
    return mask


def resolve_start(sampler, *, method: str, warm_start: str | None = None, sigma_start: float | None = None,
                  cold_start: bool = False) -> tuple[str | None, float | None]:
    """A run's ``(warm_start, sigma_start)``: the given values or the method's defaults
    (:data:`SAMPLER_DEFAULTS`); ``(None, None)`` for a cold start.

    Raises:
        ValueError: an unknown warm start, a ``sigma_start`` that is not positive or exceeds the
            sampler's largest noise level, or ``cold_start`` with either of the others.
    """
    defaults = SAMPLER_DEFAULTS[method]
    if warm_start is not None and warm_start not in WARM_STARTS:
        raise ValueError(f"warm_start must be one of {', '.join(WARM_STARTS)}, got {warm_start!r}")
    if cold_start:
        if warm_start is not None or sigma_start is not None:
            raise ValueError("cold_start=True runs without a warm start: give neither warm_start nor sigma_start")
        return None, None
    warm_start = defaults.warm_start if warm_start is None else warm_start
    sigma_start = defaults.sigma_start if sigma_start is None else float(sigma_start)
    if not (math.isfinite(sigma_start) and sigma_start > 0):
        raise ValueError(f"sigma_start must be positive, got {sigma_start}")
    if sigma_start > float(sampler.sigmas[0]):
        raise ValueError(f"sigma_start {sigma_start} exceeds the prior's largest noise level "
                         f"{float(sampler.sigmas[0]):g}")
    return warm_start, sigma_start


def resolve_second_map_set(prior, requested: str | None) -> str:
    """The map-set mode a run uses: ``requested``, else ``"model"``; always ``"sense"`` for a latent prior.

    Args:
        prior: the run's prior (``None`` for TV and the baselines).
        requested: one of :data:`SECOND_MAP_SETS`, or ``None`` for the default.

    Raises:
        ValueError: ``requested`` is not a mode, or is ``"model"`` with a :class:`~diffinverse.priors.latent.
            LatentPrior` (which models one image, not the pair).
    """
    if requested not in (None, *SECOND_MAP_SETS):
        raise ValueError(f"second_map_set must be one of {', '.join(SECOND_MAP_SETS)}, got {requested!r}")
    if isinstance(prior, LatentPrior):
        if requested == "model":
            raise ValueError("second_map_set='model' needs a pixel prior; a latent prior models one image "
                             "(use 'sense')")
        return "sense"
    return requested or "model"


def reconstruct_kspace(kspace: torch.Tensor, mask: torch.Tensor | None = None, *, method: str = "dps",
                       prior=None, recon_size: tuple[int, int] | None = None,
                       acceleration: float | None = None, mask_type: str = "random", center_fraction: float = 0.08,
                       mask_generator: torch.Generator | None = None, num_steps: int | None = None,
                       warm_start: str | None = None, sigma_start: float | None = None, cold_start: bool = False,
                       sampler_options: Mapping | None = None, num_samples: int = 1, autocast: bool = False,
                       generator: torch.Generator | None = None, device: str | torch.device | None = None,
                       progress: bool = False, adapt: Adaptation | None = None,
                       second_map_set: str | None = None) -> KspaceReconstruction:
    """Reconstruct a batch of MRI slices from (undersampled) k-space; see the module docstring.

    Example:
        >>> with FastMRIFile("file1000001.h5") as f:
        ...     k = torch.from_numpy(f.read_kspace(slice(10, 12)))      # (2, 15, 640, 368) complex64
        >>> rec = reconstruct_kspace(k, acceleration=4, recon_size=(320, 320),
        ...                          generator=torch.Generator().manual_seed(0))
        >>> rec.image.shape                                               # (2, 320, 320)

    Args:
        kspace: centred k-space of ``S`` slices in fastMRI's layout: complex ``(S, H, W)``
            single-coil or ``(S, C, H, W)`` multi-coil (``H`` readout rows, ``W`` phase-encode
            columns; one slice: ``k[None]``), or the package's real layout ``(S, 2, H, W)`` /
            ``(S, 2, C, H, W)`` (channels real, imaginary). Any units; results are in the same.
            Unmeasured samples may hold anything: the data used are ``kspace * mask``.
        mask: the sampling mask, ``(W,)`` lines (a fastMRI file's ``mask``) or ``(h, W)`` on the
            readout-cropped grid, 0/1. ``None``: give ``acceleration`` (retrospective undersampling
            of fully sampled data).
        method: a diffusion sampler (a key of :data:`SAMPLER_DEFAULTS`: ``"dps"``, ``"reddiff"``, ``"dds"``),
            or ``"zero-filled"``, ``"sense"``, ``"tv"``.
        prior: a 2-channel denoiser, or a shipped prior's name or ``.safetensors`` path (loaded on
            ``device``); default the method's (:attr:`SamplerDefaults.prior`: ``"mri-brain-v2"``,
            ``"mri-brain-latent"`` for STSL); unused by the classical methods.
        recon_size: ``(h, w)`` reconstruction matrix: the readout is cropped to ``h`` rows and the
            images centre-cropped to ``(h, w)``. Default ``(H, W)`` (no crop).
        acceleration: with ``mask=None``, undersample by this factor with a mask of
            ``mask_type`` and ``center_fraction`` drawn from ``mask_generator``
            (:func:`retrospective_mask`); must be ``None`` when ``mask`` is given.
        mask_type, center_fraction, mask_generator: see :func:`retrospective_mask`.
        num_steps: the sampler's steps of the full noise grid (default: :data:`SAMPLER_DEFAULTS`).
        warm_start: ``"sense"`` or ``"tv"``: the baseline the sampler starts from (default: the
            sampler's entry in :data:`SAMPLER_DEFAULTS`).
        sigma_start: warm-start noise level in the scaled units (default: the table's).
        cold_start: run the whole noise grid from the sampler's own initialisation instead (DPS:
            pure noise at the prior's largest noise level; RED-Diff: ``mu = A_dagger(y)``, the
            first map set's SENSE), with no warm-start image; then give neither ``warm_start``
            nor ``sigma_start``.
        sampler_options: the sampler's own options (e.g. ``{"zeta": 2.0}``), over the table's.
        num_samples: posterior samples per slice; ``> 1`` also returns ``std``.
        autocast: run the network in bfloat16 (the rest in float32).
        generator: source of the sampler's randomness (on ``device``; ``None``: a fresh seed).
            The same seed on the same device gives the same images.
        device: where to compute (default: ``kspace``'s device).
        progress: show the sampler's progress bar.
        adapt: test-time adaptation of the prior (LoRA adapters trained on the measurement during
            sampling, :class:`~diffinverse.samplers.adaptation.Adaptation`; the prior's weights are
            never changed), or ``None``.
        second_map_set: multi-coil data whose second ESPIRiT map set is not empty (a field of view
            that wraps): ``"model"`` reconstructs both map sets' images under the measurement model
            (TV on each, or the prior on each, :class:`~diffinverse.priors.stack.ImageStackPrior`),
            ``"sense"`` keeps SENSE's second-set image and reconstructs the first from the rest of
            the data. Default ``"model"``, and ``"sense"`` for a latent prior (STSL), whose
            sampler works on one image.

    Returns:
        :class:`KspaceReconstruction` (image, std, complex image, baselines, mask, NFE).

    Raises:
        TypeError: ``kspace`` or ``mask`` is not a tensor, or ``kspace`` is not complex or floating.
        ValueError: a ``kspace`` shape other than those above, NaN or infinite values, an empty
            batch; a mask of another shape or not 0/1; both or neither of ``mask`` and
            ``acceleration``; a ``recon_size`` larger than the k-space; an unknown method, warm
            start, ``second_map_set`` or sampler option; ``second_map_set="model"`` with a latent
            prior; sampler settings given to a classical method; ``num_samples
            > 1`` without a sampler; a multi-coil mask whose fully sampled centre is narrower
            than 3 samples (no coil maps); a prior without 2 channels.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    device = torch.device(device) if device is not None else (
        kspace.device if isinstance(kspace, torch.Tensor) else torch.device("cpu"))
    k = _as_kspace(kspace).to(device)
    H, W = k.shape[-2:]
    h, w = (H, W) if recon_size is None else (int(recon_size[0]), int(recon_size[1]))
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"recon_size {(h, w)} must be positive and fit in the k-space's {(H, W)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    resolve_second_map_set(None, second_map_set)   # a bad value fails before the prior is loaded
    sampler = None
    if method in SAMPLER_DEFAULTS:
        prior = SAMPLER_DEFAULTS[method].prior if prior is None else prior
        if isinstance(prior, str):
            from diffinverse.priors.checkpoints import load

            # building the network before its weights are read draws from the global RNG
            with torch.random.fork_rng(devices=[]):
                prior = load(prior, device=device).eval()
        second_map_set = resolve_second_map_set(prior, second_map_set)
        if not isinstance(prior, LatentPrior) and k.shape[1] > 1:
            prior = ImageStackPrior(prior)   # multi-coil: one image per map set (one set unless modelled)
        sampler = build_sampler(method, prior, num_steps=num_steps, sampler_options=sampler_options,
                                autocast=autocast, progress=progress, adapt=adapt)
        warm_start, sigma_start = resolve_start(sampler, method=method, warm_start=warm_start,
                                                sigma_start=sigma_start, cold_start=cold_start)
    else:
        second_map_set = resolve_second_map_set(None, second_map_set)
        given = {"num_steps": num_steps, "warm_start": warm_start, "sigma_start": sigma_start,
                 "sampler_options": sampler_options, "cold_start": cold_start or None, "autocast": autocast or None,
                 "adapt": adapt}
        unused = [name for name, value in given.items() if value is not None]
        if unused:
            raise ValueError(f"{', '.join(unused)} applies to the diffusion samplers "
                             f"({', '.join(SAMPLER_DEFAULTS)}), not {method}")
        if num_samples > 1:
            raise ValueError(f"num_samples > 1 needs a diffusion sampler ({', '.join(SAMPLER_DEFAULTS)}), not {method}")

    if mask is None:
        if acceleration is None:
            raise ValueError("give the sampling mask, or an acceleration to undersample fully sampled k-space")
        mask = retrospective_mask((h, W), acceleration=acceleration, mask_type=mask_type,
                                  center_fraction=center_fraction, generator=mask_generator)
    elif acceleration is not None:
        raise ValueError("give a mask or an acceleration (retrospective undersampling), not both")
    mask = _as_mask(mask, (h, W)).to(device)
    k = crop_readout(k, h)
    out = _reconstruct(k, mask, calibration_width(mask), method, sampler, warm_start, sigma_start, num_samples,
                       generator, model_second=second_map_set == "model")
    crop = {name: None if v is None else center_crop(v, (h, w)) for name, v in out.items()}
    return KspaceReconstruction(
        image=crop["image"], std=crop["std"], complex_image=crop["complex"],
        baselines=MappingProxyType({name: crop[name] for name in BASELINES if name in crop}),
        mask=mask, method=method, nfe=sampler.last_nfe if sampler is not None else 0)


def map_set_support(maps: torch.Tensor) -> torch.Tensor | None:
    """Where each of two ESPIRiT map sets' images is defined, or ``None`` if the second set is empty.

    The second map set is non-zero only where the field of view wraps (often nowhere); its image
    is defined there and zero elsewhere, as SENSE's.

    Args:
        maps: ``(B, 2, C, h, W)`` complex coil maps of two map sets.

    Returns:
        ``(B, 1, 2, h, W)`` bool (the first set everywhere, the second where its maps are non-zero),
        broadcasting over a ``(B, 2, 2, h, W)`` image pair; ``None`` if no slice has a second set.
    """
    second = maps[:, 1].abs().amax(1) > 0                                      # (B, h, W)
    if not bool(second.any()):
        return None
    return torch.stack([torch.ones_like(second), second], dim=1)[:, None]


def _rss_maps(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, M, H, W)`` or ``(B, 2, H, W)`` -> ``(B, H, W)``: the magnitude over the channels and
    the ``M`` map sets."""
    return x.square().flatten(1, x.ndim - 3).sum(1).sqrt()


def _reconstruct(k: torch.Tensor, mask: torch.Tensor, calib: int, method: str, sampler, warm_start: str | None,
                 sigma_start: float | None, num_samples: int, generator, *,
                 model_second: bool) -> dict[str, torch.Tensor | None]:
    """One batch on the ``(h, W)`` grid: ``k (B, C, h, W)`` complex (``C = 1``: single-coil).

    ``model_second``: reconstruct the second map set's image too (when any slice has one), else keep
    SENSE's.

    Returns ``{"image", "std", "complex", "zero-filled"[, "sense"]}``: magnitudes ``(B, h, W)``,
    the complex image ``(B, 2, M, h, W)`` (or None), std (or None).
    """
    y_c = k * mask
    out: dict[str, torch.Tensor | None] = {"zero-filled": rss(ifft2c(y_c), dim=1)}
    if k.shape[1] > 1:
        if calib < 3:
            raise ValueError(f"the mask's fully sampled centre ({calib} lines) is too small to estimate coil maps; "
                             "use a larger centre fraction")
        maps = estimate_coil_maps(y_c, num_maps=2, calib_width=calib, kernel_width=min(6, max(2, calib // 2)))
        maps = maps.to(device=k.device, dtype=torch.complex64)
        y = to_channels(y_c)                                          # (B, 2, C, h, W)
        cg = {"cg_iters": SENSE_ITERS, "cg_lambda": SENSE_LAMBDA}
        x_sense = MultiCoilMRI(mask, maps, **cg).A_dagger(y)            # (B, 2, 2, h, W): two map sets
        out["sense"] = _rss_maps(x_sense)
        if method == "sense":
            return {**out, "image": out["sense"], "std": None, "complex": x_sense}
        if method == "zero-filled":
            return {**out, "image": out["zero-filled"], "std": None, "complex": None}
        support = map_set_support(maps) if model_second else None
        if support is not None:
            # both images under the model, (B, 2, 2, h, W), the second zero outside its support
            physics, x0, second = MultiCoilMRI(mask, maps, **cg), x_sense, None
            support = support.to(x0.dtype)
        else:
            # the first map set's image from the data less the k-space of SENSE's second-set image
            second, support = x_sense[:, :, 1], None
            physics = MultiCoilMRI(mask, maps[:, :1], **cg)
            y = y - MultiCoilMRI(mask, maps[:, 1:]).A(second)
            x0 = x_sense[:, :, 0]
    else:
        y = to_channels(y_c[:, 0])                                    # (B, 2, h, W)
        physics = SingleCoilMRI(mask)
        second = support = None
        x0 = physics.A_dagger(y)
        if method in BASELINES:
            return {**out, "image": out["zero-filled"], "std": None, "complex": x0[:, :, None]}

    # scale into the prior's range (the first map set's magnitude's 99.5th percentile -> 1) and back
    scale = prior_range_scale(x0 if x0.ndim == 4 else x0[:, :, 0])
    x_init, y_s = x0 / per_item(scale, x0), y / per_item(scale, y)

    def in_data_units(x_scaled: torch.Tensor) -> torch.Tensor:
        """``(B, 2, M, h, W)``: the image in the data's units, with the second map set's where there is one."""
        x = from_prior_range(x_scaled.detach(), scale)
        if support is not None:
            return x * support
        return x[:, :, None] if second is None else torch.stack([x, second], dim=2)

    if method == "tv" or warm_start == "tv":
        # slice by slice: in a batch every slice would iterate until the slowest converged, so a
        # slice's result would depend on the batch
        def slice_physics(i: int):
            if isinstance(physics, SingleCoilMRI):
                return physics
            return MultiCoilMRI(mask, physics.coil_maps[i:i + 1], **cg)

        # TV of each map set's image (the two spatial dims; a stack's sets are not neighbours)
        x_init = torch.cat([tv_reconstruction(y_s[i:i + 1], slice_physics(i), lam=TV_LAMBDA, x_init=x_init[i:i + 1],
                                              spatial_dims=2, support=None if support is None else support[i:i + 1])
                            for i in range(len(y_s))])
    if method == "tv":
        x = in_data_units(x_init)
        return {**out, "image": _rss_maps(x), "std": None, "complex": x}
    start = {"x_init": None if sigma_start is None else x_init, "sigma_start": sigma_start}
    if num_samples > 1:
        post = sampler.posterior(
            y_s, physics, num_samples=num_samples, generator=generator, **start,
            physics_for_batch=lambda p, n: p if isinstance(p, SingleCoilMRI)
            else MultiCoilMRI(mask, p.coil_maps.repeat(n, 1, 1, 1, 1), cg_iters=p.cg_iters, cg_lambda=p.cg_lambda))
        mags = torch.stack([_rss_maps(in_data_units(x)) for x in post.samples])   # (N, B, h, W)
        x = in_data_units(post.mean)
        return {**out, "image": _rss_maps(x), "std": mags.std(0), "complex": x}
    x = in_data_units(sampler(y_s, physics, generator=generator, **start))
    return {**out, "image": _rss_maps(x), "std": None, "complex": x}
