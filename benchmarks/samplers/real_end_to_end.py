"""The end-to-end tasks on real images, with the settings frozen on synthetic ones (not a test).

``tests/test_end_to_end.py`` checks the samplers against the classical baselines on held-out
synthetic images (MNI152 slices for MRI, domain-randomised phantoms for the rest), where the
hyper-parameters were tuned. This script runs the same tasks, noise and frozen settings on real
images that no prior, setting or test has seen, from ``../shared/data/real`` (never shipped; read
by ``benchmarks/priors/eval_priors.py``):

* MRI tasks (``mri-brain`` prior): the root-sum-of-squares of the fully sampled 8-coil ESPIRiT
  brain and the four fastMRI-derived knee images of score-MRI (one complex, three magnitude),
  each centre-cropped to a square, reduced to ``--size`` by keeping the central k-space, and
  scaled so the magnitude's 99.5th percentile is 1 (the prior's scale). The knees are outside
  the prior's training domain (heads).
* CT, deblurring, inpainting and super-resolution (``ct-ellipses`` prior): the real head CT
  (512 x 512) and thoracic-spine CT (128 x 128) DICOM slices as attenuation in [0, 1]
  (``(HU + 1000) / max``), area-resized to ``--size``.

Prints mean PSNR / SSIM per task and method and how many images each sampler wins on (PSNR and
SSIM both above the best baseline's).

Usage:
    python benchmarks/samplers/real_end_to_end.py [--size 64] [--seed 2000] [--tasks ct_60_views ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_end_to_end import LABEL

from diffinverse.imaging import to_prior_range
from diffinverse.operators.mri import fft2c, ifft2c, to_channels
from diffinverse.tasks import SAMPLER_SEED, TASKS, frozen_priors, image_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "priors"))
import eval_priors  # noqa: E402  (benchmarks/priors: the real images of the priors' evaluation)


def _complex_to_prior_scale(z: torch.Tensor, size: int) -> torch.Tensor:
    """Complex ``(H, W)`` -> ``(1, 2, size, size)``: centre square, central k-space, 99.5th pct 1."""
    n = min(z.shape)
    top, left = (z.shape[0] - n) // 2, (z.shape[1] - n) // 2
    k = fft2c(z[top:top + n, left:left + n])
    c = (n - size) // 2
    return to_prior_range(to_channels(ifft2c(k[c:c + size, c:c + size])[None]))[0].contiguous()


def real_mri_images(size: int) -> dict[str, torch.Tensor]:
    """The real MR images of the priors' evaluation, at ``size`` by their central k-space."""
    return {name: _complex_to_prior_scale(torch.complex(x[0, 0], x[0, 1]), size)
            for name, x in eval_priors.real_mri_images().items()}


def real_ct_images(size: int) -> dict[str, torch.Tensor]:
    """The real CT slices of the priors' evaluation (attenuation in [0, 1]), area-resized to ``size``."""
    return {name: F.interpolate(x, size=(size, size), mode="area") for name, x in eval_priors.real_ct_images().items()}


def per_image_scores(x: torch.Tensor, est: torch.Tensor) -> np.ndarray:
    """``(n, 2)``: PSNR and SSIM of each image."""
    return np.array(image_scores(x, est))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=2000, help="seed of the masks and the measurement noise")
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    priors = frozen_priors()
    images = {"mri-brain": real_mri_images(args.size), "ct-ellipses": real_ct_images(args.size)}
    for task in args.tasks or TASKS:
        spec = TASKS[task]
        x_real = torch.cat(list(images[spec.prior].values()))
        problem = spec.problem(len(x_real), args.size, args.seed, x=x_real)
        x, y, physics = problem.x, problem.y, problem.physics
        adjoint = physics.A_dagger(y)
        results = {"A_dagger": per_image_scores(x, adjoint)}
        # TV: the baseline, or (MRI) a reference outside "best"
        x_tv = spec.tv(y, physics)
        results["TV"] = per_image_scores(x, x_tv)
        x_init = x_tv if spec.init == "tv" else adjoint
        samplers = [LABEL.get(method, method) for method in spec.settings]
        for method, name in zip(spec.settings, samplers):
            out, _ = spec.run(method, priors[spec.prior], y, physics, x_init, seed=SAMPLER_SEED)
            results[name] = per_image_scores(x, out)
        best = np.maximum.reduce([results["A_dagger"], *([results["TV"]] if spec.baseline == "tv" else [])])
        cells = [f"{k} {v[:, 0].mean():.2f} / {v[:, 1].mean():.3f}" for k, v in results.items()]
        wins = [f"{k} wins {int(((results[k] > best).all(1)).sum())}/{len(x)}" for k in samplers]
        print(f"{task:26s} " + " | ".join(cells + wins), flush=True)


if __name__ == "__main__":
    main()
