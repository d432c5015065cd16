"""Classical baselines: the TV solver (PDHG) against known answers and against the adjoint."""
from __future__ import annotations

import math

import deepinv as dinv
import pytest
import torch

from diffinverse import baselines
from diffinverse.baselines import total_variation, tv_objective, tv_reconstruction
from diffinverse.testing import assert_adjoint


def _psnr(gt: torch.Tensor, x: torch.Tensor) -> float:
    return 10 * math.log10(gt.abs().max().item() ** 2 / (gt - x).pow(2).mean().item())


def _gaussian(sigma: float) -> torch.Tensor:
    """A normalised Gaussian blur kernel ``(1, 1, k, k)``, ``k = 2 * ceil(3 sigma) + 1``."""
    r = torch.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1, dtype=torch.float32)
    k = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (k / k.sum())[None, None]


def _blocks(n: int, size: int, *, channels: int = 1, generator: torch.Generator) -> torch.Tensor:
    """Piecewise-constant images: a background and three random rectangles, ``(n, C, size, size)``."""
    x = torch.zeros(n, channels, size, size)
    for i in range(n):
        x[i] = 0.2 * torch.rand(channels, 1, 1, generator=generator)
        for _ in range(3):
            r0, c0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            h, w = torch.randint(size // 6, size // 2, (2,), generator=generator).tolist()
            x[i, :, r0:r0 + h, c0:c0 + w] = torch.rand(channels, 1, 1, generator=generator) * 0.8 + 0.2
    return x


def test_gradient_pair_is_adjoint():
    class Grad:
        def A(self, x):
            return baselines._grad(x, x.ndim - 2)

        def A_adjoint(self, p):
            return baselines._grad_adjoint(p, p.ndim - 3)

    assert_adjoint(Grad(), (2, 2, 5, 7), rtol=1e-12)
    assert_adjoint(Grad(), (1, 1, 3, 4, 6), rtol=1e-12)


def test_total_variation_known_values():
    x = torch.zeros(1, 1, 4, 4)
    x[..., :, 2:] = 1.0  # one vertical edge of height 4 and jump 1
    assert total_variation(x).item() == pytest.approx(4.0)
    z = torch.cat([0.6 * x, 0.8 * x], dim=1)  # complex image with |jump| = 1: TV of the modulus
    assert total_variation(z).item() == pytest.approx(4.0)
    vol = x.unsqueeze(2).repeat(1, 1, 3, 1, 1)  # (1, 1, 3, 4, 4): three slices, no change along D
    assert total_variation(vol).item() == pytest.approx(12.0)
    assert total_variation(vol, spatial_dims=2).item() == pytest.approx(12.0)


def test_tv_beats_adjoint_on_blurred_blocks():
    g = torch.Generator().manual_seed(0)
    x = _blocks(2, 32, generator=g)
    physics = dinv.physics.Blur(_gaussian(1.5), padding="circular")
    y = physics.A(x) + 0.03 * torch.randn(x.shape, generator=g)
    adj = physics.A_adjoint(y)
    x_tv = tv_reconstruction(y, physics, lam=0.02)
    gain_adj = _psnr(x, x_tv) - _psnr(x, adj)
    gain_y = _psnr(x, x_tv) - _psnr(x, y)
    # stated margin: TV is >= 3 dB better than the adjoint and than the blurred data itself
    # (measured: +5.6 dB and +4.4 dB)
    assert gain_adj >= 3.0, gain_adj
    assert gain_y >= 3.0, gain_y


def test_tv_beats_zero_filled_on_complex_mri():
    g = torch.Generator().manual_seed(1)
    x = _blocks(1, 32, channels=2, generator=g) - 0.3  # complex (2-channel) piecewise-constant image
    mask = torch.zeros(32, 32)
    mask[:, torch.randperm(32, generator=g)[:8]] = 1.0
    mask[:, 14:18] = 1.0  # ~3x undersampled phase-encode lines, centre fully sampled
    physics = dinv.physics.MRI(mask=mask, img_size=(32, 32))
    y = physics.A(x)
    y = y + 0.02 * torch.randn(y.shape, generator=g) * mask
    zf = physics.A_adjoint(y)
    x_tv = tv_reconstruction(y, physics, lam=0.01)
    gain = _psnr(x, x_tv) - _psnr(x, zf)
    assert gain >= 3.0, gain  # measured +11.6 dB


def test_tv_runs_line_mask_mri_on_the_sampled_lines(monkeypatch):
    # MultiCoilMRI with a line mask offers compact(): TV runs on its sampled lines (its full-k-space
    # forward is never called), with the iterations and result of TV on the full k-space (a plain
    # LinearPhysics wrapping the same A and A_adjoint offers no compact())
    from diffinverse.operators import MultiCoilMRI, random_lines, simulate_coil_maps

    g = torch.Generator().manual_seed(8)
    mask = random_lines((32, 32), 4, 0.1, generator=g)
    physics = MultiCoilMRI(mask, simulate_coil_maps(4, (32, 32)))
    x = _blocks(2, 32, channels=2, generator=g) - 0.3
    y = physics.A(x)
    y = y + 0.02 * torch.randn(y.shape, generator=g) * mask
    full = dinv.physics.LinearPhysics(A=physics.A, A_adjoint=physics.A_adjoint)
    iters_full, iters_lines = [], []
    x_full = tv_reconstruction(y, full, lam=0.01, callback=lambda i, _: iters_full.append(i))

    def not_on_the_lines(*args):
        raise AssertionError("TV applied the full-k-space forward")

    monkeypatch.setattr(MultiCoilMRI, "_forward_c", not_on_the_lines)
    x_lines = tv_reconstruction(y, physics, lam=0.01, callback=lambda i, _: iters_lines.append(i))
    assert len(iters_lines) == len(iters_full) < 10000
    torch.testing.assert_close(x_lines, x_full, rtol=0, atol=1e-4)
    assert _psnr(x, x_lines) >= _psnr(x, physics.A_adjoint(y)) + 3.0


def test_tv_objective_decreases_and_beats_ground_truth():
    g = torch.Generator().manual_seed(2)
    x = _blocks(1, 24, generator=g)
    physics = dinv.physics.Blur(_gaussian(1.0), padding="circular")
    y = physics.A(x) + 0.05 * torch.randn(x.shape, generator=g)
    lam = 0.05
    history = []
    x_tv = tv_reconstruction(y, physics, lam=lam, num_iters=400, tol=0,
                             callback=lambda i, xi: history.append(tv_objective(xi, y, physics, lam).item()))
    start = tv_objective(physics.A_adjoint(y), y, physics, lam).item()
    obj = tv_objective(x_tv, y, physics, lam).item()
    # PDHG is not monotone step by step; over windows of 50 iterations it is
    windows = [min(history[k:k + 50]) for k in range(0, 400, 50)]
    assert all(b <= a + 1e-6 * abs(a) for a, b in zip(windows, windows[1:])), windows
    assert obj < 0.9 * start  # measured 0.78
    # the minimiser's objective is at most that of any image, the ground truth included
    assert obj <= tv_objective(x, y, physics, lam).item()
    # and it has converged: 4x more iterations change the objective by < 0.1 %
    longer = tv_objective(tv_reconstruction(y, physics, lam=lam, num_iters=1600, tol=0), y, physics, lam).item()
    assert abs(obj - longer) <= 1e-3 * longer


def test_tv_default_start_suits_operators_with_a_large_norm():
    # sparse-view CT: ||A||^2 is in the hundreds, so the plain backprojection A^H y is hundreds of
    # times too bright. From the default start (A^H y scaled by the exact line search along it) 300
    # iterations reach the objective of 1500; from A^H y itself they stayed ~30 % above it
    from diffinverse.operators.ct import CT

    g = torch.Generator().manual_seed(4)
    x = _blocks(1, 48, generator=g)
    physics = CT(48, torch.arange(60) * math.pi / 60, backend="torch")
    y = physics.A(x)
    y = y + 0.01 * y.abs().amax() * torch.randn(y.shape, generator=g)
    lam = 0.3
    short, long = (tv_objective(tv_reconstruction(y, physics, lam=lam, num_iters=n, tol=0), y, physics, lam).item()
                   for n in (300, 1500))
    assert short <= 1.01 * long


def test_tv_stops_when_converged_and_warns_when_not():
    # box inpainting, where a fixed 300 iterations (with tau = sigma) fell 3.7 dB short on 64x64
    # phantoms: the default tol stops early, within 1e-4 of the objective of a much longer run
    g = torch.Generator().manual_seed(6)
    x = _blocks(2, 32, generator=g)
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 10:22, 8:20] = 0.0
    physics = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=mask)
    y = physics.A(x) + 0.02 * torch.randn(x.shape, generator=g) * mask
    lam = 0.01
    iters = []
    x_tv = tv_reconstruction(y, physics, lam=lam, callback=lambda i, _: iters.append(i))
    longer = tv_reconstruction(y, physics, lam=lam, num_iters=8000, tol=0)
    obj, ref = tv_objective(x_tv, y, physics, lam), tv_objective(longer, y, physics, lam)
    assert len(iters) < 8000, len(iters)
    assert ((obj - ref).abs() <= 1e-4 * ref).all(), (obj, ref)
    with pytest.warns(RuntimeWarning, match="num_iters=20 iterations"):
        tv_reconstruction(y, physics, lam=lam, num_iters=20)
    iters.clear()
    tv_reconstruction(y, physics, lam=lam, num_iters=30, tol=0, callback=lambda i, _: iters.append(i))
    assert len(iters) == 30


