"""Active Diffusion Subsampling: its entropy estimates and first choices against exact ones on a
Gaussian prior, its measure protocol, determinism and bad input."""
from __future__ import annotations

import math

import deepinv as dinv
import pytest
import torch

from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.samplers import DDS, ActiveSubsampling
from diffinverse.samplers.ads import candidate_entropies, kspace_line_candidates

SHAPE = (1, 4, 4)
NOISE = 0.01


@pytest.mark.parametrize("kernel", ["ads", "gmm"])
def test_entropy_estimates_rank_candidates_as_the_exact_gaussian_entropies(kernel):
    """Predicted measurements drawn from a known Gaussian: each candidate (a group of 2 entries)
    has exact entropy 0.5 log det(2 pi e (S_l + s^2 I)); both estimates pick the same maximiser
    and rank the candidates alike (they are not the entropies themselves: ads is a soft maximum
    of distances, gmm a kernel-density estimate)."""
    g = torch.Generator().manual_seed(0)
    stds = torch.tensor([0.3, 1.0, 0.5, 2.0, 0.1, 1.4], dtype=torch.float64)   # of 6 entries, 2 per candidate
    samples = torch.randn(256, 6, generator=g, dtype=torch.float64) * stds
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    s = 1.0
    exact = torch.stack([0.5 * torch.logdet(2 * math.pi * math.e * torch.diag(stds[2 * l:2 * l + 2] ** 2 + s**2))
                         for l in range(3)])
    h = candidate_entropies(samples, groups, 3, s=s, kernel=kernel)
    assert h.argmax() == exact.argmax() and torch.equal(h.argsort(), exact.argsort())


def _gaussian_prior():
    """One Gaussian on 4 x 4 images with correlated pixels whose standard deviations grow by 1.25x
    from one to the next (so that the exact greedy choices win by clear margins, checked below)."""
    g = torch.Generator().manual_seed(3)
    scales = (0.2 * 1.25 ** torch.arange(16, dtype=torch.float64))[torch.randperm(16, generator=g)]
    ii, jj = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    pos = torch.stack([ii.flatten(), jj.flatten()], 1).double()
    corr = torch.exp(-torch.cdist(pos, pos) ** 2 / 2.0)
    cov = scales[:, None] * corr * scales[None, :] + 1e-3 * torch.eye(16, dtype=torch.float64)
    return GaussianMixturePrior(torch.ones(1), torch.zeros(1, 16, dtype=torch.float64), cov[None], shape=SHAPE,
                                sigma_max=20.0), cov


def _exact_greedy(cov, budget):
    """Greedy maximum-entropy pixels under exact Gaussian conditioning (independent of the values);
    each choice's posterior variance is at least 1.5x the runner-up's."""
    chosen = []
    for _ in range(budget):
        if chosen:
            s = torch.tensor(chosen)
            k = cov[:, s] @ torch.linalg.solve(cov[s][:, s] + NOISE**2 * torch.eye(len(chosen), dtype=cov.dtype),
                                               cov[s, :])
            var = (cov - k).diagonal()
        else:
            var = cov.diagonal()
        var = var.clone()
        var[chosen] = -1
        top = var.sort(descending=True).values
        assert top[0] >= 1.5 * top[1]   # a margin that particle estimates can resolve
        chosen.append(int(var.argmax()))
    return chosen


def _pixel_problem(prior, calls):
    x = prior.sample(1, generator=torch.Generator().manual_seed(4))
    candidates = torch.eye(16, dtype=torch.bool).reshape(16, *SHAPE)     # one pixel each

    def measure(mask):
        calls.append(mask.clone())
        seed = int(mask.flatten().nonzero()[0])   # the same noise whenever the same pixel is measured
        return x * mask + NOISE * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * mask

    def physics_for_mask(mask):
        return dinv.physics.Inpainting(img_size=SHAPE, mask=mask.float())

    groups = torch.arange(16).reshape(SHAPE)
    return x, candidates, measure, physics_for_mask, groups


@pytest.mark.parametrize("kernel", ["ads", "gmm"])
def test_first_choices_are_the_exact_maximum_entropy_choices(kernel):
    prior, cov = _gaussian_prior()
    calls = []
    _, candidates, measure, physics_for_mask, groups = _pixel_problem(prior, calls)
    ads = ActiveSubsampling(DDS(prior, num_steps=40, data_consistency="projection", progress=False), budget=3,
                            num_particles=128, window=(0.5, 0.9), kernel=kernel, s=0.5)
    out = ads(measure, physics_for_mask, candidates, initial_mask=torch.zeros(SHAPE, dtype=torch.bool),
              groups=groups, x_shape=(1, *SHAPE), generator=torch.Generator().manual_seed(0))
    assert list(out.order) == _exact_greedy(cov, 3)   # measured: 3 seeds x 2 kernels, all 6 match
    # measure: once per acquisition, each time only the new pixel (nothing measured twice)
    assert len(calls) == 3 and all(int(c.sum()) == 1 for c in calls)
    assert int(torch.stack(calls).sum(0).max()) == 1 and int(out.mask.sum()) == 3
    assert out.entropies.shape == (3, 16) and torch.isinf(out.entropies[2, list(out.order[:2])]).all()


def test_same_seed_same_choices_and_bad_input_is_named():
    prior, _ = _gaussian_prior()
    calls = []
    _, candidates, measure, physics_for_mask, groups = _pixel_problem(prior, calls)
    empty = torch.zeros(SHAPE, dtype=torch.bool)
    ads = ActiveSubsampling(DDS(prior, num_steps=10, data_consistency="projection", progress=False), budget=2,
                            num_particles=4)
    run = lambda **kw: ads(measure, physics_for_mask, candidates, initial_mask=kw.get("mask", empty), groups=groups,
                           x_shape=(1, *SHAPE), generator=torch.Generator().manual_seed(1))
    a, b = run(), run()
    assert a.order == b.order and torch.equal(a.mean, b.mean)
    with pytest.raises(ValueError, match="nothing left"):
        run(mask=torch.ones(SHAPE, dtype=torch.bool))
    with pytest.raises(ValueError, match="budget 20 exceeds"):
        ActiveSubsampling(ads.sampler, budget=20, num_particles=4)(
            measure, physics_for_mask, candidates, initial_mask=empty, groups=groups, x_shape=(1, *SHAPE))
    for bad_measure, match in ((lambda m: torch.zeros(1, 2, 4, 4), "shape"),
                               (lambda m: torch.full((1, *SHAPE), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=match):
            ads(bad_measure, physics_for_mask, candidates, initial_mask=candidates[0], groups=groups,
                x_shape=(1, *SHAPE))
    for bad in ({"budget": 0}, {"num_particles": 1}, {"window": (0.5, 0.2)}, {"kernel": "mi"}, {"s": 0.0}):
        with pytest.raises(ValueError):
            ActiveSubsampling(ads.sampler, **{"budget": 2, **bad})


def test_kspace_line_candidates_are_the_columns():
    candidates, groups = kspace_line_candidates((2, 3, 5, 6))           # multi-coil k-space (2, coils, H, W)
    assert candidates.shape == (6, 5, 6) and torch.equal(candidates.sum(0), torch.ones(5, 6, dtype=torch.long))
    assert torch.equal(candidates[2].nonzero()[:, 1].unique(), torch.tensor([2]))
    assert groups.shape == (2, 3, 5, 6) and torch.equal(groups[1, 2, 4], torch.arange(6))
    with pytest.raises(ValueError, match="end in"):
        kspace_line_candidates((5,))
