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
    python benchmarks/samplers/real_end_to_end.py [--size 64] [--seed 2000] [--tasks ct_60_views ...] \
        [--images pydicom-data_693_UNCR_head_ct] [--prior ct-ellipses=PATH.safetensors]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_end_to_end import LABEL

from diffinverse.baselines import tv_reconstruction
from diffinverse.imaging import to_prior_range
from diffinverse.operators.mri import fft2c, ifft2c, to_channels
from diffinverse.tasks import SAMPLER_SEED, TASKS, TUNING_SEED, frozen_prior, frozen_priors, image_scores

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


def tv_grid_rows(spec, lams: list[float], size: int, x, y, physics) -> dict[str, np.ndarray]:
    """TV at each weight of ``lams``: ``"TV tuned (lam L)"``, the weight with the best mean PSNR on
    synthetic tuning images of the task at ``size``, and ``"TV oracle (lam L)"``, the best on the
    real images ``x`` themselves (an upper bound, not a setting)."""
    tuning = spec.problem(4, size, TUNING_SEED)
    tuned = max(lams, key=lambda lam: per_image_scores(
        tuning.x, tv_reconstruction(tuning.y, tuning.physics, lam=lam))[:, 0].mean())
    real = {lam: per_image_scores(x, tv_reconstruction(y, physics, lam=lam)) for lam in lams}
    oracle = max(lams, key=lambda lam: real[lam][:, 0].mean())
    return {f"TV tuned (lam {tuned:g})": real[tuned], f"TV oracle (lam {oracle:g})": real[oracle]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=2000, help="seed of the masks and the measurement noise")
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prior", action="append", default=[], metavar="NAME=PRIOR",
                    help="run the tasks of shipped prior NAME with PRIOR (a shipped name or .safetensors) instead")
    ap.add_argument("--images", nargs="+", default=None,
                    help="only these real images (names as printed by --list-images), e.g. the head CT")
    ap.add_argument("--list-images", action="store_true")
    ap.add_argument("--samplers", nargs="*", default=None, help="only these of each task's samplers (none: baselines)")
    ap.add_argument("--tv-lam", type=float, default=None,
                    help="TV weight of the TV baseline and warm start (default: each task's, chosen at 64 x 64)")
    ap.add_argument("--settings", type=json.loads, default={},
                    help='JSON {sampler: {option: value}} replacing some of the tasks\' frozen settings')
    ap.add_argument("--tv-grid", nargs="+", type=float, default=None, metavar="LAM",
                    help="also run TV at each weight: the weight best on 4 synthetic tuning images "
                         "(tasks.TUNING_SEED, at --size) as 'TV tuned', and every weight on the real images "
                         "as an oracle upper bound 'TV oracle' (chosen on the evaluation images themselves)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = {name: TASKS[name] for name in (args.tasks or TASKS)}
    priors = frozen_priors(tasks.values())
    for override in args.prior:
        name, _, path = override.partition("=")
        if name not in priors or not path:
            raise SystemExit(f"--prior must be NAME=PRIOR with NAME one of {sorted(priors)}, got {override!r}")
        priors[name] = frozen_prior(path)
    images = {"mri-brain": real_mri_images(args.size), "ct-ellipses": real_ct_images(args.size)}
    if args.list_images:
        print({kind: list(found) for kind, found in images.items()})
        return
    if args.images:
        images = {kind: {k: v for k, v in found.items() if k in args.images} for kind, found in images.items()}
    if args.tv_lam is not None:
        tasks = {name: dataclasses.replace(spec, tv_lam=args.tv_lam) for name, spec in tasks.items()}
    for task, spec in tasks.items():
        if not images[spec.prior]:
            continue
        x_real = torch.cat(list(images[spec.prior].values()))
        problem = spec.problem(len(x_real), args.size, args.seed, x=x_real)
        x, y, physics = problem.x, problem.y, problem.physics
        adjoint = physics.A_dagger(y)
        results = {"A_dagger": per_image_scores(x, adjoint)}
        # TV: the baseline, or (MRI) a reference outside "best"
        x_tv = spec.tv(y, physics)
        results["TV"] = per_image_scores(x, x_tv)
        if args.tv_grid:
            results.update(tv_grid_rows(spec, args.tv_grid, args.size, x, y, physics))
        x_init = x_tv if spec.init == "tv" else adjoint
        methods = [m for m in spec.settings if args.samplers is None or m in args.samplers]
        samplers = [LABEL.get(method, method) for method in methods]
        for method, name in zip(methods, samplers):
            out, _ = spec.run(method, priors[spec.prior], y, physics, x_init, seed=SAMPLER_SEED,
                              **args.settings.get(method, {}))
            results[name] = per_image_scores(x, out)
        best = np.maximum.reduce([results["A_dagger"], *([results["TV"]] if spec.baseline == "tv" else [])])
        cells = [f"{k} {v[:, 0].mean():.2f} / {v[:, 1].mean():.3f}" for k, v in results.items()]
        wins = [f"{k} wins {int(((results[k] > best).all(1)).sum())}/{len(x)}" for k in samplers]
        print(f"{task:26s} " + " | ".join(cells + wins), flush=True)


if __name__ == "__main__":
    main()
