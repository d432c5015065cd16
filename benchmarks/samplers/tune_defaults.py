"""One setting per sampler for every operator: the samplers' defaults, scored on all tasks.

For every task of :data:`diffinverse.tasks.TASKS` (the task's images at ``--seed``, default the
tuning seed), each sampler of :data:`diffinverse.samplers.SAMPLERS` is built with its defaults
(``cls(prior)``: no per-task settings, default warm start) and, optionally, the overrides of a
grid, and scored against the operator's classical baseline (``physics.A_dagger``) and TV (the
task's weight, run to its tolerance). The defaults in ``diffinverse/samplers/{dps,reddiff,dds}.py``
were chosen with this script on the tuning images; ``tests/test_sampler_defaults.py`` checks them
on the test images.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/samplers/tune_defaults.py --samplers dps reddiff dds
    OMP_NUM_THREADS=1 python benchmarks/samplers/tune_defaults.py --samplers dps \
        --grid '{"zeta": [0.2, 0.5, 1.0], "sigma_start": [0.2, 0.3]}' --out grid_dps.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from diffinverse.samplers import SAMPLERS
from diffinverse.tasks import SAMPLER_SEED, TASKS, TUNING_SEED, frozen_priors, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--grid", default="{}", help="JSON: option -> list of values (constructor keywords)")
    ap.add_argument("--n", type=int, default=4, help="images per task")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=TUNING_SEED)
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    args = ap.parse_args()
    grid = json.loads(args.grid)
    configs = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    priors = frozen_priors()
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        p = task.problem(args.n, args.size, args.seed)
        base = {"A_dagger": scores(p.x, p.physics.A_dagger(p.y)), "tv": scores(p.x, task.tv(p.y, p.physics))}
        print(f"{name}: A_dagger {base['A_dagger'][0]:.2f} / {base['A_dagger'][1]:.4f}, "
              f"TV {base['tv'][0]:.2f} / {base['tv'][1]:.4f}", flush=True)
        for method in args.samplers:
            for config in configs:
                sampler = SAMPLERS[method].cls(priors[task.prior], progress=False, **config)
                t0 = time.perf_counter()
                try:
                    out = sampler(p.y, p.physics, generator=torch.Generator().manual_seed(SAMPLER_SEED))
                    psnr, ssim = scores(p.x, out)
                except FloatingPointError as e:
                    psnr, ssim = float("nan"), float("nan")
                    print(f"  {method} {config}: {e}")
                wall = time.perf_counter() - t0
                row = dict(task=name, method=method, config=config, psnr=psnr, ssim=ssim,
                           d_adagger=psnr - base["A_dagger"][0], d_tv=psnr - base["tv"][0],
                           ds_adagger=ssim - base["A_dagger"][1], ds_tv=ssim - base["tv"][1],
                           nfe=sampler.last_nfe, wall_s=wall, baselines=base)
                rows.append(row)
                print(f"  {method:8s} {json.dumps(config):40s} {psnr:6.2f} / {ssim:.4f}  "
                      f"vs A_dagger {row['d_adagger']:+6.2f} / {row['ds_adagger']:+.4f}  "
                      f"vs TV {row['d_tv']:+6.2f} / {row['ds_tv']:+.4f}  nfe {sampler.last_nfe} {wall:.1f} s",
                      flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
