"""End to end with the shipped priors on held-out data: DPS and RED-Diff beat the classical baselines.

For every task of :data:`diffinverse.tasks.TASKS` and every sampler it has settings for, over
``N_IMAGES`` held-out images of ``SIZE`` x ``SIZE`` pixels (seed ``TEST_SEED``), the mean PSNR and
the mean SSIM of the sampler must each exceed those of the task's classical baseline by the task's
margins (fastMRI conventions from :mod:`diffinverse.metrics`; complex MRI images are compared as
magnitudes). Baselines: zero-filled (single-coil MRI) and SENSE-CG (multi-coil MRI); for CT both
FBP and TV (the samplers must beat the better of the two, which is TV here); TV for deblurring,
box inpainting and 4x super-resolution.

The tasks, their data, noise and frozen settings, and how the settings were chosen (on other
images, seed ``TUNING_SEED``) are in :mod:`diffinverse.tasks`; the tuning record is
``benchmarks/HISTORY.md``.
"""
from __future__ import annotations

import pytest
import torch

from diffinverse.tasks import N_IMAGES, SIZE, TASKS, TEST_SEED, frozen_priors, scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def priors():
    return frozen_priors()


CASES = [(task, method) for task in TASKS for method in TASKS[task].settings]


@pytest.mark.parametrize(("task", "method"), CASES)
def test_sampler_beats_classical_baseline(task, method, priors):
    spec = TASKS[task]
    problem = spec.problem(N_IMAGES, SIZE, TEST_SEED)
    x, y, physics = problem.x, problem.y, problem.physics
    prior = priors[spec.prior]
    adjoint = physics.A_dagger(y)  # zero-filled / SENSE-CG / FBP
    results = {"A_dagger": scores(x, adjoint)}
    x_tv = None
    if spec.baseline == "tv":
        x_tv = spec.tv(y, physics)
        results["tv"] = scores(x, x_tv)
    x_init = x_tv if spec.init == "tv" else adjoint

    out, _ = spec.run(method, prior, y, physics, x_init)
    assert out.shape == x.shape and torch.isfinite(out).all()
    results[method] = scores(x, out)

    best_psnr = max(results[b][0] for b in ("A_dagger", "tv") if b in results)
    best_ssim = max(results[b][1] for b in ("A_dagger", "tv") if b in results)
    dp, ds = spec.margin
    summary = ", ".join(f"{k}: {p:.2f} dB / {s:.4f}" for k, (p, s) in results.items())
    p, s = results[method]
    assert p >= best_psnr + dp, f"{task}: {method} PSNR {p:.2f} < best baseline {best_psnr:.2f} + {dp} ({summary})"
    assert s >= best_ssim + ds, f"{task}: {method} SSIM {s:.4f} < best baseline {best_ssim:.4f} + {ds} ({summary})"
