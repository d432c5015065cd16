"""Our pipeline's TV and DDS against deepinv's HQS, DiffPIR and DPS on the real 8-coil brain (not a test).

Issue 23, "against the peer library, side by side in one run": the ESPIRiT ``brain_alias_8ch``
scan (``real_brain_cli.write_fastmri_file`` reads it), retrospectively undersampled with the
pipeline's masks (:func:`~diffinverse.pipelines.fastmri.retrospective_mask`, 4x, centre 0.08,
one generator seed per mask), every method on the same masks in one process:

* ours: :func:`~diffinverse.pipelines.fastmri.reconstruct_kspace` with ``method="tv"`` and
  ``"dds"`` at the pipeline's defaults (``mri-brain-v2``, both ESPIRiT map sets under the model);
* deepinv's: ``HQS`` with ``PnP(prior)``, ``DiffPIR`` and ``DPS`` from
  ``benchmarks/samplers/bench_deepinv_peers.py`` (the same wrappers and counting), at the settings
  chosen there on the tuning images of the ``mri_8coil_4x_random`` task (none here: this scan is for
  evaluation only), with the same prior on both map sets' images
  (:class:`~diffinverse.priors.stack.ImageStackPrior`) and the pipeline's own data handling: its
  coil maps, intensity scaling, support of the second image and units (the pipeline's
  ``_reconstruct`` with the deepinv method in the sampler's place, started from SENSE of the
  scaled data, as HQS and DiffPIR are in that benchmark; DPS from noise, as deepinv runs it).

PSNR / SSIM against the root-sum-of-squares of the fully sampled coil images
(:mod:`diffinverse.metrics`, as the command line scores files), wall time of the reconstruction
(maps and scaling included), network calls (one call = one pass over both map sets' images).

Usage:
    python benchmarks/cli/real_brain_peers.py /work/shared/data/real/mri_kspace/espirit_brain_alias_8ch.mat \\
        [--masks random equispaced] [--seeds 0 1 2] [--methods tv dds hqs diffpir dps] \\
        [--settings '{"dps": {"steps": 200}}'] [--json benchmarks/results/real_brain/peers_4x.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "samplers"))
sys.path.insert(0, str(HERE))

from bench_deepinv_peers import CountCalls, run_diffpir, run_hqs  # noqa: E402
from bench_end_to_end import deepinv_dps  # noqa: E402
from real_brain_cli import write_fastmri_file  # noqa: E402

import diffinverse.metrics as M  # noqa: E402
from diffinverse._io import atomic_output  # noqa: E402
from diffinverse.pipelines.fastmri import (  # noqa: E402
    _reconstruct,
    calibration_width,
    reconstruct_kspace,
    retrospective_mask,
)
from diffinverse.priors import ImageStackPrior, load  # noqa: E402
from diffinverse.tasks import SAMPLER_SEED, TASKS  # noqa: E402

DEEPINV_SETTINGS = {
    # bench_deepinv_peers.py's choices on mri_8coil_4x_random's tuning images (deepinv_peers.md)
    "hqs": {"c": 100.0, "sigma": 0.05, "iters": 10},
    "diffpir": {"lambda_": 7.0, "zeta": 0.1, "steps": 20},
    "dps": {"weight": 30.0, "steps": 50},
}
"""deepinv's settings, chosen on the tuning images of the synthetic 8-coil 4x task."""


class DeepinvInThePipeline:
    """A deepinv method in the pipeline's sampler seat: ``self(y, physics, **_)`` on the scaled
    measurements of both map sets' images returns its reconstruction; counts network calls."""

    def __init__(self, method: str, prior, params: dict):
        self.method, self.prior, self.params, self.nfe = method, prior, params, 0

    def __call__(self, y, physics, **_):
        with CountCalls(self.prior) as count:
            if self.method == "hqs":
                out = run_hqs(self.prior, y, physics, **self.params)
            elif self.method == "diffpir":
                # x_like only gives the image's shape: A^H y, not a second SENSE solve (DiffPIR runs one)
                out = run_diffpir(TASKS["mri_8coil_4x_random"], self.prior, y, physics, physics.A_adjoint(y),
                                  **self.params)
            else:
                out = deepinv_dps(self.prior, self.params["steps"], y, physics, SAMPLER_SEED, self.params["weight"])
        self.nfe = count.n
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mat", type=Path)
    ap.add_argument("--masks", nargs="+", default=["random", "equispaced"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--acceleration", type=float, default=4.0)
    ap.add_argument("--methods", nargs="+", default=["tv", "dds", "hqs", "diffpir", "dps"],
                    choices=["tv", "dds", "hqs", "diffpir", "dps"])
    ap.add_argument("--settings", type=json.loads, default={},
                    help='deepinv settings over DEEPINV_SETTINGS, e.g. \'{"diffpir": {"steps": 100}}\'')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_fastmri_file(args.mat, Path(tmp) / "brain.h5")
        with h5py.File(Path(tmp) / "brain.h5") as f:
            k, reference = torch.from_numpy(f["kspace"][()]), torch.from_numpy(f["reconstruction_rss"][()])
    prior = load("mri-brain-v2").eval()
    stack = ImageStackPrior(prior)
    rows = []
    for mask_type in args.masks:
        for seed in args.seeds:
            mask = retrospective_mask(tuple(k.shape[-2:]), acceleration=args.acceleration, mask_type=mask_type,
                                      center_fraction=0.08, generator=torch.Generator().manual_seed(seed))
            for method in args.methods:
                t = time.perf_counter()
                if method in ("tv", "dds"):
                    rec = reconstruct_kspace(k, mask, method=method, prior=prior if method == "dds" else None,
                                             generator=torch.Generator().manual_seed(SAMPLER_SEED))
                    image, nfe, params = rec.image, rec.nfe, {}
                else:
                    params = {**DEEPINV_SETTINGS[method], **args.settings.get(method, {})}
                    seat = DeepinvInThePipeline(method, stack, params)
                    out = _reconstruct(k, mask, calibration_width(mask), method, seat, None, None, 1, None,
                                       model_second=True)
                    image, nfe = out["image"], seat.nfe
                seconds = time.perf_counter() - t
                row = {"mask": mask_type, "seed": seed, "lines": int(mask[0].sum()), "method": method,
                       "psnr": M.psnr(reference=reference, estimate=image),
                       "ssim": M.ssim(reference=reference, estimate=image), "seconds": seconds, "nfe": nfe,
                       **params}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json is not None:
        with atomic_output(args.json, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps({"argv": sys.argv[1:], "torch": torch.__version__,
                                             "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
