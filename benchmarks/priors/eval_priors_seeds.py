"""Denoising PSNR on the real images for several noise draws: the learned prior against BM3D.

``eval_priors.py`` scores one noise draw per level; where the prior's margin over BM3D is small,
this repeats the comparison on other draws (same images, same PSNR definition).

Usage::

    python benchmarks/priors/eval_priors_seeds.py --prior mri-brain --seeds 2 3 --out seeds.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from eval_priors import SIGMAS, bm3d_denoise, psnr, real_ct_images, real_mri_images
from diffinverse.priors.checkpoints import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="shipped name or .safetensors path")
    ap.add_argument("--kind", choices=["mri-brain", "ct-ellipses"], help="data kind (default: from --prior)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    kind = args.kind or args.prior
    prior = load(args.prior)
    images = real_mri_images() if kind == "mri-brain" else real_ct_images()
    rows = {}
    for seed in args.seeds:
        for sigma in SIGMAS:
            g = torch.Generator().manual_seed(seed)
            noisy = {k: v + sigma * torch.randn(v.shape, generator=g) for k, v in images.items()}
            with torch.inference_mode():
                ours = float(np.mean([psnr(images[k], prior(v, sigma)) for k, v in noisy.items()]))
            ref = float(np.mean([psnr(images[k], bm3d_denoise(v, sigma)) for k, v in noisy.items()]))
            rows[f"seed{seed}_sigma{sigma}"] = {"prior": ours, "bm3d": ref, "margin_db": ours - ref}
            print(f"seed {seed} sigma {sigma}: prior {ours:.2f} BM3D {ref:.2f} margin {ours - ref:+.2f} dB", flush=True)
    with open(args.out, "w") as f:
        json.dump({"prior": args.prior, "kind": kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
