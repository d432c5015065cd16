"""DDS and its Tweedie-space data-consistency step: exact where they promise to be, and on an exact posterior.

The CG step is checked against a dense solve; DDS against the point-mass posterior of a noiseless
full-rank problem and the exact posterior of a Gaussian mixture (it is not an exact posterior
sampler: what it promises is data consistency and a mean near the posterior's).
"""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.samplers import DDS
from diffinverse.samplers.data_consistency import cg_data_consistency
from test_samplers_gmm import NOISE, SHAPE, _bimodal_prior, _full_rank_physics, _inpainting, _measure, _row_mask


def test_cg_step_matches_a_dense_solve():
    physics, m = _full_rank_physics(seed=3)
    physics_lo = dinv.physics.Inpainting(img_size=SHAPE, mask=_row_mask())   # singular A^H A
    g = torch.Generator().manual_seed(0)
    x0_hat, y = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64), torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    for phys, mat in ((physics, m.double()), (physics_lo, torch.diag(_row_mask().flatten()).double())):
        gamma = 2.5
        got = cg_data_consistency(x0_hat, phys.A_adjoint(y), phys, gamma=gamma, num_iters=40)
        dense = torch.linalg.solve(torch.eye(16, dtype=torch.float64) + gamma * mat.T @ mat,
                                   (x0_hat.flatten(1) + gamma * (y.flatten(1) @ mat)).T).T
        # (to 1e-5: deepinv's CG adds eps = 1e-8 to its denominators, which stalls it near the solution)
        torch.testing.assert_close(got.flatten(1), dense, rtol=1e-4, atol=1e-5)
    # fewer iterations than unknowns: not the solution, but closer to it than the start
    few = cg_data_consistency(x0_hat, physics.A_adjoint(y), physics, gamma=gamma, num_iters=2)
    exact = cg_data_consistency(x0_hat, physics.A_adjoint(y), physics, gamma=gamma, num_iters=16)
    assert 0 < (few - exact).norm() < 0.5 * (x0_hat - exact).norm()


@pytest.mark.parametrize("kwargs", [{"gamma": 1e4, "cg_iters": 16}, {"data_consistency": "projection"}],
                         ids=["cg", "projection"])
def test_noiseless_full_rank_gives_exact_solution(kwargs):
    prior = GaussianMixturePrior.random(3, SHAPE, generator=torch.Generator().manual_seed(5),
                                        std_range=(0.1, 0.5), sigma_max=20.0)
    physics, _ = _full_rank_physics()
    x0 = prior.sample(4, generator=torch.Generator().manual_seed(6))
    x = DDS(prior, num_steps=20, progress=False, **kwargs, sigma_start=None)(physics.A(x0), physics,
                                                          generator=torch.Generator().manual_seed(7))
    rel = ((x - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).max().item()
    assert rel <= 1e-4, rel   # measured: 5e-7 (cg), 1e-5 (projection)


def test_dds_mean_near_the_exact_posterior_mean_and_fits_the_data():
    """What DDS promises on an inpainting posterior with two modes: its outputs fit the measured
    pixels to the noise level, and their mean is far closer to the posterior mean than the prior's
    mean is. Not promised: the posterior's spread or its mode weights."""
    prior = _bimodal_prior()
    physics = _inpainting()
    _, y = _measure(prior, physics, seed=1)
    post = prior.posterior(y.double(), physics, NOISE)
    out = DDS(prior, num_steps=50, gamma=1 / (2 * NOISE**2) / 10, progress=False, sigma_start=None).posterior(
        y, physics, num_samples=200, generator=torch.Generator().manual_seed(2))
    exact = post.mean().float().reshape(SHAPE)
    prior_mean = (prior.weights[:, None] * prior.means).sum(0).float().reshape(SHAPE)
    err = (out.mean[0] - exact).norm().item()
    assert err < 0.5 * (prior_mean - exact).norm().item(), err   # measured over 3 seeds: 0.27-0.28
    residual = (physics.A(out.samples[:, 0]) - y).flatten(1).norm(dim=1)
    assert residual.max().item() <= NOISE * 8 ** 0.5   # it fits y, noise included (measured: 0.0015)


def test_bad_settings_and_a_nonlinear_physics_are_refused():
    prior = _bimodal_prior()
    for bad in ({"gamma": 0.0}, {"gamma": float("nan")}, {"cg_iters": 0}, {"eta": 1.5},
                {"data_consistency": "admm"}):
        with pytest.raises(ValueError):
            DDS(prior, **bad, sigma_start=None)
    nonlinear = dinv.physics.Physics(A=lambda x: x.square())
    y = torch.ones(1, *SHAPE)
    with pytest.raises(TypeError, match="linear physics"):
        DDS(prior, num_steps=4, progress=False, sigma_start=None)(y, nonlinear, x_shape=(1, *SHAPE))
