"""The Gaussian-mixture oracle against autograd, textbook formulas and Monte Carlo."""
import math

import pytest
import torch
from deepinv.physics import Inpainting, LinearPhysics

from diffinverse.priors.gmm import GaussianMixture, GaussianMixturePrior

F64 = torch.float64
SHAPE = (1, 2, 3)  # d = 6


def _prior(k=3, shape=SHAPE, seed=0, **kw):
    return GaussianMixturePrior.random(k, shape, generator=torch.Generator().manual_seed(seed), **kw)


def _matrix_physics(a, shape):
    """A LinearPhysics for the explicit matrix ``a`` (m, d) acting on images of ``shape``."""
    return LinearPhysics(A=lambda x: x.reshape(x.shape[0], -1) @ a.T.to(x.dtype),
                         A_adjoint=lambda y: (y @ a.to(y.dtype)).reshape(y.shape[0], *shape))


def _mc_moments(x):
    xf = x.reshape(x.shape[0], -1).to(F64)
    return xf.mean(0), torch.cov(xf.T)


def test_denoiser_is_tweedie_of_autograd_score():
    prior = _prior()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, *SHAPE, generator=g, dtype=F64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0], dtype=F64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.log_prob(xr, sigma).sum(), xr)
    expected = x + sigma.view(-1, 1, 1, 1) ** 2 * grad
    torch.testing.assert_close(prior(x, sigma), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(prior.score(x, sigma), grad, rtol=1e-10, atol=1e-10)
    # sigma = 0: the score is still exact and the denoiser is the identity
    (grad0,) = torch.autograd.grad(prior.log_prob(xr).sum(), xr)
    torch.testing.assert_close(prior.score(x, 0.0), grad0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(prior(x, 0.0), x, rtol=1e-12, atol=1e-12)


def test_log_prob_is_the_mixture_density():
    prior = _prior(k=2)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=F64)
    xf = x.reshape(4, -1)
    dens = sum(w * torch.distributions.MultivariateNormal(m, c + 0.3**2 * torch.eye(6, dtype=F64)).log_prob(xf).exp()
               for w, m, c in zip(prior.weights, prior.means, prior.covs))
    torch.testing.assert_close(prior.log_prob(x, 0.3), dens.log())
    torch.testing.assert_close(prior.mixture.log_prob(x), prior.log_prob(x))


def test_far_points_are_stable():
    """Responsibilities use logsumexp: points far from every component give finite results."""
    prior = _prior(std_range=(0.05, 0.1))
    x = torch.full((2, *SHAPE), 1e3, dtype=F64)
    out = prior(x, torch.tensor([0.0, 1e-3], dtype=F64))
    assert torch.isfinite(out).all() and torch.isfinite(prior.log_prob(x)).all()


def test_single_gaussian_denoiser_textbook():
    prior = _prior(k=1)
    mu, s = prior.means[0], prior.covs[0]
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=F64)
    sigma = 0.4
    expected = mu + (s @ torch.linalg.inv(s + sigma**2 * torch.eye(6, dtype=F64)) @ (x.reshape(3, -1) - mu).T).T
    torch.testing.assert_close(prior(x, sigma).reshape(3, -1), expected)


def test_single_gaussian_posterior_textbook():
    """Information form ``C = (S^-1 + A^T A / s^2)^-1``, ``m = C (A^T y / s^2 + S^-1 mu)``."""
    prior = _prior(k=1)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(4, 6, generator=g, dtype=F64)
    x0 = prior.sample(1, generator=g, dtype=F64)
    noise = 0.2
    y = x0.reshape(1, -1) @ a.T + noise * torch.randn(1, 4, generator=g, dtype=F64)
    post = prior.posterior(y, _matrix_physics(a, SHAPE), noise)
    s_inv = torch.linalg.inv(prior.covs[0])
    cov = torch.linalg.inv(s_inv + a.T @ a / noise**2)
    mean = cov @ (a.T @ y[0] / noise**2 + s_inv @ prior.means[0])
    torch.testing.assert_close(post.weights, torch.ones(1, dtype=F64))
    torch.testing.assert_close(post.mean(), mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(post.cov(), cov, rtol=1e-9, atol=1e-10)


def test_mixture_posterior_is_prior_times_likelihood():
    """``log post(x) - log prior(x) - log lik(y | x)`` is the same constant for every ``x``."""
    prior = _prior(k=4)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 6, generator=g, dtype=F64)
    noise = 0.3
    y = prior.sample(1, generator=g, dtype=F64).reshape(1, -1) @ a.T
    post = prior.posterior(y, _matrix_physics(a, SHAPE), noise)
    x = torch.randn(6, *SHAPE, generator=g, dtype=F64)
    loglik = -0.5 * ((y - x.reshape(6, -1) @ a.T) ** 2).sum(-1) / noise**2
    gap = post.log_prob(x) - prior.log_prob(x) - loglik
    torch.testing.assert_close(gap, gap[0].expand(6), rtol=0, atol=1e-9)
    assert post.weights.sum().item() == pytest.approx(1.0)
    assert not torch.allclose(post.weights, prior.weights, atol=1e-3)  # the data informed the weights


