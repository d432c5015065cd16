"""ADS's candidate entropies: the per-entry path against the one-axis (Gram-matrix) path, side by side.

:func:`diffinverse.samplers.ads.candidate_entropies` takes the one-axis path when the candidate ids
vary along one axis of the measurements (k-space columns, sinogram rows); any other grouping
(pixels, patches) takes the per-entry path. Both are timed here on the same random predictions in
one process, one after the other, each the fastest of ``--repeats``; the largest difference of
their pairwise distances is printed with them (they compute the same quantity).

Usage:
    python benchmarks/samplers/bench_ads_entropy.py [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from diffinverse.samplers.ads import (
    _grouping_axis,
    _pair_distances,
    _pair_distances_along,
    ct_view_candidates,
    kspace_line_candidates,
)

PROBLEMS = {
    # name: (particles' predicted measurements, candidate ids)
    "8-coil k-space 320 x 256 (8 particles)":
        lambda: ((8, 2, 8, 320, 256), kspace_line_candidates((2, 8, 320, 256))[1]),
    "single-coil k-space 320 x 368 (16 particles)":
        lambda: ((16, 2, 320, 368), kspace_line_candidates((2, 320, 368))[1]),
    "CT sinogram, 360 views x 363 detectors (8 particles)":
        lambda: ((8, 1, 360, 363), ct_view_candidates((360, 363))[1]),
}


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fastest of {args.repeats}")
    for name, make in PROBLEMS.items():
        shape, groups = make()
        predicted = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        axis = _grouping_axis(groups)
        n = int(groups.max()) + 1
        per_entry = fastest(lambda: _pair_distances(predicted, groups, n), args.repeats)
        one_axis = fastest(lambda: _pair_distances_along(predicted, groups, n, axis), args.repeats)
        diff = (_pair_distances(predicted, groups, n) - _pair_distances_along(predicted, groups, n, axis)).abs().max()
        print(f"{name}: per-entry {per_entry:.3f} s, one-axis {one_axis:.3f} s, "
              f"{per_entry / one_axis:.1f}x, largest difference {float(diff):.1e}")


if __name__ == "__main__":
    main()
