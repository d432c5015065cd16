"""Denoising PSNR of the shipped priors next to classical denoisers, for the model cards.

For each prior and each noise level sigma in {0.05, 0.1, 0.2, 0.5} (data units: the prior's
training range), on held-out synthetic images AND on real images the prior never saw:

* the prior's MMSE denoiser ``D(x, sigma)`` (one network call),
* a Gaussian filter whose width is tuned per level on the same images (an oracle tuning, which
  favours the classical method),
* BM3D (``bm3d`` package) told the true noise level, run on each real channel.

PSNR uses the clean image's peak magnitude as data range; for complex (2-channel) images the error
is the complex error (both channels). Real images are read from ``../shared/data/real`` and never
ship with the package.

``--real-source real-mri:PATH`` / ``real-ct:PATH`` (repeatable) also scores the held-out split of
the training images under PATH (:class:`diffinverse.datasets.real_images.RealImages`, split by
patient as ``diffinverse-train`` splits them; at most ``--real-max`` images per source, evenly spaced
in file order), each scaled into the prior range; ``real-mri`` images get the smooth random phase of
the training data (seeded per image), ``real-ct`` images stay real (attenuation, ``HU + 1000``).
``--only-real-sources`` skips the synthetic and ``../shared/data/real`` parts.

Usage::

    python benchmarks/priors/eval_priors.py --prior mri-brain --out diffinverse/weights/mri-brain.eval.json
    python benchmarks/priors/eval_priors.py --prior ct-ellipses --out diffinverse/weights/ct-ellipses.eval.json
    # a training checkpoint of a fine-tune of mri-brain (its EMA or its trained weights):
    python benchmarks/priors/eval_priors.py --prior mri-brain --checkpoint runs/ft2/mri-brain/checkpoint.safetensors \
        --weights ema --no-bm3d --out runs/ft2/eval_ema.json
    # held-out real training images (split by patient), three noise levels:
    python benchmarks/priors/eval_priors.py --prior mri-brain --only-real-sources --sigmas 0.05 0.1 0.2 \
        --real-source real-mri:../shared/data/train/mri_brain_figshare_cheng2017_jpg --out eval_real_mri.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F



SIGMAS = (0.05, 0.1, 0.2, 0.5)
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def _scale_complex(z: np.ndarray) -> torch.Tensor:
    """Complex (H, W) -> (1, 2, H, W) with the magnitude's 99.5th percentile at 1."""
    z = z / np.percentile(np.abs(z), 99.5)
    return torch.from_numpy(np.stack([z.real, z.imag])[None].astype(np.float32))


def real_mri_images() -> dict[str, torch.Tensor]:
    """RSS of the fully sampled 8-coil brain and the fastMRI-derived knee images (real, unseen)."""
    k = scipy.io.loadmat(REAL / "mri_kspace" / "espirit_brain_alias_8ch.mat")["DATA"]  # (320, 256, 8)
    coils = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))
    out = {"brain_8ch_rss": _scale_complex(np.sqrt((np.abs(coils) ** 2).sum(-1)).astype(np.complex64))}
    knee = np.load(REAL / "mri_image" / "scoremri_knee_singlecoil_001_complex.npy")
    out["knee_complex_001"] = _scale_complex(knee)
    for i in (1, 2, 3):
        mag = np.load(REAL / "mri_image" / f"scoremri_knee_retrospective_00{i}.npy")
        out[f"knee_magnitude_00{i}"] = _scale_complex(mag.astype(np.complex64))
    return out


def real_ct_images() -> dict[str, torch.Tensor]:
    """Real head and spine CT slices as attenuation in [0, 1] ((HU + 1000) / (max HU + 1000))."""
    import pydicom

    out = {}
    for name, size in (("pydicom-data_693_UNCR_head_ct.dcm", 256), ("pydicom_CT_small.dcm", 128)):
        ds = pydicom.dcmread(REAL / "ct" / name)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mu = np.clip(hu + 1000.0, 0, None)
        x = torch.from_numpy(mu / mu.max())[None, None]
        out[Path(name).stem] = F.interpolate(x, size=(size, size), mode="area")
    return out


def synthetic_images(prior_name: str, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    if prior_name == "mri-brain":
        from diffinverse.datasets.brain import BrainSlices

        x = BrainSlices("test", generator=g).sample(n)
    else:
        from diffinverse.datasets.ct_slices import synthetic_ct_slices

        x = synthetic_ct_slices(n, 128, generator=g)
    return {f"heldout_{i}": x[i:i + 1] for i in range(n)}


def psnr(clean: torch.Tensor, est: torch.Tensor) -> float:
    peak = clean.square().sum(1).sqrt().max().item()
    mse = (clean - est).square().sum(1).mean().item()
    return 10 * math.log10(peak**2 / mse)


def gaussian_filter(x: torch.Tensor, width: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * width))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * width**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def bm3d_denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    import bm3d

    chans = [bm3d.bm3d(x[0, c].numpy().astype(np.float64), sigma_psd=sigma) for c in range(x.shape[1])]
    return torch.from_numpy(np.stack(chans)[None].astype(np.float32))


