"""Checks and timings that need a GPU (CI has none): run on a CUDA machine, read the JSON.

1. Every torch operator on CUDA: float64 dot-product adjoint test, and float32 outputs equal to
   the CPU's (relative difference).
2. DPS and RED-Diff with the shipped ``mri-brain`` prior on CUDA: same seed -> same result,
   and sampler overhead = wall time / (NFE x one network call) at 64^2 and 256^2, batch 4, timed
   in interleaved rounds; both also with ``cuda_graph=True`` (against the network call replayed
   as a CUDA graph, forward for RED-Diff, forward and input gradient for DPS; with the graphed
   run's difference from the eager one and its speed-up).
3. A ``torch.profiler`` view of RED-Diff's loop at 64^2: kernels per step against the network's.

Usage::

    python benchmarks/gpu/gpu_checks.py --out gpu_checks.json [--rounds 30] [--steps 20] [--graph-only]
        [--cpu-generator] [--skip operators profile]
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
from diffinverse.samplers.cuda_graph import capture_graph
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


def _forward(network, x: torch.Tensor):
    """One network call without autograd (what RED-Diff makes)."""
    def call():
        with torch.inference_mode():
            network(x)
    return call


def _forward_backward(network, x: torch.Tensor):
    """One network call and its vector-Jacobian product with respect to the input only (what DPS
    makes)."""
    def call():
        xr = x.detach().requires_grad_(True)
        out = network(xr)
        torch.autograd.grad(out, xr, grad_outputs=torch.ones_like(out))
    return call


def samplers(prior, dev: torch.device, steps: dict[str, int], sizes: tuple[int, ...] = (64, 256),
             rounds: int = 30, eager: bool = True, cpu_generator: bool = False) -> dict:
    """Overhead = wall time / (NFE x one network call), with the samplers' channels-last input and
    noise from a CUDA generator (optionally also from a CPU generator, whose draws are copied to
    the GPU every step); both samplers with ``cuda_graph=True`` (and eagerly unless ``eager`` is
    off), against the network call replayed as a graph (``prior.denoise`` on a fixed input: no
    copies, no checks). ``steps`` gives each sampler's number of steps (``"DPS"``, ``"REDDiff"``).

    For a graphed sampler, its captured step is also replayed on its own (``steps`` replays in a
    row, no host work between them): ``step_graph_overhead`` = that time / the network's replays,
    the part of the overhead inside the step; the rest of ``overhead`` is per call (setup on the
    host before the first replay, copies in and out).

    GPU clocks and launch latencies drift, so the network calls and the samplers are timed in
    interleaved rounds (after two warm-up runs of each): in a round, as many network calls in a
    row as the sampler has steps for each kind of call, then one run of each sampler. Each round
    gives a ratio; reported are the median ratio over the rounds, its range, and the ratio of the
    fastest times.
    """
    out = {}
    for size in sizes:
        x, physics, y = _mri_problem(size, dev)
        sigma = torch.full((x.shape[0],), 0.5, device=dev)

        checked = lambda t: prior(t, 0.5)              # noqa: E731  the public call, with its checks
        bare = lambda t: prior.denoise(t, sigma)        # noqa: E731  what a captured step runs
        calls = {"fwd": _forward(checked, x), "fb": _forward_backward(checked, x),
                 "fwd_graph": capture_graph(_forward(bare, x), dev)[0],
                 "fb_graph": capture_graph(_forward_backward(bare, x), dev)[0]}
        n_of = {"fwd": steps["REDDiff"], "fwd_graph": steps["REDDiff"], "fb": steps["DPS"], "fb_graph": steps["DPS"]}
        if not eager:
            del calls["fwd"], calls["fb"]
        units = {k: (lambda f=f, n=n_of[k]: [f() for _ in range(n)]) for k, f in calls.items()}
        runs = {}
        for name, cls, kw, unit in (("DPS", DPS, {"zeta": 1.0}, "fb"), ("REDDiff", REDDiff, {}, "fwd")):
            make = lambda **more: cls(prior, num_steps=steps[name], progress=False, **kw, **more)  # noqa: E731
            if eager:
                runs[name] = (make(), dev, unit)
            runs[f"{name}_cuda_graph"] = (make(cuda_graph=True), dev, f"{unit}_graph")
            if eager and cpu_generator:
                runs[f"{name}_cpu_generator"] = (runs[name][0], torch.device("cpu"), unit)
        same_seed = {}
        for key, (sampler, gen_device, _) in runs.items():
            a, b = (sampler(y, physics, generator=torch.Generator(device=gen_device).manual_seed(0)) for _ in "ab")
            same_seed[key] = (a - b).abs().max().item()
        row = {"steps": steps, "rounds": rounds}
        if eager:
            row["cuda_graph_vs_eager"] = {}
            for name in ("DPS", "REDDiff"):
                e, gr = (runs[k][0](y, physics, generator=torch.Generator(device=dev).manual_seed(0))
                         for k in (name, f"{name}_cuda_graph"))
                row["cuda_graph_vs_eager"][name] = {"max_abs_diff": (gr - e).abs().max().item(),
                                                    "eager_abs_max": e.abs().max().item()}
        step_graphs = {}
        for name in ("DPS", "REDDiff"):
            (cap,) = runs[f"{name}_cuda_graph"][0]._graphs._captures.values()

            def replay_steps(cap=cap, n=steps[name]):
                cap.index.zero_()   # the step counter: n replays read the n rows of the table
                for _ in range(n):
                    cap.replay()
            step_graphs[name] = replay_steps
        for fn in (*units.values(), *step_graphs.values()):
            fn()
        times = {k: [] for k in (*units, *runs, *(f"{n}_step_graph" for n in step_graphs))}
        for _ in range(rounds):
            for k, fn in units.items():
                times[k].append(_time(fn) / n_of[k])
            for name, fn in step_graphs.items():
                times[f"{name}_step_graph"].append(_time(fn) / steps[name])
            for key, (sampler, gen_device, _) in runs.items():
                g = torch.Generator(device=gen_device).manual_seed(0)
                times[key].append(_time(lambda: sampler(y, physics, generator=g)))
        row.update({f"net_{k}_s": min(times[k]) for k in units})
        if eager:
            row["cuda_graph_speedup_median"] = {name: statistics.median(
                e / gr for e, gr in zip(times[name], times[f"{name}_cuda_graph"])) for name in ("DPS", "REDDiff")}
        for key, (sampler, _, unit) in runs.items():
            ratios = sorted(w / (sampler.last_nfe * u) for w, u in zip(times[key], times[unit]))
            row[key] = {"wall_s": min(times[key]), "nfe": sampler.last_nfe,
                        "overhead": statistics.median(ratios), "overhead_range": [ratios[0], ratios[-1]],
                        "overhead_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]],
                        "overhead_of_fastest": min(times[key]) / (sampler.last_nfe * min(times[unit])),
                        "same_seed_max_abs_diff": same_seed[key]}
            name = key.removesuffix("_cuda_graph")
            if key.endswith("_cuda_graph"):
                row[key]["step_graph_s"] = min(times[f"{name}_step_graph"])
                row[key]["step_graph_overhead"] = statistics.median(
                    s / u for s, u in zip(times[f"{name}_step_graph"], times[unit]))
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
    ap.add_argument("--steps", type=int, default=20,
                    help="steps of both samplers; 0: their defaults (DPS 200, RED-Diff 100)")
    ap.add_argument("--graph-only", action="store_true", help="time only the cuda_graph samplers")
    ap.add_argument("--cpu-generator", action="store_true", help="also time the samplers with a CPU generator")
    ap.add_argument("--skip", nargs="*", default=[], choices=["operators", "profile"])
    args = ap.parse_args()
    dev = torch.device("cuda")
    prior = load("mri-brain", device=dev)
    steps = {"DPS": args.steps or 200, "REDDiff": args.steps or 100}
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "operators" not in args.skip:
        res["operators"] = operators(dev)
    res["samplers"] = samplers(prior, dev, steps, rounds=args.rounds, eager=not args.graph_only,
                               cpu_generator=args.cpu_generator)
    if "profile" not in args.skip:
        res["reddiff_profile_64"] = profile_reddiff_step(prior, dev)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
