"""Active Diffusion Subsampling: its entropy estimates and first choices against exact ones on a
Gaussian prior, its measure protocol, determinism and bad input."""
from __future__ import annotations

import math

import deepinv as dinv
import pytest
import torch

from diffinverse.operators import CT
from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.samplers import DDS, ActiveSubsampling
from diffinverse.samplers.ads import (
    ViewMaskedCT,
    candidate_entropies,
    ct_view_candidates,
    kspace_line_candidates,
)

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


@pytest.mark.parametrize("shape, axis", [((2, 3, 6, 5), 3), ((1, 7, 4), 1)])
def test_one_axis_grouping_gives_the_same_distances_as_any_grouping(shape, axis):
    """Candidates along one axis (k-space columns, sinogram rows) take a Gram-matrix path; it must
    give the per-entry path's pairwise distances, entries of no candidate (-1) left out."""
    from diffinverse.samplers.ads import _grouping_axis, _pair_distances, _pair_distances_along

    g = torch.Generator().manual_seed(0)
    predicted = 50 + torch.randn(5, *shape, generator=g)                  # an offset: G_ii + G_jj - 2 G_ij cancels
    ids = torch.tensor([0, 2, -1, 1, 2, 0, 1][:shape[axis]])
    groups = ids.reshape([-1 if d == axis else 1 for d in range(len(shape))]).expand(shape).clone()
    assert _grouping_axis(groups) == axis
    torch.testing.assert_close(_pair_distances_along(predicted, groups, 3, axis),
                               _pair_distances(predicted, groups, 3), rtol=1e-10, atol=1e-10)
    assert _grouping_axis(torch.arange(12).reshape(1, 3, 4)) is None       # pixels: ids vary along two axes


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


def _exact_greedy(cov, budget, measured):
    """Greedy maximum-entropy pixels after ``measured`` under exact Gaussian conditioning
    (independent of the values); each choice's posterior variance is at least 1.5x the runner-up's."""
    chosen = list(measured)
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
    return chosen[len(measured):]


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
    """Pixel 5 is measured up front (one whose exact greedy choices after it win by clear
    margins); ADS's three choices are the exact greedy ones given it."""
    prior, cov = _gaussian_prior()
    calls = []
    exact = [5, *_exact_greedy(cov, 3, [5])]
    _, candidates, measure, physics_for_mask, groups = _pixel_problem(prior, calls)
    ads = ActiveSubsampling(DDS(prior, num_steps=40, data_consistency="projection", sigma_start=None, progress=False),
                            budget=3, num_particles=128, window=(0.5, 0.9), kernel=kernel, s=0.5)
    out = ads(measure, physics_for_mask, candidates, initial_mask=candidates[exact[0]],
              groups=groups, x_shape=(1, *SHAPE), generator=torch.Generator().manual_seed(0))
    assert list(out.order) == exact[1:]
    # measure: once for the initial pixel, then once per acquisition, each time only the new pixel
    assert len(calls) == 4 and all(int(c.sum()) == 1 for c in calls)
    assert int(torch.stack(calls).sum(0).max()) == 1 and int(out.mask.sum()) == 4
    assert out.entropies.shape == (3, 16) and torch.isinf(out.entropies[2, [exact[0], *out.order[:2]]]).all()
    # DDS reuses the acquisition's network pass: one pass per step
    assert ads.last_nfe == len(ads.sampler.sigmas) - 1


