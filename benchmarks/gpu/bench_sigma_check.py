"""A float sigma checked on the host against the former check on the device (GPU only).

The priors' ``as_sigma`` used to turn a float sigma into a device tensor (a host-to-device copy)
and check it there (``isfinite(s).all()``, ``(s < 0).any()``: two host synchronisations per network
call); it now checks the float on the host and fills the tensor on the device. This times the
shipped ``mri-brain`` network's forward pass both ways (the former path re-created here), batch 4,
in 30 interleaved rounds of 20 calls after 2 warm-up rounds.

Usage:
    python benchmarks/gpu/bench_sigma_check.py
"""
import statistics

import torch

from gpu_checks import _time
from diffinverse.priors.checkpoints import load


def _former_as_sigma(sigma: float, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must be finite and non-negative")
    return s


def main() -> None:
    dev = torch.device("cuda")
    prior = load("mri-brain", device=dev)
    for size in (64, 256):
        x = torch.randn(4, 2, size, size, device=dev).contiguous(memory_format=torch.channels_last)

        def former():
            with torch.inference_mode():
                for _ in range(20):
                    prior.denoise(x, _former_as_sigma(0.5, x))

        def current():
            with torch.inference_mode():
                for _ in range(20):
                    prior(x, 0.5)

        t = {"old": [], "new": []}
        for r in range(32):
            for k, f in (("old", former), ("new", current)):
                dt = _time(f) / 20
                if r >= 2:
                    t[k].append(dt)
        ratios = sorted(o / n for o, n in zip(t["old"], t["new"]))
        print(f"{size}x{size} batch 4: forward old {min(t['old']) * 1e3:.2f} ms, new {min(t['new']) * 1e3:.2f} ms "
              f"(fastest); old/new per round median {statistics.median(ratios):.3f}, "
              f"range {ratios[0]:.3f}-{ratios[-1]:.3f}")


if __name__ == "__main__":
    main()
