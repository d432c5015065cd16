"""Tune deepinv's ``DPS`` guidance ``weight`` for an end-to-end task (cold start, its defaults otherwise).

On the tuning images of :mod:`diffinverse.tasks` (seed 1000, 2 images, 64x64), with our shipped
prior as deepinv's denoiser; prints mean PSNR / SSIM per weight. The weights behind the
``--deepinv-weights`` of ``bench_end_to_end.py`` came from::

    python benchmarks/samplers/tune_deepinv_dps.py mri_1coil_4x_random 250 0.1,0.3,1,3,10,30,100,300
    python benchmarks/samplers/tune_deepinv_dps.py ct_60_views 250 0.01,0.03,0.1,0.3,1,3,10,30,100
    python benchmarks/samplers/tune_deepinv_dps.py mri_1coil_4x_random 1000 10,30
    python benchmarks/samplers/tune_deepinv_dps.py ct_60_views 1000 3,10
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_end_to_end import deepinv_dps

from diffinverse.tasks import SAMPLER_SEED, SIZE, TASKS, TUNING_SEED, frozen_prior, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("steps", type=int)
    ap.add_argument("weights", help="comma-separated guidance weights")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    problem = task.problem(args.images, SIZE, TUNING_SEED)
    x, y, physics = problem.x, problem.y, problem.physics
    prior = frozen_prior(task.prior)
    for w in (float(v) for v in args.weights.split(",")):
        t = time.perf_counter()
        p, s = scores(x, deepinv_dps(prior, args.steps, y, physics, SAMPLER_SEED, w))
        print(f"{args.task} steps {args.steps} weight {w:g}  PSNR {p:.2f} SSIM {s:.4f}  {time.perf_counter() - t:.0f}s",
              flush=True)


if __name__ == "__main__":
    main()
