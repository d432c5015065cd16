"""Our samplers against deepinv's plug-and-play HQS and its DiffPIR / DPS, all with our priors.

Issue 23, "plug-and-play is a baseline to beat" and "against the peer library, side by side in one
run". Every deepinv method gets our shipped prior (:func:`diffinverse.tasks.frozen_prior`) and the
task's own physics:

* ``hqs``: ``deepinv.optim.HQS(data_fidelity=L2(), prior=PnP(denoiser=prior))``, the fixed-sigma
  plug-and-play loop ``u = prox_{gamma f}(x); x = D(u, sigma)`` (Zhang et al., IRCNN/DPIR), started
  from ``physics.A_dagger(y)`` (``custom_init``; deepinv's default ``A^T y`` is off by ``||A||^2`` for
  CT and 20 iterations do not recover from it). Our prior is a ``deepinv.models.Denoiser`` with ``forward(x,
  sigma)``, so ``PnP`` takes it as is. ``stepsize`` is given as ``c / ||A||^2``
  (:func:`diffinverse.samplers.base.operator_scale`), like our samplers' step sizes.
* ``diffpir``: ``deepinv.sampling.DiffPIR``. It assumes a denoiser of [0, 1] images and maps them
  to [-1, 1] inside; :class:`UnitRangeDenoiser` and :func:`unit_range_problem` put our prior and
  measurements in that convention (``u = (x - lo) / (hi - lo)`` with ``(lo, hi)`` the prior's
  ``data_range``, so DiffPIR's inner space is exactly the prior's), and ``sigma`` is the task's noise
  in ``u`` units. Tuned: ``lambda_``, ``zeta``.
* ``dps``: ``deepinv.sampling.DPS`` as ``bench_end_to_end.deepinv_dps`` builds it (cold start, VP
  schedule, DDPM solver; the prior passed directly). Tuned: ``weight``.

Network calls of deepinv's methods are counted by a forward hook on the prior; ours are the
samplers' ``last_nfe``. PSNR/SSIM are :func:`diffinverse.tasks.scores` (magnitudes, per image).

Subcommands (``tune`` writes ``benchmarks/results/deepinv_peers_tune_<task>_<method>.json``, ``table``
``deepinv_peers_table_<task>.json``, atomically)::

    # grids on the tuning images (TUNING_SEED, --images 2); best setting by mean PSNR
    python benchmarks/samplers/bench_deepinv_peers.py tune ct_60_views --methods hqs
    # test images (TEST_SEED, 8): A_dagger, TV, ours (task settings and defaults), deepinv's best
    python benchmarks/samplers/bench_deepinv_peers.py table ct_60_views --methods hqs
    # markdown tables of saved results
    python benchmarks/samplers/bench_deepinv_peers.py report ct_60_views,mri_8coil_4x_random

The exact commands and the figures they gave are in ``benchmarks/samplers/deepinv_peers.md``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import deepinv as dinv
import torch
from bench_end_to_end import deepinv_dps

from diffinverse._io import atomic_output
from diffinverse.samplers import SAMPLERS
from diffinverse.samplers.base import operator_scale
from diffinverse.tasks import (
    N_IMAGES,
    SAMPLER_SEED,
    SIZE,
    TASKS,
    TEST_SEED,
    TUNING_SEED,
    frozen_prior,
    scores,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"

GRIDS = {
    # c = stepsize * ||A||^2, denoiser sigma (data units), iterations
    "hqs": {"c": [10.0, 100.0], "sigma": [0.02, 0.05], "iters": [10]},
    "diffpir": {"lambda_": [1.0, 7.0, 25.0], "zeta": [0.1], "steps": [20]},
    "dps": {"weight": [3.0, 30.0], "steps": [50]},
}


class CountCalls:
    """Counts the prior's forward calls (a forward hook) inside a ``with`` block."""

    def __init__(self, prior):
        self.prior, self.n = prior, 0

    def __enter__(self):
        self.handle = self.prior.register_forward_hook(lambda *_: self._add())
        return self

    def _add(self):
        self.n += 1

    def __exit__(self, *exc):
        self.handle.remove()


class UnitRangeDenoiser(torch.nn.Module):
    """Our prior as a denoiser of ``u = (x - lo) / (hi - lo)`` in [0, 1] (deepinv's convention).

    ``D_u(u, s) = (D((hi - lo) u + lo, (hi - lo) s) - lo) / (hi - lo)``; ``u``: ``(B, C, H, W)``.
    """

    def __init__(self, prior):
        super().__init__()
        self.prior = prior
        self.lo, self.hi = prior.data_range

    def forward(self, u, sigma):
        w = self.hi - self.lo
        return (self.prior(w * u + self.lo, w * sigma) - self.lo) / w


