"""Active Diffusion Subsampling against fixed masks, with the same particle sampler and budget.

MRI (``--modality mri``): held-out brain slices (``diffinverse.tasks.brain_images``, the
end-to-end tasks' MRI data at ``--size``), single-coil (``--coils 1``) or multi-coil with simulated
birdcage maps (``--coils 8``), k-space noise 0.01 on the sampled entries. For each slice and
acceleration, the same number of lines is measured by: ADS (starting from the centre lines and
choosing the rest), fastMRI's equispaced and random masks (same centre fraction), the paper's
baseline (10 central + uniformly random lines, scaled to ``--size``) and the same number of
central lines only (``central``: the low frequencies, where small images keep their energy).

CT (``--modality ct``): synthetic CT slices (``diffinverse.tasks.ct_images``), ``--views``
candidate parallel-beam angles over 180 degrees, of which ``views / R`` are measured: ADS (from
view 0, choosing the rest), equispaced views and random views (view 0 plus uniformly random
ones); sinogram noise 0.01 times the full sinogram's largest value.

Every mask is reconstructed by the same particle sampler (DDS from a cold start over
``--steps`` steps, ``--gamma``, ``--particles``
particles, their mean) with the same generator seed; ADS's own reconstruction (``ads``) is the
particle mean at the end of its run, whose particles saw each line only from the step it was
acquired; ``ads_mask`` is ADS's final mask reconstructed as the fixed masks are (all its lines
from the first step), which compares the masks alone. ``--predict`` chooses ADS's predictions
(made consistent with the measurements, the default, or the paper's Tweedie estimates). Reported
per method: mean and standard deviation over slices of PSNR/SSIM, the per-slice wins of ``ads``
and ``ads_mask`` over the fixed masks (PSNR and SSIM), mean wall time and network passes.

Usage:
    python benchmarks/samplers/bench_ads.py --modality mri --coils 1 --slices 6 --size 32 --accelerations 4 8
    python benchmarks/samplers/bench_ads.py --modality ct --slices 6 --size 32 --views 32 --accelerations 4 8
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from diffinverse._io import atomic_output
from diffinverse.operators import (
    CT,
    MultiCoilMRI,
    SingleCoilMRI,
    equispaced_lines,
    random_lines,
)
from diffinverse.operators.coils import simulate_coil_maps
from diffinverse.samplers import DDS, ActiveSubsampling
from diffinverse.samplers.ads import (
    ViewMaskedCT,
    ct_view_candidates,
    kspace_line_candidates,
)
from diffinverse.tasks import (
    CENTER_FRACTION,
    brain_images,
    ct_images,
    frozen_prior,
    image_scores,
)

NOISE = 0.01


def _centre(w: int, n_low: int) -> torch.Tensor:
    mask = torch.zeros(w, w, dtype=torch.bool)
    start = (w - n_low + 1) // 2
    mask[:, start:start + n_low] = True
    return mask


def _paper_baseline(w: int, lines: int, generator: torch.Generator) -> torch.Tensor:
    """10 central lines of 128 (scaled to w) plus uniformly random others, ``lines`` in all."""
    mask = _centre(w, max(1, round(10 * w / 128)))
    free = (~mask[0]).nonzero().flatten()
    pick = free[torch.randperm(len(free), generator=generator)[:lines - int(mask[0].sum())]]
    mask[:, pick] = True
    return mask


def _mri_problems(args, accel: int, s: int, x: torch.Tensor):
    """measure, physics_for_mask, candidates, groups, initial mask and the fixed masks of one slice."""
    w = args.size
    maps = simulate_coil_maps(args.coils, (w, w)) if args.coils > 1 else None

    def physics_for_mask(mask):
        return SingleCoilMRI(mask.float()) if maps is None else MultiCoilMRI(mask.float(), maps)

    full = physics_for_mask(torch.ones(w, w))
    y_full = full.A(x).detach()
    noise = NOISE * torch.randn(y_full.shape, generator=torch.Generator().manual_seed(100 + s))

    def measure(mask):
        return ((y_full + noise) * mask).detach()

    n_low = round(w * CENTER_FRACTION[accel])
    g = torch.Generator().manual_seed(10 * accel + s)
    masks = {"equispaced": equispaced_lines((w, w), accel, CENTER_FRACTION[accel], generator=g).bool(),
             "random": random_lines((w, w), accel, CENTER_FRACTION[accel], generator=g).bool()}
    masks = {k: m | _centre(w, n_low) for k, m in masks.items()}
    masks["paper_baseline"] = _paper_baseline(w, max(int(m[0].sum()) for m in masks.values()), g)
    budget = max(int(m[0].sum()) for m in masks.values()) - n_low
    masks["central"] = _centre(w, budget + n_low)
    candidates, groups = kspace_line_candidates(tuple(y_full.shape[1:]))
    return measure, physics_for_mask, candidates, groups, _centre(w, n_low), budget, masks


def _ct_problems(args, accel: int, s: int, x: torch.Tensor, ct: CT):
    v = args.views
    y_full = ct.A(x).detach()
    noise = NOISE * y_full.abs().amax() * torch.randn(y_full.shape, generator=torch.Generator().manual_seed(100 + s))

    def measure(mask):
        return ((y_full + noise) * mask).detach()

    candidates, groups = ct_view_candidates(ct.sinogram_shape)
    n = v // accel
    g = torch.Generator().manual_seed(10 * accel + s)
    equi = torch.arange(0, v, accel)[:n]
    rand = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(v - 1, generator=g)[:n - 1]])
    masks = {"equispaced": candidates[equi].any(0), "random": candidates[rand].any(0)}
    return measure, (lambda m: ViewMaskedCT(ct, m)), candidates, groups, candidates[0].clone(), n - 1, masks


def _summary(rows: list[dict], methods: list[str], accelerations: list[int]) -> dict:
    summary = {}
    for accel in accelerations:
        rs = [r for r in rows if r["acceleration"] == accel]
        entry = {}
        for m in methods:
            ps = [r[m]["psnr_ssim"][0] for r in rs]
            ss = [r[m]["psnr_ssim"][1] for r in rs]
            entry[m] = {"psnr": statistics.mean(ps), "psnr_sd": statistics.stdev(ps) if len(ps) > 1 else 0.0,
                        "ssim": statistics.mean(ss), "ssim_sd": statistics.stdev(ss) if len(ss) > 1 else 0.0,
                        "seconds": statistics.mean(r[m]["seconds"] for r in rs),
                        "nfe": statistics.mean(r[m]["nfe"] for r in rs)}
        others = [m for m in methods if m not in ("ads", "ads_mask")]
        for ours in ("ads", "ads_mask"):
            if ours not in methods or not others:
                continue
            for i, key in ((0, "psnr"), (1, "ssim")):
                entry[f"{ours}_wins_{key}"] = {m: sum(r[ours]["psnr_ssim"][i] > r[m]["psnr_ssim"][i] for r in rs)
                                               for m in others}
            entry[f"{ours}_minus_psnr"] = {m: statistics.mean(r[ours]["psnr_ssim"][0] - r[m]["psnr_ssim"][0]
                                                              for r in rs) for m in others}
        entry["slices"] = len(rs)
        summary[accel] = entry
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=["mri", "ct"], default="mri")
    ap.add_argument("--coils", type=int, default=1, help="MRI: 1 single-coil, > 1 simulated multi-coil")
    ap.add_argument("--views", type=int, default=32, help="CT: candidate angles over 180 degrees")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gamma", type=float, default=None, help="DDS data weight (default: 10 MRI, 30 CT)")
    ap.add_argument("--s", type=float, default=None, help="entropy kernel width (default: 0.1 MRI, 30 CT)")
    ap.add_argument("--kernel", choices=["ads", "gmm"], default="ads", help="ADS's entropy kernel (default: ads)")
    ap.add_argument("--window", type=float, nargs=2, default=(0.0, 0.8), metavar=("START", "STOP"),
                    help="ADS's acquisition window, fractions of the run (default: 0 0.8)")
    ap.add_argument("--predict", choices=["tweedie", "consistent"], default="consistent",
                    help="ADS's predictions: made data-consistent (default) or the Tweedie estimates (the paper's)")
    ap.add_argument("--ads-only", action="store_true", help="skip the fixed masks (comparing ADS settings)")
    ap.add_argument("--seed", type=int, default=0, help="image seed (tasks: 0 test, 1000 tuning)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ct_mode = args.modality == "ct"
    gamma = args.gamma if args.gamma is not None else (30.0 if ct_mode else 10.0)
    s_kernel = args.s if args.s is not None else (30.0 if ct_mode else 0.1)
    prior = frozen_prior("ct-ellipses" if ct_mode else "mri-brain")
    g_images = torch.Generator().manual_seed(args.seed)
    x_all = ct_images(args.slices, args.size, g_images) if ct_mode else brain_images(args.slices, args.size, g_images)
    ct = CT(args.size, torch.arange(args.views) * math.pi / args.views, backend="torch") if ct_mode else None
    sampler = DDS(prior, num_steps=args.steps, gamma=gamma, eta=1.0 if ct_mode else 0.85, sigma_start=None,
                  progress=False)
    fixed = ["equispaced", "random"] + ([] if ct_mode else ["paper_baseline", "central"])
    methods = ["ads"] + ([] if args.ads_only else ["ads_mask", *fixed])
    rows = []
    for s in range(args.slices):
        for accel in args.accelerations:
            x = x_all[s:s + 1]
            if ct_mode:
                measure, physics_for_mask, candidates, groups, initial, budget, masks = _ct_problems(args, accel, s, x, ct)
            else:
                measure, physics_for_mask, candidates, groups, initial, budget, masks = _mri_problems(args, accel, s, x)
            row = {"acceleration": accel, "slice": s, "measured": budget + 1 if ct_mode else budget + int(initial[0].sum())}
            ads = ActiveSubsampling(sampler, budget=budget, num_particles=args.particles, s=s_kernel,
                                    kernel=args.kernel, window=tuple(args.window), predict=args.predict,
                                    gamma=gamma)
            t = time.perf_counter()
            out = ads(measure, physics_for_mask, candidates, initial_mask=initial, groups=groups,
                      x_shape=tuple(x.shape), generator=torch.Generator().manual_seed(s))
            row["ads"] = {"psnr_ssim": image_scores(x, out.mean)[0], "seconds": time.perf_counter() - t,
                          "nfe": ads.last_nfe, "order": list(out.order)}
            for name, mask in {"ads_mask": out.mask, **masks}.items():
                if name not in methods:
                    continue
                physics = physics_for_mask(mask)
                y = measure(mask)
                y = y.expand(args.particles, *y.shape[1:])
                t = time.perf_counter()
                xs = sampler(y, physics, generator=torch.Generator().manual_seed(s))
                row[name] = {"psnr_ssim": image_scores(x, xs.mean(0, keepdim=True))[0],
                             "seconds": time.perf_counter() - t, "nfe": sampler.last_nfe,
                             "measured": int(candidates[(candidates & mask).flatten(1).any(1)].shape[0])}
            rows.append(row)
            print(json.dumps({k: (v if not isinstance(v, dict) else [round(t, 3) for t in v["psnr_ssim"]])
                              for k, v in row.items()}), flush=True)
            if args.out:    # after every slice: an interrupted run keeps what it measured
                _write(args, gamma, s_kernel, rows, _summary(rows, methods, sorted({r["acceleration"] for r in rows})))
    summary = _summary(rows, methods, args.accelerations)
    print(json.dumps(summary, indent=1))
    if args.out:
        _write(args, gamma, s_kernel, rows, summary)


def _write(args, gamma: float, s_kernel: float, rows: list[dict], summary: dict) -> None:
    with atomic_output(args.out, overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump({"args": vars(args), "gamma": gamma, "s": s_kernel, "rows": rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
