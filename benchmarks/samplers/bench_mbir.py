"""DiffusionMBIR against slice-by-slice DDS and DPS, the adjoint and 3-D TV on CT and MRI volumes.

Measurements for issue 25, not a test. Problems (:func:`problem`):

- CT (``--modality ct``): a synthetic CT phantom (:func:`diffinverse.datasets.ct_slices.synthetic_ct_volumes`,
  the ``ct-ellipses`` prior's training construction in 3-D), ``--depth`` slices of ``--size`` x
  ``--size`` voxels, measured slice by slice by CT with ``--views`` views, ``--geometry parallel``
  over 180 degrees or ``fan`` over 360 (torch backend), in ``SliceStack``, with white sinogram noise
  of 1 % of the sinogram's largest value (as the ``ct_30_views`` task);
- MRI (``--modality mri``): the held-out MNI152 brain slab (:func:`diffinverse.datasets.brain.test_slab_volume`,
  16 slices, ``--size`` in-plane, a smooth random phase from the seed), single-coil, one
  random-lines mask at ``--acceleration`` (fastMRI's centre fraction) for every slice, white k-space
  noise of std 0.01 on the sampled entries (as the MRI tasks); prior ``mri-brain``.

Methods:

- FBP / zero-filled: ``physics.A_dagger`` (per slice);
- TV: :func:`diffinverse.baselines.tv_reconstruction` on the whole volume (3-D isotropic TV, PDHG,
  ``--tv-iters`` at most): the minimiser that ADMM-TV converges to;
- DPS, DDS: :class:`~diffinverse.samplers.DPS` / :class:`~diffinverse.samplers.DDS` on the folded 2-D
  slices (all slices one batch, no coupling across slices) at the classes' own defaults (their
  steps, relative step sizes and warm start), DDS's ``gamma`` and steps settable;
- MBIR: :class:`diffinverse.samplers.DiffusionMBIR`, ``--mbir-dc tweedie`` (one network pass per
  step) or ``noisy`` (the paper's predictor-corrector, two), TV along the slice axis (``--mbir-tv
  all``: along all three axes), a cold start over ``--steps`` steps.

With ``--sigma-start`` DDS and MBIR start warm instead (from the TV volume plus noise,
Come-Closer-Diffuse-Faster) on the part of the grid below it, and their time includes TV's. The
samplers draw from ``torch.Generator().manual_seed(1)``.

Scores per plane (:func:`diffinverse.reconstruct_volume.plane_scores`, on magnitudes): the volume is
cut into axial (along D), coronal (along H) and sagittal (along W) slices; PSNR is the mean of each
slice's PSNR over the slices that hold part of the object, SSIM the mean SSIM over all of them, both
with the data range of the whole ground-truth volume; the volume-wise PSNR is reported once. NFE is
``sampler.last_nfe`` (network calls; each call sees ``--chunk`` slices for MBIR and all ``--depth``
slices for DDS and DPS). Times are wall-clock seconds of the call.

``--tune`` runs the settings grid on the tuning seed and prints every row; without it the given
settings run once on ``--seed``. ``--memory D1 D2 ...`` instead measures MBIR's peak resident memory
at those depths, each in a fresh process (:func:`memory_child`), and fits the bytes per voxel.

Usage:
    python benchmarks/samplers/bench_mbir.py --tune --seed 1000 --threads 1
    python benchmarks/samplers/bench_mbir.py --seed 0 --geometry fan --views 30 --steps 50 \
        --only fbp tv dps dds mbir --tv-lam 1 --mbir-lam 1 --mbir-rho 100 --json out.json
    python benchmarks/samplers/bench_mbir.py --modality mri --acceleration 8 --steps 50 ...
    python benchmarks/samplers/bench_mbir.py --memory 16 32 64 128 --size 64 --chunk 16 --steps 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch

from diffinverse.baselines import tv_reconstruction
from diffinverse.datasets.brain import test_slab_volume
from diffinverse.datasets.ct_slices import synthetic_ct_volumes
from diffinverse.imaging import magnitude
from diffinverse.operators import (
    CT,
    SingleCoilMRI,
    SliceStack,
    fold_slices,
    unfold_slices,
)
from diffinverse.operators.masks import random_lines
from diffinverse.priors import load
from diffinverse.reconstruct_volume import PLANES
from diffinverse.reconstruct_volume import plane_scores as volume_plane_scores
from diffinverse.samplers import DDS, DPS, DiffusionMBIR
from diffinverse.tasks import CENTER_FRACTION

SAMPLER_SEED = 1


def problem(seed: int, depth: int, size: int, views: int, noise: float = 0.01, *, modality: str = "ct",
            geometry: str = "parallel", acceleration: int = 4):
    """Ground truth ``(1, C, D, H, W)``, noisy measurements and the volume operator; volume (CT) or
    phase, mask (MRI) from ``seed``, noise from ``seed + 7``.

    CT: ``views`` views over 180 degrees (parallel beam) or 360 degrees (fan beam), sinogram noise
    of ``noise`` times the sinogram's largest value. MRI: the held-out brain slab
    (:func:`~diffinverse.datasets.brain.test_slab_volume`, 16 slices, ``size`` in-plane, a smooth
    random phase), single-coil, one random-lines mask (``acceleration``, fastMRI's centre fraction)
    for every slice, white k-space noise of std ``noise`` on the sampled entries (as the MRI tasks).
    """
    g = torch.Generator().manual_seed(seed + 7)
    if modality == "mri":
        x = test_slab_volume(size=size, generator=torch.Generator().manual_seed(seed))
        mask = random_lines((size, size), acceleration, CENTER_FRACTION[acceleration],
                            generator=torch.Generator().manual_seed(seed))
        physics = SliceStack(SingleCoilMRI(mask), axis=2)
        y = physics.A(x)
        return x, y + noise * torch.randn(y.shape, generator=g) * mask, physics
    x = synthetic_ct_volumes(1, (depth, size, size), generator=torch.Generator().manual_seed(seed))
    period = 2 * math.pi if geometry == "fan" else math.pi
    physics = SliceStack(CT(size, torch.arange(views) * period / views, geometry=geometry, backend="torch"), axis=2)
    y = physics.A(x)
    y = y + noise * y.abs().amax() * torch.randn(y.shape, generator=g)
    return x, y, physics


def plane_scores(x: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Per-plane PSNR/SSIM and the volume PSNR of the magnitudes of two ``(1, C, D, H, W)`` volumes."""
    return volume_plane_scores(magnitude(x)[0], magnitude(out)[0])


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
    """DDS on the folded slices (all one batch): the class's own defaults (``DDS()``: its steps,
    relative ``gamma`` and warm start) where ``steps``/``gamma`` are ``None``; with ``x_init`` a warm
    start from it at ``sigma_start``."""
    kw = {k: v for k, v in {"num_steps": steps, "gamma": gamma}.items() if v is not None}
    s = DDS(prior, progress=False, **kw)
    warm = _warm(None if x_init is None else fold_slices(x_init, 2), sigma_start)
    out = s(fold_slices(y, 2), physics.op2d, generator=torch.Generator().manual_seed(SAMPLER_SEED), **warm)
    return unfold_slices(out, y.shape[0], 2), s.last_nfe


def run_mbir(y, physics, prior, steps, lam, rho, chunk, x_init=None, sigma_start=None, tv="slice", dc="tweedie"):
    s = DiffusionMBIR(prior, dc=dc, num_steps=steps, lam=lam, rho=rho, chunk_size=chunk, tv=tv, progress=False)
    out = s(y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED), **_warm(x_init, sigma_start))
    return out, s.last_nfe


