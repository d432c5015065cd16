"""DiffusionMBIR (Tweedie mode) against slice-by-slice DDS, FBP and 3-D TV on a CT phantom volume.

A first measurement for issue 25, not a test. The volume is a synthetic CT phantom
(:func:`diffinverse.datasets.ct_slices.synthetic_ct_volumes`, the ``ct-ellipses`` prior's training
construction in 3-D), ``--depth`` slices of ``--size`` x ``--size`` voxels, measured slice by slice by
parallel-beam CT with ``--views`` views over 180 degrees (torch backend) wrapped in ``SliceStack``,
with white sinogram noise of 1 % of the sinogram's largest value (as the ``ct_30_views`` task).
Methods:

- FBP: ``physics.A_dagger`` (per slice);
- TV: :func:`diffinverse.baselines.tv_reconstruction` on the whole volume (3-D isotropic TV);
- DDS: :class:`diffinverse.samplers.DDS` on the folded 2-D slices (all slices one batch, no TV);
- MBIR: :class:`diffinverse.samplers.DiffusionMBIR`, ``dc="tweedie"``, TV along the slice axis
  (``--mbir-tv all``: along all three axes).

Both samplers start cold (pure noise at the prior's ``sigma_max``) and run ``--steps`` steps, or
with ``--sigma-start`` warm (from the TV volume plus noise, Come-Closer-Diffuse-Faster, as the
end-to-end tasks do) on the part of the grid below it; they draw from
``torch.Generator().manual_seed(1)``.

Scores per plane: the volume is cut into axial (along D), coronal (along H) and sagittal (along W)
slices; PSNR is the mean of each slice's PSNR over the slices that hold part of the object (a
slice of air only would score the background), SSIM the mean SSIM over all of them
(:mod:`diffinverse.metrics`), both with the data range of the whole ground-truth volume (the
volume-wise PSNR is the same for every plane, so it is reported once). NFE is ``sampler.last_nfe``
(network calls; each call sees ``--chunk`` slices for MBIR and all ``--depth`` slices for DDS).

``--tune`` runs the settings grid on the tuning seed and prints every row; without it the given
settings run once on ``--seed``.

Usage:
    python benchmarks/samplers/bench_mbir.py --tune --seed 1000 --threads 1
    python benchmarks/samplers/bench_mbir.py --seed 0 --threads 1 --tv-lam 1 --dds-gamma 1 \
        --mbir-lam 0.4 --mbir-rho 10 --json /tmp/mbir.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from diffinverse.baselines import tv_reconstruction
from diffinverse.datasets.ct_slices import synthetic_ct_volumes
from diffinverse.metrics import psnr, ssim
from diffinverse.operators import CT, SliceStack, fold_slices, unfold_slices
from diffinverse.priors import load
from diffinverse.samplers import DDS, DiffusionMBIR

PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}
SAMPLER_SEED = 1


def problem(seed: int, depth: int, size: int, views: int, noise: float = 0.01):
    """Ground truth ``(1, 1, D, H, W)``, noisy sinograms and the volume operator; volume from
    ``seed``, noise from ``seed + 7``."""
    x = synthetic_ct_volumes(1, (depth, size, size), generator=torch.Generator().manual_seed(seed))
    physics = SliceStack(CT(size, torch.arange(views) * math.pi / views, backend="torch"), axis=2)
    g = torch.Generator().manual_seed(seed + 7)
    y = physics.A(x)
    y = y + noise * y.abs().amax() * torch.randn(y.shape, generator=g)
    return x, y, physics


def plane_scores(x: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Mean per-slice PSNR and SSIM in each plane, and the volume PSNR; data range ``x.max()``."""
    gt, pred = x[0, 0].double(), out[0, 0].double()
    peak = float(gt.max())
    res = {"psnr_volume": psnr(reference=gt, estimate=pred, data_range=peak)}
    for name, dim in PLANES.items():
        g, p = gt.movedim(dim, 0), pred.movedim(dim, 0)
        full = [i for i in range(g.shape[0]) if g[i].any()]   # slices holding part of the object
        res[f"psnr_{name}"] = sum(psnr(reference=g[i], estimate=p[i], data_range=peak) for i in full) / len(full)
        res[f"ssim_{name}"] = ssim(reference=g, estimate=p, data_range=peak)
    return res


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_fbp(y, physics):
    return physics.A_dagger(y), 0


def run_tv(y, physics, lam, iters):
    return tv_reconstruction(y, physics, lam=lam, num_iters=iters), 0


def _warm(x_init, sigma_start):
    return {} if sigma_start is None else {"x_init": x_init, "sigma_start": sigma_start}