def test_tv_balanced_steps_suit_small_and_large_lambda():
    # the best fixed tau / sigma depends on lam (here: 1 for lam 0.05, 100 for lam 0.002); the
    # balanced steps come close to the best at both. With tau = sigma, lam 0.002 stayed 5.6e-4
    # above the minimum after 400 iterations (measured here: 2e-6 balanced)
    g = torch.Generator().manual_seed(2)
    x = _blocks(1, 24, generator=g)
    physics = dinv.physics.Blur(_gaussian(1.0), padding="circular")
    y = physics.A(x) + 0.05 * torch.randn(x.shape, generator=g)
    for lam, bound in ((0.05, 1e-3), (0.002, 3e-5)):
        short, long = (tv_objective(tv_reconstruction(y, physics, lam=lam, num_iters=n, tol=0), y, physics, lam).item()
                       for n in (400, 4000))
        assert short - long <= bound * long, (lam, short, long)


def test_tv_builds_no_autograd_graph():
    # a baseline, never differentiated: no graph over its hundreds of iterations
    y = torch.randn(1, 1, 8, 8, requires_grad=True)
    assert not tv_reconstruction(y, dinv.physics.Denoising(), lam=0.1, num_iters=3, tol=0).requires_grad


def test_tv_known_answers():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(2, 1, 8, 8, generator=g)
    denoise = dinv.physics.Denoising()
    # lam = 0 with A = I: the least-squares solution is y itself
    assert torch.allclose(tv_reconstruction(y, denoise, lam=0.0), y, atol=1e-4)
    # a huge lam with A = I: the constant image at the mean of y (TV = 0, best data fit)
    flat = tv_reconstruction(y, denoise, lam=100.0)
    assert torch.allclose(flat, y.mean(dim=(1, 2, 3), keepdim=True).expand_as(y), atol=1e-3)


