"""The shared sampler machinery: schedule, warm start, NFE count, callback, determinism, batching."""
from __future__ import annotations

import math

import deepinv as dinv
import pytest
import torch

from diffinverse.priors.base import Prior, sigma_like
from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.priors.schedules import karras, ve_geometric
from diffinverse.samplers.base import DiffusionSampler, Posterior, data_fidelity_grad, operator_scale
from diffinverse.samplers.network import in_layout
from diffinverse.samplers.data_consistency import tikhonov_start
from diffinverse.samplers.dds import DDS
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff
from test_sampler_contract import TweedieGuided

SHAPE = (1, 4, 4)
NOISE = 0.1


@pytest.fixture(scope="module")
def prior():
    return GaussianMixturePrior.random(2, SHAPE, generator=torch.Generator().manual_seed(0),
                                       std_range=(0.1, 0.5), sigma_max=20.0)


def _mask(batch=None):
    mask = torch.zeros(SHAPE if batch is None else (batch, *SHAPE))
    mask[..., ::2, :] = 1.0
    return mask


@pytest.fixture(scope="module")
def problem(prior):
    physics = dinv.physics.Inpainting(img_size=SHAPE, mask=_mask())
    g = torch.Generator().manual_seed(1)
    x0 = prior.sample(2, generator=g)
    y = physics.A(x0) + NOISE * torch.randn(x0.shape, generator=g) * _mask()
    return physics, x0, y


