"""Tune deepinv's ``DPS`` guidance ``weight`` for an end-to-end task (cold start, its defaults otherwise).

On the tuning images of ``tests/test_end_to_end.py`` (seed 1000, 2 images, 64x64), with our shipped
prior as deepinv's denoiser; prints mean PSNR / SSIM per weight. The weights behind the
``--deepinv-weights`` of ``bench_end_to_end.py`` came from::

    python benchmarks/tune_deepinv_dps.py mri_1coil_4x_random 250 0.1,0.3,1,3,10,30,100,300
    python benchmarks/tune_deepinv_dps.py ct_60_views 250 0.01,0.03,0.1,0.3,1,3,10,30,100
    python benchmarks/tune_deepinv_dps.py mri_1coil_4x_random 1000 10,30
    python benchmarks/tune_deepinv_dps.py ct_60_views 1000 3,10
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import deepinv as dinv
import torch

from diffinverse.priors import load

TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_end_to_end.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("steps", type=int)
    ap.add_argument("weights", help="comma-separated guidance weights")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("e2e", TESTS)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    x, y, physics, prior_name = e2e.make_task(args.task, args.images, 64, 1000)
    prior = load(prior_name).eval().requires_grad_(False)
    for w in (float(v) for v in args.weights.split(",")):
        t = time.perf_counter()
        sampler = dinv.sampling.DPS(prior, num_steps=args.steps, weight=w, device="cpu", dtype=torch.float32,
                                    rng=torch.Generator().manual_seed(1))
        p, s = e2e.scores(x, sampler(y, physics, seed=1))
        print(f"{args.task} steps {args.steps} weight {w:g}  PSNR {p:.2f} SSIM {s:.4f}  {time.perf_counter() - t:.0f}s",
              flush=True)


if __name__ == "__main__":
    main()
