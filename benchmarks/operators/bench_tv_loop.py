"""Time per iteration of ``tv_reconstruction``'s loop against a baseline (not a test).

Runs ``--iters`` iterations (``tol=0``) of the current loop and of a baseline on the same 8-coil MRI
problem, alternating them ``--rounds`` times, and prints the fastest time per iteration of each,
their ratio and the largest difference of their outputs. The baseline is either

* an earlier version of the loop: a copy of ``baselines.py`` given by path (e.g.
  ``git show 4ae29a0:diffinverse/samplers/baselines.py > /tmp/baselines_old.py``), or
* ``--full-kspace``: the current loop on the full k-space, with the operator wrapped in a plain
  ``LinearPhysics`` that offers no ``compact()`` (the current loop itself runs on the sampled lines).

Usage:
    python benchmarks/operators/bench_tv_loop.py /tmp/baselines_old.py [--size 256] [--batch 2] [--iters 50]
    python benchmarks/operators/bench_tv_loop.py --full-kspace [--batch 8] [--acceleration 8 --mask equispaced]
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import torch
from deepinv.physics import LinearPhysics

from diffinverse.operators import MultiCoilMRI, equispaced_lines, random_lines, simulate_coil_maps
from diffinverse import baselines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", nargs="?", help="path of the earlier baselines.py")
    ap.add_argument("--full-kspace", action="store_true",
                    help="compare with the current loop on the full k-space instead of an earlier file")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--acceleration", type=int, default=4)
    ap.add_argument("--mask", choices=["random", "equispaced"], default="random")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if (args.old is None) != args.full_kspace:
        ap.error("give either the path of an earlier baselines.py or --full-kspace")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shape = (args.size, args.size)
    lines = random_lines if args.mask == "random" else equispaced_lines
    physics = MultiCoilMRI(lines(shape, args.acceleration, 0.08, generator=g), simulate_coil_maps(args.coils, shape))
    y = physics.A(torch.rand(args.batch, 2, *shape, generator=g))
    y = y + 0.005 * torch.randn(y.shape, generator=g) * physics.mask
    if args.full_kspace:
        baseline_name, baseline = "full k-space", (baselines, LinearPhysics(A=physics.A, A_adjoint=physics.A_adjoint))
    else:
        spec = importlib.util.spec_from_file_location("baselines_old", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        baseline_name, baseline = "earlier", (old, physics)
    runs = {baseline_name: baseline, "current": (baselines, physics)}
    best, outs = {name: float("inf") for name in runs}, {}
    for _ in range(args.rounds):
        for name, (module, op) in runs.items():
            start = time.perf_counter()
            outs[name] = module.tv_reconstruction(y, op, lam=0.001, num_iters=args.iters, tol=0)
            best[name] = min(best[name], (time.perf_counter() - start) / args.iters)
    diff = (outs[baseline_name] - outs["current"]).abs().max().item()
    print(f"{args.batch} x {args.coils}-coil {args.size}x{args.size} MRI, {args.acceleration}x {args.mask} lines "
          f"({int(physics.mask[0].sum())} of {args.size}), {args.iters} iterations, fastest of {args.rounds}: "
          f"{baseline_name} {best[baseline_name] * 1e3:.1f} ms, current {best['current'] * 1e3:.1f} ms per "
          f"iteration ({baseline_name} / current {best[baseline_name] / best['current']:.2f}); "
          f"max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
