"""Where a ``cuda_graph=True`` call's time goes beyond its steps (64x64, batch 4, needs a GPU).

Times graphed RED-Diff and DPS calls of 1 and of 20 steps (fastest and median of 20 calls after
three warm-ups): a 1-step call minus one replay of the step is the per-call cost (setup on the host
before the first replay, copies in and out). Then profiles 50 calls of 20 steps with cProfile (the
profiler inflates Python-heavy parts such as ``Module.modules()``: time those alone before
optimising them).

Usage::

    python benchmarks/gpu/profile_graph_call.py > profile.txt
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import time

import torch

from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import SingleCoilMRI
from diffinverse.priors.checkpoints import load
from diffinverse.samplers import DPS, REDDiff


def problem(dev: torch.device):
    """The shipped ``mri-brain`` prior, a 4x single-coil operator at 64x64 and a batch of 4
    measurements on ``dev``: ``(prior, physics, y)``."""
    prior = load("mri-brain", device=dev)
    physics = SingleCoilMRI(random_lines((64, 64), 4, 0.08, generator=torch.Generator().manual_seed(0)).to(dev))
    return prior, physics, physics.A(torch.randn(4, 2, 64, 64, device=dev))


def main() -> None:
    dev = torch.device("cuda")
    prior, physics, y = problem(dev)
    for cls in (REDDiff, DPS):
        for n in (1, 20):
            sampler = cls(prior, num_steps=n, progress=False, cuda_graph=True)
            for _ in range(3):
                sampler(y, physics, generator=torch.Generator(dev).manual_seed(0))
            torch.cuda.synchronize()
            times = []
            for _ in range(20):
                t = time.perf_counter()
                sampler(y, physics, generator=torch.Generator(dev).manual_seed(0))
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            print(cls.__name__, "steps", n, "fastest call ms %.3f median %.3f" % (min(times) * 1e3,
                                                                                sorted(times)[10] * 1e3))
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(50):
            sampler(y, physics, generator=torch.Generator(dev).manual_seed(0))
        torch.cuda.synchronize()
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
