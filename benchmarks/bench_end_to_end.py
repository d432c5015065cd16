"""End to end with the shipped priors: PSNR / SSIM / time / NFE per task and method, and PSNR vs wall time.

The tasks, data, noise, baselines and frozen hyper-parameters are those of
``tests/test_end_to_end.py`` (loaded from that file so that the table and the test measure the
same problems); here at ``--size`` pixels, on ``--images`` held-out images of another seed.
Part 1 prints the table (means over the images; time = wall time of the whole batch, including
the warm-start baseline for the samplers). Part 2, on 4x single-coil MRI and 60-view CT, runs DPS
and RED-Diff at several step counts, deepinv's ``DPS`` (cold start, its default VP schedule, DDPM
solver, our prior as its denoiser; guidance ``weight`` 1 by default or per task from
``--deepinv-weights``) at ``--deepinv-steps``, and the classical baseline, and saves
``benchmarks/psnr_vs_time.png``.

Usage:
    python benchmarks/bench_end_to_end.py --size 64 --images 8 --threads 2
    python benchmarks/bench_end_to_end.py --time-study-only --deepinv-steps 1000 \
        --deepinv-weights mri_1coil_4x_random=1,ct_60_views=0.1
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import deepinv as dinv
import torch

from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff

HERE = Path(__file__).resolve().parent


def load_test_module():
    """``tests/test_end_to_end.py`` as a module: its tasks, frozen settings, data and scores."""
    spec = importlib.util.spec_from_file_location("e2e", HERE.parent / "tests" / "test_end_to_end.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _priors(e2e):
    out = {}
    for name in ("mri-brain", "ct-ellipses"):
        prior = e2e.load(name).eval()
        for p in prior.parameters():
            p.requires_grad_(False)
        out[name] = prior
    return out


def build_sampler(cls, prior, kw):
    """A sampler from a task's settings ``kw`` (one sampler's entry of the test's ``CONFIG``, or a
    tuning grid's point), and the ``sigma_start`` to call it with."""
    kw = dict(kw)
    sigma_start = kw.pop("sigma_start")
    kw.pop("init", None)  # a tuning grid's choice of start: the caller's x_init
    return cls(prior, progress=False, **kw), sigma_start


def run_sampler(cls, prior, kw, y, physics, x_init, seed):
    """Run a sampler with a task's settings ``kw`` from ``x_init``; returns ``(x, NFE)``."""
    sampler, sigma_start = build_sampler(cls, prior, kw)
    out = sampler(y, physics, generator=torch.Generator().manual_seed(seed), x_init=x_init, sigma_start=sigma_start)
    return out, sampler.last_nfe


def warm_start(e2e, cfg, y, physics):
    """The image a task's samplers start from, and its name: TV when ``cfg["init"]`` is ``"tv"``,
    else ``physics.A_dagger(y)`` (zero-filled / SENSE-CG)."""
    if cfg["init"] == "tv":
        return e2e.tv(y, physics, cfg["tv_lam"]), "TV"
    return physics.A_dagger(y), "A_dagger"


def table(e2e, priors, size, n, seed, tasks=None):
    rows = []
    for task in tasks or e2e.CONFIG:
        cfg = e2e.CONFIG[task]
        x, y, physics, prior_name = e2e.make_task(task, n, size, seed)
        prior = priors[prior_name]
        adj, t_adj = _timed(lambda: physics.A_dagger(y))
        base_name = "FBP" if task.startswith("ct") else ("SENSE-CG" if "8coil" in task else "zero-filled/adjoint")
        rows.append((task, base_name, *e2e.scores(x, adj), t_adj, 0))
        x_init, t_init = adj, t_adj
        if "tv_lam" in cfg:  # the baseline, or (MRI) a reference
            x_tv, t_tv = _timed(lambda: e2e.tv(y, physics, cfg["tv_lam"]))
            rows.append((task, f"TV (lam {cfg['tv_lam']:g})", *e2e.scores(x, x_tv), t_tv, 0))
            if cfg["init"] == "tv":
                x_init, t_init = x_tv, t_tv
        for name, cls in (("DPS", DPS), ("RED-Diff", REDDiff)):
            (out, nfe), t = _timed(lambda: run_sampler(cls, prior, cfg[name.lower().replace("-", "")], y, physics,
                                                         x_init, 1))
            rows.append((task, f"{name} (warm)", *e2e.scores(x, out), t + t_init, nfe))
        for r in rows[-5:]:
            if r[0] == task:
                print(f"{r[0]:26s} {r[1]:24s} PSNR {r[2]:6.2f} SSIM {r[3]:.4f} time {r[4]:7.2f}s NFE {r[5]}", flush=True)
    return rows


