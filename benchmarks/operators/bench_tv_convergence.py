"""How many iterations ``tv_reconstruction`` takes to its tolerance, and how close that gets (not a test).

On each end-to-end task of :mod:`diffinverse.tasks` (its test images, seed 0, 8 images, 64x64),
runs TV with ``tol=0`` for 8000 iterations as the reference, then to each ``--tols`` (capped at
20000 iterations), and prints the iterations used, PSNR / SSIM and its difference from the
reference, and the worst relative objective gap. ``--equal-steps`` switches
off the step balancing (``tau = sigma`` throughout), as before 2026-11-27.

Usage:
    python benchmarks/operators/bench_tv_convergence.py [--tasks deblur_gaussian superres_4x] [--equal-steps]
"""
from __future__ import annotations

import argparse
import warnings

import torch

import diffinverse.baselines as baselines
from diffinverse.tasks import TASKS, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--tols", nargs="+", type=float, default=[1e-3, 3e-4, 1e-4, 3e-5, 1e-5])
    ap.add_argument("--equal-steps", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.equal_steps:
        baselines._ADAPT_START = 0.0
    for task in args.tasks or TASKS:
        lam = TASKS[task].tv_lam
        problem = TASKS[task].problem()
        x, y, physics = problem.x, problem.y, problem.physics
        ref = baselines.tv_reconstruction(y, physics, lam=lam, num_iters=8000, tol=0)
        ref_obj = baselines.tv_objective(ref, y, physics, lam)
        ref_psnr, ref_ssim = scores(x, ref)
        print(f"{task}: 8000 iterations {ref_psnr:.2f} / {ref_ssim:.4f}", flush=True)
        for tol in args.tols:
            iters = [0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # reaching the cap is reported below
                out = baselines.tv_reconstruction(y, physics, lam=lam, num_iters=20000, tol=tol,
                                                  callback=lambda i, _: iters.__setitem__(0, i + 1))
            p, s = scores(x, out)
            gap = ((baselines.tv_objective(out, y, physics, lam) - ref_obj) / ref_obj).max().item()
            print(f"  tol {tol:g}: {iters[0]} iterations{' (cap)' if iters[0] == 20000 else ''}, "
                  f"{p:.2f} / {s:.4f} ({p - ref_psnr:+.3f} dB), objective gap {gap:.1e}", flush=True)


if __name__ == "__main__":
    main()
