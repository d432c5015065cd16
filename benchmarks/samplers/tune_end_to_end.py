"""Grid search of a sampler's hyper-parameters for one end-to-end task, on the tuning images.

Uses the tasks of :mod:`diffinverse.tasks` on the tuning seed 1000 (4 images, 64x64 or ``--size``; the test
uses seed 0, the benchmark seed 2000), warm-started as the task's ``init`` says (TV or zero-filled
/ SENSE-CG; a grid may set ``"init"`` too), and prints mean PSNR / SSIM per grid point next to
that start's. The grid is a JSON object of lists; each point overrides the task's frozen settings.

Usage (the grids that set the current super-resolution and RED-Diff inpainting values)::

    python benchmarks/samplers/tune_end_to_end.py superres_4x dps '{"zeta": [1, 2.5, 5], "sigma_start": [0.15, 0.25, 0.4]}'
    python benchmarks/samplers/tune_end_to_end.py superres_4x reddiff '{"lam": [2, 4, 8], "lr": [0.003, 0.006], "sigma_start": [0.2, 0.4], "num_steps": [60, 120]}'
    python benchmarks/samplers/tune_end_to_end.py inpaint_box reddiff '{"lam": [2, 3, 5], "lr": [0.01, 0.02], "sigma_start": [0.1, 0.2], "num_steps": [120, 200]}'
    python benchmarks/samplers/tune_end_to_end.py mri_8coil_4x_random dps '{"init": ["tv"], "sigma_start": [0.2, 0.3], "zeta": [0.5, 1]}'
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

import torch

from diffinverse.samplers import SAMPLERS
from diffinverse.tasks import SAMPLER_SEED, SIZE, TASKS, TUNING_SEED, frozen_prior, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("method", choices=list(SAMPLERS))
    ap.add_argument("grid", help="JSON object: parameter -> list of values")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=SIZE, help="image side of the tuning images")
    ap.add_argument("--tv-lam", type=float, default=None, help="TV weight of the TV warm start (default: the task's)")
    ap.add_argument("--prior", default=None, help="prior (shipped name or .safetensors; default: the task's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    if args.tv_lam is not None:
        task = dataclasses.replace(task, tv_lam=args.tv_lam)
    problem = task.problem(args.images, args.size, TUNING_SEED)
    x, y, physics = problem.x, problem.y, problem.physics
    prior = frozen_prior(args.prior or task.prior)
    grid = json.loads(args.grid)
    starts = {}
    for values in itertools.product(*grid.values()):
        kw = dict(zip(grid, values))
        init = kw.pop("init", task.init)  # the grid may set the warm start ("adjoint" or "tv") too
        if init not in starts:
            starts[init] = dataclasses.replace(task, init=init).warm_start(y, physics)
            print("{}  PSNR {:.2f} SSIM {:.4f}".format(init, *scores(x, starts[init])), flush=True)
        t = time.perf_counter()
        if args.method in task.settings:
            out, _ = task.run(args.method, prior, y, physics, starts[init], seed=SAMPLER_SEED, **kw)
        else:   # a sampler the task has no settings for yet: the grid gives them all (sigma_start too)
            kw = dict(kw)
            sigma_start = kw.pop("sigma_start")
            out = SAMPLERS[args.method].cls(prior, progress=False, **kw)(
                y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED), x_init=starts[init],
                sigma_start=sigma_start)
        p, s = scores(x, out)
        print(f"{dict(zip(grid, values))}  PSNR {p:.2f} SSIM {s:.4f}  {time.perf_counter() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()
