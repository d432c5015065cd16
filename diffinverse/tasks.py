"""The end-to-end problems that the tests and the benchmarks share.

A :class:`Task` is one inverse problem with everything needed to run and score it: the prior's
name, how the ground truth is drawn, the operator, the noise, the classical baseline, the frozen
settings of each sampler and the margins by which a sampler must beat the baseline
(``tests/test_end_to_end.py`` asserts them). :data:`TASKS` holds the thirteen tasks by name:

* MRI (``"mri-brain"``): held-out complex head slices (``BrainSlices("test")``), whole 256 x 256
  slices reduced to ``size`` by keeping the central k-space (a lower-resolution acquisition of
  the whole head), scaled into the prior's range (:func:`diffinverse.imaging.to_prior_range`);
  single-coil and 8 simulated birdcage coils, 4x and 8x, random and equispaced lines with
  fastMRI's centre fractions (:data:`CENTER_FRACTION`); k-space noise of std 0.01 on the sampled
  entries. Baseline: ``physics.A_dagger`` (zero-filled, SENSE-CG); the samplers start from it.
* CT, deblurring, inpainting, super-resolution (``"ct-ellipses"``): fresh synthetic CT slices in
  [0, 1] (``synthetic_ct_slices``, the prior's training generator, at seeds it never used).
  Parallel-beam CT with 60 and 30 views over 180 degrees (torch backend), Gaussian sinogram noise
  of 1 % of its maximum; Gaussian blur of std 2 px with reflect padding; a missing ``size/4``
  square box; bicubic 4x super-resolution; Gaussian noise of std 0.01 on the last three.
  Baseline: the better of TV (:func:`diffinverse.baselines.tv_reconstruction`, run to its
  tolerance) and ``physics.A_dagger`` (FBP for CT); TV is also the samplers' warm start.

How the settings were chosen: a small grid search per task on :data:`TUNING_SEED` images (4
images; ``benchmarks/samplers/tune_end_to_end.py``), then frozen; each margin is about half the
gain seen while tuning. Warm starts (Come-Closer-Diffuse-Faster) at ``sigma_start`` 0.03-0.5 make
both samplers good at 10-20 network evaluations. Step sizes are relative to ``||A||^2`` (DPS's
``zeta``, RED-Diff's data term, DDS's ``gamma``; :func:`diffinverse.samplers.base.operator_scale`),
so the settings of different operators are comparable; each sampler's defaults, one setting for
all tasks, are what a user gets without these. The record of every tuning run and retune is
``benchmarks/HISTORY.md``.

Adding a sampler: give it an entry in :data:`diffinverse.samplers.SAMPLERS`, then one entry per
task in ``settings`` below, under the same name. The class is found in that table; nothing here
names a sampler class.

Example:
    >>> task = TASKS["ct_60_views"]
    >>> p = task.problem()                            # test images: x, y, physics
    >>> x_init = task.warm_start(p.y, p.physics)      # TV here
    >>> x_hat, nfe = task.run("dps", frozen_prior(task.prior), p.y, p.physics, x_init)
    >>> psnr, ssim = scores(p.x, x_hat)

What the tasks do not claim: that the shipped priors (1.5M parameters) are good in absolute terms,
or that the settings are best at other sizes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from diffinverse.baselines import tv_reconstruction
from diffinverse.datasets.brain import BrainSlices
from diffinverse.datasets.ct_slices import synthetic_ct_slices
from diffinverse.imaging import magnitude, to_prior_range
from diffinverse.metrics import psnr, ssim
from diffinverse.operators.blur import Blur, gaussian_kernel
from diffinverse.operators.coils import simulate_coil_maps
from diffinverse.operators.ct import CT
from diffinverse.operators.inpainting import Inpainting, box_mask
from diffinverse.operators.masks import equispaced_lines, random_lines
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI, fft2c, ifft2c, to_channels, to_complex
from diffinverse.operators.superres import SuperResolution
from diffinverse.priors.checkpoints import load
from diffinverse.samplers import SAMPLERS, DiffusionSampler, sampler_spec

__all__ = ["SIZE", "N_IMAGES", "TEST_SEED", "TUNING_SEED", "SAMPLER_SEED", "CENTER_FRACTION",
           "Task", "Problem", "TASKS", "get_task", "frozen_prior", "frozen_priors", "image_scores", "scores",
           "brain_images", "ct_images"]

SIZE = 64
"""Image side in pixels of the tasks as tested."""
N_IMAGES = 8
"""Images per task in the test."""
TEST_SEED = 0
"""Seed of the test's images, masks and noise."""
TUNING_SEED = 1000
"""Seed of the images the settings were tuned on (never the test's or the benchmarks')."""
SAMPLER_SEED = 1
"""Seed of the samplers' generator in the test and the benchmarks."""

