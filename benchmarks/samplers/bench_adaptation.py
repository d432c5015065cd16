"""Test-time adaptation of the prior (``adapt=Adaptation(...)``): quality, passes and wall time (not a test).

For each task of :mod:`diffinverse.tasks` and each sampler, runs the task's frozen settings once
without adaptation and once per point of an adaptation grid, on the same measurements, warm start
and sampler seed, and prints one JSON row per run: mean PSNR / SSIM over the images, the sampler's
network evaluations (``nfe``), the network forward and backward passes adaptation added, wall
time, and the ratio of that wall time to the unadapted run's (measured in the same process, one
after the other).

Images: the tasks' own (held-out MNI152 slab; ``--seed 1000`` are the tuning images), or, with
``--real N``, ``N`` held-out real head slices (``RealImages(split="heldout")`` of a folder of
``../shared/data/train``: images no prior was trained on), reduced to ``--size`` by keeping the
central k-space, magnitude with zero phase, in the prior's range; the task draws the mask and the
noise as usual.

Usage (the runs of ``benchmarks/samplers/adaptation_results.md``)::

    OMP_NUM_THREADS=1 python benchmarks/samplers/bench_adaptation.py --tasks mri_8coil_4x_random \\
        --methods dds reddiff --grid '{"lr": [1e-4, 1e-3], "every": [1, 2]}' --seed 1000
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from diffinverse._io import atomic_output
from diffinverse.imaging import to_prior_range
from diffinverse.operators.mri import fft2c, ifft2c, to_channels
from diffinverse.samplers.adaptation import Adaptation
from diffinverse.tasks import (
    SAMPLER_SEED,
    SIZE,
    TASKS,
    TUNING_SEED,
    frozen_prior,
    scores,
)


def real_heldout(n: int, size: int, folder: Path) -> torch.Tensor:
    """``(n, 2, size, size)`` held-out real slices: centre square, central k-space, prior's range."""
    from diffinverse.datasets.real_images import RealImages

    images = RealImages(folder, split="heldout")
    step = max(1, len(images) // n)
    out = []
    for i in range(0, step * n, step):
        x = images[i][0]   # magnitude (H, W)
        s = min(x.shape[-2:])
        top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
        z = x[..., top:top + s, left:left + s].to(torch.complex64)
        k = fft2c(z)
        c = (s - size) // 2
        out.append(ifft2c(k[..., c:c + size, c:c + size]) * (size / s))
    return to_prior_range(to_channels(torch.stack(out)))[0].contiguous()


def run(task, method: str, prior, y, physics, x_init, adapt: Adaptation | None) -> tuple[torch.Tensor, dict]:
    sampler, sigma_start = task.sampler(method, prior, adapt=adapt)
    t = time.perf_counter()
    out = sampler(y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED), x_init=x_init,
                  sigma_start=sigma_start)
    seconds = time.perf_counter() - t
    rec = sampler.last_adaptation
    return out, {"nfe": sampler.last_nfe, "adapt_forward": rec.forward_passes if rec else 0,
                 "adapt_backward": rec.backward_passes if rec else 0,
                 "adapted_steps": len(rec.adapted_steps) if rec else 0,
                 "loss_first_last": [rec.losses[0][0], rec.losses[-1][-1]] if rec and rec.losses else None,
                 "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["mri_8coil_4x_random"])
    ap.add_argument("--methods", nargs="+", default=["dds", "reddiff"])
    ap.add_argument("--grid", default='{"lr": [1e-4]}', help="JSON object: Adaptation field -> list of values")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--seed", type=int, default=TUNING_SEED, help="images, mask and noise (1000: tuning)")
    ap.add_argument("--real", type=Path, default=None, help="a folder of real images: use its held-out split")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grid = json.loads(args.grid)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        x = real_heldout(args.images, args.size, args.real) if args.real is not None else None
        problem = task.problem(args.images, args.size, args.seed, x=x)
        prior = frozen_prior(task.prior)
        x_init = task.warm_start(problem.y, problem.physics)
        for method in args.methods:
            base_seconds = None
            for point in [None, *points]:
                adapt = None if point is None else Adaptation(**point)
                out, info = run(task, method, prior, problem.y, problem.physics, x_init, adapt)
                base_seconds = info["seconds"] if point is None else base_seconds
                p, s = scores(problem.x, out)
                rows.append({"task": name, "images": "real" if args.real else f"seed {args.seed}",
                             "method": method, "adapt": point, "psnr": round(p, 3), "ssim": round(s, 4), **info,
                             "time_ratio": round(info["seconds"] / base_seconds, 2)})
                print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        with atomic_output(args.out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
