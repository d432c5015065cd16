"""``diffinverse-reconstruct`` on a real fully sampled 8-coil brain scan (not a test).

The ESPIRiT "brain_alias_8ch" k-space (``DATA (320, 256, 8)``, axial T1, phase encoding along
the columns, only the central 168 columns non-zero, a field of view that wraps) is written to a
temporary fastMRI-layout file, a project-made derivative that is deleted afterwards: ``kspace``
``(1, 8, 320, 256)`` and, as the reference, ``reconstruction_rss`` = the root-sum-of-squares of the
fully sampled coil images. The command line then undersamples it retrospectively (its ``--mask``,
``--acceleration``, ``--seed``) and reconstructs it with each ``--sampler`` at its defaults (DPS and
RED-Diff on the first ESPIRiT map set's image, warm-started from two-map SENSE at sigma 0.2,
50-step grid, shipped ``mri-brain`` prior), reporting PSNR/SSIM against the reference for the
sampler and for the zero-filled and SENSE baselines, as it does for any fastMRI file.

Usage:
    python benchmarks/cli/real_brain_cli.py /work/shared/data/real/mri_kspace/espirit_brain_alias_8ch.mat \\
        [--masks random equispaced] [--samplers dps reddiff tv] [--acceleration 4] [--seeds 0] \\
        [--options --warm-start tv]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch

from diffinverse.operators.coils import rss
from diffinverse.operators.mri import ifft2c
from diffinverse.reconstruct import main as reconstruct


def write_fastmri_file(mat: Path, out: Path) -> None:
    """The .mat k-space as a one-slice fastMRI multi-coil file with an RSS reference."""
    data = scipy.io.loadmat(mat)["DATA"]  # (H, W, C), centred k-space
    k = np.ascontiguousarray(data.transpose(2, 0, 1)).astype(np.complex64)[None]  # (1, C, H, W)
    ref = rss(ifft2c(torch.from_numpy(k)), dim=1).numpy().astype(np.float32)  # (1, H, W)
    with h5py.File(out, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("reconstruction_rss", data=ref)
        f.attrs["acquisition"] = "AXT1 (ESPIRiT brain_alias_8ch, converted)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mat", type=Path)
    ap.add_argument("--masks", nargs="+", default=["random", "equispaced"])
    ap.add_argument("--samplers", nargs="+", default=["dps", "reddiff"])
    ap.add_argument("--acceleration", type=float, default=4.0)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--options", nargs=argparse.REMAINDER, default=[],
                    help="further command-line options for every run, e.g. --options --warm-start tv")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "espirit_brain.h5"
        write_fastmri_file(args.mat, src)
        for mask in args.masks:
            for seed in args.seeds:
                for sampler in args.samplers:
                    out = Path(tmp) / f"{mask}_{seed}_{sampler}"
                    status = reconstruct([str(src), "--output", str(out), "--sampler", sampler, "--mask", mask,
                                          "--acceleration", str(args.acceleration), "--seed", str(seed),
                                          "--device", "cpu", *args.options])
                    if status != 0:
                        raise SystemExit(f"diffinverse-reconstruct failed ({status}) for {sampler}, {mask}")
                    record = json.loads((out / "espirit_brain.metrics.json").read_text())
                    scores = record["metrics"]["reconstruction_rss"]
                    rows.append({"mask": mask, "seed": seed, "sampler": sampler, "nfe": record["nfe"],
                                 "seconds": record["seconds"],
                                 **{f"{name} psnr/ssim": f"{s['psnr']:.2f} / {s['ssim']:.4f}"
                                    for name, s in scores.items()}})
                    print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
