"""Latent priors: shapes, the identity form, our format's round trip, diffusers directories (offline)."""
import pytest
import torch
from torch import nn

from diffinverse.priors import checkpoints
from diffinverse.priors.base import VPDenoiser
from diffinverse.priors.gmm import GaussianMixturePrior
from diffinverse.priors.latent import ConvLatentPrior, LatentPrior, load_latent_diffusers


def _randomise(module, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return module


def _tiny_conv_prior():
    return _randomise(ConvLatentPrior(channels=2, latent_channels=2, base_channels=4, channel_mult=(1, 2, 2),
                                      denoiser={"base_channels": 4, "channel_mult": [1, 2], "num_res_blocks": 1,
                                                "sigma_data": 0.7, "sigma_max": 20.0})).eval()


def test_conv_latent_prior_shapes_and_round_trip(tmp_path):
    prior = _tiny_conv_prior()
    assert prior.factor == 4 and prior.channels == 2 and prior.image_channels == 2 and prior.sigma_max == 20.0
    x = torch.randn(3, 2, 16, 24, generator=torch.Generator().manual_seed(1))
    z = prior.encode(x)
    assert z.shape == (3, 2, 4, 6) and prior.latent_shape(x.shape) == (3, 2, 4, 6)
    assert prior.decode(z).shape == x.shape and prior.image_shape(z.shape) == x.shape
    path = checkpoints.save(prior, tmp_path / "latent.safetensors")
    back = checkpoints.load(path)
    assert isinstance(back, ConvLatentPrior) and back.config == prior.config
    with torch.no_grad():
        assert torch.equal(back.encode(x), z)
        assert torch.equal(back.decode(z), prior.decode(z))
        assert torch.equal(back(z, 0.3), prior(z, 0.3))


def test_identity_form_is_the_pixel_prior():
    pixel = GaussianMixturePrior.random(2, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    prior = LatentPrior.identity(pixel)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert prior.factor == 1 and prior.channels == prior.image_channels == 1
    assert torch.equal(prior.encode(x), x) and torch.equal(prior.decode(x), x)
    assert torch.equal(prior(x, 0.5), pixel(x, 0.5))
    assert (prior.sigma_min, prior.sigma_max, prior.data_range) == (pixel.sigma_min, pixel.sigma_max,
                                                                       pixel.data_range)
    with pytest.raises(TypeError, match="already a LatentPrior"):
        LatentPrior.identity(prior)


def test_shapes_that_do_not_fit_are_named():
    prior = _tiny_conv_prior()
    with pytest.raises(ValueError, match="not a multiple of the autoencoder's downsampling factor 4"):
        prior.encode(torch.zeros(1, 2, 18, 16))
    with pytest.raises(ValueError, match=r"decodes to images \(B, 2, H, W\)"):
        prior.latent_shape((1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"latents must be \(B, 2, h, w\)"):
        prior.decode(torch.zeros(1, 3, 4, 4))
    bad = LatentPrior(nn.AvgPool2d(2), nn.Upsample(scale_factor=2.0), prior.latent_denoiser, image_channels=2, factor=4)
    with pytest.raises(ValueError, match=r"the encoder returned \(1, 2, 8, 8\) for images \(1, 2, 16, 16\), "
                                         r"expected \(1, 2, 4, 4\)"):
        bad.encode(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"the decoder returned \(1, 2, 8, 8\)"):
        bad.decode(torch.zeros(1, 2, 4, 4))
    with pytest.raises(TypeError, match="encoder must be callable"):
        LatentPrior(3, nn.Identity(), prior.latent_denoiser, image_channels=2, factor=1)
    with pytest.raises(ValueError, match="positive integers"):
        LatentPrior(nn.Identity(), nn.Identity(), prior.latent_denoiser, image_channels=2, factor=0)


def _tiny_sd_directory(root, *, latent_channels=2, unet_channels=None, safe=True):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

    vae = AutoencoderKL(in_channels=2, out_channels=2, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    c = unet_channels or latent_channels
    unet = UNet2DModel(sample_size=8, in_channels=c, out_channels=c, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    _randomise(vae, 1, 0.05).eval()
    _randomise(unet, 2, 0.05).eval()
    vae.save_pretrained(root / "vae", safe_serialization=safe)
    unet.save_pretrained(root / "unet")
    DDIMScheduler(num_train_timesteps=100, prediction_type="epsilon").save_pretrained(root / "scheduler")
    return vae, unet


def test_diffusers_directory_loads_offline_and_matches_the_modules(tmp_path):
    vae, _ = _tiny_sd_directory(tmp_path)
    prior = checkpoints.load(tmp_path)
    assert isinstance(prior, LatentPrior) and isinstance(prior.latent_denoiser, VPDenoiser)
    assert prior.factor == 2 and prior.image_channels == 2 and prior.channels == 2
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    with torch.no_grad():
        z = prior.encode(x)
        torch.testing.assert_close(z, 0.5 * vae.encode(x).latent_dist.mean)
        torch.testing.assert_close(prior.decode(z), vae.decode(z / 0.5).sample)
        unet_only = checkpoints.load_diffusers(tmp_path)
        torch.testing.assert_close(prior(z, 0.7), unet_only(z, 0.7))
    assert z.shape == (2, 2, 8, 8)


def test_diffusers_refuses_pickles_and_mismatched_channels(tmp_path):
    _tiny_sd_directory(tmp_path / "pickled", safe=False)
    with pytest.raises(ValueError, match=r"refusing pickled weights \(diffusion_pytorch_model.bin\)"):
        load_latent_diffusers(tmp_path / "pickled")
    _tiny_sd_directory(tmp_path / "mismatch", latent_channels=2, unet_channels=1)
    with pytest.raises(ValueError, match="the UNet has 1 channels but the VAE's latent has 2"):
        load_latent_diffusers(tmp_path / "mismatch")
    with pytest.raises(FileNotFoundError, match="no vae/config.json"):
        load_latent_diffusers(tmp_path)


def test_shipped_mri_brain_latent_loads_and_keeps_its_card_claims():
    """The shipped latent prior: loads by name, under 6 MB, reconstructs held-out slices and its
    denoiser beats the undenoised latent (cheap, seed-fixed parts of its model card's figures)."""
    from pathlib import Path

    from diffinverse.datasets.brain import BrainSlices
    from diffinverse.imaging import magnitude
    from diffinverse.metrics import psnr

    path = Path(checkpoints.__file__).resolve().parents[1] / "weights" / "mri-brain-latent.safetensors"
    assert path.stat().st_size < 6 * 2**20
    prior = checkpoints.load("mri-brain-latent")
    assert isinstance(prior, ConvLatentPrior) and (prior.factor, prior.image_channels, prior.channels) == (4, 2, 2)
    x = BrainSlices("test", generator=torch.Generator().manual_seed(1)).sample(2)[..., 64:192, 64:192]
    with torch.no_grad():
        z = prior.encode(x)
        noisy = z + 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
        rec = psnr(reference=magnitude(x), estimate=magnitude(prior.decode(z)))
        den = psnr(reference=magnitude(x), estimate=magnitude(prior.decode(prior(noisy, 0.5))))
        raw = psnr(reference=magnitude(x), estimate=magnitude(prior.decode(noisy)))
    assert rec > 26.0 and den > raw + 1.0, (rec, den, raw)
