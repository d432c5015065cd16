"""Time per iteration of ``tv_reconstruction``'s loop against a saved earlier version of it (not a test).

Runs ``--iters`` iterations (``tol=0``) of both versions on the same 8-coil MRI problem, alternating
them ``--rounds`` times, and prints the fastest time per iteration of each, their ratio and the
largest difference of their outputs. The earlier version is a copy of ``baselines.py`` given by path
(e.g. ``git show 4ae29a0:diffinverse/samplers/baselines.py > /tmp/baselines_old.py``).

Usage:
    python benchmarks/bench_tv_loop.py /tmp/baselines_old.py [--size 256] [--batch 2] [--iters 50]
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from diffinverse.operators import MultiCoilMRI, random_lines, simulate_coil_maps
from diffinverse.samplers import baselines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="path of the earlier baselines.py")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("baselines_old", args.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    g = torch.Generator().manual_seed(0)
    shape = (args.size, args.size)
    physics = MultiCoilMRI(random_lines(shape, 4, 0.08, generator=g), simulate_coil_maps(args.coils, shape))
    y = physics.A(torch.rand(args.batch, 2, *shape, generator=g))
    y = y + 0.005 * torch.randn(y.shape, generator=g) * physics.mask
    best = {"earlier": float("inf"), "current": float("inf")}
    outs = {}
    for _ in range(args.rounds):
        for name, module in (("earlier", old), ("current", baselines)):
            start = time.perf_counter()
            outs[name] = module.tv_reconstruction(y, physics, lam=0.001, num_iters=args.iters, tol=0)
            best[name] = min(best[name], (time.perf_counter() - start) / args.iters)
    diff = (outs["earlier"] - outs["current"]).abs().max().item()
    print(f"{args.batch} x {args.coils}-coil {args.size}x{args.size} MRI, {args.iters} iterations, fastest of "
          f"{args.rounds}: earlier {best['earlier'] * 1e3:.1f} ms, current {best['current'] * 1e3:.1f} ms per "
          f"iteration (earlier / current {best['earlier'] / best['current']:.2f}); max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