def unit_range_problem(prior, y, physics, x_like):
    """Measurements of ``u = (x - lo) / (hi - lo)`` under the same linear ``physics``:
    ``y_u = (y - lo A 1) / (hi - lo)``, and the map ``u -> x``."""
    lo, hi = prior.data_range
    y_u = (y - lo * physics.A(torch.ones_like(x_like))) / (hi - lo)
    return y_u, (lambda u: lo + (hi - lo) * u), (lambda x: (x - lo) / (hi - lo))


def noise_std(task, y):
    """The measurement noise std of the task in the units of ``y`` (CT: relative to the sinogram's max)."""
    if task.name.startswith("ct_"):
        return task.noise * float(y.abs().amax())
    return task.noise


def run_hqs(prior, y, physics, *, c, sigma, iters):
    scale = operator_scale(physics, physics.A_adjoint(y))
    model = dinv.optim.HQS(data_fidelity=dinv.optim.L2(), prior=dinv.optim.PnP(denoiser=prior),
                           stepsize=c / scale, sigma_denoiser=sigma, max_iter=iters, early_stop=False,
                           custom_init=lambda y, physics: physics.A_dagger(y))
    with torch.no_grad():
        return model(y, physics)


def run_diffpir(task, prior, y, physics, x_like, *, lambda_, zeta, steps):
    y_u, to_x, to_u = unit_range_problem(prior, y, physics, x_like)
    sigma_u = noise_std(task, y) / (prior.data_range[1] - prior.data_range[0])
    model = dinv.sampling.DiffPIR(UnitRangeDenoiser(prior), dinv.optim.L2(), sigma=sigma_u, max_iter=steps,
                                  zeta=zeta, lambda_=lambda_)
    torch.manual_seed(SAMPLER_SEED)  # DiffPIR draws from the global RNG
    return to_x(model(y_u, physics, x_init=to_u(physics.A_dagger(y))))


def run_deepinv(method, task, prior, y, physics, x_like, params):
    with CountCalls(prior) as count:
        t = time.perf_counter()
        if method == "hqs":
            out = run_hqs(prior, y, physics, **params)
        elif method == "diffpir":
            out = run_diffpir(task, prior, y, physics, x_like, **params)
        elif method == "dps":
            out = deepinv_dps(prior, params["steps"], y, physics, SAMPLER_SEED, params["weight"]).to(x_like.dtype)
        else:
            raise ValueError(f"unknown deepinv method {method!r}; known: hqs, diffpir, dps")
        return out, time.perf_counter() - t, count.n


def _row(label, x, out, t, nfe, **params):
    p, s = scores(x, out)
    row = {"method": label, "psnr": p, "ssim": s, "time_s": t, "nfe": nfe, **params}
    print(f"{label:34s} PSNR {p:6.2f} SSIM {s:.4f} time {t:7.1f}s NFE {nfe}  {params or ''}", flush=True)
    return row


def _write(path: Path, obj) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
    print(f"wrote {path}")


def tune(task, methods, n, grids):
    problem = task.problem(n, SIZE, TUNING_SEED)
    x, y, physics = problem.x, problem.y, problem.physics
    prior = frozen_prior(task.prior)
    out = {}
    for method in methods:
        grid = grids[method]
        rows = []
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            x_hat, t, nfe = run_deepinv(method, task, prior, y, physics, x, params)
            rows.append(_row(method, x, x_hat, t, nfe, **params))
        out[method] = rows
    return out


def best_of(rows, keys):
    """The parameters ``keys`` of the row with the highest mean PSNR (NaN counts as worst)."""
    best = max(rows, key=lambda r: r["psnr"] if r["psnr"] == r["psnr"] else -1e9)
    return {k: best[k] for k in keys}


def table(task, methods, n, best, deepinv_steps, ours=True):
    problem = task.problem(n, SIZE, TEST_SEED)
    x, y, physics = problem.x, problem.y, problem.physics
    prior = frozen_prior(task.prior)
    rows = []
    if ours:
        rows += table_ours(task, prior, x, y, physics)
    for method in methods:
        params = dict(best[method])
        step_key = {"hqs": "iters", "diffpir": "steps", "dps": "steps"}[method]
        for steps in deepinv_steps.get(method) or [params[step_key]]:
            params[step_key] = steps
            out, t, nfe = run_deepinv(method, task, prior, y, physics, x, params)
            rows.append(_row(f"{method} (deepinv, tuned)", x, out, t, nfe, **params))
    return rows


