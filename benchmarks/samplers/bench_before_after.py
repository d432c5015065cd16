"""A code change's effect on sampler speed: two checkouts timed side by side, interleaved, in one run.

For each round and each checkout (``--before`` path, then this one, alternating which goes first),
a fresh subprocess imports that checkout's ``diffinverse`` and times, on the CPU:

* ``network``: one forward+backward of the network (DPS's cost per step) and one forward under
  ``torch.inference_mode`` (RED-Diff's), channels-last, as the samplers call it;
* ``dps`` / ``reddiff``: a whole call of the sampler (``--steps`` steps), and its overhead, the call's
  time over ``steps x`` the network cost measured in the same subprocess.

The network is a small randomly initialised :class:`~diffinverse.priors.unet.UNet`; the operator a
random-pixel inpainting (cheap, so the ratio measures the sampler). Reported: per checkout the median
over rounds, and the after/before ratios.

Usage:
    git worktree add /tmp/before <commit>
    python benchmarks/samplers/bench_before_after.py --before /tmp/before --rounds 5 [--size 64 --steps 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time, torch, deepinv as dinv
torch.set_num_threads({threads})
from diffinverse.priors.unet import UNet
from diffinverse.samplers import DPS, REDDiff
size, steps, ch = {size}, {steps}, {channels}
net = UNet(channels=ch, base_channels=16).eval()
g = torch.Generator().manual_seed(0)
mask = (torch.rand(ch, size, size, generator=g) < 0.5).float()
physics = dinv.physics.Inpainting(img_size=(ch, size, size), mask=mask)
y = physics.A(torch.rand(1, ch, size, size, generator=g))
x = torch.randn(1, ch, size, size, generator=g).contiguous(memory_format=torch.channels_last)

def best(fn, n=5):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

def fwd_bwd():
    xi = x.detach().requires_grad_(True)
    out = net(xi, 0.5)
    torch.autograd.grad(out, xi, grad_outputs=torch.ones_like(out))

def fwd():
    with torch.inference_mode():
        net(x, 0.5)

out = {{"fwd_bwd_ms": 1e3 * best(fwd_bwd), "fwd_ms": 1e3 * best(fwd)}}
dps = DPS(net, num_steps=steps, zeta=0.3, progress=False)
red = REDDiff(net, num_steps=steps, lr=0.05, progress=False)
out["dps_ms"] = 1e3 * best(lambda: dps(y, physics, generator=torch.Generator().manual_seed(1)), 3)
out["reddiff_ms"] = 1e3 * best(lambda: red(y, physics, generator=torch.Generator().manual_seed(1)), 3)
out["dps_overhead"] = out["dps_ms"] / (dps.last_nfe * out["fwd_bwd_ms"])
out["reddiff_overhead"] = out["reddiff_ms"] / (red.last_nfe * out["fwd_ms"])
print(json.dumps(out))
"""


def run(checkout: Path, args) -> dict:
    code = CHILD.format(threads=args.threads, size=args.size, steps=args.steps, channels=args.channels)
    env = {"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="path of the checkout to compare against")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    results = {"before": [], "after": []}
    for r in range(args.rounds):
        order = [("before", args.before), ("after", ROOT)]
        for name, path in (order if r % 2 == 0 else order[::-1]):
            results[name].append(run(path, args))
            print(name, json.dumps(results[name][-1]), flush=True)
    keys = results["before"][0].keys()
    summary = {name: {k: statistics.median(run[k] for run in rows) for k in keys} for name, rows in results.items()}
    summary["after_over_before"] = {k: summary["after"][k] / summary["before"][k] for k in keys}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": results,
                                        "median": summary}, indent=1))


if __name__ == "__main__":
    main()
