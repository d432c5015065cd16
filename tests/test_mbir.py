"""DiffusionMBIR: its ADMM-TV half against an independent TV solver, exactness, chunking, and the
paper's point (a TV term across slices helps a 2-D prior) on a Gaussian-mixture toy volume."""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from diffinverse.baselines import tv_reconstruction
from diffinverse.operators import SliceStack
from diffinverse.operators.volume import fold_slices
from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.samplers import DDS, DiffusionMBIR
from diffinverse.samplers.admm_tv import AdmmTV

D = 6


def _masked_volume(seed=0, shape=(1, 1, D, 4, 4), p=0.5):
    """Each slice sees its own random pixels; the first slice sees all (so that every line along
    the slice axis is observed somewhere and the TV minimiser is unique)."""
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(shape, generator=g) < p).double()
    masks[:, :, 0] = 1.0
    return SliceStack(dinv.physics.Inpainting(img_size=shape[1:2] + shape[3:], mask=fold_slices(masks, 2))), g


def _permuted(op):
    """The same operator on volumes whose slice axis is last (for a TV solver that differences
    trailing dims)."""
    return dinv.physics.LinearPhysics(A=lambda v: op.A(v.movedim(-1, 2)),
                                      A_adjoint=lambda y: op.A_adjoint(y).movedim(2, -1))


