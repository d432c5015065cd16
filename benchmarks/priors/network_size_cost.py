"""Cost of one network call of the UNet prior at several widths, side by side in one run.

For each ``--base-channels`` value (the other settings those of the shipped priors: channel
multipliers 1, 2, 2, two residual blocks, 2 channels), builds an untrained UNet (the cost does not
depend on the weights) and times one forward call under ``inference_mode`` in the samplers' layout
(channels-last) at 320 x 256 (one fastMRI brain slice, batch 1) and at 64 x 64 (batch 8),
interleaved over ``--repeats`` rounds (minimum of each; only the ratios measured side by side in
one run mean anything on a shared machine). Prints parameters, milliseconds and the ratio to the
shipped width (32).

Usage::

    python benchmarks/priors/network_size_cost.py --threads 2 --repeats 5 --base-channels 16 32 48 64 \
        --json benchmarks/results/network_size_cost.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from diffinverse._io import atomic_output
from diffinverse.priors.unet import UNet
from diffinverse.samplers.network import in_layout

SHIPPED_WIDTH = 32
PROBLEMS = ((320, 256, 1), (64, 64, 8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-channels", type=int, nargs="+", default=[16, 32, 48, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {w: UNet(channels=2, base_channels=w).eval().requires_grad_(False) for w in args.base_channels}
    rows = []
    for h, w, batch in PROBLEMS:
        x = in_layout(torch.randn(batch, 2, h, w, generator=torch.Generator().manual_seed(0)), torch.channels_last)
        best = {k: float("inf") for k in nets}
        for r in range(args.repeats + 1):   # round 0 warms up
            for width, net in nets.items():
                t = time.perf_counter()
                with torch.inference_mode():
                    net(x, 0.3)
                if r:
                    best[width] = min(best[width], time.perf_counter() - t)
        for width, net in nets.items():
            row = {"base_channels": width, "parameters": sum(p.numel() for p in net.parameters()),
                   "size": [h, w], "batch": batch, "forward_ms": 1000 * best[width],
                   "ratio_to_shipped": best[width] / best[SHIPPED_WIDTH] if SHIPPED_WIDTH in best else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with atomic_output(args.json, overwrite=True) as tmp, open(tmp, "w") as f:
            json.dump({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