def table_ours(task, prior, x, y, physics):
    rows = []
    t = time.perf_counter()
    adj = physics.A_dagger(y)
    rows.append(_row(f"A_dagger ({task.adjoint_name})", x, adj, time.perf_counter() - t, 0))
    t = time.perf_counter()
    x_tv = task.tv(y, physics)
    t_tv = time.perf_counter() - t
    rows.append(_row(f"TV (lam {task.tv_lam:g})", x, x_tv, t_tv, 0))
    x_init, t_init = (x_tv, t_tv) if task.init == "tv" else (adj, 0.0)
    for m in task.settings:
        t = time.perf_counter()
        out, nfe = task.run(m, prior, y, physics, x_init, seed=SAMPLER_SEED)
        rows.append(_row(f"{m} (ours, task settings)", x, out, time.perf_counter() - t + t_init, nfe))
    for m in ("dps", "reddiff", "dds"):
        sampler = SAMPLERS[m].cls(prior, progress=False)
        t = time.perf_counter()
        out = sampler(y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED))
        rows.append(_row(f"{m} (ours, defaults)", x, out, time.perf_counter() - t, sampler.last_nfe))
    return rows


def report(names) -> str:
    """Markdown tables of the ``table`` results of ``names`` (file name stems after ``deepinv_peers_table_``)."""
    lines = []
    for name in names:
        res = json.loads((RESULTS / f"deepinv_peers_table_{name}.json").read_text())
        head = (f"**{res['task']}** ({res['images']} test images, seed {res['seed']}, {res['size']}x{res['size']}; "
                f"`deepinv_peers_table_{name}.json`)")
        lines += [head, "",
                  "| method | PSNR (dB) | SSIM | network calls | wall time (s) | settings |", "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            extra = {k: v for k, v in r.items() if k not in ("method", "psnr", "ssim", "time_s", "nfe")}
            lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['nfe']} | {r['time_s']:.1f} | "
                         f"{', '.join(f'{k} {v:g}' for k, v in extra.items())} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["tune", "table", "report"])
    ap.add_argument("task", help="a task of diffinverse.tasks.TASKS; report: comma-separated result names")
    ap.add_argument("--methods", default="hqs", help="comma-separated deepinv methods: hqs,diffpir,dps")
    ap.add_argument("--images", type=int, default=None, help="default: 2 for tune, 8 for table")
    ap.add_argument("--steps", default="", help="table: deepinv step counts per method, e.g. diffpir=20/50,dps=100")
    ap.add_argument("--grid", default="", help='tune: JSON grid of one method replacing GRIDS, e.g. '
                    '\'{"c": [100, 1000], "sigma": [0.01, 0.02], "iters": [10]}\'; rows add to an earlier round\'s')
    ap.add_argument("--no-ours", action="store_true", help="table: only deepinv's rows (ours run separately)")
    ap.add_argument("--tag", default="", help="table: suffix of the result file's name")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "report":
        print(report(args.task.split(",")))
        return
    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; known: {', '.join(TASKS)}")
    task = TASKS[args.task]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in GRIDS:
            raise ValueError(f"unknown deepinv method {m!r}; known: {', '.join(GRIDS)}")
    if args.what == "tune":
        n = args.images or 2
        grids = {m: GRIDS[m] for m in methods}
        if args.grid:
            if len(methods) != 1:
                raise ValueError("--grid needs exactly one method in --methods")
            grids[methods[0]] = json.loads(args.grid)
            if set(grids[methods[0]]) != set(GRIDS[methods[0]]):
                raise ValueError(f"--grid must give {sorted(GRIDS[methods[0]])}, got {sorted(grids[methods[0]])}")
        for m, rows in tune(task, methods, n, grids).items():
            path = RESULTS / f"deepinv_peers_tune_{task.name}_{m}.json"
            old = json.loads(path.read_text()) if path.exists() else None
            if old is not None and (old["seed"], old["images"], old["size"]) == (TUNING_SEED, n, SIZE):
                rows = old["rows"] + rows  # a further grid round on the same images: keep the earlier rounds
                grid_list = old.get("grids", [old.get("grid")]) + [grids[m]]
            else:
                grid_list = [grids[m]]
            _write(path, {"task": task.name, "method": m, "seed": TUNING_SEED, "images": n, "size": SIZE,
                          "grids": grid_list, "rows": rows, "best": best_of(rows, GRIDS[m])})
    else:
        n = args.images or N_IMAGES
        best = {m: json.loads((RESULTS / f"deepinv_peers_tune_{task.name}_{m}.json").read_text())["best"]
                for m in methods}
        steps = {k: [int(s) for s in v.split("/")] for k, v in (kv.split("=") for kv in args.steps.split(",") if kv)}
        rows = table(task, methods, n, best, steps, ours=not args.no_ours)
        _write(RESULTS / f"deepinv_peers_table_{task.name}{args.tag}.json",
               {"task": task.name, "seed": TEST_SEED, "images": n, "size": SIZE, "tuned_on": TUNING_SEED,
                "deepinv_settings": best, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
