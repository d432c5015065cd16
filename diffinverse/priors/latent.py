"""Latent diffusion priors: an encoder, a decoder and a denoiser on the latent.

A :class:`LatentPrior` is a :class:`~diffinverse.priors.base.Prior` on the *latent* ``z``: its
``D(z, sigma) = E[z0 | z0 + sigma n = z]`` follows the package's VE convention in latent units,
and ``channels``, ``sigma_min`` and ``sigma_max`` are the latent denoiser's. On top it maps
images to latents and back::

    z = prior.encode(x)     # (B, C, H, W) -> (B, c, H / f, W / f)
    x = prior.decode(z)     # (B, c, h, w) -> (B, C, h * f, w * f)

with ``C = prior.image_channels`` and ``f = prior.factor`` (the spatial downsampling).
``prior.data_range`` is the *image* range. Samplers that work in the latent
(:class:`~diffinverse.samplers.stsl.STSL`) call ``prior(z, sigma)`` through their network call and
``decode`` to reach the measurements.

Three ways to build one:

- ``LatentPrior(encoder, decoder, latent_denoiser, image_channels=..., factor=...)`` from any
  modules (or callables);
- :meth:`LatentPrior.identity` around a pixel prior (encoder and decoder are the identity,
  ``factor = 1``), so a latent sampler runs on a pixel prior unchanged;
- :class:`ConvLatentPrior`, this package's small convolutional autoencoder plus a
  :class:`~diffinverse.priors.unet.UNet` on the latent, rebuilt from a JSON config (the shipped
  ``mri-brain-latent`` is one; :func:`diffinverse.priors.load` reads it);
- :func:`load_latent_diffusers`, a Stable-Diffusion-style directory on disk (diffusers
  ``AutoencoderKL`` in ``vae/`` and ``UNet2DModel`` in ``unet/``), offline and safetensors only.

References:
    Rombach, Blattmann, Lorenz, Esser & Ommer, "High-Resolution Image Synthesis with Latent
    Diffusion Models", CVPR 2022 (latent diffusion; the KL autoencoder and its scaling factor).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffinverse.priors.base import Prior

__all__ = ["ConvDecoder", "ConvEncoder", "ConvLatentPrior", "LatentPrior", "load_latent_diffusers"]

# weights files that hold pickles: refused by load_latent_diffusers
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class LatentPrior(Prior):
    """A denoiser on latents plus the encoder and decoder between images and latents.

    Args:
        encoder: module or callable ``(B, image_channels, H, W) -> (B, channels, H / f, W / f)``.
        decoder: module or callable ``(B, channels, h, w) -> (B, image_channels, h f, w f)``.
        latent_denoiser: a VE denoiser ``D(z, sigma)`` on latents (a :class:`Prior` or any
            deepinv ``Denoiser`` with ``channels``, ``sigma_min`` and ``sigma_max``).
        image_channels: channels of the images (1 real, 2 complex as real/imag).
        factor: spatial downsampling ``f`` from image to latent (1 for the identity).
        data_range: ``(low, high)`` of the images; default the latent denoiser's.

    Attributes:
        channels: latent channels (the latent denoiser's).
        sigma_min, sigma_max: the latent denoiser's noise range, in latent units.

    Raises:
        TypeError: if ``encoder`` or ``decoder`` is not callable, or the latent denoiser lacks
            ``channels``.
        ValueError: if ``factor`` or ``image_channels`` is not a positive integer.
    """

    def __init__(self, encoder: nn.Module | Callable, decoder: nn.Module | Callable,
                 latent_denoiser: nn.Module | Callable, *, image_channels: int, factor: int,
                 data_range: Sequence[float] | None = None):
        super().__init__()
        for name, f in (("encoder", encoder), ("decoder", decoder), ("latent_denoiser", latent_denoiser)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if not hasattr(latent_denoiser, "channels"):
            raise TypeError(f"the latent denoiser needs a channels attribute, {type(latent_denoiser).__name__} "
                            f"has none")
        if int(factor) != factor or factor < 1 or int(image_channels) != image_channels or image_channels < 1:
            raise ValueError(f"factor and image_channels must be positive integers, got {factor}, {image_channels}")
        self.encoder = encoder
        self.decoder = decoder
        self.latent_denoiser = latent_denoiser
        self.channels = int(latent_denoiser.channels)
        self.image_channels = int(image_channels)
        self.factor = int(factor)
        self.sigma_min = float(getattr(latent_denoiser, "sigma_min", Prior.sigma_min))
        self.sigma_max = float(getattr(latent_denoiser, "sigma_max", Prior.sigma_max))
        rng = data_range if data_range is not None else getattr(latent_denoiser, "data_range", Prior.data_range)
        self.data_range = (float(rng[0]), float(rng[1]))

    @classmethod
    def identity(cls, prior: Prior) -> LatentPrior:
        """A pixel prior as a latent prior: identity encoder and decoder, ``factor = 1``."""
        if isinstance(prior, LatentPrior):
            raise TypeError("the prior is already a LatentPrior")
        return cls(nn.Identity(), nn.Identity(), prior, image_channels=int(prior.channels), factor=1,
                   data_range=getattr(prior, "data_range", None))

    # -- shapes ----------------------------------------------------------------------------

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """``(B, channels, H / f, W / f)`` for images ``(B, image_channels, H, W)``.

        Raises:
            ValueError: if the shape is not 4-D with ``image_channels`` channels, or ``H`` or
                ``W`` is not a multiple of ``factor``.
        """
        s = tuple(int(v) for v in image_shape)
        if len(s) != 4 or s[1] != self.image_channels:
            raise ValueError(f"{type(self).__name__} decodes to images (B, {self.image_channels}, H, W), but the "
                             f"physics' images are {s}")
        if s[2] % self.factor or s[3] % self.factor:
            raise ValueError(f"image size {s[2]}x{s[3]} is not a multiple of the autoencoder's downsampling factor "
                             f"{self.factor}: crop or pad the images to a multiple of {self.factor}")
        return (s[0], self.channels, s[2] // self.factor, s[3] // self.factor)

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
        """``(B, image_channels, h f, w f)`` for latents ``(B, channels, h, w)``."""
        s = tuple(int(v) for v in latent_shape)
        if len(s) != 4 or s[1] != self.channels:
            raise ValueError(f"latents must be (B, {self.channels}, h, w), got {s}")
        return (s[0], self.image_channels, s[2] * self.factor, s[3] * self.factor)

    # -- maps ------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent of images ``x: (B, image_channels, H, W)``, ``(B, channels, H / f, W / f)``."""
        expected = self.latent_shape(x.shape)
        z = self.encoder(x)
        if tuple(z.shape) != expected:
            raise ValueError(f"the encoder returned {tuple(z.shape)} for images {tuple(x.shape)}, expected {expected}")
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images of latents ``z: (B, channels, h, w)``, ``(B, image_channels, h f, w f)``."""
        expected = self.image_shape(z.shape)
        x = self.decoder(z)
        if tuple(x.shape) != expected:
            raise ValueError(f"the decoder returned {tuple(x.shape)} for latents {tuple(z.shape)}, expected {expected}")
        return x

    def denoise(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Latent Tweedie mean ``D(z, sigma)`` for ``z: (B, channels, h, w)``, ``sigma: (B,)``."""
        return self.latent_denoiser(z, sigma)


# ----------------------------------------------------------------------------- our autoencoder


class _Block(nn.Module):
    """Residual block: SiLU -> conv3x3 -> SiLU -> conv3x3, plus a 1x1 skip where widths differ."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv2(F.silu(self.conv1(F.silu(x))))


class ConvEncoder(nn.Module):
    """``(B, C, H, W) -> (B, c, H / 2^(L-1), W / 2^(L-1))``: residual blocks and strided convolutions.

    Level ``i`` of ``L = len(channel_mult)`` has ``base_channels * channel_mult[i]`` channels and one
    residual block; a stride-2 3x3 convolution joins consecutive levels.
    """

    def __init__(self, channels: int, latent_channels: int, base_channels: int, channel_mult: Sequence[int]):
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            layers.append(_Block(widths[max(i - 1, 0)] if i else widths[0], w))
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], latent_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvDecoder(nn.Module):
    """``(B, c, h, w) -> (B, C, h 2^(L-1), w 2^(L-1))``: the mirror of :class:`ConvEncoder`
    (nearest upsampling followed by a 3x3 convolution between levels)."""

    def __init__(self, channels: int, latent_channels: int, base_channels: int, channel_mult: Sequence[int]):
        super().__init__()
        widths = [base_channels * m for m in reversed(channel_mult)]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            layers.append(_Block(widths[max(i - 1, 0)] if i else widths[0], w))
            if i < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(w, w, 3, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class ConvLatentPrior(LatentPrior):
    """This package's latent prior: :class:`ConvEncoder`, :class:`ConvDecoder` and a ``UNet`` on the
    latent, all rebuilt from a JSON-able config (so :func:`diffinverse.priors.save` and ``load``
    handle it like any prior).

    Args:
        channels: image channels (1 real, 2 complex).
        latent_channels: latent channels (1 or 2: the ``UNet``'s range).
        base_channels: width of the autoencoder's first level.
        channel_mult: width multipliers per autoencoder level; ``factor = 2^(len - 1)``.
        denoiser: keyword arguments of the latent :class:`~diffinverse.priors.unet.UNet`
            (its ``channels`` is set to ``latent_channels``).
        data_range: ``(low, high)`` of the images.

    Attributes:
        config: the constructor arguments, ``ConvLatentPrior(**prior.config)`` rebuilds it.
    """

    def __init__(self, *, channels: int = 2, latent_channels: int = 2, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2), denoiser: dict | None = None,
                 data_range: Sequence[float] = (-1.0, 1.0)):
        from diffinverse.priors.unet import UNet

        if len(channel_mult) < 1 or min(channel_mult) < 1 or base_channels < 1:
            raise ValueError(f"base_channels and every channel_mult must be >= 1, got {base_channels}, "
                             f"{tuple(channel_mult)}")
        kwargs = {**dict(denoiser or {}), "channels": int(latent_channels)}
        unet = UNet(**kwargs)
        super().__init__(ConvEncoder(channels, latent_channels, base_channels, channel_mult),
                         ConvDecoder(channels, latent_channels, base_channels, channel_mult), unet,
                         image_channels=channels, factor=2 ** (len(channel_mult) - 1), data_range=data_range)
        self.config = {"channels": int(channels), "latent_channels": int(latent_channels),
                       "base_channels": int(base_channels), "channel_mult": [int(m) for m in channel_mult],
                       "denoiser": dict(unet.config), "data_range": [float(v) for v in data_range]}


# ----------------------------------------------------------------------------- diffusers


class _VAEEncoder(nn.Module):
    """diffusers ``AutoencoderKL`` as ``x -> scaling * (mean of q(z | x) - shift)`` (deterministic)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.vae.encode(x).latent_dist.mean - self.shift)


class _VAEDecoder(nn.Module):
    """diffusers ``AutoencoderKL`` as ``z -> decode(z / scaling + shift)``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale + self.shift).sample


def _safetensors_only(folder: Path) -> None:
    """Refuse a diffusers folder whose weights are only pickles."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder}: refusing pickled weights ({', '.join(pickles)}); convert them to safetensors")
    raise FileNotFoundError(f"{folder}: no .safetensors weights")


