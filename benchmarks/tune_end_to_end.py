"""Grid search of a sampler's hyper-parameters for one end-to-end task, on the tuning images.

Uses the tasks of ``tests/test_end_to_end.py`` on the tuning seed 1000 (4 images, 64x64; the test
uses seed 0, the benchmark seed 2000), warm-started as the task's ``init`` says (TV or zero-filled
/ SENSE-CG; a grid may set ``"init"`` too), and prints mean PSNR / SSIM per grid point next to
that start's. The grid is a JSON object of lists; each point overrides the task's frozen settings.

Usage (the grids that set the current super-resolution and RED-Diff inpainting values)::

    python benchmarks/tune_end_to_end.py superres_4x dps '{"zeta": [1, 2.5, 5], "sigma_start": [0.15, 0.25, 0.4]}'
    python benchmarks/tune_end_to_end.py superres_4x reddiff '{"lam": [2, 4, 8], "lr": [0.003, 0.006], "sigma_start": [0.2, 0.4], "num_steps": [60, 120]}'
    python benchmarks/tune_end_to_end.py inpaint_box reddiff '{"lam": [2, 3, 5], "lr": [0.01, 0.02], "sigma_start": [0.1, 0.2], "num_steps": [120, 200]}'
    python benchmarks/tune_end_to_end.py mri_8coil_4x_random dps '{"init": ["tv"], "sigma_start": [0.2, 0.3], "zeta": [0.5, 1]}'
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
from bench_end_to_end import load_test_module, run_sampler, warm_start

from diffinverse.priors import load
from diffinverse.samplers import DPS, REDDiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("method", choices=["dps", "reddiff"])
    ap.add_argument("grid", help="JSON object: parameter -> list of values")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    e2e = load_test_module()
    cfg = e2e.CONFIG[args.task]
    x, y, physics, prior_name = e2e.make_task(args.task, args.images, 64, 1000)
    prior = load(prior_name).eval().requires_grad_(False)
    grid = json.loads(args.grid)
    starts = {}
    for values in itertools.product(*grid.values()):
        kw = dict(cfg[args.method], **dict(zip(grid, values)))
        init = kw.get("init", cfg["init"])  # the grid may set "init" too
        if init not in starts:
            starts[init] = warm_start(e2e, dict(cfg, init=init), y, physics)
            print("{}  PSNR {:.2f} SSIM {:.4f}".format(starts[init][1], *e2e.scores(x, starts[init][0])), flush=True)
        x_init = starts[init][0]
        t = time.perf_counter()
        out, _ = run_sampler(DPS if args.method == "dps" else REDDiff, prior, kw, y, physics, x_init, 1)
        p, s = e2e.scores(x, out)
        print(f"{dict(zip(grid, values))}  PSNR {p:.2f} SSIM {s:.4f}  {time.perf_counter() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()
