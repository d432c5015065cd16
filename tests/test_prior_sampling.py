"""The Heun (EDM) sampler draws from the prior: checked on a Gaussian with an exact denoiser."""
import torch

from diffinverse.priors.base import Prior
from diffinverse.priors.sampling import sample_heun


class _Gaussian(Prior):
    """N(mu, S) on (1, 2, 2) images, with the exact Tweedie denoiser."""

    channels = 1
    # sigma_max must dwarf |mu|: the ODE starts from N(0, sigma_max^2), not N(mu, cov + sigma_max^2),
    # which biases the samples' mean by about |mu| * std / sigma_max
    sigma_min, sigma_max = 0.002, 200.0

    def __init__(self, mu, cov):
        super().__init__()
        self.mu, self.cov = mu, cov

    def denoise(self, x, sigma):
        d = self.mu.numel()
        xf = x.reshape(x.shape[0], d, 1) - self.mu[:, None]
        noisy_cov = self.cov + sigma[:, None, None] ** 2 * torch.eye(d, dtype=x.dtype)
        return (self.mu[:, None] + self.cov @ torch.linalg.solve(noisy_cov, xf)).reshape(x.shape)


def test_heun_samples_have_the_prior_moments():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.T / 4 + 0.05 * torch.eye(4, dtype=torch.float64)
    mu = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    prior = _Gaussian(mu, cov)
    x = sample_heun(prior, (4000, 1, 2, 2), num_steps=40, generator=g).double().reshape(4000, 4)
    # Monte Carlo error of the mean is ~ sqrt(diag(cov) / 4000) < 0.03
    assert torch.allclose(x.mean(0), mu, atol=0.06)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.08 * cov.diagonal().max().item())


def test_heun_is_deterministic_and_leaves_global_rng_alone():
    prior = _Gaussian(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    state = torch.get_rng_state()
    a = sample_heun(prior, (3, 1, 2, 2), num_steps=5, generator=torch.Generator().manual_seed(1))
    b = sample_heun(prior, (3, 1, 2, 2), num_steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())
