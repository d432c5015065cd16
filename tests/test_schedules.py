"""Sigma grids: shape, order, end points, and the VP -> VE conversion."""
import pytest
import torch

from diffinverse.priors import schedules


@pytest.mark.parametrize("fn", [schedules.karras, schedules.ve_geometric])
def test_ve_grids_are_decreasing_float64_with_endpoints(fn):
    s = fn(10, 0.002, 80.0)
    assert s.dtype == torch.float64 and s.shape == (11,)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert (s[1:] < s[:-1]).all()


def test_karras_matches_eq5_midpoint():
    # Karras et al. 2022, Eq. 5, at i = (n-1)/2 with rho = 7
    s = schedules.karras(3, 0.01, 10.0, rho=7.0)
    mid = ((10.0 ** (1 / 7) + 0.01 ** (1 / 7)) / 2) ** 7
    assert s[1].item() == pytest.approx(mid, rel=1e-12)


def test_geometric_has_constant_ratio():
    s = schedules.ve_geometric(6, 0.1, 10.0)[:-1]
    ratios = s[1:] / s[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-12)


def test_vp_linear_matches_ddpm_alpha_bar():
    s = schedules.vp_linear(1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    # the first grid entry is the noisiest training step, the second to last the cleanest
    assert s[0].item() == pytest.approx(torch.sqrt((1 - abar[-1]) / abar[-1]).item(), rel=1e-12)
    assert s[-2].item() == pytest.approx(torch.sqrt((1 - abar[0]) / abar[0]).item(), rel=1e-12)
    assert (s[1:] < s[:-1]).all()


def test_vp_cosine_is_decreasing_and_bounded():
    s = schedules.vp_cosine(50)
    assert (s[1:] < s[:-1]).all() and s[-1] == 0 and torch.isfinite(s).all()


@pytest.mark.parametrize("args", [(0, 0.1, 1.0), (5, 1.0, 0.1), (5, 0.0, 1.0)])
def test_bad_arguments_raise(args):
    with pytest.raises(ValueError):
        schedules.karras(*args)


def test_vp_subsample_rejects_too_many_steps():
    with pytest.raises(ValueError, match="num_steps"):
        schedules.vp_linear(2000)