def test_tv_with_a_support_solves_the_constrained_problem():
    g = torch.Generator().manual_seed(5)
    y = torch.randn(1, 1, 8, 8, generator=g)
    support = torch.zeros(1, 1, 8, 8)
    support[..., 2:6, 1:7] = 1
    denoise = dinv.physics.Denoising()
    # a huge lam: zero (the jump at the support's edge counts, so no constant but 0 is free)
    flat = tv_reconstruction(y, denoise, lam=100.0, support=support)
    torch.testing.assert_close(flat, torch.zeros_like(y), atol=1e-3, rtol=0)
    # a moderate lam: zero outside, and no feasible image does better, e.g. the unconstrained
    # minimiser cut to the support
    x = tv_reconstruction(y, denoise, lam=0.3, support=support, tol=1e-7, num_iters=50000)
    free = tv_reconstruction(y, denoise, lam=0.3, tol=1e-7, num_iters=50000)
    assert (x[~support.bool()] == 0).all()
    assert tv_objective(x, y, denoise, 0.3) < tv_objective(free * support, y, denoise, 0.3)
    with pytest.raises(ValueError, match="does not broadcast"):
        tv_reconstruction(y, denoise, support=torch.ones(2, 1, 8, 8))


def test_tv_volume_denoising():
    g = torch.Generator().manual_seed(4)
    vol = torch.zeros(1, 1, 8, 16, 16)
    vol[..., 2:6, 4:12, 3:10] = 1.0
    noisy = vol + 0.2 * torch.randn(vol.shape, generator=g)
    out = tv_reconstruction(noisy, dinv.physics.Denoising(), lam=0.15)
    assert _psnr(vol, out) >= _psnr(vol, noisy) + 6.0
    assert out.shape == vol.shape


