"""Generate the bundled demo file ``diffinverse/datasets/data/demo_brain.h5`` (run once).

The demo is a small multi-coil brain "scan" in fastMRI's layout, simulated from held-out
slices of the MNI152 template so that it contains nothing the shipped ``mri-brain`` prior was
trained on:

1. ``num_slices`` complex slices from :class:`diffinverse.datasets.brain.BrainSlices` with
   ``split="test"`` (the template slab held out from the prior's training; domain-randomised
   contrast, skull/scalp shells, bias field, smooth phase and image noise), 256 x 256 at 1 mm,
   scaled so the magnitude's 99.5th percentile is 1;
2. resampled to ``pixel_mm`` pixels (antialiased bilinear) and centre-cropped to ``shape``;
3. multiplied by ``num_coils`` simulated birdcage coil sensitivities
   (``sigpy.mri.birdcage_maps``, scaled so their root-sum-of-squares peaks at 1);
4. Fourier transformed (centred, orthonormal), complex Gaussian noise of standard deviation
   ``noise`` added per k-space sample (the same per pixel in the image domain);
5. multiplied by ``amplitude`` to put the values in the range of fastMRI's raw data (~1e-4).

The file holds ``kspace (S, C, H, W)`` complex64 (fully sampled, no readout oversampling),
``reconstruction_rss (S, H, W)`` float32 (root-sum-of-squares of the noisy coil images, fastMRI's
reference), an ``ismrmrd_header`` with the matrix and field of view, and the attributes
``acquisition``, ``max``, ``norm``, ``patient_id``.

Command (what produced the bundled file)::

    python -m diffinverse.datasets.demo --output diffinverse/datasets/data/demo_brain.h5

References:
    Zbontar et al., "fastMRI", 2018 (file layout). Fonov et al., NeuroImage 2011 (MNI152 2009).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffinverse.datasets.fastmri import write_fastmri_file

__all__ = ["make_demo", "main"]


def make_demo(path: str | Path, *, num_slices: int = 4, num_coils: int = 8, shape: tuple[int, int] = (160, 128),
              pixel_mm: float = 1.5, noise: float = 0.01, amplitude: float = 1e-4, seed: int = 0,
              overwrite: bool = False) -> Path:
    """Simulate the demo file (see the module docstring for the steps).

    Args:
        path: output ``.h5``.
        num_slices: slices ``S``.
        num_coils: receive coils ``C``.
        shape: ``(H, W)`` image and k-space size (rows = readout, columns = phase encode).
        pixel_mm: in-plane pixel size after resampling the 1 mm template slices.
        noise: k-space noise standard deviation, relative to the images' 99.5th-percentile magnitude.
        amplitude: global scale of k-space and reference.
        seed: seed of the slices, coils noise (explicit generators; the global RNG is untouched).
        overwrite: replace an existing file.

    Returns:
        The path written.
    """
    import sigpy.mri

    from diffinverse.datasets.brain import BrainSlices
    from diffinverse.operators.mri import fft2c, ifft2c, to_complex

    g = torch.Generator().manual_seed(seed)
    x = BrainSlices("test", generator=g).sample(num_slices)                      # (S, 2, 256, 256)
    x = F.interpolate(x, scale_factor=1.0 / pixel_mm, mode="bilinear", antialias=True, align_corners=False)
    h, w = shape
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"shape {shape} is larger than the resampled slices {tuple(x.shape[-2:])}")
    z = to_complex(x[..., top:top + h, left:left + w].contiguous()).to(torch.complex64)  # (S, H, W)

    maps = torch.from_numpy(sigpy.mri.birdcage_maps((num_coils, h, w)).astype(np.complex64))
    maps = maps / maps.abs().pow(2).sum(0).sqrt().max()
    k = fft2c(maps[None] * z[:, None])                                          # (S, C, H, W)
    k = k + noise * torch.complex(torch.randn(k.shape, generator=g), torch.randn(k.shape, generator=g)) / np.sqrt(2)
    k = amplitude * k
    rss = ifft2c(k).abs().pow(2).sum(1).sqrt()
    return write_fastmri_file(
        path, k.numpy(), targets={"reconstruction_rss": rss.numpy()}, recon_size=shape,
        fov_mm=(h * pixel_mm, w * pixel_mm, 1.0), overwrite=overwrite,
        attrs={"acquisition": "SIMULATED_MNI152", "patient_id": f"mni152-test-slab-seed{seed}"})


def main(argv: list[str] | None = None) -> int:
    """``python -m diffinverse.datasets.demo --output PATH``: write the demo file."""
    p = argparse.ArgumentParser(description="Simulate the bundled multi-coil demo file in fastMRI layout.")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "data" / "demo_brain.h5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = make_demo(args.output, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