def run_dds(y, physics, prior, steps, gamma, x_init=None, sigma_start=None):
    s = DDS(prior, num_steps=steps, gamma=gamma, progress=False)
    warm = _warm(None if x_init is None else fold_slices(x_init, 2), sigma_start)
    out = s(fold_slices(y, 2), physics.op2d, generator=torch.Generator().manual_seed(SAMPLER_SEED), **warm)
    return unfold_slices(out, y.shape[0], 2), s.last_nfe


def run_mbir(y, physics, prior, steps, lam, rho, chunk, x_init=None, sigma_start=None, tv="slice"):
    s = DiffusionMBIR(prior, dc="tweedie", num_steps=steps, lam=lam, rho=rho, chunk_size=chunk, tv=tv,
                      progress=False)
    out = s(y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED), **_warm(x_init, sigma_start))
    return out, s.last_nfe


def row(name, x, result_and_time):
    (out, nfe), t = result_and_time
    r = {"method": name, "time_s": t, "nfe": nfe, **plane_scores(x, out)}
    print(f"{name:34s} vol {r['psnr_volume']:6.2f} | " + " | ".join(
        f"{p[:3]} {r['psnr_' + p]:6.2f} {r['ssim_' + p]:.4f}" for p in PLANES) + f" | {t:7.1f}s NFE {nfe}",
          flush=True)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="phantom seed (noise: seed + 7)")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20, help="sampler steps of the full grid")
    ap.add_argument("--sigma-start", type=float, default=None,
                    help="warm start (Come-Closer-Diffuse-Faster) from the TV volume at this noise level; "
                         "the samplers then run only the part of the --steps grid below it, and their "
                         "time includes TV's")
    ap.add_argument("--chunk", type=int, default=16, help="MBIR chunk_size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tv-lam", type=float, default=1.0)
    ap.add_argument("--tv-iters", type=int, default=1000)
    ap.add_argument("--dds-gamma", type=float, default=1.0)
    ap.add_argument("--mbir-lam", type=float, default=0.04)
    ap.add_argument("--mbir-rho", type=float, default=10.0)
    ap.add_argument("--mbir-tv", choices=["slice", "all"], default="slice",
                    help="MBIR's TV: along the slice axis (the paper's) or all three axes")
    ap.add_argument("--tune", action="store_true", help="run the grid below instead of one setting each")
    ap.add_argument("--tv-lams", type=float, nargs="*", default=[0.3, 1.0, 3.0])
    ap.add_argument("--dds-gammas", type=float, nargs="*", default=[0.1, 1.0])
    ap.add_argument("--mbir-grid", type=str, nargs="*", default=["0.04,10", "0.4,10", "1,100", "4,100"],
                    help="lam,rho pairs")
    ap.add_argument("--only", nargs="*", default=["fbp", "tv", "dds", "mbir"], choices=["fbp", "tv", "dds", "mbir"])
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    x, y, physics = problem(args.seed, args.depth, args.size, args.views)
    prior = load("ct-ellipses")
    print(f"seed {args.seed}: {args.depth} x {args.size} x {args.size}, {args.views} views, steps {args.steps}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}",
          flush=True)
    rows = []
    if "fbp" in args.only:
        rows.append(row("FBP", x, _timed(lambda: run_fbp(y, physics))))
    x_tv, t_tv = None, 0.0
    if "tv" in args.only:
        for lam in (args.tv_lams if args.tune else [args.tv_lam]):
            rows.append(row(f"TV 3-D (lam {lam:g})", x, _timed(lambda lam=lam: run_tv(y, physics, lam, args.tv_iters))))
    if args.sigma_start is not None:   # the warm start: TV at --tv-lam
        (x_tv, _), t_tv = _timed(lambda: run_tv(y, physics, args.tv_lam, args.tv_iters))
    tag = "" if args.sigma_start is None else f", warm TV s {args.sigma_start:g}"

    def plus_tv(result_and_time):
        return result_and_time[0], result_and_time[1] + t_tv
    if "dds" in args.only:
        for gamma in (args.dds_gammas if args.tune else [args.dds_gamma]):
            rows.append(row(f"DDS per slice (gamma {gamma:g}{tag})", x, plus_tv(
                _timed(lambda gamma=gamma: run_dds(y, physics, prior, args.steps, gamma, x_tv, args.sigma_start)))))
    if "mbir" in args.only:
        grid = [tuple(map(float, s.split(","))) for s in args.mbir_grid] if args.tune \
            else [(args.mbir_lam, args.mbir_rho)]
        for lam, rho in grid:
            tv = "" if args.mbir_tv == "slice" else ", TV all axes"
            rows.append(row(f"MBIR tweedie (lam {lam:g}, rho {rho:g}{tv}{tag})", x, plus_tv(
                _timed(lambda lam=lam, rho=rho: run_mbir(y, physics, prior, args.steps, lam, rho, args.chunk, x_tv,
                                                         args.sigma_start, args.mbir_tv)))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
