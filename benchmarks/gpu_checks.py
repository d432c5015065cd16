"""Checks and timings that need a GPU (CI has none): run on a CUDA machine, read the JSON.

1. Every torch operator on CUDA: float64 dot-product adjoint test, and float32 outputs equal to
   the CPU's (relative difference).
2. DPS and RED-Diff with the shipped ``mri-brain`` prior on CUDA: same seed -> same result,
   and sampler overhead = wall time / (NFE x one network call) at 64^2 and 256^2, batch 4, timed
   in interleaved rounds; RED-Diff also with ``cuda_graph=True`` (against the replayed network
   call, and its speed-up over the eager run).
3. A ``torch.profiler`` view of RED-Diff's loop at 64^2: kernels per step against the network's.

Usage::

    python benchmarks/gpu_checks.py --out gpu_checks.json [--rounds 30] [--cpu-generator]
"""
from __future__ import annotations

import argparse
import json
import statistics
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
from diffinverse.samplers.cuda_graph import GraphedNetwork
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


def _time(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def _mri_problem(size: int, dev: torch.device) -> tuple[torch.Tensor, SingleCoilMRI, torch.Tensor]:
    """Batch-4 complex images in the samplers' channels-last layout, 4x single-coil MRI, its k-space."""
    x = torch.randn(4, 2, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    mask = random_lines((size, size), 4, 0.08, generator=torch.Generator().manual_seed(0)).to(dev)
    physics = SingleCoilMRI(mask)
    return x, physics, physics.A(x)


def samplers(prior, dev: torch.device, steps: int = 20, sizes: tuple[int, ...] = (64, 256), rounds: int = 30,
             cpu_generator: bool = False) -> dict:
    """Overhead = wall time / (NFE x one network call), with the samplers' channels-last input and
    noise from a CUDA generator (optionally also from a CPU generator, whose draws are copied to
    the GPU every step); RED-Diff also with ``cuda_graph=True``, against the replayed network call.

    GPU clocks and launch latencies drift, so the network calls and the samplers are timed in
    interleaved rounds (after two warm-up runs of each): in a round, ``steps`` network calls in a
    row for each kind of call, then one run of each sampler. Each round gives a ratio; reported are
    the median ratio over the rounds, its range, and the ratio of the fastest times.
    """
    out = {}
    graphed_net = GraphedNetwork(prior)
    for size in sizes:
        x, physics, y = _mri_problem(size, dev)

        def fwd():
            with torch.inference_mode():
                prior(x, 0.5)

        def fwd_graph():
            with torch.inference_mode():
                graphed_net(x, 0.5)

        def fwd_bwd():
            # what DPS needs: the vector-Jacobian product with respect to the input only
            xr = x.clone().requires_grad_(True)
            out = prior(xr, 0.5)
            torch.autograd.grad(out, xr, grad_outputs=torch.ones_like(out))

        units = {"fwd": lambda: [fwd() for _ in range(steps)], "fb": lambda: [fwd_bwd() for _ in range(steps)],
                 "fwd_graph": lambda: [fwd_graph() for _ in range(steps)]}
        runs = {}
        for name, sampler, unit in (("DPS", DPS(prior, num_steps=steps, zeta=1.0, progress=False), "fb"),
                                    ("REDDiff", REDDiff(prior, num_steps=steps, progress=False), "fwd"),
                                    ("REDDiff_cuda_graph", REDDiff(prior, num_steps=steps, progress=False,
                                                                   cuda_graph=True), "fwd_graph")):
            runs[name] = (sampler, dev, unit)
            if cpu_generator and name != "REDDiff_cuda_graph":
                runs[f"{name}_cpu_generator"] = (sampler, torch.device("cpu"), unit)
        same_seed = {}
        for key, (sampler, gen_device, _) in runs.items():
            a, b = (sampler(y, physics, generator=torch.Generator(device=gen_device).manual_seed(0)) for _ in "ab")
            same_seed[key] = (a - b).abs().max().item()
        eager, graphed = (runs[k][0](y, physics, generator=torch.Generator(device=dev).manual_seed(0))
                          for k in ("REDDiff", "REDDiff_cuda_graph"))
        for fn in units.values():
            fn()
        times = {k: [] for k in (*units, *runs)}
        for _ in range(rounds):
            for k, fn in units.items():
                times[k].append(_time(fn) / steps)
            for key, (sampler, gen_device, _) in runs.items():
                g = torch.Generator(device=gen_device).manual_seed(0)
                times[key].append(_time(lambda: sampler(y, physics, generator=g)))
        row = {"net_forward_s": min(times["fwd"]), "net_forward_backward_s": min(times["fb"]),
               "net_forward_cuda_graph_s": min(times["fwd_graph"]), "rounds": rounds,
               "reddiff_cuda_graph_vs_eager_max_abs_diff": (graphed - eager).abs().max().item(),
               "reddiff_cuda_graph_speedup_median": statistics.median(
                   e / gr for e, gr in zip(times["REDDiff"], times["REDDiff_cuda_graph"]))}
        for key, (sampler, _, unit) in runs.items():
            ratios = sorted(w / (sampler.last_nfe * u) for w, u in zip(times[key], times[unit]))
            row[key] = {"wall_s": min(times[key]), "nfe": sampler.last_nfe,
                        "overhead": statistics.median(ratios), "overhead_range": [ratios[0], ratios[-1]],
                        "overhead_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]],
                        "overhead_of_fastest": min(times[key]) / (sampler.last_nfe * min(times[unit])),
                        "same_seed_max_abs_diff": same_seed[key]}
        out[f"{size}x{size}_batch4"] = row
    return out


def profile_reddiff_step(prior, dev: torch.device, size: int = 64, steps: int = 20) -> dict:
    """Kernels and host time of RED-Diff's loop beyond the network (``torch.profiler``), per step."""
    from torch.profiler import ProfilerActivity, profile

    x, physics, y = _mri_problem(size, dev)
    sampler = REDDiff(prior, num_steps=steps, progress=False)
    run = lambda: sampler(y, physics, generator=torch.Generator(device=dev).manual_seed(0))  # noqa: E731
    run()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p_all:
        run()
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p_net:
        with torch.inference_mode():
            for _ in range(steps):
                prior(x, 0.5)
        torch.cuda.synchronize()

    def kernels(p):
        return sum(e.count for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)

    table = p_all.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return {"kernels_per_step_sampler": kernels(p_all) / steps, "kernels_per_step_network": kernels(p_net) / steps,
            "top_ops_by_host_time": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cpu-generator", action="store_true", help="also time the samplers with a CPU generator")
    args = ap.parse_args()
    dev = torch.device("cuda")
    prior = load("mri-brain", device=dev)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "operators": operators(dev),
           "samplers": samplers(prior, dev, rounds=args.rounds, cpu_generator=args.cpu_generator),
           "reddiff_profile_64": profile_reddiff_step(prior, dev)}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
