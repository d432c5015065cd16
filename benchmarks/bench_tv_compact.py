"""TV on the sampled lines only (``compact``) against TV on the full k-space, on one MRI problem (not a test).

Runs ``--iters`` iterations of ``tv_reconstruction`` (``tol=0``) on a multi-coil line-mask problem,
once with the operator as it is (which offers ``compact``, so the loop runs on its sampled lines)
and once through a plain ``LinearPhysics`` wrapping its ``A`` and ``A_adjoint`` (full k-space),
alternating them ``--rounds`` times, and prints the fastest time per iteration of each, their
ratio and the largest difference of their outputs.

Usage:
    python benchmarks/bench_tv_compact.py [--size 256] [--batch 8] [--coils 8] [--acceleration 4]
"""
from __future__ import annotations

import argparse
import time

import torch
from deepinv.physics import LinearPhysics

from diffinverse.operators import MultiCoilMRI, equispaced_lines, random_lines, simulate_coil_maps
from diffinverse.samplers import tv_reconstruction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--acceleration", type=int, default=4)
    ap.add_argument("--mask", choices=["random", "equispaced"], default="random")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shape = (args.size, args.size)
    lines = random_lines if args.mask == "random" else equispaced_lines
    mask = lines(shape, args.acceleration, 0.08, generator=g)
    physics = MultiCoilMRI(mask, simulate_coil_maps(args.coils, shape))
    y = physics.A(torch.rand(args.batch, 2, *shape, generator=g))
    y = y + 0.01 * torch.randn(y.shape, generator=g) * mask
    full = LinearPhysics(A=physics.A, A_adjoint=physics.A_adjoint)   # no compact: the full k-space
    runs = {"sampled lines": physics, "full k-space": full}
    best, outs = {name: float("inf") for name in runs}, {}
    for _ in range(args.rounds):
        for name, op in runs.items():
            start = time.perf_counter()
            outs[name] = tv_reconstruction(y, op, lam=0.001, num_iters=args.iters, tol=0)
            best[name] = min(best[name], (time.perf_counter() - start) / args.iters)
    print(f"# {args.batch} x {args.size}x{args.size}, {args.coils} coils, {args.acceleration}x {args.mask} lines "
          f"({int(mask[0].sum())} of {args.size}), {args.iters} iterations, fastest of {args.rounds} rounds")
    for name, t in best.items():
        print(f"{name:14s} {1e3 * t:7.1f} ms per iteration (incl. the power iteration, spread over them)")
    diff = (outs["sampled lines"] - outs["full k-space"]).abs().max().item()
    print(f"speed-up {best['full k-space'] / best['sampled lines']:.2f}x; largest output difference {diff:.1e}")


if __name__ == "__main__":
    main()
