"""Several posterior samples per measurement, batched through the network: :func:`sample_posterior`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffinverse.samplers.checks import (check_batch, check_batch_physics, check_physics, checked_generator,
                                         state_like)

__all__ = ["Posterior", "sample_posterior"]


@dataclass(frozen=True)
class Posterior:
    """Samples of a posterior and their pixel-wise moments.

    Attributes:
        samples: ``(N, B, ...)``: ``N`` samples for each of the ``B`` measurements, each shaped
            like the reconstruction ``x`` of one item.
        mean: ``(B, ...)`` sample mean (the MMSE estimate when the samples are exact).
        std: ``(B, ...)`` sample standard deviation (unbiased, ``N - 1`` in the denominator;
            zeros when ``N = 1``).
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_samples(cls, samples: torch.Tensor) -> Posterior:
        """Build from ``samples: (N, B, ...)``."""
        n = samples.shape[0]
        std = samples.std(dim=0) if n > 1 else torch.zeros_like(samples[0])
        return cls(samples=samples, mean=samples.mean(dim=0), std=std)


def sample_posterior(sampler, y: torch.Tensor, physics, *, num_samples: int,
                     generator: torch.Generator | None = None, max_batch: int | None = None,
                     x_init: torch.Tensor | None = None, sigma_start: float | None = None,
                     x_shape=None, physics_for_batch: Callable[[Any, int], Any] | None = None) -> Posterior:
    """``num_samples`` calls of ``sampler`` per measurement, run as batches of up to ``max_batch``.

    The ``B`` measurements are repeated sample-major (row ``s * B + b`` of a chunk is sample ``s``
    of item ``b``); chunks run one after the other from the same generator, so the samples are
    distributed exactly as separate calls (not bit-identical to them). ``sampler.last_nfe`` is
    then the total over all chunks. See :meth:`DiffusionSampler.posterior
    <diffinverse.samplers.base.DiffusionSampler.posterior>` for the arguments.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    check_batch(y)
    generator = checked_generator(generator, y.device)
    check_physics(physics)
    b = y.shape[0]
    per_chunk = num_samples if max_batch is None else max(1, min(num_samples, max_batch // b))
    sigma_start = sampler.sigma_start if sigma_start is None else sigma_start
    if sigma_start is not None and x_init is None:
        x_init = physics.A_dagger(y).detach()
    like = state_like(y, physics, x_init, x_shape)
    chunks, total_nfe = [], 0
    for start in range(0, num_samples, per_chunk):
        n = min(per_chunk, num_samples - start)
        phys_n = physics if physics_for_batch is None else physics_for_batch(physics, n)
        check_physics(phys_n)
        y_n = _repeat(y, n)
        check_batch_physics(phys_n, y_n, like, n)
        x = sampler(y_n, phys_n, generator=generator, sigma_start=sigma_start,
                    x_init=None if x_init is None else _repeat(x_init, n), x_shape=(n * b, *like.shape[1:]))
        chunks.append(x.detach().reshape(n, b, *x.shape[1:]))
        total_nfe += sampler.last_nfe
    sampler.last_nfe = total_nfe
    return Posterior.from_samples(torch.cat(chunks))


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat(n, *([1] * (t.ndim - 1)))
