"""``diffinverse-reconstruct`` on a real fully sampled 8-coil brain scan (not a test).

The ESPIRiT "brain_alias_8ch" k-space (``DATA (320, 256, 8)``, axial T1, phase encoding along
the columns, only the central 168 columns non-zero, a field of view that wraps) is written to a
temporary fastMRI-layout file, a project-made derivative that is deleted afterwards: ``kspace``
``(1, 8, 320, 256)`` and, as the reference, ``reconstruction_rss`` = the root-sum-of-squares of the
fully sampled coil images. The command line then undersamples it retrospectively (its ``--mask``,
``--acceleration``, ``--seed``) and reconstructs it with each ``--sampler`` at its defaults (the
pipeline's ``SAMPLER_DEFAULTS``: warm starts from SENSE, the ``mri-brain-v2`` prior, both ESPIRiT
map sets under the model), reporting PSNR/SSIM against the reference for the sampler and for the
zero-filled and SENSE baselines, as it does for any fastMRI file.

Usage:
    python benchmarks/cli/real_brain_cli.py /work/shared/data/real/mri_kspace/espirit_brain_alias_8ch.mat \\
        [--masks random equispaced] [--samplers dps reddiff tv] [--acceleration 4] [--seeds 0] \\
        [--options --warm-start tv]
    python benchmarks/cli/real_brain_cli.py ... --samplers dds reddiff --adapt '{"lr": 1e-3, "every": 2}'

``--adapt JSON`` runs the diffusion samplers with test-time adaptation of the prior
(:class:`~diffinverse.samplers.adaptation.Adaptation`; the JSON object holds its fields, which
the command line's ``--adapt-*`` options do not all reach): for the whole run of this script, the
samplers that the pipeline builds (:func:`diffinverse.pipelines.fastmri.build_sampler`) get it
set, and each row adds the network forward and backward passes adaptation spent.

``--tv-lambda L`` sets the pipeline's TV weight (:data:`diffinverse.pipelines.fastmri.TV_LAMBDA`,
on the scaled data) for the whole run: the sweep behind TV's upper bound on this scan, which is
an oracle (the weight is chosen on the evaluation scan itself), never a default.
"""
from __future__ import annotations

import argparse
import functools
import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch

import diffinverse.pipelines.fastmri as pipeline
import diffinverse.reconstruct as cli
from diffinverse.operators.coils import rss
from diffinverse.operators.mri import ifft2c
from diffinverse.reconstruct import main as reconstruct
from diffinverse.samplers.adaptation import Adaptation


def write_fastmri_file(mat: Path, out: Path) -> None:
    """The .mat k-space as a one-slice fastMRI multi-coil file with an RSS reference."""
    data = scipy.io.loadmat(mat)["DATA"]  # (H, W, C), centred k-space
    k = np.ascontiguousarray(data.transpose(2, 0, 1)).astype(np.complex64)[None]  # (1, C, H, W)
    ref = rss(ifft2c(torch.from_numpy(k)), dim=1).numpy().astype(np.float32)  # (1, H, W)
    with h5py.File(out, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("reconstruction_rss", data=ref)
        f.attrs["acquisition"] = "AXT1 (ESPIRiT brain_alias_8ch, converted)"


def _build_adapted(original, adapt: Adaptation, built: list, *args, **kwargs):
    """The pipeline's sampler with ``adapt`` set, remembered in ``built``."""
    sampler = original(*args, **kwargs)
    sampler.adapt = adapt
    built.append(sampler)
    return sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mat", type=Path)
    ap.add_argument("--masks", nargs="+", default=["random", "equispaced"])
    ap.add_argument("--samplers", nargs="+", default=["dps", "reddiff"])
    ap.add_argument("--acceleration", type=float, default=4.0)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--adapt", type=json.loads, default=None,
                    help="test-time adaptation of the prior: a JSON object of Adaptation's fields")
    ap.add_argument("--tv-lambda", type=float, default=None,
                    help=f"TV weight for this run (default: the pipeline's {pipeline.TV_LAMBDA}); oracle sweeps only")
    ap.add_argument("--options", nargs=argparse.REMAINDER, default=[],
                    help="further command-line options for every run, e.g. --options --warm-start tv")
    args = ap.parse_args()
    built: list = []
    if args.tv_lambda is not None:
        pipeline.TV_LAMBDA = args.tv_lambda   # read by the pipeline at each TV solve
    if args.adapt is not None:   # every sampler the pipeline builds in this process adapts
        build = functools.partial(_build_adapted, pipeline.build_sampler, Adaptation(**args.adapt), built)
        pipeline.build_sampler = cli.build_sampler = build
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
                    records = [b.last_adaptation for b in built if b.last_adaptation is not None]
                    if records:
                        rows[-1].update(adapt=args.adapt, adapt_forward=sum(r.forward_passes for r in records),
                                        adapt_backward=sum(r.backward_passes for r in records))
                        built.clear()
                    print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
