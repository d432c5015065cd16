"""Unconditional samples of the shipped priors next to their training data: a grid PNG per prior
and the intensity statistics that ``tests/test_shipped_priors.py`` bounds.

Usage::

    python benchmarks/priors/prior_samples.py   # writes diffinverse/weights/<name>.samples.png
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffinverse.priors import load, sample_heun  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[2] / "diffinverse" / "weights"


def training_like(name: str, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random ``size``-crops of the prior's training distribution."""
    from diffinverse.datasets.images import random_crop

    if name == "mri-brain":
        from diffinverse.datasets.brain import BrainSlices

        x = BrainSlices("train", generator=generator).sample(n)
    else:
        from diffinverse.datasets.ct_slices import synthetic_ct_slices

        x = synthetic_ct_slices(n, 128, generator=generator)
    return random_crop(x, size, generator=generator)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(1).sqrt()


def main() -> None:
    for name in ("mri-brain", "ct-ellipses"):
        prior = load(name)
        g = torch.Generator().manual_seed(0)
        samples = sample_heun(prior, (16, prior.channels, 64, 64), num_steps=32, generator=g)
        data = training_like(name, 16, 64, g)
        for label, x in (("samples", samples), ("training data", data)):
            m = magnitude(x)
            print(f"{name:12s} {label:14s} mean {m.mean():.3f}  std {m.std():.3f}  "
                  f"p99 {m.flatten().quantile(0.99):.3f}")
        fig, axes = plt.subplots(2, 8, figsize=(16, 4.4))
        for ax, img in zip(axes.flat, magnitude(samples)):
            ax.imshow(img, cmap="gray", vmin=0, vmax=float(prior.data_range[1]) * (1.3 if name == "mri-brain" else 1))
            ax.axis("off")
        fig.suptitle(f"{name}: unconditional samples (EDM Heun, 32 levels, 64x64, seed 0)")
        fig.tight_layout()
        fig.savefig(WEIGHTS / f"{name}.samples.png", dpi=60)
        plt.close(fig)


if __name__ == "__main__":
    main()
