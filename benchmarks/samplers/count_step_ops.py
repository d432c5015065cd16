"""Host-side operations of one RED-Diff step beyond the network call (CPU, no GPU needed).

On a GPU at small sizes the sampling loop is bound by kernel launches, so every tensor operation
the step dispatches costs about as much as a network kernel. This counts the ATen operations
dispatched between two network calls (a ``TorchDispatchMode`` hook; the network's own are not
counted) on the samplers' default single-coil 4x MRI problem, and lists them.

Usage:
    python benchmarks/samplers/count_step_ops.py [--size 64] [--list]
"""
from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffinverse.operators.masks import random_lines
from diffinverse.operators.mri import SingleCoilMRI
from diffinverse.priors.unet import UNet
from diffinverse.samplers.reddiff import REDDiff


class _OpLog(TorchDispatchMode):
    """Records every dispatched ATen operation while ``recording`` is set."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.recording = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.recording:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _MarkedNetwork(torch.nn.Module):
    """The network, unrecorded, leaving one ``NETWORK`` marker in the log per call."""

    def __init__(self, net: UNet, log: _OpLog):
        super().__init__()
        self.net, self.log = net, log
        self.sigma_min, self.sigma_max, self.data_range = net.sigma_min, net.sigma_max, net.data_range

    def forward(self, x, sigma):
        self.log.recording = False
        out = self.net(x, sigma)
        self.log.recording = True
        self.log.ops.append("NETWORK")
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--list", action="store_true", help="print the operations of one step")
    args = ap.parse_args()
    net = UNet(channels=2, base_channels=8, channel_mult=(1,), num_res_blocks=1, data_range=(0.0, 1.0)).eval()
    mask = random_lines((args.size, args.size), 4, 0.08, generator=torch.Generator().manual_seed(0))
    physics = SingleCoilMRI(mask)
    y = physics.A(torch.rand(4, 2, args.size, args.size, generator=torch.Generator().manual_seed(1)))
    log = _OpLog()
    sampler = REDDiff(_MarkedNetwork(net, log), num_steps=args.steps, progress=False)
    with log:
        sampler(y, physics, generator=torch.Generator().manual_seed(0))
    marks = [i for i, op in enumerate(log.ops) if op == "NETWORK"]
    between = [b - a - 1 for a, b in zip(marks, marks[1:])]
    print(f"RED-Diff, {args.size}x{args.size} single-coil MRI: host-side operations per step beyond the network: "
          f"{between}")
    if args.list:
        print("\n".join(log.ops[marks[1] + 1:marks[2]]))


if __name__ == "__main__":
    main()
