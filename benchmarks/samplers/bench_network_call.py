"""Cost of one network call of a shipped prior under the sampler's options: memory format, bf16 autocast,
compile, and the UNet's batch split on the CPU.

For a shipped UNet (``--prior``, default ``mri-brain``, 1.53M parameters) at 64x64 (batch 8) and
256x256 (batch 1), times one forward (RED-Diff's call, under ``inference_mode``) and one
forward+backward (DPS's call) with contiguous (NCHW) inputs and with channels-last inputs (the
samplers' :func:`~diffinverse.samplers.network.in_layout`, which also gives a 1-channel image
channels-last strides), interleaved over ``--repeats`` rounds (minimum of each; machines here are
noisy, so only the ratios measured side by side in one run mean anything), and counts the minor
page faults of a call. ``--autocast`` adds both layouts under bf16 autocast (the samplers'
``autocast=True``), and prints the largest difference of its forward output from float32's;
``--compile`` adds ``torch.compile`` of the prior (compilation time excluded). ``--batch-split``
instead compares, on batches of 256x256 and 128x128 images, the UNet's default on the CPU (a batch
split into parts, see ``diffinverse/priors/unet.py``) with one call on the whole batch.
``--widths W ...`` instead compares untrained UNets of the prior's layout at other widths
(``base_channels``; the cost does not depend on the weights), channels-last, the prior's own
width first.

Usage::

    python benchmarks/samplers/bench_network_call.py --threads 2 --repeats 5 [--prior ct-ellipses] [--autocast | --batch-split]
    python benchmarks/samplers/bench_network_call.py --threads 2 --repeats 5 --prior mri-brain-v2 \
        --widths 16 48 64 --sizes 256x1,64x8
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time

import torch

from diffinverse.priors import load, unet
from diffinverse.samplers.network import in_layout


def _call(prior, x, sigma, backward, bf16=False, one_call=False):
    cast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if one_call:  # no batch split: a budget that any batch fits
        budget, unet._CPU_ACTIVATION_BUDGET = unet._CPU_ACTIVATION_BUDGET, 1 << 62
        try:
            return _call(prior, x, sigma, backward, bf16)
        finally:
            unet._CPU_ACTIVATION_BUDGET = budget
    if not backward:
        with torch.inference_mode(), cast:
            return prior(x, sigma).to(x.dtype)
    x = x.detach().requires_grad_(True)
    with cast:
        out = prior(x, sigma).to(x.dtype)
    (g,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out))
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prior", default="mri-brain", choices=["mri-brain", "mri-brain-v2", "ct-ellipses"])
    ap.add_argument("--autocast", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--batch-split", action="store_true")
    ap.add_argument("--widths", type=int, nargs="+", default=None,
                    help="compare the prior's width with these base_channels (untrained networks)")
    ap.add_argument("--sizes", default=None,
                    help="SIZExBATCH,... instead of the default problems (e.g. 256x8: malloc's state carries "
                         "over from one problem to the next, so run one per process to see each alone)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    prior = load(args.prior, device=dev).eval().requires_grad_(False)
    # name: (network, input layout, bf16, one call on the whole batch); speed-ups are against the first
    variants = {"contiguous": (prior, torch.contiguous_format, False, False),
                "channels_last": (prior, torch.channels_last, False, False)}
    problems = ((64, 8), (256, 1))
    if args.batch_split:
        variants = {"one_call": (prior, torch.channels_last, False, True),
                    "split": (prior, torch.channels_last, False, False)}
        problems = ((256, 8), (256, 4), (128, 16))
    if args.widths:
        config = prior.config

        def untrained(width):
            net = unet.UNet(**{**config, "base_channels": width, "emb_channels": None})
            return net.to(dev).eval().requires_grad_(False)

        variants = {f"width_{w}": (prior if w == config["base_channels"] else untrained(w), torch.channels_last,
                                   False, False)
                    for w in dict.fromkeys([config["base_channels"], *args.widths])}
        for name, (net, *_) in variants.items():
            print(f"{name}: {sum(p.numel() for p in net.parameters()):,} parameters")
    if args.autocast:
        variants["contiguous_bf16"] = (prior, torch.contiguous_format, True, False)
        variants["channels_last_bf16"] = (prior, torch.channels_last, True, False)
    if args.compile:
        variants["compiled"] = (torch.compile(prior), torch.contiguous_format, False, False)
    if args.sizes:
        problems = [tuple(int(v) for v in p.split("x")) for p in args.sizes.split(",")]
    first = next(iter(variants))
    rows = []
    for size, batch in problems:
        x0 = torch.randn(batch, prior.channels, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
        if args.autocast:
            x = in_layout(x0, torch.channels_last)
            error = (_call(prior, x, 0.3, False, True) - _call(prior, x, 0.3, False)).abs().max().item()
            print(f"{size}x{size}: bf16 forward differs from float32 by at most {error:.2g}")
        for backward in (False, True):
            best, faults = {k: float("inf") for k in variants}, {}
            for r in range(args.repeats + 1):  # round 0 warms up (and compiles)
                for name, (net, fmt, bf16, one_call) in variants.items():
                    x = in_layout(x0, fmt)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    t = time.perf_counter()
                    _call(net, x, 0.3, backward, bf16, one_call)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    if r:
                        best[name] = min(best[name], time.perf_counter() - t)
                        faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
            row = {"size": size, "batch": batch, "call": "forward+backward" if backward else "forward",
                   **{f"{k}_ms": 1000 * v for k, v in best.items()},
                   **{f"{k}_page_faults": v for k, v in faults.items()},
                   **{f"{k}_speedup": best[first] / v for k, v in best.items() if k != first}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