def load_latent_diffusers(directory: str | Path, *, device: str | torch.device = "cpu") -> LatentPrior:
    """A latent prior from a Stable-Diffusion-style directory: ``vae/`` (``AutoencoderKL``) and
    ``unet/`` (``UNet2DModel``, unconditional), plus ``scheduler/`` as for
    :func:`~diffinverse.priors.checkpoints.load_diffusers`.

    Offline and safetensors only (``local_files_only=True``, ``use_safetensors=True``); a folder
    holding only pickled weights (``.bin``, ``.ckpt``, ...) is refused. The encoder returns the
    scaled mean of ``q(z | x)`` (no sampling), the decoder the VAE's decoded image; images are in
    [-1, 1] (the diffusers convention). ``factor = 2^(len(block_out_channels) - 1)``.

    Raises:
        FileNotFoundError: no ``vae/config.json`` or ``unet/config.json``, or no weights.
        ValueError: pickled weights only, unreadable configs, or a UNet whose channels are not the
            VAE's latent channels.
    """
    from diffusers import AutoencoderKL

    from diffinverse.priors.checkpoints import load_diffusers

    directory = Path(directory)
    vae_dir, unet_dir = directory / "vae", directory / "unet"
    for d in (vae_dir, unet_dir):
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: no {d.name}/config.json (a latent diffusion directory holds "
                                    f"vae/ and unet/)")
        _safetensors_only(d)
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{vae_dir}: cannot load an AutoencoderKL ({e})") from None
    unet = load_diffusers(directory, device="cpu")
    if unet.channels != int(vae.config.latent_channels):
        raise ValueError(f"{directory}: the UNet has {unet.channels} channels but the VAE's latent has "
                         f"{vae.config.latent_channels}")
    vae = vae.eval().requires_grad_(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    prior = LatentPrior(_VAEEncoder(vae), _VAEDecoder(vae), unet, image_channels=int(vae.config.in_channels),
                        factor=int(factor), data_range=(-1.0, 1.0))
    return prior.to(device).eval()
