"""End to end with the shipped priors: PSNR / SSIM / time / NFE per task and method, and PSNR vs wall time.

The tasks, data, noise, baselines and frozen hyper-parameters are :data:`diffinverse.tasks.TASKS`,
which ``tests/test_end_to_end.py`` asserts (so the table and the test measure the same problems);
here at ``--size`` pixels, on ``--images`` held-out images of another seed.
Part 1 prints the table (means over the images; time = wall time of the whole batch, including
the warm-start baseline for the samplers). Part 2, on 4x single-coil MRI and 60-view CT, runs DPS
and RED-Diff at several step counts, deepinv's ``DPS`` (cold start, its default VP schedule, DDPM
solver, our prior as its denoiser; guidance ``weight`` 1 by default or per task from
``--deepinv-weights``) at ``--deepinv-steps``, and the classical baseline, and saves
``benchmarks/results/psnr_vs_time.png``.

Usage:
    python benchmarks/samplers/bench_end_to_end.py --size 64 --images 8 --threads 2
    python benchmarks/samplers/bench_end_to_end.py --time-study-only --deepinv-steps 1000 \
        --deepinv-weights mri_1coil_4x_random=1,ct_60_views=0.1
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import deepinv as dinv
import torch

from diffinverse.tasks import SAMPLER_SEED, TASKS, frozen_priors, scores

RESULTS = Path(__file__).resolve().parents[1] / "results"
LABEL = {"dps": "DPS", "reddiff": "RED-Diff"}  # table labels; other samplers print their table name


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def table(priors, size, n, seed, tasks=None):
    rows = []
    for name in tasks or TASKS:
        task = TASKS[name]
        problem = task.problem(n, size, seed)
        x, y, physics = problem.x, problem.y, problem.physics
        prior = priors[task.prior]
        adj, t_adj = _timed(lambda: physics.A_dagger(y))
        rows.append((name, task.adjoint_name, *scores(x, adj), t_adj, 0))
        # TV: the baseline, or (MRI) a reference row
        x_tv, t_tv = _timed(lambda: task.tv(y, physics))
        rows.append((name, f"TV (lam {task.tv_lam:g})", *scores(x, x_tv), t_tv, 0))
        x_init, t_init = (x_tv, t_tv) if task.init == "tv" else (adj, t_adj)
        for method in task.settings:
            (out, nfe), t = _timed(lambda: task.run(method, prior, y, physics, x_init, seed=SAMPLER_SEED))
            rows.append((name, f"{LABEL.get(method, method)} (warm)", *scores(x, out), t + t_init, nfe))
        for r in rows:
            if r[0] == name:
                print(f"{r[0]:26s} {r[1]:24s} PSNR {r[2]:6.2f} SSIM {r[3]:.4f} time {r[4]:7.2f}s NFE {r[5]}",
                      flush=True)
    return rows


def deepinv_dps(prior, steps, y, physics, seed, weight=1.0):
    sampler = dinv.sampling.DPS(prior, num_steps=steps, weight=weight, device="cpu", dtype=torch.float32,
                                rng=torch.Generator().manual_seed(seed))
    return sampler(y, physics, seed=seed)


def time_study(priors, size, n, seed, steps, deepinv_steps, deepinv_weights):
    """``steps``: per sampler name, the step counts of its curve."""
    curves = {}
    for name in ("mri_1coil_4x_random", "ct_60_views"):
        task = TASKS[name]
        problem = task.problem(n, size, seed)
        x, y, physics = problem.x, problem.y, problem.physics
        prior = priors[task.prior]
        pts = {}
        x_init, t_init = _timed(lambda: task.warm_start(y, physics))
        baseline = "baseline (TV)" if task.init == "tv" else f"baseline ({task.adjoint_name})"
        pts[baseline] = [(t_init, *scores(x, x_init), 0)]
        for method, steps_list in steps.items():
            label = f"{LABEL.get(method, method)} (ours, warm)"
            pts[label] = []
            for num_steps in steps_list:
                (out, nfe), t = _timed(lambda: task.run(method, prior, y, physics, x_init, seed=SAMPLER_SEED,
                                                        num_steps=num_steps))
                pts[label].append((t + t_init, *scores(x, out), nfe))
        weight = deepinv_weights.get(name, 1.0)
        label = f"DPS (deepinv, cold, weight {weight:g})"
        pts[label] = []
        for num_steps in deepinv_steps:
            out, t = _timed(lambda: deepinv_dps(prior, num_steps, y, physics, SAMPLER_SEED, weight))
            pts[label].append((t, *scores(x, out), num_steps))
        for k, v in pts.items():
            for t, p, s, nfe in v:
                print(f"{name:22s} {k:24s} time {t:7.2f}s PSNR {p:6.2f} SSIM {s:.4f} NFE {nfe}", flush=True)
        curves[name] = pts
    return curves


def plot(curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4))
    for ax, (task, pts) in zip(axes, curves.items()):
        for name, v in pts.items():
            ax.plot([p[0] for p in v], [p[1] for p in v], "o-" if len(v) > 1 else "*", label=name, ms=8)
            for t, p, _, nfe in v:
                if nfe:
                    ax.annotate(str(nfe), (t, p), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_xlabel("wall time for the batch [s] (log)")
        ax.set_ylabel("mean PSNR [dB]")
        ax.set_title(task + " (labels: NFE)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_problem_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that choose the images of the tasks, and the CPU threads."""
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000, help="held-out images, masks, noise (test: 0, tuning: 1000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", default="", help="comma-separated tasks of the table (default: all)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_problem_arguments(ap)
    ap.add_argument("--dps-steps", default="20,40,80")
    ap.add_argument("--red-steps", default="20,40,80,160")
    ap.add_argument("--deepinv-steps", default="10,25")
    ap.add_argument("--deepinv-weights", default="",
                    help="deepinv DPS guidance weight per task, e.g. mri_1coil_4x_random=1,ct_60_views=0.1 (default 1)")
    ap.add_argument("--json", default=str(RESULTS / "end_to_end.json"))
    ap.add_argument("--time-study-only", action="store_true", help="skip the task table")
    ap.add_argument("--table-only", action="store_true", help="skip the time study")
    ap.add_argument("--plot", default=str(RESULTS / "psnr_vs_time.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    priors = frozen_priors()
    t0 = time.perf_counter()
    tasks = [t for t in args.tasks.split(",") if t]
    rows = [] if args.time_study_only else table(priors, args.size, args.images, args.seed, tasks)
    curves = {}
    if not args.table_only:
        curves = time_study(priors, args.size, args.images, args.seed,
                            {"dps": ints(args.dps_steps), "reddiff": ints(args.red_steps)}, ints(args.deepinv_steps),
                            {k: float(v) for k, v in (kv.split("=") for kv in args.deepinv_weights.split(",") if kv)})
        plot(curves, Path(args.plot))
    Path(args.json).write_text(json.dumps({"args": vars(args), "table": rows, "curves": curves}, indent=1))
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
