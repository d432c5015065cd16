"""Wall time of Active Diffusion Subsampling on one full-size multi-coil slice (the command line's path).

``diffinverse.pipelines.active.active_reconstruct_kspace`` at its defaults (DDS particles,
:data:`~diffinverse.pipelines.active.ACTIVE_DEFAULTS`) on a held-out brain slice with simulated
birdcage coils, fully sampled, so that ADS chooses the lines of a ``--acceleration`` mask: the
time a user of ``diffinverse-reconstruct --sampler ads`` waits per slice on this machine, with
the network passes and the PSNR of the particle mean against the ground truth (and SENSE of the
same lines).

Usage (from the repository root):
    OMP_NUM_THREADS=2 python benchmarks/samplers/time_ads_slice.py --size 256 --coils 8 --acceleration 4 \
        --out benchmarks/results/ads_time_256_8coil_consistent.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from diffinverse.datasets.brain import BrainSlices
from diffinverse.imaging import magnitude
from diffinverse.metrics import psnr, ssim
from diffinverse.operators.coils import simulate_coil_maps
from diffinverse.operators.mri import fft2c, to_complex
from diffinverse.pipelines.active import ACTIVE_DEFAULTS, active_reconstruct_kspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image side, <= 256 (a central crop of a 256 x 256 slice)")
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--acceleration", type=float, default=4.0)
    ap.add_argument("--particles", type=int, default=ACTIVE_DEFAULTS["num_particles"])
    ap.add_argument("--predict", choices=["tweedie", "consistent"], default=ACTIVE_DEFAULTS["predict"],
                    help="ADS's predictions (default: the pipeline's)")
    ap.add_argument("--window", type=float, nargs=2, default=ACTIVE_DEFAULTS["window"], metavar=("START", "STOP"),
                    help="ADS's acquisition window (default: the pipeline's)")
    ap.add_argument("--seed", type=int, default=0, help="slice seed (the tasks' convention: 0 test, 1000 tuning)")
    ap.add_argument("--out", default=None, help="JSON file for the result")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    x = BrainSlices("test", generator=g).sample(1)                         # (1, 2, 256, 256)
    if args.size < x.shape[-1]:                                            # the central crop
        top = (x.shape[-1] - args.size) // 2
        x = x[..., top:top + args.size, top:top + args.size]
    truth = to_complex(x)[0]                                               # (H, W) complex
    maps = simulate_coil_maps(args.coils, tuple(truth.shape))             # (C, H, W)
    kspace = fft2c(maps * truth)                                           # (C, H, W), fully sampled
    t0 = time.perf_counter()
    rec = active_reconstruct_kspace(kspace, acceleration=args.acceleration, num_particles=args.particles,
                                    predict=args.predict, window=tuple(args.window),
                                    generator=torch.Generator().manual_seed(args.seed + 1))
    seconds = time.perf_counter() - t0
    ref = magnitude(x)[0]
    result = {
        "args": vars(args), "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "seconds": round(seconds, 1), "nfe": rec.nfe, "window": rec.window,
        "lines": int(rec.mask.sum()), "of": rec.mask.numel(),
        "psnr": psnr(reference=ref, estimate=rec.image[0]), "ssim": ssim(reference=ref, estimate=rec.image[0]),
        "sense_psnr": psnr(reference=ref, estimate=rec.baselines["sense"][0]),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
