"""A sampler built with its defaults gives a sensible result on every operator, and a diverging
run is an error, not an answer.

* Every pixel-space sampler of :data:`diffinverse.samplers.SAMPLERS` (DPS, RED-Diff, DDS) with no
  settings at all (``cls(prior)``: its default step sizes and warm start) beats the operator's
  classical reconstruction (``physics.A_dagger``: zero-filled, SENSE-CG, FBP, Tikhonov, pseudo-inverse) in PSNR and SSIM on
  every task of :data:`diffinverse.tasks.TASKS`, on small test images (for DPS, a posterior
  sampler, the mean of a few samples; single samples are scored in
  ``benchmarks/samplers/defaults_results.md``); also on deepinv's own
  ``BlurFFT``, whose ``A_dagger`` is the unregularised inverse. (STSL samples a latent prior; the
  tasks' priors are pixel priors. Its measurements are in ``benchmarks/samplers/stsl_results.md``.)
* Scale-free: the same problem written with ``c A`` and ``c y`` gives the same reconstruction.
* Step sizes far too large (DPS's ``zeta``, RED-Diff's ``lr``) raise ``FloatingPointError`` naming
  them, where they used to return finite garbage.
"""
from __future__ import annotations

import deepinv as dinv
import pytest
import torch
from deepinv.physics import LinearPhysics

from diffinverse.operators import CT, Blur, gaussian_kernel
from diffinverse.samplers import SAMPLERS
from diffinverse.samplers.data_consistency import tikhonov_start
from diffinverse.tasks import SAMPLER_SEED, TASKS, TEST_SEED, ct_images, frozen_priors, scores

pytestmark = pytest.mark.slow

N, SIZE = 2, 64   # the tasks' image size: the MRI tasks at 32 px keep too few lines to judge a prior by
PIXEL_SAMPLERS = [name for name in SAMPLERS if name != "stsl"]
DPS_SAMPLES = 3


@pytest.fixture(scope="module")
def priors():
    return frozen_priors()


def _run(method, prior, y, physics, **options):
    sampler = SAMPLERS[method].cls(prior, progress=False, **options)
    return sampler(y, physics, generator=torch.Generator().manual_seed(SAMPLER_SEED))


def _estimate(method, prior, y, physics):
    """The sampler's estimate at its defaults: RED-Diff's and DDS's output, and for DPS, whose
    output is one posterior sample (expected squared error twice the posterior variance, which
    loses PSNR to a smooth baseline where the posterior is broad), the mean of DPS_SAMPLES samples."""
    if method == "dps":
        return SAMPLERS[method].cls(prior, progress=False).posterior(
            y, physics, num_samples=DPS_SAMPLES, generator=torch.Generator().manual_seed(SAMPLER_SEED)).mean
    return _run(method, prior, y, physics)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_sampler_at_its_defaults_beats_the_classical_baseline(task, priors):
    spec = TASKS[task]
    p = spec.problem(N, SIZE, TEST_SEED)
    base_psnr, base_ssim = scores(p.x, p.physics.A_dagger(p.y))
    for method in PIXEL_SAMPLERS:
        psnr, ssim = scores(p.x, _estimate(method, priors[spec.prior], p.y, p.physics))
        assert psnr > base_psnr and ssim > base_ssim, (
            f"{task}: {method} at its defaults {psnr:.2f} dB / {ssim:.4f} vs {spec.adjoint_name} "
            f"{base_psnr:.2f} dB / {base_ssim:.4f}")


def test_defaults_on_deepinv_blur_whose_pseudo_inverse_is_unregularised(priors):
    x = ct_images(N, SIZE, torch.Generator().manual_seed(TEST_SEED))
    physics = dinv.physics.BlurFFT(img_size=(1, SIZE, SIZE), filter=dinv.physics.blur.gaussian_blur(sigma=1.5),
                                   noise_model=dinv.physics.GaussianNoise(0.01, rng=torch.Generator().manual_seed(1)))
    y = physics(x)
    # the reason for the regularised default warm start: the pseudo-inverse amplifies the noise
    assert physics.A_dagger(y).abs().max() > 50 * x.abs().max()
    start = tikhonov_start(y, physics)
    assert scores(x, start)[0] > scores(x, physics.A_dagger(y))[0] + 10
    for method in PIXEL_SAMPLERS:
        psnr, ssim = scores(x, _run(method, priors["ct-ellipses"], y, physics))
        start_psnr, start_ssim = scores(x, start)
        assert psnr > start_psnr and ssim > start_ssim, (method, psnr, ssim, start_psnr, start_ssim)


class _Scaled(LinearPhysics):
    """``c A`` of a linear physics."""

    def __init__(self, physics, c):
        super().__init__()
        self.inner, self.c = physics, c

    def A(self, x, **kw):
        return self.c * self.inner.A(x)

    def A_adjoint(self, y, **kw):
        return self.c * self.inner.A_adjoint(y)


@pytest.mark.parametrize("method", PIXEL_SAMPLERS)
def test_the_same_setting_means_the_same_on_a_scaled_operator(method, priors):
    """``c A x = c y`` is the same problem: with step sizes relative to ``||A||^2`` the samplers
    return the same image for c = 1 and c = 30 (up to the power iteration's and float rounding)."""
    x = ct_images(N, SIZE, torch.Generator().manual_seed(TEST_SEED))
    physics = Blur(gaussian_kernel(1.5), padding="reflect")
    y = physics.A(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    start = tikhonov_start(y, physics)
    outs = [SAMPLERS[method].cls(priors["ct-ellipses"], progress=False)(
        c * y, _Scaled(physics, c), x_init=start, generator=torch.Generator().manual_seed(3)) for c in (1.0, 30.0)]
    assert (outs[0] - outs[1]).abs().max().item() < 1e-3


@pytest.mark.parametrize(("method", "option", "value"), [("dps", "zeta", 1e3), ("reddiff", "lr", 1e3)])
def test_step_sizes_far_too_large_raise_naming_them(method, option, value, priors):
    """On 30-view CT (||A||^2 about 500 at 32 px) a step size a thousand times too large used to
    return finite garbage; now the run raises, naming the option to lower."""
    x = ct_images(1, SIZE, torch.Generator().manual_seed(TEST_SEED))
    physics = CT(SIZE, torch.arange(30) * torch.pi / 30, backend="torch")
    y = physics.A(x)
    with pytest.raises(FloatingPointError, match=f"diverged.*lower {option}"):
        _run(method, priors["ct-ellipses"], y, physics, **{option: value})
