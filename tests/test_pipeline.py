"""Tests of the library MRI pipeline, :func:`diffinverse.pipelines.reconstruct_kspace`, on tensors."""
import json
import warnings
from importlib import resources

import numpy as np
import pytest
import torch

from diffinverse import metrics as M
from diffinverse.datasets.fastmri import FastMRIFile
from diffinverse.operators import simulate_coil_maps
from diffinverse.operators.mri import fft2c, to_channels
from diffinverse.pipelines import SAMPLER_DEFAULTS, KspaceReconstruction, reconstruct_kspace, retrospective_mask
from diffinverse.reconstruct import DEMO_FILE, _file_seed, main

DEMO = resources.files("diffinverse.datasets") / "data" / DEMO_FILE


def smooth_image(h, w, seed=0):
    """A complex image of a few Gaussian blobs with a smooth phase, ``(h, w)`` complex64."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = torch.zeros(h, w)
    for _ in range(4):
        c = torch.rand(2, generator=g) * 0.8 - 0.4
        img += torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * 0.15**2))
    return (img * torch.exp(1j * (0.5 * xx + 0.3 * yy))).to(torch.complex64)


def multicoil_kspace(slices=2, coils=4, shape=(32, 32)):
    """``(S, C, H, W)`` complex64 fully sampled k-space."""
    maps = simulate_coil_maps(coils, shape)
    return torch.stack([fft2c(maps * smooth_image(*shape, seed=s)) for s in range(slices)])


def test_library_pipeline_gives_the_command_lines_psnr_on_the_demo(tmp_path):
    # the same settings through main() and through reconstruct_kspace on the file's tensors: the
    # same mask (drawn as the command line draws it), the same sampler generator, the same scores
    settings = ["--sampler", "reddiff", "--steps", "20", "--slices", "0:2", "--device", "cpu", "--seed", "0"]
    assert main(["--demo", *settings, "--output", str(tmp_path / "cli")]) == 0
    record = json.loads((tmp_path / "cli" / "demo_brain.metrics.json").read_text())
    cli = record["metrics"]["reconstruction_rss"]

    with FastMRIFile(DEMO) as f:
        k = torch.from_numpy(f.read_kspace(slice(0, 2)))
        target = f.read_target("reconstruction_rss", slice(0, 2))
        size = f.target_shapes["reconstruction_rss"]
    mask = retrospective_mask((size[0], k.shape[-1]), acceleration=4, mask_type="random", center_fraction=0.08,
                              generator=torch.Generator().manual_seed(_file_seed(0, DEMO_FILE)))
    rec = reconstruct_kspace(k, mask, method="reddiff", num_steps=20, recon_size=size,
                             generator=torch.Generator().manual_seed(_file_seed(0, DEMO_FILE) + 1))
    assert isinstance(rec, KspaceReconstruction) and rec.image.shape == (2, *size) and rec.nfe == record["nfe"]
    images = {"reddiff": rec.image, **rec.baselines}
    assert set(images) == set(cli) == {"reddiff", "zero-filled", "sense"}
    for name, image in images.items():
        image = image.numpy()
        assert M.psnr(reference=target, estimate=image) == pytest.approx(cli[name]["psnr"], abs=1e-6), name
        assert M.ssim(reference=target, estimate=image) == pytest.approx(cli[name]["ssim"], abs=1e-7), name
    # and the diffusion sampler beats both baselines here, as the command line's test asserts at 50 steps
    assert cli["reddiff"]["psnr"] > max(cli["sense"]["psnr"], cli["zero-filled"]["psnr"])


def test_result_layout_and_undersampling_from_the_library():
    k = multicoil_kspace()
    rec = reconstruct_kspace(k, method="sense", acceleration=2, center_fraction=0.3, recon_size=(24, 20),
                             mask_generator=torch.Generator().manual_seed(4))
    mask = retrospective_mask((24, 32), acceleration=2, center_fraction=0.3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(rec.mask, mask, rtol=0, atol=0)
    assert rec.image.shape == (2, 24, 20) and rec.image.dtype == torch.float32
    assert rec.complex_image.shape == (2, 2, 2, 24, 20) and rec.std is None and rec.nfe == 0
    # the magnitude is the root-sum-of-squares of the complex image over channels and map sets
    torch.testing.assert_close(rec.image, rec.complex_image.square().sum((1, 2)).sqrt())
    torch.testing.assert_close(rec.baselines["sense"], rec.image, rtol=0, atol=0)
    # the same mask given explicitly, as (W,) lines, gives the same images
    again = reconstruct_kspace(k, mask[0], method="sense", recon_size=(24, 20))
    torch.testing.assert_close(again.image, rec.image, rtol=0, atol=0)
    with pytest.raises(AttributeError):
        rec.image = None  # frozen


def test_real_channel_layout_matches_the_complex_layout():
    k = torch.stack([fft2c(smooth_image(16, 16, seed=s)) for s in range(2)])         # (2, 16, 16) single-coil
    mask = retrospective_mask((16, 16), acceleration=3, center_fraction=0.2)
    a, b = (reconstruct_kspace(data, mask, method="reddiff", num_steps=4, generator=torch.Generator().manual_seed(0))
            for data in (k, to_channels(k).contiguous()))
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    assert set(a.baselines) == {"zero-filled"} and a.complex_image.shape == (2, 2, 1, 16, 16)


def test_the_generator_determines_the_samples():
    k = torch.stack([fft2c(smooth_image(16, 16))])
    mask = retrospective_mask((16, 16), acceleration=2, center_fraction=0.3)

    def run(seed):
        return reconstruct_kspace(k, mask, method="dps", num_steps=10, num_samples=2,
                                  generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    torch.testing.assert_close(a.std, b.std, rtol=0, atol=0)
    assert not torch.equal(a.image, c.image)
    assert a.std.shape == a.image.shape == (1, 16, 16) and (a.std >= 0).all() and a.std.max() > 0
    assert a.nfe > 0


def test_cold_start_runs_from_pure_noise():
    # a cold start draws the whole grid: more network evaluations than the default warm start
    k = torch.stack([fft2c(smooth_image(16, 16))])
    mask = retrospective_mask((16, 16), acceleration=2, center_fraction=0.3)
    warm = reconstruct_kspace(k, mask, method="reddiff", num_steps=8, generator=torch.Generator().manual_seed(0))
    cold = reconstruct_kspace(k, mask, method="reddiff", num_steps=8, cold_start=True,
                              generator=torch.Generator().manual_seed(0))
    assert cold.nfe > warm.nfe and torch.isfinite(cold.image).all()


def test_sampler_options_reach_the_sampler():
    # RED-Diff with a negligible Adam step returns its warm start; the default step moves it
    k = torch.stack([fft2c(smooth_image(16, 16))])
    mask = retrospective_mask((16, 16), acceleration=2, center_fraction=0.3)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    default = reconstruct_kspace(k, mask, method="reddiff", num_steps=8, generator=g())
    tiny = reconstruct_kspace(k, mask, method="reddiff", num_steps=8, sampler_options={"lr": 1e-9}, generator=g())
    explicit = reconstruct_kspace(k, mask, method="reddiff", num_steps=8, generator=g(),
                                  sampler_options=dict(SAMPLER_DEFAULTS["reddiff"].options))
    torch.testing.assert_close(explicit.image, default.image, rtol=0, atol=0)
    zf = tiny.baselines["zero-filled"]
    assert (tiny.image - zf).abs().max() < 1e-3 * zf.max() < (default.image - zf).abs().max()


@pytest.fixture(scope="module")
def one_channel_prior():
    from diffinverse.priors.unet import UNet

    return UNet(channels=1, base_channels=4, channel_mult=(1,), num_res_blocks=1)


def _bad(kspace=None, mask=None, **kwargs):
    k = torch.stack([fft2c(smooth_image(16, 16))]) if kspace is None else kspace
    m = retrospective_mask((16, 16), acceleration=2, center_fraction=0.3) if mask is None else mask
    kwargs.setdefault("method", "zero-filled")
    return lambda: reconstruct_kspace(k, None if isinstance(mask, str) else m, **kwargs)


K = torch.stack([fft2c(smooth_image(16, 16))])


@pytest.mark.parametrize("call, error, message", [
    (_bad(kspace=fft2c(smooth_image(16, 16))), ValueError, "one slice: add the slice dimension"),
    (_bad(kspace=K[None, None]), ValueError, "got complex shape (1, 1, 1, 16, 16)"),
    (_bad(kspace=to_channels(K)[:, :1]), ValueError, "got real shape (1, 1, 16, 16)"),
    (_bad(kspace=torch.ones(1, 16, 16, dtype=torch.int64)), TypeError, "complex or floating point"),
    (_bad(kspace=np.ones((1, 16, 16), np.complex64)), TypeError, "must be a torch.Tensor"),
    (_bad(kspace=torch.where(torch.arange(16) == 3, torch.nan, 1.0) * K), ValueError, "NaN or infinite"),
    (_bad(mask=torch.ones(15)), ValueError, "mask must be (16,) phase-encode lines or (16, 16)"),
    (_bad(mask=torch.full((16,), 0.5)), ValueError, "0/1 values"),
    (_bad(mask="none"), ValueError, "give the sampling mask, or an acceleration"),
    (_bad(acceleration=4), ValueError, "not both"),
    (_bad(method="admm"), ValueError, "unknown method 'admm'"),
    (_bad(recon_size=(20, 16)), ValueError, "recon_size (20, 16) must be positive and fit"),
    (_bad(num_samples=2), ValueError, "num_samples > 1 needs a diffusion sampler"),
    (_bad(method="sense", sigma_start=0.3), ValueError, "sigma_start applies to the diffusion samplers"),
    (_bad(method="dps", sampler_options={"lr": 0.1}), ValueError, "unknown option(s) ['lr'] for sampler 'dps'"),
    (_bad(method="reddiff", sampler_options={"lam": -1.0}), ValueError, "lam >= 0"),
    (_bad(method="dps", warm_start="fbp"), ValueError, "warm_start must be one of sense, tv"),
    (_bad(method="dps", cold_start=True, sigma_start=0.3), ValueError, "give neither warm_start nor sigma_start"),
    (_bad(method="dps", sigma_start=1e6), ValueError, "exceeds the prior's largest noise level"),
    (_bad(kspace=multicoil_kspace(1), mask=torch.ones(32, 32).index_fill_(1, torch.tensor([15, 17]), 0)),
     ValueError, "too small to estimate coil maps"),
])
def test_bad_input_is_refused_with_a_message(call, error, message):
    with pytest.raises(error) as err:
        call()
    assert message in str(err.value)


def test_a_prior_without_two_channels_is_refused(one_channel_prior):
    with pytest.raises(ValueError, match=r"1 channel\(s\); MRI reconstruction needs a 2-channel"):
        reconstruct_kspace(K, torch.ones(16), method="dps", prior=one_channel_prior)


def test_no_warnings_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reconstruct_kspace(K, acceleration=2, center_fraction=0.3, method="reddiff", num_steps=4,
                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("mask_type, shape, cf", [("random", (8, 10), 0.3), ("equispaced", (8, 37), 0.1),
                                                  ("random", (8, 128), 0.08), ("poisson", (48, 60), 0.08)])
def test_retrospective_mask_refuses_an_unreachable_acceleration(mask_type, shape, cf):
    from diffinverse.pipelines.fastmri import acceleration_of, max_acceleration

    largest = max_acceleration(shape, mask_type=mask_type, center_fraction=cf)
    # at the bound a random mask is its centre lines alone, which achieve exactly the bound; the
    # equispaced one adds every R-th line, and poisson's dart throwing samples around its box
    m = retrospective_mask(shape, acceleration=largest, mask_type=mask_type, center_fraction=cf)
    if mask_type == "random":
        assert acceleration_of(m) == pytest.approx(largest) and acceleration_of(m[0]) == pytest.approx(largest)
    assert 1 < acceleration_of(m) <= largest
    with pytest.raises(ValueError, match=rf"the largest achievable is {largest:.2f}x"):
        retrospective_mask(shape, acceleration=largest + 1, mask_type=mask_type, center_fraction=cf)