CENTER_FRACTION = {4: 0.08, 8: 0.04}
"""Fully sampled centre lines per acceleration (fastMRI's)."""


# -- ground truth ---------------------------------------------------------------------------------

def brain_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 2, size, size)`` held-out complex head slices, whole field of view, prior's range.

    The central ``size x size`` of the orthonormal k-space of 256 x 256 slices: the same head at a
    lower resolution (amplitude times ``size / 256``), then scaled so that each magnitude's 99.5th
    percentile is 1.
    """
    x = BrainSlices("test", generator=generator).sample(n)
    k = fft2c(to_complex(x))
    c = (x.shape[-1] - size) // 2
    z = ifft2c(k[..., c:c + size, c:c + size]) * (size / x.shape[-1])
    return to_prior_range(to_channels(z))[0].contiguous()


def ct_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, size, size)`` synthetic CT slices in [0, 1] (the ``ct-ellipses`` prior's generator)."""
    return synthetic_ct_slices(n, size, generator=generator)


# -- operators --------------------------------------------------------------------------------------

def _mri(size: int, generator: torch.Generator, *, coils: int, acceleration: int,
         lines: Callable[..., torch.Tensor]) -> LinearPhysics:
    shape = (size, size)
    mask = lines(shape, acceleration, CENTER_FRACTION[acceleration], generator=generator)
    return SingleCoilMRI(mask) if coils == 1 else MultiCoilMRI(mask, simulate_coil_maps(coils, shape))


def _ct(size: int, generator: torch.Generator, *, views: int) -> LinearPhysics:
    return CT(size, torch.arange(views) * math.pi / views, backend="torch")


def _deblur(size: int, generator: torch.Generator) -> LinearPhysics:
    return Blur(gaussian_kernel(2.0), padding="reflect")


