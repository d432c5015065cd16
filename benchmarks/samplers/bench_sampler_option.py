"""A sampler option off and on, end to end: PSNR / SSIM / time per task (``autocast`` or ``channels_last``).

On the tasks and frozen settings of :mod:`diffinverse.tasks` (as ``bench_end_to_end.py``),
each sampler runs from the same warm start and seed with the option off and on, over
``--repeats`` rounds in alternating order; time is the sampler call alone (the warm start is
shared), the minimum over the rounds. ``autocast`` runs the network in bfloat16 (everything else
stays float32): whether that is faster depends on the hardware. CPUs with AVX512-BF16 or AMX, and
GPUs since Ampere, run it natively (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` says so for
the CPU; printed first).

Usage::

    python benchmarks/samplers/bench_sampler_option.py --option autocast --threads 2 --json benchmarks/results/autocast_cpu.json
    python benchmarks/samplers/bench_sampler_option.py --option channels_last --seed 0 --threads 1 --repeats 2 \\
        --tasks mri_1coil_4x_random,ct_60_views
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from bench_end_to_end import LABEL, add_problem_arguments

from diffinverse.tasks import SAMPLER_SEED, TASKS, frozen_priors, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--option", choices=["autocast", "channels_last"], required=True)
    add_problem_arguments(ap)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("CPU bf16 support (mkldnn):", torch.ops.mkldnn._is_mkldnn_bf16_supported(), flush=True)
    priors = frozen_priors()
    rows = []
    for task in [t for t in args.tasks.split(",") if t] or TASKS:
        spec = TASKS[task]
        problem = spec.problem(args.images, args.size, args.seed)
        y, physics = problem.y, problem.physics
        x_init = spec.warm_start(y, physics)
        for method in spec.settings:
            name = LABEL.get(method, method)
            best, score = {False: float("inf"), True: float("inf")}, {}
            for r in range(args.repeats):
                for on in ((False, True) if r % 2 == 0 else (True, False)):
                    t = time.perf_counter()
                    out, nfe = spec.run(method, priors[spec.prior], y, physics, x_init, seed=SAMPLER_SEED,
                                        **{args.option: on})
                    best[on] = min(best[on], time.perf_counter() - t)
                    score[on] = scores(problem.x, out)
            row = {"task": task, "sampler": name, "nfe": nfe,
                   **{f"{tag}_{m}": v for on, tag in ((False, "off"), (True, "on"))
                      for m, v in zip(("psnr", "ssim", "time_s"), (*score[on], best[on]))}}
            row["speedup"] = row["off_time_s"] / row["on_time_s"]
            rows.append(row)
            print(f"{task:26s} {name:8s} NFE {nfe:3d}  {args.option} off {row['off_psnr']:6.2f} / "
                  f"{row['off_ssim']:.4f}   {row['off_time_s']:6.2f} s   on {row['on_psnr']:6.2f} / "
                  f"{row['on_ssim']:.4f}   {row['on_time_s']:6.2f} s   speed-up {row['speedup']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