def test_other_baselines_and_errors():
    g = torch.Generator().manual_seed(5)
    mask = (torch.rand(16, 16, generator=g) > 0.5).float()
    physics = dinv.physics.MRI(mask=mask, img_size=(16, 16))
    x = torch.randn(1, 2, 16, 16, generator=g)
    y = physics.A(x)
    with pytest.raises(TypeError, match="LinearPhysics"):
        tv_reconstruction(y, dinv.physics.Physics(A=lambda v: v**2))
    with pytest.raises(ValueError, match="num_iters"):
        tv_reconstruction(y, physics, num_iters=0)
    for bad in ({"tol": -1e-3}, {"tol": float("nan")}, {"lam": float("nan")}, {"lam": float("inf")}):
        with pytest.raises(ValueError, match="need finite lam >= 0 and tol >= 0"):
            tv_reconstruction(y, physics, **bad)
    y_bad = y.clone()
    y_bad[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN or infinite values"):
        tv_reconstruction(y_bad, physics)
    with pytest.raises(ValueError, match="x_init contains NaN or infinite values"):
        tv_reconstruction(y, physics, x_init=torch.full_like(x, float("inf")))
    with pytest.raises(ValueError, match="power_iters >= 1"):
        tv_reconstruction(y, physics, power_iters=0)
    for shape in ((2, 2, 16, 16), (1, 2, 16, 15)):
        with pytest.raises(ValueError, match=r"x_init has (batch size 2, y has 1|shape \(1, 2, 16, 15\))"):
            tv_reconstruction(y, physics, x_init=torch.zeros(shape))
    broken = dinv.physics.LinearPhysics(A=lambda v: v * float("nan"), A_adjoint=lambda v: v * float("nan"))
    with pytest.raises(FloatingPointError, match="tv_reconstruction diverged"):
        tv_reconstruction(x, broken)  # finite input, an operator that returns NaN
    with pytest.raises(ValueError, match="spatial_dims"):
        total_variation(x, spatial_dims=3)


def test_tv_leaves_its_inputs_untouched():
    """The loop updates its own arrays in place; y and x_init must come back as they went in, also
    for an operator whose A returns its input itself (deepinv's Denoising)."""
    g = torch.Generator().manual_seed(7)
    mask = (torch.rand(16, 16, generator=g) > 0.5).float()
    for physics, x in ((dinv.physics.MRI(mask=mask, img_size=(16, 16)), torch.randn(2, 2, 16, 16, generator=g)),
                       (dinv.physics.Denoising(), torch.rand(2, 1, 16, 16, generator=g))):
        y = physics.A(x)
        y_before, x_before = y.clone(), x.clone()
        tv_reconstruction(y, physics, lam=0.01, x_init=x, num_iters=30, tol=0)
        assert torch.equal(y, y_before) and torch.equal(x, x_before)
