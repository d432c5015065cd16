"""``posterior(num_samples=16)`` batched through the network against 16 sequential runs.

Single-coil 4x MRI on a 256x256 held-out brain slice with the shipped ``mri-brain`` prior, DPS
warm-started from zero-filled at ``sigma_start`` 0.2 (50-step grid: 14 network evaluations per
sample). Each mode runs in its own process so that its peak resident memory (``ru_maxrss``) is
its own; the table reports wall time and peak memory of each, and the ratio.

Usage::

    python benchmarks/bench_posterior.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run(mode: str, threads: int, max_batch: int | None) -> dict:
    torch.set_num_threads(threads)
    from diffinverse.datasets.brain import BrainSlices
    from diffinverse.operators import SingleCoilMRI, random_lines
    from diffinverse.priors import load
    from diffinverse.samplers import DPS

    g = torch.Generator().manual_seed(0)
    x = BrainSlices("test", generator=g).sample(1)
    physics = SingleCoilMRI(random_lines((256, 256), 4, 0.08, generator=g))
    y = physics(x)
    dps = DPS(load("mri-brain"), num_steps=50, sigma_start=0.2, progress=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if mode == "batched":
        samples = dps.posterior(y, physics, num_samples=16, generator=g, max_batch=max_batch).samples
    else:
        samples = torch.stack([dps(y, physics, generator=g) for _ in range(16)])
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "wall_s": wall, "peak_rss_mb": peak / 1024, "peak_above_start_mb": (peak - base) / 1024,
            "nfe_per_sample": dps.last_nfe, "samples_shape": list(samples.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--child", choices=["batched", "sequential"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.threads, args.max_batch)))
        return
    rows = []
    for mode in ("sequential", "batched"):
        cmd = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
        if args.max_batch:
            cmd += ["--max-batch", str(args.max_batch)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    for r in rows:
        print(f"{r['mode']:10s} wall {r['wall_s']:7.1f} s   peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"(+{r['peak_above_start_mb']:.0f} MB during sampling)   {r['nfe_per_sample']} NFE/sample")
    s, b = rows
    print(f"batched / sequential: time {b['wall_s'] / s['wall_s']:.2f}x, "
          f"memory added {b['peak_above_start_mb'] / max(s['peak_above_start_mb'], 1):.1f}x")


if __name__ == "__main__":
    main()
