"""An experiment, not adopted: FISTA with warm-started inner TV proxes against ``tv_reconstruction``'s PDHG.

The TV baseline costs 13-21 s per 256x256 8-coil slice on 2 CPU cores
(``benchmarks/results/full_resolution_mri.log``), nearly all in the operator: one PDHG iteration applies ``A`` and ``A^H`` once each. FISTA (Beck &
Teboulle 2009) applies only ``A^H A`` once per iteration (half the FFT work for line masks) and is
accelerated, but its TV prox has no closed form: it is solved inexactly by fast gradient projection
on the prox's dual (FGP), warm-started from the previous iteration's dual, with ``10 + k // 5``
(at most 100) inner iterations at outer iteration ``k`` (inexact proxes must get more accurate as
FISTA goes on), and momentum restarts where it points uphill (O'Donoghue & Candes 2015).

For each problem it prints PDHG to its default ``tol`` and FISTA's checkpoints: wall time, the
largest relative distance ``||x - x_ref|| / ||x_ref||`` and relative objective gap to ``x_ref``
(PDHG, 8000 iterations), and FISTA's stopping quantities: the relative stationarity residual
``||grad f + lam grad^T q|| / (||grad f|| + ||lam grad^T q|| + ||A^H y||)`` and the prox's relative
duality gap. Problems: two held-out 256x256 slices of the setting of
``benchmarks/samplers/bench_full_resolution_mri.py`` (8 coils, 4x random lines, estimated maps,
``lam`` 0.001) and end-to-end tasks at 64x64.

Usage:
    python benchmarks/operators/tv_fista_experiment.py [--tasks mri_8coil_8x_equispaced ...] [--skip-full]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from diffinverse import baselines as bl
from diffinverse.baselines import _grad, _grad_adjoint, _magnitude, _norms, _sq_norms
from diffinverse.imaging import per_item as _per_item
from diffinverse.operators import MultiCoilMRI
from diffinverse.operators.norm import operator_norm_squared
from diffinverse.tasks import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samplers"))
from bench_full_resolution_mri import problem  # noqa: E402  (benchmarks/samplers: the 256x256 problem)


def _fgp(z, mu, q, s, iters):
    """Dual ``q`` (``|q| <= 1``) of ``argmin_u ||u - z||^2 / 2 + mu TV(u) = z - mu grad^T q``, from ``q``."""
    step, r, t = 1.0 / (4.0 * s * mu), q, 1.0
    for _ in range(iters):
        q_new = r + step * _grad(z - mu * _grad_adjoint(r, s), s)
        q_new = q_new / _magnitude(q_new).clamp_min(1.0).unsqueeze(0).unsqueeze(2)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        r = q_new + ((t - 1) / t_new) * (q_new - q)
        q, t = q_new, t_new
    return q


def fista(y, physics, lam, iters, report):
    """FISTA on ``||A x - y||^2 / 2 + lam TV(x)``; calls ``report(k, x, stationarity, prox_gap)`` every 40."""
    x = physics.A_adjoint(y)
    x = _per_item(_sq_norms(x) / _sq_norms(physics.A(x)).clamp_min(1e-30), x) * x   # PDHG's start
    s, lip = x.ndim - 2, operator_norm_squared(physics, x)
    aty = physics.A_adjoint(y)
    q, x_acc, t = x.new_zeros((s, *x.shape)), x, torch.ones(x.shape[0])
    for k in range(iters):
        data_grad = physics.A_adjoint_A(x_acc) - aty
        z = x_acc - data_grad / lip
        q = _fgp(z, lam / lip, q, s, min(10 + k // 5, 100))
        tv_grad = lam * _grad_adjoint(q, s)
        x_new = z - tv_grad / lip
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        uphill = ((x_acc - x_new) * (x_new - x)).flatten(1).sum(1) > 0
        t, t_new = torch.where(uphill, 1.0, t), torch.where(uphill, 1.0, t_new)
        x_acc = x_new + _per_item((t - 1) / t_new, x) * (x_new - x)
        x, t = x_new, t_new
        if (k + 1) % 40 == 0:
            stat = _norms(data_grad + tv_grad) / (_norms(data_grad) + _norms(tv_grad) + _norms(aty))
            gx = _grad(x, s)
            tv = _magnitude(gx).flatten(1).sum(1)
            gap = (tv - (q * gx).movedim(0, 1).flatten(1).sum(1)) / tv.clamp_min(1e-30)
            report(k + 1, x, stat.max().item(), gap.max().item())
    return x


def compare(name, y, physics, lam, iters):
    ref = bl.tv_reconstruction(y, physics, lam=lam, num_iters=8000, tol=0)
    ref_obj = bl.tv_objective(ref, y, physics, lam)

    def errors(x):
        dist = (_norms(x - ref) / _norms(ref)).max().item()
        return f"distance {dist:.1e}, objective gap {((bl.tv_objective(x, y, physics, lam) - ref_obj) / ref_obj).max().item():.1e}"

    count = [0]
    start = time.perf_counter()
    x = bl.tv_reconstruction(y, physics, lam=lam, callback=lambda i, _: count.__setitem__(0, i + 1))
    print(f"{name} (lam {lam:g}): PDHG to tol 1e-5: {count[0]} iterations, {time.perf_counter() - start:.1f} s, "
          f"{errors(x)}", flush=True)
    start, paused = time.perf_counter(), [0.0]

    def report(k, x, stat, gap):
        t = time.perf_counter()
        print(f"  FISTA {k:4d}: {t - start - paused[0]:5.1f} s, {errors(x)}, stationarity {stat:.1e}, "
              f"prox gap {gap:.1e}", flush=True)
        paused[0] += time.perf_counter() - t   # the reference comparison is not FISTA's time

    fista(y, physics, lam, iters, report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=["mri_8coil_8x_equispaced", "mri_1coil_8x_random",
                                                   "ct_60_views", "deblur_gaussian"])
    ap.add_argument("--skip-full", action="store_true", help="skip the 256x256 8-coil problem")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_full:
        _, y, mask, maps = problem(2, 4, "random", 0.08, seed=2000)
        compare("256x256 8-coil 4x random, 2 slices", y, MultiCoilMRI(mask, maps), 0.001, args.iters)
    for task in args.tasks:
        p = TASKS[task].problem()
        compare(f"{task} (64x64, 8 images)", p.y, p.physics, TASKS[task].tv_lam, args.iters)


if __name__ == "__main__":
    main()