def deepinv_dps(prior, steps, y, physics, seed, weight=1.0):
    sampler = dinv.sampling.DPS(prior, num_steps=steps, weight=weight, device="cpu", dtype=torch.float32,
                                rng=torch.Generator().manual_seed(seed))
    return sampler(y, physics, seed=seed)


def time_study(e2e, priors, size, n, seed, dps_steps, red_steps, deepinv_steps, deepinv_weights):
    curves = {}
    for task in ("mri_1coil_4x_random", "ct_60_views"):
        cfg = e2e.CONFIG[task]
        x, y, physics, prior_name = e2e.make_task(task, n, size, seed)
        prior = priors[prior_name]
        pts = {}
        if cfg["baseline"] == "tv":
            x_init, t_init = _timed(lambda: e2e.tv(y, physics, cfg["tv_lam"]))
            pts["baseline (TV)"] = [(t_init, *e2e.scores(x, x_init), 0)]
        else:
            x_init, t_init = _timed(lambda: physics.A_dagger(y))
            pts["baseline (zero-filled)"] = [(t_init, *e2e.scores(x, x_init), 0)]
        for name, cls, key, steps_list in (("DPS (ours, warm)", DPS, "dps", dps_steps),
                                           ("RED-Diff (ours, warm)", REDDiff, "reddiff", red_steps)):
            pts[name] = []
            for steps in steps_list:
                kw = dict(cfg[key], num_steps=steps)
                (out, nfe), t = _timed(lambda: run_sampler(cls, prior, kw, y, physics, x_init, 1))
                pts[name].append((t + t_init, *e2e.scores(x, out), nfe))
        weight = deepinv_weights.get(task, 1.0)
        name = f"DPS (deepinv, cold, weight {weight:g})"
        pts[name] = []
        for steps in deepinv_steps:
            out, t = _timed(lambda: deepinv_dps(prior, steps, y, physics, 1, weight))
            pts[name].append((t, *e2e.scores(x, out), steps))
        for k, v in pts.items():
            for t, p, s, nfe in v:
                print(f"{task:22s} {k:24s} time {t:7.2f}s PSNR {p:6.2f} SSIM {s:.4f} NFE {nfe}", flush=True)
        curves[task] = pts
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
    """The options that choose the images of the test's tasks, and the CPU threads."""
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
    ap.add_argument("--json", default=str(HERE / "bench_end_to_end.json"))
    ap.add_argument("--time-study-only", action="store_true", help="skip the task table")
    ap.add_argument("--table-only", action="store_true", help="skip the time study")
    ap.add_argument("--plot", default=str(HERE / "psnr_vs_time.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    e2e = load_test_module()
    priors = _priors(e2e)
    t0 = time.perf_counter()
    tasks = [t for t in args.tasks.split(",") if t]
    rows = [] if args.time_study_only else table(e2e, priors, args.size, args.images, args.seed, tasks)
    curves = {}
    if not args.table_only:
        curves = time_study(e2e, priors, args.size, args.images, args.seed, ints(args.dps_steps),
                            ints(args.red_steps), ints(args.deepinv_steps),
                            {k: float(v) for k, v in (kv.split("=") for kv in args.deepinv_weights.split(",") if kv)})
        plot(curves, Path(args.plot))
    Path(args.json).write_text(json.dumps({"args": vars(args), "table": rows, "curves": curves}, indent=1))
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
