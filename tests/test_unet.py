import json

import pytest
import torch

from diffinverse.priors.unet import UNet


def _tiny(**kw):
    torch.manual_seed(0)
    return UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, **kw)


def _randomise(prior):
    # The output convolution starts at zero; give it weights so F is not identically 0.
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return prior


def test_default_parameter_count_in_range():
    n = sum(p.numel() for p in UNet(channels=2).parameters())
    assert 1_000_000 <= n <= 3_000_000


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_odd_sizes_and_identity_at_zero_sigma(channels):
    prior = _randomise(_tiny(channels=channels))
    x = torch.randn(2, channels, 37, 45)
    out = prior(x, 0.5)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(prior(x, 0.0), x)
    # c_skip -> 1 and c_out -> 0 as sigma -> 0: the error shrinks like sigma.
    assert (prior(x, 1e-4) - x).abs().max() < 1e-3
    assert (prior(x, 0.5) - x).abs().max() > 1e-2


def test_preconditioning_matches_edm_formulas():
    prior = _randomise(_tiny(channels=1, sigma_data=0.3))
    x = torch.randn(3, 1, 16, 16)
    sigma = torch.tensor([0.01, 0.5, 10.0])
    s = sigma[:, None, None, None]
    sd = 0.3
    f = prior.net(x / (s**2 + sd**2).sqrt(), sigma.log() / 4)
    expected = sd**2 / (s**2 + sd**2) * x + s * sd / (s**2 + sd**2).sqrt() * f
    torch.testing.assert_close(prior(x, sigma), expected, rtol=1e-5, atol=1e-6)


def test_fully_convolutional_runs_at_320():
    prior = _randomise(_tiny(channels=2))
    with torch.no_grad():
        assert prior(torch.randn(1, 2, 320, 320), 0.2).shape == (1, 2, 320, 320)


def test_config_rebuilds_and_is_json():
    prior = _tiny(channels=2, sigma_max=40.0, data_range=(0.0, 1.0))
    cfg = json.loads(json.dumps(prior.config))
    clone = UNet(**cfg)
    assert clone.config == prior.config and clone.data_range == (0.0, 1.0) and clone.sigma_max == 40.0
    clone.load_state_dict(prior.state_dict())


def test_channels_last_and_autocast_within_tolerance():
    prior = _randomise(_tiny(channels=2))
    x = torch.randn(2, 2, 24, 24)
    ref = prior(x, 0.3)
    cl = prior.to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last), 0.3), ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = prior(x, 0.3)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_a_large_cpu_batch_runs_in_parts_with_each_image_as_alone(monkeypatch):
    # above the activation budget the batch is split: calls of at most budget / (widest activation
    # per image) images, and each image's estimate and gradient are those of a call on it alone
    import diffinverse.priors.unet as unet

    prior = _randomise(_tiny(channels=2))
    x, sigma = torch.randn(5, 2, 16, 16), torch.tensor([0.05, 0.3, 1.0, 3.0, 20.0])
    widest = 3 * 8 * 16 * 16 * 4  # 3 * base_channels * channel_mult[0] channels of float32 at 16x16
    calls = []
    prior.net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    monkeypatch.setattr(unet, "_CPU_ACTIVATION_BUDGET", 2 * widest + 1)
    xg = x.clone().requires_grad_(True)
    out = prior(xg, sigma)
    (grad,) = torch.autograd.grad(out.square().sum(), xg)
    assert calls == [2, 2, 1]
    # a direct denoise call with one broadcast noise level covers the whole batch too
    torch.testing.assert_close(prior.denoise(x, torch.tensor(0.3)), prior(x, 0.3))
    for i in range(5):
        xi = x[i:i + 1].clone().requires_grad_(True)
        out_i = prior(xi, sigma[i:i + 1])
        (grad_i,) = torch.autograd.grad(out_i.square().sum(), xi)
        torch.testing.assert_close(out[i:i + 1], out_i, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad[i:i + 1], grad_i, rtol=1e-5, atol=1e-6)
    calls.clear()
    monkeypatch.setattr(unet, "_CPU_ACTIVATION_BUDGET", 5 * widest)
    prior(x, sigma)
    assert calls == [5]


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels must be 1 or 2"):
        UNet(channels=3)
    with pytest.raises(ValueError, match="expects 2 channel"):
        _tiny(channels=2)(torch.randn(1, 1, 8, 8), 0.1)


def test_input_of_another_dtype_or_device_is_refused_by_name():
    prior = _tiny(channels=1)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"weights are torch.float32, its input torch.float64"):
        prior(x.double(), 0.1)  # NumPy data arrives as float64
    torch.testing.assert_close(prior.double()(x.double(), 0.1), prior.float()(x, 0.1).double(), rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts input and weights alike
        assert prior.to(torch.bfloat16)(x, 0.1).shape == x.shape
    with pytest.raises(ValueError, match=r"weights are on meta, its input on cpu"):
        prior.to("meta")(x, 0.1)