def run_dps(y, physics, prior):
    """DPS on the folded slices (all one batch) with the class's own defaults (``DPS(prior)``: its
    steps, relative ``zeta`` and warm start)."""
    s = DPS(prior, progress=False)
    out = s(fold_slices(y, 2), physics.op2d, generator=torch.Generator().manual_seed(SAMPLER_SEED))
    return unfold_slices(out, y.shape[0], 2), s.last_nfe


def row(name, x, result_and_time):
    (out, nfe), t = result_and_time
    r = {"method": name, "time_s": t, "nfe": nfe, **plane_scores(x, out)}
    print(f"{name:34s} vol {r['psnr_volume']:6.2f} | " + " | ".join(
        f"{p[:3]} {r['psnr_' + p]:6.2f} " + ("  -   " if r["ssim_" + p] is None else f"{r['ssim_' + p]:.4f}")
        for p in PLANES) + f" | {t:7.1f}s NFE {nfe}",
          flush=True)
    return r


def _rss_mib() -> float:
    """This process's resident memory now (MiB), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """This process's peak resident memory (MiB) since the last :func:`_reset_peak` (``VmHWM``)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _reset_peak() -> None:
    """Reset the peak resident memory to the current one (Linux >= 4.0: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(depth: int, size: int, views: int, chunk: int, steps: int) -> dict:
    """Peak memory of one MBIR run on a ``depth``-slice CT volume (run in a fresh process; Linux).

    ``setup``: resident memory once the prior, the operator, the volume and its sinograms exist;
    ``network``: the peak over it of one network call on a chunk of ``chunk`` slices alone (the
    network's share); ``run``: the peak over it of the MBIR run (``steps`` steps); ``total``:
    ``setup + run``. The peak is reset before each of the two measurements, so that the setup's
    own transient peak does not count.
    """
    torch.set_num_threads(1)
    x, y, physics = problem(0, depth, size, views)
    prior = load("ct-ellipses")
    setup = _rss_mib()
    _reset_peak()
    with torch.no_grad():
        prior(torch.randn(chunk, 1, size, size, generator=torch.Generator().manual_seed(0)), torch.tensor(1.0))
    network = _peak_mib() - setup
    _reset_peak()
    t = time.perf_counter()
    run_mbir(y, physics, prior, steps, 1.0, 100.0, chunk)
    seconds = time.perf_counter() - t
    run = _peak_mib() - setup
    return {"depth": depth, "voxels": x.numel(), "setup_mib": setup, "network_mib": network,
            "run_mib": run, "total_mib": setup + run, "seconds": seconds}


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc settings of the memory children: every allocation of 64 KiB or more is its own mapping,
returned to the system when freed, so that resident memory counts live tensors only (with glibc's
defaults freed memory stays in the process and is reused, and the increases measured are noise)."""


def memory_table(depths, size, views, chunk, steps) -> list[dict]:
    """:func:`memory_child` for each depth, each in its own process (peaks do not carry over),
    under :data:`MALLOC_ENV`."""
    rows = []
    for depth in depths:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(depth), "--size", str(size),
                              "--views", str(views), "--chunk", str(chunk), "--steps", str(steps)],
                             check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **MALLOC_ENV})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"D {depth:4d} ({r['voxels']:8d} voxels): setup {r['setup_mib']:7.1f} MiB, network +{r['network_mib']:6.1f}, "
              f"MBIR run +{r['run_mib']:6.1f}, peak {r['total_mib']:7.1f} MiB, {r['seconds']:.1f} s", flush=True)
    if len(rows) > 1:   # least-squares slope of the run's increase against voxels
        v = torch.tensor([float(r["voxels"]) for r in rows], dtype=torch.float64)
        m = torch.tensor([r["run_mib"] for r in rows], dtype=torch.float64) * 2**20
        slope = float(((v - v.mean()) * (m - m.mean())).sum() / (v - v.mean()).square().sum())
        print(f"MBIR run increase: {slope:.1f} bytes per voxel (least squares over the depths)")
        for r in rows:
            r["bytes_per_voxel_fit"] = slope
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="phantom seed (noise: seed + 7)")
    ap.add_argument("--modality", choices=["ct", "mri"], default="ct",
                    help="ct: synthetic CT volume; mri: the held-out brain slab (16 slices), single-coil")
    ap.add_argument("--depth", type=int, default=16, help="slices (CT; the brain slab has 16)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--geometry", choices=["parallel", "fan"], default="parallel",
                    help="CT beam (fan: views over 360 degrees)")
    ap.add_argument("--acceleration", type=int, choices=[4, 8], default=4, help="MRI acceleration (random lines)")
    ap.add_argument("--steps", type=int, default=20, help="sampler steps of the full grid")
    ap.add_argument("--sigma-start", type=float, default=None,
                    help="warm start (Come-Closer-Diffuse-Faster) from the TV volume at this noise level; "
                         "the samplers then run only the part of the --steps grid below it, and their "
                         "time includes TV's")
    ap.add_argument("--chunk", type=int, default=16, help="MBIR chunk_size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tv-lam", type=float, default=1.0)
    ap.add_argument("--tv-iters", type=int, default=1000)
    ap.add_argument("--dds-gamma", type=float, default=None,
                    help="DDS's gamma (relative to ||A||^2); default: the class's")
    ap.add_argument("--dds-steps", type=int, default=None, help="DDS's steps of the full grid; default: the class's")
    ap.add_argument("--mbir-lam", type=float, default=0.04)
    ap.add_argument("--mbir-rho", type=float, default=10.0)
    ap.add_argument("--mbir-tv", choices=["slice", "all"], default="slice",
                    help="MBIR's TV: along the slice axis (the paper's) or all three axes")
    ap.add_argument("--mbir-dc", choices=["tweedie", "noisy"], default="tweedie",
                    help="MBIR mode: tweedie (DDS-style, 1 network pass per step) or noisy (the paper's "
                         "predictor-corrector, 2 passes per step)")
    ap.add_argument("--tune", action="store_true", help="run the grid below instead of one setting each")
    ap.add_argument("--tv-lams", type=float, nargs="*", default=[0.3, 1.0, 3.0])
    ap.add_argument("--dds-gammas", type=float, nargs="*", default=[0.1, 1.0])
    ap.add_argument("--mbir-grid", type=str, nargs="*", default=["0.04,10", "0.4,10", "1,100", "4,100"],
                    help="lam,rho pairs")
    methods = ["fbp", "tv", "dps", "dds", "mbir"]
    ap.add_argument("--only", nargs="*", default=["fbp", "tv", "dds", "mbir"], choices=methods,
                    help="methods to run (dps, dds: slice by slice)")
    ap.add_argument("--memory", type=int, nargs="*", default=None, metavar="DEPTH",
                    help="instead: the peak-memory table of MBIR (CT, --steps steps, --chunk) at these depths")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.size, args.views, args.chunk, args.steps)))
        return
    if args.memory:
        print(f"MBIR peak memory: {args.size} x {args.size} slices, {args.views} views, chunk {args.chunk}, "
              f"{args.steps} steps, torch {torch.__version__}, {platform.processor() or platform.machine()}",
              flush=True)
        rows = memory_table(args.memory, args.size, args.views, args.chunk, args.steps)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows}, f, indent=1)
        return

    mri = args.modality == "mri"
    x, y, physics = problem(args.seed, args.depth, args.size, args.views, modality=args.modality,
                            geometry=args.geometry, acceleration=args.acceleration)
    prior = load("mri-brain" if mri else "ct-ellipses")
    what = (f"brain slab {tuple(x.shape[2:])}, single-coil {args.acceleration}x random lines" if mri else
            f"{args.depth} x {args.size} x {args.size}, {args.views} views {args.geometry} beam")
    print(f"seed {args.seed}: {what}, steps {args.steps}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, threads {args.threads}", flush=True)
    rows = []
    if "fbp" in args.only:
        rows.append(row("zero-filled" if mri else "FBP", x, _timed(lambda: run_fbp(y, physics))))
    x_tv, t_tv = None, 0.0
    if "tv" in args.only:
        for lam in (args.tv_lams if args.tune else [args.tv_lam]):
            rows.append(row(f"TV 3-D (lam {lam:g})", x, _timed(lambda lam=lam: run_tv(y, physics, lam, args.tv_iters))))
    if args.sigma_start is not None:   # the warm start: TV at --tv-lam
        (x_tv, _), t_tv = _timed(lambda: run_tv(y, physics, args.tv_lam, args.tv_iters))
    tag = "" if args.sigma_start is None else f", warm TV s {args.sigma_start:g}"

    def plus_tv(result_and_time, t=None):
        return result_and_time[0], result_and_time[1] + (t_tv if t is None else t)
    if "dps" in args.only:
        rows.append(row("DPS per slice (its defaults)", x, plus_tv(_timed(lambda: run_dps(y, physics, prior)), 0.0)))
    x_warm = None if args.sigma_start is None else x_tv
    if "dds" in args.only:
        for gamma in (args.dds_gammas if args.tune else [args.dds_gamma]):
            rows.append(row(f"DDS per slice (gamma {'default' if gamma is None else f'{gamma:g}'}{tag})", x, plus_tv(
                _timed(lambda gamma=gamma: run_dds(y, physics, prior, args.dds_steps, gamma, x_warm, args.sigma_start)),
                None if x_warm is not None else 0.0)))
    if "mbir" in args.only:
        grid = [tuple(map(float, s.split(","))) for s in args.mbir_grid] if args.tune \
            else [(args.mbir_lam, args.mbir_rho)]
        for lam, rho in grid:
            tv = "" if args.mbir_tv == "slice" else ", TV all axes"
            rows.append(row(f"MBIR {args.mbir_dc} (lam {lam:g}, rho {rho:g}{tv}{tag})", x, plus_tv(
                _timed(lambda lam=lam, rho=rho: run_mbir(y, physics, prior, args.steps, lam, rho, args.chunk, x_warm,
                                                         args.sigma_start, args.mbir_tv, args.mbir_dc)),
                None if x_warm is not None else 0.0)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
