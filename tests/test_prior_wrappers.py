"""VPDenoiser and RangeAdapter against an exact Gaussian-mixture denoiser."""
import pytest
import torch

from diffinverse.priors.base import RangeAdapter, VPDenoiser, as_sigma
from diffinverse.priors.gmm import GaussianMixturePrior

F64 = torch.float64
SHAPE = (2, 2, 2)


def _gmm(seed=0):
    return GaussianMixturePrior.random(3, SHAPE, generator=torch.Generator().manual_seed(seed))


def _abar(T=1000):
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), 0)


class ExactVPNetwork(torch.nn.Module):
    """The exact VP network of a GMM prior: maps ``t`` back to ``sigma`` through the table,
    interpolating ``log sigma`` linearly between integer steps (the inverse of VPDenoiser's map)."""

    def __init__(self, prior, abar, prediction):
        super().__init__()
        self.prior, self.prediction = prior, prediction
        self.log_sigmas = 0.5 * ((1 - abar) / abar).log()
        self.seen_t = None

    def forward(self, x_t, t):
        self.seen_t = t
        lo = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        sigma = (self.log_sigmas[lo] + (t - lo) * (self.log_sigmas[lo + 1] - self.log_sigmas[lo])).exp()
        s = sigma.view(-1, 1, 1, 1)
        a = (1 + s**2).rsqrt()
        x = x_t / a
        x0 = self.prior(x, sigma)
        eps = (x - x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * a * x0}[self.prediction]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_wrapper_equals_exact_denoiser(prediction):
    prior, abar = _gmm(), _abar()
    wrapped = VPDenoiser(ExactVPNetwork(prior, abar, prediction), abar, prediction=prediction, channels=2)
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.02, 0.3, 1.7, 40.0], dtype=F64)  # off the table's grid points
    x = prior.sample(4, generator=g, dtype=F64) + sigma.view(-1, 1, 1, 1) * torch.randn(4, *SHAPE, generator=g, dtype=F64)
    torch.testing.assert_close(wrapped(x, sigma), prior(x, sigma), rtol=1e-9, atol=1e-9)
    assert wrapped.sigma_min == pytest.approx((1e-4 / (1 - 1e-4)) ** 0.5)
    assert wrapped.sigma_max == pytest.approx(float(((1 - abar[-1]) / abar[-1]).sqrt()))


def test_nearest_timesteps_on_the_training_grid():
    prior, abar = _gmm(1), _abar(50)
    net = ExactVPNetwork(prior, abar, "eps")
    wrapped = VPDenoiser(net, abar, prediction="eps", channels=2, timesteps="nearest")
    idx = torch.tensor([0, 7, 31, 49])
    sigma = ((1 - abar[idx]) / abar[idx]).sqrt() * torch.tensor([1.0, 1.001, 0.999, 1.0], dtype=F64)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=F64)
    wrapped(x, sigma)
    assert torch.equal(net.seen_t, idx.to(F64))
    # exact where sigma is a grid value
    torch.testing.assert_close(wrapped(x[:1], sigma[:1]), prior(x[:1], sigma[:1]))


def test_sigma_to_t_is_continuous_and_clamped():
    abar = _abar(10)
    wrapped = VPDenoiser(lambda x, t: x, abar, channels=1)
    sig = ((1 - abar) / abar).sqrt()
    mid = (sig[3] * sig[4]).sqrt()  # geometric midpoint of steps 3 and 4
    t = wrapped.sigma_to_t(torch.stack([sig[5], mid, sig[0] / 10, sig[-1] * 10, torch.tensor(0.0, dtype=F64)]))
    torch.testing.assert_close(t, torch.tensor([5.0, 3.5, 0.0, 9.0, 0.0], dtype=F64))


def test_learned_variance_channels_are_dropped_and_errors():
    abar = _abar(20)
    wrapped = VPDenoiser(lambda x, t: torch.cat([torch.zeros_like(x), torch.ones_like(x)], 1), abar,
                         prediction="eps", channels=2)
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(wrapped(x, 0.5), x)  # eps = 0: the second half (variance) is ignored
    bad = VPDenoiser(lambda x, t: x[:, :1], abar, channels=2)
    with pytest.raises(ValueError, match="network returned shape"):
        bad(x, 0.5)
    with pytest.raises(ValueError, match="prediction must be"):
        VPDenoiser(lambda x, t: x, abar, prediction="score", channels=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        VPDenoiser(lambda x, t: x, abar.flip(0), channels=1)


def test_range_adapter_is_exact_for_an_affine_image_of_a_gmm():
    """A GMM on [0, 1] wrapped to [-3, 5] equals the GMM pushed through the same affine map."""
    prior01 = _gmm(3)
    lo, hi = -3.0, 5.0
    c = hi - lo  # x = lo + c u
    pushed = GaussianMixturePrior(prior01.weights, lo + c * prior01.means, c**2 * prior01.covs, shape=SHAPE)
    adapted = RangeAdapter(prior01, data_range=(lo, hi))
    g = torch.Generator().manual_seed(4)
    x = lo + c * torch.rand(3, *SHAPE, generator=g, dtype=F64)
    sigma = torch.tensor([0.01, 0.5, 4.0], dtype=F64)
    torch.testing.assert_close(adapted(x, sigma), pushed(x, sigma), rtol=1e-10, atol=1e-10)
    assert adapted.channels == 2 and adapted.data_range == (lo, hi)
    assert adapted.sigma_max == pytest.approx(prior01.sigma_max * c)


def test_range_adapter_with_a_deepinv_denoiser():
    """A deepinv Denoiser on [0, 1] becomes a prior on [-1, 1]."""
    from deepinv.models import Denoiser

    class Shrink(Denoiser):  # D'(u, s) = 0.5 + (u - 0.5) / (1 + s^2): exact for N(0.5, I)
        def forward(self, u, sigma):
            return 0.5 + (u - 0.5) / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    adapted = RangeAdapter(Shrink(), data_range=(-1.0, 1.0), channels=1)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    # prior on [-1, 1]: x0 = 2 u - 1 ~ N(0, 4 I); Tweedie mean 4 / (4 + sigma^2) x
    torch.testing.assert_close(adapted(x, 1.0), 4 / 5 * x)
    with pytest.raises(ValueError, match="channels must be given"):
        RangeAdapter(Shrink(), data_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="high > low"):
        RangeAdapter(Shrink(), data_range=(1.0, -1.0), channels=1)


def test_as_sigma_float_and_tensor_paths_agree_and_reject_bad_levels():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    for s in (0.7, 2, 0.0):
        got = as_sigma(s, x)
        assert got.shape == (3,) and got.dtype == torch.float64
        assert torch.equal(got, as_sigma(torch.tensor(float(s), dtype=torch.float64), x))
    levels = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    assert torch.equal(as_sigma(levels, x), levels)
    for bad in (-0.1, float("nan"), float("inf"), torch.tensor(-0.1), torch.tensor([0.1, float("nan"), 0.3])):
        with pytest.raises(ValueError, match="finite and non-negative"):
            as_sigma(bad, x)
    with pytest.raises(ValueError, match=r"\(3,\) tensor"):
        as_sigma(torch.ones(2), x)