@pytest.mark.parametrize("kernel, warns", [("gmm", True), ("ads", False)])
def test_a_saturated_gmm_kernel_is_named_not_silently_ranked_by_index(kernel, warns):
    """With s far below the particles' disagreement every gmm entropy sits at its bound 0 and the
    choice would fall to the lowest index without a word: the run warns, naming s; the ads kernel
    (no bound) ranks the same particles and does not warn."""
    import warnings

    prior, _ = _gaussian_prior()
    _, candidates, measure, physics_for_mask, groups = _pixel_problem(prior, [])
    ads = ActiveSubsampling(DDS(prior, num_steps=6, data_consistency="projection", sigma_start=None, progress=False),
                            budget=2, num_particles=4, window=(0.0, 0.5), kernel=kernel, s=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ads(measure, physics_for_mask, candidates, initial_mask=candidates[0], groups=groups,
            x_shape=(1, *SHAPE), generator=torch.Generator().manual_seed(2))
    saturated = [w for w in caught if "saturated" in str(w.message)]
    assert bool(saturated) == warns
    if warns:
        assert "s=1e-06" in str(saturated[0].message) and saturated[0].category is RuntimeWarning


def test_a_budget_beyond_the_window_acquires_several_candidates_per_step():
    """6 steps, window (0, 0.5): 3 acquisition steps for a budget of 8; every acquisition is
    still one measure call of one new pixel, and those of a step are its highest entropies."""
    prior, _ = _gaussian_prior()
    calls = []
    _, candidates, measure, physics_for_mask, groups = _pixel_problem(prior, calls)
    ads = ActiveSubsampling(DDS(prior, num_steps=6, data_consistency="projection", sigma_start=None, progress=False),
                            budget=8, num_particles=4, window=(0.0, 0.5))
    steps = ads.acquisition_steps(6)
    assert steps == [0, 0, 0, 1, 1, 1, 2, 2]
    out = ads(measure, physics_for_mask, candidates, initial_mask=candidates[0], groups=groups, x_shape=(1, *SHAPE),
              generator=torch.Generator().manual_seed(2))
    assert len(calls) == 9 and int(torch.stack(calls).sum(0).max()) == 1 and int(out.mask.sum()) == 9
    assert len(set(out.order)) == 8 and 0 not in out.order
    first = out.entropies[0]                                      # the first step's entropies
    assert set(out.order[:3]) == set(first.topk(3).indices.tolist())
    assert ads.acquisition_steps(100) == [k * 6 for k in range(8)]   # the official schedule: 50 // 8 = 6 apart


def test_same_seed_same_choices_and_bad_input_is_named():
    prior, _ = _gaussian_prior()
    calls = []
    _, candidates, measure, physics_for_mask, groups = _pixel_problem(prior, calls)
    empty = torch.zeros(SHAPE, dtype=torch.bool)
    ads = ActiveSubsampling(DDS(prior, num_steps=10, data_consistency="projection", sigma_start=None,
                                progress=False), budget=2, num_particles=4)
    run = lambda seed=1, **kw: ads(measure, physics_for_mask, candidates, initial_mask=kw.get("mask", candidates[5]),
                                   groups=groups, x_shape=(1, *SHAPE), generator=torch.Generator().manual_seed(seed))
    a, b, c = run(), run(), run(seed=2)
    assert a.order == b.order and torch.equal(a.mean, b.mean) and torch.equal(a.entropies, b.entropies)
    assert not torch.equal(a.mean, c.mean)                         # the seed drives the particles
    with pytest.raises(ValueError, match="nothing left"):
        run(mask=torch.ones(SHAPE, dtype=torch.bool))
    with pytest.raises(ValueError, match="initial_mask is empty"):
        run(mask=empty)
    with pytest.raises(ValueError, match="budget 16 exceeds the 15 candidates"):
        ActiveSubsampling(ads.sampler, budget=16, num_particles=4)(
            measure, physics_for_mask, candidates, initial_mask=candidates[5], groups=groups, x_shape=(1, *SHAPE))
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


def test_ct_views_as_candidates_and_the_view_masked_operator():
    ct = CT(8, torch.arange(6) * math.pi / 6, backend="torch")
    candidates, groups = ct_view_candidates(ct.sinogram_shape)
    a, d = ct.sinogram_shape
    assert candidates.shape == (6, 1, a, d) and torch.equal(candidates.sum(0), torch.ones(1, a, d, dtype=torch.long))
    assert torch.equal(groups[0, :, 0], torch.arange(6)) and torch.equal(groups[0, 4], torch.full((d,), 4))
    mask = candidates[0] | candidates[3]                              # views 0 and 3: equispaced
    op = ViewMaskedCT(ct, mask)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 1, a, d, generator=g,
                                                                                 dtype=torch.float64)
    assert torch.equal(op.A(x)[:, :, [1, 2, 4, 5]], torch.zeros(2, 1, 4, d, dtype=torch.float64))
    torch.testing.assert_close((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum())      # an adjoint pair
    # A_dagger: the FBP of the two views' own operator (quadrature pi / 2 per view)
    two = CT(8, torch.tensor([0.0, math.pi / 2]), backend="torch")
    torch.testing.assert_close(op.A_dagger(op.A(x)), two.A_dagger(two.A(x)))
    with pytest.raises(ValueError, match="whole views"):
        ViewMaskedCT(ct, torch.eye(a, d, dtype=torch.bool))
    with pytest.raises(ValueError, match="sinogram"):
        ViewMaskedCT(ct, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_angles"):
        ct_view_candidates((6,))


def test_the_kernels_differ_where_one_particle_is_far():
    """Two one-entry candidates: 15 particles agree on candidate 0 and one lies 6 away; on
    candidate 1 all 16 spread evenly over [-1.5, 1.5]. The exact entropy of the particles' kernel
    density (by quadrature) is larger for candidate 1, and the gmm kernel (an estimate of it)
    picks 1; the ads kernel's positive exponent weights the largest distance exponentially, so the
    one far particle makes it pick 0."""
    s = 0.5
    predicted = torch.stack([torch.cat([torch.zeros(15), torch.tensor([6.0])]),
                             torch.linspace(-1.5, 1.5, 16)], dim=1).double()              # (16 particles, 2)
    t = torch.linspace(-10, 16, 20001, dtype=torch.float64)
    density = torch.exp(-(t[:, None, None] - predicted) ** 2 / (2 * s**2)).mean(1) / math.sqrt(2 * math.pi * s**2)
    exact = -(density * density.clamp_min(1e-300).log()).sum(0) * (t[1] - t[0])          # (2,)
    groups = torch.tensor([0, 1])
    assert int(exact.argmax()) == 1
    assert int(candidate_entropies(predicted, groups, 2, s=s, kernel="gmm").argmax()) == 1
    assert int(candidate_entropies(predicted, groups, 2, s=s, kernel="ads").argmax()) == 0


class _RowPhysics(dinv.physics.LinearPhysics):
    """Rows of a matrix ``M`` (one measurement each) on 4 x 4 images, kept where ``mask`` is set."""

    def __init__(self, rows: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.rows, self.mask = rows, mask.float()

    def A(self, x, **kwargs):
        return (x.flatten(1) @ self.rows.to(x).T) * self.mask.to(x)

    def A_adjoint(self, y, **kwargs):
        return ((y * self.mask.to(y)) @ self.rows.to(y)).reshape(-1, *SHAPE)


def test_consistent_predictions_know_what_the_measurements_already_determine():
    """Independent pixels with variances 1 (pixel 0), 0.8 (2), 0.5 (4) and 0.01 (the rest); candidate
    rows e0 (measured first), e0 + 0.1 e1 (almost determined by it), e2, 0.9 e2 + 0.1 e3 (almost
    determined by e2) and e4. Exact greedy conditioning takes e2 (variance 0.8), then e4 (0.5).
    Two acquisitions at one step: with the Tweedie predictions ADS takes two of the rows its
    particles disagree on most, e0 + 0.1 e1, e2 and 0.9 e2 + 0.1 e3 (which two depends on the
    particles), one of them almost fixed by e0 or by the other, and never e4; with predictions
    made consistent with the measurements (again after the first acquisition) it takes the exact
    choices."""
    var = torch.full((16,), 0.01, dtype=torch.float64)
    var[0], var[2], var[4] = 1.0, 0.8, 0.5
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 16, dtype=torch.float64), torch.diag(var)[None],
                                 shape=SHAPE, sigma_max=20.0)
    e = torch.eye(16, dtype=torch.float64)
    rows = torch.stack([e[0], e[0] + 0.1 * e[1], e[2], 0.9 * e[2] + 0.1 * e[3], e[4]])
    x = prior.sample(1, generator=torch.Generator().manual_seed(4))
    candidates = torch.eye(5, dtype=torch.bool)

    def measure(mask):
        return _RowPhysics(rows, mask).A(x)

    orders = {}
    for predict in ("tweedie", "consistent"):
        sampler = DDS(prior, num_steps=20, sigma_start=None, progress=False)
        ads = ActiveSubsampling(sampler, budget=2, num_particles=64, window=(0.5, 0.55), predict=predict)
        assert ads.acquisition_steps(20) == [10, 10]
        out = ads(measure, lambda m: _RowPhysics(rows, m), candidates, initial_mask=candidates[0],
                  groups=torch.arange(5), x_shape=(1, *SHAPE), generator=torch.Generator().manual_seed(0))
        orders[predict] = out.order
        assert ads.last_nfe == 20              # the consistent predictions cost no network pass
    assert orders["consistent"] == (2, 4)
    assert 4 not in orders["tweedie"]
    with pytest.raises(ValueError, match="predict"):
        ActiveSubsampling(sampler, budget=2, predict="posterior")
