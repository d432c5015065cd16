"""How well the samplers' posterior spread predicts their error on the end-to-end tasks (not a test).

For each task of ``tests/test_end_to_end.py`` given, draws ``--samples`` posterior samples per
image with ``posterior()`` (the task's frozen settings and warm start, ``--images`` held-out images
of seed 2000) and reports, over all pixels (magnitude images for MRI):

* PSNR / SSIM of one sample and of the posterior mean;
* coverage: the fraction of pixels whose true value lies within the mean +- 1.96 std of the
  samples (0.95 for a calibrated Gaussian posterior; smaller means overconfident);
* the Spearman rank correlation between the per-pixel std and the absolute error of the mean
  (does the spread point at the errors?).

Usage:
    python benchmarks/posterior_calibration.py --tasks mri_8coil_4x_random ct_60_views --samples 16
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.stats
import torch
from bench_end_to_end import _priors, build_sampler, load_test_module, warm_start

from diffinverse.samplers import DPS, REDDiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    e2e = load_test_module()
    priors = _priors(e2e)
    for task in args.tasks:
        cfg = e2e.CONFIG[task]
        x, y, physics, prior_name = e2e.make_task(task, args.images, e2e.SIZE, args.seed)
        x_init, _ = warm_start(e2e, cfg, y, physics)
        truth = e2e.magnitude(x) if task.startswith("mri") else x
        for name, cls in (("DPS", DPS), ("RED-Diff", REDDiff)):
            sampler, sigma_start = build_sampler(cls, priors[prior_name], cfg[name.lower().replace("-", "")])
            post = sampler.posterior(
                y, physics, num_samples=args.samples, generator=torch.Generator().manual_seed(1),
                x_init=x_init, sigma_start=sigma_start)
            samples = torch.stack([e2e.magnitude(s) for s in post.samples]) if task.startswith("mri") \
                else post.samples
            mean, std = samples.mean(0), samples.std(0)
            err = (truth - mean).abs()
            coverage = (err <= 1.96 * std).float().mean().item()
            rho = scipy.stats.spearmanr(std.flatten().numpy(), err.flatten().numpy()).statistic
            one, avg = e2e.scores(x, post.samples[0]), e2e.scores(x, post.mean)
            print(f"{task:24s} {name:8s} one sample {one[0]:.2f} / {one[1]:.3f}  mean {avg[0]:.2f} / {avg[1]:.3f}  "
                  f"coverage(1.96 std) {coverage:.3f}  spearman(std, |err|) {rho:.2f}  "
                  f"median std {np.median(std.numpy()):.4f} median |err| {np.median(err.numpy()):.4f}", flush=True)


if __name__ == "__main__":
    main()