SAMPLERS = {
    # cold starts by default (the shared checks are about the machinery, not the defaults)
    "dps": lambda p, **kw: DPS(p, zeta=0.3, squared_norm=False, progress=False, **{"sigma_start": None, **kw}),
    "reddiff": lambda p, **kw: REDDiff(p, lr=0.05, progress=False, **{"sigma_start": None, **kw}),
    "dds": lambda p, **kw: DDS(p, gamma=2.0, progress=False, **{"sigma_start": None, **kw}),
    # the example of "how to add a sampler" (tests/test_sampler_contract.py) passes the same checks
    "tweedie": lambda p, **kw: TweedieGuided(p, step_size=0.5, progress=False, **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_bit_identical_and_global_rng_untouched(name, prior, problem):
    physics, _, y = problem
    sampler = SAMPLERS[name](prior, num_steps=20)
    state = torch.get_rng_state()
    a = sampler(y, physics, generator=torch.Generator().manual_seed(3))
    b = sampler(y, physics, generator=torch.Generator().manual_seed(3))
    c = sampler(y, physics, generator=torch.Generator().manual_seed(4))
    sampler(y, physics)  # no generator: a fresh seed, still not the global RNG
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("sigma_start", [None, 0.5])
def test_non_finite_inputs_are_refused_before_sampling(name, prior, problem, sigma_start):
    physics, x0, y = problem
    sampler = SAMPLERS[name](prior, num_steps=5)
    for bad in (float("nan"), float("inf")):
        y_bad = y.clone()
        y_bad[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match="y contains NaN or infinite values"):
            sampler(y_bad, physics, sigma_start=sigma_start)
        with pytest.raises(ValueError, match="y contains NaN or infinite values"):
            sampler.posterior(y_bad, physics, num_samples=2, sigma_start=sigma_start)
    x_bad = x0.clone()
    x_bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="x_init contains NaN or infinite values"):
        sampler(y, physics, x_init=x_bad, sigma_start=0.5)
    assert sampler.last_nfe == 0  # refused before the first network call


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_generator_that_is_not_one_is_refused(name, prior, problem):
    physics, _, y = problem
    sampler = SAMPLERS[name](prior, num_steps=5)
    for bad in (0, "cuda"):
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            sampler(y, physics, generator=bad)
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            sampler.posterior(y, physics, num_samples=2, generator=bad)


class _BreaksBelow(Prior):
    """The GMM prior's denoiser, returning NaN below a noise level (a network that blows up)."""

    def __init__(self, inner: Prior, level: float):
        super().__init__()
        self.inner, self.level = inner, level
        self.channels, self.sigma_min, self.sigma_max = inner.channels, inner.sigma_min, inner.sigma_max

    def denoise(self, x, sigma):
        return self.inner.denoise(x, sigma).masked_fill(sigma_like(sigma, x) < self.level, float("nan"))


@pytest.mark.parametrize("name", SAMPLERS)
def test_divergence_is_reported_not_returned(name, prior, problem):
    physics, _, y = problem
    healthy = SAMPLERS[name](_BreaksBelow(prior, level=0.0), num_steps=6)
    assert torch.isfinite(healthy(y, physics, generator=torch.Generator().manual_seed(0))).all()
    with pytest.raises(FloatingPointError, match=f"{type(healthy).__name__} diverged.*after 6 steps"):
        SAMPLERS[name](_BreaksBelow(prior, level=1.0), num_steps=6)(y, physics)


class _NeverDenoises(Prior):
    """A denoiser that returns its input: a cold start's noise at sigma_max (500) is never removed."""

    def __init__(self, inner: Prior):
        super().__init__()
        self.channels, self.sigma_min, self.sigma_max = inner.channels, inner.sigma_min, 500.0
        self.data_range = inner.data_range

    def denoise(self, x, sigma):
        return x


@pytest.mark.parametrize("name", ["dps", "dds"])
def test_a_cold_start_left_at_noise_scale_is_divergence(name, prior, problem):
    """From a cold start the state begins as noise at sigma_max: a run that ends at that scale, far
    outside the prior's data range, raises instead of returning the noise (the bound is the prior's
    range, not the noisy initial state's, which would allow 100 x 500 x a few)."""
    physics, _, y = problem
    sampler = SAMPLERS[name](_NeverDenoises(prior), num_steps=6)
    with pytest.raises(FloatingPointError, match="diverged.*cold start: the prior's data range"):
        sampler(y, physics, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", SAMPLERS)
def test_nfe_counts_network_calls(name, prior, problem):
    physics, _, y = problem
    calls = []

    class Counting(torch.nn.Module):
        sigma_min, sigma_max = prior.sigma_min, prior.sigma_max
        data_range = prior.data_range

        def forward(self, x, sigma):
            calls.append(x.shape[0])
            return prior(x, sigma)

    sampler = SAMPLERS[name](Counting(), num_steps=17)
    sampler(y, physics, generator=torch.Generator().manual_seed(0))
    assert sampler.last_nfe == len(calls) == 17
    calls.clear()
    sampler.posterior(y, physics, num_samples=5, max_batch=4, generator=torch.Generator().manual_seed(0))
    # max_batch = 4 images with B = 2 items: chunks of 2, 2 and 1 samples
    assert calls == [4] * 17 + [4] * 17 + [2] * 17
    assert sampler.last_nfe == 3 * 17


@pytest.mark.parametrize("name", SAMPLERS)
def test_warm_start_starts_at_sigma_start_with_fewer_nfe(name, prior, problem):
    physics, x0, y = problem
    seen = []
    sampler = SAMPLERS[name](prior, num_steps=40, callback=lambda i, s, x, x0_hat: seen.append((i, s)))
    sampler(y, physics, generator=torch.Generator().manual_seed(0))
    cold_nfe, cold_first = sampler.last_nfe, seen[0]
    seen.clear()
    sampler(y, physics, generator=torch.Generator().manual_seed(0), sigma_start=0.5)
    assert cold_first == (0, pytest.approx(20.0))
    assert seen[0] == (0, 0.5)
    expected = int((karras(40, prior.sigma_min, 20.0) < 0.5).sum())  # 0.5, then the grid below it
    assert sampler.last_nfe == len(seen) == expected < cold_nfe
    assert all(s < 0.5 for _, s in seen[1:])
    # a sigma_start given at construction is the default
    seen.clear()
    SAMPLERS[name](prior, num_steps=40, sigma_start=0.5,
                   callback=lambda i, s, x, x0_hat: seen.append((i, s)))(y, physics)
    assert seen[0] == (0, 0.5)


def test_warm_start_uses_x_init(prior, problem):
    """Starting at a tiny sigma from the truth, DPS stays at the truth; without x_init, at the default
    warm start (Tikhonov by CG)."""
    physics, x0, y = problem
    sampler = DPS(prior, num_steps=40, zeta=0.0, progress=False, sigma_start=None, squared_norm=False)
    g = torch.Generator().manual_seed(0)
    x = sampler(y, physics, generator=g, x_init=x0, sigma_start=1e-3)
    assert (x - x0).abs().max().item() < 1e-2
    x = sampler(y, physics, generator=g, sigma_start=1e-3)  # default x_init: Tikhonov by CG
    assert (x - tikhonov_start(y, physics)).abs().max().item() < 1e-2


def test_warm_start_errors(prior, problem):
    physics, x0, y = problem
    sampler = DPS(prior, num_steps=10, progress=False, sigma_start=None, squared_norm=False)
    with pytest.raises(ValueError, match="give sigma_start"):
        sampler(y, physics, x_init=x0)
    with pytest.raises(ValueError, match=r"sigma_start must be in \(0, 20\]"):
        sampler(y, physics, sigma_start=25.0)
    with pytest.raises(ValueError, match="batch size"):
        sampler(y, physics, x_init=x0[:1], sigma_start=0.5)
    # RED-Diff's x_init is its starting mu: allowed without a warm start
    out = REDDiff(prior, num_steps=3, progress=False, sigma_start=None)(y, physics, x_init=x0)
    assert out.shape == x0.shape


@pytest.mark.parametrize("name", SAMPLERS)
def test_inputs_that_do_not_fit_the_physics_are_named(name, prior, problem):
    """A warm start of the wrong shape, an x_shape the run would not use and a physics that is
    not one are refused before any network call, each with a message naming the argument."""
    physics, x0, y = problem
    calls = []
    sampler = SAMPLERS[name](prior, num_steps=5, callback=lambda *a: calls.append(a))
    with pytest.raises(ValueError, match=r"x_init has shape \(2, 1, 4, 3\), but the physics' images "
                                         r"\(A\^H y\) have shape \(2, 1, 4, 4\)"):
        sampler(y, physics, x_init=x0[..., :3], sigma_start=0.5)
    # x_shape only shapes a cold start's noise: given beside x_init, it must agree with it
    with pytest.raises(ValueError, match=r"x_shape \(2, 1, 4, 5\) is not the shape of the initial state"):
        sampler(y, physics, x_init=x0, sigma_start=0.5, x_shape=(2, 1, 4, 5))
    with pytest.raises(TypeError, match="physics must be a deepinv Physics.*got NoneType"):
        sampler(y, None)
    with pytest.raises(TypeError, match="physics must be a deepinv Physics.*got str"):
        sampler.posterior(y, "mri", num_samples=2)
    with pytest.raises(TypeError, match="physics must be a deepinv Physics.*got NoneType"):
        sampler.posterior(y, physics, num_samples=2, physics_for_batch=lambda p, n: None)
    for bad in (y[0, 0, 0, 0], y[:0]):   # no batch dimension; an empty batch
        with pytest.raises(ValueError, match=r"y must be a batch \(B, ...\) with B >= 1"):
            sampler(bad, physics)
        with pytest.raises(ValueError, match=r"y must be a batch \(B, ...\) with B >= 1"):
            sampler.posterior(bad, physics, num_samples=2)
    assert calls == []
    out = sampler(y, physics, x_init=x0, sigma_start=0.5, x_shape=tuple(x0.shape))
    assert out.shape == x0.shape


def test_posterior_batched_agrees_with_sequential(prior, problem):
    """posterior() in one batch vs one sample at a time (max_batch=1 is N sequential runs):
    same shapes, the item order is kept, and the moments agree statistically."""
    physics, _, y = problem
    sampler = DPS(prior, num_steps=20, zeta=0.3, progress=False, sigma_start=None, squared_norm=False)
    batched = sampler.posterior(y, physics, num_samples=400, generator=torch.Generator().manual_seed(5))
    seq = sampler.posterior(y[:1], physics, num_samples=50, max_batch=1,
                            generator=torch.Generator().manual_seed(6))
    assert batched.samples.shape == (400, 2, *SHAPE)
    assert batched.mean.shape == batched.std.shape == (2, *SHAPE)
    assert seq.samples.shape == (50, 1, *SHAPE)
    assert torch.equal(batched.mean, batched.samples.mean(0))
    # item 0 of the batched run against the sequential runs on item 0 alone
    se = torch.sqrt(batched.std[0] ** 2 / 400 + seq.std[0] ** 2 / 50)
    assert ((batched.mean[0] - seq.mean[0]).abs() <= 4 * se + 1e-3).all()
    ratio = (seq.std[0].norm() / batched.std[0].norm()).item()  # 16 pixels pooled, 50 samples
    assert 0.75 <= ratio <= 1.33, ratio
    # item order: each item's samples fit its own measurement, not the other's
    for b in range(2):
        own = (physics.A(batched.mean[b:b + 1]) - y[b]).norm()
        other = (physics.A(batched.mean[b:b + 1]) - y[1 - b]).norm()
        assert own < 0.5 * other


def test_posterior_per_item_physics(prior):
    """A physics with per-item masks needs physics_for_batch; the error says so."""
    masks = _mask(2)
    masks[1, :, ::2, :] = 0
    masks[1, :, 1::2, :] = 1
    physics = dinv.physics.Inpainting(img_size=SHAPE, mask=masks)
    x0 = prior.sample(2, generator=torch.Generator().manual_seed(0))
    y = physics.A(x0)
    sampler = REDDiff(prior, num_steps=5, progress=False, sigma_start=None)
    with pytest.raises(ValueError, match="physics_for_batch"):
        sampler.posterior(y, physics, num_samples=3)

    def for_batch(p, n):
        return dinv.physics.Inpainting(img_size=SHAPE, mask=p.mask.repeat(n, 1, 1, 1))

    post = sampler.posterior(y, physics, num_samples=3, physics_for_batch=for_batch,
                             generator=torch.Generator().manual_seed(0))
    assert post.samples.shape == (3, 2, *SHAPE)
    # each item's samples fit its own y, under its own mask, far better than the other item's y
    own = (physics.A(post.samples) - y).flatten(2).norm(dim=2)  # (num_samples, batch)
    other = (physics.A(post.samples) - y.flip(0)).flatten(2).norm(dim=2)
    assert own.max() < 0.5 * other.min()


def test_posterior_dataclass():
    s = torch.arange(12.0).reshape(3, 2, 2)
    p = Posterior.from_samples(s)
    assert torch.equal(p.mean, s.mean(0)) and torch.equal(p.std, s.std(0))
    assert torch.equal(Posterior.from_samples(s[:1]).std, torch.zeros(2, 2))


def test_schedule_options(prior):
    grid = torch.tensor([3.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    sampler = DPS(prior, schedule=grid, progress=False, sigma_start=None, squared_norm=False)
    assert sampler.sigmas.dtype == torch.float64 and torch.equal(sampler.sigmas, grid)
    assert torch.equal(sampler.schedule_for(0.5), torch.tensor([0.5, 0.1, 0.0], dtype=torch.float64))
    geo = DPS(prior, num_steps=7, schedule=ve_geometric, sigma_max=5.0, progress=False, sigma_start=None, squared_norm=False)
    assert torch.allclose(geo.sigmas, ve_geometric(7, prior.sigma_min, 5.0))
    with pytest.raises(ValueError, match="strictly decreasing"):
        DPS(prior, schedule=torch.tensor([1.0, 2.0, 0.0]), sigma_start=None, squared_norm=False)
    with pytest.raises(ValueError, match="final 0"):
        DPS(prior, schedule=torch.tensor([2.0, 1.0]), sigma_start=None, squared_norm=False)
    with pytest.raises(TypeError, match="schedule must be"):
        DPS(prior, schedule="karras", sigma_start=None, squared_norm=False)
    with pytest.raises(ValueError, match="weighting must be one of"):
        REDDiff(prior, weighting="log", sigma_start=None)
    with pytest.raises(ValueError, match="num_samples"):
        DPS(prior, progress=False, sigma_start=None, squared_norm=False).posterior(torch.zeros(1, *SHAPE), dinv.physics.Denoising(), num_samples=0)


def test_dps_refuses_inference_mode(prior, problem):
    physics, _, y = problem
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        DPS(prior, num_steps=3, progress=False, sigma_start=None, squared_norm=False)(y, physics)
    # under no_grad it still works: gradients are enabled where the guidance needs them
    with torch.no_grad():
        x = DPS(prior, num_steps=3, zeta=0.3, progress=False, sigma_start=None, squared_norm=False)(y, physics, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_data_fidelity_grad_linear_equals_autograd():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 16, generator=g, dtype=torch.float64)

    def a(x):
        return x.flatten(1) @ m.T

    linear = dinv.physics.LinearPhysics(A=a, A_adjoint=lambda y: (y @ m).reshape(-1, *SHAPE))
    generic = dinv.physics.Physics(A=a)
    x = torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(3, 6, generator=g, dtype=torch.float64)
    g1, r1 = data_fidelity_grad(x, y, linear)
    g2, r2 = data_fidelity_grad(x, y, generic)
    assert torch.allclose(g1, g2) and torch.allclose(r1, r2)
    assert torch.allclose(g1, ((a(x) - y) @ m).reshape(x.shape))


def test_dps_linear_and_generic_physics_agree(prior, problem):
    """The same operator as LinearPhysics (adjoint) and as plain Physics (autograd): same sampler."""
    physics, _, y = problem
    generic = dinv.physics.Physics(A=physics.A)
    sampler = DPS(prior, num_steps=20, zeta=0.3, progress=False, sigma_start=None, squared_norm=False)
    a = sampler(y, physics, generator=torch.Generator().manual_seed(0))
    b = sampler(y, generic, generator=torch.Generator().manual_seed(0), x_shape=y.shape)
    assert torch.allclose(a, b, atol=1e-4)


def test_base_step_is_abstract(prior, problem):
    physics, _, y = problem
    with pytest.raises(NotImplementedError):
        DiffusionSampler(prior, num_steps=2, progress=False)(y, physics)


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_setting_changed_between_calls_reaches_the_next_call(name, prior, problem):
    """Nothing a sampler keeps between calls (its device grid, a captured graph) hides a setting
    changed in between."""
    physics, _, y = problem
    cls, setting, value = {"dps": (DPS, "zeta", 0.6), "reddiff": (REDDiff, "lam", 0.5),
                           "dds": (DDS, "gamma", 5.0), "tweedie": (TweedieGuided, "step_size", 0.3)}[name]
    sampler = cls(prior, num_steps=5, progress=False)
    before = sampler(y, physics, generator=torch.Generator().manual_seed(0))
    setattr(sampler, setting, value)
    after = sampler(y, physics, generator=torch.Generator().manual_seed(0))
    fresh = cls(prior, num_steps=5, progress=False, **{setting: value})(y, physics, generator=torch.Generator().manual_seed(0))
    assert torch.equal(after, fresh) and not torch.equal(after, before)


def test_reddiff_weightings_differ_and_stay_finite(prior, problem):
    physics, _, y = problem
    outs = {w: REDDiff(prior, num_steps=20, weighting=w, progress=False, sigma_start=None)(
        y, physics, generator=torch.Generator().manual_seed(0)) for w in ("linear", "sqrt", "square", "const")}
    assert all(torch.isfinite(o).all() for o in outs.values())
    assert not torch.equal(outs["linear"], outs["const"])
    assert not math.isclose((outs["sqrt"] - outs["square"]).abs().max().item(), 0.0)


@pytest.mark.parametrize("as_nonlinear", [False, True])
def test_reddiff_update_is_adam_on_the_stated_gradient(prior, problem, as_nonlinear):
    """RED-Diff's in-place Adam equals torch.optim.Adam fed the module docstring's gradient, both
    through its normal-operator path (linear physics) and by autograd (the same A seen as nonlinear)."""
    physics, _, y = problem
    sampler = REDDiff(prior, num_steps=8, lam=0.5, lr=0.05, progress=False, sigma_start=None)
    seen_by_sampler = dinv.physics.Physics(A=physics.A) if as_nonlinear else physics
    out = sampler(y, seen_by_sampler, generator=torch.Generator().manual_seed(3), x_init=physics.A_dagger(y))

    mu = physics.A_dagger(y).clone().requires_grad_(True)
    scale = operator_scale(seen_by_sampler, mu)   # ||A||^2: 1 for this mask (and for a nonlinear physics)
    assert scale == pytest.approx(1.0)
    # eps: the official 1e-8 on the per-entry gradient g * scale / m, i.e. 1e-8 * m / scale on g
    adam = torch.optim.Adam([mu], lr=0.05, betas=(0.9, 0.99), eps=1e-8 * y[0].numel() / scale)
    g = torch.Generator().manual_seed(3)
    for sigma in sampler.sigmas[:-1].tolist():
        eps = torch.randn(mu.shape, generator=g)
        with torch.no_grad():
            x0_hat = prior(mu + sigma * eps, sigma)
            # lam * w(sigma) / sigma = lam = 0.5 for the default linear weighting w(sigma) = sigma
            mu.grad = physics.A_adjoint(physics.A(mu) - y) / scale + 0.5 * (mu - x0_hat)
        adam.step()
    torch.testing.assert_close(out, mu.detach(), rtol=1e-5, atol=1e-6)


def test_reddiff_with_non_contiguous_operator_outputs(prior, problem):
    """The fused Adam update pairs mu, its gradient and its moments by memory position: an adjoint
    and a warm-start image in transposed memory layout must give the same run as contiguous ones."""
    physics, _, y = problem
    mask = _mask()

    def transposed_in_memory(t):
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)

    plain = dinv.physics.LinearPhysics(A=lambda x: x * mask, A_adjoint=lambda v: v * mask)
    strided = dinv.physics.LinearPhysics(A=lambda x: x * mask, A_adjoint=lambda v: transposed_in_memory(v * mask))
    assert not strided.A_adjoint(y).is_contiguous()
    sampler = REDDiff(prior, num_steps=8, lam=0.5, lr=0.05, progress=False, sigma_start=None)
    x_init = y.clone() + 0.1
    want = sampler(y, plain, generator=torch.Generator().manual_seed(6), x_init=x_init, sigma_start=5.0)
    for phys, start in ((strided, x_init), (plain, transposed_in_memory(x_init))):
        got = sampler(y, phys, generator=torch.Generator().manual_seed(6), x_init=start, sigma_start=5.0)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_reddiff_with_an_identity_physics_leaves_its_state_alone(prior):
    """A linear physics whose A and A^H return their input (here the identity written as lambdas)
    hands RED-Diff's current estimate back from A^H A: the normal-operator path must not update
    that tensor in place."""
    y = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(4))
    identity = dinv.physics.LinearPhysics(A=lambda x: x, A_adjoint=lambda y: y)
    mu = torch.zeros(2, *SHAPE)
    assert identity.A_adjoint_A(mu) is mu  # the aliasing this test is about
    sampler = REDDiff(prior, num_steps=6, lam=0.5, lr=0.05, progress=False, sigma_start=None)
    linear = sampler(y, identity, generator=torch.Generator().manual_seed(5), x_init=y.clone())
    by_autograd = sampler(y, dinv.physics.Physics(A=lambda x: x), generator=torch.Generator().manual_seed(5),
                          x_init=y.clone())
    torch.testing.assert_close(linear, by_autograd, rtol=1e-5, atol=1e-6)


def test_autocast_runs_the_network_in_bf16():
    seen = []

    class Conv(torch.nn.Module):
        sigma_min, sigma_max, data_range = 0.01, 5.0, (-1.0, 1.0)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, sigma):
            out = self.conv(x)
            seen.append(out.dtype)
            return out

    net = Conv()
    physics = dinv.physics.Inpainting(img_size=SHAPE, mask=_mask())
    y = physics.A(torch.ones(1, *SHAPE))
    outs = {}
    for flag in (False, True):
        seen.clear()
        outs[flag] = REDDiff(net, num_steps=5, autocast=flag, progress=False, sigma_start=None)(
            y, physics, generator=torch.Generator().manual_seed(0))
        assert set(seen) == {torch.bfloat16 if flag else torch.float32}
    assert outs[True].dtype == torch.float32
    assert torch.allclose(outs[True], outs[False], atol=0.05) and not torch.equal(outs[True], outs[False])
    # bf16 runs are reproducible from the seed too
    again = REDDiff(net, num_steps=5, autocast=True, progress=False, sigma_start=None)(
        y, physics, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, outs[True])


class _SmallUNetLike(torch.nn.Module):
    """Two convolutions: enough for memory formats and compilation to matter. It barely denoises, so
    its grid tops at 0.5: from a cold start at 5 its output would stay noise of that scale, which
    the loop reports as divergence."""
    sigma_min, sigma_max, data_range = 0.01, 0.5, (-1.0, 1.0)

    def __init__(self, channels: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(channels, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, channels, 3, padding=1)
        self.formats = []

    def forward(self, x, sigma):
        h = self.a(x)
        self.formats.append(_nhwc(h))   # the layout the convolutions ran in (8 channels: unambiguous)
        return x + 0.1 * self.b(torch.tanh(h))


def _nhwc(t: torch.Tensor) -> bool:
    """Whether ``t`` has channels-last strides (also for 1 channel, where it is contiguous either way)."""
    return t.stride() == torch.empty_like(t, memory_format=torch.channels_last).stride()


def test_in_layout_sets_the_layouts_strides_also_where_contiguous_would_not():
    x = torch.randn(3, 1, 5, 4)
    assert x.contiguous(memory_format=torch.channels_last).stride() == x.stride()   # what in_layout fixes
    cl = in_layout(x, torch.channels_last)
    assert cl.stride() == (20, 1, 4, 1) and torch.equal(cl, x)
    assert in_layout(cl, torch.channels_last) is cl                       # no copy when already there
    back = in_layout(cl, torch.contiguous_format)
    assert back.stride() == (20, 20, 4, 1) and torch.equal(back, x)
    two = torch.randn(2, 3, 4, 5)
    assert in_layout(two, torch.channels_last).stride() == two.contiguous(memory_format=torch.channels_last).stride()
    vol = torch.randn(2, 1, 3, 4, 5).transpose(-1, -2)
    assert in_layout(vol, torch.contiguous_format).is_contiguous()
    with pytest.raises(ValueError, match="channels_last needs a 4-D tensor"):
        in_layout(vol, torch.channels_last)


@pytest.mark.parametrize("channels", [2, 1])
@pytest.mark.parametrize("name", SAMPLERS)
def test_channels_last_feeds_nhwc_and_changes_nothing_else(name, channels):
    """With 1 channel, channels-last and standard strides are both contiguous: the state must still
    get channels-last strides, or the convolutions run in NCHW (they read the input's strides)."""
    net = _SmallUNetLike(channels)
    shape = (channels, 8, 8)
    mask = torch.ones(shape).bernoulli_(0.5, generator=torch.Generator().manual_seed(0))
    physics = dinv.physics.Inpainting(img_size=shape, mask=mask)
    y = physics.A(torch.rand(2, *shape, generator=torch.Generator().manual_seed(1)))
    outs = {}
    for flag in (False, True):
        net.formats.clear()
        states = []
        outs[flag] = SAMPLERS[name](net, num_steps=6, channels_last=flag, callback=lambda i, s, x, x0: states.append(
            (_nhwc(x), _nhwc(x0))))(y, physics, generator=torch.Generator().manual_seed(0))
        assert set(net.formats) == {flag}   # every network call ran in NHWC exactly when asked
        # the loop keeps the state in the network's layout; DPS and RED-Diff also compute x0_hat there
        assert {x for x, _ in states} == {flag}
        if name in ("dps", "reddiff"):
            assert {x0 for _, x0 in states} == {flag}
        # the reconstruction comes back in the standard layout
        assert outs[flag].stride() == torch.empty(outs[flag].shape).stride()
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-5)


def test_compile_option_wraps_the_network_with_torch_compile():
    net = _SmallUNetLike()
    physics = dinv.physics.Inpainting(img_size=(2, 8, 8), mask=torch.ones(2, 8, 8))
    y = physics.A(torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(1)))
    plain = DPS(net, num_steps=4, zeta=0.3, progress=False, sigma_start=None, squared_norm=False)
    compiled = DPS(net, num_steps=4, zeta=0.3, progress=False, compile={"backend": "eager"}, sigma_start=None, squared_norm=False)
    assert compiled.network._denoise is not net and compiled.prior is net
    a = plain(y, physics, generator=torch.Generator().manual_seed(0))
    b = compiled(y, physics, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert compiled.last_nfe == plain.last_nfe == 4
