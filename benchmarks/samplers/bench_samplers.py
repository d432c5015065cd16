"""Sampler overhead and our DPS against deepinv's DPS, at equal steps and per network evaluation.

deepinv's DPS with ``num_steps`` timesteps calls the network ``num_steps - 1`` times (its ancestral
solver skips the last), ours ``num_steps`` times; both ratios are printed.

Overhead = wall time / (NFE x network cost per step), where the cost per step is one forward and
backward pass for DPS (its guidance differentiates through the network) and one forward pass
under ``torch.inference_mode`` for RED-Diff. 1.00 means the loop adds nothing to the network.
The network is a small randomly initialised :class:`diffinverse.priors.unet.UNet` (speed does
not depend on the weights). The operator is a random-pixel inpainting (cheap, so the ratio
measures the sampler, not the physics). Our samplers hand the network channels-last input (their
default), deepinv the standard layout; each overhead is taken against the network call in the
layout its sampler uses.

Usage:
    python benchmarks/samplers/bench_samplers.py --size 64 --steps 10 --threads 2 [--channels 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import deepinv as dinv
import torch

from diffinverse.priors.unet import UNet
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1, help="image channels (2: complex MRI-like)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    prior = UNet(channels=args.channels, base_channels=args.base_channels, channel_mult=(1, 2, 2), num_res_blocks=1,
                 data_range=(0.0, 1.0)).to(device).eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in prior.parameters())
    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, args.channels, args.size, args.size)
    x_true = torch.rand(shape, generator=g, device=device)
    physics = dinv.physics.Inpainting(img_size=shape[1:], mask=0.5, device=device, rng=g)
    y = physics(x_true)
    sigma = 1.0

    # the network call in the standard layout (deepinv's) and in channels-last (our samplers' default)
    nhwc = x_true.contiguous(memory_format=torch.channels_last)

    def fwd(x=nhwc):
        with torch.inference_mode():
            prior(x, sigma)

    def fwd_bwd(x=nhwc):
        x = x.clone().requires_grad_(True)
        out = prior(x, sigma)
        torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out))

    dps = DPS(prior, num_steps=args.steps, zeta=1.0, progress=False)
    red = REDDiff(prior, num_steps=args.steps, progress=False)
    # deepinv's DPS (VP schedule, DDPM solver, its own loop) on the same network and steps
    theirs = dinv.sampling.DPS(prior, num_steps=args.steps, device=device, dtype=torch.float32,
                               rng=torch.Generator(device=device))
    runs = {
        "fwd": lambda: [fwd() for _ in range(args.steps)],
        "fwd_bwd": lambda: [fwd_bwd() for _ in range(args.steps)],
        "fwd_bwd_standard": lambda: [fwd_bwd(x_true) for _ in range(args.steps)],
        "dps": lambda: dps(y, physics, generator=torch.Generator(device=device).manual_seed(0)),
        "reddiff": lambda: red(y, physics, generator=torch.Generator(device=device).manual_seed(0)),
        "deepinv_dps": lambda: theirs(y, physics, seed=0),
    }
    # interleaved rounds (network alone: as many calls as steps in a row), the first a warm-up;
    # minimum of each over the rounds, and per-round ratios ours / deepinv (robust to other
    # processes sharing the CPU: both runs of a round see the same conditions)
    times = {k: [] for k in runs}
    for r in range(args.repeats + 1):
        for name, fn in runs.items():
            t = _timed(fn, device)
            if r > 0:
                times[name].append(t)
    best = {k: min(v) for k, v in times.items()}
    t_f, t_fb, t_fb_std = (best[k] / args.steps for k in ("fwd", "fwd_bwd", "fwd_bwd_standard"))
    t_dps, t_red, t_theirs = best["dps"], best["reddiff"], best["deepinv_dps"]
    nfe_dps, nfe_red = dps.last_nfe, red.last_nfe
    # deepinv's ancestral solver skips the network at its last timestep: count its calls
    calls = []
    hook = prior.register_forward_hook(lambda *_: calls.append(1))
    runs["deepinv_dps"]()
    hook.remove()
    nfe_theirs = len(calls)

    print(f"device={device} threads={args.threads} size={args.size} steps={args.steps} "
          f"UNet params={n_params / 1e6:.2f}M")
    print(f"network: forward {t_f * 1e3:.1f} ms, forward+backward {t_fb * 1e3:.1f} ms (channels-last input), "
          f"forward+backward {t_fb_std * 1e3:.1f} ms (standard layout)")
    print(f"DPS (ours):      {t_dps:.3f} s, NFE {nfe_dps}, overhead {t_dps / (nfe_dps * t_fb):.3f} x (fwd+bwd)")
    print(f"RED-Diff (ours): {t_red:.3f} s, NFE {nfe_red}, overhead {t_red / (nfe_red * t_f):.3f} x (fwd)")
    print(f"DPS (deepinv):   {t_theirs:.3f} s, NFE {nfe_theirs}, overhead {t_theirs / (nfe_theirs * t_fb_std):.3f} x "
          f"(fwd+bwd, standard layout)")
    print(f"speed ratio deepinv / ours at {args.steps} steps: {t_theirs / t_dps:.3f}; "
          f"per network evaluation: {(t_theirs / nfe_theirs) / (t_dps / nfe_dps):.3f}")

    def per_round(num, den, scale=1.0):
        r = sorted(scale * a / b for a, b in zip(times[num], times[den]))
        return f"median {statistics.median(r):.3f}, range {r[0]:.3f}-{r[-1]:.3f}"

    # the loop's own share, measured inside each run (robust to the machine's slow phases): wall time
    # over the time spent inside the network calls of that run (forward hooks; on a GPU these would
    # time kernel launches, not kernels, so CPU only)
    if device.type == "cpu":
        shares = []
        for _ in range(3):
            inside = []
            pre = prior.register_forward_pre_hook(lambda *_: inside.append(-time.perf_counter()))
            post = prior.register_forward_hook(lambda *_: inside.append(time.perf_counter()))
            wall = _timed(runs["reddiff"], device)
            pre.remove()
            post.remove()
            shares.append(wall / sum(inside))
        print(f"RED-Diff, wall time / time inside its network calls, three runs: "
              f"{', '.join(f'{r:.4f}' for r in shares)}")
    print(f"per round ({args.repeats} rounds): deepinv / ours at {args.steps} steps "
          f"{per_round('deepinv_dps', 'dps')}; overhead DPS {per_round('dps', 'fwd_bwd', args.steps / nfe_dps)}, "
          f"RED-Diff {per_round('reddiff', 'fwd', args.steps / nfe_red)}")


if __name__ == "__main__":
    main()
