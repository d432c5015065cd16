"""Multi-coil MRI at the prior's own resolution: the samplers with the command line's settings against TV.

The end-to-end benchmark's MRI tasks run at 64x64 on whole slices reduced from 256x256 (central
k-space), i.e. at 4x coarser pixels than the ``mri-brain`` prior was trained on (64x64 crops of
256x256 slices). This runs the quickstart's setting at full resolution instead: held-out 256x256
slices (``BrainSlices("test")``), 8 simulated birdcage coils, a fastMRI-style line mask, k-space
noise 0.005 on the sampled lines, coil maps estimated by ESPIRiT from the auto-calibration lines.
No setting is chosen on these slices: DPS (``zeta`` 4, 50-step grid, warm start from SENSE at
sigma 0.2) and RED-Diff (``lr`` 0.05, ``lam`` 0.01, same grid and start) use the command line's
defaults (tuned on its demo file), TV the 8-coil end-to-end tasks' weight 0.001 (tuned at 64x64).

Prints mean PSNR / SSIM of the magnitude over the slices (each slice its own image) and the wall
time per slice of each method; DPS also as the mean of ``--samples`` posterior samples. ``tv`` solves
all slices as one batch (which stops when the slowest converges), ``tv-per-slice`` one slice at a
time, as the command line does. ``--bf16`` runs the samplers' network in bfloat16 (``autocast``,
the command line's ``--bf16``).

Usage:
    python benchmarks/samplers/bench_full_resolution_mri.py [--slices 8] [--acceleration 4] [--mask random]
        [--methods sense tv tv-per-slice dps dps-mean reddiff] [--bf16]
"""
from __future__ import annotations

import argparse
import time

import torch

from diffinverse.baselines import tv_reconstruction
from diffinverse.datasets.brain import BrainSlices
from diffinverse.operators import (MultiCoilMRI, equispaced_lines, estimate_coil_maps, random_lines,
                                   simulate_coil_maps, to_complex)
from diffinverse.priors import load
from diffinverse.samplers import DPS, REDDiff
from diffinverse.tasks import CENTER_FRACTION, scores


def problem(slices: int, acceleration: int, mask_kind: str, center_fraction: float, seed: int):
    """``slices`` held-out 256x256 slices, 8 simulated coils, a line mask, k-space noise 0.005 on the
    sampled lines and ESPIRiT maps per slice: ``(x, y, mask, maps)``."""
    g = torch.Generator().manual_seed(seed)
    x = BrainSlices("test", generator=g).sample(slices)                          # (S, 2, 256, 256)
    shape = tuple(x.shape[-2:])
    lines = random_lines if mask_kind == "random" else equispaced_lines
    mask = lines(shape, acceleration, center_fraction, generator=g)
    y = MultiCoilMRI(mask, simulate_coil_maps(8, shape))(x)
    y = y + 0.005 * torch.randn(y.shape, generator=g) * mask
    maps = torch.stack([estimate_coil_maps(to_complex(y)[i], num_maps=1) for i in range(len(x))])
    return x, y, mask, maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--acceleration", type=int, default=4, choices=sorted(CENTER_FRACTION))
    ap.add_argument("--mask", choices=["random", "equispaced"], default="random")
    ap.add_argument("--samples", type=int, default=4, help="DPS posterior samples for the mean")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--tv-tol", type=float, default=1e-5, help="tol of tv-per-slice (tv: the default 1e-5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="the samplers' network in bfloat16 (autocast)")
    ap.add_argument("--methods", nargs="+", choices=["sense", "tv", "tv-per-slice", "dps", "dps-mean", "reddiff"],
                    default=["sense", "tv", "dps", "dps-mean", "reddiff"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y, mask, maps = problem(args.slices, args.acceleration, args.mask, CENTER_FRACTION[args.acceleration],
                               args.seed)
    shape = tuple(x.shape[-2:])
    physics = MultiCoilMRI(mask, maps)                                             # per-slice maps
    prior = load("mri-brain")
    print(f"# {args.slices} held-out 256x256 slices (seed {args.seed}), 8 coils, {args.acceleration}x "
          f"{args.mask} lines ({int(mask[0].sum())} of {shape[1]}), noise 0.005"
          f"{', samplers in bf16' if args.bf16 else ''}", flush=True)
    per_slice = 1.0 / len(x)
    dps = DPS(prior, num_steps=50, zeta=4.0, sigma_start=0.2, progress=False, autocast=args.bf16)
    red = REDDiff(prior, num_steps=50, lr=0.05, lam=0.01, sigma_start=0.2, progress=False, autocast=args.bf16)
    seed = lambda: torch.Generator().manual_seed(1)
    stacked = lambda p, n: MultiCoilMRI(mask, p.coil_maps.repeat(n, 1, 1, 1, 1))
    methods = {
        "sense": ("SENSE", lambda: physics.A_dagger(y)),
        "tv": ("TV (lam 0.001)", lambda: tv_reconstruction(y, physics, lam=0.001)),
        "tv-per-slice": ("TV (lam 0.001), slice by slice", lambda: torch.cat(
            [tv_reconstruction(y[i:i + 1], MultiCoilMRI(mask, maps[i]), lam=0.001, tol=args.tv_tol)
             for i in range(len(y))])),
        "dps": ("DPS (zeta 4), one sample", lambda: dps(y, physics, generator=seed())),
        "dps-mean": (f"DPS (zeta 4), mean of {args.samples}", lambda: dps.posterior(
            y, physics, num_samples=args.samples, generator=seed(), physics_for_batch=stacked).mean),
        "reddiff": ("RED-Diff (lr 0.05, lam 0.01)", lambda: red(y, physics, generator=seed())),
    }
    for key in args.methods:
        name, run = methods[key]
        start = time.perf_counter()
        out = run()
        seconds = (time.perf_counter() - start) * per_slice
        p, s = scores(x, out)
        print(f"{name:30s} PSNR {p:6.2f}  SSIM {s:.3f}  {seconds:6.1f} s per slice", flush=True)


if __name__ == "__main__":
    main()