def heldout_source_images(spec: str, *, max_images: int, heldout_fraction: float = 0.1, axis: int = 2,
                          jpeg_scale: int = 2, max_side: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Held-out images of a ``real-mri:PATH`` / ``real-ct:PATH`` source, ``{name: (1, C, H, W)}``.

    Every image is in the prior range (magnitude's 99.5th percentile = 1); ``real-mri`` images are
    complex (``C = 2``) with the training data's smooth random phase, drawn from a generator seeded
    ``seed + index``. ``max_side > 0``: larger images are first area-averaged by the smallest integer
    factor that brings their longer side to at most ``max_side`` pixels (``RealImages(max_side=)``).
    """
    from diffinverse.datasets.brain import smooth_random_phase
    from diffinverse.datasets.real_images import RealImages
    from diffinverse.imaging import to_prior_range

    kind, _, path = spec.partition(":")
    if kind not in ("real-mri", "real-ct") or not path:
        raise ValueError(f"--real-source must be real-mri:PATH or real-ct:PATH, got {spec!r}")
    mri = kind == "real-mri"
    images = RealImages(path, split="heldout", heldout_fraction=heldout_fraction, ct=not mri, axis=axis,
                        modality="MR" if mri else "CT", jpeg_scale=jpeg_scale, max_side=max_side)
    picks = np.unique(np.linspace(0, len(images) - 1, min(max_images, len(images))).round().astype(int))
    out = {}
    for i in picks.tolist():
        x = images.read(i)
        if mri and x.shape[0] == 1:
            phase = smooth_random_phase(1, tuple(x.shape[-2:]), generator=torch.Generator().manual_seed(seed + i))
            x = torch.cat([x * phase.cos(), x * phase.sin()])
        ref = images.refs[i]
        out[f"{ref.path.name}#{ref.index}"] = to_prior_range(x[None])[0]
    return out


def evaluate(prior, images: dict[str, torch.Tensor], seed: int, with_bm3d: bool,
             sigmas: tuple[float, ...] = SIGMAS) -> dict:
    widths = (0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0, 4.0)
    rows = {}
    for sigma in sigmas:
        g = torch.Generator().manual_seed(seed)
        noisy = {k: v + sigma * torch.randn(v.shape, generator=g) for k, v in images.items()}
        with torch.inference_mode():
            ours = {k: psnr(images[k], prior(v, sigma)) for k, v in noisy.items()}
        per_width = {w: np.mean([psnr(images[k], gaussian_filter(v, w)) for k, v in noisy.items()]) for w in widths}
        best = max(per_width, key=per_width.get)
        gauss = {k: psnr(images[k], gaussian_filter(v, best)) for k, v in noisy.items()}
        row = {"prior": float(np.mean(list(ours.values()))), "gaussian": float(np.mean(list(gauss.values()))),
               "gaussian_width_px": best, "per_image_prior": ours, "per_image_gaussian": gauss}
        if with_bm3d:
            b = {k: psnr(images[k], bm3d_denoise(v, sigma)) for k, v in noisy.items()}
            row["bm3d"] = float(np.mean(list(b.values())))
            row["per_image_bm3d"] = b
        rows[str(sigma)] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="shipped name or .safetensors path")
    ap.add_argument("--kind", choices=["mri-brain", "ct-ellipses"], help="data kind (default: from --prior)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file with the results")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--checkpoint", type=Path, help="training checkpoint whose weights replace --prior's")
    ap.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights of --checkpoint")
    ap.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help="noise levels (prior units)")
    ap.add_argument("--real-source", action="append", default=[],
                    help="real-mri:PATH or real-ct:PATH: also score its held-out split (repeatable)")
    ap.add_argument("--real-max", type=int, default=24, help="at most this many held-out images per --real-source")
    ap.add_argument("--heldout-fraction", type=float, default=0.1, help="as diffinverse-train --heldout-fraction")
    ap.add_argument("--axis", type=int, default=2, help="NIfTI slice axis, as diffinverse-train --axis")
    ap.add_argument("--jpeg-scale", type=int, default=2, help="as diffinverse-train --jpeg-scale")
    ap.add_argument("--real-max-side", type=int, default=0,
                    help="area-average --real-source images to at most this side (0: as read; BM3D time grows with it)")
    ap.add_argument("--only-real-sources", action="store_true",
                    help="score only the --real-source images (no synthetic, no ../shared/data/real)")
    args = ap.parse_args()
    kind = args.kind or args.prior
    from diffinverse.priors.checkpoints import load

    prior = load(args.prior).eval()
    if args.checkpoint is not None:
        from diffinverse.priors.train import load_checkpoint

        prior.load_state_dict(load_checkpoint(args.checkpoint)[args.weights])
    t0 = time.perf_counter()
    sigmas = tuple(args.sigmas)
    result = {
        "prior": args.prior,
        "checkpoint": None if args.checkpoint is None else f"{args.checkpoint} ({args.weights})",
        "sigmas": sigmas,
    }
    if not args.only_real_sources:
        result["synthetic_heldout"] = evaluate(prior, synthetic_images(kind), 0, not args.no_bm3d, sigmas)
        result["real_unseen"] = evaluate(prior, real_mri_images() if kind == "mri-brain" else real_ct_images(), 1,
                                         not args.no_bm3d, sigmas)
    for spec in args.real_source:
        images = heldout_source_images(spec, max_images=args.real_max, heldout_fraction=args.heldout_fraction,
                                       axis=args.axis, jpeg_scale=args.jpeg_scale, max_side=args.real_max_side)
        row = evaluate(prior, images, 2, not args.no_bm3d, sigmas)
        row["images"] = sorted(images)
        result[f"heldout {spec}"] = row
        print(f"{spec}: {len(images)} held-out images, e.g. {sorted(images)[:3]}", flush=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    for part in [k for k in result if k in ("synthetic_heldout", "real_unseen") or k.startswith("heldout ")]:
        print(part)
        print("  sigma   prior  gauss  bm3d")
        for s, r in result[part].items():
            if s == "images":
                continue
            print(f"  {s:5s}  {r['prior']:6.2f} {r['gaussian']:6.2f} {r.get('bm3d', float('nan')):6.2f}")


if __name__ == "__main__":
    main()
