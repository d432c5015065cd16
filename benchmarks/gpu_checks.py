"""Checks and timings that need a GPU (CI has none): run on a CUDA machine, read the JSON.

1. Every torch operator on CUDA: float64 dot-product adjoint test, and float32 outputs equal to
   the CPU's (relative difference).
2. DPS and RED-Diff with the shipped ``mri-brain`` prior on CUDA: same seed -> same result,
   and sampler overhead = wall time / (NFE x one network call) at 64^2 and 256^2, batch 4, with
   noise from a CUDA generator and from a CPU generator.

Usage::

    python benchmarks/gpu_checks.py --out gpu_checks.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from diffinverse.operators.blur import Blur, gaussian_kernel
from diffinverse.operators.ct import CT
from diffinverse.operators.inpainting import Inpainting, random_mask
from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import MultiCoilMRI, SingleCoilMRI
from diffinverse.operators.superres import SuperResolution
from diffinverse.operators.volume import SliceStack
from diffinverse.priors.checkpoints import load
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff
from diffinverse.testing import adjoint_mismatch


def operators(dev: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = random_lines((64, 64), 4, 0.08, generator=g)
    maps = torch.randn(8, 64, 64, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().square().sum(0).sqrt()
    cases = {
        "SingleCoilMRI": (lambda d, t: SingleCoilMRI(mask.to(d, t)), (2, 2, 64, 64)),
        "MultiCoilMRI": (lambda d, t: MultiCoilMRI(mask.to(d, t), maps.to(d, torch.complex128 if t == torch.float64
                                                                           else torch.complex64)), (2, 2, 64, 64)),
        "CT-torch-parallel": (lambda d, t: CT(64, torch.linspace(0, 3.1416, 30)[:-1], backend="torch").to(d),
                              (2, 1, 64, 64)),
        "CT-torch-fan": (lambda d, t: CT(64, torch.linspace(0, 6.2832, 40)[:-1], geometry="fan", backend="torch",
                                         source_distance=128.0, detector_distance=64.0).to(d), (2, 1, 64, 64)),
        "Blur": (lambda d, t: Blur(gaussian_kernel(1.5).to(d, t)), (2, 2, 64, 64)),
        "Inpainting": (lambda d, t: Inpainting(random_mask((64, 64), 0.5, generator=torch.Generator().manual_seed(1))
                                               .to(d, t)), (2, 1, 64, 64)),
        "SuperResolution": (lambda d, t: SuperResolution(4).to(d), (2, 1, 64, 64)),
        "SliceStack(Blur)": (lambda d, t: SliceStack(Blur(gaussian_kernel(1.0).to(d, t))), (1, 1, 5, 32, 32)),
    }
    out = {}
    for name, (make, shape) in cases.items():
        try:
            err64 = adjoint_mismatch(make(dev, torch.float64), shape, device=dev)
            x = torch.randn(shape, generator=g)
            y_cpu = make(torch.device("cpu"), torch.float32).A(x)
            y_gpu = make(dev, torch.float32).A(x.to(dev)).cpu()
            rel = ((y_gpu - y_cpu).norm() / y_cpu.norm()).item()
            out[name] = {"adjoint_mismatch_float64": err64, "cuda_vs_cpu_rel_diff_float32": rel}
        except Exception as e:  # report and go on: this is a survey, not a test
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _time(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def samplers(dev: torch.device, steps: int = 20, sizes: tuple[int, ...] = (64, 256)) -> dict:
    """Overhead = wall time / (NFE x one network call), the call timed ``steps`` times in a row with
    the samplers' channels-last input; noise from a CUDA generator (and, for comparison, from a CPU
    generator, whose draws are copied to the GPU every step)."""
    prior = load("mri-brain", device=dev)
    out = {}
    for size in sizes:
        x = torch.randn(4, 2, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        mask = random_lines((size, size), 4, 0.08, generator=torch.Generator().manual_seed(0)).to(dev)
        physics = SingleCoilMRI(mask)
        y = physics.A(x)

        def fwd():
            with torch.inference_mode():
                prior(x, 0.5)

        def fwd_bwd():
            xr = x.clone().requires_grad_(True)
            prior(xr, 0.5).square().sum().backward()

        t_fwd = _time(lambda: [fwd() for _ in range(steps)]) / steps
        t_fb = _time(lambda: [fwd_bwd() for _ in range(steps)]) / steps
        row = {"net_forward_s": t_fwd, "net_forward_backward_s": t_fb}
        for name, sampler, unit in (("DPS", DPS(prior, num_steps=steps, zeta=1.0, progress=False), t_fb),
                                    ("REDDiff", REDDiff(prior, num_steps=steps, progress=False), t_fwd)):
            for gen_device in (dev, torch.device("cpu")):
                def run(seed=0):
                    return sampler(y, physics, generator=torch.Generator(device=gen_device).manual_seed(seed))

                a, b = run(), run()
                wall = _time(run)
                key = name if gen_device == dev else f"{name}_cpu_generator"
                row[key] = {"wall_s": wall, "nfe": sampler.last_nfe, "overhead": wall / (sampler.last_nfe * unit),
                            "same_seed_max_abs_diff": (a - b).abs().max().item()}
        out[f"{size}x{size}_batch4"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "operators": operators(dev), "samplers": samplers(dev)}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
