"""How well the samplers' posterior spread predicts their error on the end-to-end tasks (not a test).

For each task of :data:`diffinverse.tasks.TASKS` given, draws ``--samples`` posterior samples per
image with ``posterior()`` (the task's frozen settings and warm start, ``--images`` held-out images
of seed 2000) and reports, over all pixels (magnitude images for MRI):

* PSNR / SSIM of one sample and of the posterior mean;
* coverage: the fraction of pixels whose true value lies within the mean +- 1.96 std of the
  samples (0.95 for a calibrated Gaussian posterior; smaller means overconfident);
* the Spearman rank correlation between the per-pixel std and the absolute error of the mean
  (does the spread point at the errors?).

Usage:
    python benchmarks/samplers/posterior_calibration.py --tasks mri_8coil_4x_random ct_60_views --samples 16
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.stats
import torch
from bench_end_to_end import LABEL

from diffinverse.imaging import magnitude
from diffinverse.tasks import SAMPLER_SEED, SIZE, TASKS, frozen_priors, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    priors = frozen_priors()
    for task in args.tasks:
        spec = TASKS[task]
        problem = spec.problem(args.images, SIZE, args.seed)
        x, y, physics = problem.x, problem.y, problem.physics
        x_init = spec.warm_start(y, physics)
        truth = magnitude(x)
        for method in spec.settings:
            name = LABEL.get(method, method)
            sampler, sigma_start = spec.sampler(method, priors[spec.prior])
            post = sampler.posterior(
                y, physics, num_samples=args.samples, generator=torch.Generator().manual_seed(SAMPLER_SEED),
                x_init=x_init, sigma_start=sigma_start)
            samples = torch.stack([magnitude(s) for s in post.samples])
            mean, std = samples.mean(0), samples.std(0)
            err = (truth - mean).abs()
            coverage = (err <= 1.96 * std).float().mean().item()
            rho = scipy.stats.spearmanr(std.flatten().numpy(), err.flatten().numpy()).statistic
            one, avg = scores(x, post.samples[0]), scores(x, post.mean)
            print(f"{task:24s} {name:8s} one sample {one[0]:.2f} / {one[1]:.3f}  mean {avg[0]:.2f} / {avg[1]:.3f}  "
                  f"coverage(1.96 std) {coverage:.3f}  spearman(std, |err|) {rho:.2f}  "
                  f"median std {np.median(std.numpy()):.4f} median |err| {np.median(err.numpy()):.4f}", flush=True)


if __name__ == "__main__":
    main()
