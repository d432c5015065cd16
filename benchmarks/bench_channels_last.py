"""The samplers' ``channels_last`` option end to end: wall time and scores with it on and off.

Runs the frozen test settings of ``tests/test_end_to_end.py`` (8 test images, 64x64, shipped
priors, warm start) for DPS and RED-Diff with the network input in the standard layout and in
channels-last, interleaved, and prints the minimum time of each and the scores (which must agree).

Usage:
    python benchmarks/bench_channels_last.py --threads 1 --repeats 2
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_end_to_end import load_test_module, run_sampler, warm_start

from diffinverse.priors import load
from diffinverse.samplers import DPS, REDDiff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="mri_1coil_4x_random,ct_60_views")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    e2e = load_test_module()
    print("task method | standard: time, PSNR / SSIM | channels-last: time, PSNR / SSIM | speed-up")
    for task in args.tasks.split(","):
        cfg = e2e.CONFIG[task]
        x, y, physics, prior_name = e2e.make_task(task, e2e.N_IMAGES, e2e.SIZE, e2e.TEST_SEED)
        prior = load(prior_name).eval().requires_grad_(False)
        x_init, _ = warm_start(e2e, cfg, y, physics)
        for method, cls in (("dps", DPS), ("reddiff", REDDiff)):
            best, scores = {False: float("inf"), True: float("inf")}, {}
            for _ in range(args.repeats):
                for flag in (False, True):
                    t = time.perf_counter()
                    out, _ = run_sampler(cls, prior, dict(cfg[method], channels_last=flag), y, physics, x_init,
                                         e2e.SAMPLER_SEED)
                    best[flag] = min(best[flag], time.perf_counter() - t)
                    scores[flag] = e2e.scores(x, out)
            print(f"{task} {method} | {best[False]:.2f} s, {scores[False][0]:.3f} / {scores[False][1]:.4f} | "
                  f"{best[True]:.2f} s, {scores[True][0]:.3f} / {scores[True][1]:.4f} | "
                  f"{best[False] / best[True]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
