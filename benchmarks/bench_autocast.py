"""bf16 autocast against float32 in the samplers, end to end: PSNR / SSIM / time per task.

On the tasks and frozen settings of ``tests/test_end_to_end.py`` (as ``bench_end_to_end.py``),
each sampler runs twice from the same warm start and seed, with ``autocast=False`` and
``autocast=True`` (the network in bfloat16, everything else in float32), in alternating order
from task to task; time is the sampler call alone (the warm start is shared). Whether bf16 is
faster depends on the hardware: CPUs with AVX512-BF16 or AMX, and GPUs since Ampere, run it
natively (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` says so for the CPU).

Usage::

    python benchmarks/bench_autocast.py --size 64 --images 8 --threads 2 [--tasks a,b] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from bench_end_to_end import _priors, load_test_module, run_sampler, warm_start

from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000, help="held-out images, masks, noise (test: 0, tuning: 1000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", default="", help="comma-separated tasks (default: all of the test's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("CPU bf16 support (mkldnn):", torch.ops.mkldnn._is_mkldnn_bf16_supported(), flush=True)
    e2e = load_test_module()
    priors = _priors(e2e)
    rows = []
    for k, task in enumerate(args.tasks.split(",") if args.tasks else e2e.CONFIG):
        cfg = e2e.CONFIG[task]
        x, y, physics, prior_name = e2e.make_task(task, args.images, args.size, args.seed)
        x_init, _ = warm_start(e2e, cfg, y, physics)
        for name, cls in (("DPS", DPS), ("RED-Diff", REDDiff)):
            kw = cfg[name.lower().replace("-", "")]
            res = {}
            for bf16 in ((False, True) if k % 2 == 0 else (True, False)):
                t = time.perf_counter()
                out, nfe = run_sampler(cls, priors[prior_name], dict(kw, autocast=bf16), y, physics, x_init, 1)
                res[bf16] = (*e2e.scores(x, out), time.perf_counter() - t, nfe)
            row = {"task": task, "sampler": name, "nfe": res[False][3],
                   **{f"{tag}_{m}": res[bf16][i] for bf16, tag in ((False, "fp32"), (True, "bf16"))
                      for i, m in enumerate(("psnr", "ssim", "time_s"))}}
            row["speedup"] = row["fp32_time_s"] / row["bf16_time_s"]
            rows.append(row)
            print(f"{task:26s} {name:8s} NFE {row['nfe']:3d}  float32 {row['fp32_psnr']:6.2f} / {row['fp32_ssim']:.4f} "
                  f"{row['fp32_time_s']:6.2f} s   bf16 {row['bf16_psnr']:6.2f} / {row['bf16_ssim']:.4f} "
                  f"{row['bf16_time_s']:6.2f} s   speed-up {row['speedup']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