def test_posterior_sample_moments_match_analytic():
    prior = _prior(k=3, seed=6)
    g = torch.Generator().manual_seed(7)
    mask = (torch.rand(SHAPE, generator=g) > 0.4).float()
    physics = Inpainting(img_size=SHAPE, mask=mask)
    y = physics.A(prior.sample(1, generator=g, dtype=F64)) + 0.1 * torch.randn(1, *SHAPE, generator=g, dtype=F64)
    post = prior.posterior(y, physics, 0.1)
    n = 100_000
    mean, cov = _mc_moments(post.sample(n, generator=g, dtype=F64))
    std = post.cov().diagonal().sqrt()
    assert ((mean - post.mean()).abs() <= 5 * std / math.sqrt(n)).all()
    torch.testing.assert_close(cov, post.cov(), rtol=0, atol=12 * post.cov().diagonal().amax().item() / math.sqrt(n))


def test_prior_sample_moments_match_mixture():
    prior = _prior(k=3, seed=8)
    g = torch.Generator().manual_seed(9)
    n = 100_000
    x = prior.sample(n, generator=g, dtype=F64)
    assert x.shape == (n, *SHAPE) and x.dtype == F64
    mean, cov = _mc_moments(x)
    ref = prior.mixture
    assert ((mean - ref.mean()).abs() <= 5 * ref.cov().diagonal().sqrt() / math.sqrt(n)).all()
    torch.testing.assert_close(cov, ref.cov(), rtol=0, atol=12 * ref.cov().diagonal().amax().item() / math.sqrt(n))


def test_noiseless_inpainting_posterior_is_exact_conditioning():
    """``noise_sigma = 0``: observed pixels are fixed, the rest follows the Schur complement."""
    prior = _prior(k=1, seed=10)
    mask = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    physics = Inpainting(img_size=SHAPE, mask=mask)
    g = torch.Generator().manual_seed(11)
    y = physics.A(prior.sample(1, generator=g, dtype=F64))
    post = prior.posterior(y, physics, 0.0)
    obs, hid = mask.flatten().bool(), ~mask.flatten().bool()
    s, mu = prior.covs[0], prior.means[0]
    s_ho = s[hid][:, obs]
    k = s_ho @ torch.linalg.inv(s[obs][:, obs])
    mean_h = mu[hid] + k @ (y.flatten()[obs] - mu[obs])
    cov_h = s[hid][:, hid] - k @ s_ho.T
    torch.testing.assert_close(post.mean()[hid], mean_h)
    torch.testing.assert_close(post.mean()[obs], y.flatten()[obs])
    torch.testing.assert_close(post.cov()[hid][:, hid], cov_h)
    assert post.cov()[obs].abs().amax() < 1e-12
    x = post.sample(50, generator=g, dtype=F64)
    torch.testing.assert_close(x.reshape(50, -1)[:, obs], y.reshape(1, -1)[:, obs].expand(50, -1))
    # the noiseless posterior is the limit of the noisy ones
    near = prior.posterior(y, physics, 1e-5)
    torch.testing.assert_close(near.mean(), post.mean(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="singular"):
        post.log_prob(x)


def test_physics_matrix_and_zero_rows():
    prior = _prior(k=2)
    mask = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    a = prior.matrix(Inpainting(img_size=SHAPE, mask=mask))
    torch.testing.assert_close(a, torch.diag(mask.flatten().to(F64)))


def test_sampling_is_seeded_and_leaves_global_rng_alone():
    prior = _prior()
    state = torch.random.get_rng_state()
    a = prior.sample(7, generator=torch.Generator().manual_seed(3))
    b = prior.sample(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(state, torch.random.get_rng_state())
    c = _prior().sample(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, c)  # random() is seeded too


def test_float32_in_float32_out():
    prior = _prior()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = prior(x, torch.tensor([0.1, 1.0]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), prior(x.double(), torch.tensor([0.1, 1.0], dtype=F64)),
                               rtol=1e-5, atol=1e-6)


def test_errors_are_clear():
    prior = _prior()
    w, m, c = prior.weights, prior.means, prior.covs
    with pytest.raises(ValueError, match=r"means must have shape \(K, d\) = \(3, 6\)"):
        GaussianMixturePrior(w, m[:, :5], c, shape=SHAPE)
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixturePrior(w, m, c[:2], shape=SHAPE)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePrior(w, m, c - 10 * torch.eye(6, dtype=F64), shape=SHAPE)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixturePrior(w, m, c + torch.triu(torch.ones(6, 6, dtype=F64), 1), shape=SHAPE)
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixturePrior(-w, m, c, shape=SHAPE)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 1, 2, 3\)"):
        prior(torch.zeros(1, 1, 3, 2), 0.1)
    with pytest.raises(ValueError, match="channel"):
        prior(torch.zeros(1, 2, 2, 3), 0.1)
    physics = Inpainting(img_size=SHAPE, mask=torch.ones(SHAPE))
    with pytest.raises(ValueError, match="batch size 1"):
        prior.posterior(torch.zeros(2, *SHAPE), physics, 0.1)
    with pytest.raises(ValueError, match="noise_sigma"):
        prior.posterior(torch.zeros(1, *SHAPE), physics, -1.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        prior.sample(0)


def test_weights_are_normalised_and_mixture_moments():
    mix = GaussianMixture(torch.tensor([1.0, 3.0]), torch.tensor([[0.0], [4.0]]),
                          torch.tensor([[[1.0]], [[2.0]]]), shape=(1, 1, 1))
    torch.testing.assert_close(mix.weights, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(mix.mean(), torch.tensor([3.0], dtype=F64))
    # 0.25 * (1 + 9) + 0.75 * (2 + 1)
    torch.testing.assert_close(mix.cov(), torch.tensor([[4.75]], dtype=F64))