@pytest.mark.parametrize("p", [1.0, 0.5], ids=["denoising", "inpainting"])
@pytest.mark.parametrize("tv", ["slice", "all"])
def test_admm_alone_converges_to_the_tv_minimum(tv, p):
    """Against PDHG (tv_reconstruction) run to a tight tolerance: the same objective value, and where
    the minimiser is unique (denoising: a strongly convex data term) the same minimiser. With
    missing pixels 1-D TV has many minimisers (any monotone path between observed values)."""
    physics, g = _masked_volume(seed=1, p=p)
    x_true = torch.randn(1, 1, D, 4, 4, generator=g, dtype=torch.float64)
    y = physics.A(x_true) + 0.05 * torch.randn(physics.A(x_true).shape, generator=g, dtype=torch.float64)
    lam = 0.1
    admm = AdmmTV(lam=lam, rho=1.0, axes=(2,) if tv == "slice" else (2, 3, 4), cg_iters=10)
    state, aty = admm.init_state(x_true), physics.A_adjoint(y)
    x = aty.clone()
    for _ in range(400):
        x = admm.step(x, aty, physics, state)
    if tv == "slice":   # PDHG on the slice axis moved last, differencing only that axis
        ref = tv_reconstruction(y, _permuted(physics), lam=lam, tol=1e-9, num_iters=100000, spatial_dims=1,
                                x_init=aty.movedim(2, -1)).movedim(-1, 2)
    else:
        ref = tv_reconstruction(y, physics, lam=lam, tol=1e-9, num_iters=100000)

    def objective(v):
        tv_norm = admm.diff(v).square().sum(dim=(0, 2)).sqrt().sum()
        return 0.5 * (physics.A(v) - y).square().sum() + lam * tv_norm

    assert abs(objective(x) - objective(ref)) <= 1e-7 * objective(ref)
    if p == 1.0:
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_with_lam_zero_a_fully_sampled_volume_comes_back():
    prior = GaussianMixturePrior.random(2, (1, 4, 4), generator=torch.Generator().manual_seed(0), sigma_max=20.0)
    physics = SliceStack(dinv.physics.Inpainting(img_size=(1, 4, 4), mask=torch.ones(1, 4, 4)))
    x = torch.randn(2, 1, D, 4, 4, generator=torch.Generator().manual_seed(1))
    for dc in ("tweedie", "noisy"):
        # rho 0.01 (the official MRI value): the ADMM penalty then barely holds x back from A^H y
        out = DiffusionMBIR(prior, dc=dc, lam=0.0, rho=0.01, num_steps=10, progress=False)(
            physics.A(x), physics, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(out, x, rtol=0, atol=1e-4)


def test_chunks_bound_the_network_batch_and_change_nothing_else():
    prior = GaussianMixturePrior.random(2, (1, 4, 4), generator=torch.Generator().manual_seed(0), sigma_max=20.0)
    physics, g = _masked_volume(seed=3)
    physics = SliceStack(dinv.physics.Inpainting(img_size=(1, 4, 4), mask=physics.op2d.mask.float()))
    y = physics.A(torch.randn(1, 1, D, 4, 4, generator=g))
    batches = []
    outs = {}
    for chunk in (4, 100):
        s = DiffusionMBIR(prior, num_steps=5, chunk_size=chunk, progress=False)
        inner = s.network._denoise
        s.network._denoise = lambda x, sigma: batches.append(x.shape[0]) or inner(x, sigma)
        outs[chunk] = s(y, physics, generator=torch.Generator().manual_seed(0))
        assert s.last_nfe == 5 * -(-D // chunk)
    assert max(batches[:10]) == 4 and batches[-1] == D
    torch.testing.assert_close(outs[4], outs[100], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_tv_across_slices_beats_independent_slices_on_a_volume_of_like_slices():
    """The paper's point on a toy: slices that vary slowly along the volume, each seen through its
    own random half of the pixels. TV along the slice axis recovers them better than the same
    sampler without it (lam = 0) and than 2-D DDS slice by slice."""
    prior = GaussianMixturePrior.random(2, (1, 4, 4), generator=torch.Generator().manual_seed(4),
                                        std_range=(0.2, 0.5), sigma_max=20.0)
    g = torch.Generator().manual_seed(5)
    x2d = prior.sample(1, generator=g)
    x = (x2d[:, :, None] + 0.02 * torch.randn(1, 1, D, 4, 4, generator=g)).float()
    physics, _ = _masked_volume(seed=6, p=0.4)
    physics = SliceStack(dinv.physics.Inpainting(img_size=(1, 4, 4), mask=physics.op2d.mask.float()))
    y = physics.A(x) + 0.05 * torch.randn(physics.A(x).shape, generator=g) * physics.A(torch.ones_like(x))

    def err(out):
        return ((out - x).norm() / x.norm()).item()

    op2d = physics.op2d
    slices = DDS(prior, num_steps=30, gamma=1.0, progress=False)(
        fold_slices(y, 2), op2d, generator=torch.Generator().manual_seed(0))
    per_slice = err(slices.reshape(1, D, 1, 4, 4).movedim(1, 2))
    for dc, steps in (("tweedie", 30), ("noisy", 100)):
        with_tv, without = (err(DiffusionMBIR(prior, dc=dc, lam=lam, rho=0.5, num_steps=steps, progress=False)(
            y, physics, generator=torch.Generator().manual_seed(0))) for lam in (0.05, 0.0))
        # measured: tweedie 0.04 against 0.29 (lam 0) and 0.82 (DDS); noisy 0.20 against 1.38
        assert with_tv < 0.7 * min(without, per_slice), (dc, with_tv, without, per_slice)


def test_bad_input_is_named():
    prior = GaussianMixturePrior.random(2, (1, 4, 4), generator=torch.Generator().manual_seed(0), sigma_max=20.0)
    for bad, match in (({"chunk_size": 0}, "chunk_size"), ({"dc": "admm"}, "dc"), ({"axis": 1}, "axis"),
                       ({"tv": "some"}, "tv"), ({"lam": -1.0}, "lam"), ({"boundary": "reflect"}, "boundary")):
        with pytest.raises(ValueError, match=match):
            DiffusionMBIR(prior, **bad)
    image_physics = dinv.physics.Inpainting(img_size=(1, 4, 4), mask=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="volumes"):
        DiffusionMBIR(prior, num_steps=3, progress=False)(torch.zeros(1, 1, 4, 4), image_physics)
