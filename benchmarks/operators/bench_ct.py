"""CT operator benchmark: deepinv Tomography vs ASTRA called directly vs diffinverse's CT backends.

Times: all implementations are built in one process and called round-robin (one warm-up
call each, then ``--repeats`` rounds), so load on a shared machine hits them alike; median and
minimum are reported. Memory: each (implementation, direction) is built once more in its own
fresh process, where "peak MB" is the maximum resident set during one call minus the resident
set just before it, and "setup MB" / "setup s" are what building the operator (and its inputs)
added, imports excluded.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/operators/bench_ct.py [--size 256] [--views 180] [--repeats 10] [--batch 1]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

CASES = ("deepinv", "astra-direct", "ours-astra", "ours-torch")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _build(case: str, size: int, views: int, batch: int) -> dict:
    """The forward and adjoint callables of one implementation, on fixed random inputs."""
    import astra
    import numpy as np
    import torch
    from deepinv.physics import Tomography

    from diffinverse.operators.ct import CT

    angles = torch.arange(views, dtype=torch.float64) * (math.pi / views)
    g = torch.Generator().manual_seed(0)
    if case == "deepinv":
        op = Tomography(angles=torch.rad2deg(angles).float(), img_width=size, circle=False,
                        adjoint_via_backprop=True, normalize=False)
        x = torch.rand(batch, 1, size, size, generator=g)
        y = op.A(x)
        return {"forward": lambda: op.A(x), "adjoint": lambda: op.A_adjoint(y)}
    if case == "astra-direct":
        det = CT(size, angles, backend="astra").num_detectors  # the same detector count as ours
        vg = astra.create_vol_geom(size, size)
        pg = astra.create_proj_geom("parallel", 1.0, det, angles.numpy())
        pid = astra.create_projector("linear", pg, vg)
        x = np.random.default_rng(0).random((batch, size, size), dtype=np.float32)
        y = np.random.default_rng(1).random((batch, views, det), dtype=np.float32)

        def call(create, data):
            out = []
            for b in range(batch):
                i, r = create(data[b], pid)
                astra.data2d.delete(i)
                out.append(r)
            return out

        return {"forward": lambda: call(astra.create_sino, x), "adjoint": lambda: call(astra.create_backprojection, y)}
    op = CT(size, angles, backend=case.split("-")[1])
    x = torch.rand(batch, 1, size, size, generator=g)
    y = op.A(x)
    return {"forward": lambda: op.A(x), "adjoint": lambda: op.A_adjoint(y)}


def _memory(case: str, direction: str, size: int, views: int, batch: int) -> dict:
    """Setup time/memory and peak memory of one call, measured in this (fresh) process."""
    import astra  # noqa: F401  (imports are not part of the operator's setup cost)
    import deepinv  # noqa: F401

    import diffinverse.operators.ct  # noqa: F401

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    fn = _build(case, size, views, batch)[direction]
    setup_s, setup_mb = time.perf_counter() - t0, _rss_mb() - rss0
    rss1 = _rss_mb()
    _reset_peak()  # so that the peak of building the operator does not count
    fn()
    return {"setup_s": setup_s, "setup_mb": setup_mb, "peak_mb": max(0.0, _peak_mb() - rss1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--direction", choices=("forward", "adjoint"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_memory(args.case, args.direction, args.size, args.views, args.batch)))
        return

    results = {}
    for case in CASES:
        for direction in ("forward", "adjoint"):
            cmd = [sys.executable, __file__, "--case", case, "--direction", direction, "--size", str(args.size),
                   "--views", str(args.views), "--batch", str(args.batch)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[case, direction] = json.loads(out.strip().splitlines()[-1])
    # Timing: all implementations in this process, round-robin, so load on a shared machine
    # affects them alike.
    fns = {case: _build(case, args.size, args.views, args.batch) for case in CASES}
    times = {key: [] for key in results}
    for (case, direction) in results:
        fns[case][direction]()  # warm-up
    for _ in range(args.repeats):
        for (case, direction) in results:
            t = time.perf_counter()
            fns[case][direction]()
            times[case, direction].append(time.perf_counter() - t)
    for key, ts in times.items():
        ts.sort()
        results[key].update(ms=1e3 * ts[len(ts) // 2], min_ms=1e3 * ts[0])

    print(f"CT {args.size}x{args.size} parallel beam, {args.views} views, batch {args.batch}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, median of {args.repeats}")
    print(f"{'implementation':<14} {'direction':<8} {'ms':>8} {'min ms':>8} {'peak MB':>8} "
          f"{'setup s':>8} {'setup MB':>9} {'vs deepinv':>10}")
    for (case, direction), r in results.items():
        ratio = results["deepinv", direction]["ms"] / r["ms"]
        print(f"{case:<14} {direction:<8} {r['ms']:8.1f} {r['min_ms']:8.1f} {r['peak_mb']:8.1f} "
              f"{r['setup_s']:8.2f} {r['setup_mb']:9.1f} {ratio:9.2f}x")
    for direction in ("forward", "adjoint"):
        direct = results["astra-direct", direction]["ms"]
        print(f"ours-astra / astra-direct ({direction}): {results['ours-astra', direction]['ms'] / direct:.2f} "
              f"(goal <= 1.1)")
    speedup = results["deepinv", "adjoint"]["ms"] / results["ours-torch", "adjoint"]["ms"]
    print(f"ours-torch adjoint speed-up over deepinv's exact adjoint: {speedup:.2f}x (goal >= 2)")


if __name__ == "__main__":
    main()
