"""The sampler seam, proven by samplers written as "How to add a sampler" says (samplers/base.py).

``TweedieGuided`` is the example of that section: a DDIM step (eta = 0) on a Tweedie estimate made
data-consistent by one gradient step. ``tests/test_sampler_base.py`` runs its shared checks
(determinism, global RNG untouched, bad input refused before any network call, divergence reported,
NFE count, warm start, callback, channels-last) on it beside DPS and RED-Diff; here it is also
checked against an exact posterior, and a second sampler shows a state that is not an image
(a volume) and a result that is not a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import deepinv as dinv
import torch

from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.samplers.base import DiffusionSampler, data_fidelity_grad


class TweedieGuided(DiffusionSampler):
    """DDIM (eta = 0) on a Tweedie estimate corrected by a gradient step on ``||A x0_hat - y||^2 / 2``."""

    supports_cuda_graph = True

    def __init__(self, prior, *, step_size: float = 1.0, **kwargs):
        super().__init__(prior, **kwargs)
        self.step_size = float(step_size)

    def draws_noise(self, sigma, sigma_next):
        return False   # deterministic given the initial noise

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        x0_hat = self.denoise(x, sigma)                                     # Tweedie mean
        grad, _ = data_fidelity_grad(x0_hat, y, physics)                    # A^H (A x0_hat - y)
        x0_hat = x0_hat - self.step_size * grad                             # data consistency
        x_next = x0_hat + (sigma_next / sigma).to(x.dtype) * (x - x0_hat)   # DDIM, eta = 0
        return x_next, x0_hat


SHAPE = (1, 4, 4)


def _problem():
    prior = GaussianMixturePrior.random(3, SHAPE, generator=torch.Generator().manual_seed(5),
                                        std_range=(0.1, 0.5), sigma_max=20.0)
    mask = torch.zeros(SHAPE)
    mask[..., ::2, :] = 1.0
    physics = dinv.physics.Inpainting(img_size=SHAPE, mask=mask)
    g = torch.Generator().manual_seed(6)
    x0 = prior.sample(1, generator=g)
    y = physics.A(x0) + 0.05 * torch.randn(x0.shape, generator=g) * mask
    return prior, physics, mask, y


def test_example_sampler_moves_samples_towards_the_exact_posterior():
    """What the example promises: its samples fit the measured pixels and their mean is far closer to
    the exact posterior mean than the prior's mean is (not that they are posterior samples)."""
    prior, physics, mask, y = _problem()
    exact = prior.posterior(y.double(), physics, 0.05).mean().float().reshape(SHAPE)
    # step_size 1: for inpainting A^H A is a projection, so the step replaces the measured pixels
    post = TweedieGuided(prior, num_steps=30, step_size=1.0, progress=False).posterior(
        y, physics, num_samples=200, generator=torch.Generator().manual_seed(0))
    prior_mean = (prior.weights[:, None] * prior.means).sum(0).float().reshape(SHAPE)
    err = (post.mean[0] - exact).norm().item()
    assert err < 0.35 * (prior_mean - exact).norm().item(), err   # measured: 0.24
    assert (post.mean[0] * mask - y[0]).abs().max().item() < 1e-4   # the measured pixels are kept
    assert post.std.max() > 0                                       # different samples, not one point


@dataclass(frozen=True)
class VolumeResult:
    volume: torch.Tensor
    slice_means: torch.Tensor


class SliceDenoising(DiffusionSampler):
    """A state that is a volume ``(B, C, D, H, W)`` given to a 2-D prior slice by slice, and a result
    that is a frozen dataclass: what DiffusionMBIR-like and ADS-like samplers need from the seam."""

    def init_x(self, y, physics, x_init, sigma0, warm, generator, x_shape):
        return sigma0 * torch.randn(y.shape, generator=generator)

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        b, c, d, h, w = x.shape
        slices = x.movedim(2, 1).reshape(b * d, c, h, w)
        x0_hat = self.denoise(slices, sigma).reshape(b, d, c, h, w).movedim(1, 2)
        state["steps"] += 1
        return x0_hat + (sigma_next / sigma).to(x.dtype) * (x - x0_hat), x0_hat

    def init_state(self, x, y, physics):
        return {"steps": torch.zeros((), dtype=torch.long)}

    def finalize(self, x, state):
        return VolumeResult(volume=x, slice_means=x.mean(dim=(1, 3, 4)))


def test_a_sampler_may_keep_a_volume_and_return_its_own_result_type():
    prior = GaussianMixturePrior.random(2, SHAPE, generator=torch.Generator().manual_seed(1), sigma_max=20.0)
    y = torch.zeros(2, 1, 3, 4, 4)                       # a volume of 3 slices per item
    sampler = SliceDenoising(prior, num_steps=8, progress=False)
    out = sampler(y, dinv.physics.Denoising(), generator=torch.Generator().manual_seed(0))
    assert isinstance(out, VolumeResult) and out.volume.shape == (2, 1, 3, 4, 4)
    assert out.slice_means.shape == (2, 3) and sampler.last_nfe == 8
    # every slice ends near one of the prior's modes: a 2-D prior acting on a volume
    means = prior.means.float().reshape(2, -1)
    d = torch.cdist(out.volume.movedim(2, 1).reshape(-1, 16), means).min(1).values
    assert d.max() < 0.3 * torch.cdist(means, means).max()     # measured: 1.25 against modes 6.5 apart
