"""Active Diffusion Subsampling against fixed masks, with the same particle sampler and budget.

Held-out brain slices (``diffinverse.tasks.brain_images``, the end-to-end tasks' MRI data at
``--size``), single-coil, k-space noise 0.01 on the sampled entries. For each slice and
acceleration, the same number of lines is measured by: ADS (starting from the centre lines and
choosing the rest), fastMRI's equispaced and random masks (same centre fraction), and the paper's
baseline (10 central + uniformly random lines, scaled to ``--size``). Every mask is reconstructed
by the same particle sampler (DDS, ``--particles`` particles, their mean); ADS's own reconstruction
is the particle mean at the end of its run. Reported per method: mean PSNR/SSIM, per-slice wins of
ADS, wall time, network calls.

Usage:
    python benchmarks/samplers/bench_ads.py --slices 4 --size 64 --accelerations 4 8 [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from diffinverse.operators import SingleCoilMRI, equispaced_lines, random_lines
from diffinverse.samplers import DDS, ActiveSubsampling
from diffinverse.samplers.ads import kspace_line_candidates
from diffinverse.tasks import CENTER_FRACTION, brain_images, frozen_prior, image_scores

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0, help="image seed (tasks: 0 test, 1000 tuning)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    prior = frozen_prior("mri-brain")
    x_all = brain_images(args.slices, args.size, torch.Generator().manual_seed(args.seed))
    w = args.size
    candidates, groups = kspace_line_candidates((2, w, w))
    sampler = DDS(prior, num_steps=args.steps, gamma=10.0, progress=False)
    rows = []
    for accel in args.accelerations:
        lines = w // accel
        n_low = round(w * CENTER_FRACTION[accel])
        for s in range(args.slices):
            x = x_all[s:s + 1]
            noise = NOISE * torch.randn((1, 2, w, w), generator=torch.Generator().manual_seed(100 + s))

            def measure(mask, x=x, noise=noise):
                return (SingleCoilMRI(mask.float()).A(x) + noise * mask).detach()

            g = torch.Generator().manual_seed(10 * accel + s)
            masks = {"equispaced": equispaced_lines((w, w), accel, CENTER_FRACTION[accel], generator=g).bool(),
                     "random": random_lines((w, w), accel, CENTER_FRACTION[accel], generator=g).bool()}
            masks = {k: m | _centre(w, n_low) for k, m in masks.items()}
            masks["paper_baseline"] = _paper_baseline(w, max(int(m[0].sum()) for m in masks.values()), g)
            budget = max(int(m[0].sum()) for m in masks.values()) - n_low
            row = {"acceleration": accel, "slice": s, "lines": budget + n_low}
            ads = ActiveSubsampling(sampler, budget=budget, num_particles=args.particles, s=0.1)
            t = time.perf_counter()
            out = ads(measure, lambda m: SingleCoilMRI(m.float()), candidates, initial_mask=_centre(w, n_low),
                      groups=groups, x_shape=(1, 2, w, w), generator=torch.Generator().manual_seed(s))
            row["ads"] = {"psnr_ssim": image_scores(x, out.mean)[0], "seconds": time.perf_counter() - t,
                          "nfe": ads.last_nfe, "order": list(out.order)}
            for name, mask in masks.items():
                physics = SingleCoilMRI(mask.float())
                y = measure(mask).expand(args.particles, -1, -1, -1)
                t = time.perf_counter()
                xs = sampler(y, physics, generator=torch.Generator().manual_seed(s))
                row[name] = {"psnr_ssim": image_scores(x, xs.mean(0, keepdim=True))[0],
                             "seconds": time.perf_counter() - t, "nfe": sampler.last_nfe,
                             "lines": int(mask[0].sum())}
            rows.append(row)
            print(json.dumps({k: (v if not isinstance(v, dict) else v["psnr_ssim"]) for k, v in row.items()}), flush=True)
    methods = ["ads", "equispaced", "random", "paper_baseline"]
    summary = {}
    for accel in args.accelerations:
        rs = [r for r in rows if r["acceleration"] == accel]
        summary[accel] = {m: {"psnr": statistics.mean(r[m]["psnr_ssim"][0] for r in rs),
                              "ssim": statistics.mean(r[m]["psnr_ssim"][1] for r in rs),
                              "seconds": statistics.mean(r[m]["seconds"] for r in rs),
                              "nfe": statistics.mean(r[m]["nfe"] for r in rs)} for m in methods}
        summary[accel]["ads_wins_psnr"] = {m: sum(r["ads"]["psnr_ssim"][0] > r[m]["psnr_ssim"][0] for r in rs)
                                           for m in methods[1:]}
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