def _inpaint_box(size: int, generator: torch.Generator) -> LinearPhysics:
    q = size // 4
    return Inpainting(box_mask((size, size), (q + q // 2, q + q // 2, q, q)))


def _superres(size: int, generator: torch.Generator) -> LinearPhysics:
    return SuperResolution(4)


# -- noise: y from x ----------------------------------------------------------------------------------

def _kspace_noise(x, physics, noise, generator):
    """White noise of std ``noise`` on the sampled k-space entries only."""
    y = physics.A(x)
    return y + noise * torch.randn(y.shape, generator=generator) * physics.mask


def _sinogram_noise(x, physics, noise, generator):
    """White noise of std ``noise`` times the sinogram's largest magnitude."""
    y = physics.A(x)
    return y + noise * y.abs().amax() * torch.randn(y.shape, generator=generator)


def _image_noise(x, physics, noise, generator):
    """White noise of std ``noise`` on the image, then the operator (missing pixels stay 0)."""
    return physics.A(x + noise * torch.randn(x.shape, generator=generator))


def _white_noise(x, physics, noise, generator):
    """White noise of std ``noise`` on the measurements."""
    y = physics.A(x)
    return y + noise * torch.randn(y.shape, generator=generator)


# -- tasks ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One drawn instance of a task: ground truth ``x``, noisy measurements ``y``, the operator."""

    task: Task
    x: torch.Tensor
    y: torch.Tensor
    physics: LinearPhysics


@dataclass(frozen=True)
class Task:
    """One end-to-end problem with its frozen settings.

    Attributes:
        name: the key in :data:`TASKS` (``"mri_8coil_4x_random"``).
        prior: the shipped prior's name (:func:`diffinverse.priors.load`).
        images: ``(n, size, generator) -> x``, the ground truth ``(n, C, size, size)`` in the
            prior's range.
        physics: ``(size, generator) -> physics``, the operator (a random mask draws from the
            generator).
        measure: ``(x, physics, noise, generator) -> y``, the noisy measurements.
        noise: the noise level that ``measure`` applies (see each measure's meaning).
        baseline: what the samplers must beat: ``"adjoint"`` (``physics.A_dagger``: zero-filled,
            SENSE-CG) or ``"tv"`` (the better of TV and ``A_dagger``).
        init: the samplers' warm start, ``"adjoint"`` or ``"tv"``.
        tv_lam: TV's weight. For the MRI tasks it only gives the benchmarks a TV reference row
            (best PSNR over 1e-4 ... 0.1 on 8 tuning images); it is not asserted there.
        adjoint_name: what ``physics.A_dagger`` is for this operator (for tables).
        settings: per sampler name of :data:`diffinverse.samplers.SAMPLERS`, the keyword
            arguments of its constructor and ``sigma_start`` of its call. Read-only.
        margin: ``(PSNR dB, SSIM)`` by which every sampler's mean must exceed the best baseline's.
    """

    name: str
    prior: str
    images: Callable[[int, int, torch.Generator], torch.Tensor]
    physics: Callable[[int, torch.Generator], LinearPhysics]
    measure: Callable[[torch.Tensor, LinearPhysics, float, torch.Generator], torch.Tensor]
    noise: float
    baseline: str
    init: str
    tv_lam: float
    adjoint_name: str
    settings: Mapping[str, Mapping[str, Any]]
    margin: tuple[float, float]

    def __post_init__(self):
        for kind in ("baseline", "init"):
            if getattr(self, kind) not in ("adjoint", "tv"):
                raise ValueError(f"task {self.name!r}: {kind} must be 'adjoint' or 'tv', got {getattr(self, kind)!r}")
        for method, kw in self.settings.items():
            sampler_spec(method)  # a known sampler, or a ValueError naming the known ones
            if "sigma_start" not in kw:
                raise ValueError(f"task {self.name!r}: settings of {method!r} lack 'sigma_start'")
        object.__setattr__(self, "settings", MappingProxyType(
            {method: MappingProxyType(dict(kw)) for method, kw in self.settings.items()}))

    def problem(self, n: int = N_IMAGES, size: int = SIZE, seed: int = TEST_SEED, *,
                x: torch.Tensor | None = None) -> Problem:
        """Draw ``n`` images of ``size`` pixels, the operator and the noisy measurements.

        The images come from ``torch.Generator().manual_seed(seed)``; the mask and the noise from
        one seeded ``seed + 7``. ``x`` replaces the drawn ground truth (``(n, C, size, size)`` in
        the prior's range, e.g. real images); the operator and the noise are drawn as without it.
        """
        g = torch.Generator().manual_seed(seed + 7)
        if x is None:
            x = self.images(n, size, torch.Generator().manual_seed(seed))
        physics = self.physics(size, g)
        return Problem(self, x, self.measure(x, physics, self.noise, g), physics)

    def tv(self, y: torch.Tensor, physics: LinearPhysics) -> torch.Tensor:
        """The TV baseline ``argmin ||A x - y||^2 / 2 + tv_lam TV(x)``, run to its default tolerance."""
        return tv_reconstruction(y, physics, lam=self.tv_lam)

    def warm_start(self, y: torch.Tensor, physics: LinearPhysics) -> torch.Tensor:
        """The image the samplers start from: :meth:`tv` if ``init == "tv"``, else ``A_dagger(y)``."""
        return self.tv(y, physics) if self.init == "tv" else physics.A_dagger(y)

    def sampler(self, method: str, prior, **overrides) -> tuple[DiffusionSampler, float]:
        """The sampler ``method`` with this task's settings (``overrides`` replace some), and the
        ``sigma_start`` to call it with. ``KeyError`` if the task has no settings for it."""
        if method not in self.settings:
            raise KeyError(f"task {self.name!r} has no settings for sampler {method!r}; "
                           f"it has: {', '.join(self.settings)}")
        kw = {**self.settings[method], **overrides}
        sigma_start = kw.pop("sigma_start")
        return SAMPLERS[method].cls(prior, progress=False, **kw), sigma_start

    def run(self, method: str, prior, y: torch.Tensor, physics: LinearPhysics, x_init: torch.Tensor, *,
            seed: int = SAMPLER_SEED, **overrides) -> tuple[torch.Tensor, int]:
        """One posterior sample of ``method`` from the warm start ``x_init`` with this task's settings.

        Returns:
            ``(x_hat, nfe)``: the sample, shaped like ``x``, and the network evaluations it took.
        """
        sampler, sigma_start = self.sampler(method, prior, **overrides)
        out = sampler(y, physics, generator=torch.Generator().manual_seed(seed), x_init=x_init,
                      sigma_start=sigma_start)
        return out, sampler.last_nfe


def get_task(name: str) -> Task:
    """The task ``name`` of :data:`TASKS`; ``ValueError`` naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def _mri_task(coils: int, acceleration: int, lines: str, *, tv_lam: float, settings, margin) -> Task:
    return Task(
        name=f"mri_{coils}coil_{acceleration}x_{lines}", prior="mri-brain", images=brain_images,
        physics=partial(_mri, coils=coils, acceleration=acceleration,
                        lines=random_lines if lines == "random" else equispaced_lines),
        measure=_kspace_noise, noise=0.01, baseline="adjoint", init="adjoint", tv_lam=tv_lam,
        adjoint_name="zero-filled" if coils == 1 else "SENSE-CG", settings=settings, margin=margin)


def _image_task(name: str, physics, measure, adjoint_name: str, *, tv_lam: float, settings, margin) -> Task:
    return Task(name=name, prior="ct-ellipses", images=ct_images, physics=physics, measure=measure, noise=0.01,
                baseline="tv", init="tv", tv_lam=tv_lam, adjoint_name=adjoint_name, settings=settings,
                margin=margin)


_DPS_MRI = dict(num_steps=40, zeta=0.5, squared_norm=True, sigma_start=0.3)

TASKS: dict[str, Task] = {t.name: t for t in (
    _mri_task(1, 4, "random", tv_lam=0.01, margin=(0.4, 0.03), settings=dict(
        dps=_DPS_MRI,
        reddiff=dict(num_steps=60, lam=0.25, lr=0.05, sigma_start=0.5),
        dds=dict(num_steps=40, gamma=30.0, eta=1.0, sigma_start=0.5))),
    _mri_task(1, 8, "equispaced", tv_lam=0.01, margin=(0.3, 0.02), settings=dict(
        dps=_DPS_MRI,
        reddiff=dict(num_steps=40, lam=0.25, lr=0.02, sigma_start=0.3),
        dds=dict(num_steps=40, gamma=30.0, eta=1.0, sigma_start=0.5))),
    _mri_task(8, 4, "random", tv_lam=0.001, margin=(0.3, 0.03), settings=dict(
        dps=_DPS_MRI,
        reddiff=dict(num_steps=40, lam=0.08, lr=0.02, sigma_start=0.3),
        dds=dict(num_steps=40, gamma=10.0, eta=1.0, sigma_start=0.3))),
    _mri_task(8, 8, "equispaced", tv_lam=0.001, margin=(0.3, 0.02), settings=dict(
        dps=_DPS_MRI,
        reddiff=dict(num_steps=40, lam=0.08, lr=0.02, sigma_start=0.3),
        dds=dict(num_steps=40, gamma=30.0, eta=1.0, sigma_start=0.3))),
    _mri_task(1, 8, "random", tv_lam=0.0003, margin=(0.2, 0.03), settings=dict(
        dps=dict(num_steps=20, zeta=0.5, squared_norm=True, sigma_start=0.5),
        reddiff=dict(num_steps=60, lam=0.25, lr=0.02, sigma_start=0.5),
        dds=dict(num_steps=40, gamma=30.0, eta=1.0, sigma_start=0.5))),
    _mri_task(1, 4, "equispaced", tv_lam=0.01, margin=(0.3, 0.02), settings=dict(
        dps=_DPS_MRI,
        reddiff=dict(num_steps=60, lam=0.25, lr=0.05, sigma_start=0.5),
        dds=dict(num_steps=40, gamma=30.0, eta=1.0, sigma_start=0.5))),
    _mri_task(8, 8, "random", tv_lam=0.001, margin=(0.2, 0.03), settings=dict(
        dps=dict(num_steps=20, zeta=0.5, squared_norm=True, sigma_start=0.5),
        reddiff=dict(num_steps=60, lam=0.08, lr=0.02, sigma_start=0.5),
        dds=dict(num_steps=40, gamma=3.0, eta=1.0, sigma_start=0.3))),
    _mri_task(8, 4, "equispaced", tv_lam=0.001, margin=(0.3, 0.02), settings=dict(
        dps=_DPS_MRI,
        reddiff=dict(num_steps=100, lam=0.08, lr=0.02, sigma_start=0.15),
        dds=dict(num_steps=40, gamma=3.0, eta=1.0, sigma_start=0.3))),
    _image_task("ct_60_views", partial(_ct, views=60), _sinogram_noise, "FBP", tv_lam=1.0,
                margin=(0.4, 0.005), settings=dict(
        dps=dict(num_steps=60, zeta=1.0, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=60, lam=0.36, lr=0.003, sigma_start=0.03),
        dds=dict(num_steps=60, gamma=3.7, eta=1.0, sigma_start=0.05))),
    _image_task("ct_30_views", partial(_ct, views=30), _sinogram_noise, "FBP", tv_lam=1.0,
                margin=(0.3, 0.005), settings=dict(
        dps=dict(num_steps=60, zeta=1.0, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=60, lam=1.1, lr=0.002, sigma_start=0.03),
        dds=dict(num_steps=60, gamma=5.6, eta=1.0, sigma_start=0.05))),
    _image_task("deblur_gaussian", _deblur, _white_noise, "Tikhonov", tv_lam=0.001,
                margin=(0.05, 0.005), settings=dict(
        dps=dict(num_steps=60, zeta=0.5, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=60, lam=1.0, lr=0.003, sigma_start=0.05),
        dds=dict(num_steps=60, gamma=1.0, eta=1.0, sigma_start=0.05))),
    _image_task("inpaint_box", _inpaint_box, _image_noise, "zero-filled", tv_lam=0.01,
                margin=(0.02, 0.001), settings=dict(
        dps=dict(num_steps=60, zeta=0.1, squared_norm=True, sigma_start=0.05),
        reddiff=dict(num_steps=200, lam=3.0, lr=0.01, sigma_start=0.2))),
    _image_task("superres_4x", _superres, _white_noise, "pseudo-inverse", tv_lam=0.001,
                margin=(0.2, 0.01), settings=dict(
        dps=dict(num_steps=60, zeta=0.17, squared_norm=True, sigma_start=0.25),
        reddiff=dict(num_steps=120, lam=3.7, lr=0.002, sigma_start=0.05),
        dds=dict(num_steps=60, gamma=0.067, eta=1.0, sigma_start=0.05))),
)}
"""The thirteen end-to-end tasks by name, in the order the benchmarks' tables list them."""


# -- priors and scores ------------------------------------------------------------------------------------

def frozen_prior(name: str):
    """The shipped prior ``name`` in eval mode with its parameters' gradients off (the samplers
    then differentiate with respect to the image only)."""
    prior = load(name).eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior


def frozen_priors(tasks=None) -> dict[str, Any]:
    """:func:`frozen_prior` of every prior that ``tasks`` (default: all of :data:`TASKS`) use, by name."""
    names = dict.fromkeys(t.prior for t in (TASKS.values() if tasks is None else tasks))
    return {name: frozen_prior(name) for name in names}


def image_scores(gt: torch.Tensor, pred: torch.Tensor) -> list[tuple[float, float]]:
    """``[(PSNR, SSIM)]`` per image of a batch, each image its own volume, on magnitudes
    (fastMRI conventions, :mod:`diffinverse.metrics`)."""
    g, p = magnitude(gt), magnitude(pred)
    return [(psnr(reference=g[i], estimate=p[i]), ssim(reference=g[i], estimate=p[i])) for i in range(len(g))]


def scores(gt: torch.Tensor, pred: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and mean SSIM over the images of a batch (:func:`image_scores`)."""
    per_image = image_scores(gt, pred)
    ps = [p for p, _ in per_image]
    ss = [s for _, s in per_image]
    return sum(ps) / len(ps), sum(ss) / len(ss)
