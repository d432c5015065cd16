"""``posterior(num_samples=16)`` batched through the network against 16 sequential runs.

Single-coil 4x MRI on a 256x256 held-out brain slice with the shipped ``mri-brain`` prior, DPS
warm-started from zero-filled at ``sigma_start`` 0.2 (a ``--steps`` grid, default 50: 14 network
evaluations per sample; time per sample scales with it, memory does not). Modes: 16 sequential
calls, ``posterior(num_samples=16)`` in one batch, and ``posterior`` with each ``--max-batch``
value (images per network call). Each mode runs in its own process so that its peak resident
memory (``ru_maxrss``) is its own; the table reports wall time and peak memory of each, and the
ratios to the sequential run. With ``--device cuda`` the memory is the GPU's (the peak of
``torch.cuda.max_memory_allocated`` above what was allocated before sampling) and the samples are
drawn from a CUDA generator.

Usage::

    python benchmarks/samplers/bench_posterior.py --threads 2 --steps 20 --max-batch 4,8
    python benchmarks/samplers/bench_posterior.py --device cuda --steps 20 --max-batch 4,8
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run(mode: str, threads: int, max_batch: int | None, steps: int, device: str = "cpu") -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    from diffinverse.datasets.brain import BrainSlices
    from diffinverse.operators import SingleCoilMRI, random_lines
    from diffinverse.priors import load
    from diffinverse.samplers import DPS

    g = torch.Generator().manual_seed(0)
    x = BrainSlices("test", generator=g).sample(1).to(dev)
    physics = SingleCoilMRI(random_lines((256, 256), 4, 0.08, generator=g).to(dev))
    y = physics(x)
    if dev.type == "cuda":  # noise drawn on the device: no host round trip per step
        g = torch.Generator(device=dev).manual_seed(0)
    dps = DPS(load("mri-brain", device=dev), num_steps=steps, sigma_start=0.2, progress=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base_gpu = torch.cuda.memory_allocated(dev)
    t = time.perf_counter()
    if mode == "batched":
        samples = dps.posterior(y, physics, num_samples=16, generator=g, max_batch=max_batch).samples
    else:
        samples = torch.stack([dps(y, physics, generator=g) for _ in range(16)])
    _sync(dev)
    wall = time.perf_counter() - t
    peak, peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    if dev.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(dev) - base_gpu) / 2**20
    if max_batch:
        mode = f"{mode}, max_batch {max_batch}"
    return {"mode": mode, "device": str(dev), "wall_s": wall, "peak_rss_mb": peak / 1024,
            "peak_above_start_mb": (peak - base) / 1024 if peak_mb is None else peak_mb,
            "network_calls": dps.last_nfe * (16 if mode == "sequential" else 1), "samples_shape": list(samples.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (memory then is GPU memory)")
    ap.add_argument("--steps", type=int, default=50, help="steps of the full grid (warm start runs those below 0.2)")
    ap.add_argument("--max-batch", default="", help="comma-separated max_batch values to run besides the full batch")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--child", choices=["batched", "sequential"], help=argparse.SUPPRESS)
    ap.add_argument("--child-max-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.threads, args.child_max_batch or None, args.steps, args.device)))
        return
    modes = [("sequential", 0), ("batched", 0)] + [("batched", int(m)) for m in args.max_batch.split(",") if m]
    rows = []
    for mode, mb in modes:
        cmd = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads), "--steps", str(args.steps),
               "--device", args.device, "--child-max-batch", str(mb)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        r = rows[-1]
        where = "GPU" if args.device.startswith("cuda") else "RSS"
        print(f"{r['mode']:24s} wall {r['wall_s']:7.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"(+{r['peak_above_start_mb']:.0f} MB {where} during sampling)   {r['network_calls']} network calls", flush=True)
    seq = rows[0]
    for r in rows[1:]:
        print(f"{r['mode']:24s} / sequential: time {r['wall_s'] / seq['wall_s']:.2f}x, memory added "
              f"{r['peak_above_start_mb'] / max(seq['peak_above_start_mb'], 1):.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
